"""Accuracy parity with error bars: the same model, data, epochs and hyperparameters trained with
Ultralytics' own dataloader and with sainet loaders, several seeds each, in one run (issue 14).

    python benchmarks/accuracy_parity.py --json benchmarks/results/cpu/accuracy_parity.json

Defaults are sized for about 90 minutes on 2 CPU cores (~23 s per training epoch of 300 images at
imgsz 256, batch 16): 500 synthetic 640x360 images (300 train, 200 val), `yolov8n.yaml` from
scratch, 16 epochs of which the last 2 without mosaic (`close_mosaic` 2: Ultralytics' default 10
would switch mosaic off for the whole of a 10-epoch run, and the mosaic is what differs), the val
split evaluated after the final epoch (per-epoch validation would cost ~20% more and is not what
is compared), imgsz 256, batch 16, Ultralytics' default hyperparameters otherwise, and

- loaders ultralytics, lmdb (sainet CPU augment) and dali (CPU mode), seeds 0, 1, 2 each;
- a small per-rank batch (8): ultralytics and lmdb, seed 0 (sainet's mosaic takes its partners
  from the same batch; at batch 8 a partner is drawn from 8 images rather than the dataset);
- rectangular training (imgsz 256x144 -> 256x160) against square 256 at equal wall-clock time:
  sainet lmdb, seed 0; the rectangular run gets the square run's wall time (Ultralytics `time`),
  a shape Ultralytics' own loader cannot train (it squares `imgsz`).

Reports mean +- sd of mAP50 / mAP50-95 (best epoch and final) and wall time per group, and for each
sainet group the difference to Ultralytics' mean with two standard errors of that difference.
Goal: each sainet mean within max(0.01, 2 SE) of Ultralytics'. `--smoke` runs a tiny
configuration (a couple of minutes) that only checks the script end to end. Never in `make test`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cache_tools import PackOptions, pack
from sainet.core.geometry import parse_wxh
from sainet.synth import synthesize
from sainet.train import TrainRequest, train

METRICS = ("mAP50_best", "mAP50_final", "mAP50-95_best", "mAP50-95_final")


@dataclass(frozen=True)
class Run:
    group: str  # rows of one group are the seeds of one configuration
    loader: str
    seed: int
    batch: int
    imgsz: str
    hours: float | None = None  # Ultralytics `time`: train for this long instead of `epochs`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--val-fraction", type=float, default=0.4, help="the val split (>= 200 images by default)")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--close-mosaic", type=int, default=2,
                    help="epochs at the end without mosaic (Ultralytics' default 10 would switch mosaic off for the whole of a "
                         "short run, and sainet's same-batch mosaic would go untested)")
    ap.add_argument("--val-each-epoch", action="store_true", help="validate every epoch (default: the final epoch only)")
    ap.add_argument("--imgsz", default="256")
    ap.add_argument("--rect-imgsz", default="256x144", help="the rectangular shape of the equal-wall-clock row ('' skips it)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--small-batch", type=int, default=8, help="the small per-rank batch row (0 skips it)")
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--loaders", default="ultralytics,lmdb,dali")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sainet-parity"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", type=Path, action="append", default=[],
                    help="runs.jsonl of an earlier invocation with the same data and settings: a run found there is "
                         "not trained again (read before each run, so another invocation may still be adding to it)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.val_fraction, args.size, args.epochs, args.imgsz = 24, 0.5, "160x96", 2, "64"
        args.close_mosaic = 1
        args.rect_imgsz, args.batch, args.small_batch, args.seeds = "64x32", 4, 2, "0,1"
    return args


def plan_runs(args: argparse.Namespace) -> list[Run]:
    seeds = [int(s) for s in args.seeds.split(",")]
    loaders = args.loaders.split(",")
    runs = [Run(f"{ld} b{args.batch}", ld, s, args.batch, args.imgsz) for ld in loaders for s in seeds]
    if args.small_batch:
        runs += [Run(f"{ld} b{args.small_batch}", ld, seeds[0], args.small_batch, args.imgsz)
                 for ld in ("ultralytics", "lmdb") if ld in loaders]
    return runs


def _reused(args: argparse.Namespace, run: Run) -> dict | None:
    """The row of `run` in a --reuse file, if one has it."""
    for path in args.reuse:
        lines = path.read_text().splitlines() if path.is_file() else []
        for r in map(json.loads, filter(None, lines)):
            if all(r.get(k) == v for k, v in run.__dict__.items() if k != "hours") and (run.hours is None) == (r.get("hours") is None):
                print(f"reused from {path}: {json.dumps(r)}", flush=True)
                return r
    return None


def train_one(args: argparse.Namespace, run: Run) -> dict:
    reused = _reused(args, run)
    if reused is not None:
        return reused
    sets = {"seed": run.seed, "deterministic": True, "val": args.val_each_epoch, "close_mosaic": args.close_mosaic}
    if run.hours is not None:
        sets["time"] = run.hours
    t = time.perf_counter()
    r = train(TrainRequest(data=str(args.work / "store"), loader=run.loader, model=args.model, imgsz=run.imgsz,
                           epochs=args.epochs, batch=run.batch, device="cpu", profile="cpu", project=str(args.work / "runs"),
                           name=f"{run.group.replace(' ', '-')}-s{run.seed}", sets=sets))
    wall = time.perf_counter() - t
    with open(r.save_dir / "results.csv", newline="") as f:
        epochs = [{k.strip(): v for k, v in e.items()} for e in csv.DictReader(f)]
    col = lambda key: [float(e.get(key) or 0) for e in epochs] or [0.0]  # noqa: E731
    row = {**run.__dict__, "wall_s": round(wall, 1), "epochs_done": len(epochs),
           "mAP50_final": col("metrics/mAP50(B)")[-1], "mAP50_best": max(col("metrics/mAP50(B)")),
           "mAP50-95_final": col("metrics/mAP50-95(B)")[-1], "mAP50-95_best": max(col("metrics/mAP50-95(B)"))}
    print(json.dumps(row), flush=True)
    return row


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: list[dict]) -> list[dict]:
    """mean +- sd per group; for sainet groups, the difference of mAP50 (final epoch) to the Ultralytics
    group of the same batch and two standard errors of that difference."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for name, rs in groups.items():
        g = {"group": name, "loader": rs[0]["loader"], "batch": rs[0]["batch"], "imgsz": rs[0]["imgsz"], "seeds": len(rs)}
        for k in (*METRICS, "wall_s"):
            g[k] = _mean_sd([float(r[k]) for r in rs])
        out.append(g)
    pair = next((u for u in out if u["group"].endswith("(equal-time pair)")), None)
    for g in out:
        ref = next((u for u in out if u["loader"] == "ultralytics" and u["batch"] == g["batch"] and u["imgsz"] == g["imgsz"]), None)
        if g["group"].endswith("(equal time)"):
            ref = pair  # rectangular vs square sainet at equal wall-clock time (Ultralytics cannot train this shape)
        if ref is None or ref is g:
            continue
        (m1, s1), (m0, s0) = g["mAP50_final"], ref["mAP50_final"]
        diff, se2 = m1 - m0, 2 * math.sqrt(s1**2 / g["seeds"] + s0**2 / ref["seeds"])
        g["mAP50_vs_ultralytics"], g["two_se"] = diff, se2
        g["parity"] = abs(diff) <= max(0.01, se2) or diff > 0
        g["reference"] = ref["group"]
        g["speedup_vs_ultralytics"] = ref["wall_s"][0] / g["wall_s"][0]
    return out


