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
canvas), and mosaic partners come from the same batch and the loader's recent batches (each sample
is decoded once).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """xyxy boxes through 3x3 affine(s): the bounding box of the four transformed corners. `m` is
    one (3, 3) matrix or one per box (n, 3, 3).

    The corners are every (x in {x0, x1}, y in {y0, y1}), so min/max of a*x + b*y + c separate
    into min/max of a*x plus min/max of b*y: no corner array is built.
    """
    if not len(boxes):
        return boxes.reshape(0, 4)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    out = np.empty((len(boxes), 4))
    for row, lo, hi in ((0, 0, 2), (1, 1, 3)):
        a, b, c = m[..., row, 0], m[..., row, 1], m[..., row, 2]
        ax0, ax1, by0, by1 = a * x0, a * x1, b * y0, b * y1
        out[:, lo] = np.minimum(ax0, ax1) + np.minimum(by0, by1) + c
        out[:, hi] = np.maximum(ax0, ax1) + np.maximum(by0, by1) + c
    return out


def _clip(boxes: np.ndarray, x0, y0, x1, y1) -> np.ndarray:  # noqa: ANN001 - floats or (n,) arrays
    lo = np.stack(np.broadcast_arrays(x0, y0, x0, y0), -1)
    hi = np.stack(np.broadcast_arrays(x1, y1, x1, y1), -1)
    return np.clip(boxes, lo, hi)


def _source_boxes(cls: np.ndarray, boxes: np.ndarray, w0: int, h0: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized xywh -> xyxy in original pixels."""
    if not len(boxes):
        return cls.reshape(0), np.zeros((0, 4))
    b = boxes.astype(np.float64)
    half = b[:, 2:] / 2
    xyxy = np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)
    xyxy *= (w0, h0, w0, h0)
    return cls, xyxy


def letterbox_region(ip: ImagePlan, scale: tuple[float, float], src_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, new_h, new_w) in output pixels of an eval image's letterbox: where its plan puts
    its decoded source (`src_hw` pixels, mapped to original coordinates by `scale`)."""
    m = ip.placements[0].matrix @ scale_matrix(*scale)
    h, w = src_hw
    return round(m[1, 2]), round(m[0, 2]), round(m[1, 1] * h), round(m[0, 0] * w)


def _letterbox_plan(w0: int, h0: int, out_hw: tuple[int, int], cls: np.ndarray, boxes: np.ndarray, src: int,
                    fit: tuple[int, int] | None = None) -> ImagePlan:
    H, W = out_hw
    lb = letterbox_params(h0, w0, H, W, fit)
    m = translate_matrix(lb.left, lb.top) @ scale_matrix(lb.new_w / w0, lb.new_h / h0)
    c, xyxy = _source_boxes(cls, boxes, w0, h0)
    return ImagePlan([Placement(src, m, None)], c, _transform_boxes(xyxy, m), letterbox=True,
                     ratio_pad=((lb.new_h / h0, lb.new_w / w0), (float(lb.left), float(lb.top))))


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
    ids: Sequence[int] | None = None,
    buffer: int | None = None,
    fit: tuple[int, int] | None = None,
) -> BatchPlan:
    """Plan one batch. `sizes[i]` is source i's original (w, h); `labels[i]` its (cls, normalized xywh).

    Output image i (i < `n_out`, default all) is built around source i; mosaic partners are drawn
    as from Ultralytics' buffer: from the recent batches' samples the caller appends after the batch
    (the loader's partner history, `loaders.assemble.History`) and the batch's sources 0..i, `buffer`
    - 1 distinct images (`buffer_length`; `ids`, each source's dataset index, tell which are the
    same image); with no recent samples given, from the whole batch (`_partners`).

    Augmented batches are planned with array ops over the whole batch (`_Draws`, `_geometry`,
    `_boxes`): no Python loop per image or per placement but the one that wraps the result in
    `ImagePlan` objects. Eval (not `augment`) letterboxes each source into `out_hw`, sized to `fit`
    when given (`letterbox_params`: Ultralytics' rect val shape around an imgsz x imgsz fit).
    """
    plan = BatchPlan(out_hw)
    if not augment:
        for i, ((w0, h0), (cls, boxes)) in enumerate(zip(sizes, labels, strict=True)):
            plan.images.append(_letterbox_plan(w0, h0, out_hw, cls, boxes, i, fit))
        return plan
    B = len(sizes) if n_out is None else n_out
    if B == 0:
        return plan
    d = _Draws.draw(rng, B, len(sizes), hyp, ids, buffer)
    g = _geometry(d, np.asarray(sizes, np.float64).reshape(-1, 2), out_hw, hyp, mosaic)
    cls, boxes = _boxes(g, d, sizes, labels, out_hw)
    gains = (d.hsv * np.array([hyp.hsv_h, hyp.hsv_s, hyp.hsv_v]) + 1).tolist()
    use_hsv = bool(hyp.hsv_h or hyp.hsv_s or hyp.hsv_v)
    src, crops, plain = g.src.tolist(), g.crop.tolist(), g.plain.tolist()
    for i, (n, mats, regions) in enumerate(zip(g.n.tolist(), g.matrix, g.region, strict=False)):
        if n == 1:
            places = [Placement(src[i][0], mats[0], None, None)]
        else:
            places = [Placement(src[i][k], mats[k], regions[k], tuple(crops[i][k])) for k in range(n)]
        hsv = tuple(gains[i]) if use_hsv else None
        plan.images.append(ImagePlan(places, cls[i], boxes[i], hsv=hsv, letterbox=plain[i]))
    if B > 1:
        _add_mixup(d, plan, hyp)
    return plan


