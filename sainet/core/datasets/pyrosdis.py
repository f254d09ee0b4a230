"""PyroSDIS' Hugging Face parquet shards (smoke only), as published.

Two layouts hold the same rows:

- the dataset repository: ``data/<split>-NNNNN-of-NNNNN.parquet`` (``train``, ``val``);
- the Hub's auto-converted copy: ``<config>/<split>/NNNN.parquet`` (or ``<split>/NNNN.parquet`` when
  the config folder itself is given).

The split always comes from the path; a parquet file whose split cannot be told is refused, never
merged into train. Columns: ``image`` (struct of ``bytes``, ``path``), ``annotations`` (YOLO rows as
one string, empty for a negative image), ``image_name``, ``partner``, ``camera``, ``date``.

Class ids: the published annotations write smoke as class **1**. The convention is read from the
data (one class name and every id 1 means 1-based, see `detect_id_base`) or given explicitly as
``class_ids={1: "smoke"}``; either way it is said once in `notes`, and ids are stored 0-based.
Rows are streamed a record batch at a time (one row group read at a time), so a 480 MB shard never
sits in memory whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from sainet.core.datasets.base import Importer, ProblemKind, Sample, detect_id_base, split_sort_key
from sainet.core.datasets.guards import check_parquet_schema
from sainet.core.errors import DatasetError, LayoutError

if TYPE_CHECKING:
    import pyarrow.parquet as pq

__all__ = ["PyroSdisImporter", "PYROSDIS_CLASSES", "REQUIRED_COLUMNS", "find_shards"]

PYROSDIS_CLASSES = ["smoke"]
REQUIRED_COLUMNS = ("image", "annotations", "image_name")
_SPLITS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
_REPO_SHARD = re.compile(r"^(?P<split>[A-Za-z]+)-\d{5}-of-\d{5}\.parquet$")
_HUB_SHARD = re.compile(r"^\d{4,5}\.parquet$")


def _split_of(path: Path) -> str | None:
    """The split a shard belongs to, from its name (repository layout) or its folder (Hub layout)."""
    m = _REPO_SHARD.match(path.name)
    if m:
        return _SPLITS.get(m.group("split").lower())
    if _HUB_SHARD.match(path.name):
        return _SPLITS.get(path.parent.name.lower())
    return None


def _candidates(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.suffix == ".parquet" else []
    found: list[Path] = []
    for pattern in ("*.parquet", "*/*.parquet", "*/*/*.parquet"):
        found += sorted(root.glob(pattern))
    return found


def find_shards(root: Path) -> dict[str, list[Path]]:
    """Split -> shards for either published layout; `LayoutError` listing what was found otherwise."""
    root = Path(root)
    found = _candidates(root)
    if root.is_dir() and any((root / "data").glob("*.parquet")):
        layout, shards = "repository", sorted((root / "data").glob("*.parquet"))
    elif root.is_dir() and any(_HUB_SHARD.match(p.name) for p in found):
        layout, shards = "auto-converted", found
    else:
        layout, shards = "file", found
    by_split: dict[str, list[Path]] = {}
    unknown = []
    for shard in shards:
        split = _split_of(shard)
        if split is None:
            unknown.append(shard)
        else:
            by_split.setdefault(split, []).append(shard)
    configs = {s.parent.parent for s in shards} if layout == "auto-converted" else set()
    if unknown or not by_split or len(configs) > 1:
        listing = ", ".join(p.relative_to(root).as_posix() if p != root else p.name for p in found[:12])
        more = f" (+{len(found) - 12} more)" if len(found) > 12 else ""
        why = "several configs" if len(configs) > 1 and not unknown else "cannot tell the split of " + (
            ", ".join(p.name for p in unknown[:3]) if unknown else "any file")
        raise LayoutError(
            f"{root}: not a PyroSDIS layout ({why}); expected data/<split>-NNNNN-of-NNNNN.parquet or "
            f"<config>/<split>/NNNN.parquet; found: {listing or 'no parquet files'}{more}")
    return by_split


def _safe_name(name: str) -> str | None:
    """A bare file name, or None when the row's name tries to leave the folder."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.name or name.startswith("/"):
        return None
    return p.name


