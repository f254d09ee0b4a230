"""Torch executor: apply a whole batch's plan in a fixed number of batched kernels (for the GPU).

The plan (numpy, `plan.py`) is packed on the CPU into one flat float32 buffer (`pack_plan`): per
tile slot k (at most 4 per output image: a mosaic; 1 for a letterbox or a single affine) the
inverse 2x3 matrix in `grid_sample` coordinates (letterbox/mosaic placement, random affine, flips
and the decode scale folded in), the rectangle of source coordinates the tile may paint, the
rectangle its samples are clamped to, plus the mixup partner and ratio and the HSV gains of every
image. That buffer reaches the device in one ``non_blocking`` copy (pinned on CUDA; the caching
host allocator keeps a pinned block until the copy that reads it has completed).

On the device the sources are stacked into one tall planar image (3, N*Hp, Wp), each
source framed by rows and columns of 114 (OpenCV's ``BORDER_CONSTANT`` value), so that one
`grid_sample` reads any source without a gather of the sources per tile, and the taps it may take
outside a source land on that frame (float32 grid coordinates over N*Hp rows are exact to
~N*Hp*6e-8 px: 0.002 px for 32 sources of 808 rows, 16x finer than OpenCV's 1/32 px).
Then, per slot, one region (`_paint`): the sampling grid (broadcast adds, not `F.affine_grid`,
whose matmul TF32 would round to whole pixels in a tall image), the mask from the grid (a rectangle
test in source coordinates: a mosaic tile paints where its bilinear taps fall in its crop, as
OpenCV's transparent border does), the clamp, one `grid_sample` over every image having that slot,
rounding, and the masked write into a uint8 canvas (each pixel is painted by one slot, so rounding
per slot is exact). Eval batches of one source size are one batched bilinear resize instead. Then
one colour region (`_colour_planes`): mixup over the images having a partner, HSV (Ultralytics'
LUTs in OpenCV's 8-bit HSV space) and the uint8 (B, 3, H, W) batch. With ``fuse=True`` (the DALI
loader's default) each region is `torch.compile`d into one kernel: the sources stay uint8, the
grid, mask and HSV intermediates never reach memory (~2 GB of device traffic per batch of 32 at
1440x832 against ~60 GB as eager ops: benchmarks/gpu_budget.py); a compiler failure falls back to
the eager ops for good. No `.item()`, no host synchronisation, no Python loop that launches
kernels per image or per placement: the kernel count depends on the slot count, not on the batch
size (tests/test_gpu_executor.py counts it).

The same plan as the OpenCV executor, so boxes are identical by construction and pixels agree
within interpolation rounding. On a CPU this is 10x or more slower than the OpenCV executor
(docs/ARCHITECTURE.md, measured facts): use it where the tensors live on a GPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from loaders.augment.plan import BatchPlan, Placement, letterbox_region
from sainet.core.geometry import PAD_VALUE

__all__ = ["PackedPlan", "pack_plan", "stack_sources", "render_batch", "hsv_torch"]

log = logging.getLogger(__name__)

_OPEN = 1e30  # a bound that never binds (no mask / no clamp)
_MISC = 6  # per image: mixup partner, mixup ratio, 3 HSV gains, HSV flag


@dataclass(frozen=True)
class PackedPlan:
    """Everything the device needs for one batch, in one flat float32 buffer.

    Layout: for each slot k, ``theta`` (n_k, 2, 3), ``bounds`` (n_k, 4: centre x, y and half
    width, height of the rectangle the tile paints) and ``clamp`` (n_k, 4: lo x, y, hi x, y), in
    grid coordinates, and ``rows`` (n_k,) the images having slot k;
    then ``misc`` (B, 6), then the indices of the images having a mixup partner. `offsets` and `counts` say where each block starts and how many rows
    it has (host-side ints, so no device value is ever read back).
    """

    buffer: np.ndarray
    batch: int
    out_hw: tuple[int, int]
    n_src: int
    pad_hw: tuple[int, int]  # rows and columns per source in the stacked image (with the 114 frame)
    counts: tuple[int, ...]  # n_k per slot
    offsets: tuple[int, ...]  # start of each slot's block in `buffer`
    misc_offset: int
    mixup: bool
    mix_rows: tuple[int, ...]  # the images having a mixup partner (also in `buffer`, after `misc`)
    hsv: bool
    hsv_all: bool  # every image has HSV (no per-image select needed)


def _slot_block(n: int) -> int:
    return n * (6 + 4 + 4 + 1)


def _slot_rows(plan: BatchPlan, rows: list[int], places: list[Placement], scales: np.ndarray,
               src_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For one slot's placements at once: (source indices, decoded edge -> output edge 3x3s,
    bounds, clamp), the rectangles in decoded edge coordinates of each placement's source."""
    n = len(places)
    j = np.fromiter((p.src for p in places), np.int64, n)
    sx, sy = scales[j, 0], scales[j, 1]
    h, w = src_hw[j, 0], src_hw[j, 1]
    m = np.stack([p.matrix for p in places]) * np.stack([sx, sy, np.ones(n)], 1)[:, None, :]  # @ scale_matrix(sx, sy)
    tile = np.fromiter((p.region is not None for p in places), bool, n)
    lb = np.fromiter((plan.images[i].letterbox for i in rows), bool, n) & ~tile
    inner = np.stack([np.full(n, 0.5), np.full(n, 0.5), w - 0.5, h - 0.5], 1)  # replicate at the source edge
    # cv2.warpAffine, BORDER_CONSTANT 114: taps may reach the 114 frame around the source
    bounds = np.stack([np.full(n, -0.5), np.full(n, -0.5), w + 0.5, h + 0.5], 1)
    clamp = np.tile(np.array([-_OPEN, -_OPEN, _OPEN, _OPEN]), (n, 1))
    if lb.any():  # cv2.resize: replicated border, painted exactly over the resized region
        bounds[lb] = np.stack([np.zeros(n), np.zeros(n), w, h], 1)[lb]
        clamp[lb] = inner[lb]
    if tile.any():  # a mosaic tile: the pixels whose bilinear taps fall in its crop (the CPU rule)
        crop = np.array([p.crop for p, t in zip(places, tile, strict=True) if t], np.float64)
        st, ht, wt = np.stack([sx, sy], 1)[tile], h[tile], w[tile]
        x0, x1 = np.maximum(np.floor(crop[:, 0] / st[:, 0]) - 1, 0), np.minimum(np.ceil(crop[:, 2] / st[:, 0]) + 1, wt)
        y0, y1 = np.maximum(np.floor(crop[:, 1] / st[:, 1]) - 1, 0), np.minimum(np.ceil(crop[:, 3] / st[:, 1]) + 1, ht)
        bounds[tile] = np.stack([x0, y0, x1, y1], 1) + 0.5
        clamp[tile] = inner[tile]
    return j, m, bounds, clamp


