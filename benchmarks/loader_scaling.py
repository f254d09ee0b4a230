"""Images/s of sainet's CPU loaders at 1, 2, ... threads or assembler processes (issue 23's scaling figure).

    python benchmarks/loader_scaling.py --store STORE --imgsz 640 --counts 1,2 --loaders lmdb,lmdb-mp

Each (loader, count) runs `--seconds` after 3 warm-up batches, round after round (`--rounds`), so a
change in the machine's load shows as a spread instead of a bias. CPU % is the whole process tree's
(the assembler processes included); GIL % is the share of that CPU time during which the trainer's
process held its GIL (py-spy: the thread loaders' serial part). On a 16-core machine: ``--counts
1,4,8,16``; linear scaling is count x the images/s at 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psutil

from loaders import build_loader
from sainet.bench.gil import GilSampler
from sainet.bench.results import BENCH_HYP
from sainet.bench.sampling import tree_cpu_seconds


class _Cycle:
    """Batches of `loader`, epoch after epoch (a small store has fewer batches than the warm-up)."""

    def __init__(self, loader, store: Path):
        self.loader, self.store, self.it = loader, store, iter(loader)

    def next(self) -> dict:
        b = next(self.it, None)
        if b is None:
            self.it = iter(self.loader)
            b = next(self.it, None)
            if b is None:
                raise SystemExit(f"{self.store}: the loader yields no train batch (fewer images than --batch?)")
        return b


def measure(store: Path, kind: str, count: int, imgsz: int, batch: int, seconds: float) -> dict:
    """One (loader, count): images/s, CPU % of the tree, and the GIL share of the loader's CPU time
    (py-spy, `sainet.bench.gil`; None with the reason where it cannot sample)."""
    loader = build_loader(store, kind, batch_size=batch, imgsz=imgsz, threads=count, hyp=dict(BENCH_HYP))
    me = psutil.Process()
    try:
        batches = _Cycle(loader, store)
        for _ in range(3):
            batches.next()
        with GilSampler() as gil:
            c0, t0, n = tree_cpu_seconds(me, gil.pids), time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                n += int(batches.next()["img"].shape[0])
            dt = time.perf_counter() - t0
            gil.stop()
            cpu = tree_cpu_seconds(me, gil.pids) - c0
        share = gil.share * dt / cpu if gil.share is not None and cpu > 0 else None
        return {"loader": kind, "count": count, "images_per_s": n / dt, "cpu_percent": 100 * cpu / dt,
                "gil_percent": None if share is None else 100 * share, "gil_note": gil.reason}
    finally:
        loader.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--counts", default="1,2")
    ap.add_argument("--loaders", default="lmdb,lmdb-mp")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    for r in range(a.rounds):
        for kind in a.loaders.split(","):
            for count in (int(c) for c in a.counts.split(",")):
                row = {"round": r, **measure(a.store, kind, count, a.imgsz, a.batch, a.seconds)}
                rows.append(row)
                gil = "-" if row["gil_percent"] is None else f"{row['gil_percent']:.1f}%"
                print(f"round {r} {kind} x{count}: {row['images_per_s']:.1f} img/s, {row['cpu_percent']:.0f}% CPU, "
                      f"GIL {gil} of it", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"imgsz": a.imgsz, "batch": a.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
