"""COCO detection json (``annotations/*.json``; boxes are absolute top-left xywh).

Class ids are the categories sorted by their COCO id, numbered 0..nc-1, for the first json read;
every other json (and a layout with fixed names, like FASDD) maps its category ids by category
**name**, never by list order. Images with no annotation are background images; crowd annotations
are skipped like Ultralytics' converter does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sainet.core.datasets.base import (
    BoxTally,
    Importer,
    Problem,
    ProblemKind,
    Sample,
    resolve_inside,
    validate_boxes,
)
from sainet.core.datasets.guards import check_coco_doc, load_json
from sainet.core.errors import DatasetError, PathOutsideRoot
from sainet.core.safepath import printable

__all__ = ["CocoImporter", "read_coco"]


def _split_of(stem: str) -> str:
    s = stem.lower().removeprefix("instances_")
    for name in ("train", "val", "test"):
        if name in s:
            return name
    return s


def _category_index(cats: list[dict], names: list[str] | None, rel_json: str) -> tuple[list[str], dict[object, int]]:
    """(names, COCO category id -> class index): by id order when `names` is None, else by name."""
    cat_names = [str(c["name"]) for c in cats]
    if names is None:
        return cat_names, {c["id"]: i for i, c in enumerate(cats)}
    unknown = [n for n in cat_names if n not in names]
    if unknown:
        raise DatasetError(f"{rel_json}: categories {unknown} are not among the dataset's classes {names}")
    return list(names), {c["id"]: names.index(str(c["name"])) for c in cats}


def read_coco(
    json_path: Path, image_dirs: list[Path], root: Path, split: str, problems: list[Problem],
    names: list[str] | None = None, tally: BoxTally | None = None,
) -> tuple[list[str], list[Sample]]:
    """Read one COCO json into samples. Image files are looked up in `image_dirs`, in order.

    With `names`, categories are mapped to those classes by name (an unknown name is refused).
    """
    rel_json = json_path.relative_to(root).as_posix() if json_path.is_relative_to(root) else str(json_path)
    try:
        doc = load_json(json_path, rel_json)
        check_coco_doc(doc, rel_json)
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        images = doc["images"]
        anns = doc.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{rel_json}: not a COCO detection json ({type(e).__name__}: {e})") from None
    names, cat_index = _category_index(cats, names, rel_json)
    images = _unique_images(images, rel_json, problems)
    by_image = _annotations_by_image(anns, {im["id"] for im in images}, rel_json, problems)
    samples = []
    tally = tally if tally is not None else BoxTally()
    for im in images:
        fname = str(im.get("file_name", ""))
        try:
            w, h = int(im["width"]), int(im["height"])
            if w <= 0 or h <= 0:
                raise ValueError(f"{w}x{h}")
        except (KeyError, TypeError, ValueError, OverflowError):
            problems.append(Problem(f"{rel_json}: {fname}", ProblemKind.ANNOTATION_ERROR, "image entry without a positive width/height"))
            continue
        path = _find_image(fname, image_dirs, root, f"{rel_json}: {fname}", problems)
        if path is None:
            continue
        rel = path.relative_to(Path(root).resolve()).as_posix()
        raw_c, raw_b = _coco_boxes(by_image.get(im.get("id"), []), cat_index, w, h, rel, problems, tally)
        cls, boxes = validate_boxes(raw_c, raw_b, len(names), rel, problems, tally)
        samples.append(Sample(name=path.name, key=rel, split=split, cls=cls, boxes=boxes, path=path, width=w, height=h))
    return names, samples


def _is_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unique_images(images: list[dict], rel_json: str, problems: list[Problem]) -> list[dict]:
    """Image entries with an integer id used once. An id used twice leaves every image holding it out:
    its annotations cannot be told apart (one annotation would become a box on each)."""
    seen: dict[int, int] = {}
    for im in images:
        if _is_id(im.get("id")):
            seen[im["id"]] = seen.get(im["id"], 0) + 1
    out = []
    for k, im in enumerate(images):
        where = f"{rel_json}: {printable(str(im.get('file_name', '')))}"
        if not _is_id(im.get("id")):
            problems.append(Problem(where, ProblemKind.ANNOTATION_ERROR,
                                    f"images[{k}] id is {type(im.get('id')).__name__}, expected an integer; left out"))
        elif seen[im["id"]] > 1:
            problems.append(Problem(where, ProblemKind.ANNOTATION_ERROR,
                                    f"image id {im['id']} is used by {seen[im['id']]} images; their annotations cannot be told apart, left out"))
        else:
            out.append(im)
    return out


def _annotations_by_image(anns: list[dict], image_ids: set[int], rel_json: str, problems: list[Problem]) -> dict[int, list[dict]]:
    """Annotations grouped by image id; a non-integer image id, or one no image has (an orphan), is reported."""
    by_image: dict[int, list[dict]] = {}
    orphans: dict[int, int] = {}
    for k, a in enumerate(anns):
        iid = a.get("image_id")
        if not _is_id(iid):
            problems.append(Problem(rel_json, ProblemKind.LABEL_MALFORMED,
                                    f"annotations[{k}] (id {printable(str(a.get('id')))[:40]}): image_id is {type(iid).__name__}, expected an integer; dropped"))
        elif iid in image_ids:
            by_image.setdefault(iid, []).append(a)
        else:
            orphans[iid] = orphans.get(iid, 0) + 1
    for iid, n in orphans.items():
        problems.append(Problem(rel_json, ProblemKind.LABEL_MALFORMED,
                                f"{n} annotation(s) for image id {iid}, which no usable image has; not used"))
    return by_image


def _crowd(a: dict, rel: str, problems: list[Problem]) -> bool:
    """An annotation's iscrowd as COCO defines it (0 or 1); another type is reported and read by its value."""
    v = a.get("iscrowd", 0)
    if isinstance(v, (bool, int)):
        return bool(v)
    problems.append(Problem(rel, ProblemKind.LABEL_MALFORMED,
                            f"annotation {printable(str(a.get('id')))[:40]}: iscrowd is {type(v).__name__} {printable(str(v))[:20]!r}, expected 0 or 1"))
    return str(v).strip() not in ("0", "", "false", "False")


