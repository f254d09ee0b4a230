"""The sample record every importer yields, the problems they report, and path safety."""

from __future__ import annotations

import abc
import enum
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from sainet.core.errors import DatasetError, PathOutsideRoot
from sainet.core.imaging import probe
from sainet.core.safepath import resolve_inside, utf8_text

__all__ = [
    "IMAGE_EXTS",
    "split_sort_key",
    "Severity",
    "ProblemKind",
    "Problem",
    "Sample",
    "Importer",
    "resolve_inside",
    "parse_yolo_labels",
    "validate_boxes",
    "empty_labels",
    "BoxTally",
    "detect_id_base",
    "read_lines",
]


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def split_sort_key(split: str) -> tuple[int, str]:
    """train, val, test first (in that order), then any other split by name."""
    return _SPLIT_ORDER.get(split, 9), split

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class Severity(enum.IntEnum):
    INFO = 0  # noted, nothing changed (grayscale, progressive, EXIF orientation)
    WARNING = 1  # a box or an image is dropped or changed; the dataset is still usable
    ERROR = 2  # the dataset as a whole cannot be used


class ProblemKind(str, enum.Enum):
    ZERO_BYTE = "zero_byte"
    TRUNCATED = "truncated"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    NOT_JPEG = "not_jpeg"
    GRAYSCALE = "grayscale"
    CMYK = "cmyk"
    PROGRESSIVE = "progressive"
    EXIF_ORIENTATION = "exif_orientation"
    SIZE_MISMATCH = "size_mismatch"
    MISSING_IMAGE = "missing_image"
    LABEL_MALFORMED = "label_malformed"
    CLASS_OUT_OF_RANGE = "class_out_of_range"
    BOX_NAN = "box_nan"
    BOX_NEGATIVE = "box_negative"
    BOX_OUT_OF_RANGE = "box_out_of_range"
    BOX_ZERO_AREA = "box_zero_area"
    DUPLICATE_IMAGE = "duplicate_image"
    PATH_OUTSIDE_ROOT = "path_outside_root"
    ANNOTATION_ERROR = "annotation_error"
    NO_IMAGES = "no_images"
    ORPHAN_LABEL = "orphan_label"  # a label file beside the images that no image of the dataset uses

    @property
    def severity(self) -> Severity:
        if self in _INFO:
            return Severity.INFO
        if self in (ProblemKind.ANNOTATION_ERROR, ProblemKind.NO_IMAGES):
            return Severity.ERROR
        return Severity.WARNING


_INFO = {ProblemKind.GRAYSCALE, ProblemKind.CMYK, ProblemKind.PROGRESSIVE, ProblemKind.EXIF_ORIENTATION}


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    kind: ProblemKind
    detail: str

    @property
    def severity(self) -> Severity:
        return self.kind.severity

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", utf8_text(self.path))  # non-UTF-8 file names stay printable

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind.value, "detail": self.detail, "severity": self.severity.name.lower()}


@dataclass(slots=True)
class Sample:
    """One image and its boxes, whatever layout it came from.

    `name` is the image's file name (unique within a dataset; what `export` writes); `key` is where it
    came from (a root-relative path, or ``shard.parquet#row``). Boxes are float32 normalized xywh of
    the displayed (EXIF-oriented) original image; `cls` are int32 class ids.
    """

    name: str
    key: str
    split: str
    cls: np.ndarray
    boxes: np.ndarray
    path: Path | None = None
    data: bytes | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        # A non-UTF-8 file name (held with surrogate escapes) becomes a valid UTF-8 name: its odd bytes
        # as \xNN. The file itself is still read through `path`.
        self.name, self.key = utf8_text(self.name), utf8_text(self.key)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise DatasetError(f"{self.key}: sample has neither bytes nor a path")
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise DatasetError(f"{self.key}: cannot read image: {e.strerror}") from None

    def nbytes(self) -> int:
        """Encoded size without reading the image (file size, or the bytes held)."""
        if self.data is not None:
            return len(self.data)
        try:
            return self.path.stat().st_size if self.path is not None else 0
        except OSError:
            return 0

    def original_size(self) -> tuple[int, int]:
        """(width, height): from the annotation when it has one, else from the image header."""
        if self.width is None or self.height is None:
            self.width, self.height = probe(self.read(), self.key).size
        return self.width, self.height


@dataclass
class BoxTally:
    """What happened to every box an importer read: nothing is dropped without being counted here.

    ``read == kept + sum(dropped.values())`` always holds (`lost` is that difference, 0 unless a bug);
    `clipped` boxes are among the kept ones.
    """

    read: int = 0
    kept: int = 0
    clipped: int = 0
    dropped: Counter = field(default_factory=Counter)  # ProblemKind value -> boxes dropped for it

    @property
    def lost(self) -> int:
        return self.read - self.kept - sum(self.dropped.values())

    def as_dict(self) -> dict[str, object]:
        return {"read": self.read, "kept": self.kept, "clipped": self.clipped,
                "dropped": dict(sorted(self.dropped.items())), "dropped_total": sum(self.dropped.values()),
                "lost": self.lost}


