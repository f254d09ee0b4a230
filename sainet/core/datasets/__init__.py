"""Dataset importers: every layout yields the same `Sample` record.

    >>> ds = open_dataset("datasets/FASDD_CV")          # layout auto-detected
    >>> for s in ds.samples("train"): ...
"""

from __future__ import annotations

import logging
from pathlib import Path

from sainet.core.datasets.base import BoxTally, Importer, Problem, ProblemKind, Sample, Severity
from sainet.core.datasets.coco import CocoImporter
from sainet.core.datasets.fasdd import FasddImporter
from sainet.core.datasets.pyrosdis import PyroSdisImporter
from sainet.core.datasets.voc import VocImporter
from sainet.core.datasets.yolo import YoloImporter
from sainet.core.errors import DatasetError, LayoutError

__all__ = ["LAYOUTS", "BoxTally", "Importer", "Problem", "ProblemKind", "Sample", "Severity", "detect_layout", "open_dataset"]

log = logging.getLogger(__name__)

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


def _try_layouts(src: Path) -> tuple[list[tuple[str, Importer]], list[str]]:
    """Every layout that claims `src` and can open it (in LAYOUTS order), and why the others could not."""
    readable, refused = [], []
    for name, cls in LAYOUTS.items():
        if not cls.detect(src):
            continue
        try:
            imp = cls(src)
            imp.check_readable()
            if not imp.splits():
                raise DatasetError(f"{src}: no splits found")
        except DatasetError as e:
            refused.append(f"{name}: {e}")
            continue
        readable.append((name, imp))
    return readable, refused


def _detect(src: Path) -> tuple[str, Importer]:
    """The most specific layout that can read `src` (every importer asked); a note when several can."""
    if not src.exists():
        raise DatasetError(f"{src}: no such file or folder")
    readable, refused = _try_layouts(src)
    if not readable:
        if refused:
            raise LayoutError(f"{src}: no importer can read it; " + "; ".join(refused) + " (pass --layout to pick one)")
        raise LayoutError(f"{src}: not a known dataset layout (expected one of {', '.join(LAYOUTS)}); pass --layout")
    name, imp = readable[0]
    if len(readable) > 1 or refused:
        others = [n for n, _ in readable[1:]]
        note = (f"layout {name} detected (the most specific that reads it"
                + (f"; {', '.join(others)} could too" if others else "")
                + (f"; refused: {'; '.join(refused)}" if refused else "") + "); --layout picks another")
        imp.notes.append(note)
        log.info("%s: %s", src, note)
    return name, imp


def detect_layout(src: str | Path) -> str:
    """The layout `open_dataset` would use for `src`: see `_detect`."""
    return _detect(Path(src))[0]


def open_dataset(src: str | Path, layout: str | None = None, class_ids: dict[int, str] | None = None) -> Importer:
    """Open a source dataset with the importer for `layout` (auto-detected when None: every importer
    that claims the folder is tried, the most specific that can read it is used, said in a note).

    `class_ids` (dataset's own class id -> name, e.g. ``{1: "smoke"}``) overrides the class id
    convention an importer would detect; only layouts whose ids are not 0-based by definition take it.
    """
    if layout is not None and layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    if not Path(src).exists():
        raise DatasetError(f"{src}: no such file or folder")
    if class_ids:
        name = layout or detect_layout(src)
        if name != "pyrosdis":
            raise LayoutError(f"an explicit class id map applies to the pyrosdis layout, not {name}")
        return LAYOUTS[name](Path(src), class_ids=class_ids)
    if layout is None:
        return _detect(Path(src))[1]
    return LAYOUTS[layout](Path(src))
