"""The sample record every importer yields, the problems they report, and path safety."""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from sainet.errors import DatasetError
from sainet.imaging import probe
from sainet.safepath import resolve_inside, utf8_text

__all__ = [
    "IMAGE_EXTS",
    "Severity",
    "ProblemKind",
    "Problem",
    "Sample",
    "Importer",
    "resolve_inside",
    "parse_yolo_labels",
    "validate_boxes",
    "empty_labels",
]

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


class Importer(abc.ABC):
    """Base of the layout importers. Subclasses set `layout`, `names` and implement `samples`.

    Problems met while reading annotations (bad rows, paths outside the root) are appended to
    `problems`; the affected boxes or images are left out of what `samples` yields.
    """

    layout: ClassVar[str] = ""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.names: list[str] = []
        self.problems: list[Problem] = []

    @classmethod
    @abc.abstractmethod
    def detect(cls, root: Path) -> bool:
        """Whether `root` looks like this layout."""

    @abc.abstractmethod
    def splits(self) -> list[str]:
        """The split names, in a stable order."""

    @abc.abstractmethod
    def samples(self, split: str | None = None) -> Iterator[Sample]:
        """Every good sample of `split` (all splits when None), in a stable order."""

    def describe(self) -> str:
        return f"{self.layout} dataset at {self.root}"

    def _problem(self, path: str, kind: ProblemKind, detail: str) -> None:
        self.problems.append(Problem(path, kind, detail))


def parse_yolo_labels(text: str, source: str, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray]:
    """Parse YOLO label text (``cls x y w h`` rows). Malformed rows are reported and skipped.

    Returns raw (cls float64 (n,), xywh float64 (n,4)); `validate_boxes` does the range checks.
    """
    cls, boxes = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            kind = "segment rows are not supported" if len(parts) > 5 and len(parts) % 2 == 1 else "expected 5 fields"
            problems.append(Problem(source, ProblemKind.LABEL_MALFORMED, f"line {lineno}: {len(parts)} fields, {kind}"))
            continue
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            # Which field, not the text: a label file's contents are never echoed.
            bad = next(k for k, p in enumerate(parts) if not _is_number(p))
            problems.append(Problem(source, ProblemKind.LABEL_MALFORMED, f"line {lineno}: field {bad + 1} is not a number"))
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


def validate_boxes(
    cls: np.ndarray, xywh: np.ndarray, nc: int, source: str, problems: list[Problem]
) -> tuple[np.ndarray, np.ndarray]:
    """Check normalized xywh boxes; report and drop the bad ones, clip the ones that stick out.

    Dropped: non-integer or out-of-range class ids, NaN/inf, negative or zero width/height.
    Clipped to the image (and reported): boxes extending beyond [0, 1]; dropped if nothing is left.
    """
    keep_cls, keep_box = [], []
    for i in range(len(cls)):
        c, (x, y, w, h) = cls[i], xywh[i]
        row = f"box {i}"
        if not all(map(math.isfinite, (c, x, y, w, h))):
            problems.append(Problem(source, ProblemKind.BOX_NAN, f"{row}: non-finite value in {c} {x} {y} {w} {h}"))
            continue
        if c != int(c) or not 0 <= c < nc:
            problems.append(Problem(source, ProblemKind.CLASS_OUT_OF_RANGE, f"{row}: class {c:g} not in 0..{nc - 1}"))
            continue
        if w < 0 or h < 0 or x < -_EPS or y < -_EPS:
            problems.append(Problem(source, ProblemKind.BOX_NEGATIVE, f"{row}: negative value in xywh {x:g} {y:g} {w:g} {h:g}"))
            if w < 0 or h < 0:
                continue
        if w == 0 or h == 0:
            problems.append(Problem(source, ProblemKind.BOX_ZERO_AREA, f"{row}: zero width or height"))
            continue
        x0, y0, x1, y1 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
        if min(x0, y0) < -_EPS or max(x1, y1) > 1 + _EPS:
            if x >= -_EPS and y >= -_EPS:  # negative centres were reported above
                problems.append(Problem(source, ProblemKind.BOX_OUT_OF_RANGE, f"{row}: xyxy {x0:.4f} {y0:.4f} {x1:.4f} {y1:.4f} clipped to the image"))
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            problems.append(Problem(source, ProblemKind.BOX_ZERO_AREA, f"{row}: nothing left inside the image"))
            continue
        keep_cls.append(int(c))
        keep_box.append(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
    return np.asarray(keep_cls, np.int32), np.asarray(keep_box, np.float32).reshape(-1, 4)


def empty_labels() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int32), np.zeros((0, 4), np.float32)

