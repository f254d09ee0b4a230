"""Augment distribution parity table (issue 22): sainet's train batches against Ultralytics' own.

    python benchmarks/augment_parity.py --images 960 --dali

Draws `--images` augmented images (imgsz 256, batch 16, Ultralytics' default hyperparameters) from
Ultralytics' YOLODataset (seeds s and s + 1), sainet's lmdb loader, optionally its dali loader in
CPU mode, and the two known-bad variants the test calibrates with (partners from the batch only; no
HSV) and, with `--max-size N`, the lmdb loader over a store packed with `sainet pack --max-size N`
(smaller re-encoded JPEGs), all over the same 144 synthetic 576x324 images, and prints one markdown table: each
statistic's median (distinct sources: mean; partner share: the share) and its two-sample p-value
against Ultralytics (`sainet.bench.parity`). `tests/test_augment_parity.py` runs the same draws at
480 images in `make test`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cache_tools import PackOptions, pack
from sainet.bench.parity import compare, draw_sainet, run, table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=960)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dali", action="store_true", help="also the dali loader (CPU mode)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--max-size", type=int, default=None,
                    help="also a store packed with `sainet pack --max-size N` (re-encoded smaller JPEGs)")
    args = ap.parse_args(argv)
    variants: dict = {"batch_only (bad)": {"partner_batches": 0}, "no_hsv (bad)": {"hyp": {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}}}
    if args.dali:
        variants = {"dali (cpu)": {"kind": "dali"}, **variants}
    with tempfile.TemporaryDirectory(prefix="sainet-parity-") as tmp:
        draws = run(Path(tmp), images=args.images, imgsz=args.imgsz, seed=args.seed, variants=variants)
        if args.max_size:
            store = Path(tmp) / f"lmdb-max{args.max_size}"
            pack(Path(tmp) / "src", store, PackOptions(container="lmdb", max_size=args.max_size))
            draws[f"lmdb --max-size {args.max_size}"] = draw_sainet(store, hyp={}, seed=args.seed, images=args.images,
                                                                   batch=16, imgsz=args.imgsz)
    print(table(draws))
    if args.json:
        rows = {k: [r.__dict__ for r in compare(d, draws["ultralytics"])] for k, d in draws.items() if k != "ultralytics"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "vs_ultralytics": rows}, indent=2))


if __name__ == "__main__":
    main()
