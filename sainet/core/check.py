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

from sainet.core.datasets import BoxTally, Importer, Problem, ProblemKind, Sample, Severity
from sainet.core.datasets.base import split_sort_key
from sainet.core.errors import CorruptImage, DatasetError, ImageTooLarge
from sainet.core.imaging import ImageInfo, decode_rgb, probe
from sainet.core.parallel import ordered_map

__all__ = ["SplitStats", "CheckReport", "Duplicates", "check_dataset", "content_digest", "find_duplicates", "inspect_image"]


def content_digest(data: bytes | memoryview) -> bytes:
    """The content hash duplicates and leaks are found by (check and pack use this one)."""
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass
class Duplicates:
    """Exact-duplicate images (same bytes), within a split and across splits (leakage).

    `within[split]` and `across["train/val"]` are groups of (split, name) members; `leaked_train`
    are the train members of the groups that also appear in val or test (what ``pack --drop-leaks``
    removes).
    """

    within: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)
    across: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)
    leaked_train: list[tuple[str, str]] = field(default_factory=list)  # (key, same-bytes member elsewhere)

    def summary(self, examples: int = 3) -> dict:
        def one(groups: list[list[tuple[str, str]]]) -> dict:
            return {"groups": len(groups), "images": sum(len(g) for g in groups),
                    "examples": [" = ".join(f"{n} ({sp})" for sp, n in g[:3]) for g in groups[:examples]]}

        return {"within": {sp: one(g) for sp, g in sorted(self.within.items())},
                "across": {pair: one(g) for pair, g in sorted(self.across.items())},
                "leaked_train_images": len(self.leaked_train)}




def find_duplicates(members: dict[bytes, list[tuple[str, str, str]]]) -> Duplicates:
    """Group (split, name, key) members by content digest into within-split and cross-split duplicates."""
    dup = Duplicates()
    for group in members.values():
        if len(group) < 2:
            continue
        by_split: dict[str, list[tuple[str, str, str]]] = {}
        for m in group:
            by_split.setdefault(m[0], []).append(m)
        for sp, ms in by_split.items():
            if len(ms) > 1:
                dup.within.setdefault(sp, []).append([(m[0], m[1]) for m in ms])
        splits = sorted(by_split, key=split_sort_key)
        for i, a in enumerate(splits):
            for b in splits[i + 1:]:
                dup.across.setdefault(f"{a}/{b}", []).append([(m[0], m[1]) for m in by_split[a] + by_split[b]])
        others = [m for m in group if m[0] != "train"]
        if "train" in by_split and others:
            dup.leaked_train += [(m[2], f"{others[0][1]} ({others[0][0]})") for m in by_split["train"]]
    return dup


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
    notes: list[str] = field(default_factory=list)
    tally: BoxTally = field(default_factory=BoxTally)
    duplicates: Duplicates = field(default_factory=Duplicates)

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
            "notes": self.notes, "box_counts": self.tally.as_dict(), "duplicates": self.duplicates.summary(),
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
    digest = content_digest(data) if info is not None else None
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
    members: dict[bytes, list[tuple[str, str, str]]] = {}
    with ThreadPoolExecutor(threads) as pool:
        for sample, info, found, digest in ordered_map(pool, _examine, ds.samples(), depth=4 * threads):
            st = splits.setdefault(sample.split, SplitStats())
            problems.extend(found)
            if progress:
                progress(1)
            if info is None:
                st.bad_images += 1
                continue
            same = members.setdefault(digest, [])
            if same:
                problems.append(Problem(sample.key, ProblemKind.DUPLICATE_IMAGE, f"same bytes as {same[0][2]}"))
            same.append((sample.split, sample.name, sample.key))
            _count(st, sample, ds.names)
    for sp in ds.splits():
        splits.setdefault(sp, SplitStats())
    ds.finish()
    all_problems = ds.problems + problems
    if not any(s.images for s in splits.values()):
        all_problems.append(Problem(str(ds.root), ProblemKind.NO_IMAGES, "no decodable images"))
    return CheckReport(str(ds.root), ds.layout, list(ds.names), splits, all_problems, list(ds.notes), ds.tally,
                       find_duplicates(members))


def _count(st: SplitStats, sample: Sample, names: list[str]) -> None:
    st.images += 1
    st.boxes += len(sample.cls)
    if len(sample.cls) == 0:
        st.backgrounds += 1
    for c in np.unique(sample.cls):
        st.images_per_class[names[c] if c < len(names) else str(c)] += 1
    for c in sample.cls:
        st.per_class[names[c] if c < len(names) else str(c)] += 1
