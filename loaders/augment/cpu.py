"""CPU executor: apply a plan with uint8 OpenCV kernels, one output image per call (run in threads).

On a CPU, OpenCV's uint8 warpAffine and LUT are ~10x faster than torch float ops (docs/ARCHITECTURE.md, measured facts), and
they release the GIL, so the decode threads run them in parallel.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import cv2
import numpy as np

from loaders.augment.plan import (
    BatchPlan,
    ImagePlan,
    Placement,
    letterbox_region,
    pixel_matrix,
    scale_matrix,
    translate_matrix,
)
from sainet.core.geometry import PAD_VALUE, Letterbox, paint_letterbox

__all__ = ["Cover", "render_image", "apply_hsv", "apply_hsv_fast", "HsvStep", "hsv_op", "hsv_over", "hsv_table",
           "mixup_partners", "finish_image"]

#: a whole-pixel rectangle of an output image, (x0, y0, x1, y1), end exclusive
Rect = tuple[int, int, int, int]
#: what `render_image` painted: the rectangles outside which the image is PAD_VALUE, or None (all of it)
Cover = tuple[Rect, ...] | None

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
    hsv_op(gains, exact=True)(img)


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
    hsv_op(gains)(img)


class HsvStep(NamedTuple):
    """The HSV step for one draw of gains, in two in-place passes: `forward` (RGB -> adjusted HSV;
    any view of the image, each pixel on its own) and `back` (HSV -> RGB; the whole image at once:
    OpenCV's uint8 HSV->RGB rounds a row's last few pixels differently from its vector loop, so a
    pixel's value depends on where the row ends — RGB->HSV and the adjustment do not)."""

    forward: Callable[[np.ndarray], None]
    back: Callable[[np.ndarray], None]

    def __call__(self, img: np.ndarray) -> None:
        self.forward(img)
        self.back(img)


def hsv_op(gains: tuple[float, float, float], exact: bool = False) -> HsvStep:
    """The HSV step for `gains`, its constants made once: `apply_hsv_fast`'s, or `apply_hsv`'s with
    `exact` (or a hue shift too large for the fast one)."""
    k = math.floor((gains[0] - 1) * 180)
    if exact or abs(k) > 255 - 179:
        table = hsv_table(gains)

        def look_up(img: np.ndarray) -> None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV, dst=_scratch(img.shape))
            cv2.LUT(hsv, table, dst=img)

        return HsvStep(look_up, lambda img: cv2.cvtColor(img, cv2.COLOR_HSV2RGB, dst=img))
    to_hsv, to_rgb = (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if k >= 0 else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
    m = np.array([[1, 0, 0, abs(k)], [0, gains[1], 0, _FLOOR], [0, 0, gains[2], _FLOOR]], np.float32)

    def affine(img: np.ndarray) -> None:
        hsv = cv2.cvtColor(img, to_hsv, dst=_scratch(img.shape))
        cv2.transform(hsv, m, dst=img)  # never in place: cv2.transform in place is ~7x slower

    return HsvStep(affine, lambda img: cv2.cvtColor(img, to_rgb, dst=img))  # (in place is as fast here)


def hsv_over(img: np.ndarray, step: HsvStep, cover: Cover) -> None:
    """Apply the HSV `step` to `img`, converting to HSV only the pixels in `cover`'s rectangles:
    everywhere else the image holds PAD_VALUE, whose HSV is made once and filled in; the way back
    to RGB then runs over the whole image. A mosaic of 16:9 frames leaves ~24% of its pixels as
    padding (at any square size), and the colour step is ~40% of the CPU executor's time.

    The same bytes as `step(img)`: RGB->HSV and the adjustment are functions of each pixel alone
    wherever it lies, and the whole-image pass back sees the same HSV image (the test converts
    random plans both ways). The image is cut into horizontal bands at every rectangle's top and
    bottom; in a band, each run of covered columns is converted once (rectangles may overlap: a
    mixup blends two covers, warped quadrants share an edge pixel) and the gaps are filled.
    """
    if cover is None:
        step(img)
        return
    pad = np.full((1, img.shape[1], 3), PAD_VALUE, np.uint8)
    step.forward(pad)
    for ya, yb, x0, x1, covered in _segments(cover, img.shape[0], img.shape[1]):
        if covered:
            step.forward(img[ya:yb, x0:x1])
        else:
            img[ya:yb, x0:x1] = pad[0, x0:x1]  # from a row: numpy fills rows at memcpy speed, a 3-byte value ~100x slower
    step.back(img)


def _segments(rects: Sequence[Rect], H: int, W: int) -> Iterator[tuple[int, int, int, int, bool]]:
    """An H x W image cut into (y0, y1, x0, x1, covered) pieces, covered by `rects` or not: horizontal
    bands at every rectangle's top and bottom, and in a band the runs of covered columns (where
    rectangles overlap or touch, one run) and the gaps between them."""
    rects = [(max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)) for x0, y0, x1, y1 in rects]
    rects = [r for r in rects if r[2] > r[0] and r[3] > r[1]]
    edges = sorted({0, H, *(r[1] for r in rects), *(r[3] for r in rects)})
    for ya, yb in zip(edges, edges[1:], strict=False):
        x = 0
        for x0, x1 in _runs(sorted((r[0], r[2]) for r in rects if r[1] <= ya and r[3] >= yb)):
            if x0 > x:
                yield ya, yb, x, x0, False
            yield ya, yb, x0, x1, True
            x = x1
        if x < W:
            yield ya, yb, x, W, False