def _to_grid(r: np.ndarray, j: np.ndarray, pad_hw: tuple[int, int], n_src: int) -> np.ndarray:
    """(n, 4) rectangles in decoded edge coords of sources `j` -> grid coords of the stacked image;
    bounds of +-_OPEN stay open."""
    Hp, Wp = pad_hw
    g = np.stack([(r[:, 0] + 1) * 2 / Wp - 1, (r[:, 1] + 1 + j * Hp) * 2 / (n_src * Hp) - 1,
                  (r[:, 2] + 1) * 2 / Wp - 1, (r[:, 3] + 1 + j * Hp) * 2 / (n_src * Hp) - 1], 1)
    return np.where(np.abs(r) >= _OPEN, r, g)


def _pack_slots(plan: BatchPlan, scales: np.ndarray, src_hw: np.ndarray, pad_hw: tuple[int, int]) -> tuple[list[np.ndarray], list[int]]:
    """Every slot k of every image that has one, computed at once: per slot the flattened
    (theta, bounds, clamp, rows) block and its row count."""
    H, W = plan.out_hw
    Hp, Wp = pad_hw
    N = len(src_hw)
    K = max(len(ip.placements) for ip in plan.images)
    by_slot = [[i for i, ip in enumerate(plan.images) if len(ip.placements) > k] for k in range(K)]
    rows = [i for r in by_slot for i in r]
    places = [plan.images[i].placements[k] for k, r in enumerate(by_slot) for i in r]
    jj, m, bounds, clamp = _slot_rows(plan, rows, places, scales, src_hw)
    j = jj.astype(np.float64)
    n_out = np.array([[W / 2, 0, W / 2], [0, H / 2, H / 2], [0, 0, 1]], np.float64)  # output grid -> output edge coords
    n_in = np.zeros((len(rows), 3, 3))  # decoded edge coords -> grid coords of the stacked image (source at row, column 1)
    n_in[:, 0, 0], n_in[:, 0, 2] = 2 / Wp, 2 / Wp - 1
    n_in[:, 1, 1], n_in[:, 1, 2] = 2 / (N * Hp), 2 * (j * Hp + 1) / (N * Hp) - 1
    n_in[:, 2, 2] = 1
    theta = (n_in @ np.linalg.inv(m) @ n_out)[:, :2].reshape(-1, 6)
    bounds = _to_grid(bounds, j, pad_hw, N)
    bounds = np.concatenate([(bounds[:, :2] + bounds[:, 2:]) / 2, (bounds[:, 2:] - bounds[:, :2]) / 2], 1)  # centre, half size
    clamp = _to_grid(clamp, j, pad_hw, N)
    row = np.asarray(rows, np.float64)
    counts = [len(r) for r in by_slot]
    ends = np.cumsum(counts).tolist()
    blocks = [np.concatenate([theta[e - n : e].reshape(-1), bounds[e - n : e].reshape(-1), clamp[e - n : e].reshape(-1), row[e - n : e]])
              for n, e in zip(counts, ends, strict=True)]
    return blocks, counts


