"""Torch executor: apply a plan to a batch with batched tensor ops (for the GPU, after DALI decode).

The same plan as the OpenCV executor, so boxes are identical by construction and pixels agree
within interpolation rounding. Each placement is one `grid_sample` over the output canvas (every
output pixel resampled once); HSV follows Ultralytics' OpenCV HSV space (hue 0..180) on floats.
On a CPU this is ~10x slower than the OpenCV executor (DESIGN.md): use it where tensors live on a GPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from loaders.augment.plan import BatchPlan, pixel_matrix
from sainet.geometry import PAD_VALUE, letterbox_params

__all__ = ["render_batch", "hsv_torch"]


def _grid(m_out_to_src: np.ndarray, out_hw: tuple[int, int], src_hw: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampling grid (1,H,W,2) in grid_sample's normalized coords, plus output pixel centres x, y."""
    H, W = out_hw
    sh, sw = src_hw
    ys, xs = torch.meshgrid(torch.arange(H, device=device, dtype=torch.float32),
                            torch.arange(W, device=device, dtype=torch.float32), indexing="ij")
    m = torch.as_tensor(m_out_to_src, dtype=torch.float32, device=device)
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    grid = torch.stack([(2 * sx + 1) / sw - 1, (2 * sy + 1) / sh - 1], dim=-1)[None]
    return grid, xs, ys


def _inside(poly: np.ndarray, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Pixels whose centre lies in the convex polygon (edge coords), widened by a pixel like the CPU mask."""
    pts = torch.as_tensor(poly, dtype=torch.float32, device=xs.device)
    cx, cy = xs + 0.5, ys + 0.5
    area = 0.0
    for k in range(len(poly)):  # orientation of the polygon
        x0, y0 = poly[k]
        x1, y1 = poly[(k + 1) % len(poly)]
        area += x0 * y1 - x1 * y0
    sign = 1.0 if area >= 0 else -1.0
    inside = torch.ones_like(cx, dtype=torch.bool)
    for k in range(len(pts)):
        a, b = pts[k], pts[(k + 1) % len(pts)]
        ex, ey = b[0] - a[0], b[1] - a[1]
        norm = torch.sqrt(ex * ex + ey * ey).clamp_min(1e-6)
        dist = sign * (ex * (cy - a[1]) - ey * (cx - a[0])) / norm
        inside &= dist >= -1.0
    return inside


def hsv_torch(img: torch.Tensor, gains: tuple[float, float, float]) -> torch.Tensor:
    """Ultralytics RandomHSV on a float (3,H,W) RGB tensor in 0..255, in OpenCV's 8-bit HSV space
    (hue 0..180): RGB->HSV, the three look-up tables as float ops, HSV->RGB."""
    r, g, b = img[0], img[1], img[2]
    v = img.amax(0)
    delta = v - img.amin(0)
    s = torch.where(v > 0, delta / v.clamp_min(1e-6) * 255, torch.zeros_like(v))
    dz = delta.clamp_min(1e-6)
    h = torch.where(v == r, 60 * (g - b) / dz, torch.where(v == g, 120 + 60 * (b - r) / dz, 240 + 60 * (r - g) / dz))
    h = torch.where(delta == 0, torch.zeros_like(h), h) % 360
    h8 = torch.round(h / 2) % 180
    h8 = torch.floor((h8 * gains[0]) % 180)
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


def render_batch(plan: BatchPlan, sources: list[torch.Tensor], scales: list[tuple[float, float]]) -> torch.Tensor:
    """Render a whole plan. `sources[j]` is a (h, w, 3) uint8 tensor (any device); returns (B,3,H,W) uint8."""
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
            region = src if (lb.new_h, lb.new_w) == (h0, w0) else F.interpolate(src, size=(lb.new_h, lb.new_w), mode="bilinear", align_corners=False)
            out[i, :, lb.top : lb.top + lb.new_h, lb.left : lb.left + lb.new_w] = region[0]
            continue
        canvas = torch.full((3, H, W), float(PAD_VALUE), device=device)
        for p in ip.placements:
            src = srcf[p.src]
            sx, sy = scales[p.src]
            m = p.matrix @ np.diag([sx, sy, 1.0])
            inv = np.linalg.inv(np.vstack([pixel_matrix(m), [0, 0, 1]]))
            grid, xs, ys = _grid(inv, (H, W), src.shape[2:], device)
            if p.region is None:
                sampled = F.grid_sample(src - PAD_VALUE, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] + PAD_VALUE
                canvas = sampled
            else:
                sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
                canvas = torch.where(_inside(p.region, xs, ys)[None], sampled, canvas)
        out[i] = canvas
    pre = out.clone() if any(ip.mixup is not None for ip in plan.images) else out
    for i, ip in enumerate(plan.images):
        if ip.mixup is not None:
            out[i] = pre[i] * ip.mixup_ratio + pre[ip.mixup] * (1 - ip.mixup_ratio)
        if ip.hsv is not None:
            out[i] = hsv_torch(out[i].round().clamp(0, 255), ip.hsv)
    return out.round().clamp(0, 255).to(torch.uint8)
