"""Image-by-image augment parity: sainet's train images against what Ultralytics' own transforms make of
the same sources under the same random draws.

The distribution test (`sainet.bench.parity`) compares two independent samples, so it sees only
differences larger than the spread between images. Here each of sainet's images is paired with its
twin: Ultralytics' `YOLODataset` (its `Mosaic`, `RandomPerspective`, `RandomHSV` and `RandomFlip`)
is given the batch's sources and partners and, through its random calls (the flips: through their
probability, 1 or 0 per image), sainet's draws — the mosaic centre (sainet's is drawn continuous; here
it is floored to whole pixels, as Ultralytics' ``int()``), the affine scale and translation, the HSV
gains, the flips. What differs is then only how each side
resamples: the boxes must agree to the float, and the pixels by the resampling alone. Measured per
pair: the largest box difference, the mean |pixel difference|, the ratio of sharpness (mean
|Laplacian|, `parity.sharpness`) and the sub-pixel shift of sainet's content (least squares on the
twin's gradients).

Covers Ultralytics' default train pipeline: mosaic 1.0, no rotation, shear, perspective, mixup or
copy-paste (`ValueError` otherwise). Every draw handed to Ultralytics must be consumed by the call it
was meant for; if a new Ultralytics draws in another order, `RuntimeError` says so instead of pairing
images that are not twins.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sainet.bench.parity import sharpness

__all__ = ["PairedResult", "paired_draws"]


@dataclass
class PairedResult:
    images: int
    boxes: tuple[int, int]  # (Ultralytics', sainet's) over all pairs
    box_max_abs_px: float  # the largest difference of a box coordinate (xywh, output pixels); inf if counts differ
    classes_equal: bool  # every paired box has its twin's class
    pixel_mean_abs: float  # mean over pairs of the mean |difference| of pixel values (0-255)
    sharpness_ratio: float  # mean over pairs of sainet's sharpness / its twin's
    sharpness_ratio_se: float
    shift_px: tuple[float, float]  # mean (x, y) shift of sainet's content against its twin
    shift_sd_px: tuple[float, float]


class _Draws:
    """Values queued for Ultralytics' random calls, each keyed by the call's arguments."""

    def __init__(self) -> None:
        self.uniform: list[tuple[tuple[float, float], float]] = []
        self.np_uniform: list[np.ndarray] = []

    def pending(self) -> bool:
        return bool(self.uniform or self.np_uniform)


@contextlib.contextmanager
def _ultralytics_draws(q: _Draws) -> Iterator[None]:
    """Ultralytics' `random.uniform` and `np.random.uniform(-1, 1, 3)` answer from `q` while it holds a
    value for that call (keyed by the call's arguments), and as usual otherwise."""
    uniform, np_uniform = random.uniform, np.random.uniform

    def queued_uniform(a: float, b: float) -> float:
        if q.uniform and (round(a, 6), round(b, 6)) == q.uniform[0][0]:
            return q.uniform.pop(0)[1]
        return uniform(a, b)

    def queued_np_uniform(low: Any = 0.0, high: Any = 1.0, size: Any = None) -> Any:
        if q.np_uniform and (low, high, size) == (-1, 1, 3):
            return q.np_uniform.pop(0)
        return np_uniform(low, high, size)

    random.uniform = queued_uniform  # type: ignore[assignment]
    np.random.uniform = queued_np_uniform  # type: ignore[assignment]
    try:
        yield
    finally:
        random.uniform, np.random.uniform = uniform, np_uniform  # type: ignore[assignment]


@contextlib.contextmanager
def _sainet_draws(imgsz: int, last: threading.local) -> Iterator[None]:
    """sainet's planner with whole-pixel mosaic centres; each thread's latest draws kept in `last.d`
    (two batches are planned at once, in two threads)."""
    import loaders.augment.plan as plan

    draw = plan._Draws.draw

    def whole_pixel(cls: Any, *a: Any, **k: Any) -> Any:
        d = draw.__func__(cls, *a, **k)  # type: ignore[attr-defined]
        d.centre = np.floor(d.centre * imgsz + 1e-9) / imgsz  # whole pixels: `_twin` takes round(centre x imgsz)
        last.d = d
        return d

    plan._Draws.draw = classmethod(whole_pixel)  # type: ignore[assignment]
    try:
        yield
    finally:
        plan._Draws.draw = draw  # type: ignore[method-assign]


def _check_hyp(hyp: dict[str, Any]) -> None:
    if hyp.get("mosaic", 1.0) != 1.0 or any(hyp.get(k, 0.0) for k in ("degrees", "shear", "perspective", "mixup", "copy_paste", "cutmix")):
        raise ValueError("paired draws cover mosaic 1.0 without rotation, shear, perspective, mixup or copy-paste")


def _ultralytics_dataset(img_dir: Path, names: list[str], imgsz: int, hyp: dict[str, Any], batch: int) -> tuple[Any, Any, Any]:
    """Ultralytics' train dataset over `img_dir`, its transforms that take sainet's draws (`Mosaic`;
    the `RandomFlip`s, vertical then horizontal) and its hyperparameters. Its optional albumentations
    step (only with that package installed) is switched off: sainet has no counterpart."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.cfg import get_cfg
    from ultralytics.data.augment import Albumentations, Mosaic, RandomFlip
    from ultralytics.data.dataset import YOLODataset

    from sainet.bench.parity import _walk

    cfg = get_cfg(overrides={"imgsz": imgsz, **hyp})
    ds = YOLODataset(img_path=str(img_dir), imgsz=imgsz, augment=True, rect=False, cache=False,
                     data={"names": dict(enumerate(names)), "channels": 3}, batch_size=batch, stride=32,
                     single_cls=False, task="detect", hyp=cfg, prefix="")
    for t in _walk(ds.transforms):
        if isinstance(t, Albumentations):
            t.transform = None
    flips = {t.direction: t for t in _walk(ds.transforms) if isinstance(t, RandomFlip)}
    mosaic = next(t for t in _walk(ds.transforms) if isinstance(t, Mosaic))
    return ds, (mosaic, flips["vertical"], flips["horizontal"]), cfg


def _twin(ds: Any, takers: tuple, q: _Draws, d: Any, k: int, ids: list[int], imgsz: int, hyp: Any) -> dict:
    """Ultralytics' image k of a batch drawn as `d` from the dataset images `ids` (its own, then its partners')."""
    mosaic, vertical, horizontal = takers
    mosaic.get_indexes = lambda: ids[1:]
    vertical.p = 1.0 if d.flips[k, 0] < hyp.flipud else 0.0  # each flip as sainet drew it
    horizontal.p = 1.0 if d.flips[k, 1] < hyp.fliplr else 0.0
    centre = (imgsz // 2, 2 * imgsz - imgsz // 2)
    t = (round(0.5 - hyp.translate, 6), round(0.5 + hyp.translate, 6))
    q.uniform = [(centre, round(d.centre[k, 1] * imgsz)), (centre, round(d.centre[k, 0] * imgsz)),
                 ((round(1 - hyp.scale, 6), round(1 + hyp.scale, 6)), float(d.affine[k, 1])),
                 (t, float(d.affine[k, 4])), (t, float(d.affine[k, 5]))]
    q.np_uniform = [d.hsv[k].copy()] if hyp.hsv_h or hyp.hsv_s or hyp.hsv_v else []
    item = ds[ids[0]]
    if q.pending():
        raise RuntimeError(f"Ultralytics did not take every draw sainet made for its image (left: {q.__dict__}); "
                           "its transforms draw in another order than this comparison expects")
    return item


def _shift(twin: np.ndarray, ours: np.ndarray) -> np.ndarray:
    """Least-squares (x, y) shift of `ours` against `twin` (grey, float): ours ~ twin(p - shift)."""
    g = twin.mean(2)
    a = np.stack([np.gradient(g, axis=1).ravel(), np.gradient(g, axis=0).ravel()], 1)
    return np.linalg.lstsq(a, -(ours.mean(2) - g).ravel(), rcond=None)[0]


def paired_draws(src: Path, store: Path, *, images: int, batch: int = 16, imgsz: int = 256,
                 hyp: dict[str, Any] | None = None, sainet_hyp: dict[str, Any] | None = None, seed: int = 0,
                 kind: str = "lmdb", resample: str = "fast") -> PairedResult:
    """`images` of sainet's `kind` loader over `store` (packed from the YOLO folder `src`), each
    against its Ultralytics twin. `sainet_hyp` overrides sainet's hyperparameters only (a known-bad
    variant: the pairs must then disagree); `resample`: the loader's (`loaders.decode.RESAMPLE`)."""
    from loaders import build_loader

    hyp = dict(hyp or {})
    _check_hyp(hyp)
    loader = build_loader(store, kind, batch_size=batch, imgsz=imgsz, augment=True, hyp={**hyp, **(sainet_hyp or {})},
                          seed=seed, threads=2, device="cpu" if kind == "dali" else None, resample=resample)
    names = loader.dataset.source.names
    ds, takers, cfg = _ultralytics_dataset(src / "images" / "train", list(loader.dataset.names.values()), imgsz, hyp, batch)
    by_stem = {Path(f).stem: i for i, f in enumerate(ds.im_files)}
    if len(by_stem) != len(ds.im_files):
        raise ValueError(f"{src}: two train images share a file stem; their twins cannot be told apart")
    planned: dict[tuple, tuple[list[list[int]], Any]] = {}  # a batch's file names -> its tiles' sources, its draws
    plan, last = loader.dataset.plan, threading.local()

    def recording(used: list[int], rng: np.random.Generator, partners: list[int] = ()) -> Any:
        out = plan(used, rng, partners)
        every = [*used, *partners]
        planned[tuple(names[i] for i in used)] = ([[every[p.src] for p in ip.placements] for ip in out.images], last.d)
        return out

    loader.dataset.plan = recording  # type: ignore[method-assign]
    q, pairs = _Draws(), []
    try:
        with _sainet_draws(imgsz, last), _ultralytics_draws(q):
            while len(pairs) < images:  # epoch after epoch
                for b in loader:
                    tiles, d = planned.pop(tuple(b["im_file"]))
                    twins = [_twin(ds, takers, q, d, k, [by_stem[Path(names[s]).stem] for s in t], imgsz, cfg)
                             for k, t in enumerate(tiles)]
                    pairs += _pairs_of(b, twins, imgsz)
                    if len(pairs) >= images:
                        break
    finally:
        loader.close()
    return _result(pairs[:images])


