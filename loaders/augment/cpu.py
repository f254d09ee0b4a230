"""CPU executor: apply a plan with uint8 OpenCV kernels, one output image per call (run in threads).

On a CPU, OpenCV's uint8 warpAffine and LUT are ~10x faster than torch float ops (docs/ARCHITECTURE.md, measured facts), and
they release the GIL, so the decode threads run them in parallel.
"""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np

from loaders.augment.plan import BatchPlan, ImagePlan, Placement, pixel_matrix, scale_matrix, translate_matrix
from sainet.core.geometry import PAD_VALUE, letterbox

__all__ = ["render_image", "apply_hsv", "apply_hsv_fast", "hsv_table", "mixup_partners", "finish_image"]

_X = np.arange(256, dtype=np.float64)
_AXIS_EPS = 1e-9


def hsv_table(gains: tuple[float, float, float]) -> np.ndarray:
    """Ultralytics 8.4's RandomHSV look-up tables (one 3-channel LUT) for gains (1+r_h, 1+r_s, 1+r_v):
    hue shifted by r_h*180 (additive, on OpenCV's 0..180 hue), saturation and value scaled, all
    truncated to uint8, and saturation 0 kept 0 (greys stay grey)."""
    table = np.empty((256, 1, 3), np.uint8)
    table[:, 0, 0] = ((_X + (gains[0] - 1) * 180) % 180).astype(np.uint8)
    table[:, 0, 1] = np.clip(_X * gains[1], 0, 255).astype(np.uint8)
    table[:, 0, 2] = np.clip(_X * gains[2], 0, 255).astype(np.uint8)
    table[0, 0, 1] = 0
    return table


