"""Packing throughput and store sizes per container and mode, on synthetic 1440x808 images.

    python benchmarks/pack_bench.py --images 1000 --work /dev/shm/sainet-bench --json benchmarks/results/cpu/pack.json

Packs the same source four ways (shards/lmdb x jpeg/raw) one after another in one run and prints
images/s, MB/s of source JPEG consumed, and the store size relative to the source.
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
from sainet.core.geometry import parse_imgsz, parse_wxh
from sainet.synth import synthesize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", default="1440x808")
    ap.add_argument("--imgsz", default="1440x808", help="raw frame shape (padded to stride 32)")
    ap.add_argument("--work", type=Path, default=Path("/dev/shm/sainet-bench"))
    ap.add_argument("--source", type=Path, default=None, help="reuse a dataset instead of synthesizing one")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    w, h = parse_wxh(args.size)
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.source or args.work / "src"
    if args.source is None and not (src / "data.yaml").exists():
        t = time.perf_counter()
        synthesize(src, images=args.images, size=(w, h), seed=0)
        print(f"synthesized {args.images} images in {time.perf_counter() - t:.1f}s")
    src_bytes = sum(p.stat().st_size for p in (src / "images").rglob("*.jpg"))
    rows = []
    for container in ("shards", "lmdb"):
        for mode in ("jpeg", "raw"):
            out = args.work / f"{container}-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            r = pack(src, out, PackOptions(container=container, mode=mode, imgsz=parse_imgsz(args.imgsz), threads=args.threads))
            dt = time.perf_counter() - t
            rows.append({"container": container, "mode": mode, "images": r.records, "seconds": round(dt, 2),
                         "images_per_s": round(r.records / dt, 1), "source_MB_per_s": round(src_bytes / dt / 1e6, 1),
                         "store_bytes": r.store_bytes, "store_vs_source": round(r.store_bytes / src_bytes, 3),
                         "bytes_per_image": r.store_bytes // max(r.records, 1)})
            print(json.dumps(rows[-1]))
            if not args.keep:
                shutil.rmtree(out)
    doc = {"host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
           "source": {"images": args.images, "size": args.size, "bytes": src_bytes}, "imgsz": args.imgsz,
           "threads": args.threads, "work": str(args.work), "results": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    print("| container | mode | img/s | store size | vs source JPEG | bytes/image |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['container']} | {r['mode']} | {r['images_per_s']} | {r['store_bytes'] / 1e9:.2f} GB | "
              f"{r['store_vs_source']:.2f}x | {r['bytes_per_image']:,} |")


if __name__ == "__main__":
    main()
