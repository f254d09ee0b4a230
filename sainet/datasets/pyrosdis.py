"""PyroSDIS' Hugging Face parquet shards (smoke only).

``data/<split>-NNNNN-of-NNNNN.parquet`` with columns ``image`` (struct of ``bytes``, ``path``),
``annotations`` (YOLO rows as one string), ``image_name``, ``partner``, ``camera``, ``date``.
Rows are streamed a record batch at a time, so a 3 GB shard never sits in memory whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from sainet.datasets.base import Importer, ProblemKind, Sample, parse_yolo_labels, validate_boxes
from sainet.datasets.guards import check_parquet_schema
from sainet.errors import DatasetError

__all__ = ["PyroSdisImporter", "PYROSDIS_CLASSES", "REQUIRED_COLUMNS"]

PYROSDIS_CLASSES = ["smoke"]
REQUIRED_COLUMNS = ("image", "annotations", "image_name")
_SHARD = re.compile(r"^(?P<split>[A-Za-z]+)[-_]")


def _shards(root: Path) -> list[Path]:
    if root.is_file() and root.suffix == ".parquet":
        return [root]
    found = sorted((root / "data").glob("*.parquet")) or sorted(root.glob("*.parquet"))
    return found


def _safe_name(name: str) -> str | None:
    """A bare file name, or None when the row's name tries to leave the folder."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.name or name.startswith("/"):
        return None
    return p.name


class PyroSdisImporter(Importer):
    layout = "pyrosdis"

    def __init__(self, root: Path) -> None:
        super().__init__(Path(root))
        self.names = list(PYROSDIS_CLASSES)
        self._by_split: dict[str, list[Path]] = {}
        for shard in _shards(self.root):
            m = _SHARD.match(shard.name)
            self._by_split.setdefault(m.group("split") if m else "train", []).append(shard)
        if not self._by_split:
            raise DatasetError(f"{self.root}: no parquet shards (data/*.parquet)")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(_shards(Path(root)))

    def splits(self) -> list[str]:
        order = {"train": 0, "val": 1, "validation": 1, "test": 2}
        return sorted(self._by_split, key=lambda s: (order.get(s, 9), s))

    def samples(self, split: str | None = None) -> Iterator[Sample]:
        for sp in [split] if split else self.splits():
            for shard in self._by_split[sp]:
                yield from self._read_shard(shard, sp)

    def _read_shard(self, shard: Path, split: str) -> Iterator[Sample]:
        try:
            pf = pq.ParquetFile(shard)
        except (OSError, pa.ArrowInvalid) as e:
            raise DatasetError(f"{shard}: not a parquet file: {e}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise DatasetError(f"{shard.name}: missing column(s) {', '.join(missing)}")
        check_parquet_schema(pf.schema_arrow, shard.name)
        row = 0
        for batch in pf.iter_batches(batch_size=64, columns=list(REQUIRED_COLUMNS)):
            images = batch.column("image").to_pylist()
            anns = batch.column("annotations").to_pylist()
            names = batch.column("image_name").to_pylist()
            for image, ann, name in zip(images, anns, names, strict=True):
                key = f"{shard.name}#{row}"
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
                raw_c, raw_b = parse_yolo_labels(ann or "", key, self.problems)
                cls, boxes = validate_boxes(raw_c, raw_b, len(self.names), key, self.problems)
                yield Sample(name=safe, key=key, split=split, cls=cls, boxes=boxes, data=bytes(data))
