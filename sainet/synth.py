"""Deterministic synthetic wildfire dataset: the project's embedded default data.

Each image is an outdoor scene (sky gradient, ridged terrain with texture, haze toward the horizon)
with semi-transparent grey/white smoke plumes and orange/red fire regions. Every box is the exact
bounding box of the pixels its object changed (alpha above a threshold), in integer pixels, so a
detector can learn it and box round trips through every layout are exact.

Images are a pure function of (seed, index): the output does not depend on the thread count.

The ``fasdd`` and ``pyrosdis`` layouts are shaped like the published datasets, quirks included, in
the exact numbers of `PLANTED` (so tests can assert them): PyroSDIS writes smoke as class id 1;
FASDD unzips double nested with no classes.txt, a test split, names like ``smoke_CV000012.jpg``,
COCO category ids that are not in name order, zero-size boxes and COCO boxes one pixel past the
edge; both hold exact duplicate images within train and across splits (leakage). The FASDD ``RS``
subset is TIFF, one image of it 16-bit.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import yaml

from sainet.core.datasets.base import split_sort_key
from sainet.core.fsio import naming, write_bytes, write_text
from sainet.core.imaging import encode_jpeg

__all__ = ["SYNTH_LAYOUTS", "FASDD_SUBSETS", "PLANTED", "SynthObject", "SynthImage", "render", "synthesize", "write_zip"]

SYNTH_LAYOUTS = ("yolo", "coco", "voc", "fasdd", "pyrosdis")
_KNOWN = ("fire", "smoke")
log = logging.getLogger(__name__)

#: FASDD subset -> (annotation folder suffix, image suffix): FASDD_RS holds YOLO_RS_RGB and TIFFs.
FASDD_SUBSETS = {"CV": ("CV", ".jpg"), "UAV": ("UAV", ".jpg"), "RS": ("RS_RGB", ".tif")}

#: The quirks the real-shaped layouts plant, in these exact numbers. Duplicates replace an image's
#: bytes (and boxes) with another's, so image and box counts are those of the clean dataset, plus
#: the zero-size rows (extra, dropped on import). Leaks are train images copied into val / test.
PLANTED = {
    "fasdd": {"duplicate_groups": {"train": 2}, "leaks": {"train/val": 1, "train/test": 1},
              "zero_size_boxes": 2, "past_edge_coco_boxes": 3, "sixteen_bit_tiffs_rs": 1},
    "pyrosdis": {"duplicate_groups": {"train": 1}, "leaks": {"train/val": 2},
                 "zero_size_boxes": 0, "past_edge_coco_boxes": 0, "sixteen_bit_tiffs_rs": 0},
}
#: Fewest images a real-shaped layout with quirks needs (train must hold every planted source and copy).
MIN_QUIRK_IMAGES = 20


@dataclass(frozen=True, slots=True)
class SynthObject:
    cls: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1: 0-based, x1/y1 exclusive


@dataclass(frozen=True)
class SynthImage:
    name: str
    split: str
    width: int
    height: int
    jpeg: bytes
    objects: tuple[SynthObject, ...]

    zero_size_row: bool = False  # quirk: one extra zero-width row in its annotations
    past_edge: bool = False  # quirk: its first box is written one pixel past the right edge (COCO)

    def yolo_rows(self, id_base: int = 0) -> str:
        rows = []
        for o in self.objects:
            x0, y0, x1, y1 = o.box
            rows.append(
                f"{o.cls + id_base} {(x0 + x1) / 2 / self.width:.8f} {(y0 + y1) / 2 / self.height:.8f} "
                f"{(x1 - x0) / self.width:.8f} {(y1 - y0) / self.height:.8f}"
            )
        if self.zero_size_row and self.objects:
            o = self.objects[0]
            rows.append(f"{o.cls + id_base} {o.box[0] / self.width:.8f} {o.box[1] / self.height:.8f} 0.00000000 "
                        f"{(o.box[3] - o.box[1]) / self.height:.8f}")
        return "\n".join(rows) + ("\n" if rows else "")


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth value noise in [-1, 1]: random values on a coarse grid, upsampled bicubically."""
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    g = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _scene(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky + terrain + haze as float32 RGB in [0, 255]; returns (image, ridge y per column)."""
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    top = np.array(rng.choice([[70, 120, 190], [110, 150, 200], [150, 160, 175]]), np.float32)
    bottom = np.array([205, 215, 225], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
    horizon = rng.uniform(0.35, 0.6)
    t = np.clip(yy / horizon, 0, 1)[..., None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    img += 12 * _noise(rng, h, w, max(8, w // 12))[..., None]  # soft clouds

    xs = np.arange(w, dtype=np.float32)
    ridge = horizon * h + np.zeros(w, np.float32)
    for _ in range(4):
        amp, period, phase = rng.uniform(0.01, 0.06) * h, rng.uniform(0.15, 0.8) * w, rng.uniform(0, 6.3)
        ridge += amp * np.sin(xs / period * 6.283 + phase)
    ridge += 0.01 * h * _noise(rng, 1, w, 16)[0]
    ridge = np.clip(ridge, 0.2 * h, 0.8 * h)
    below = (np.arange(h, dtype=np.float32)[:, None] >= ridge[None, :])
    base = np.array(rng.choice([[70, 95, 50], [95, 90, 60], [110, 100, 70], [60, 80, 55]]), np.float32)
    depth = np.clip((np.arange(h, dtype=np.float32)[:, None] - ridge[None, :]) / (0.5 * h), 0, 1)[..., None]
    terrain = base * (0.75 + 0.45 * depth)
    tex = 22 * _noise(rng, h, w, 48) + 14 * _noise(rng, h, w, 6) + 8 * _noise(rng, h, w, 2)
    terrain = terrain + tex[..., None] * np.array([1.0, 0.9, 0.7], np.float32)
    haze = np.exp(-depth * 6)  # far terrain fades toward the sky colour
    terrain = terrain * (1 - 0.55 * haze) + bottom * 0.55 * haze
    img = np.where(below[..., None], terrain, img)
    return img, ridge


def _smoke(rng: np.random.Generator, w: int, h: int, ridge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rising, widening plume of Gaussian puffs: (alpha HxW, colour 3)."""
    x = rng.uniform(0.08, 0.92) * w
    y = float(ridge[int(np.clip(x, 0, w - 1))]) + rng.uniform(0, 0.05) * h
    alpha = np.zeros((h, w), np.float32)
    height = rng.uniform(0.12, 0.45) * h
    drift = rng.uniform(-0.6, 0.6)
    r0 = rng.uniform(0.008, 0.02) * w
    n = 14
    for i in range(n):
        t = i / (n - 1)
        cx = x + drift * height * t + rng.normal(0, r0 * 0.3)
        cy = y - height * t
        r = r0 * (1 + 3.0 * t)
        cv2.circle(alpha, (int(cx), int(cy)), int(r), 1.0, -1, lineType=cv2.LINE_AA)
    sigma = r0 * 0.6
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    alpha *= 0.75 + 0.25 * _noise(rng, h, w, max(4, int(r0)))
    alpha = np.clip(alpha, 0, 1) * rng.uniform(0.45, 0.8)
    grey = rng.uniform(175, 240)
    return alpha, np.array([grey, grey, grey * rng.uniform(0.97, 1.03)], np.float32)


def _fire(rng: np.random.Generator, w: int, h: int, ridge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flame tongues on the terrain: (alpha HxW, per-pixel colour HxWx3)."""
    x = rng.uniform(0.06, 0.94) * w
    y = float(ridge[int(np.clip(x, 0, w - 1))]) + rng.uniform(0.02, 0.2) * h
    width = rng.uniform(0.02, 0.12) * w
    fh = width * rng.uniform(0.4, 1.2)
    mask = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(3, 8))):
        bx = x + rng.uniform(-0.5, 0.5) * width
        th = fh * rng.uniform(0.4, 1.0)
        bw = width * rng.uniform(0.12, 0.3)
        pts = np.array([[bx - bw, y], [bx + bw, y], [bx + rng.uniform(-0.3, 0.3) * bw, y - th]], np.int32)
        cv2.fillPoly(mask, [pts], 1.0, lineType=cv2.LINE_AA)
    cv2.ellipse(mask, (int(x), int(y)), (int(width / 2), max(2, int(fh * 0.15))), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, width * 0.02))
    core = cv2.GaussianBlur(mask, (0, 0), max(1.0, width * 0.06)) ** 2
    colour = np.empty((h, w, 3), np.float32)
    colour[..., 0] = 235 + 20 * core
    colour[..., 1] = 60 + 170 * core
    colour[..., 2] = 15 + 90 * core
    return np.clip(mask * 0.95, 0, 1), colour


_RENDER: dict[str, tuple[Callable, float]] = {"smoke": (_smoke, 0.2), "fire": (_fire, 0.35)}


def render(seed: int, index: int, size: tuple[int, int], classes: list[str], background: float) -> tuple[np.ndarray, list[SynthObject]]:
    """One image (HxWx3 uint8 RGB) and its objects, a pure function of its arguments."""
    w, h = size
    rng = np.random.default_rng([seed, index])
    img, ridge = _scene(rng, w, h)
    objects: list[SynthObject] = []
    if rng.random() >= background:
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(0, len(classes)))
            fn, thresh = _RENDER[classes[c]]
            alpha, colour = fn(rng, w, h, ridge)
            ys, xs = np.nonzero(alpha > thresh)
            if len(xs) < 16:
                continue
            x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
            objects.append(SynthObject(c, (x0, y0, x1, y1)))
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)  # sensor grain: realistic JPEG bit rates
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _write_yolo(out: Path, images: list[SynthImage], classes: list[str]) -> None:
    for im in images:
        d = out / "images" / im.split
        d.mkdir(parents=True, exist_ok=True)
        write_bytes(d / im.name, im.jpeg)
        ld = out / "labels" / im.split
        ld.mkdir(parents=True, exist_ok=True)
        write_text(ld / (Path(im.name).stem + ".txt"), im.yolo_rows())
    splits = sorted({im.split for im in images}, key=["train", "val", "test"].index)
    # No `path`: Ultralytics then resolves the splits against this file's folder (a relative path would be cwd's).
    cfg = {**{s: f"images/{s}" for s in splits}, "names": dict(enumerate(classes))}
    write_text(out / "data.yaml", yaml.safe_dump(cfg, sort_keys=False))


def _coco_doc(images: list[SynthImage], classes: list[str], cat_ids: dict[str, int] | None = None) -> dict:
    """COCO json; `cat_ids` (name -> id) sets the category ids, listed in reverse id order (FASDD's test of by-name mapping)."""
    ids = cat_ids or {c: i + 1 for i, c in enumerate(classes)}
    cats = [{"id": ids[c], "name": c} for c in classes]
    doc = {"images": [], "annotations": [], "categories": sorted(cats, key=lambda c: -c["id"]) if cat_ids else cats}

    def ann(image_id: int, cls: int, x0: int, y0: int, w: int, h: int) -> None:
        doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": ids[classes[cls]],
                                   "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})

    for i, im in enumerate(images):
        doc["images"].append({"id": i + 1, "file_name": im.name, "width": im.width, "height": im.height})
        for k, o in enumerate(im.objects):
            x0, y0, x1, y1 = o.box
            ann(i + 1, o.cls, x0, y0, x1 - x0 + (1 if im.past_edge and k == 0 else 0), y1 - y0)
        if im.zero_size_row and im.objects:
            o = im.objects[0]
            ann(i + 1, o.cls, o.box[0], o.box[1], 0, o.box[3] - o.box[1])
    return doc


def _write_coco(out: Path, images: list[SynthImage], classes: list[str]) -> None:
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split in sorted({im.split for im in images}):
        part = [im for im in images if im.split == split]
        d = out / "images" / split
        d.mkdir(parents=True, exist_ok=True)
        for im in part:
            write_bytes(d / im.name, im.jpeg)
        write_text(out / "annotations" / f"instances_{split}.json", json.dumps(_coco_doc(part, classes)))


def _write_voc(out: Path, images: list[SynthImage], classes: list[str]) -> None:
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for im in images:
        write_bytes(out / "JPEGImages" / im.name, im.jpeg)
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = im.name
        size = ET.SubElement(root, "size")
        for tag, v in (("width", im.width), ("height", im.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(v)
        for o in im.objects:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = classes[o.cls]
            ET.SubElement(obj, "difficult").text = "0"
            bb = ET.SubElement(obj, "bndbox")
            x0, y0, x1, y1 = o.box
            for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(bb, tag).text = str(v)
        xml = out / "Annotations" / (Path(im.name).stem + ".xml")
        with naming(xml):
            ET.ElementTree(root).write(xml)
    for split in sorted({im.split for im in images}):
        ids = [Path(im.name).stem for im in images if im.split == split]
        write_text(out / "ImageSets" / "Main" / f"{split}.txt", "\n".join(ids) + "\n")
    write_text(out / "classes.txt", "\n".join(classes) + "\n")


def _write_fasdd(out: Path, images: list[SynthImage], classes: list[str], subset: str = "CV") -> None:
    """As FASDD_<subset>.zip unzips into `out`: one more FASDD_<subset>/ inside, no classes.txt."""
    tag = FASDD_SUBSETS[subset][0]
    root = out / f"FASDD_{subset}"
    yolo = root / "annotations" / f"YOLO_{tag}"
    coco = root / "annotations" / f"COCO_{tag}" / "Annotations"
    for d in (root / "images", yolo / "labels", coco):
        d.mkdir(parents=True, exist_ok=True)
    for im in images:
        write_bytes(root / "images" / im.name, im.jpeg)
        write_text(yolo / "labels" / (Path(im.name).stem + ".txt"), im.yolo_rows())
    for split in _ordered_splits(images):
        part = [im for im in images if im.split == split]
        write_text(yolo / f"{split}.txt", "".join(f"./images/{im.name}\n" for im in part))
        # Category ids deliberately not in class order: smoke 1, fire 2 (mapped by name on import).
        cat_ids = {c: len(classes) - i for i, c in enumerate(classes)}
        write_text(coco / f"{split}.json", json.dumps(_coco_doc(part, classes, cat_ids)))


def write_zip(folder: Path, archive: Path) -> int:
    """Zip `folder`'s contents into `archive` as FASDD is published (members under the folder's own top-level
    entries, e.g. ``FASDD_CV/images/...``; JPEG/TIFF stored, texts deflated; fixed timestamps, so the same
    folder gives the same bytes). Written under a temporary name and renamed. Returns the member count."""
    import zipfile

    tmp = archive.with_name(archive.name + ".partial")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(tmp, "w") as zf:
        for p in files:
            info = zipfile.ZipInfo(p.relative_to(folder).as_posix(), date_time=(2023, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if p.suffix.lower() in (".jpg", ".tif", ".png") else zipfile.ZIP_DEFLATED
            zf.writestr(info, p.read_bytes())
    tmp.replace(archive)
    return len(files)


def _write_pyrosdis(out: Path, images: list[SynthImage], classes: list[str]) -> None:
    """The dataset repository's ``data/<split>-00000-of-00001.parquet``; smoke written as class 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (out / "data").mkdir(parents=True, exist_ok=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split in _ordered_splits(images):
        part = [im for im in images if im.split == split]
        table = pa.table({
            "image": pa.array([{"bytes": im.jpeg, "path": im.name} for im in part], image_type),
            "annotations": pa.array([im.yolo_rows(id_base=1) for im in part], pa.string()),
            "image_name": pa.array([im.name for im in part], pa.string()),
            "partner": pa.array(["synth"] * len(part), pa.string()),
            "camera": pa.array([f"cam{i % 4}" for i in range(len(part))], pa.string()),
            "date": pa.array(["2026-07-14T12:00:00"] * len(part), pa.string()),
        })
        pq.write_table(table, out / "data" / f"{split}-00000-of-00001.parquet", row_group_size=64)


def _ordered_splits(images: list[SynthImage]) -> list[str]:
    return sorted({im.split for im in images}, key=split_sort_key)


def _fasdd_name(im: SynthImage, classes: list[str], subset: str, i: int) -> str:
    """FASDD's name pattern: {fire,smoke,bothFireAndSmoke,neitherFireNorSmoke}_{CV|UAV|RS}NNNNNN."""
    kinds = {classes[o.cls] for o in im.objects}
    what = "neitherFireNorSmoke" if not kinds else "bothFireAndSmoke" if len(kinds) > 1 else kinds.pop()
    return f"{what}_{subset}{i:06d}{FASDD_SUBSETS[subset][1]}"


def _encode(img: np.ndarray, quality: int, suffix: str, sixteen_bit: bool) -> bytes:
    if suffix == ".jpg":
        return encode_jpeg(img, quality)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(suffix, bgr.astype(np.uint16) * 257 if sixteen_bit else bgr)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {suffix}")
    return buf.tobytes()


def _plant(images: list[SynthImage], layout: str) -> list[SynthImage]:
    """Plant `PLANTED[layout]`: duplicates within train, train images leaked into val/test, bad boxes."""
    want = PLANTED[layout]
    by_split = {sp: [i for i, im in enumerate(images) if im.split == sp] for sp in ("train", "val", "test")}
    train = by_split["train"]
    plan = []  # (source index, copy index)
    try:
        for _ in range(want["duplicate_groups"]["train"]):
            plan.append((train.pop(0), train.pop(0)))
        for pair, n in want["leaks"].items():
            target = by_split[pair.split("/")[1]]
            for _ in range(n):
                plan.append((train.pop(0), target.pop(0)))
    except IndexError:
        raise ValueError(f"a split is too small to plant {layout}'s duplicates and leaks in") from None
    out = list(images)
    for src, dst in plan:
        out[dst] = replace(out[dst], jpeg=out[src].jpeg, objects=out[src].objects)
    with_objects = [i for i in train if out[i].objects]
    if len(with_objects) < want["zero_size_boxes"] + want["past_edge_coco_boxes"]:
        raise ValueError("too few train images with objects to plant the quirks in; use more images or less background")
    for i in with_objects[: want["zero_size_boxes"]]:
        out[i] = replace(out[i], zero_size_row=True)
    for i in with_objects[want["zero_size_boxes"]: want["zero_size_boxes"] + want["past_edge_coco_boxes"]]:
        o = out[i].objects[0]  # its box reaches the right edge; COCO writes it one pixel wider
        out[i] = replace(out[i], past_edge=True, objects=(SynthObject(o.cls, (o.box[0], o.box[1], out[i].width, o.box[3])),
                                                          *out[i].objects[1:]))
    return out


_WRITERS = {"yolo": _write_yolo, "coco": _write_coco, "voc": _write_voc, "fasdd": _write_fasdd, "pyrosdis": _write_pyrosdis}


def _split_of(seed: int, images: int, val_fraction: float, test_fraction: float) -> list[str]:
    order = np.random.default_rng(seed).permutation(images)
    n_val, n_test = int(round(images * val_fraction)), int(round(images * test_fraction))
    split = ["train"] * images
    for k, i in enumerate(order[: n_val + n_test].tolist()):
        split[i] = "val" if k < n_val else "test"
    return split


def _check_args(layout: str, classes: list[str], images: int, val_fraction: float, test_fraction: float,
                background: float, subset: str, quirks: bool) -> None:
    if layout == "pyrosdis" and classes != ["smoke"]:
        raise ValueError(f"the pyrosdis layout holds one class, smoke; got {classes}")
    unknown = [c for c in classes if c not in _KNOWN]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"synth draws classes from {_KNOWN}; got {classes}")
    if layout not in _WRITERS:
        raise ValueError(f"layout must be one of {SYNTH_LAYOUTS}, got {layout!r}")
    if not 0 <= val_fraction + test_fraction < 1 or min(val_fraction, test_fraction) < 0 or not 0 <= background <= 1 or images < 1:
        raise ValueError("need images >= 1, 0 <= val_fraction + test_fraction < 1 and 0 <= background <= 1")
    if subset not in FASDD_SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(FASDD_SUBSETS)}, got {subset!r}")
    if quirks and images < MIN_QUIRK_IMAGES:
        raise ValueError(f"the real-shaped {layout} layout plants its quirks in {MIN_QUIRK_IMAGES} images or more "
                         f"(got {images})")


def synthesize(
    out: Path,
    *,
    images: int = 64,
    size: tuple[int, int] = (1440, 808),
    classes: list[str] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float | None = None,
    background: float = 0.1,
    layout: str = "yolo",
    seed: int = 0,
    quality: int = 90,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    subset: str = "CV",
    quirks: bool | None = None,
) -> list[SynthImage]:
    """Write a synthetic dataset to `out` in `layout`; returns what was written.

    Class names must be ``fire`` and/or ``smoke`` (their renderers); their order sets the ids. The
    default is fire,smoke, or smoke alone for the pyrosdis layout (PyroSDIS is a smoke-only dataset).
    `test_fraction` defaults to 0.15 for fasdd (which has a test split), else 0. `quirks` plants
    `PLANTED[layout]` (default: for fasdd and pyrosdis when `images` >= MIN_QUIRK_IMAGES); `subset`
    picks FASDD's CV, UAV or RS shape.
    """
    classes = list(classes or (["smoke"] if layout == "pyrosdis" else ["fire", "smoke"]))
    test_fraction = (0.15 if layout == "fasdd" else 0.0) if test_fraction is None else test_fraction
    if quirks is None:  # real-shaped by default when there is room for the quirks
        quirks = layout in PLANTED and images >= MIN_QUIRK_IMAGES
        if layout in PLANTED and not quirks:
            log.info("synth %s: %d images are too few to plant the published quirks in; writing it clean", layout, images)
    quirks = quirks and layout in PLANTED
    _check_args(layout, classes, images, val_fraction, test_fraction, background, subset, quirks)
    split = _split_of(seed, images, val_fraction, test_fraction)
    suffix = FASDD_SUBSETS[subset][1] if layout == "fasdd" else ".jpg"

    def one(i: int) -> SynthImage:
        img, objects = render(seed, i, size, classes, background)
        im = SynthImage(f"synth_{i:06d}.jpg", split[i], size[0], size[1],
                        _encode(img, quality, suffix, sixteen_bit=suffix == ".tif" and i == images - 1), tuple(objects))
        if progress:
            progress(1)
        return im

    with ThreadPoolExecutor(threads) as pool:
        result = list(pool.map(one, range(images)))
    if quirks:
        result = _plant(result, layout)
    if layout == "fasdd":
        result = [replace(im, name=_fasdd_name(im, classes, subset, i)) for i, im in enumerate(result)]
    out.mkdir(parents=True, exist_ok=True)
    if layout == "fasdd":
        _write_fasdd(out, result, classes, subset)
    else:
        _WRITERS[layout](out, result, classes)
    return result