def pack_plan(plan: BatchPlan, scales: Sequence[tuple[float, float]], src_hw: Sequence[tuple[int, int]]) -> PackedPlan:
    """Pack `plan` for the device (numpy only). `scales[j]` maps source j's decoded pixels to its
    original coordinates; `src_hw[j]` is its decoded (h, w)."""
    B, N = len(plan.images), len(src_hw)
    hw = np.asarray(src_hw, np.float64).reshape(-1, 2)
    pad_hw = (int(hw[:, 0].max()) + 2, int(hw[:, 1].max()) + 2)
    blocks, counts = _pack_slots(plan, np.asarray(scales, np.float64).reshape(-1, 2), hw, pad_hw)
    offsets, offset = [], 0
    for n in counts:
        offsets.append(offset)
        offset += _slot_block(n)
    misc = np.array([(i if ip.mixup is None else ip.mixup, 1.0 if ip.mixup is None else ip.mixup_ratio,
                      *((1.0, 1.0, 1.0, 0.0) if ip.hsv is None else (*ip.hsv, 1.0))) for i, ip in enumerate(plan.images)], np.float64)
    mix_rows = tuple(i for i, ip in enumerate(plan.images) if ip.mixup is not None)
    blocks += [misc.reshape(-1), np.asarray(mix_rows, np.float64)]
    has_hsv = misc[:, 5] > 0
    return PackedPlan(np.concatenate(blocks).astype(np.float32), B, plan.out_hw, N, pad_hw, tuple(counts), tuple(offsets),
                      offset, bool(mix_rows), mix_rows, bool(has_hsv.any()), bool(has_hsv.all()))


