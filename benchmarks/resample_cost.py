"""What `resample="ultralytics"` costs: a loader's augmented train batches in both modes (lmdb, or
`--loader dali` in its CPU mode), alternating round after round in one run (so a change in the
machine's load shows as spread, not bias).

    python benchmarks/resample_cost.py --size 1440x808 --imgsz 640 --images 64 --seconds 8 --rounds 3

Reports images/s and the process's CPU ms per image for each mode, and the ratios (fast / ultralytics).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from cache_tools import PackOptions, pack
from loaders import build_loader
from sainet.bench.results import BENCH_HYP
from sainet.core.geometry import parse_wxh
from sainet.synth import synthesize

MODES = ("fast", "ultralytics")


def measure(store: Path, resample: str, imgsz: int, batch: int, threads: int, seconds: float,
            kind: str = "lmdb") -> tuple[float, float]:
    """(images/s, CPU ms per image) of one timed loop after 2 warm-up batches."""
    loader = build_loader(store, kind, batch_size=batch, imgsz=imgsz, threads=threads, hyp=dict(BENCH_HYP), resample=resample,
                          device="cpu" if kind == "dali" else None)
    me = psutil.Process()
    try:
        it = iter(loader)
        for _ in range(2):
            b = next(it, None) or next(iter(loader))
        cpu0, t0, n = sum(me.cpu_times()[:2]), time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            b = next(it, None)
            if b is None:
                it = iter(loader)
                continue
            n += int(b["img"].shape[0])
        dt, cpu = time.perf_counter() - t0, sum(me.cpu_times()[:2]) - cpu0
        return n / dt, 1000 * cpu / max(n, 1)
    finally:
        loader.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1440x808")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loader", default="lmdb", choices=("lmdb", "dali"), help="dali: its CPU mode (DALI's CPU decoder)")
    a = ap.parse_args(argv)
    rows: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="sainet-resample-") as tmp:
        src, store = Path(tmp) / "src", Path(tmp) / "lmdb"
        synthesize(src, images=a.images, size=parse_wxh(a.size), seed=0, val_fraction=0)
        pack(src, store, PackOptions(container="lmdb"))
        for r in range(a.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                rows[mode].append(measure(store, mode, a.imgsz, a.batch, a.threads, a.seconds, a.loader))
                print(f"round {r} {mode}: {rows[mode][-1][0]:.1f} img/s, {rows[mode][-1][1]:.1f} CPU ms/img", flush=True)
    med = {m: (statistics.median(x for x, _ in v), statistics.median(c for _, c in v)) for m, v in rows.items()}
    print(f"| {a.loader}, {a.size} → {a.imgsz} | fast {med['fast'][0]:.1f} img/s, {med['fast'][1]:.1f} CPU ms/img | "
          f"ultralytics {med['ultralytics'][0]:.1f} img/s, {med['ultralytics'][1]:.1f} CPU ms/img | "
          f"{med['fast'][0] / med['ultralytics'][0]:.2f}x img/s, {med['ultralytics'][1] / med['fast'][1]:.2f}x CPU |")


if __name__ == "__main__":
    main()
