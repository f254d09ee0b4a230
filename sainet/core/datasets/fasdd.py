"""FASDD's published layout (fire + smoke), as unzipped.

::

    FASDD_CV/                                       # what unzipping FASDD_CV.zip gives:
      FASDD_CV/                                     #   the archive root is nested once more
        images/*.jpg                                # RS: *.tif
        annotations/YOLO_CV/{train,val,test}.txt    # lines like ./images/fire_CV000001.jpg
        annotations/YOLO_CV/labels/*.txt            # YOLO rows, one file per image stem
        annotations/COCO_CV/Annotations/{train,val,test}.json

Either folder may be given (the outer one when it holds exactly one FASDD root), or the zip archive
as downloaded (``FASDD_CV.zip``): its members are streamed, nothing is unzipped to disk, and the root
is found at any of the first three levels inside it (`sainet.core.datasets.archive`). The subsets are
``CV``, ``UAV`` and ``RS_RGB``; pack several into one store with ``sainet pack A B C --to ...``.
There is no classes.txt in the release: the classes are ``fire`` (0) and ``smoke`` (1); a
classes.txt, when present, wins. The YOLO annotations are read when present, else the COCO ones,
whose category ids are mapped to those classes by name. Labels are looked up in
``annotations/YOLO_*/labels/`` and then by Ultralytics' images/→labels/ rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np

from sainet.core.datasets.archive import ZipTree, is_zip
from sainet.core.datasets.base import Importer, ProblemKind, Sample, empty_labels, read_lines, resolve_inside
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


def _zip_root(tree: ZipTree) -> str | None:
    """The FASDD root inside an archive: "" or a folder at most three levels down (FASDD_CV/, FASDD_CV/FASDD_CV/)."""
    level = [""]
    for _ in range(4):
        for d in level:
            ann = tree.join(d, "annotations")
            if tree.is_dir(tree.join(d, "images")) and tree.is_dir(ann) and any(
                    c.startswith(("YOLO_", "COCO_")) for c in tree.children(ann or "")):
                return d
        level = [tree.join(d, c) or "" for d in level for c in tree.children(d) if not c.startswith((".", "__MACOSX"))]
    return None


class FasddImporter(Importer):
    layout = "fasdd"

    def __init__(self, root: Path) -> None:
        given = Path(root)
        self._tree: ZipTree | None = None
        if is_zip(given):
            self._open_zip(given)
            return
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

    def _open_zip(self, given: Path) -> None:
        """The archive as downloaded: its YOLO annotations (as FASDD ships them, beside the COCO ones)."""
        tree = ZipTree(given)
        prefix = _zip_root(tree)
        if prefix is None:
            tree.close()
            raise DatasetError(f"{given}: no images/ and annotations/YOLO_* or annotations/COCO_* inside the archive "
                               "(at most three folders down)")
        super().__init__(given / prefix if prefix else given)
        self._tree, self._prefix = tree, prefix
        self.notes.append(f"read from the archive, nothing unzipped: root {prefix or '.'}/ inside {given.name}")
        ann = tree.join(prefix, "annotations") or ""
        yolo = [c for c in tree.children(ann) if c.startswith("YOLO_")]
        if not yolo:
            raise DatasetError(f"{given}: the archive has COCO annotations only; sainet reads FASDD archives through "
                               "their YOLO annotations (unzip it to read the COCO ones)")
        self._zip_yolo = tree.join(ann, yolo[0]) or ""
        self.yolo_dir, self.coco_dir = Path(yolo[0]), None
        self._zip_lists = {s: m for s in _SPLITS if tree.is_file(m := tree.join(self._zip_yolo, f"{s}.txt"))}
        self._lists = {s: self.root / m for s, m in self._zip_lists.items()}
        classes = tree.join(self._zip_yolo, "classes.txt")
        if tree.is_file(classes):
            self.names = [ln.strip() for ln in tree.read_text(classes or "").splitlines() if ln.strip()]
        else:
            self.names = list(FASDD_CLASSES)
            self.notes.append("no classes.txt (as published): classes are fire (0), smoke (1)")
        if not self._zip_lists:
            raise DatasetError(f"{given}!{self._zip_yolo}: no train/val/test lists")

    @classmethod
    def detect(cls, root: Path) -> bool:
        root = Path(root)
        if is_zip(root):
            try:
                tree = ZipTree(root)
            except DatasetError:
                return False
            try:
                return _zip_root(tree) is not None
            finally:
                tree.close()
        return fasdd_root(root) is not None

    def splits(self) -> list[str]:
        return list(self._lists)

    def describe(self) -> str:
        return f"fasdd dataset at {self.root} ({(self.yolo_dir or self.coco_dir).name})"

    def samples(self, split: str | None = None) -> Iterator[Sample]:
        for sp in [split] if split else self.splits():
            if self._tree is not None:
                yield from self._zip_split(sp)
            elif self.coco_dir is not None:
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

    def _zip_split(self, sp: str) -> Iterator[Sample]:
        """As `_yolo_split`, from the archive: the same keys (root-relative paths), labels and problems."""
        tree, prefix = cast(ZipTree, self._tree), self._prefix  # zip mode only
        list_member = self._zip_lists[sp]
        list_rel = list_member[len(prefix):].lstrip("/")
        for line in (ln.strip() for ln in tree.read_text(list_member).splitlines() if ln.strip()):
            rel = tree.join(line)
            if rel is None or rel == "":
                self._problem(f"{list_rel}: {line}", ProblemKind.PATH_OUTSIDE_ROOT,
                              f"{line!r} points outside the dataset root {self.root}")
                continue
            member = tree.join(prefix, rel) or ""
            if not tree.is_file(member):
                self._problem(rel, ProblemKind.MISSING_IMAGE, f"listed in {list_rel} but missing")
                continue
            stem = Path(member).stem
            lbl = tree.join(self._zip_yolo, "labels", stem + ".txt") or ""
            if not tree.is_file(lbl):
                lbl = tree.join(prefix, label_path_for(Path(rel)).as_posix()) or ""
            cls, boxes = self._zip_labels(lbl)
            yield Sample(name=Path(member).name, key=rel, split=sp, cls=cls, boxes=boxes, path=tree.member(member))

    def _zip_labels(self, member: str) -> tuple[np.ndarray, np.ndarray]:
        """`Importer._label_file` for a label inside the archive (none: a background image)."""
        tree = cast(ZipTree, self._tree)  # zip mode only
        self._labels_used.add(member)
        if not tree.is_file(member):
            self._unlabelled.append(Path(member).name)
            return empty_labels()
        return self._yolo_text(tree.read_text(member), member[len(self._prefix):].lstrip("/"))

    def finish(self, examples: int = 3) -> None:
        if self._tree is None:
            super().finish(examples)
            return
        labels_used, self._labels_used = self._labels_used, set()  # the folder scan does not apply to an archive
        super().finish(examples)
        folders = {str(Path(m).parent) for m in labels_used}
        orphans = [m for d in sorted(folders) for m in self._tree.listdir(d)
                   if m.endswith(".txt") and not m.endswith("/classes.txt") and m not in labels_used]
        if orphans:
            rel = [m[len(self._prefix):].lstrip("/") for m in orphans]
            self.notes.append(f"{len(rel)} label files have no image (their boxes are not used), e.g. "
                              f"{', '.join(rel[:examples])}")
            for r in rel:
                self._problem(r, ProblemKind.ORPHAN_LABEL, "label file without an image")