def _to_device(packed: PackedPlan, device: torch.device) -> torch.Tensor:
    """One host->device copy of the whole buffer (pinned and non-blocking on CUDA)."""
    host = torch.from_numpy(packed.buffer)
    if device.type == "cpu":
        return host
    if device.type != "cuda":  # e.g. "meta" (benchmarks/gpu_budget.py counts the device's traffic there)
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def stack_sources(sources: Sequence[torch.Tensor] | torch.Tensor, src_hw: Sequence[tuple[int, int]], pad_hw: tuple[int, int],
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sources (HWC uint8) as one planar (3, N*Hp, Wp) image: source j at rows j*Hp+1.., column 1..,
    114 around it.

    `sources` is a list of (h, w, 3) tensors or one (N, h', w', 3) tensor already padded with 114
    (e.g. by DALI's ``fn.pad(..., fill_value=114)``), whose true sizes are `src_hw`. Sources of one
    size (or a padded tensor) cost one copy and four thin fills whatever N is; a list of different
    sizes is copied one by one.
    """
    Hp, Wp = pad_hw
    N = len(src_hw)
    if isinstance(sources, torch.Tensor) or all(tuple(s.shape[:2]) == tuple(src_hw[0]) for s in sources):
        dense = sources if isinstance(sources, torch.Tensor) else torch.stack(list(sources))
        h, w = dense.shape[1:3]
        out = torch.empty((3, N, Hp, Wp), dtype=dtype, device=dense.device)
        out[:, :, 1 : 1 + h, 1 : 1 + w].copy_(dense.permute(3, 0, 1, 2))
        for frame in (out[:, :, :1], out[:, :, 1 + h :], out[:, :, 1 : 1 + h, :1], out[:, :, 1 : 1 + h, 1 + w :]):
            frame.fill_(PAD_VALUE)
    else:
        out = torch.full((3, N, Hp, Wp), PAD_VALUE, dtype=dtype, device=sources[0].device)
        for j, s in enumerate(sources):
            out[:, j, 1 : 1 + s.shape[0], 1 : 1 + s.shape[1]].copy_(s.permute(2, 0, 1))
    return out.view(3, N * Hp, Wp)


def _grid(theta: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`F.affine_grid(theta, (n, 1, H, W), align_corners=False)` in exact float32 element-wise ops,
    as its x and y planes (n, H, W); `xs`, `ys` are the output pixel centres in grid coordinates."""
    t = theta[:, :, :, None, None]  # (n, 2, 3, 1, 1)
    gx = torch.addcmul(t[:, 0, 2], t[:, 0, 0], xs) + t[:, 0, 1] * ys[:, None]  # (n,1,W) + (n,H,1)
    gy = torch.addcmul(t[:, 1, 2], t[:, 1, 0], xs) + t[:, 1, 1] * ys[:, None]
    return gx, gy


def _bilinear(src: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """`F.grid_sample(src, (gx, gy), "bilinear", padding_mode="zeros", align_corners=False)` as
    element-wise ops and four gathers (ATen's arithmetic: the same unnormalisation, tap weights and
    sum order): (3, Hs, Ws) uint8 sources, (n, H, W) grid planes -> (3, n, H, W) float32. Compiled,
    it is one loop over the output with indirect loads; no grid tensor is ever stacked."""
    hs, ws = src.shape[1], src.shape[2]
    ix, iy = ((gx + 1) * ws - 1) / 2, ((gy + 1) * hs - 1) / 2
    x0, y0 = torch.floor(ix), torch.floor(iy)
    x1, y1 = x0 + 1, y0 + 1
    taps = ((x0, y0, (x1 - ix) * (y1 - iy)), (x1, y0, (ix - x0) * (y1 - iy)),
            (x0, y1, (x1 - ix) * (iy - y0)), (x1, y1, (ix - x0) * (iy - y0)))
    out = None
    for x, y, w in taps:
        inside = (x >= 0) & (x <= ws - 1) & (y >= 0) & (y <= hs - 1)
        v = src[:, y.clamp(0, hs - 1).long(), x.clamp(0, ws - 1).long()].float()
        term = torch.where(inside, v, 0.0) * w
        out = term if out is None else out + term
    return out  # type: ignore[return-value]


def _paint(src: torch.Tensor, theta: torch.Tensor, bounds: torch.Tensor, clamp: torch.Tensor, xs: torch.Tensor,
           ys: torch.Tensor, part: torch.Tensor | None, fused: bool = False) -> torch.Tensor:
    """One tile slot of n images: grid, mask, clamp, bilinear sampling, rounding, and the masked
    write over `part` (3, n, H, W) uint8 (None: the 114 background) -> (3, n, H, W) uint8.

    Each output pixel is painted by one slot (a later slot overwrites), so rounding per slot is
    rounding once. `fused` (compiled): the sampling is `_bilinear` on the uint8 sources, so the
    region is one loop over the output, the grid, mask and taps recomputed per channel in registers;
    eager, it is `F.grid_sample` (one kernel) on float sources."""
    n, H, W = theta.shape[0], ys.shape[0], xs.shape[0]
    gx, gy = _grid(theta, xs, ys)
    if fused:  # per plane: two comparisons, no reduction, no stacked grid
        cx, cy, hx, hy = (bounds[..., k] for k in range(4))  # each (n, 1, 1)
        mask = ((gx - cx).abs() <= hx) & ((gy - cy).abs() <= hy)
        gx, gy = torch.clamp(gx, min=clamp[..., 0], max=clamp[..., 2]), torch.clamp(gy, min=clamp[..., 1], max=clamp[..., 3])
        sampled = _bilinear(src, gx, gy)
    else:  # fewer, larger ops (each is a launch)
        grid = torch.stack([gx, gy], -1)
        mask = ((grid - bounds[..., :2]).abs() <= bounds[..., 2:]).all(-1)
        grid = torch.clamp(grid, min=clamp[..., :2], max=clamp[..., 2:]).view(1, n * H, W, 2)
        sampled = F.grid_sample(src.float()[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False).view(3, n, H, W)
    value = sampled.round().clamp(0, 255).to(torch.uint8)
    return torch.where(mask, value, PAD_VALUE if part is None else part)


def _geometry(packed: PackedPlan, params: torch.Tensor, planes: torch.Tensor, fuse: bool,
              on_slot: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Every tile slot painted in turn -> the (3, B, H, W) uint8 canvas. `on_slot(k, n)` runs after
    slot k (n images) is enqueued (`benchmarks/gpu_phases.py` records a CUDA event there)."""
    B, (H, W) = packed.batch, packed.out_hw
    paint = _kernel("paint", _paint, fuse)
    canvas: torch.Tensor | None = None  # made by slot 0, which every image has
    xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=planes.device)  # output pixel centres
    ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=planes.device)
    for k, (n, off) in enumerate(zip(packed.counts, packed.offsets, strict=True)):
        theta = params[off : off + 6 * n].view(n, 2, 3)
        bounds = params[off + 6 * n : off + 10 * n].view(n, 1, 1, 4)
        clamp = params[off + 10 * n : off + 14 * n].view(n, 1, 1, 4)
        if canvas is None or n == B:
            canvas = paint(planes, theta, bounds, clamp, xs, ys, canvas, fuse)
        else:
            rows = params[off + 14 * n : off + 15 * n].long()
            canvas.index_copy_(1, rows, paint(planes, theta, bounds, clamp, xs, ys, canvas.index_select(1, rows), fuse))
        if on_slot is not None:
            on_slot(k, n)
    return canvas  # type: ignore[return-value]  # slot 0 always exists (every image has a placement)


def _hsv_planes(rgb: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Ultralytics RandomHSV on planar (3, ..., H, W) integral float32 0..255; gains (..., 3).

    RGB->HSV is OpenCV's 8-bit fixed-point arithmetic (hue 0..180, max priority r > g > b, the
    ``round(2^12 * k / x)`` division tables: every product stays below 2^24, so float32 holds it
    exactly); then Ultralytics' three look-up tables as float ops (``(x + (g - 1) * 180) % 180``,
    ``clip(x * g)``, truncated to uint8); HSV->RGB as OpenCV's float path, rounded.
    """
    r, g, b = rgb[0], rgb[1], rgb[2]
    gh, gs, gv = (gains[..., c, None, None] for c in range(3))
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.floor((diff * torch.round(1044480 / v.clamp_min(1)) + 2048) / 4096)  # 255 << 12
    num = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = torch.where(diff > 0, torch.floor((num * torch.round(122880 / diff.clamp_min(1)) + 2048) / 4096), 0)  # (180 << 12) / 6
    h = torch.where(h < 0, h + 180, h)
    h = torch.floor(torch.remainder(h + (gh - 1) * 180, 180)) / 30  # Ultralytics 8.4: additive hue; sextant units 0..6
    s = torch.floor((s * gs).clamp(0, 255)) / 255
    v = torch.floor((v * gv).clamp(0, 255))
    vs = v * s
    out = torch.empty_like(rgb)
    for ch, n in enumerate((5.0, 3.0, 1.0)):  # f(n) = v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + h) mod 6
        k = torch.remainder(h + n, 6)
        torch.sub(v, vs * torch.minimum(k, 4 - k).clamp(0, 1), out=out[ch])
    return out.round_()


def hsv_torch(img: torch.Tensor, gains: torch.Tensor | tuple[float, float, float]) -> torch.Tensor:
    """Ultralytics RandomHSV on float RGB 0..255: (3, H, W) with a (h, s, v) tuple, or a batch
    (B, 3, H, W) with (B, 3) gains. Returns rounded floats."""
    batched = img.dim() == 4
    rgb = img.transpose(0, 1) if batched else img
    gains = torch.as_tensor(gains, dtype=torch.float32, device=img.device)
    out = _hsv_planes(rgb.round().float(), gains).to(img.dtype)
    return out.transpose(0, 1) if batched else out


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}
#: inductor keeps an intermediate in memory once it is read often or costs many ops; these regions
#: are memory-bound and their intermediates cheap, so everything is recomputed where it is used
#: (checked: a compiled slot then writes its uint8 output only, the colour region its batch only)
_INLINE = {"realize_opcount_threshold": 1 << 20, "realize_reads_threshold": 1 << 20, "realize_acc_reads_threshold": 1 << 20}
_FUSE_FAILED: list[str] = []  # the first compiler failure: every later render runs eagerly


def _kernel(name: str, fn: Callable[..., torch.Tensor], fuse: bool) -> Callable[..., torch.Tensor]:
    """`fn`, or its `torch.compile` (one fused kernel instead of tens of passes over the batch;
    compiled once per process, shapes dynamic)."""
    if not fuse:
        return fn
    if name not in _COMPILED:  # recompute per-pixel values per channel rather than keep them in memory
        _COMPILED[name] = torch.compile(fn, dynamic=True, options=_INLINE)
    return _COMPILED[name]


def _colour_planes(canvas: torch.Tensor, misc: torch.Tensor, rows: torch.Tensor | None, hsv: bool, hsv_all: bool,
                   blend_all: bool = False) -> torch.Tensor:
    """Mixup of the images `rows` (None: none), then HSV (Ultralytics' order), on the (3, B, H, W)
    uint8 canvas -> (B, 3, H, W) uint8 (cv2.addWeighted: round(a * r + b * (1 - r)) over the
    partner's pre-mixup pixels). Eager, only the images having a partner are blended; with
    `blend_all` (compiled) every image is, in the same pass, an image without a partner with
    itself at ratio 1 (exact: x * 1 + x * 0).

    float32 inside: OpenCV's fixed-point HSV products need 24 bits (float16 would round them).
    Compiled (`fuse`), this is one kernel reading the canvas (and the partners) and writing the batch."""
    img = canvas.float()
    if rows is not None and blend_all:  # compiled: one pointwise pass, no scatter (a partner-less image reads itself)
        ratio = misc[:, 1, None, None]
        img = torch.addcmul(img * ratio, img.index_select(1, misc[:, 0].long()), 1 - ratio).round()
    elif rows is not None:
        mix = misc.index_select(0, rows)
        ratio = mix[:, 1, None, None]
        blended = torch.addcmul(img.index_select(1, rows) * ratio, img.index_select(1, mix[:, 0].long()), 1 - ratio).round()
        img = img.index_copy(1, rows, blended)
    if hsv:
        shifted = _hsv_planes(img, misc[:, 2:5])
        img = shifted if hsv_all else torch.where(misc[:, 5, None, None] > 0, shifted, img)
    return img.permute(1, 0, 2, 3).to(torch.uint8).contiguous()


def _colour(packed: PackedPlan, params: torch.Tensor, canvas: torch.Tensor, fuse: bool) -> torch.Tensor:
    misc = params[packed.misc_offset : packed.misc_offset + _MISC * packed.batch].view(packed.batch, _MISC)
    rows = None
    if packed.mix_rows:
        off = packed.misc_offset + _MISC * packed.batch
        rows = params[off : off + len(packed.mix_rows)].long()
    return _kernel("colour", _colour_planes, fuse)(canvas, misc, rows, packed.hsv, packed.hsv_all, fuse)


def _shared_letterbox(plan: BatchPlan, scales: Sequence[tuple[float, float]], src_hw: Sequence[tuple[int, int]]) -> tuple[int, int, int, int] | None:
    """(top, left, new_h, new_w) when every image is the letterbox of its own source (image i of
    source i) and all share one size and one region: then one batched resize renders them."""
    if len(src_hw) != len(plan.images) or len(set(src_hw)) != 1 or len(set(scales)) != 1:
        return None
    regions = set()
    for i, ip in enumerate(plan.images):
        if not ip.letterbox or ip.placements[0].src != i:
            return None
        regions.add(letterbox_region(ip, scales[i], src_hw[i]))
    return regions.pop() if len(regions) == 1 else None


def _letterbox_canvas(sources: Sequence[torch.Tensor] | torch.Tensor, region: tuple[int, int, int, int],
                      src_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """Eval: one bilinear resize of the whole batch (Ultralytics' cv2.resize, replicated border)
    into a canvas of 114 -> (3, B, H, W) floats."""
    top, left, nh, nw = region
    h, w = src_hw
    dense = sources[:, :h, :w] if isinstance(sources, torch.Tensor) else torch.stack(list(sources))
    src = dense.permute(3, 0, 1, 2).float()  # (3, B, h, w): the batch as channels of one image
    if (nh, nw) != (h, w):
        src = F.interpolate(src, size=(nh, nw), mode="bilinear", align_corners=False)
    canvas = torch.full((3, len(dense), *out_hw), float(PAD_VALUE), device=src.device)
    canvas[:, :, top : top + nh, left : left + nw] = src
    return canvas


def resize_hwc(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)` on the tensor's device: an (h, w, 3)
    uint8 image to `size` (w, h), bilinear at half-pixel centres with a replicated border and no
    antialiasing, as OpenCV (whose fixed-point weights round a level or so differently)."""
    w, h = size
    x = F.interpolate(img.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear", align_corners=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def render_batch(plan: BatchPlan, sources: Sequence[torch.Tensor] | torch.Tensor, scales: Sequence[tuple[float, float]], *,
                 src_hw: Sequence[tuple[int, int]] | None = None, stream: torch.cuda.Stream | None = None,
                 fuse: bool = False) -> torch.Tensor:
    """Render a whole plan -> (B, 3, H, W) uint8 on the sources' device.

    `sources`: a list of (h, w, 3) uint8 tensors, or one (N, h', w', 3) tensor padded with 114,
    then `src_hw` gives each source's true (h, w). `scales[j]` maps source j's pixels to its
    original coordinates. `stream`: enqueue everything there (the caller hands the result over
    with an event: `loaders.dali.DaliAssembler.hand_off`). `fuse`: run each tile slot and the colour
    stage as one `torch.compile`d region (the same arithmetic but for float contraction in the
    grid; the first calls compile, seconds to a minute; eager from then on if compiling fails).
    """
    if not plan.images:
        raise ValueError("render_batch: the plan has no images")
    if src_hw is None:
        if isinstance(sources, torch.Tensor):
            raise ValueError("render_batch: a padded source tensor needs src_hw (each source's true size)")
        src_hw = [(int(s.shape[0]), int(s.shape[1])) for s in sources]
    device = (sources if isinstance(sources, torch.Tensor) else sources[0]).device
    region = _shared_letterbox(plan, scales, src_hw)
    colour = any(ip.mixup is not None or ip.hsv is not None for ip in plan.images)
    # eval (a shared letterbox, no colour): one resize, no parameters to pack or copy to the device
    packed = pack_plan(plan, scales, src_hw) if region is None or colour else None
    if fuse and not _FUSE_FAILED:
        try:
            return _render(plan, sources, src_hw, region, packed, device, stream, fuse=True)
        except Exception as e:  # noqa: BLE001 - whatever the compiler raises, the eager ops give the same batch
            _FUSE_FAILED.append(repr(e))
            log.warning("render_batch: torch.compile failed (%s); rendering with eager torch ops from now on", e)
    return _render(plan, sources, src_hw, region, packed, device, stream, fuse=False)


def _render(plan: BatchPlan, sources: Sequence[torch.Tensor] | torch.Tensor, src_hw: Sequence[tuple[int, int]],
            region: tuple[int, int, int, int] | None, packed: PackedPlan | None, device: torch.device,
            stream: torch.cuda.Stream | None, fuse: bool) -> torch.Tensor:
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        params = _to_device(packed, device) if packed is not None else None
        if region is not None:
            canvas = _letterbox_canvas(sources, region, src_hw[0], plan.out_hw).round_().clamp_(0, 255).to(torch.uint8)
        else:  # fused: the sources stay uint8 (the compiled sampler reads them in place); eager grid_sample needs floats
            planes = stack_sources(sources, src_hw, packed.pad_hw, torch.uint8 if fuse else torch.float32)
            canvas = _geometry(packed, params, planes, fuse)
        if packed is not None and (packed.mixup or packed.hsv):
            return _colour(packed, params, canvas, fuse)
        return canvas.permute(1, 0, 2, 3).contiguous()
