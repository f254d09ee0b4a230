"""CPU executor: apply a plan with uint8 OpenCV kernels, one output image per call (run in threads).

On a CPU, OpenCV's uint8 warpAffine and LUT are ~10x faster than torch float ops (DESIGN.md), and
they release the GIL, so the decode threads run them in parallel.
"""

from __future__ import annotations

import cv2
import numpy as np

from loaders.augment.plan import BatchPlan, ImagePlan, Placement, pixel_matrix
from sainet.geometry import PAD_VALUE, letterbox

__all__ = ["render_image", "apply_hsv", "mixup_partners", "finish_image"]

_X = np.arange(256, dtype=np.float64)


def apply_hsv(img: np.ndarray, gains: tuple[float, float, float]) -> None:
    """Ultralytics RandomHSV (the same three look-up tables), in place, on an RGB uint8 image.

    One 3-channel LUT on the HSV image instead of split / three LUTs / merge: half the time.
    """
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    table = np.empty((256, 1, 3), np.uint8)
    table[:, 0, 0] = ((_X * gains[0]) % 180).astype(np.uint8)
    table[:, 0, 1] = np.clip(_X * gains[1], 0, 255).astype(np.uint8)
    table[:, 0, 2] = np.clip(_X * gains[2], 0, 255).astype(np.uint8)
    cv2.LUT(hsv, table, dst=hsv)
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=img)


def render_image(ip: ImagePlan, sources: list[np.ndarray], scales: list[tuple[float, float]], out: np.ndarray) -> None:
    """Draw output image `ip` into `out` (HxWx3 uint8). `sources[j]` shows source j's original image
    content at some scale; `scales[j]` maps its pixels to original coordinates (1 unless the JPEG
    was decoded at a reduced DCT scale or the source is a raw frame)."""
    H, W = out.shape[:2]
    if ip.letterbox:  # eval: exactly Ultralytics' resize + pad
        letterbox(sources[ip.placements[0].src], H, W, out=out)
        return
    if len(ip.placements) == 1:
        p = ip.placements[0]
        m = p.matrix @ _scale(scales[p.src])
        cv2.warpAffine(sources[p.src], pixel_matrix(m), (W, H), dst=out, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
    else:
        out[...] = PAD_VALUE
        for p in ip.placements:
            _paint_region(p, sources[p.src], scales[p.src], out)


def _paint_region(p: Placement, src: np.ndarray, scale: tuple[float, float], out: np.ndarray) -> None:
    """Warp the visible crop of a mosaic source straight into its quadrant of `out`.

    The source is cut to its crop (one pixel wider, so neighbouring quadrants meet without a seam)
    and warped with a transparent border over the bounding box of its quadrant only: output pixels
    that map outside the crop are left alone, so no mask and no second buffer are needed.
    """
    H, W = out.shape[:2]
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
    m = _translate(-x0, -y0) @ p.matrix @ _scale(scale) @ _translate(cx0, cy0)
    cv2.warpAffine(src[cy0:cy1, cx0:cx1], pixel_matrix(m), (x1 - x0, y1 - y0), dst=out[y0:y1, x0:x1],
                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)


def mixup_partners(plan: BatchPlan, batch: np.ndarray) -> dict[int, np.ndarray]:
    """Copies of the rendered images that others blend in (taken before any mixup or HSV)."""
    return {ip.mixup: batch[ip.mixup].copy() for ip in plan.images if ip.mixup is not None}


def finish_image(plan: BatchPlan, k: int, batch: np.ndarray, partners: dict[int, np.ndarray]) -> None:
    """Mixup, then HSV, on rendered image k (Ultralytics' order), in place."""
    ip = plan.images[k]
    if ip.mixup is not None:
        cv2.addWeighted(batch[k], ip.mixup_ratio, partners[ip.mixup], 1 - ip.mixup_ratio, 0, dst=batch[k])
    if ip.hsv is not None:
        apply_hsv(batch[k], ip.hsv)


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def _scale(scale: tuple[float, float]) -> np.ndarray:
    """Matrix from decoded-pixel edge coords to original edge coords."""
    return np.array([[scale[0], 0, 0], [0, scale[1], 0], [0, 0, 1]], np.float64)