#: Ultralytics' mosaic buffer: the last 8 x batch images its worker loaded (`buffer_length`)
BUFFER_BATCHES = 8


def buffer_length(n: int, batch: int) -> int:
    """Ultralytics' `max_buffer_length` for a dataset of `n` images and batch `batch`: min(n, 8 x
    batch, 1000). Its buffer holds one image fewer once full (it pops as it reaches the length)."""
    return max(2, min(n, BUFFER_BATCHES * batch, 1000))


def _partners(rng: np.random.Generator, B: int, N: int, ids: Sequence[int] | None = None,
              buffer: int | None = None) -> np.ndarray:
    """(B, 3) mosaic partners among the plan's N sources, the batch's B first. With recent batches'
    samples given (sources B..N-1, oldest first, each image once), image i draws from Ultralytics'
    buffer when it loads image i: the batch's sources 0..i and the latest recent ones, `buffer` - 1
    distinct images in all (`buffer_length`; default 8 x B). `ids` (each source's dataset index)
    make it distinct: a recent image that is also one of the batch's 0..i counts once, as the
    batch's (a reloaded image is cached, not added again), while one that comes later in the
    batch is still a recent candidate (it is in the buffer from before). Without recent samples,
    from the whole batch."""
    if N == B:
        return rng.integers(0, N, (B, 3))
    size = (buffer or BUFFER_BATCHES * B) - 1
    i = np.arange(B)[:, None]
    own = np.minimum(i + 1, size)  # the batch's sources i-own+1..i
    again = first = np.empty(0, np.int64)  # recent sources the batch loads again, and at which of its images
    if ids is not None:
        ids = np.asarray(ids)
        match = ids[B:][None, :] == ids[:B][:, None]  # (B, N - B)
        again = np.flatnonzero(match.any(0))
        first = match[:, again].argmax(0)
    left = (N - B) - (first[None, :] <= i).sum(1, keepdims=True)  # recent ones image i has not loaded again
    take = np.minimum(size - own, left)  # the latest of them
    d = rng.integers(0, own + take, (B, 3))
    m = left - take + d - own  # place among those left, oldest first; then skip the ones loaded again
    for pos, j in zip(again.tolist(), first.tolist(), strict=True):
        m = m + ((j <= i) & (pos <= m))
    return np.where(d < own, i - own + 1 + d, B + m)


