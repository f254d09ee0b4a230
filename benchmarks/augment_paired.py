"""Image-by-image augment parity (issue 22): sainet's train images against their Ultralytics twins.

    python benchmarks/augment_paired.py --images 480 --dali

Each sainet image is paired with the image Ultralytics' own transforms make of the same sources under
the same draws (`sainet.bench.paired`), over a synthetic dataset shaped like the training comparison's
(`--size 640x360`, imgsz 256) and like the distribution test's (576x324). Prints one markdown row per
(data, loader): boxes, the largest box difference, mean |pixel difference|, sharpness ratio (sainet /
twin, ± its standard error) and the sub-pixel shift of sainet's content. `--warp-all` adds the CPU
executor with every tile warped at its sub-pixel position (`render_image(resize=False)`, the exact
reference; slower) instead of the kept resize fast path. `--two-stage` adds a prototype of a mode
sainet does not have (the decoder patched here): Ultralytics' two stages — a full-size decode, a
bilinear resize to Ultralytics' load size (long side = imgsz), then every tile warped — the pixels a
parity-first mode would give, at the cost of the reduced-DCT decode.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import tempfile
from collections.abc import Iterator
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
    ap.add_argument("--two-stage", action="store_true", help="also the two-stage prototype (full decode, resize, warp)")
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
                        *(["lmdb, two-stage (prototype)"] if a.two_stage else [])]
            for name in variants:
                r = _measure(root, name, a)
                print(f"| {size} → {a.imgsz} | {name} | {r.images} | {r.boxes[0]} / {r.boxes[1]} | {r.box_max_abs_px:.1e} | "
                      f"{'yes' if r.classes_equal else 'no'} | "
                      f"{r.pixel_mean_abs:.2f} | {r.sharpness_ratio:.3f} ± {r.sharpness_ratio_se:.3f} | "
                      f"{r.shift_px[0]:+.3f}, {r.shift_px[1]:+.3f} ({r.shift_sd_px[0]:.2f}, {r.shift_sd_px[1]:.2f}) |", flush=True)


def _measure(root: Path, name: str, a: argparse.Namespace):  # noqa: ANN202 - a PairedResult
    import loaders.assemble as assemble

    kind = name.split(",")[0]
    render = assemble.render_image
    with contextlib.ExitStack() as stack:
        if "warp-all" in name or "two-stage" in name:
            assemble.render_image = functools.partial(render, resize=False)
            stack.callback(setattr, assemble, "render_image", render)
        if "two-stage" in name:
            stack.enter_context(_two_stage_decode())
        return paired_draws(root / "src", root / "lmdb", images=a.images, imgsz=a.imgsz, seed=a.seed, kind=kind)


@contextlib.contextmanager
def _two_stage_decode() -> Iterator[None]:
    """Train decodes at full size, then `cv2.resize` (bilinear) to Ultralytics' `load_image` size."""
    import cv2

    from loaders.decode import Decoded, Decoder

    decode = Decoder.decode

    def two_stage(self: Decoder, i: int, *, reduce: bool, scratch=None, slot: int = 0) -> Decoded:  # noqa: ANN001
        d = decode(self, i, reduce=False, scratch=scratch, slot=slot)
        w0, h0 = (int(v) for v in self.source.sizes[i])
        size = max(self.imgsz)
        r = size / max(w0, h0)
        if not reduce or r == 1:
            return d
        w, h = min(math.ceil(w0 * r), size), min(math.ceil(h0 * r), size)
        return Decoded(cv2.resize(d.image, (w, h), interpolation=cv2.INTER_LINEAR), (w0 / w, h0 / h), d.index)

    Decoder.decode = two_stage  # type: ignore[method-assign]
    try:
        yield
    finally:
        Decoder.decode = decode  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
