"""The augmentation plan: every random choice and all box math for one batch, device-independent.

A plan says, for each output image, which source images are drawn where (one 3x3 matrix per
source, composing the letterbox or mosaic placement, the random affine and the flips, so that
every output pixel is resampled exactly once), the clip polygon of each source, the HSV gains,
the mixup partner, and the transformed boxes. Executors (`cpu.py`: OpenCV per image; `torch_exec.py`:
batched torch ops) only apply it to pixels.

Coordinates are continuous "edge" coordinates (0 is the left edge of pixel 0; a W-pixel row spans
[0, W]); `pixel_matrix` converts a matrix to OpenCV's pixel-centre convention.
Semantics follow Ultralytics (Mosaic, RandomPerspective, RandomHSV, RandomFlip, MixUp): same
hyperparameter names, ranges and box filter, with two deliberate differences: mosaic boxes are
clipped to the part of their image that is visible in its quadrant (Ultralytics clips only to the
canvas), and mosaic partners come from the loader's recent batches and the batch's samples up to
the image's own (Ultralytics' buffer holds the images its worker loaded last; here each sample is
decoded once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from loaders.augment.hyp import Hyp
from sainet.core.geometry import letterbox_params

__all__ = ["Placement", "ImagePlan", "BatchPlan", "plan_batch", "pixel_matrix", "box_candidates", "translate_matrix",
           "scale_matrix"]


@dataclass
class Placement:
    src: int  # index into the batch's decoded sources
    matrix: np.ndarray  # 3x3, source (original image) edge coords -> output edge coords
    region: np.ndarray | None  # (k, 2) convex polygon in output coords this source may paint; None = whole output
    crop: tuple[float, float, float, float] | None = None  # the visible part of the source, original coords (mosaic)


@dataclass
class ImagePlan:
    placements: list[Placement]
    cls: np.ndarray  # (n,) int
    boxes: np.ndarray  # (n, 4) xyxy in output pixels
    hsv: tuple[float, float, float] | None = None  # multiplicative gains (h, s, v)
    mixup: int | None = None  # index of the output image to blend in (its pre-mixup pixels)
    mixup_ratio: float = 1.0  # weight of this image
    ratio_pad: tuple = ((1.0, 1.0), (0.0, 0.0))  # Ultralytics: ((h ratio, w ratio), (pad left, pad top))
    letterbox: bool = False  # eval: a plain letterbox (executors may use a resize, bit-identical to Ultralytics)


@dataclass
class BatchPlan:
    out_hw: tuple[int, int]
    images: list[ImagePlan] = field(default_factory=list)


def translate_matrix(tx: float, ty: float) -> np.ndarray:
    """3x3 translation by (tx, ty)."""
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def scale_matrix(sx: float, sy: float) -> np.ndarray:
    """3x3 scaling by (sx, sy); e.g. ``scale_matrix(*decoded.scale)`` maps decoded pixels to original coordinates."""
    return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], np.float64)


def pixel_matrix(m: np.ndarray) -> np.ndarray:
    """Edge-coordinate matrix -> the 2x3 pixel-centre matrix cv2.warpAffine expects."""
    return (translate_matrix(-0.5, -0.5) @ m @ translate_matrix(0.5, 0.5))[:2]


def box_candidates(b1: np.ndarray, b2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100, area_thr: float = 0.1,
                   eps: float = 1e-16) -> np.ndarray:
    """Ultralytics' filter: keep boxes that stay > 2 px, keep > 10% of their area, aspect < 100."""
    w1, h1 = b1[:, 2] - b1[:, 0], b1[:, 3] - b1[:, 1]
    w2, h2 = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _transform_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """xyxy boxes through a 3x3 affine: the bounding box of the four transformed corners.

    The corners are every (x in {x0, x1}, y in {y0, y1}), so min/max of a*x + b*y + c separate
    into min/max of a*x plus min/max of b*y: no corner array is built (boxes are few and this
    runs for every source of every image).
    """
    if not len(boxes):
        return boxes.reshape(0, 4)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    out = np.empty((len(boxes), 4))
    for row, lo, hi in ((0, 0, 2), (1, 1, 3)):
        a, b, c = m[row, 0], m[row, 1], m[row, 2]
        ax0, ax1, by0, by1 = a * x0, a * x1, b * y0, b * y1
        out[:, lo] = np.minimum(ax0, ax1) + np.minimum(by0, by1) + c
        out[:, hi] = np.maximum(ax0, ax1) + np.maximum(by0, by1) + c
    return out