def _find_image(fname: str, image_dirs: list[Path], root: Path, where: str, problems: list[Problem]) -> Path | None:
    for d in image_dirs:
        try:
            cand = resolve_inside(root, fname, base=d)
        except PathOutsideRoot as e:
            problems.append(Problem(where, ProblemKind.PATH_OUTSIDE_ROOT, str(e)))
            return None
        if cand.is_file():
            return cand
    problems.append(Problem(where, ProblemKind.MISSING_IMAGE, "image file not found"))
    return None


def _coco_boxes(anns: list[dict], cat_index: dict[object, int], w: int, h: int, rel: str, problems: list[Problem],
                tally: BoxTally) -> tuple[np.ndarray, np.ndarray]:
    """One image's annotations as raw (class, normalized xywh); crowd ones skipped (and counted), like Ultralytics."""
    raw_c, raw_b = [], []
    for a in anns:
        if _crowd(a, rel, problems):
            tally.read += 1
            tally.dropped["crowd"] += 1
            continue
        try:
            x, y, bw, bh = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            problems.append(Problem(rel, ProblemKind.LABEL_MALFORMED, f"annotation {a.get('id')}: bad bbox"))
            tally.read += 1
            tally.dropped[ProblemKind.LABEL_MALFORMED.value] += 1
            continue
        raw_c.append(cat_index.get(a.get("category_id"), -1))
        raw_b.append(((x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h))
    return np.asarray(raw_c, np.float64), np.asarray(raw_b, np.float64).reshape(-1, 4)


class CocoImporter(Importer):
    layout = "coco"

    def __init__(self, root: Path) -> None:
        super().__init__(Path(root))
        ann_dir = self.root / "annotations"
        self._jsons = {_split_of(p.stem): p for p in sorted(ann_dir.glob("*.json"))}
        if not self._jsons:
            raise DatasetError(f"{self.root}: no annotations/*.json")
        self._cache: dict[str, list[Sample]] = {}

    @classmethod
    def detect(cls, root: Path) -> bool:
        return Path(root).is_dir() and any((Path(root) / "annotations").glob("*.json"))

    def splits(self) -> list[str]:
        return list(self._jsons)

    def check_readable(self) -> None:
        self._load(next(iter(self._jsons)))  # parsed once, cached for samples()

    def _load(self, split: str) -> list[Sample]:
        if split not in self._cache:
            dirs = [self.root / "images" / split, self.root / split, self.root / "images", self.root]
            names, samples = read_coco(self._jsons[split], [d for d in dirs if d.is_dir()], self.root, split,
                                       self.problems, self.names or None, self.tally)
            self.names = names
            self._cache[split] = samples
        return self._cache[split]

    def samples(self, split: str | None = None) -> Iterator[Sample]:
        for sp in [split] if split else self.splits():
            yield from self._load(sp)
