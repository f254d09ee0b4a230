"""Augment distribution parity table (issue 22): sainet's train batches against Ultralytics' own.

    python benchmarks/augment_parity.py --images 960 --dali

Draws `--images` augmented images (imgsz 256, batch 16, Ultralytics' default hyperparameters) from
Ultralytics' YOLODataset (seeds s and s + 1), sainet's lmdb loader, optionally its dali loader in
CPU mode, and the two known-bad variants the test calibrates with (partners from the batch only; no
HSV), all over the same 144 synthetic 576x324 images, and prints one markdown table: each
statistic's median (distinct sources: mean; partner share: the share) and its two-sample p-value
against Ultralytics (`sainet.bench.parity`). `tests/test_augment_parity.py` runs the same draws at
480 images in `make test`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sainet.bench.parity import compare, run, table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=960)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dali", action="store_true", help="also the dali loader (CPU mode)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    variants: dict = {"batch_only (bad)": {"partner_batches": 0}, "no_hsv (bad)": {"hyp": {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}}}
    if args.dali:
        variants = {"dali (cpu)": {"kind": "dali"}, **variants}
    with tempfile.TemporaryDirectory(prefix="sainet-parity-") as tmp:
        draws = run(Path(tmp), images=args.images, imgsz=args.imgsz, seed=args.seed, variants=variants)
    print(table(draws))
    if args.json:
        rows = {k: [r.__dict__ for r in compare(d, draws["ultralytics"])] for k, d in draws.items() if k != "ultralytics"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "vs_ultralytics": rows}, indent=2))


if __name__ == "__main__":
    main()
