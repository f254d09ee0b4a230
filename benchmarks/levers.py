"""Speed levers of the CPU executor, before/after, timed side by side in one run (issue 14).

    python benchmarks/levers.py --imgsz 640,1440 --repeats 5 [--json benchmarks/results/cpu/levers.json]

One core (`cv2.setNumThreads(1)`, as in the loader's threads), real plans (Ultralytics' default
train augment plus mixup 0.15) over synthetic 1440x808 JPEGs. Every variant runs on the same
batches, interleaved, `--repeats` times; the table shows the median ms per output image of

- decode: full size vs the reduced DCT scale the loader uses when a source is placed at <= 1/2;
- geometry: every placement through cv2.warpAffine (before) vs cv2.resize for axis-aligned ones;
- colour: Ultralytics' exact HSV (RGB->HSV, LUT, HSV->RGB) vs the per-channel affine on HSV (the
  loader's), vs two single-pass RGB approximations (not used: their error is printed too);
- colour on the source instead of the output: how many source pixels that would touch per output
  pixel (> 1 means it costs more, since with mosaic every output pixel comes from one source).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

import loaders.augment.cpu as cpu
from loaders.augment.hyp import Hyp
from loaders.augment.plan import BatchPlan, plan_batch
from sainet.core.geometry import parse_imgsz
from sainet.core.imaging import decode_rgb
from sainet.synth import synthesize

_HUE_W = 1 / 3


def hue_matrix(deg: float) -> np.ndarray:
    """Rotation by `deg` about the grey axis of RGB (the usual single-matrix hue shift)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    q, w = np.sqrt(1 / 3), _HUE_W
    return np.array([[c + (1 - c) * w, w * (1 - c) - q * s, w * (1 - c) + q * s],
                     [w * (1 - c) + q * s, c + w * (1 - c), w * (1 - c) - q * s],
                     [w * (1 - c) - q * s, w * (1 - c) + q * s, c + w * (1 - c)]])


def hsv_rgb_max(img: np.ndarray, g: tuple[float, float, float]) -> None:
    """S and V gains in RGB around V = max(R,G,B) (exact until a channel clips), hue as a rotation."""
    H, W = img.shape[:2]
    v = cv2.dilate(img.reshape(H, W * 3), np.ones((1, 3), np.uint8)).reshape(H, W, 3)  # channel 1 = max(R,G,B)
    v3 = cv2.transform(v, np.array([[0, 1, 0]] * 3, np.float32))
    tmp = np.empty_like(img)
    cv2.addWeighted(img, g[2] * g[1], v3, g[2] * (1 - g[1]), -0.5, dst=tmp)
    k = np.floor((g[0] - 1) * 180)
    cv2.transform(tmp, hue_matrix(-2 * k).astype(np.float32), dst=img)


def hsv_3x3(img: np.ndarray, g: tuple[float, float, float]) -> None:
    """One 3x3 matrix: saturation around luma, value as a scale, hue as a rotation."""
    y = np.array([0.299, 0.587, 0.114])
    m = g[2] * hue_matrix(-2 * np.floor((g[0] - 1) * 180)) @ (g[1] * np.eye(3) + (1 - g[1]) * np.outer(np.ones(3), y))
    tmp = cv2.transform(img, m.astype(np.float32))
    np.copyto(img, tmp)


COLOUR = {"exact": cpu.apply_hsv, "hsv-affine (used)": cpu.apply_hsv_fast, "rgb-max": hsv_rgb_max, "rgb-3x3": hsv_3x3}