def _clip(boxes: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.clip(boxes, (x0, y0, x0, y0), (x1, y1, x1, y1))


def _random_affine(rng: np.random.Generator, hyp: Hyp, canvas_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Ultralytics RandomPerspective without perspective: canvas -> output. Returns (M, scale)."""
    ch, cw = canvas_hw
    oh, ow = out_hw
    c = translate_matrix(-cw / 2, -ch / 2)
    a = rng.uniform(-hyp.degrees, hyp.degrees)
    s = rng.uniform(1 - hyp.scale, 1 + hyp.scale)
    cos, sin = math.cos(math.radians(a)) * s, math.sin(math.radians(a)) * s
    r = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]], np.float64)  # cv2.getRotationMatrix2D convention
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-hyp.shear, hyp.shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-hyp.shear, hyp.shear)))
    t = translate_matrix(rng.uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * ow, rng.uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * oh)
    return t @ sh @ r @ c, s


def _source_boxes(cls: np.ndarray, boxes: np.ndarray, w0: int, h0: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized xywh -> xyxy in original pixels."""
    if not len(boxes):
        return cls.reshape(0), np.zeros((0, 4))
    b = boxes.astype(np.float64)
    half = b[:, 2:] / 2
    xyxy = np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)
    xyxy *= (w0, h0, w0, h0)
    return cls, xyxy


def _letterbox_plan(w0: int, h0: int, out_hw: tuple[int, int], cls: np.ndarray, boxes: np.ndarray, src: int) -> ImagePlan:
    H, W = out_hw
    lb = letterbox_params(h0, w0, H, W)
    m = translate_matrix(lb.left, lb.top) @ scale_matrix(lb.new_w / w0, lb.new_h / h0)
    c, xyxy = _source_boxes(cls, boxes, w0, h0)
    return ImagePlan([Placement(src, m, None)], c, _transform_boxes(xyxy, m), letterbox=True,
                     ratio_pad=((lb.new_h / h0, lb.new_w / w0), (float(lb.left), float(lb.top))))


def _corners(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def plan_batch(
    rng: np.random.Generator,
    sizes: list[tuple[int, int]],
    labels: list[tuple[np.ndarray, np.ndarray]],
    out_hw: tuple[int, int],
    hyp: Hyp,
    *,
    augment: bool,
    mosaic: bool = True,
    n_out: int | None = None,
) -> BatchPlan:
    """Plan one batch. `sizes[i]` is source i's original (w, h); `labels[i]` its (cls, normalized xywh).

    Output image i (i < `n_out`, default all) is built around source i; mosaic partners are drawn
    as from Ultralytics' buffer: from the recent batches' samples the caller appends after the batch
    (the loader's partner history, `loaders.assemble.History`) and the batch's sources 0..i; with no
    recent samples given, from the whole batch.
    """
    plan = BatchPlan(out_hw)
    if not augment:
        for i, ((w0, h0), (cls, boxes)) in enumerate(zip(sizes, labels, strict=True)):
            plan.images.append(_letterbox_plan(w0, h0, out_hw, cls, boxes, i))
        return plan
    # Every random draw happens whatever the probabilities and gains, so one seed gives the same
    # geometry whether or not, say, HSV or flips are switched on.
    n_batch = len(sizes) if n_out is None else n_out
    for i in range(n_batch):
        plan.images.append(_augmented_image(rng, i, sizes, labels, out_hw, hyp, mosaic, n_batch))
    if len(plan.images) > 1:
        _add_mixup(rng, plan, hyp)
    return plan


#: Ultralytics' mosaic buffer: the last 8 x batch images its worker loaded
BUFFER_BATCHES = 8


def _partners(rng: np.random.Generator, i: int, n: int, n_batch: int) -> list[int]:
    """Output image i's 3 mosaic partners among the plan's n sources: with recent batches' (sources
    n_batch..n-1, oldest first), drawn from the batch's sources 0..i and the latest recent ones, at
    most 8 x batch in all — Ultralytics' buffer when it loads image i; without, from the whole batch."""
    if n_batch == n:
        return rng.integers(0, n, 3).tolist()
    keep = min(n - n_batch, BUFFER_BATCHES * n_batch - (i + 1))
    first = n - keep  # the oldest recent source still in the buffer
    return [int(d) if d <= i else int(d) - (i + 1) + first for d in rng.integers(0, keep + i + 1, 3)]


def _pieces(rng: np.random.Generator, i: int, sizes: list[tuple[int, int]], out_hw: tuple[int, int], hyp: Hyp,
            mosaic: bool, n_batch: int) -> tuple[tuple[int, int], list]:
    """(canvas (h, w), [(source, placement on the canvas, visible rectangle)]) of output image i.
    Partners: with recent batches given (sources n_batch..), from those and this batch's first i + 1,
    as Ultralytics' buffer holds when image i is loaded; without, from the whole batch."""
    H, W = out_hw
    use_mosaic = rng.random() < hyp.mosaic
    partners = _partners(rng, i, len(sizes), n_batch)
    if not (mosaic and use_mosaic):
        w0, h0 = sizes[i]
        lb = letterbox_params(h0, w0, H, W)
        place = translate_matrix(lb.left, lb.top) @ scale_matrix(lb.new_w / w0, lb.new_h / h0)
        return (H, W), [(i, place, (lb.left, lb.top, lb.left + lb.new_w, lb.top + lb.new_h))]
    xc, yc = rng.uniform(W / 2, 3 * W / 2), rng.uniform(H / 2, 3 * H / 2)
    pieces = []
    for k, j in enumerate([i, *partners]):
        w0, h0 = sizes[j]
        r = min(H / h0, W / w0)
        w, h = min(math.ceil(w0 * r), W), min(math.ceil(h0 * r), H)
        if k == 0:
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            px, py = x2a - w, y2a - h
        elif k == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * W), yc
            px, py = x1a, y2a - h
        elif k == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * H, yc + h)
            px, py = x2a - w, y1a
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * W), min(2 * H, yc + h)
            px, py = x1a, y1a
        pieces.append((j, translate_matrix(px, py) @ scale_matrix(w / w0, h / h0), (x1a, y1a, x2a, y2a)))
    return (2 * H, 2 * W), pieces


