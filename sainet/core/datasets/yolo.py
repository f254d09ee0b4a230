"""Ultralytics YOLO folders and data.yaml.

Accepted shapes (as Ultralytics reads them):
- ``data.yaml`` with ``path`` (root, relative to the yaml), ``train``/``val``/``test`` each a folder,
  a ``.txt`` list of image paths (relative to the list's folder) or a list of those, and ``names``
  (list or {id: name}) or ``nc``;
- a folder holding a data.yaml, or ``images/<split>/`` + ``labels/<split>/`` without one (class names
  then come from ``classes.txt``, else are numbered).
Labels are found by Ultralytics' rule: the last ``/images/`` in the image path becomes ``/labels/``
and the suffix becomes ``.txt``. A missing or empty label file is a background image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sainet.core.datasets.base import (
    IMAGE_EXTS,
    Importer,
    ProblemKind,
    Sample,
    read_lines,
    resolve_inside,
)
from sainet.core.datasets.guards import MAX_CLASSES, check_class_names, load_yaml, walk_files
from sainet.core.errors import DatasetError, PathOutsideRoot

__all__ = ["YoloImporter", "label_path_for", "read_names"]

SPLITS = ("train", "val", "test")


def label_path_for(image: Path) -> Path:
    """Ultralytics' img2label_paths for one image."""
    s = image.as_posix()
    i = s.rfind("/images/")
    if i < 0:
        return image.with_suffix(".txt")
    return Path(s[:i] + "/labels/" + s[i + len("/images/"):]).with_suffix(".txt")


def read_names(names: object, nc: object, source: str) -> list[str]:
    if isinstance(names, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in names.items())
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: 'names' keys must be class ids") from None
        if [k for k, _ in items] != list(range(len(items))):
            raise DatasetError(f"{source}: 'names' ids must be 0..{len(items) - 1}")
        return [v for _, v in items]
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
        if nc > MAX_CLASSES:
            raise DatasetError(f"{source}: nc {nc}; sainet accepts at most {MAX_CLASSES} classes")
        return [str(i) for i in range(nc)]
    raise DatasetError(f"{source}: no 'names' (or 'nc') for the classes")


class YoloImporter(Importer):
    layout = "yolo"

    def __init__(self, src: Path) -> None:
        src = Path(src)
        yaml_path = src if src.is_file() else next((src / n for n in ("data.yaml", "dataset.yaml") if (src / n).is_file()), None)
        self.yaml_path = yaml_path
        self._entries: dict[str, list[str]] = {}
        self._ids_seen: dict[int, list[str]] = {}  # numbered classes (no names given): class id -> images using it
        if yaml_path is not None:
            cfg = load_yaml(yaml_path) or {}
            if not isinstance(cfg, dict):
                raise DatasetError(f"{yaml_path}: expected a mapping")
            root = (yaml_path.parent / str(cfg.get("path") or ".")).resolve()
            super().__init__(root)
            self.names = check_class_names(read_names(cfg.get("names"), cfg.get("nc"), str(yaml_path)), str(yaml_path))
            for split in SPLITS:
                v = cfg.get(split)
                if v:
                    self._entries[split] = [str(x) for x in (v if isinstance(v, list) else [v])]
        else:
            super().__init__(src)
            for split in SPLITS:
                for cand in (f"images/{split}", f"{split}/images"):
                    if (src / cand).is_dir():
                        self._entries[split] = [cand]
                        break
            if not self._entries:
                raise DatasetError(f"{src}: no data.yaml and no images/<split>/ folders")
            classes = src / "classes.txt"
            self.names = read_lines(classes) if classes.is_file() else []
        if not self._entries:
            raise DatasetError(f"{yaml_path or src}: no train/val/test entries")

    @classmethod
    def detect(cls, root: Path) -> bool:
        root = Path(root)
        if root.is_file():
            return root.suffix in (".yaml", ".yml")
        return (root / "data.yaml").is_file() or (root / "dataset.yaml").is_file() or (
            (root / "images").is_dir() and (root / "labels").is_dir()
        )

    def splits(self) -> list[str]:
        return list(self._entries)

    def finish(self, examples: int = 3) -> None:
        """Without data.yaml or classes.txt the classes are numbered 0..max id: a class id past a gap (5 in a
        set using 0 and 1) is most likely a typo, and would silently make 6 classes. Reported per id."""
        super().finish(examples)
        if not self._ids_seen:
            return
        used = sorted(self._ids_seen)
        gaps = [i for i in range(used[-1] + 1) if i not in self._ids_seen]
        if not gaps:
            return
        for c in (c for c in used if c > gaps[0]):
            files = self._ids_seen[c]
            for f in files:
                self._problem(f, ProblemKind.CLASS_OUT_OF_RANGE,
                              f"class {c}, but no data.yaml or classes.txt names the classes and no box has class "
                              f"{gaps[0]}: a typo? ({len(files)} images use class {c}; it would make {used[-1] + 1} classes)")

    def _images(self, split: str) -> Iterator[Path]:
        for entry in self._entries[split]:
            try:
                p = resolve_inside(self.root, entry)
            except PathOutsideRoot as e:
                self._problem(entry, ProblemKind.PATH_OUTSIDE_ROOT, str(e))
                continue
            if p.is_dir():
                found = walk_files(p, lambda d, why: self._problem(d, ProblemKind.ANNOTATION_ERROR, why))
                yield from sorted(q for q in found if q.suffix.lower() in IMAGE_EXTS)
            elif p.suffix == ".txt" and p.is_file():
                for line in read_lines(p):
                    try:
                        yield resolve_inside(self.root, line, base=p.parent)
                    except PathOutsideRoot as e:
                        self._problem(f"{entry}: {line}", ProblemKind.PATH_OUTSIDE_ROOT, str(e))
            elif p.suffix.lower() in IMAGE_EXTS and p.is_file():
                yield p
            else:
                self._problem(entry, ProblemKind.ANNOTATION_ERROR, f"split {split!r}: not a folder, list or image")

    def samples(self, split: str | None = None) -> Iterator[Sample]:
        infer_names = not self.names
        nc = len(self.names) if self.names else MAX_CLASSES
        for sp in [split] if split else self.splits():
            for img in self._images(sp):
                try:
                    img = resolve_inside(self.root, img)  # a listed or found image may be a symlink out of the root
                except PathOutsideRoot as e:
                    self._problem(str(img), ProblemKind.PATH_OUTSIDE_ROOT, f"image {e}; not read")
                    continue
                rel = img.relative_to(Path(self.root).resolve()).as_posix()
                if not img.is_file():
                    self._problem(rel, ProblemKind.MISSING_IMAGE, "listed image does not exist")
                    continue
                cls, boxes = self._label_file(label_path_for(img), nc)
                if infer_names and len(cls):
                    while len(self.names) <= int(cls.max()):
                        self.names.append(str(len(self.names)))
                    for c in {int(c) for c in cls}:
                        self._ids_seen.setdefault(c, []).append(rel)
                yield Sample(name=img.name, key=rel, split=sp, cls=cls, boxes=boxes, path=img)