def colour_error(fn: Callable, draws: int = 20) -> tuple[float, float, int]:
    """Mean / p99 / max abs error vs the exact path on a colour chart (all hues x S x V)."""
    h, s, v = np.meshgrid(np.arange(0, 180, 2), np.arange(0, 256, 8), np.arange(0, 256, 8), indexing="ij")
    chart = cv2.cvtColor(np.stack([h, s, v], -1).reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_HSV2RGB).reshape(90, -1, 3)
    rng = np.random.default_rng(0)
    errs = []
    for _ in range(draws):
        g = tuple(float(x) for x in rng.uniform(-1, 1, 3) * [0.015, 0.7, 0.4] + 1)
        a, b = chart.copy(), chart.copy()
        cpu.apply_hsv(a, g)
        fn(b, g)
        errs.append(np.abs(a.astype(int) - b.astype(int)).ravel())
    e = np.concatenate(errs)
    return float(e.mean()), float(np.percentile(e, 99)), int(e.max())


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Case:
    """One output shape: payloads, plans, decoded sources (full and DCT-scaled), batch buffer."""

    def __init__(self, payloads: list[bytes], sizes: list[tuple[int, int]], labels: list, hw: tuple[int, int], batch: int) -> None:
        self.hw, self.batch = hw, batch
        hyp = Hyp(mixup=0.15)
        rng = np.random.default_rng(0)
        n = len(payloads) // batch * batch
        self.groups = [list(range(k, k + batch)) for k in range(0, n, batch)]
        self.plans = [plan_batch(rng, [sizes[i] for i in g], [labels[i] for i in g], hw, hyp, augment=True) for g in self.groups]
        self.payloads, self.sizes = payloads, sizes
        H, W = hw
        self.min_size = []
        for w0, h0 in sizes:
            r = min(H / h0, W / w0)
            self.min_size.append((int(np.ceil(w0 * r)), int(np.ceil(h0 * r))) if r <= 0.5 else None)
        self.full = [decode_rgb(p) for p in payloads]
        self.scaled = [decode_rgb(p, min_size=m) for p, m in zip(payloads, self.min_size, strict=True)]
        self.out = np.empty((batch, H, W, 3), np.uint8)

    def decode(self, scaled: bool) -> float:
        return _timed(lambda: [decode_rgb(p, min_size=m if scaled else None) for p, m in zip(self.payloads, self.min_size, strict=True)])

    def render(self, resize: bool, colour: Callable | None) -> float:
        """Render + mixup + colour every batch, as the loader's threads do (one core here)."""
        eps = cpu._AXIS_EPS
        cpu._AXIS_EPS = eps if resize else -1.0
        try:
            t = 0.0
            for g, plan in zip(self.groups, self.plans, strict=True):
                srcs = [self.scaled[i] for i in g]
                scales = [(w0 / s.shape[1], h0 / s.shape[0]) for (w0, h0), s in zip([self.sizes[i] for i in g], srcs, strict=True)]
                t += _timed(lambda plan=plan, srcs=srcs, scales=scales: self._one(plan, srcs, scales, colour))
            return t
        finally:
            cpu._AXIS_EPS = eps

    def _one(self, plan: BatchPlan, srcs: list[np.ndarray], scales: list, colour: Callable | None) -> None:
        for k, ip in enumerate(plan.images):
            cpu.render_image(ip, srcs, scales, self.out[k])
        partners = cpu.mixup_partners(plan, self.out)
        for k, ip in enumerate(plan.images):
            if ip.mixup is not None:
                cv2.addWeighted(self.out[k], ip.mixup_ratio, partners[ip.mixup], 1 - ip.mixup_ratio, 0, dst=self.out[k])
            if colour is not None and ip.hsv is not None:
                colour(self.out[k], ip.hsv)

    def source_pixels_per_output_pixel(self) -> float:
        """Pixels of the decoded source crops that show in each output, over the output's pixels."""
        H, W = self.hw
        total = 0.0
        for g, plan in zip(self.groups, self.plans, strict=True):
            for ip in plan.images:
                for p in ip.placements:
                    s = self.scaled[g[p.src]]
                    w0, h0 = self.sizes[g[p.src]]
                    if p.crop is None:
                        total += s.shape[0] * s.shape[1]
                    else:
                        cx0, cy0, cx1, cy1 = p.crop
                        total += max(0, cx1 - cx0) * s.shape[1] / w0 * max(0, cy1 - cy0) * s.shape[0] / h0
        return total / (len(self.groups) * self.batch * H * W)


VARIANTS: dict[str, Callable[[Case], float]] = {
    "decode full size": lambda c: c.decode(False),
    "decode at DCT scale (used)": lambda c: c.decode(True),
    "geometry: warpAffine (before)": lambda c: c.render(False, None),
    "geometry: resize (used)": lambda c: c.render(True, None),
    **{f"geometry (resize) + colour {k}": (lambda c, f=f: c.render(True, f)) for k, f in COLOUR.items()},
    "before: warpAffine + exact colour": lambda c: c.render(False, cpu.apply_hsv),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", default="640,1440", help="comma-separated output shapes (N or WxH)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="sainet-levers-") as tmp:
        synthesize(Path(tmp), images=args.images, size=(1440, 808), seed=0, val_fraction=0.0)
        files = sorted(Path(tmp).rglob("*.jpg"))
        payloads = [f.read_bytes() for f in files]
    sizes = [(1440, 808)] * len(payloads)
    labels = [(np.zeros(1, np.int32), np.array([[0.5, 0.5, 0.2, 0.2]], np.float32))] * len(payloads)
    doc: dict = {"repeats": args.repeats, "colour_error_vs_exact": {k: colour_error(f) for k, f in COLOUR.items()}, "shapes": {}}
    for text in args.imgsz.split(","):
        hw = parse_imgsz(text)
        case = Case(payloads, sizes, labels, hw, args.batch)
        n = len(case.groups) * args.batch
        times: dict[str, list[float]] = {k: [] for k in VARIANTS}
        for _ in range(args.repeats):  # interleaved: every variant once per round
            for k, fn in VARIANTS.items():
                times[k].append(fn(case) / n * 1000)
        doc["shapes"][f"{hw[1]}x{hw[0]}"] = {"ms_per_image": {k: statistics.median(v) for k, v in times.items()},
                                              "source_px_per_output_px": case.source_pixels_per_output_pixel()}
    print_table(doc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))


def print_table(doc: dict) -> None:
    shapes = list(doc["shapes"])
    print(f"median ms per output image, one core, {doc['repeats']} interleaved repeats")
    print("| lever | " + " | ".join(shapes) + " |")
    print("|---|" + "---:|" * len(shapes))
    for k in VARIANTS:
        print(f"| {k} | " + " | ".join(f"{doc['shapes'][s]['ms_per_image'][k]:.2f}" for s in shapes) + " |")
    print("| colour on the source: source px per output px | "
          + " | ".join(f"{doc['shapes'][s]['source_px_per_output_px']:.2f}" for s in shapes) + " |")
    print("\ncolour error vs Ultralytics' exact HSV on a colour chart (levels of 255): mean / p99 / max")
    for k, (mean, p99, mx) in doc["colour_error_vs_exact"].items():
        print(f"  {k}: {mean:.2f} / {p99:.0f} / {mx}")


if __name__ == "__main__":
    main()
