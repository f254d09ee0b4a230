"""Augment distribution parity: sainet's train batches against Ultralytics' own, by two-sample tests.

Both sides draw augmented images from the same YOLO folder (sainet through a store packed from it,
Ultralytics through its `YOLODataset` with the same hyperparameters) and reduce each to numbers:
per image its box count, per-channel pixel mean and spread (what HSV moves), the share of pad pixels
and the sharpness (mean |Laplacian| of the grey image, what resampling moves); per box its width,
height, area, aspect and centre; per batch the mosaic partners' sources (the share of partner tiles
taken from the image's own batch, the distinct sources among a batch's tiles). `compare` runs a
two-sample Kolmogorov-Smirnov test on each distribution and a two-proportion z-test on the partner
share. scipy is not a dependency, so both tests are written here with numpy (asymptotic p-values,
as scipy's ``ks_2samp(method="asymp")``).

A recording hook sees the partners: sainet's `LoaderDataset.plan` (the plan names every tile's
source) and Ultralytics' `Mosaic.get_indexes` (its 3 partners), iterating Ultralytics' dataset
in-process, which is one DataLoader worker with its buffer.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["Draw", "Row", "compare", "draw_sainet", "draw_ultralytics", "ks_2samp", "proportions_z"]

#: per-image statistics (KS-tested); box statistics are per box
IMAGE_STATS = ("boxes_per_image", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "pad_fraction", "sharpness")
BOX_STATS = ("box_w", "box_h", "box_area", "box_aspect", "box_cx", "box_cy")


@dataclass
class Draw:
    """What one side drew: per-image and per-box values, and the mosaic tiles of each batch."""

    values: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (*IMAGE_STATS, *BOX_STATS)})
    batches: list[tuple[list[int], list[list[int]]]] = field(default_factory=list)  # (batch sources, tiles per image)

    def add_image(self, img: np.ndarray, boxes: np.ndarray) -> None:
        """One augmented image (HxWx3 uint8 RGB) and its boxes (n, 4) normalized xywh."""
        v = self.values
        v["boxes_per_image"].append(len(boxes))
        px = img.reshape(-1, 3).astype(np.float32)
        for c, name in enumerate("rgb"):
            v[f"mean_{name}"].append(float(px[:, c].mean()))
            v[f"std_{name}"].append(float(px[:, c].std()))
        v["pad_fraction"].append(pad_fraction(img))
        v["sharpness"].append(sharpness(img))
        if len(boxes):
            w, h = boxes[:, 2], boxes[:, 3]
            H, W = img.shape[:2]
            v["box_w"].extend(w.tolist())
            v["box_h"].extend(h.tolist())
            v["box_area"].extend((w * h).tolist())
            v["box_aspect"].extend(np.log((w * W + 1e-9) / (h * H + 1e-9)).tolist())
            v["box_cx"].extend(boxes[:, 0].tolist())
            v["box_cy"].extend(boxes[:, 1].tolist())

    def partner_counts(self) -> tuple[int, int]:
        """(partner tiles from the image's own batch, all partner tiles)."""
        same = total = 0
        for members, tiles in self.batches:
            batch = set(members)
            for t in tiles:
                same += sum(s in batch for s in t[1:])
                total += len(t) - 1
        return same, total

    def distinct_per_batch(self) -> list[float]:
        """Distinct sources among each full batch's tiles."""
        return [float(len({s for t in tiles for s in t})) for _, tiles in self.batches]


def pad_fraction(img: np.ndarray) -> float:
    """Share of pad pixels: grey pixels (R = G = B) of the image's most common grey level (the pad
    is 114 before HSV and some other grey after it; a large uniform grey is always the pad)."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    grey = (r == g) & (g == b)
    if not grey.any():
        return 0.0
    level = int(np.bincount(r[grey], minlength=256).argmax())
    return float((grey & (r == level)).mean())


def sharpness(img: np.ndarray) -> float:
    """Mean |Laplacian| of the grey image (pad areas contribute 0, as in both loaders)."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())


# -- tests ------------------------------------------------------------------------------------------
def ks_2samp(a: Iterable[float], b: Iterable[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its asymptotic two-sided p-value
    (Kolmogorov's series at (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D, ne = n m / (n + m))."""
    x, y = np.sort(np.asarray(list(a), float)), np.sort(np.asarray(list(b), float))
    if not len(x) or not len(y):
        return 0.0, 1.0
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, "right") / len(x) - np.searchsorted(y, grid, "right") / len(y))))
    ne = len(x) * len(y) / (len(x) + len(y))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.2:
        return d, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, float(min(max(p, 0.0), 1.0))