class Importer(abc.ABC):
    """Base of the layout importers. Subclasses set `layout`, `names` and implement `samples`.

    Problems met while reading annotations (bad rows, paths outside the root) are appended to
    `problems`; the affected boxes or images are left out of what `samples` yields. Every box read
    is counted in `tally`; facts about the dataset as a whole (a 1-based class id convention, a
    nested root) are said once in `notes`.
    """

    layout: ClassVar[str] = ""

    def __init__(self, root: Path) -> None:
        # absolute (not resolved: symlink checks resolve themselves), so paths joined onto it from
        # list files stay right whatever the working directory; a relative root was joined twice
        self.root = Path(root).absolute()
        self.names: list[str] = []
        self.problems: list[Problem] = []
        self.tally = BoxTally()
        self.notes: list[str] = []
        self._labels_used: set[str] = set()  # every label path looked up (found or not), for `finish`
        self._unlabelled: list[str] = []  # images whose label file does not exist (backgrounds by Ultralytics' rule)

    def _boxes(self, cls: np.ndarray, xywh: np.ndarray, source: str, nc: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`validate_boxes` against this dataset's classes, counted in `tally`."""
        return validate_boxes(cls, xywh, len(self.names) if nc is None else nc, source, self.problems, self.tally)

    def _yolo_text(self, text: str, source: str, nc: int | None = None,
                   remap: dict[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The one place YOLO label text becomes boxes: parse, map the dataset's own class ids through
        `remap` (when given; an id it lacks is reported and dropped), validate; all counted in `tally`."""
        raw_c, raw_b = parse_yolo_labels(text, source, self.problems, self.tally)
        if remap is not None and len(raw_c):
            mapped = np.array([remap.get(int(c), -1) if c == int(c) else -1 for c in raw_c], np.float64)
            for i in np.flatnonzero(mapped < 0):
                self._problem(source, ProblemKind.CLASS_OUT_OF_RANGE, f"box {i}: class {raw_c[i]:g} not among "
                              f"the dataset's ids {sorted(remap)}")
                self.tally.read += 1
                self.tally.dropped[ProblemKind.CLASS_OUT_OF_RANGE.value] += 1
            keep = mapped >= 0
            raw_c, raw_b = mapped[keep], raw_b[keep]
        return self._boxes(raw_c, raw_b, source, nc)

    def _label_file(self, lbl: Path, nc: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The one place a YOLO label file is read: none (or one outside the root) is a background image."""
        self._labels_used.add(os.path.abspath(lbl))
        if not lbl.is_file():
            self._unlabelled.append(lbl.name)
            return empty_labels()
        try:
            real = resolve_inside(self.root, lbl)
        except PathOutsideRoot as e:
            self._problem(lbl.name, ProblemKind.PATH_OUTSIDE_ROOT, str(e))
            return empty_labels()
        lrel = real.relative_to(os.path.realpath(self.root)).as_posix()
        return self._yolo_text(real.read_text(errors="replace"), lrel, nc)

    @classmethod
    @abc.abstractmethod
    def detect(cls, root: Path) -> bool:
        """Whether `root` looks like this layout."""

    def check_readable(self) -> None:  # noqa: B027 - a hook, empty by default
        """Raise `DatasetError` when the annotations cannot be read (layout detection asks every
        importer that claims a folder). Importers that parse lazily parse here; the default is a no-op."""

    @abc.abstractmethod
    def splits(self) -> list[str]:
        """The split names, in a stable order."""

    @abc.abstractmethod
    def samples(self, split: str | None = None) -> Iterator[Sample]:
        """Every good sample of `split` (all splits when None), in a stable order."""

    def describe(self) -> str:
        return f"{self.layout} dataset at {self.root}"

    def finish(self, examples: int = 3) -> None:
        """Facts known once every sample was read (`check_dataset` calls it): images without a label file
        (counted as backgrounds, as Ultralytics does: said in a note with examples) and label files beside
        the labels read that no image uses (their boxes never train: a problem each, and a note)."""
        if self._unlabelled:
            n = len(self._unlabelled)
            self.notes.append(f"{n} images have no label file (counted as backgrounds), e.g. no "
                              + ", ".join(sorted(self._unlabelled)[:examples]))
        folders = {os.path.dirname(p) for p in self._labels_used}
        orphans = sorted(
            os.path.join(d, f) for d in folders if os.path.isdir(d) for f in os.listdir(d)
            if f.endswith(".txt") and f != "classes.txt" and os.path.join(d, f) not in self._labels_used)
        if not orphans:
            return
        base = os.path.realpath(self.root)
        rel = [os.path.relpath(os.path.realpath(p), base) for p in orphans]
        self.notes.append(f"{len(rel)} label files have no image (their boxes are not used), e.g. {', '.join(rel[:examples])}")
        for r in rel:
            self._problem(r, ProblemKind.ORPHAN_LABEL, "label file without an image")

    def _problem(self, path: str, kind: ProblemKind, detail: str) -> None:
        self.problems.append(Problem(path, kind, detail))


def read_lines(path: Path) -> list[str]:
    """The non-empty, stripped lines of a list file (split lists, classes.txt, ImageSets): the one
    place such files are read."""
    # surrogateescape: a non-UTF-8 line stays a usable file name (shown with \xNN by `utf8_text`)
    return [ln.strip() for ln in path.read_text(errors="surrogateescape").splitlines() if ln.strip()]


def parse_yolo_labels(
    text: str, source: str, problems: list[Problem], tally: BoxTally | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parse YOLO label text (``cls x y w h`` rows). Malformed rows are reported, counted and skipped.

    Returns raw (cls float64 (n,), xywh float64 (n,4)); `validate_boxes` does the range checks.
    """
    tally = tally if tally is not None else BoxTally()
    cls, boxes = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            kind = "segment rows are not supported" if len(parts) > 5 and len(parts) % 2 == 1 else "expected 5 fields"
            problems.append(Problem(source, ProblemKind.LABEL_MALFORMED, f"line {lineno}: {len(parts)} fields, {kind}"))
            tally.read += 1
            tally.dropped[ProblemKind.LABEL_MALFORMED.value] += 1
            continue
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            # Which field, not the text: a label file's contents are never echoed.
            bad = next(k for k, p in enumerate(parts) if not _is_number(p))
            problems.append(Problem(source, ProblemKind.LABEL_MALFORMED, f"line {lineno}: field {bad + 1} is not a number"))
            tally.read += 1
            tally.dropped[ProblemKind.LABEL_MALFORMED.value] += 1
            continue
        cls.append(vals[0])
        boxes.append(vals[1:])
    return np.asarray(cls, np.float64), np.asarray(boxes, np.float64).reshape(-1, 4)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


#: Coordinates this far outside [0, 1] are rounding, clipped without a report.
_EPS = 1e-6


def _check_box(c: float, x: float, y: float, w: float, h: float, nc: int) -> tuple[ProblemKind, str] | None:
    """Why this box must be dropped, or None when it can be kept (perhaps after clipping)."""
    if not all(map(math.isfinite, (c, x, y, w, h))):
        return ProblemKind.BOX_NAN, f"non-finite value in {c} {x} {y} {w} {h}"
    if c != int(c) or not 0 <= c < nc:
        return ProblemKind.CLASS_OUT_OF_RANGE, f"class {c:g} not in 0..{nc - 1}"
    if w < 0 or h < 0:
        return ProblemKind.BOX_NEGATIVE, f"negative size in xywh {x:g} {y:g} {w:g} {h:g}"
    if w == 0 or h == 0:
        return ProblemKind.BOX_ZERO_AREA, "zero width or height"
    return None


def validate_boxes(
    cls: np.ndarray, xywh: np.ndarray, nc: int, source: str, problems: list[Problem], tally: BoxTally | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check normalized xywh boxes; report and drop the bad ones, clip the ones that stick out.

    Dropped: non-integer or out-of-range class ids, NaN/inf, negative or zero width/height.
    Clipped to the image (and reported): boxes extending beyond [0, 1]; dropped if nothing is left.
    Every box is counted in `tally` (read, kept, clipped, dropped by kind) when one is given.
    """
    tally = tally if tally is not None else BoxTally()
    keep_cls, keep_box = [], []
    for i in range(len(cls)):
        c, (x, y, w, h) = cls[i], xywh[i]
        row = f"box {i}"
        tally.read += 1
        why = _check_box(c, x, y, w, h, nc)
        if why is not None:
            problems.append(Problem(source, why[0], f"{row}: {why[1]}"))
            tally.dropped[why[0].value] += 1
            continue
        x0, y0, x1, y1 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
        outside = min(x0, y0) < -_EPS or max(x1, y1) > 1 + _EPS
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            problems.append(Problem(source, ProblemKind.BOX_ZERO_AREA, f"{row}: nothing left inside the image"))
            tally.dropped[ProblemKind.BOX_ZERO_AREA.value] += 1
            continue
        if outside:
            problems.append(Problem(source, ProblemKind.BOX_OUT_OF_RANGE, f"{row}: xywh {x:.4f} {y:.4f} {w:.4f} {h:.4f} clipped to the image"))
            tally.clipped += 1
        tally.kept += 1
        keep_cls.append(int(c))
        keep_box.append(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
    return np.asarray(keep_cls, np.int32), np.asarray(keep_box, np.float32).reshape(-1, 4)


def detect_id_base(ids: Iterable[float], names: list[str]) -> int:
    """0, or 1 when the class ids are evidently 1-based: one class name and every id seen is 1.

    (PyroSDIS writes smoke as class 1.) With several names the data cannot tell the convention
    apart from a subset of classes, so it is 0 there; pass an explicit map instead.
    """
    seen = set(ids)
    return 1 if len(names) == 1 and seen == {1.0} else 0


def empty_labels() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int32), np.zeros((0, 4), np.float32)