@dataclass
class _Draws:
    """Every random draw of one augmented batch, drawn as arrays over its B images in a fixed
    order (each kind of draw for all images, then the next kind). Each image's draws have
    Ultralytics' distributions and are independent of the other images' (the same distribution as
    drawing image by image). Every draw happens whatever the probabilities and gains, so one seed
    gives the same geometry whether or not, say, HSV, flips or mixup are switched on."""

    use_mosaic: np.ndarray  # (B,) uniform [0, 1): mosaic when < hyp.mosaic
    partners: np.ndarray  # (B, 3) mosaic partners, indices into all the sources (`_partners`)
    centre: np.ndarray  # (B, 2) mosaic centre, fractions of the canvas in [0.5, 1.5)
    affine: np.ndarray  # (B, 6) degrees, scale, shear x, shear y (deg), translate x, y (fractions of the output)
    flips: np.ndarray  # (B, 2) uniform: up-down, left-right
    hsv: np.ndarray  # (B, 3) uniform [-1, 1)
    mixup: np.ndarray  # (B,) uniform: mixup when < hyp.mixup
    mixup_with: np.ndarray  # (B,) in [0, B - 1): another image (shifted past i)
    mixup_ratio: np.ndarray  # (B,) Beta(32, 32)

    @classmethod
    def draw(cls, rng: np.random.Generator, B: int, N: int, hyp: Hyp, ids: Sequence[int] | None = None,
             buffer: int | None = None) -> _Draws:
        use_mosaic = rng.random(B)
        partners = _partners(rng, B, N, ids, buffer)
        centre = rng.uniform(0.5, 1.5, (B, 2))
        t = hyp.translate
        affine = np.stack([rng.uniform(-hyp.degrees, hyp.degrees, B), rng.uniform(1 - hyp.scale, 1 + hyp.scale, B),
                           rng.uniform(-hyp.shear, hyp.shear, B), rng.uniform(-hyp.shear, hyp.shear, B),
                           rng.uniform(0.5 - t, 0.5 + t, B), rng.uniform(0.5 - t, 0.5 + t, B)], 1)
        flips = rng.random((B, 2))
        hsv = rng.uniform(-1, 1, (B, 3))
        mix = rng.random(B)
        mix_with = rng.integers(0, max(B - 1, 1), B)
        ratio = rng.beta(32.0, 32.0, B)
        return cls(use_mosaic, partners, centre, affine, flips, hsv, mix, mix_with, ratio)


@dataclass
class _Geometry:
    """Per image i and slot k (K = 4 slots; image i uses the first n[i])."""

    n: np.ndarray  # (B,) 4 for a mosaic, 1 otherwise
    src: np.ndarray  # (B, K) source index
    rect: np.ndarray  # (B, K, 4) the canvas rectangle each source may paint (x0, y0, x1, y1)
    place: np.ndarray  # (B, K, 3, 3) source original coords -> canvas
    full: np.ndarray  # (B, 3, 3) canvas -> output (affine, then flips)
    matrix: np.ndarray  # (B, K, 3, 3) full @ place
    region: np.ndarray  # (B, K, 4, 2) rect's corners in output coords
    crop: np.ndarray  # (B, K, 4) the visible part of the source, original coords
    scale: np.ndarray  # (B,) the affine's scale (box filter)
    plain: np.ndarray  # (B,) no geometry drawn: a plain letterbox


def _eye(*shape: int) -> np.ndarray:
    return np.broadcast_to(np.eye(3), (*shape, 3, 3)).copy()


