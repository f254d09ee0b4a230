"""Host memory a loader takes while it runs, against the run budget's estimate of it.

    python benchmarks/loader_memory.py --size 1440x808 --imgsz 640 --images 96 --batch 32 --loader lmdb      # an eval loader
    python benchmarks/loader_memory.py --size 1440x808 --imgsz 640 --batch 16 --loader lmdb-mp --threads 4 --augment

Packs a synthetic dataset once (under --work; LMDB or shards on that disk, so the store's pages are
file-backed and not counted), then in a fresh process per measurement builds the loader, iterates it
--epochs times (--step-ms per batch: a slow consumer lets every buffer fill) and reports the
growth of the memory the loader's processes hold: private (anonymous) and shared-memory pages, proportional set size summed over the process and its children (the -mp
loaders' assembler processes and their slot file, counted once), peak minus after-build, in MiB. The
run budget's figure for the same loader (`sainet.budget.estimate_budget`) is printed beside it. Compare
commits by running it from each (a worktree, PYTHONPATH to it), alternating.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path


def tree_pss(pid: int) -> int:
    """Bytes of anonymous and shared-memory pages (PSS) of `pid` and its descendants."""
    import psutil

    total = 0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                kb = {k.rstrip(":"): int(v) for k, v, unit in (ln.split() for ln in f if ln.endswith(" kB\n"))}
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone between listing and reading
        total += (kb.get("Pss_Anon", 0) + kb.get("Pss_Shmem", 0)) * 1024
    return total


def _estimate(ld: object, a: argparse.Namespace) -> int:
    """The run budget's bytes for this loader: the train term with no val loader, or the val term."""
    from loaders.backends import BACKENDS
    from sainet.budget import estimate_budget, store_decode_sizes

    hw = tuple(ld.imgsz)  # type: ignore[attr-defined]
    decode = store_decode_sizes(ld.source.store, hw)  # type: ignore[attr-defined]
    kw = dict(images=0, imgsz=hw, threads=a.threads, prefetch=a.prefetch, workers=0, decode=decode, device="cpu",
              processes=BACKENDS[a.loader].processes, resample=a.resample)
    if a.augment:
        return estimate_budget(batch=a.batch, val_batch=0, **kw).sainet_loader_bytes
    return estimate_budget(batch=1, val_batch=a.batch, **kw).val_loader_bytes


def measure(store: Path, a: argparse.Namespace) -> tuple[float, float]:
    """(measured growth, the budget's estimate), MiB."""
    import os

    from loaders import build_loader

    ld = build_loader(store, a.loader, batch_size=a.batch, imgsz=a.imgsz, augment=a.augment, threads=a.threads,
                      prefetch=a.prefetch, resample=a.resample)
    est = _estimate(ld, a)
    base, peak, done = tree_pss(os.getpid()), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], tree_pss(os.getpid()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        for _ in range(a.epochs):
            for _b in ld:
                time.sleep(a.step_ms / 1000)  # a training step: the loader fills its buffers ahead of it
    finally:
        done.set()
        t.join()
        ld.close()
    return (peak[0] - base) / 2**20, est / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1440x808")
    ap.add_argument("--imgsz", default="640")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="decode threads; processes for an -mp loader")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--loader", default="lmdb")
    ap.add_argument("--step-ms", type=float, default=0, help="the consumer's time per batch (a training step's)")
    ap.add_argument("--resample", default="fast", choices=("fast", "ultralytics"))
    ap.add_argument("--augment", action="store_true", help="a train loader (default: an eval loader)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes, one measurement each")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sainet-loader-memory"))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: measure once, print MiB
    a = ap.parse_args(argv)
    store = a.work / f"{a.size}-{a.images}" / ("lmdb" if "lmdb" in a.loader else "shards")
    if a.one:
        got, est = measure(store, a)
        print(f"{got:.1f} {est:.1f}")
        return
    if not store.exists():
        from cache_tools import PackOptions, pack
        from sainet.core.geometry import parse_wxh
        from sainet.synth import synthesize

        src = store.parent / "src"
        if not src.exists():
            synthesize(src, images=a.images, size=parse_wxh(a.size), seed=1, val_fraction=0)
        pack(src, store, PackOptions(container="lmdb" if "lmdb" in a.loader else "shards"))
    args = [sys.executable, __file__, "--one", *(argv if argv is not None else sys.argv[1:])]
    got = [subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[-2:] for _ in range(a.repeats)]
    kind = "train" if a.augment else "eval"
    print(f"{a.loader} {kind}, {a.threads} threads, batch {a.batch}, imgsz {a.imgsz} from {a.size}, {a.epochs} epochs: "
          "memory growth " + ", ".join(f"{float(g):.0f}" for g, _ in got) + f" MiB; the budget says {float(got[0][1]):.0f} MiB")


if __name__ == "__main__":
    main()
