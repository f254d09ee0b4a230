"""The run loop: references then every backend, `repeats` rounds round-robin, stdout kept clean."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import psutil

from sainet.bench.backends import link_tree, open_backend
from sainet.bench.references import run_references
from sainet.bench.report import describe, fill_ratios, merge_rounds
from sainet.bench.results import BenchConfig, BenchResult
from sainet.bench.sampling import (
    child_pids,
    evict,
    measure,
    reap,
    release_freed_memory,
    store_roots,
    tree_pss,
    tree_store_pss,
)
from sainet.core.errors import SainetError

log = logging.getLogger(__name__)

_PROGRESS = Callable[[str, int | None], Callable[[int], None]]


def _run_loader(name: str, cfg: BenchConfig, ultralytics_dir: Callable[[], Path], progress: Callable[[int], None] | None) -> BenchResult:
    gc.collect()
    release_freed_memory()  # the previous backend's freed heap pages do not lower this one's count
    if cfg.cold:
        evict([p for p in [*cfg.stores.values(), cfg.source] if p is not None])
    base_pss, base_anon = tree_pss(psutil.Process()), tree_pss(psutil.Process(), "Pss_Anon")
    base_store = tree_store_pss(psutil.Process(), store_roots(cfg))
    before = child_pids()
    try:
        it, close = open_backend(name, cfg, ultralytics_dir)
    except (FileNotFoundError, ImportError, ValueError, SainetError) as e:
        return BenchResult(name, "loader", 0.0, note=f"skipped: {e}")
    try:
        return measure(name, it, cfg, progress, base_pss, base_anon, exclude=before, base_store=base_store)
    finally:
        close()
        del it
        gc.collect()  # an Ultralytics DataLoader iterator's workers go with it
        alive = reap(before)
        if alive:
            log.warning("%s: processes %s still running 10 s after close; the next backend's CPU leaves them out", name, alive)

@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile to stderr: prints, logging handlers that write to
    stdout (Ultralytics' LOGGER: "Scanning... / New cache created"), and file descriptor 1 itself
    (inherited by forked DataLoader workers), so `--json` output stays parseable."""
    moved = []
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for h in getattr(logger, "handlers", []):
            if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.__stdout__):
                moved.append((h, h.setStream(sys.stderr)))
    saved_fd = None
    try:
        sys.stdout.flush()
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, AttributeError):
        saved_fd = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        for h, stream in moved:
            h.setStream(stream)

def run_bench(cfg: BenchConfig, loaders: list[str], progress: _PROGRESS | None = None) -> list[BenchResult]:
    """Run the references and `loaders` (`cfg.repeats` rounds, round-robin); returns one row per
    backend with ratios filled in (medians over the rounds). Writes nothing to stdout."""
    cv2.setNumThreads(1)  # as the loaders do: parallelism comes from the same number of threads everywhere
    tree: list[Path] = []

    def bar(name: str) -> Callable[[int], None] | None:
        return progress(name, None) if progress else None

    def ultralytics_dir() -> Path:
        if not tree:
            root = Path(tempfile.mkdtemp(prefix="sainet-bench-ultralytics-", dir=cfg.scratch))
            tree.extend([root, link_tree(cfg.source, cfg.split, root)])
        return tree[1]

    rounds = []
    with stdout_to_stderr():
        try:
            for k in range(max(1, cfg.repeats)):
                tag = f" #{k + 1}" if cfg.repeats > 1 else ""
                if cfg.cold:
                    evict([p for p in [*cfg.stores.values(), cfg.source] if p is not None])
                rows = run_references(cfg, lambda name, t=tag: bar(name + t))
                rows += [_run_loader(name, cfg, ultralytics_dir, bar(name + tag)) for name in loaders]
                for r in rows:
                    describe(r, cfg)
                fill_ratios(rows)
                rounds.append(rows)
        finally:
            if tree:
                shutil.rmtree(tree[0], ignore_errors=True)
    return merge_rounds(rounds)
