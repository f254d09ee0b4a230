"""The loader: ties the stages together and offers the contract Ultralytics' trainer reads.

    sample (sampler.py) -> read (read.py) -> decode (decode.py) -> augment (augment/) -> collate (collate.py)
                           '------------- one batch: assemble.py (or dali.py) ------------'
    prefetch (prefetch.py): a producer thread runs the batch builder ahead of the consumer.

The stages share one small contract: a batch builder is ``build(indices, rng, k, history) -> batch``
(`BatchBuilder`, what `CpuAssembler` and `DaliAssembler` implement); everything before it is per
sample, everything after it is per batch. No per-sample worker processes and nothing that grows
with the dataset or the epoch count.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from loaders.assemble import CpuAssembler, History
from loaders.augment.hyp import Hyp
from loaders.buffers import POOL_BYTES, BatchBuffers, pool_size
from loaders.dataset import LoaderDataset
from loaders.decode import Decoded, Decoder, Scratch, check_resample
from loaders.prefetch import Epoch, ResumeState
from loaders.read import ErrorPolicy
from loaders.sampler import ShardedSampler
from loaders.sources import Source
from sainet.core.geometry import format_imgsz, rect_val_shape

__all__ = ["BatchBuilder", "LoaderDataset", "SainetLoader", "PARTNER_BYTES", "PARTNER_MAX", "partner_count"]

log = logging.getLogger(__name__)

#: Decoded samples of recent batches kept for mosaic partners, at most (see `assemble.History`).
PARTNER_BYTES = 64 << 20
#: Ultralytics' mosaic buffer holds 8 x batch - 1 images: for image i of a batch, images 0..i and the
#: 8 x batch - i - 2 loaded before them, which reach 8 batches back (`augment.plan._partners`).
PARTNER_MAX = 8


def partner_count(batch_size: int, sample_bytes: int, budget: int = PARTNER_BYTES) -> int:
    """Recent batches kept for mosaic partners: as many as Ultralytics' buffer reaches back
    (`PARTNER_MAX`) whose samples, `sample_bytes` each decoded (the median image's), fit in `budget`
    (also the run budget's rule)."""
    return int(min(PARTNER_MAX, budget // max(1, batch_size * sample_bytes)))


class BatchBuilder(Protocol):
    """The contract between the per-sample stages and the loader: batch `k` of an epoch from its
    sample `indices`, its random draws from `rng`. `history`: the decoded samples of recent batches
    that mosaics may take partners from (None: partners from this batch only). Returns the batch
    (`SainetLoader._hand_off` turns it into Ultralytics' batch dict in the consumer's thread)."""

    def build(self, indices: np.ndarray, rng: np.random.Generator, k: int = 0, history: History | None = None) -> Any: ...


@runtime_checkable
class RedecodingBuilder(BatchBuilder, Protocol):
    """A builder that can decode a past batch again (`CpuAssembler`): the partner history refills
    batches the loader no longer holds (after a resume or in a new process) with it."""

    def redecode(self, indices: np.ndarray, scratch: Scratch) -> list[Decoded]: ...


class SainetLoader:
    """A loader over one split. Iterate once per epoch; see `loaders.build_loader`."""

    kind = "cpu"
    #: batches assembled at once (one's serial steps overlap the other's pool work)
    assemblers = 2
    #: the CPU batch buffers' byte budget (never fewer than the consumer's plus one per assembler)
    pool_budget = POOL_BYTES

    def __init__(self, source: Source, *, batch_size: int, imgsz: tuple[int, int], augment: bool, hyp: Hyp,
                 rank: int = 0, world_size: int = 1, seed: int = 0, threads: int = 2, prefetch: int = 2,
                 on_error: str = "raise", shuffle: bool | None = None, pin_memory: bool | None = None,
                 epochs: int | None = None, partner_batches: int | None = None, resample: str = "fast",
                 rect: bool = False, stride: int = 32) -> None:
        if batch_size < 1 or prefetch < 1 or threads < 1:
            raise ValueError("batch_size, prefetch and threads must be >= 1")
        imgsz, fit = self._eval_shape(source, imgsz, augment, rect, stride)
        self.policy = ErrorPolicy(source, on_error)
        self.source, self.hyp, self.augment, self.imgsz = source, hyp, augment, imgsz
        self.batch_size, self.drop_last, self.num_workers = batch_size, False, threads
        self.prefetch, self.seed, self.rank = prefetch, seed, rank
        self.epochs = epochs  # when known, mosaic closes by itself for the last hyp.close_mosaic epochs
        self.sampler = ShardedSampler(len(source), rank=rank, world_size=world_size, seed=seed,
                                      shuffle=augment if shuffle is None else shuffle)
        self.dataset = LoaderDataset(source, hyp, augment, imgsz, batch_size, check_resample(resample), fit)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        n_bytes = batch_size * imgsz[0] * imgsz[1] * 3  # the consumer's batch + one per assembler, up to POOL_BYTES
        keep = self.pool_buffers(n_bytes, prefetch)
        #: built batches the consumer has not taken yet: while there are any, a full pool waits (buffers.py)
        self._queued = 0
        self.buffers = BatchBuffers(imgsz, self.pin_memory, keep=keep, queued=lambda: self._queued > 0)
        self.busy_seconds = 0.0  # time spent assembling batches (telemetry: loader images/s)
        self.images_built = 0
        self._telemetry = threading.Lock()  # the assemblers add to the two counters above
        self._pool: ThreadPoolExecutor | None = None
        self.builder: BatchBuilder = self._builder()
        #: recent batches whose decoded samples mosaics may take partners from (assemble.History)
        self.partner_batches = self._partner_batches(batch_size) if partner_batches is None else partner_batches
        self._redecoder = self.builder if isinstance(self.builder, RedecodingBuilder) else None
        fill = self._fill if self._redecoder is not None else None
        #: kept for the loader's lifetime: across epochs, close_mosaic and resumes (see `History`)
        self._history = History(self.partner_batches, self.assemblers, fill) if self.partner_batches else None
        self._state = ResumeState(seed=seed, rank=rank, num_samples=len(self.sampler), batch_size=batch_size,
                                  world_size=world_size, records=len(source))
        self._next_epoch = 0
        self._resume_batch = 0
        self._active: Epoch | None = None

    @classmethod
    def pool_buffers(cls, batch_bytes: int, prefetch: int) -> int:
        """How many CPU batch buffers this loader pools: the consumer's and one per assembler at least,
        up to what keeps every stage busy within `pool_budget` (also the run budget's rule)."""
        return pool_size(batch_bytes, least=cls.assemblers + 1, most=prefetch + cls.assemblers + 2, budget=cls.pool_budget)

    @staticmethod
    def _eval_shape(source: Source, imgsz: tuple[int, int], augment: bool, rect: bool,
                    stride: int = 32) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """(batch shape, letterbox fit): `imgsz` and None, or with `rect` at a square `imgsz`,
        Ultralytics' rect val shape around it (`rect_val_shape` at `stride`, the model's largest)
        where the split has one orientation."""
        if not rect:
            return imgsz, None
        if augment:
            raise ValueError("rect is for eval loaders (augment=False): train batches take imgsz, square or rectangular")
        shape = rect_val_shape(source.sizes, imgsz[0], max(32, stride)) if imgsz[0] == imgsz[1] else None
        if shape is None or tuple(shape) == tuple(imgsz):
            return imgsz, None
        log.info("eval batches at %s, Ultralytics' rect val shape for imgsz %d", format_imgsz(shape), imgsz[0])
        return shape, imgsz

    def _builder(self) -> BatchBuilder:
        """The batch builder of this backend (the DALI loader makes its own)."""
        return CpuAssembler(self.dataset, self.policy, self.buffers, lambda: self.pool)

    def _decoded_bytes(self, w0: int, h0: int) -> int:
        """The bytes a w0 x h0 train JPEG is decoded to: the CPU decoder's own rule."""
        return Decoder(self.source, self.imgsz, self.dataset.resample).train_bytes(w0, h0)

    def _partner_batches(self, batch_size: int, budget: int = PARTNER_BYTES) -> int:
        """As many recent batches as Ultralytics' mosaic buffer reaches back (`PARTNER_MAX`) whose
        decoded samples fit in `budget` (`PARTNER_BYTES`); 0 without mosaic."""
        if not self.dataset.mosaic or len(self.source) == 0:
            return 0
        sizes = np.asarray(self.source.sizes, np.int64).reshape(-1, 2)
        w0, h0 = (int(v) for v in np.median(sizes, axis=0))
        return partner_count(batch_size, self._decoded_bytes(w0, h0), budget)  # what this loader's decoder really outputs

    @property
    def on_error(self) -> str:
        """``"raise"`` or ``"skip"``: held by the error policy, the one place that applies it."""
        return self.policy.on_error

    @property
    def skipped(self) -> int:
        """Bad records skipped so far (``on_error="skip"``)."""
        return self.policy.skipped

    # -- the contract -------------------------------------------------------------------------
    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        """A fresh pass. The epoch is the sampler's once `sampler.set_epoch` has been called (the
        trainer drives it); otherwise each pass takes the next epoch. Nothing is built until the
        first batch is asked for, so an iterator made and dropped costs nothing."""
        self.reset()
        epoch = self.sampler.epoch if self.sampler.epoch_set else self._next_epoch
        self._next_epoch = epoch + 1
        if self.epochs and self.hyp.close_mosaic and epoch >= self.epochs - self.hyp.close_mosaic and self.dataset.mosaic:
            self.dataset.close_mosaic()
        start, self._resume_batch = self._resume_batch, 0
        order, B = self.sampler.order(epoch), self.batch_size
        n_batches = math.ceil(len(order) / B)  # fewer than len(self) in an epoch resumed by other ranks (elastic)
        self._state.epoch, self._state.batches_done = epoch, start
        self._state.skip, self._state.batches_total = self.sampler.skipped(epoch), n_batches
        if self._history is not None:
            self._history.begin(epoch * len(self) + start)
        self._queued = 0  # the last pass's were dropped by reset()
        batches = [order[k * B : (k + 1) * B] for k in range(start, n_batches)]
        self._active = Epoch(batches, lambda k, idx: self._build(epoch, k, idx), start=start, depth=self.prefetch,
                             assemblers=self.assemblers, on_batch=self._count, on_error=self.close,
                             hand_off=self._hand_off, name=f"sainet-loader-e{epoch}")
        return self._active

    def reset(self) -> None:
        """Stop any epoch in flight (its threads end); the next iteration starts fresh."""
        if self._active is not None:
            self._active.close()
            self._active = None

    def state_dict(self) -> dict:
        """Where this rank is: resume with `load_state_dict` to continue with the samples not yet seen
        (also with another number of ranks and the same global batch: `ResumeState`)."""
        return self._state.to_dict()

    def load_state_dict(self, state: dict) -> None:
        got = self._state.check(state)
        self._next_epoch, self._resume_batch = got.epoch, got.batches_done
        self.sampler.resume(got.epoch, got.skip)
        if self.sampler.epoch_set:
            self.sampler.epoch = got.epoch

    def close(self) -> None:
        """Stop the epoch in flight and the decode threads (rebuilt on demand)."""
        self.reset()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- work ---------------------------------------------------------------------------------
    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # Parallelism comes from this pool (one image per thread); OpenCV's own threads on top
            # would oversubscribe the cores. Ultralytics makes the same call at import.
            cv2.setNumThreads(1)
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="sainet-decode")
        return self._pool

    def _hand_off(self, item: Any) -> dict:
        """A built batch as the consumer gets it, in the consumer's thread (CPU batches: as built)."""
        return item

    def _count(self) -> None:
        self._state.batches_done += 1
        with self._telemetry:
            self._queued -= 1

    def _fill(self, g: int, scratch: Scratch) -> list[Decoded]:
        """Batch g (numbered across epochs) decoded again for the partner history."""
        epoch, k = divmod(g, len(self))
        B = self.batch_size
        if self._redecoder is None:
            raise RuntimeError(f"{type(self.builder).__name__} cannot decode a past batch again")
        return self._redecoder.redecode(self.sampler.order(epoch)[k * B : (k + 1) * B], scratch)

    def _build(self, epoch: int, k: int, indices: np.ndarray) -> dict:
        """Batch k of `epoch`: its random draws are a pure function of (seed, epoch, k, rank)."""
        rng = np.random.default_rng([self.seed, epoch, k, self.rank])
        t0 = time.perf_counter()
        # batches numbered across epochs, so the partner history spans them
        item = self.builder.build(indices, rng, epoch * len(self) + k, self._history)
        with self._telemetry:
            self.busy_seconds += (time.perf_counter() - t0) / self.assemblers  # wall time shared by those in flight
            self.images_built += len(indices)
            self._queued += 1
        return item
