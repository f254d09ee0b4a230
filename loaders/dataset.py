"""What the trainer reads as ``loader.dataset`` — and the one place a batch's augment plan is drawn.

Ultralytics' trainer reads `len(dataset)`, `dataset.labels` (from the store's index: no image
reads) and calls `dataset.close_mosaic(hyp)` for the last epochs; the loader's assemblers ask
`dataset.plan(...)` for each batch, so switching mosaic off here takes effect on the next batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from loaders.augment.hyp import Hyp
from loaders.augment.plan import BatchPlan, buffer_length, plan_batch
from loaders.sources import Source

__all__ = ["LoaderDataset"]


class LoaderDataset:
    """The split a loader reads, its labels, and the current augmentation settings."""

    def __init__(self, source: Source, hyp: Hyp, augment: bool, imgsz: tuple[int, int], batch_size: int | None = None,
                 resample: str = "fast", fit: tuple[int, int] | None = None) -> None:
        self.source, self.hyp, self.augment, self.imgsz = source, hyp, augment, imgsz
        #: eval: the size each image is letterboxed to inside the `imgsz` canvas (None: the canvas;
        #: Ultralytics' rect val: the square imgsz inside its padded batch shape, `SainetLoader`'s `rect`)
        self.fit = fit
        self.resample = resample  # how train images are resampled (`decode.RESAMPLE`)
        self.batch_size = batch_size  # the loader's (a rank's): sizes the mosaic buffer, as Ultralytics' batch does
        self.mosaic = augment and hyp.mosaic > 0
        self._labels: list[dict] | None = None
        self.names = dict(enumerate(source.classes))

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> list[dict]:
        if self._labels is None:
            self._labels = self.source.labels()
        return self._labels

    def close_mosaic(self, hyp: Any = None) -> None:
        """Switch mosaic, mixup and copy-paste off, as Ultralytics does for the last `close_mosaic` epochs."""
        self.mosaic = False
        self.hyp = replace(self.hyp, mosaic=0.0, mixup=0.0, copy_paste=0.0)

    def plan(self, used: list[int], rng: np.random.Generator, partners: Sequence[int] = ()) -> BatchPlan:
        """The augment plan (or eval letterbox) of a batch of samples `used`, from the index alone;
        `partners`: more samples (recent batches') that mosaics may take partners from."""
        src = self.source
        every = [*used, *partners]
        buffer = buffer_length(len(src), self.batch_size or len(used))
        return plan_batch(rng, [tuple(src.sizes[i]) for i in every], [(src.cls[i], src.boxes[i]) for i in every],
                          self.imgsz, self.hyp, augment=self.augment, mosaic=self.mosaic, n_out=len(used), ids=every,
                          buffer=buffer, fit=self.fit)
