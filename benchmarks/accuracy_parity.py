"""Accuracy parity: the same model, data, epochs and hyperparameters trained with Ultralytics' own
dataloader and with sainet loaders, side by side in one run; records mAP50 and wall time.

    python benchmarks/accuracy_parity.py --images 200 --epochs 40 --imgsz 256 --loaders ultralytics,lmdb,dali \\
        --json benchmarks/results/cpu/accuracy_parity.json

Goal (issue 5): sainet's mAP50 >= Ultralytics' - 0.01 while faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

from cache_tools import PackOptions, pack
from sainet.synth import synthesize
from sainet.train import TrainRequest, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--imgsz", default="256")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--loaders", default="ultralytics,lmdb,dali")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sainet-parity"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    if args.work.exists():
        shutil.rmtree(args.work)
    synthesize(args.work / "src", images=args.images, size=(w, h), seed=0, val_fraction=0.2)
    pack(args.work / "src", args.work / "store", PackOptions(container="lmdb"))
    rows = []
    for loader in args.loaders.split(","):
        t = time.perf_counter()
        r = train(TrainRequest(data=str(args.work / "store"), loader=loader, model=args.model, imgsz=args.imgsz,
                               epochs=args.epochs, batch=args.batch, device="cpu", profile="cpu",
                               project=str(args.work / "runs"), name=loader, sets={"seed": 0, "deterministic": True}))
        wall = time.perf_counter() - t
        m = r.metrics
        rows.append({"loader": loader, "mAP50_final": round(m.get("metrics/mAP50(B)", 0), 4),
                     "mAP50_best": round(m.get("best_mAP50", 0), 4), "mAP50-95_final": round(m.get("metrics/mAP50-95(B)", 0), 4),
                     "wall_s": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    ref = next((r for r in rows if r["loader"] == "ultralytics"), None)
    for r in rows:
        if ref:
            r["mAP50_vs_ultralytics"] = round(r["mAP50_best"] - ref["mAP50_best"], 4)
            r["speedup_vs_ultralytics"] = round(ref["wall_s"] / r["wall_s"], 3)
    doc = {"host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "results": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    print("| loader | mAP50 (best) | mAP50 (final) | mAP50-95 (final) | wall s | mAP50 - Ultralytics | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['loader']} | {r['mAP50_best']} | {r['mAP50_final']} | {r['mAP50-95_final']} | {r['wall_s']} | "
              f"{r.get('mAP50_vs_ultralytics', '-')} | {r.get('speedup_vs_ultralytics', '-')} |")


if __name__ == "__main__":
    main()