def _letterbox_arrays(wh: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`letterbox_params` over (n, 2) sizes: (new_w, new_h, left, top), the same float arithmetic."""
    w0, h0 = wh[:, 0], wh[:, 1]
    r = np.minimum(H / h0, W / w0)
    new_w, new_h = np.minimum(np.ceil(w0 * r), W), np.minimum(np.ceil(h0 * r), H)
    return new_w, new_h, np.round((W - new_w) / 2 - 0.1), np.round((H - new_h) / 2 - 0.1)


def _tiles(d: _Draws, sizes: np.ndarray, is_mosaic: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """(src (B, 4), rect (B, 4, 4), scale (B, 4, 2), offset (B, 4, 2)): where each source lands on
    its canvas (Ultralytics' Mosaic quadrants around the centre, or the letterbox)."""
    H, W = out_hw
    B = len(is_mosaic)
    src = np.concatenate([np.arange(B)[:, None], d.partners], 1)
    wh = sizes[src]  # (B, 4, 2)
    r = np.minimum(H / wh[..., 1], W / wh[..., 0])
    w, h = np.minimum(np.ceil(wh[..., 0] * r), W), np.minimum(np.ceil(wh[..., 1] * r), H)
    xc, yc = (d.centre[:, 0] * W)[:, None], (d.centre[:, 1] * H)[:, None]
    xc, yc = np.broadcast_to(xc, (B, 4)), np.broadcast_to(yc, (B, 4))
    x1a = np.stack([np.maximum(xc[:, 0] - w[:, 0], 0), xc[:, 1], np.maximum(xc[:, 2] - w[:, 2], 0), xc[:, 3]], 1)
    y1a = np.stack([np.maximum(yc[:, 0] - h[:, 0], 0), np.maximum(yc[:, 1] - h[:, 1], 0), yc[:, 2], yc[:, 3]], 1)
    x2a = np.stack([xc[:, 0], np.minimum(xc[:, 1] + w[:, 1], 2 * W), xc[:, 2], np.minimum(xc[:, 3] + w[:, 3], 2 * W)], 1)
    y2a = np.stack([yc[:, 0], yc[:, 1], np.minimum(2 * H, yc[:, 2] + h[:, 2]), np.minimum(2 * H, yc[:, 3] + h[:, 3])], 1)
    px = np.stack([x2a[:, 0] - w[:, 0], x1a[:, 1], x2a[:, 2] - w[:, 2], x1a[:, 3]], 1)
    py = np.stack([y2a[:, 0] - h[:, 0], y2a[:, 1] - h[:, 1], y1a[:, 2], y1a[:, 3]], 1)
    rect = np.stack([x1a, y1a, x2a, y2a], -1)
    scale, offset = np.stack([w / wh[..., 0], h / wh[..., 1]], -1), np.stack([px, py], -1)
    lb = ~is_mosaic
    if lb.any():  # letterbox images: slot 0 only, the source resized into the output
        new_w, new_h, left, top = _letterbox_arrays(sizes[src[lb, 0]], H, W)
        rect[lb, 0] = np.stack([left, top, left + new_w, top + new_h], 1)
        scale[lb, 0] = np.stack([new_w / wh[lb, 0, 0], new_h / wh[lb, 0, 1]], 1)
        offset[lb, 0] = np.stack([left, top], 1)
    return src, rect, scale, offset


def _affine(d: _Draws, is_mosaic: np.ndarray, out_hw: tuple[int, int], hyp: Hyp) -> np.ndarray:
    """Ultralytics RandomPerspective without perspective, then the flips: canvas -> output (B, 3, 3)."""
    H, W = out_hw
    B = len(is_mosaic)
    k = np.where(is_mosaic, 2, 1)
    c = _eye(B)
    c[:, 0, 2], c[:, 1, 2] = -k * W / 2, -k * H / 2
    a, s = np.radians(d.affine[:, 0]), d.affine[:, 1]
    cos, sin = np.cos(a) * s, np.sin(a) * s
    r = _eye(B)  # cv2.getRotationMatrix2D convention
    r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1] = cos, sin, -sin, cos
    sh = _eye(B)
    sh[:, 0, 1], sh[:, 1, 0] = np.tan(np.radians(d.affine[:, 2])), np.tan(np.radians(d.affine[:, 3]))
    t = _eye(B)
    t[:, 0, 2], t[:, 1, 2] = d.affine[:, 4] * W, d.affine[:, 5] * H
    flip = _eye(B)
    ud, lr = d.flips[:, 0] < hyp.flipud, d.flips[:, 1] < hyp.fliplr
    flip[ud, 1, 1], flip[ud, 1, 2] = -1, H
    flip[lr, 0, 0], flip[lr, 0, 2] = -1, W
    return flip @ (t @ sh @ r @ c)


def _geometry(d: _Draws, sizes: np.ndarray, out_hw: tuple[int, int], hyp: Hyp, mosaic: bool) -> _Geometry:
    """Placements of every image of the batch: tiles on the canvas, then the affine and flips."""
    B = len(d.use_mosaic)
    is_mosaic = (d.use_mosaic < hyp.mosaic) & mosaic
    src, rect, scale, offset = _tiles(d, sizes, is_mosaic, out_hw)
    place = _eye(B, 4)
    place[..., 0, 0], place[..., 1, 1] = scale[..., 0], scale[..., 1]
    place[..., 0, 2], place[..., 1, 2] = offset[..., 0], offset[..., 1]
    full = _affine(d, is_mosaic, out_hw, hyp)
    matrix = full[:, None] @ place
    x0, y0, x1, y1 = (rect[..., c] for c in range(4))
    corners = np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1), np.stack([x0, y1], -1)], -2)
    region = corners @ full[:, None, :2, :2].transpose(0, 1, 3, 2) + full[:, None, None, :2, 2]
    crop = np.stack([(x0 - offset[..., 0]) / scale[..., 0], (y0 - offset[..., 1]) / scale[..., 1],
                     (x1 - offset[..., 0]) / scale[..., 0], (y1 - offset[..., 1]) / scale[..., 1]], -1)
    n = np.where(is_mosaic, 4, 1)
    # No geometry drawn (all gains 0, no flip, no mosaic): this is the letterbox, and is rendered
    # as one (bit-identical to eval mode) rather than as a warp.
    plain = (n == 1) & np.isclose(full, np.eye(3), rtol=1e-5, atol=1e-12).all((1, 2))
    return _Geometry(n, src, rect, place, full, matrix, region, crop, d.affine[:, 1], plain)