def _flip(rng: np.random.Generator, hyp: Hyp, out_hw: tuple[int, int]) -> np.ndarray:
    H, W = out_hw
    flip = np.eye(3)
    ud, lr = rng.random(2)
    if ud < hyp.flipud:
        flip = np.array([[1, 0, 0], [0, -1, H], [0, 0, 1]], np.float64) @ flip
    if lr < hyp.fliplr:
        flip = np.array([[-1, 0, W], [0, 1, 0], [0, 0, 1]], np.float64) @ flip
    return flip


def _augmented_image(rng: np.random.Generator, i: int, sizes: list[tuple[int, int]], labels: list[tuple[np.ndarray, np.ndarray]],
                     out_hw: tuple[int, int], hyp: Hyp, mosaic: bool, n_batch: int) -> ImagePlan:
    """Output image i: placements (mosaic or letterbox, then affine and flips), boxes, HSV gains."""
    H, W = out_hw
    canvas, pieces = _pieces(rng, i, sizes, out_hw, hyp, mosaic, n_batch)
    affine, s = _random_affine(rng, hyp, canvas, out_hw)
    full_canvas = _flip(rng, hyp, out_hw) @ affine
    placements, all_cls, before, after = [], [], [], []
    for j, place, (x1a, y1a, x2a, y2a) in pieces:
        region = crop = None
        if len(pieces) > 1:  # the part of the canvas this source may paint, and the crop of source j shown there
            region = _apply(full_canvas, _corners(x1a, y1a, x2a, y2a))
            sx, sy, tx, ty = place[0, 0], place[1, 1], place[0, 2], place[1, 2]
            crop = ((x1a - tx) / sx, (y1a - ty) / sy, (x2a - tx) / sx, (y2a - ty) / sy)
        placements.append(Placement(j, full_canvas @ place, region, crop))
        c, xyxy = _source_boxes(*labels[j], *sizes[j])
        if not len(c):
            continue
        in_canvas = _clip(_transform_boxes(xyxy, place), x1a, y1a, x2a, y2a)  # the visible part only
        keep = (in_canvas[:, 2] > in_canvas[:, 0]) & (in_canvas[:, 3] > in_canvas[:, 1])
        all_cls.append(c[keep])
        before.append(in_canvas[keep])
        after.append(_transform_boxes(in_canvas[keep], full_canvas))
    if all_cls:
        cls, b1, b2 = np.concatenate(all_cls), np.concatenate(before), np.concatenate(after)
        b2 = _clip(b2, 0, 0, W, H)
        ok = box_candidates(b1 * s, b2)
        cls, boxes = cls[ok], b2[ok]
    else:
        cls, boxes = np.zeros(0, np.int32), np.zeros((0, 4))
    g = rng.uniform(-1, 1, 3) * np.array([hyp.hsv_h, hyp.hsv_s, hyp.hsv_v]) + 1
    hsv = (float(g[0]), float(g[1]), float(g[2])) if (hyp.hsv_h or hyp.hsv_s or hyp.hsv_v) else None
    # No geometry drawn (all gains 0, no flip, no mosaic): this is the letterbox, and is rendered
    # as one (bit-identical to eval mode) rather than as a warp.
    plain = len(pieces) == 1 and np.allclose(full_canvas, np.eye(3), atol=1e-12)
    return ImagePlan(placements, cls, boxes, hsv=hsv, letterbox=plain)


def _add_mixup(rng: np.random.Generator, plan: BatchPlan, hyp: Hyp) -> None:
    """Draw each image's mixup partner (another image of the batch, its pre-mixup pixels) and blend labels."""
    n = len(plan.images)
    pre = [(im.cls, im.boxes) for im in plan.images]
    for i, im in enumerate(plan.images):
        p, j, ratio = rng.random(), int(rng.integers(0, n - 1)), float(rng.beta(32.0, 32.0))
        if p < hyp.mixup:
            j += j >= i
            im.mixup, im.mixup_ratio = j, ratio
            im.cls = np.concatenate([im.cls, pre[j][0]])
            im.boxes = np.concatenate([im.boxes, pre[j][1]])
