"""FASDD's published layout (fire + smoke).

::

    FASDD_CV/
      images/*.jpg
      annotations/YOLO_CV/{train,val,test}.txt      # lines like ./images/fire_0001.jpg (relative to the root)
      annotations/YOLO_CV/labels/*.txt              # YOLO rows, one file per image stem
      annotations/COCO_CV/Annotations/{train,val,test}.json

The YOLO annotations are read when present, else the COCO ones. Labels are looked up in
``annotations/YOLO_*/labels/`` and then by Ultralytics' images/→labels/ rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sainet.datasets.base import (
    Importer,
    ProblemKind,
    Sample,
    empty_labels,
    parse_yolo_labels,
    resolve_inside,
    validate_boxes,
)
from sainet.datasets.coco import read_coco
from sainet.datasets.guards import read_label_inside
from sainet.datasets.yolo import label_path_for
from sainet.errors import DatasetError, PathOutsideRoot

__all__ = ["FasddImporter", "FASDD_CLASSES"]

FASDD_CLASSES = ["fire", "smoke"]
_SPLITS = ("train", "val", "test")


class FasddImporter(Importer):
    layout = "fasdd"

    def __init__(self, root: Path) -> None:
        super().__init__(Path(root))
        ann = self.root / "annotations"
        yolo = sorted(p for p in ann.glob("YOLO_*") if p.is_dir())
        coco = sorted(p for p in ann.glob("COCO_*") if p.is_dir())
        self.yolo_dir = yolo[0] if yolo else None
        self.coco_dir = None if yolo else (coco[0] if coco else None)
        if self.yolo_dir is None and self.coco_dir is None:
            raise DatasetError(f"{self.root}: no annotations/YOLO_* or annotations/COCO_* folder")
        if self.yolo_dir is not None:
            self._lists = {s: self.yolo_dir / f"{s}.txt" for s in _SPLITS if (self.yolo_dir / f"{s}.txt").is_file()}
            classes = self.yolo_dir / "classes.txt"
            self.names = (
                [n.strip() for n in classes.read_text().splitlines() if n.strip()] if classes.is_file() else list(FASDD_CLASSES)
            )
        else:
            jdir = self.coco_dir / "Annotations"
            self._lists = {s: jdir / f"{s}.json" for s in _SPLITS if (jdir / f"{s}.json").is_file()}
            self.names = list(FASDD_CLASSES)
        if not self._lists:
            raise DatasetError(f"{self.yolo_dir or self.coco_dir}: no train/val/test lists")

    @classmethod
    def detect(cls, root: Path) -> bool:
        ann = Path(root) / "annotations"
        return (Path(root) / "images").is_dir() and ann.is_dir() and any(
            p.is_dir() for pat in ("YOLO_*", "COCO_*") for p in ann.glob(pat)
        )

    def splits(self) -> list[str]:
        return list(self._lists)

    def describe(self) -> str:
        return f"fasdd dataset at {self.root} ({(self.yolo_dir or self.coco_dir).name})"

    def samples(self, split: str | None = None) -> Iterator[Sample]:
        for sp in [split] if split else self.splits():
            if self.coco_dir is not None:
                names, samples = read_coco(self._lists[sp], [self.root / "images", self.root], self.root, sp, self.problems)
                if names:
                    self.names = names
                yield from samples
                continue
            list_rel = self._lists[sp].relative_to(self.root).as_posix()
            for line in self._lists[sp].read_text(errors="surrogateescape").splitlines():
                line = line.strip()
                if not line:
                    continue
                try:
                    img = resolve_inside(self.root, line)
                except PathOutsideRoot as e:
                    self._problem(f"{list_rel}: {line}", ProblemKind.PATH_OUTSIDE_ROOT, str(e))
                    continue
                rel = img.relative_to(self.root.resolve()).as_posix()
                if not img.is_file():
                    self._problem(rel, ProblemKind.MISSING_IMAGE, f"listed in {list_rel} but missing")
                    continue
                lbl = self.yolo_dir / "labels" / (img.stem + ".txt")
                if not lbl.is_file():
                    lbl = label_path_for(img)
                cls, boxes = empty_labels()
                label = read_label_inside(self, lbl)
                if label is not None:
                    lrel, text = label
                    raw_c, raw_b = parse_yolo_labels(text, lrel, self.problems)
                    cls, boxes = validate_boxes(raw_c, raw_b, len(self.names), lrel, self.problems)
                yield Sample(name=img.name, key=rel, split=sp, cls=cls, boxes=boxes, path=img)