def apply_hsv(img: np.ndarray, gains: tuple[float, float, float]) -> None:
    """Ultralytics RandomHSV exactly (RGB->HSV, the three look-up tables, HSV->RGB), in place, on
    an RGB uint8 image."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    cv2.LUT(hsv, hsv_table(gains), dst=hsv)
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=img)


def apply_hsv_fast(img: np.ndarray, gains: tuple[float, float, float]) -> None:
    """`apply_hsv` with the look-up (the slowest of its three passes) replaced by one per-channel
    affine `cv2.transform` on the HSV image: the colour step takes ~40% less time, same pixels
    but for rare one-level differences.

    The tables are affine in each channel: hue + k with k = floor(r_h*180) (what the truncating
    table does to integer hues), saturation and value times their gains, floored (an offset just
    under -0.5 before OpenCV's rounding). The hue must wrap modulo 180 without leaving uint8:
    OpenCV's HSV->RGB wraps hues >= 180 itself, so a shift k >= 0 is added as is; a shift k < 0
    is made positive by converting the channel-swapped image (BGR<->RGB mirrors the hue,
    h -> 120 - h, so adding -k there and mirroring back shifts by k). |k| > 76 (hue gains far
    beyond Ultralytics' 0.015) would overflow uint8: the exact path runs instead.
    """
    k = math.floor((gains[0] - 1) * 180)
    if abs(k) > 255 - 179:
        apply_hsv(img, gains)
        return
    to_hsv, to_rgb = (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if k >= 0 else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
    m = np.array([[1, 0, 0, abs(k)], [0, gains[1], 0, _FLOOR], [0, 0, gains[2], _FLOOR]], np.float32)
    hsv = cv2.cvtColor(img, to_hsv, dst=_scratch(img.shape))
    cv2.transform(hsv, m, dst=img)  # never in place: cv2.transform in place is ~7x slower
    cv2.cvtColor(img, to_rgb, dst=img)  # (in place is as fast here)


#: round(x - 0.499) == floor(x) unless frac(x) >= 0.999: the tables' truncation through OpenCV's rounding
_FLOOR = -0.499


_local = threading.local()


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """A per-thread uint8 buffer of `shape`, reused image after image (a fresh 6 MB array costs
    ~1,500 page faults each time); one caller at a time per thread."""
    buf = getattr(_local, "buf", None)
    n = int(np.prod(shape))
    if buf is None or buf.size < n:
        buf = _local.buf = np.empty(n, np.uint8)
    return buf[:n].reshape(shape)


def render_image(ip: ImagePlan, sources: list[np.ndarray], scales: list[tuple[float, float]], out: np.ndarray, *,
                 resize: bool = True) -> None:
    """Draw output image `ip` into `out` (HxWx3 uint8). `sources[j]` shows source j's original image
    content at some scale; `scales[j]` maps its pixels to original coordinates (1 unless the JPEG
    was decoded at a reduced DCT scale or the source is a raw frame).

    A placement without rotation or shear (Ultralytics' default degrees=0, shear=0: mosaic tile,
    scale, translation, flips) is drawn with one `cv2.resize` of its crop, 2-8x faster than
    `cv2.warpAffine`; its position is then rounded to whole output pixels (at most half a source
    pixel at each edge, within a pixel of the plan's boxes). Rotations and shears use warpAffine,
    and so does every placement with `resize=False` (the exact reference other executors are
    compared with)."""
    H, W = out.shape[:2]
    if ip.letterbox:  # eval: exactly Ultralytics' resize + pad
        letterbox(sources[ip.placements[0].src], H, W, out=out)
        return
    if len(ip.placements) == 1:
        p = ip.placements[0]
        m = p.matrix @ scale_matrix(*scales[p.src])
        if resize and _axis_aligned(m):
            out[...] = PAD_VALUE
            _resize_into(sources[p.src], m, (0.0, 0.0, float(W), float(H)), out)
            return
        cv2.warpAffine(sources[p.src], pixel_matrix(m), (W, H), dst=out, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
    else:
        out[...] = PAD_VALUE
        for p in ip.placements:
            _paint_region(p, sources[p.src], scales[p.src], out, resize)


def _axis_aligned(m: np.ndarray) -> bool:
    return abs(m[0, 1]) < _AXIS_EPS and abs(m[1, 0]) < _AXIS_EPS


def _span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Whole-pixel source range for the edge interval [lo, hi], inside [0, n], never empty."""
    a = min(max(round(lo), 0), n - 1)
    return a, max(min(round(hi), n), a + 1)


def _resize_into(src: np.ndarray, m: np.ndarray, bounds: tuple[float, float, float, float], out: np.ndarray) -> None:
    """Paint `src` through the axis-aligned matrix `m` (source edge coords -> output edge coords,
    flips included) into the whole-pixel rectangle of `out` inside `bounds` (x0, y0, x1, y1) and
    inside the source's own image, with one cv2.resize (and a cv2.flip when mirrored)."""
    H, W = out.shape[:2]
    sh, sw = src.shape[:2]
    sx, tx, sy, ty = m[0, 0], m[0, 2], m[1, 1], m[1, 2]
    ex0, ex1 = sorted((tx, sx * sw + tx))
    ey0, ey1 = sorted((ty, sy * sh + ty))
    x0, x1 = max(round(max(bounds[0], ex0)), 0), min(round(min(bounds[2], ex1)), W)
    y0, y1 = max(round(max(bounds[1], ey0)), 0), min(round(min(bounds[3], ey1)), H)
    if x1 <= x0 or y1 <= y0:
        return
    c0, c1 = _span(*sorted(((x0 - tx) / sx, (x1 - tx) / sx)), sw)
    r0, r1 = _span(*sorted(((y0 - ty) / sy, (y1 - ty) / sy)), sh)
    dst = out[y0:y1, x0:x1]
    crop = src[r0:r1, c0:c1]
    if sx > 0 and sy > 0:
        cv2.resize(crop, (x1 - x0, y1 - y0), dst=dst, interpolation=cv2.INTER_LINEAR)
        return
    tmp = cv2.resize(crop, (x1 - x0, y1 - y0), dst=_scratch((y1 - y0, x1 - x0, 3)), interpolation=cv2.INTER_LINEAR)
    cv2.flip(tmp, 1 if sy > 0 else 0 if sx > 0 else -1, dst=dst)


def _paint_region(p: Placement, src: np.ndarray, scale: tuple[float, float], out: np.ndarray, resize: bool = True) -> None:
    """Warp the visible crop of a mosaic source straight into its quadrant of `out`.

    Axis-aligned placements: one resize of the crop into the quadrant's whole-pixel rectangle.
    Otherwise the source is cut to its crop (one pixel wider, so neighbouring quadrants meet without
    a seam) and warped with a transparent border over the bounding box of its quadrant only: output
    pixels that map outside the crop are left alone, so no mask and no second buffer are needed.
    """
    H, W = out.shape[:2]
    m_src = p.matrix @ scale_matrix(*scale)
    if resize and _axis_aligned(m_src):
        lo, hi = p.region.min(0), p.region.max(0)
        _resize_into(src, m_src, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), out)
        return
    x0, y0 = np.floor(p.region.min(0)).astype(int) - 1
    x1, y1 = np.ceil(p.region.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 <= x0 or y1 <= y0:
        return
    sh, sw = src.shape[:2]
    cx0, cy0, cx1, cy1 = p.crop
    cx0, cx1 = max(int(np.floor(cx0 / scale[0])) - 1, 0), min(int(np.ceil(cx1 / scale[0])) + 1, sw)
    cy0, cy1 = max(int(np.floor(cy0 / scale[1])) - 1, 0), min(int(np.ceil(cy1 / scale[1])) + 1, sh)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    m = translate_matrix(-x0, -y0) @ m_src @ translate_matrix(cx0, cy0)
    cv2.warpAffine(src[cy0:cy1, cx0:cx1], pixel_matrix(m), (x1 - x0, y1 - y0), dst=out[y0:y1, x0:x1],
                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)


def mixup_partners(plan: BatchPlan, batch: np.ndarray) -> dict[int, np.ndarray]:
    """Copies of the rendered images that others blend in (taken before any mixup or HSV)."""
    return {ip.mixup: batch[ip.mixup].copy() for ip in plan.images if ip.mixup is not None}


def finish_image(plan: BatchPlan, k: int, batch: np.ndarray, partners: dict[int, np.ndarray], *,
                 exact_colour: bool = False) -> None:
    """Mixup, then HSV, on rendered image k (Ultralytics' order), in place. HSV runs through
    `apply_hsv_fast`, or `apply_hsv` with `exact_colour` (the reference other executors match)."""
    ip = plan.images[k]
    if ip.mixup is not None:
        cv2.addWeighted(batch[k], ip.mixup_ratio, partners[ip.mixup], 1 - ip.mixup_ratio, 0, dst=batch[k])
    if ip.hsv is not None:
        (apply_hsv if exact_colour else apply_hsv_fast)(batch[k], ip.hsv)
