"""Dataset importers: every layout yields the same `Sample` record.

    >>> ds = open_dataset("datasets/FASDD_CV")          # layout auto-detected
    >>> for s in ds.samples("train"): ...
"""

from __future__ import annotations

from pathlib import Path

from sainet.core.datasets.base import BoxTally, Importer, Problem, ProblemKind, Sample, Severity
from sainet.core.datasets.coco import CocoImporter
from sainet.core.datasets.fasdd import FasddImporter
from sainet.core.datasets.pyrosdis import PyroSdisImporter
from sainet.core.datasets.voc import VocImporter
from sainet.core.datasets.yolo import YoloImporter
from sainet.core.errors import DatasetError, LayoutError

__all__ = ["LAYOUTS", "BoxTally", "Importer", "Problem", "ProblemKind", "Sample", "Severity", "detect_layout", "open_dataset"]

#: Layout name -> importer, in detection order (most specific first).
#: pyrosdis comes last: it claims any folder holding parquet files (and refuses, listing them, a
#: layout it cannot read), so a stray parquet file must not hide another layout.
LAYOUTS: dict[str, type[Importer]] = {
    "fasdd": FasddImporter,
    "yolo": YoloImporter,
    "coco": CocoImporter,
    "voc": VocImporter,
    "pyrosdis": PyroSdisImporter,
}


def detect_layout(src: str | Path) -> str:
    src = Path(src)
    if not src.exists():
        raise DatasetError(f"{src}: no such file or folder")
    for name, cls in LAYOUTS.items():
        if cls.detect(src):
            return name
    raise LayoutError(f"{src}: not a known dataset layout (expected one of {', '.join(LAYOUTS)}); pass --layout")


def open_dataset(src: str | Path, layout: str | None = None, class_ids: dict[int, str] | None = None) -> Importer:
    """Open a source dataset with the importer for `layout` (auto-detected when None).

    `class_ids` (dataset's own class id -> name, e.g. ``{1: "smoke"}``) overrides the class id
    convention an importer would detect; only layouts whose ids are not 0-based by definition take it.
    """
    name = layout or detect_layout(src)
    if name not in LAYOUTS:
        raise LayoutError(f"unknown layout {name!r} (expected one of {', '.join(LAYOUTS)})")
    if not Path(src).exists():
        raise DatasetError(f"{src}: no such file or folder")
    if class_ids:
        if name != "pyrosdis":
            raise LayoutError(f"an explicit class id map applies to the pyrosdis layout, not {name}")
        return LAYOUTS[name](Path(src), class_ids=class_ids)
    return LAYOUTS[name](Path(src))
