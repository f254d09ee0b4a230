"""Batched torch executor vs the previous per-placement torch executor (and, on a CPU, the OpenCV
executor), on the same plans and sources, side by side in one run, on whatever device is present.

    python benchmarks/gpu_executor.py                                  # CPU: small sizes
    python benchmarks/gpu_executor.py --device cuda --imgsz 1440x832 --src 1440x808 --batch 32

Rates are rendered images/s of the executor alone (sources already decoded on the device; the
plan is made once per batch outside the timing, as in the loader, where it overlaps decoding);
CUDA timings synchronise after each batch. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from loaders.augment.cpu import finish_image, mixup_partners, render_image
from loaders.augment.hyp import Hyp
from loaders.augment.plan import BatchPlan, plan_batch
from loaders.augment.torch_exec import render_batch
from sainet.core.geometry import PAD_VALUE, letterbox_params, parse_imgsz, parse_wxh

# -- the torch executor before issue 16, kept verbatim in spirit as the baseline: one grid and one
# grid_sample per placement, a polygon mask built with a Python loop, tiny host->device copies.


def _old_grid(m: np.ndarray, out_hw: tuple[int, int], src_hw: tuple[int, int], device: torch.device):  # noqa: ANN202
    H, W = out_hw
    sh, sw = src_hw
    ys, xs = torch.meshgrid(torch.arange(H, device=device, dtype=torch.float32),
                            torch.arange(W, device=device, dtype=torch.float32), indexing="ij")
    m = torch.as_tensor(m, dtype=torch.float32, device=device)
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return torch.stack([(2 * sx + 1) / sw - 1, (2 * sy + 1) / sh - 1], dim=-1)[None], xs, ys


def _old_inside(poly: np.ndarray, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    pts = torch.as_tensor(poly, dtype=torch.float32, device=xs.device)
    cx, cy = xs + 0.5, ys + 0.5
    area = sum(poly[k][0] * poly[(k + 1) % len(poly)][1] - poly[(k + 1) % len(poly)][0] * poly[k][1] for k in range(len(poly)))
    sign = 1.0 if area >= 0 else -1.0
    inside = torch.ones_like(cx, dtype=torch.bool)
    for k in range(len(pts)):
        a, b = pts[k], pts[(k + 1) % len(pts)]
        ex, ey = b[0] - a[0], b[1] - a[1]
        norm = torch.sqrt(ex * ex + ey * ey).clamp_min(1e-6)
        inside &= sign * (ex * (cy - a[1]) - ey * (cx - a[0])) / norm >= -1.0
    return inside


def _old_hsv(img: torch.Tensor, gains: tuple[float, float, float]) -> torch.Tensor:
    r, g, b = img[0], img[1], img[2]
    v = img.amax(0)
    delta = v - img.amin(0)
    s = torch.where(v > 0, delta / v.clamp_min(1e-6) * 255, torch.zeros_like(v))
    dz = delta.clamp_min(1e-6)
    h = torch.where(v == r, 60 * (g - b) / dz, torch.where(v == g, 120 + 60 * (b - r) / dz, 240 + 60 * (r - g) / dz))
    h = torch.where(delta == 0, torch.zeros_like(h), h) % 360
    h8 = torch.floor((torch.round(h / 2) % 180 * gains[0]) % 180)
    s8 = torch.floor((torch.round(s) * gains[1]).clamp(0, 255))
    v8 = torch.floor((v * gains[2]).clamp(0, 255))
    hh = h8 * 2
    c = v8 * s8 / 255
    x = c * (1 - ((hh / 60) % 2 - 1).abs())
    m = v8 - c
    sector = torch.div(hh, 60, rounding_mode="floor").long() % 6
    zeros = torch.zeros_like(c)
    table = [(c, x, zeros), (x, c, zeros), (zeros, c, x), (zeros, x, c), (x, zeros, c), (c, zeros, x)]
    out = torch.empty_like(img)
    for ch in range(3):
        out[ch] = torch.stack([t[ch] for t in table]).gather(0, sector[None])[0] + m
    return out


def old_render_batch(plan: BatchPlan, sources: list[torch.Tensor], scales: list[tuple[float, float]]) -> torch.Tensor:
    from loaders.augment.plan import pixel_matrix

    H, W = plan.out_hw
    device = sources[0].device
    out = torch.empty((len(plan.images), 3, H, W), dtype=torch.float32, device=device)
    srcf = [s.permute(2, 0, 1).float()[None] for s in sources]
    for i, ip in enumerate(plan.images):
        if ip.letterbox:
            src = srcf[ip.placements[0].src]
            h0, w0 = src.shape[2:]
            lb = letterbox_params(h0, w0, H, W)
            out[i] = PAD_VALUE
            region = F.interpolate(src, size=(lb.new_h, lb.new_w), mode="bilinear", align_corners=False)
            out[i, :, lb.top : lb.top + lb.new_h, lb.left : lb.left + lb.new_w] = region[0]
            continue
        canvas = torch.full((3, H, W), float(PAD_VALUE), device=device)
        for p in ip.placements:
            src = srcf[p.src]
            m = p.matrix @ np.diag([scales[p.src][0], scales[p.src][1], 1.0])
            inv = np.linalg.inv(np.vstack([pixel_matrix(m), [0, 0, 1]]))
            grid, xs, ys = _old_grid(inv, (H, W), src.shape[2:], device)
            if p.region is None:
                canvas = F.grid_sample(src - PAD_VALUE, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] + PAD_VALUE
            else:
                sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
                canvas = torch.where(_old_inside(p.region, xs, ys)[None], sampled, canvas)
        out[i] = canvas
    pre = out.clone() if any(ip.mixup is not None for ip in plan.images) else out
    for i, ip in enumerate(plan.images):
        if ip.mixup is not None:
            out[i] = pre[i] * ip.mixup_ratio + pre[ip.mixup] * (1 - ip.mixup_ratio)
        if ip.hsv is not None:
            out[i] = _old_hsv(out[i].round().clamp(0, 255), ip.hsv)
    return out.round().clamp(0, 255).to(torch.uint8)


def opencv_render(plan: BatchPlan, sources: list[np.ndarray], scales: list[tuple[float, float]]) -> np.ndarray:
    """The CPU executor on one thread (the loader runs it in its decode threads)."""
    H, W = plan.out_hw
    out = np.empty((len(plan.images), H, W, 3), np.uint8)
    for k, ip in enumerate(plan.images):
        render_image(ip, sources, scales, out[k])
    partners = mixup_partners(plan, out)
    for k in range(len(plan.images)):
        finish_image(plan, k, out, partners)
    return out


def _rate(fn: Callable[[BatchPlan], object], plans: list[BatchPlan], batch: int, seconds: float, cuda: bool) -> float:
    fn(plans[0])  # warm-up (allocator, kernels)
    if cuda:
        torch.cuda.synchronize()
    n, k, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        fn(plans[k % len(plans)])
        if cuda:
            torch.cuda.synchronize()
        n += batch
        k += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--imgsz", default="320x192", help="output WIDTHxHEIGHT")
    ap.add_argument("--src", default="480x270", help="source WIDTHxHEIGHT")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--mixup", type=float, default=0.15)
    ap.add_argument("--fuse", action="store_true", help="also time render_batch(fuse=True) (torch.compile'd regions)")
    args = ap.parse_args()
    device = torch.device(args.device)
    out_hw = parse_imgsz(args.imgsz)
    sw, sh = parse_wxh(args.src)
    rng = np.random.default_rng(0)
    hosts = [rng.integers(0, 255, (sh, sw, 3), dtype=np.uint8) for _ in range(args.batch)]
    sources = [torch.from_numpy(h).to(device) for h in hosts]
    scales = [(1.0, 1.0)] * args.batch
    labels = [(np.zeros(1, np.int32), np.array([[0.5, 0.5, 0.2, 0.2]], np.float32))] * args.batch
    hyp = Hyp(mixup=args.mixup)
    cuda = device.type == "cuda"
    rows: dict[str, dict[str, float]] = {}
    for mode, augment in (("train (mosaic, affine, flip, HSV, mixup)", True), ("eval (letterbox)", False)):
        plans = [plan_batch(np.random.default_rng(s), [(sw, sh)] * args.batch, labels, out_hw, hyp, augment=augment) for s in range(4)]
        r = {"batched": _rate(lambda p: render_batch(p, sources, scales), plans, args.batch, args.seconds, cuda),
             "per_placement": _rate(lambda p: old_render_batch(p, sources, scales), plans, args.batch, args.seconds, cuda)}
        if args.fuse:
            r["batched_fused"] = _rate(lambda p: render_batch(p, sources, scales, fuse=True), plans, args.batch, args.seconds, cuda)
        if not cuda:
            r["opencv_1_thread"] = _rate(lambda p: opencv_render(p, hosts, scales), plans, args.batch, args.seconds, cuda)
        rows[mode] = r
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} torch threads)"
    print(f"device: {name}; batch {args.batch}; output {args.imgsz}; sources {args.src}")
    print(f"{'mode':44s} {'batched':>10s} {'per-place':>10s} {'ratio':>7s} {'opencv':>10s}")
    for mode, r in rows.items():
        cv = f"{r['opencv_1_thread']:10.1f}" if "opencv_1_thread" in r else f"{'-':>10s}"
        print(f"{mode:44s} {r['batched']:10.1f} {r['per_placement']:10.1f} {r['batched'] / r['per_placement']:6.2f}x {cv}")
        if "batched_fused" in r:
            print(f"{'  fused (torch.compile)':44s} {r['batched_fused']:10.1f} {'':10s} {r['batched_fused'] / r['per_placement']:6.2f}x")
    print(json.dumps({"device": name, "batch": args.batch, "imgsz": args.imgsz, "src": args.src,
                      "img_per_s": {m: {k: round(v, 1) for k, v in r.items()} for m, r in rows.items()}}))


if __name__ == "__main__":
    main()