def _boxes(g: _Geometry, d: _Draws, sizes: list[tuple[int, int]], labels: list[tuple[np.ndarray, np.ndarray]],
           out_hw: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every image's boxes at once: each used source's boxes onto its canvas, clipped to the part
    of it visible in its tile, through the affine and flips, clipped to the output, filtered
    (Ultralytics' box_candidates). -> per image (cls, xyxy), in slot then label order."""
    H, W = out_hw
    B = len(g.n)
    counts = np.fromiter((len(b) for _, b in labels), np.int64, len(labels))
    starts = np.concatenate([[0], np.cumsum(counts)])
    empty = [np.zeros(0, np.int32)] * B, [np.zeros((0, 4))] * B
    if starts[-1] == 0:
        return empty
    all_cls = np.concatenate([np.asarray(c).reshape(-1) for c, _ in labels])
    xywh = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for _, b in labels])
    wh = np.repeat(np.asarray(sizes, np.float64).reshape(-1, 2), counts, 0)
    xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1) * np.tile(wh, 2)
    used = np.arange(4)[None] < g.n[:, None]  # (B, 4): the slots in use, in (image, slot) order
    img, slot = np.nonzero(used)
    j = g.src[img, slot]
    per = counts[j]
    piece = np.repeat(np.arange(len(j)), per)  # piece of each box
    first = np.repeat(np.cumsum(per) - per, per)
    box = starts[j][piece] + np.arange(per.sum()) - first  # its row in the label arrays
    pi, ps = img[piece], slot[piece]
    rect = g.rect[pi, ps]
    in_canvas = _clip(_transform_boxes(xyxy[box], g.place[pi, ps]), rect[:, 0], rect[:, 1], rect[:, 2], rect[:, 3])
    keep = (in_canvas[:, 2] > in_canvas[:, 0]) & (in_canvas[:, 3] > in_canvas[:, 1])
    b1, pi = in_canvas[keep], pi[keep]
    b2 = _clip(_transform_boxes(b1, g.full[pi]), 0, 0, W, H)
    ok = box_candidates(b1 * g.scale[pi][:, None], b2)
    cls, boxes, pi = all_cls[box][keep][ok], b2[ok], pi[ok]
    bounds = np.searchsorted(pi, np.arange(B + 1))
    return ([cls[bounds[i] : bounds[i + 1]] for i in range(B)], [boxes[bounds[i] : bounds[i + 1]] for i in range(B)])


def _add_mixup(d: _Draws, plan: BatchPlan, hyp: Hyp) -> None:
    """Each image's mixup partner (another image of the batch, its pre-mixup pixels) and labels."""
    pre = [(im.cls, im.boxes) for im in plan.images]
    for i in np.flatnonzero(d.mixup < hyp.mixup).tolist():
        im = plan.images[i]
        j = int(d.mixup_with[i])
        j += j >= i
        im.mixup, im.mixup_ratio = j, float(d.mixup_ratio[i])
        im.cls = np.concatenate([im.cls, pre[j][0]])
        im.boxes = np.concatenate([im.boxes, pre[j][1]])
