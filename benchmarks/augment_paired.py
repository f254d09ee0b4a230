"""Image-by-image augment parity (issue 22): sainet's train images against their Ultralytics twins.

    python benchmarks/augment_paired.py --images 480 --dali

Each sainet image is paired with the image Ultralytics' own transforms make of the same sources under
the same draws (`sainet.bench.paired`), over a synthetic dataset shaped like the training comparison's
(`--size 640x360`, imgsz 256) and like the distribution test's (576x324). Prints one markdown row per
(data, loader): boxes, the largest box difference, mean |pixel difference|, sharpness ratio (sainet /
twin, ± its standard error) and the sub-pixel shift of sainet's content. `--warp-all` adds the CPU
executor with every tile warped at its sub-pixel position (`render_image(resize=False)`, the exact
reference; slower) instead of the kept resize fast path. `--two-stage` adds the loader with
`resample="ultralytics"`: Ultralytics' two stages — a full-size decode, a bilinear resize to its load
size (long side = imgsz), then every tile warped.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

from cache_tools import PackOptions, pack
from sainet.bench.paired import paired_draws
from sainet.core.geometry import parse_wxh
from sainet.synth import synthesize


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--sizes", default="640x360,576x324", help="source sizes, one synthetic dataset each")
    ap.add_argument("--dali", action="store_true", help="also the dali loader (CPU mode)")
    ap.add_argument("--warp-all", action="store_true", help="also the CPU executor without its resize fast path")
    ap.add_argument("--two-stage", action="store_true", help="also resample='ultralytics' (full decode, resize, warp)")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args(argv)
    print("| sources | loader | images | boxes (Ultralytics / sainet) | max box diff px | classes equal | mean abs pixel diff | "
          "sharpness sainet / twin | shift x, y px (sd) |")
    print("|---|---|---:|---|---:|---|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="sainet-paired-") as tmp:
        for size in a.sizes.split(","):
            root = Path(tmp) / size
            synthesize(root / "src", images=144, size=parse_wxh(size), seed=3, val_fraction=0)
            pack(root / "src", root / "lmdb", PackOptions(container="lmdb"))
            variants = ["lmdb", *(["dali"] if a.dali else []), *(["lmdb, warp-all"] if a.warp_all else []),
                        *(["lmdb, resample=ultralytics"] if a.two_stage else [])]
            for name in variants:
                r = _measure(root, name, a)
                print(f"| {size} → {a.imgsz} | {name} | {r.images} | {r.boxes[0]} / {r.boxes[1]} | {r.box_max_abs_px:.1e} | "
                      f"{'yes' if r.classes_equal else 'no'} | "
                      f"{r.pixel_mean_abs:.2f} | {r.sharpness_ratio:.3f} ± {r.sharpness_ratio_se:.3f} | "
                      f"{r.shift_px[0]:+.3f}, {r.shift_px[1]:+.3f} ({r.shift_sd_px[0]:.2f}, {r.shift_sd_px[1]:.2f}) |", flush=True)


def _measure(root: Path, name: str, a: argparse.Namespace):  # noqa: ANN202 - a PairedResult
    import loaders.assemble as assemble

    kind, resample = name.split(",")[0], "ultralytics" if "resample" in name else "fast"
    render = assemble.render_image
    if "warp-all" in name:
        assemble.render_image = functools.partial(render, resize=False)
    try:
        return paired_draws(root / "src", root / "lmdb", images=a.images, imgsz=a.imgsz, seed=a.seed, kind=kind,
                            resample=resample)
    finally:
        assemble.render_image = render


if __name__ == "__main__":
    main()
