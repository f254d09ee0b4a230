"""Where a loader's samples come from: a packed store (zero-copy), a RAM copy of one, or files.

A source answers, for sample i of its split: the original (w, h), the labels, the payload (encoded
bytes, or a raw frame with its letterbox), and a name for error messages.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cache_tools.store import Store
from sainet.core.errors import DatasetError

__all__ = ["Source", "StoreSource", "RamSource", "DiskSource"]

log = logging.getLogger(__name__)


class Source(abc.ABC):
    """Base: subclasses fill the arrays and implement `payload`."""

    mode = "jpeg"  # or "raw"
    raw_hw: tuple[int, int] | None = None

    def __init__(self) -> None:
        self.classes: list[str] = []
        self.names: list[str] = []
        self.sizes: np.ndarray = np.zeros((0, 2), np.int64)  # (w, h) original
        self.cls: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        self.where = ""

    def __len__(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def payload(self, i: int) -> memoryview | bytes:
        """Encoded bytes (or a raw frame) of sample i."""

    def raw_content(self, i: int) -> tuple[int, int, int, int]:
        """raw frames: (left, top, new_w, new_h) of the image inside the frame."""
        raise DatasetError(f"{self.where}: not a raw store")

    def describe(self, i: int) -> str:
        return f"{self.where} sample {i} ({self.names[i]})"

    def labels(self) -> list[dict]:
        """Ultralytics-style labels (what `dataset.labels` holds), from the index alone."""
        return [{"im_file": self.names[i], "shape": (int(self.sizes[i, 1]), int(self.sizes[i, 0])),
                 "cls": self.cls[i].astype(np.float32).reshape(-1, 1), "bboxes": self.boxes[i].astype(np.float32),
                 "bbox_format": "xywh", "normalized": True} for i in range(len(self))]


class _IndexView(Sequence):
    """A read-only sequence whose item i is `get(i)`, computed when asked for."""

    def __init__(self, n: int, get: Callable[[int], Any]) -> None:
        self._n, self._get = n, get

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self._n))]
        j = int(i)
        if not -self._n <= j < self._n:
            raise IndexError(f"sample {j} out of range for {self._n}")
        return self._get(j % self._n)


class StoreSource(Source):
    """Records of one split of a store, read zero-copy (shm shards or LMDB)."""

    def __init__(self, store: Store, split: str | None, *, verify: bool = True, lazy: bool = False) -> None:
        """`lazy`: names and labels read from the store's index when asked for (an assembler process of
        `loaders.procs`: no Python objects per record in every process), else built once here."""
        super().__init__()
        self.store, self.verify = store, verify
        self.index = store.indices(split)
        self.mode, self.raw_hw = store.mode, store.imgsz
        self.classes = list(store.classes)
        self.where = str(store.path)
        recs = store.index.records[self.index]
        self.sizes = np.stack([recs["orig_w"], recs["orig_h"]], axis=1).astype(np.int64)
        if lazy:
            self.names = _IndexView(len(self.index), lambda i: store.index.name(int(self.index[i])))  # type: ignore[assignment]
            self.cls = _IndexView(len(self.index), lambda i: store.labels_of(int(self.index[i]))[0])  # type: ignore[assignment]
            self.boxes = _IndexView(len(self.index), lambda i: store.labels_of(int(self.index[i]))[1])  # type: ignore[assignment]
        else:
            self.names = [store.index.name(int(i)) for i in self.index]
            for i in self.index:
                c, b = store.labels_of(int(i))
                self.cls.append(c)
                self.boxes.append(b)
        self._content = np.stack([recs["pad_left"], recs["pad_top"], recs["new_w"], recs["new_h"]], axis=1).astype(np.int64)

    def payload(self, i: int) -> memoryview:
        return self.store.payload(int(self.index[i]), verify=self.verify)

    def raw_content(self, i: int) -> tuple[int, int, int, int]:
        return tuple(int(v) for v in self._content[i])

    def describe(self, i: int) -> str:
        return f"{self.store.path} record {int(self.index[i])} ({self.names[i]})"


class RamSource(StoreSource):
    """A store's split copied into this process's memory, like Ultralytics ``cache=ram`` (the
    baseline that grows with the dataset and is copied per DDP rank)."""

    def __init__(self, store: Store, split: str | None, *, verify: bool = True) -> None:
        super().__init__(store, split, verify=verify)
        lengths = store.index.records["length"][self.index].astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._buf = np.empty(int(self._offsets[-1]), np.uint8)
        for k, i in enumerate(self.index):
            self._buf[self._offsets[k] : self._offsets[k + 1]] = np.frombuffer(store.payload(int(i), verify=verify), np.uint8)
        log.info("ram loader: copied %.1f MB of %s into process memory", self._buf.nbytes / 1e6, store.path)

    def payload(self, i: int) -> memoryview:
        return memoryview(self._buf[self._offsets[i] : self._offsets[i + 1]])


class DiskSource(Source):
    """Image files of a source dataset, read per sample (the baseline: Ultralytics without cache)."""

    def __init__(self, src: str | Path, split: str | None, layout: str | None = None) -> None:
        from sainet.core.datasets import open_dataset  # the importers: only this source needs them

        super().__init__()
        ds = open_dataset(src, layout)
        splits = ds.splits()
        if split is not None and split not in splits:
            raise DatasetError(f"{src}: no split {split!r} (has {', '.join(splits)})")
        self.samples = list(ds.samples(split))
        self.classes = list(ds.names)
        self.where = str(src)
        self.names = [s.name for s in self.samples]
        self.sizes = np.array([s.original_size() for s in self.samples], np.int64).reshape(-1, 2)
        self.cls = [s.cls for s in self.samples]
        self.boxes = [s.boxes for s in self.samples]

    def payload(self, i: int) -> bytes:
        return self.samples[i].read()

    def describe(self, i: int) -> str:
        return f"{self.where}: {self.samples[i].key}"