def _fill_outside(out: np.ndarray, rects: Sequence[Rect]) -> None:
    """PAD_VALUE everywhere in `out` outside `rects`."""
    for ya, yb, x0, x1, covered in _segments(rects, out.shape[0], out.shape[1]):
        if not covered:
            out[ya:yb, x0:x1] = PAD_VALUE


def _runs(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted [x0, x1) spans merged where they touch or overlap."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out

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
                 resize: bool = True) -> Cover:
    """Draw output image `ip` into `out` (HxWx3 uint8). `sources[j]` shows source j's original image
    content at some scale; `scales[j]` maps its pixels to original coordinates (1 unless the JPEG
    was decoded at a reduced DCT scale or the source is a raw frame).

    A placement without rotation or shear (Ultralytics' default degrees=0, shear=0: mosaic tile,
    scale, translation, flips) is drawn with one `cv2.resize` of its crop, 2-8x faster than
    `cv2.warpAffine`; its position is then rounded to whole output pixels (at most half a source
    pixel at each edge, within a pixel of the plan's boxes). Rotations and shears use warpAffine,
    and so does every placement with `resize=False` (the exact reference other executors are
    compared with).

    Returns the image's `Cover`: the rectangles painted (outside them `out` is PAD_VALUE), or None
    when the whole image was written."""
    H, W = out.shape[:2]
    if ip.letterbox:  # eval: exactly Ultralytics' resize + pad, where the plan put it
        src = sources[ip.placements[0].src]
        top, left, nh, nw = letterbox_region(ip, scales[ip.placements[0].src], src.shape[:2])
        paint_letterbox(src, Letterbox(nw / src.shape[1], nw, nh, left, top), out)
        return None
    ms = [p.matrix @ scale_matrix(*scales[p.src]) for p in ip.placements]  # source pixels -> output
    if not resize or not all(_axis_aligned(m) for m in ms):
        if len(ip.placements) == 1:
            cv2.warpAffine(sources[ip.placements[0].src], pixel_matrix(ms[0]), (W, H), dst=out, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
            return None
        out[...] = PAD_VALUE  # before painting: warped quadrants leave unmapped pixels alone, and overlap
        rects = (_paint_region(p, sources[p.src], scales[p.src], out, resize) for p in ip.placements)
        return tuple(r for r in rects if r is not None)
    # axis-aligned: every rectangle is written whole, so only what lies outside them is padded, after
    rects = []
    for p, m in zip(ip.placements, ms, strict=True):
        lo, hi = (p.region.min(0), p.region.max(0)) if len(ip.placements) > 1 else ((0.0, 0.0), (W, H))
        rect = _resize_into(sources[p.src], m, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), out)
        if rect is not None:
            rects.append(rect)
    _fill_outside(out, rects)
    return tuple(rects)


def _axis_aligned(m: np.ndarray) -> bool:
    return abs(m[0, 1]) < _AXIS_EPS and abs(m[1, 0]) < _AXIS_EPS