def proportions_z(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """Two-proportion z-test (pooled): (difference p1 - p2, two-sided p-value)."""
    p1, p2 = s1 / max(n1, 1), s2 / max(n2, 1)
    pool = (s1 + s2) / max(n1 + n2, 1)
    se = math.sqrt(pool * (1 - pool) * (1 / max(n1, 1) + 1 / max(n2, 1)))
    if se == 0:
        return p1 - p2, 1.0 if p1 == p2 else 0.0
    return p1 - p2, math.erfc(abs(p1 - p2) / se / math.sqrt(2))


@dataclass
class Row:
    name: str
    a: float  # the statistic's median (share, for the partner share) on side a
    b: float
    effect: float  # KS D, or the difference of shares
    p: float


def compare(a: Draw, b: Draw) -> list[Row]:
    """One row per statistic: medians on both sides, effect size and p-value."""
    rows = []
    for name in (*IMAGE_STATS, *BOX_STATS):
        va, vb = a.values[name], b.values[name]
        d, p = ks_2samp(va, vb)
        rows.append(Row(name, float(np.median(va)) if va else math.nan, float(np.median(vb)) if vb else math.nan, d, p))
    da, db = a.distinct_per_batch(), b.distinct_per_batch()
    d, p = ks_2samp(da, db)
    rows.append(Row("distinct_sources_per_batch", float(np.mean(da)), float(np.mean(db)), d, p))
    (sa, na), (sb, nb) = a.partner_counts(), b.partner_counts()
    diff, p = proportions_z(sa, na, sb, nb)
    rows.append(Row("same_batch_partner_share", sa / max(na, 1), sb / max(nb, 1), diff, p))
    return rows


# -- the two sides ----------------------------------------------------------------------------------
def draw_sainet(store: Path, *, kind: str = "lmdb", images: int, batch: int, imgsz: int, hyp: dict[str, Any],
                seed: int = 0, **kw: Any) -> Draw:
    """`images` augmented train images from sainet's `kind` loader over `store`, epoch after epoch."""
    from loaders import build_loader

    draw = Draw()
    loader = build_loader(store, kind, batch_size=batch, imgsz=imgsz, augment=True, hyp=hyp, seed=seed, threads=2,
                          device="cpu" if kind == "dali" else None, **kw)
    plan = loader.dataset.plan

    def recording(used: list[int], rng: np.random.Generator, partners: list[int] = ()) -> Any:
        out = plan(used, rng, partners)
        every = [*used, *partners]
        draw.batches.append((list(used), [[every[p.src] for p in ip.placements] for ip in out.images]))
        return out

    loader.dataset.plan = recording  # type: ignore[method-assign]
    try:
        n = 0
        while n < images:
            for b in loader:
                imgs = b["img"].permute(0, 2, 3, 1).numpy()
                idx = b["batch_idx"].numpy()
                for k in range(len(imgs)):
                    draw.add_image(imgs[k], b["bboxes"].numpy()[idx == k])
                n += len(imgs)
                if n >= images:
                    break
    finally:
        loader.close()
    return draw


def draw_ultralytics(img_dir: Path, names: list[str], *, images: int, batch: int, imgsz: int, hyp: dict[str, Any],
                     seed: int = 0) -> Draw:
    """`images` augmented train images from Ultralytics' YOLODataset over `img_dir`, in shuffled
    batches of `batch` (in-process: one worker and its mosaic buffer, kept across epochs)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.cfg import get_cfg
    from ultralytics.data.augment import Mosaic
    from ultralytics.data.dataset import YOLODataset

    random.seed(seed)
    np.random.seed(seed)
    cfg = get_cfg(overrides={"imgsz": imgsz, **hyp})
    ds = YOLODataset(img_path=str(img_dir), imgsz=imgsz, augment=True, rect=False, cache=False,
                     data={"names": dict(enumerate(names)), "channels": 3}, batch_size=batch, stride=32,
                     single_cls=False, task="detect", hyp=cfg, prefix="")
    mosaic = next((t for t in _walk(ds.transforms) if isinstance(t, Mosaic)), None)
    tiles: list[list[int]] = []
    current = [0]
    if mosaic is not None:
        pick = mosaic.get_indexes

        def recording() -> list[int]:
            out = pick()
            tiles.append([current[0], *out])
            return out

        mosaic.get_indexes = recording  # type: ignore[method-assign]
    draw, rng, n = Draw(), np.random.default_rng(seed), 0
    while n < images:
        order = rng.permutation(len(ds))
        for k in range(0, len(order) - batch + 1, batch):
            members = order[k : k + batch].tolist()
            tiles.clear()
            for i in members:
                current[0] = i
                item = ds[i]
                draw.add_image(np.ascontiguousarray(item["img"].permute(1, 2, 0).numpy()), item["bboxes"].numpy())
            draw.batches.append((members, [list(t) for t in tiles]))
            n += batch
            if n >= images:
                break
    return draw


def _walk(t: Any) -> Iterable[Any]:
    yield t
    for sub in getattr(t, "transforms", None) or []:
        yield from _walk(sub)



#: the images both sides draw from (576x324 at imgsz 256: the 1440x808 -> 640 ratio, so sainet's
#: train decode runs at a reduced DCT scale as it does in production)
SYNTH = {"images": 144, "size": (576, 324), "seed": 3}


def run(root: Path, *, images: int = 480, batch: int = 16, imgsz: int = 256, seed: int = 1,
        variants: dict[str, dict[str, Any]] | None = None) -> dict[str, Draw]:
    """Synthesize the data under `root` (once), pack it into an LMDB store and draw `images`
    augmented images from each side: ``ultralytics`` (seed), ``ultralytics_seed2`` (seed + 1),
    ``lmdb`` and each of `variants` (name -> extra `build_loader` keywords, e.g. ``hyp``)."""
    from cache_tools import PackOptions, pack
    from sainet.synth import synthesize

    src, store = root / "src", root / "lmdb"
    if not store.exists():
        synthesize(src, val_fraction=0, **SYNTH)
        pack(src, store, PackOptions(container="lmdb"))
    names = ["fire", "smoke"]
    common = dict(images=images, batch=batch, imgsz=imgsz)
    out = {
        "ultralytics": draw_ultralytics(src / "images" / "train", names, hyp={}, seed=seed, **common),
        "ultralytics_seed2": draw_ultralytics(src / "images" / "train", names, hyp={}, seed=seed + 1, **common),
        "lmdb": draw_sainet(store, hyp={}, seed=seed, **common),
    }
    for name, kw in (variants or {}).items():
        kw = dict(kw)
        out[name] = draw_sainet(store, hyp=kw.pop("hyp", {}), seed=seed, **common, **kw)
    return out


def table(draws: dict[str, Draw], reference: str = "ultralytics") -> str:
    """A markdown table: each statistic's value per side and the p-value against `reference`."""
    others = [k for k in draws if k != reference]
    rows = {k: compare(draws[k], draws[reference]) for k in others}
    head = f"| statistic | {reference} | " + " | ".join(f"{k} | p" for k in others) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(others))]
    for i, r in enumerate(rows[others[0]]):
        cells = [f"{r.b:.4g}"] + [f"{rows[k][i].a:.4g} | {rows[k][i].p:.2g}" for k in others]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
