"""`sainet check`: validate a source dataset without changing it.

Every image is read once, its header probed and its pixels decoded (strictly: a truncated JPEG is
an error, not a grey tail), hashed for duplicates and compared with the size the annotation claims.
Decoding runs in threads (libjpeg-turbo releases the GIL).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sainet.datasets import Importer, Problem, ProblemKind, Sample, Severity
from sainet.errors import CorruptImage, DatasetError, ImageTooLarge
from sainet.imaging import ImageInfo, decode_rgb, probe
from sainet.parallel import ordered_map

__all__ = ["SplitStats", "CheckReport", "check_dataset", "inspect_image"]


@dataclass
class SplitStats:
    images: int = 0
    boxes: int = 0
    backgrounds: int = 0
    bad_images: int = 0
    per_class: Counter = field(default_factory=Counter)  # class name -> boxes
    images_per_class: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "images": self.images, "boxes": self.boxes, "backgrounds": self.backgrounds, "bad_images": self.bad_images,
            "per_class": {k: {"boxes": v, "images": self.images_per_class[k]} for k, v in sorted(self.per_class.items())},
        }


@dataclass
class CheckReport:
    source: str
    layout: str
    names: list[str]
    splits: dict[str, SplitStats]
    problems: list[Problem]

    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    @property
    def boxes(self) -> int:
        return sum(s.boxes for s in self.splits.values())

    @property
    def backgrounds(self) -> int:
        return sum(s.backgrounds for s in self.splits.values())

    def per_class(self) -> dict[str, int]:
        total: Counter = Counter()
        for s in self.splits.values():
            total.update(s.per_class)
        return {n: total[n] for n in self.names}

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind.value for p in self.problems).most_common())

    def unusable_reason(self) -> str | None:
        """One line saying why the dataset cannot be trained on, or None when it can."""
        errors = [p for p in self.problems if p.severity is Severity.ERROR]
        if errors:
            return f"{errors[0].path}: {errors[0].detail}" + (f" (+{len(errors) - 1} more errors)" if len(errors) > 1 else "")
        if self.images == 0:
            return "no decodable images"
        if not self.names:
            return "no class names"
        train = self.splits.get("train")
        if train is None or train.images == 0:
            return "no decodable images in a 'train' split"
        return None

    def as_dict(self) -> dict:
        return {
            "source": self.source, "layout": self.layout, "names": self.names,
            "images": self.images, "boxes": self.boxes, "backgrounds": self.backgrounds,
            "per_class": self.per_class(), "splits": {k: v.as_dict() for k, v in self.splits.items()},
            "problem_counts": self.problem_counts(), "problems": [p.as_dict() for p in self.problems],
            "usable": self.unusable_reason() is None, "reason": self.unusable_reason(),
        }


_NAMED_SUFFIX = (".jpg", ".jpeg", ".jpe", ".jfif")


def inspect_image(data: bytes, source: str, name: str) -> tuple[ImageInfo | None, list[Problem]]:
    """Probe and decode one encoded image; return its header info and the problems found."""
    problems: list[Problem] = []
    if len(data) == 0:
        return None, [Problem(source, ProblemKind.ZERO_BYTE, "zero-byte file")]
    try:
        info = probe(data, source)
    except ImageTooLarge as e:
        return None, [Problem(source, ProblemKind.TOO_LARGE, e.reason)]
    except CorruptImage as e:
        kind = ProblemKind.TRUNCATED if "truncated" in e.reason else ProblemKind.UNDECODABLE
        return None, [Problem(source, kind, e.reason)]
    if name.lower().endswith(_NAMED_SUFFIX) and info.format != "jpeg":
        problems.append(Problem(source, ProblemKind.NOT_JPEG, f"named {name.rsplit('.', 1)[-1]} but holds {info.format.upper()} data"))
    if info.format == "jpeg":
        if info.grayscale:
            problems.append(Problem(source, ProblemKind.GRAYSCALE, "grayscale JPEG (decoded to 3 channels)"))
        if info.cmyk:
            problems.append(Problem(source, ProblemKind.CMYK, "CMYK JPEG (converted to RGB by OpenCV, slower)"))
        if info.progressive:
            problems.append(Problem(source, ProblemKind.PROGRESSIVE, "progressive JPEG (decodes slower)"))
    if info.orientation != 1:
        problems.append(Problem(source, ProblemKind.EXIF_ORIENTATION, f"EXIF orientation {info.orientation}: labels refer to the rotated (displayed) frame {info.size[0]}x{info.size[1]}"))
    try:
        decode_rgb(data, source, info=info)
    except CorruptImage as e:
        truncated = info.format == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9")
        problems.append(Problem(source, ProblemKind.TRUNCATED if truncated else ProblemKind.UNDECODABLE, e.reason))
        return None, problems
    return info, problems


def _examine(sample: Sample) -> tuple[Sample, ImageInfo | None, list[Problem], bytes | None]:
    try:
        data = sample.read()
    except DatasetError as e:
        return sample, None, [Problem(sample.key, ProblemKind.MISSING_IMAGE, str(e))], None
    info, problems = inspect_image(data, sample.key, sample.name)
    digest = hashlib.blake2b(data, digest_size=16).digest() if info is not None else None
    if info is not None and sample.width is not None and (sample.width, sample.height) != info.size:
        problems.append(Problem(sample.key, ProblemKind.SIZE_MISMATCH,
                                f"annotation says {sample.width}x{sample.height}, image is {info.size[0]}x{info.size[1]}"))
    return sample, info, problems, digest


def check_dataset(
    ds: Importer, *, threads: int = 2, progress: Callable[[int], None] | None = None
) -> CheckReport:
    """Check every image and annotation of `ds`; never modifies anything."""
    splits: dict[str, SplitStats] = {}
    problems: list[Problem] = []
    seen: dict[bytes, str] = {}
    with ThreadPoolExecutor(threads) as pool:
        for sample, info, found, digest in ordered_map(pool, _examine, ds.samples(), depth=4 * threads):
            st = splits.setdefault(sample.split, SplitStats())
            problems.extend(found)
            if progress:
                progress(1)
            if info is None:
                st.bad_images += 1
                continue
            if digest in seen:
                problems.append(Problem(sample.key, ProblemKind.DUPLICATE_IMAGE, f"same bytes as {seen[digest]}"))
            else:
                seen[digest] = sample.key
            st.images += 1
            st.boxes += len(sample.cls)
            if len(sample.cls) == 0:
                st.backgrounds += 1
            names = ds.names
            for c in np.unique(sample.cls):
                st.images_per_class[names[c] if c < len(names) else str(c)] += 1
            for c in sample.cls:
                st.per_class[names[c] if c < len(names) else str(c)] += 1
    for sp in ds.splits():
        splits.setdefault(sp, SplitStats())
    all_problems = ds.problems + problems
    if not any(s.images for s in splits.values()):
        all_problems.append(Problem(str(ds.root), ProblemKind.NO_IMAGES, "no decodable images"))
    return CheckReport(str(ds.root), ds.layout, list(ds.names), splits, all_problems)