def _span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Whole-pixel source range for the edge interval [lo, hi], inside [0, n], never empty."""
    a = min(max(round(lo), 0), n - 1)
    return a, max(min(round(hi), n), a + 1)


def _resize_into(src: np.ndarray, m: np.ndarray, bounds: tuple[float, float, float, float], out: np.ndarray) -> Rect | None:
    """Paint `src` through the axis-aligned matrix `m` (source edge coords -> output edge coords,
    flips included) into the whole-pixel rectangle of `out` inside `bounds` (x0, y0, x1, y1) and
    inside the source's own image, with one cv2.resize (and a cv2.flip when mirrored). Returns
    that rectangle (None: nothing painted)."""
    H, W = out.shape[:2]
    sh, sw = src.shape[:2]
    sx, tx, sy, ty = m[0, 0], m[0, 2], m[1, 1], m[1, 2]
    ex0, ex1 = sorted((tx, sx * sw + tx))
    ey0, ey1 = sorted((ty, sy * sh + ty))
    x0, x1 = max(round(max(bounds[0], ex0)), 0), min(round(min(bounds[2], ex1)), W)
    y0, y1 = max(round(max(bounds[1], ey0)), 0), min(round(min(bounds[3], ey1)), H)
    if x1 <= x0 or y1 <= y0:
        return None
    c0, c1 = _span(*sorted(((x0 - tx) / sx, (x1 - tx) / sx)), sw)
    r0, r1 = _span(*sorted(((y0 - ty) / sy, (y1 - ty) / sy)), sh)
    dst = out[y0:y1, x0:x1]
    crop = src[r0:r1, c0:c1]
    if sx > 0 and sy > 0:
        cv2.resize(crop, (x1 - x0, y1 - y0), dst=dst, interpolation=cv2.INTER_LINEAR)
        return x0, y0, x1, y1
    tmp = cv2.resize(crop, (x1 - x0, y1 - y0), dst=_scratch((y1 - y0, x1 - x0, 3)), interpolation=cv2.INTER_LINEAR)
    cv2.flip(tmp, 1 if sy > 0 else 0 if sx > 0 else -1, dst=dst)
    return x0, y0, x1, y1


def _paint_region(p: Placement, src: np.ndarray, scale: tuple[float, float], out: np.ndarray,
                  resize: bool = True) -> Rect | None:
    """Warp the visible crop of a mosaic source straight into its quadrant of `out`.

    Axis-aligned placements: one resize of the crop into the quadrant's whole-pixel rectangle.
    Otherwise the source is cut to its crop (one pixel wider, so neighbouring quadrants meet without
    a seam) and warped with a transparent border over the bounding box of its quadrant only: output
    pixels that map outside the crop are left alone, so no mask and no second buffer are needed.
    Returns the rectangle of `out` it may have written (None: none).
    """
    H, W = out.shape[:2]
    m_src = p.matrix @ scale_matrix(*scale)
    if resize and _axis_aligned(m_src):
        lo, hi = p.region.min(0), p.region.max(0)
        return _resize_into(src, m_src, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), out)
    x0, y0 = np.floor(p.region.min(0)).astype(int) - 1
    x1, y1 = np.ceil(p.region.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(x1), W), min(int(y1), H)
    if x1 <= x0 or y1 <= y0:
        return None
    sh, sw = src.shape[:2]
    cx0, cy0, cx1, cy1 = p.crop
    cx0, cx1 = max(int(np.floor(cx0 / scale[0])) - 1, 0), min(int(np.ceil(cx1 / scale[0])) + 1, sw)
    cy0, cy1 = max(int(np.floor(cy0 / scale[1])) - 1, 0), min(int(np.ceil(cy1 / scale[1])) + 1, sh)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    m = translate_matrix(-x0, -y0) @ m_src @ translate_matrix(cx0, cy0)
    cv2.warpAffine(src[cy0:cy1, cx0:cx1], pixel_matrix(m), (x1 - x0, y1 - y0), dst=out[y0:y1, x0:x1],
                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    return x0, y0, x1, y1


def mixup_partners(plan: BatchPlan, batch: np.ndarray) -> dict[int, np.ndarray]:
    """Copies of the rendered images that others blend in (taken before any mixup or HSV)."""
    return {ip.mixup: batch[ip.mixup].copy() for ip in plan.images if ip.mixup is not None}


def finish_image(plan: BatchPlan, k: int, batch: np.ndarray, partners: dict[int, np.ndarray], *,
                 exact_colour: bool = False, covers: Sequence[Cover] | None = None) -> None:
    """Mixup, then HSV, on rendered image k (Ultralytics' order), in place. HSV runs through
    `apply_hsv_fast`, or `apply_hsv` with `exact_colour` (the reference other executors match).
    `covers`: every image's `render_image` result; with it only painted pixels are converted
    (`hsv_over`), the same result in less time."""
    ip = plan.images[k]
    cover = None if covers is None else covers[k]
    if ip.mixup is not None:
        cv2.addWeighted(batch[k], ip.mixup_ratio, partners[ip.mixup], 1 - ip.mixup_ratio, 0, dst=batch[k])
        # padding blended with padding stays padding: the cover is the union of the two
        other = None if covers is None else covers[ip.mixup]
        cover = None if cover is None or other is None else (*cover, *other)
    if ip.hsv is not None:
        hsv_over(batch[k], hsv_op(ip.hsv, exact_colour), cover)
