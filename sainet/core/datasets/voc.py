"""Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

VOC pixel coordinates are 1-based and inclusive: a box covering 0-based columns [x0, x1) is written
xmin = x0 + 1, xmax = x1. Class ids follow ``classes.txt`` when present, else the sorted names found.
Without ImageSets every image is in ``train``. An annotation file is a few KB: one over
`MAX_XML_BYTES` is reported as a problem and not parsed; class names pass the same limits as
every importer's (`guards.check_class_names`). (Python's expat refuses entity-expansion bombs and
ElementTree never fetches external entities.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sainet.core.datasets.base import Importer, ProblemKind, Sample, read_lines, resolve_inside
from sainet.core.datasets.guards import MAX_YAML_BYTES, check_class_names
from sainet.core.errors import DatasetError, PathOutsideRoot

__all__ = ["VocImporter", "MAX_XML_BYTES"]

#: Larger than any real VOC annotation by a wide margin (the same bound as dataset YAML files).
MAX_XML_BYTES = MAX_YAML_BYTES


class VocImporter(Importer):
    layout = "voc"

    def __init__(self, root: Path) -> None:
        super().__init__(Path(root))
        self.ann_dir = self.root / "Annotations"
        if not self.ann_dir.is_dir():
            raise DatasetError(f"{self.root}: no Annotations/ folder")
        sets = self.root / "ImageSets" / "Main"
        self._ids: dict[str, list[str]] = {}
        if sets.is_dir():
            for f in sorted(sets.glob("*.txt")):
                if "_" in f.stem:  # per-class lists (aeroplane_train.txt) are not splits
                    continue
                self._ids[f.stem] = [ln.split()[0] for ln in read_lines(f)]
        if not self._ids:
            self._ids["train"] = sorted(p.stem for p in self.ann_dir.glob("*.xml"))
        self._parsed: dict[str, ET.Element | None] = {}
        classes = self.root / "classes.txt"
        if classes.is_file():
            self.names = check_class_names(read_lines(classes), str(classes))
        else:
            found = set()
            for ids in self._ids.values():
                for i in ids:
                    doc = self._xml(i)
                    if doc is not None:
                        found.update((o.findtext("name") or "").strip() for o in doc.iter("object"))
            self.names = check_class_names(sorted(found - {""}), f"{self.ann_dir} (object names)")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (Path(root) / "Annotations").is_dir() and any((Path(root) / "Annotations").glob("*.xml"))

    def splits(self) -> list[str]:
        return list(self._ids)

    def _xml(self, image_id: str) -> ET.Element | None:
        if image_id not in self._parsed:
            rel = f"Annotations/{image_id}.xml"
            try:
                path = resolve_inside(self.root, rel)
                if path.stat().st_size > MAX_XML_BYTES:
                    self._problem(rel, ProblemKind.ANNOTATION_ERROR,
                                  f"{path.stat().st_size:,} bytes: not parsed (an annotation is at most {MAX_XML_BYTES:,})")
                    self._parsed[image_id] = None
                    return None
                self._parsed[image_id] = ET.parse(path).getroot()
            except PathOutsideRoot as e:
                self._problem(rel, ProblemKind.PATH_OUTSIDE_ROOT, str(e))
                self._parsed[image_id] = None
            except (OSError, ET.ParseError) as e:
                self._problem(rel, ProblemKind.ANNOTATION_ERROR, f"cannot parse: {e}")
                self._parsed[image_id] = None
        return self._parsed[image_id]

    def samples(self, split: str | None = None) -> Iterator[Sample]:
        index = {n: i for i, n in enumerate(self.names)}
        for sp in [split] if split else self.splits():
            for image_id in self._ids[sp]:
                doc = self._xml(image_id)
                if doc is None:
                    continue
                rel_xml = f"Annotations/{image_id}.xml"
                fname = (doc.findtext("filename") or f"{image_id}.jpg").strip()
                try:
                    path = resolve_inside(self.root, fname, base=self.root / "JPEGImages")
                except PathOutsideRoot as e:
                    self._problem(rel_xml, ProblemKind.PATH_OUTSIDE_ROOT, str(e))
                    continue
                if not path.is_file():
                    self._problem(rel_xml, ProblemKind.MISSING_IMAGE, f"JPEGImages/{fname} not found")
                    continue
                try:
                    w = int(doc.findtext("size/width") or 0)
                    h = int(doc.findtext("size/height") or 0)
                except ValueError:
                    w = h = 0
                if w <= 0 or h <= 0:
                    self._problem(rel_xml, ProblemKind.ANNOTATION_ERROR, "missing or bad <size>")
                    continue
                raw_c, raw_b = [], []
                for k, obj in enumerate(doc.iter("object")):
                    name = (obj.findtext("name") or "").strip()
                    try:
                        x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{t}") or "nan") for t in ("xmin", "ymin", "xmax", "ymax"))
                    except ValueError:
                        self._problem(rel_xml, ProblemKind.LABEL_MALFORMED, f"object {k}: bad bndbox")
                        continue
                    x0, y0 = x0 - 1, y0 - 1
                    raw_c.append(index.get(name, -1))
                    raw_b.append(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
                cls, boxes = self._boxes(np.asarray(raw_c, np.float64), np.asarray(raw_b, np.float64).reshape(-1, 4), rel_xml)
                rel = path.relative_to(Path(self.root).resolve()).as_posix()
                yield Sample(name=path.name, key=rel, split=sp, cls=cls, boxes=boxes, path=path, width=w, height=h)