def _first_ids(text: str | None) -> set[float]:
    ids = set()
    for line in (text or "").splitlines():
        parts = line.split()
        if parts:
            try:
                ids.add(float(parts[0]))
            except ValueError:
                continue
    return ids


class PyroSdisImporter(Importer):
    layout = "pyrosdis"

    def __init__(self, root: Path, class_ids: dict[int, str] | None = None) -> None:
        super().__init__(Path(root))
        self._by_split = find_shards(self.root)
        if class_ids:
            self.names = [class_ids[k] for k in sorted(class_ids)]
            self._remap = {int(k): i for i, k in enumerate(sorted(class_ids))}
            self.notes.append("class ids mapped as given: " + ", ".join(f"{k} -> {v}" for k, v in sorted(class_ids.items())))
        else:
            self.names = list(PYROSDIS_CLASSES)
            base = detect_id_base(self._scan_ids(), self.names)
            self._remap = {i + base: i for i in range(len(self.names))}
            if base:
                self.notes.append("class ids are 1-based in the annotations (1 = smoke, as PyroSDIS publishes them); "
                                  "stored 0-based")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(_candidates(Path(root)))

    def splits(self) -> list[str]:
        return sorted(self._by_split, key=split_sort_key)

    def describe(self) -> str:
        return f"pyrosdis dataset at {self.root} ({sum(map(len, self._by_split.values()))} parquet files)"

    def _open(self, shard: Path) -> pq.ParquetFile:
        import pyarrow as pa  # imported here: a process that reads a store never needs it (~8 MB)
        import pyarrow.parquet as pq

        try:
            # pre_buffer (pyarrow's default) reads a whole file's column chunks ahead: a 480 MB shard
            # would sit in memory. Without it, one row group at a time is read.
            pf = pq.ParquetFile(shard, pre_buffer=False, buffer_size=1 << 22)
        except (OSError, pa.ArrowInvalid) as e:
            raise DatasetError(f"{shard}: not a parquet file: {e}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise DatasetError(f"{shard.name}: missing column(s) {', '.join(missing)}")
        check_parquet_schema(pf.schema_arrow, shard.name)
        return pf

    def _scan_ids(self) -> set[float]:
        """Every class id in the annotations (the annotations column only: no image bytes are read)."""
        ids: set[float] = set()
        for shards in self._by_split.values():
            for shard in shards:
                for batch in self._open(shard).iter_batches(batch_size=4096, columns=["annotations"]):
                    for text in batch.column("annotations").to_pylist():
                        ids |= _first_ids(text)
        return ids

    def samples(self, split: str | None = None) -> Iterator[Sample]:
        for sp in [split] if split else self.splits():
            for shard in self._by_split[sp]:
                yield from self._read_shard(shard, sp)

    def _read_shard(self, shard: Path, split: str) -> Iterator[Sample]:
        row = 0
        for batch in self._open(shard).iter_batches(batch_size=64, columns=list(REQUIRED_COLUMNS), use_threads=False):
            images = batch.column("image").to_pylist()
            anns = batch.column("annotations").to_pylist()
            names = batch.column("image_name").to_pylist()
            for image, ann, name in zip(images, anns, names, strict=True):
                key = f"{shard.name}#{row}" if shard.parent.name == "data" or shard == self.root else \
                    f"{shard.parent.name}/{shard.name}#{row}"
                row += 1
                raw_name = str(name or (image or {}).get("path") or f"{shard.stem}_{row - 1:06d}.jpg")
                safe = _safe_name(raw_name)
                if safe is None:
                    self._problem(key, ProblemKind.PATH_OUTSIDE_ROOT, f"image_name {raw_name!r} leaves the dataset folder")
                    continue
                data = (image or {}).get("bytes")
                if data is None:
                    self._problem(key, ProblemKind.MISSING_IMAGE, "row has no image bytes")
                    continue
                cls, boxes = self._yolo_text(ann or "", key, remap=self._remap)
                yield Sample(name=safe, key=key, split=split, cls=cls, boxes=boxes, data=bytes(data))
