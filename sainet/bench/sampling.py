"""Measuring one backend: images/s, batch latency, CPU time and peak PSS of the process tree."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil

from sainet.bench.gil import GilSampler
from sainet.bench.results import BenchConfig, BenchResult


def _tree(proc: psutil.Process, exclude: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """`proc` and its descendants, but those in `exclude` (processes that were there before a backend started)."""
    try:
        return [proc, *(c for c in proc.children(recursive=True) if c.pid not in exclude)]
    except psutil.Error:
        return [proc]


def child_pids(proc: psutil.Process | None = None) -> frozenset[int]:
    """The pids of the descendants of `proc` (this process) now."""
    try:
        return frozenset(c.pid for c in (proc or psutil.Process()).children(recursive=True))
    except psutil.Error:
        return frozenset()


def reap(before: frozenset[int], timeout: float = 10.0) -> list[int]:
    """Wait up to `timeout` s for the descendants that were not there `before` (a closed backend's
    workers) to exit, so their last CPU seconds are not counted to the next backend; returns the pids
    still alive (left to the caller to report)."""
    me = psutil.Process()
    try:
        new = [c for c in me.children(recursive=True) if c.pid not in before]
    except psutil.Error:
        return []
    _, alive = psutil.wait_procs(new, timeout=timeout)
    return [p.pid for p in alive]

def release_freed_memory() -> bool:
    """Hand the pages the C heap holds free back to the system (glibc's malloc_trim), so the next
    backend's PSS is counted from a baseline without them. Without it, a backend's threads reuse what
    the previous backend's threads freed into glibc's arenas (measured: 200 MB of 100 kB buffers freed
    by a thread stay resident until trimmed) and its own growth is under-counted, while the first
    backend of a run pays for it. Returns whether the call was made (False: not glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _rollup(pid: int) -> dict[str, int]:
    """Pss, Pss_Anon, Pss_File, Pss_Shmem of one process, in bytes (Linux smaps_rollup)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out

def _mapped_pss(proc: psutil.Process, roots: tuple[str, ...]) -> int:
    """PSS in bytes of the mappings of `proc` whose file lies under one of `roots` (psutil reads smaps)."""
    try:
        return sum(m.pss for m in proc.memory_maps(grouped=True) if m.path.startswith(roots))
    except psutil.Error:
        return 0


def store_roots(cfg: BenchConfig) -> tuple[str, ...]:
    """The path prefixes of the bench's stores' files (a folder's, with its separator)."""
    return tuple(str(Path(p).resolve()) + ("" if Path(p).is_file() else os.sep) for p in cfg.stores.values())


def tree_store_pss(proc: psutil.Process, roots: tuple[str, ...]) -> int:
    """Summed PSS of the stores' pages mapped by the process tree (see `_mapped_pss`)."""
    return sum(_mapped_pss(p, roots) for p in _tree(proc)) if roots else 0


def tree_pss(proc: psutil.Process, key: str = "Pss") -> int:
    """Summed PSS of the process tree. Pss_Anon is the loader's own (private, heap) memory; the
    store's pages mapped from the page cache or /dev/shm show in Pss_File / Pss_Shmem, shared by
    every process and rank that maps them."""
    return sum(_rollup(p.pid).get(key, 0) for p in _tree(proc))

def cpu_seconds(proc: psutil.Process, exclude: frozenset[int] = frozenset()) -> tuple[float, float]:
    """(tree, own): user + system CPU seconds of `proc` and its descendants (those in `exclude` left
    out), and of `proc` alone, from one read of `proc`'s clock. Two reads would differ by whatever
    its busy threads ran between them, which a short run counted as children's CPU."""
    tree = own = 0.0
    for p in _tree(proc, exclude):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        tree += t.user + t.system
        if p.pid == proc.pid:
            own = t.user + t.system
    return tree, own


def tree_cpu_seconds(proc: psutil.Process, exclude: frozenset[int] = frozenset()) -> float:
    """User + system CPU seconds of `proc` and its descendants, those in `exclude` left out."""
    return cpu_seconds(proc, exclude)[0]


class _Sampler:
    """Peak PSS (total and anonymous) of the process tree, sampled in the background.

    Reading smaps_rollup walks the process's page tables: ~23 ms per read for a loader holding
    1440x1440 batches (measured on the 2-core dev box), i.e. ~10% of a core at 4 Hz. So it samples
    every 0.5 s and keeps its own CPU time (`cpu_s`), which the bench subtracts from the backend's."""

    def __init__(self, period: float = 0.5, roots: tuple[str, ...] = (), skip: frozenset[int] = frozenset()) -> None:
        self.proc = psutil.Process()
        self.skip = skip  # helper processes of the bench (py-spy), not the backend's
        self.period = period
        self.peak = 0
        self.peak_anon = 0
        #: the stores' files mapped by the tree, read once at the end (full smaps is slower than the rollup)
        self.roots = roots
        self.store = 0
        self.cpu_s = 0.0  # CPU time spent sampling (not the backend's)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        t0 = time.thread_time()
        roll = [_rollup(p.pid) for p in _tree(self.proc, self.skip)]
        self.peak = max(self.peak, sum(r.get("Pss", 0) for r in roll))
        self.peak_anon = max(self.peak_anon, sum(r.get("Pss_Anon", 0) for r in roll))
        self.cpu_s += time.thread_time() - t0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.roots:
            t0 = time.thread_time()
            self.store = tree_store_pss(self.proc, self.roots)
            self.cpu_s += time.thread_time() - t0

def evict(paths: list[Path]) -> int:
    """Drop the page cache of every file under `paths` (posix_fadvise DONTNEED): cold reads."""
    n = 0
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            try:
                fd = os.open(f, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n

def _pull(batches: Iterator[int], cfg: BenchConfig, progress: Callable[[int], None] | None,
          t0: float) -> tuple[list[float], int]:
    """The timed loop: each batch's latency (s) and the images pulled, until `cfg`'s batches or seconds."""
    lat: list[float] = []
    images = 0
    last = time.perf_counter()
    while True:
        n = next(batches, None)
        now = time.perf_counter()
        if n is None:
            break
        lat.append(now - last)
        last = now
        images += n
        if progress:
            progress(n)
        if cfg.batches is not None and len(lat) >= cfg.batches:
            break
        if cfg.batches is None and now - t0 >= (cfg.seconds or 10.0):
            break
    return lat, images


def measure(name: str, batches: Iterator[int], cfg: BenchConfig, progress: Callable[[int], None] | None,
             base_pss: int, base_anon: int, exclude: frozenset[int] = frozenset(), base_store: int = 0) -> BenchResult:
    """Pull from `batches` (yielding images per batch): warm-up, then time it. Memory is counted
    from `base_*`, taken before the backend was built (so a RAM cache made at set-up counts; the
    stores' pages the bench's process already mapped do not count to the backend's `pss_store_mb`); CPU
    time of the processes in `exclude` (there before the backend was built) is not the backend's. With
    `cfg.gil`, py-spy samples how long the bench's process holds its GIL meanwhile (`gil.GilSampler`):
    the serial part of a loader whose work runs on the trainer's threads (`BenchResult.set_serial`)."""
    for _ in range(cfg.warmup):
        if next(batches, None) is None:
            break
    me = psutil.Process()
    with contextlib.ExitStack() as stack:
        gil = stack.enter_context(GilSampler()) if cfg.gil else None
        skip = exclude | (gil.pids if gil is not None else frozenset())
        (cpu0, own0), t0 = cpu_seconds(me, skip), time.perf_counter()
        with _Sampler(roots=store_roots(cfg), skip=gil.pids if gil is not None else frozenset()) as sampler:
            lat, images = _pull(batches, cfg, progress, t0)
            dt = time.perf_counter() - t0
            if gil is not None:
                gil.stop()  # its window ends with the loop: the memory sampler's last reads are not the loader's
        cpu1, own1 = cpu_seconds(me, skip)
        cpu_s = max(0.0, cpu1 - cpu0 - sampler.cpu_s)
        own_s = max(0.0, own1 - own0 - sampler.cpu_s)  # the trainer's process alone: the serial part
    # seconds the GIL was held over the timed window (py-spy's window is the loop's, give or take its start)
    gil_s = gil.share * dt if gil is not None and gil.share is not None else None
    ms = np.array(lat) * 1000
    r = BenchResult(name, "loader", images / dt if dt else 0.0, len(lat), images, dt,
                       float(np.percentile(ms, 50)) if len(ms) else None, float(np.percentile(ms, 99)) if len(ms) else None,
                       cpu_s / dt * 100 if dt else 0.0, max(0, sampler.peak - base_pss) / 1e6,
                       max(0, sampler.peak_anon - base_anon) / 1e6, cpu_ms_per_image=cpu_s * 1000 / images if images else None,
                       pss_store_mb=max(0, sampler.store - base_store) / 1e6 if sampler.roots else None)
    r.set_serial(own_s, cpu_s, gil_s)
    if gil is not None and gil.reason:
        r.gil_note = gil.reason
    return r