def print_table(summary: list[dict]) -> None:
    pm = lambda v: f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    print("| group | imgsz | seeds | mAP50 best | mAP50 final | mAP50-95 best | mAP50-95 final | wall s | "
          "mAP50 − Ultralytics (2 SE) | parity | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for g in summary:
        d = f"{g['mAP50_vs_ultralytics']:+.4f} ({g['two_se']:.4f})" if "mAP50_vs_ultralytics" in g else "–"
        if g.get("reference", "").endswith("(equal-time pair)"):
            d += " vs square"
        ok = ("yes" if g["parity"] else "no") if "parity" in g else "–"
        sp = f"{g['speedup_vs_ultralytics']:.2f}×" if "speedup_vs_ultralytics" in g else "–"
        print(f"| {g['group']} | {g['imgsz']} | {g['seeds']} | {pm(g['mAP50_best'])} | {pm(g['mAP50_final'])} | "
              f"{pm(g['mAP50-95_best'])} | {pm(g['mAP50-95_final'])} | {g['wall_s'][0]:.0f} ± {g['wall_s'][1]:.0f} | {d} | "
              f"{ok} | {sp} |")


def _commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=Path(__file__).parent, check=False)
    return r.stdout.strip() or "unknown"


def _save_partial(args: argparse.Namespace, rows: list[dict]) -> None:
    """Each finished run is kept in WORK/runs.jsonl, so a crash two hours in loses one run, not all."""
    with open(args.work / "runs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> None:
    import torch
    import ultralytics

    args = parse_args(argv)
    w, h = parse_wxh(args.size)
    if args.work.exists():
        shutil.rmtree(args.work)
    synthesize(args.work / "src", images=args.images, size=(w, h), seed=0, val_fraction=args.val_fraction)
    pack(args.work / "src", args.work / "store", PackOptions(container="lmdb"))
    rows = []
    for run in plan_runs(args):
        rows.append(train_one(args, run))
        _save_partial(args, rows)
    if args.rect_imgsz and "lmdb" in args.loaders.split(","):
        square = next(r for r in rows if r["loader"] == "lmdb" and r["batch"] == args.batch)
        rows.append(square | {"group": f"lmdb b{args.batch} square {args.imgsz} (equal-time pair)"})
        rows.append(train_one(args, Run(f"lmdb b{args.batch} rect {args.rect_imgsz} (equal time)", "lmdb", square["seed"],
                                        args.batch, args.rect_imgsz, hours=square["wall_s"] / 3600)))
        _save_partial(args, rows)
    summary = summarize(rows)
    doc = {"host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "ultralytics": ultralytics.__version__, "torch": torch.__version__, "commit": _commit(),
           "settings": json.loads(json.dumps(vars(args), default=str)),  # paths (and --reuse's list of them) as text
           "runs": rows, "summary": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    print_table(summary)


if __name__ == "__main__":
    main()