def _pairs_of(b: dict, twins: list[dict], imgsz: int) -> list[tuple]:
    """(twin pixels, ours, twin boxes, our boxes) for each image of sainet's batch `b`: boxes (n, 5),
    xywh in output pixels and the class."""
    imgs = b["img"].permute(0, 2, 3, 1).numpy()
    idx, boxes = b["batch_idx"].numpy(), b["bboxes"].numpy()
    cls = b["cls"].numpy().reshape(-1, 1)
    return [(t["img"].permute(1, 2, 0).numpy(), imgs[k], np.hstack([t["bboxes"].numpy() * imgsz, t["cls"].numpy().reshape(-1, 1)]),
             np.hstack([boxes[idx == k] * imgsz, cls[idx == k]])) for k, t in enumerate(twins)]


def _result(pairs: list[tuple]) -> PairedResult:
    diffs, ratios, shifts, nb, worst, same_cls = [], [], [], [0, 0], 0.0, True
    for twin, ours, tb, ob in pairs:
        t, o = twin.astype(np.float32), ours.astype(np.float32)
        diffs.append(float(np.abs(t - o).mean()))
        ratios.append(sharpness(ours) / max(sharpness(twin), 1e-9))
        shifts.append(_shift(t, o))
        nb[0] += len(tb)
        nb[1] += len(ob)
        if len(tb) != len(ob):
            worst = float("inf")
        elif len(tb):
            a, c = tb[np.lexsort(np.round(tb.T[::-1], 2))], ob[np.lexsort(np.round(ob.T[::-1], 2))]
            worst = max(worst, float(np.abs(a[:, :4] - c[:, :4]).max()))
            same_cls &= bool((a[:, 4] == c[:, 4]).all())
    s = np.array(shifts)
    return PairedResult(len(pairs), (nb[0], nb[1]), worst, same_cls, float(np.mean(diffs)), float(np.mean(ratios)),
                        float(np.std(ratios, ddof=1) / np.sqrt(len(ratios))), (float(s[:, 0].mean()), float(s[:, 1].mean())),
                        (float(s[:, 0].std()), float(s[:, 1].std())))
