"""What an eval (val) loader's batches hold in host memory: RSS growth over a few eval epochs.

    python benchmarks/eval_memory.py --size 1440x808 --imgsz 640 --images 96 --batch 32 --loader lmdb

Packs a synthetic dataset once (under --work), then in a fresh process per measurement iterates the
eval loader --epochs times and prints the RSS growth (peak minus after-build), in MiB. Compare commits
by running it from each (a worktree, PYTHONPATH to it), alternating, on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def measure(store: Path, loader: str, imgsz: str, batch: int, threads: int, epochs: int) -> float:
    import psutil

    from loaders import build_loader

    proc = psutil.Process()
    ld = build_loader(store, loader, batch_size=batch, imgsz=imgsz, augment=False, threads=threads)
    base, peak = proc.memory_info().rss, 0
    try:
        for _ in range(epochs):
            for _b in ld:
                peak = max(peak, proc.memory_info().rss)
    finally:
        ld.close()
    return (peak - base) / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1440x808")
    ap.add_argument("--imgsz", default="640")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--loader", default="lmdb")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes, one measurement each")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sainet-eval-memory"))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: measure once, print MiB
    a = ap.parse_args(argv)
    store = a.work / f"{a.size}-{a.images}" / "store"
    if a.one:
        print(f"{measure(store, a.loader, a.imgsz, a.batch, a.threads, a.epochs):.1f}")
        return
    if not store.exists():
        from cache_tools import PackOptions, pack
        from sainet.core.geometry import parse_wxh
        from sainet.synth import synthesize

        synthesize(store.parent / "src", images=a.images, size=parse_wxh(a.size), seed=1, val_fraction=0)
        pack(store.parent / "src", store, PackOptions(container="lmdb" if "lmdb" in a.loader else "shards"))
    args = [sys.executable, __file__, "--one", *(argv if argv is not None else sys.argv[1:])]
    got = [float(subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[-1]) for _ in range(a.repeats)]
    print(f"{a.loader} eval, batch {a.batch}, imgsz {a.imgsz} from {a.size}, {a.epochs} epochs: RSS growth "
          + ", ".join(f"{g:.0f}" for g in got) + " MiB")


if __name__ == "__main__":
    main()
