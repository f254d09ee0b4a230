"""FASDD's published layout (fire + smoke), as unzipped.

::

    FASDD_CV/                                       # what unzipping FASDD_CV.zip gives:
      FASDD_CV/                                     #   the archive root is nested once more
        images/*.jpg                                # RS: *.tif
        annotations/YOLO_CV/{train,val,test}.txt    # lines like ./images/fire_CV000001.jpg
        annotations/YOLO_CV/labels/*.txt            # YOLO rows, one file per image stem
        annotations/COCO_CV/Annotations/{train,val,test}.json

Either folder may be given (the outer one when it holds exactly one FASDD root). The subsets are
``CV``, ``UAV`` and ``RS_RGB``; pack several into one store with ``sainet pack A B C --to ...``.
There is no classes.txt in the release: the classes are ``fire`` (0) and ``smoke`` (1); a
classes.txt, when present, wins. The YOLO annotations are read when present, else the COCO ones,
whose category ids are mapped to those classes by name. Labels are looked up in
``annotations/YOLO_*/labels/`` and then by Ultralytics' images/→labels/ rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sainet.core.datasets.base import Importer, ProblemKind, Sample, read_lines, resolve_inside
from sainet.core.datasets.coco import read_coco
from sainet.core.datasets.yolo import label_path_for
from sainet.core.errors import DatasetError, PathOutsideRoot

__all__ = ["FasddImporter", "FASDD_CLASSES", "fasdd_root"]

FASDD_CLASSES = ["fire", "smoke"]
_SPLITS = ("train", "val", "test")


def _is_root(root: Path) -> bool:
    ann = root / "annotations"
    return (root / "images").is_dir() and ann.is_dir() and any(
        p.is_dir() for pat in ("YOLO_*", "COCO_*") for p in ann.glob(pat))


def fasdd_root(root: Path) -> Path | None:
    """`root` itself, or its single child when the archive was unzipped double nested; else None."""
    root = Path(root)
    if _is_root(root):
        return root
    if root.is_dir():
        children = [c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")]
        if len(children) == 1 and _is_root(children[0]):
            return children[0]
    return None


class FasddImporter(Importer):
    layout = "fasdd"

    def __init__(self, root: Path) -> None:
        given = Path(root)
        found = fasdd_root(given)
        if found is None:
            raise DatasetError(f"{given}: no images/ and annotations/YOLO_* or annotations/COCO_* (here or in one "
                               "subfolder)")
        super().__init__(found)
        if found != given:
            self.notes.append(f"nested archive root: reading {found.relative_to(given).as_posix()}/ inside {given}")
        ann = self.root / "annotations"
        yolo = sorted(p for p in ann.glob("YOLO_*") if p.is_dir())
        coco = sorted(p for p in ann.glob("COCO_*") if p.is_dir())
        self.yolo_dir = yolo[0] if yolo else None
        self.coco_dir = None if yolo else coco[0]
        adir, ext = (self.yolo_dir, ".txt") if self.yolo_dir is not None else (self.coco_dir / "Annotations", ".json")
        self._lists = {s: adir / f"{s}{ext}" for s in _SPLITS if (adir / f"{s}{ext}").is_file()}
        classes = adir / "classes.txt"
        self.names = read_lines(classes) if classes.is_file() else list(FASDD_CLASSES)
        if not classes.is_file():
            self.notes.append("no classes.txt (as published): classes are fire (0), smoke (1)")
        if not self._lists:
            raise DatasetError(f"{adir}: no train/val/test lists")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return fasdd_root(Path(root)) is not None

    def splits(self) -> list[str]:
        return list(self._lists)

    def describe(self) -> str:
        return f"fasdd dataset at {self.root} ({(self.yolo_dir or self.coco_dir).name})"

    def samples(self, split: str | None = None) -> Iterator[Sample]:
        for sp in [split] if split else self.splits():
            if self.coco_dir is not None:
                _, samples = read_coco(self._lists[sp], [self.root / "images", self.root], self.root, sp, self.problems,
                                       self.names, self.tally)
                yield from samples
            else:
                yield from self._yolo_split(sp)

    def _yolo_split(self, sp: str) -> Iterator[Sample]:
        list_rel = self._lists[sp].relative_to(self.root).as_posix()
        for line in read_lines(self._lists[sp]):
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
            cls, boxes = self._label_file(lbl)
            yield Sample(name=img.name, key=rel, split=sp, cls=cls, boxes=boxes, path=img)
