"""The loader: sampler -> read + decode (threads) -> plan -> execute -> Ultralytics batch dict.

A producer thread keeps two batches in assembly ahead of the consumer (the queue is bounded by
`prefetch`); inside a batch, decoding and rendering run in a thread pool (libjpeg-turbo and OpenCV
release the GIL) into reused buffers. No per-sample worker processes, nothing that grows with the
dataset or the epoch count.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import numpy as np
import torch

from loaders.augment.cpu import finish_image, mixup_partners, render_image
from loaders.augment.hyp import Hyp
from loaders.augment.plan import BatchPlan, plan_batch
from loaders.buffers import BatchBuffers
from loaders.sampler import ShardedSampler
from loaders.sources import Source
from sainet.errors import ImageError, SainetError, StoreError
from sainet.geometry import PAD_VALUE, letterbox, letterbox_params
from sainet.imaging import decode_rgb, probe

__all__ = ["LoaderDataset", "SainetLoader", "ON_ERROR", "collate_boxes"]

log = logging.getLogger(__name__)

T = TypeVar("T")
ON_ERROR = ("raise", "skip")
_SKIP_TRIES = 16


class LoaderDataset:
    """What Ultralytics' trainer reads from ``loader.dataset``: len, labels, mosaic switch."""

    def __init__(self, source: Source, hyp: Hyp, augment: bool, imgsz: tuple[int, int]) -> None:
        self.source, self.hyp, self.augment, self.imgsz = source, hyp, augment, imgsz
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
        from dataclasses import replace

        self.mosaic = False
        self.hyp = replace(self.hyp, mosaic=0.0, mixup=0.0, copy_paste=0.0)


@dataclass
class _Decoded:
    image: np.ndarray
    scale: tuple[float, float]  # decoded pixels -> original coordinates
    index: int  # the sample actually used (differs from the asked one after a skip)


def collate_boxes(plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cls (N,1), bboxes (N,4) normalized xywh of the output, batch_idx (N,)) from a plan."""
    H, W = plan.out_hw
    cls, boxes, idx = [], [], []
    for i, ip in enumerate(plan.images):
        if len(ip.cls):
            b = ip.boxes
            xywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / W, (b[:, 1] + b[:, 3]) / 2 / H, (b[:, 2] - b[:, 0]) / W, (b[:, 3] - b[:, 1]) / H], 1)
            cls.append(ip.cls.reshape(-1, 1))
            boxes.append(xywh)
            idx.append(np.full(len(ip.cls), i))
    if not cls:
        return torch.zeros((0, 1)), torch.zeros((0, 4)), torch.zeros(0)
    return (torch.from_numpy(np.concatenate(cls).astype(np.float32)), torch.from_numpy(np.concatenate(boxes).astype(np.float32)),
            torch.from_numpy(np.concatenate(idx).astype(np.float32)))


class SainetLoader:
    """A loader over one split. Iterate once per epoch; see `loaders.build_loader`."""

    kind = "cpu"
    #: batches assembled at once (one's serial steps overlap the other's pool work)
    assemblers = 2

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int,
        imgsz: tuple[int, int],
        augment: bool,
        hyp: Hyp,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        threads: int = 2,
        prefetch: int = 2,
        on_error: str = "raise",
        shuffle: bool | None = None,
        pin_memory: bool | None = None,
        epochs: int | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}")
        if batch_size < 1 or prefetch < 1 or threads < 1:
            raise ValueError("batch_size, prefetch and threads must be >= 1")
        self.source, self.hyp, self.augment, self.imgsz = source, hyp, augment, imgsz
        self.batch_size, self.drop_last, self.num_workers = batch_size, False, threads
        self.prefetch, self.on_error, self.seed, self.rank = prefetch, on_error, seed, rank
        self.epochs = epochs  # when known, mosaic closes by itself for the last hyp.close_mosaic epochs
        self.sampler = ShardedSampler(len(source), rank=rank, world_size=world_size, seed=seed,
                                      shuffle=augment if shuffle is None else shuffle)
        self.dataset = LoaderDataset(source, hyp, augment, imgsz)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.skipped = 0
        self.busy_seconds = 0.0  # time spent assembling batches (telemetry: loader images/s)
        self.images_built = 0
        self._next_epoch = 0
        self._epoch_from_sampler = False
        self._resume_batch = 0
        self._epoch = 0
        self._batches_done = 0
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()  # decode buffers, one set per batch being assembled
        self._batches = BatchBuffers(imgsz, self.pin_memory, keep=prefetch + self.assemblers + 2)
        self._active: _Epoch | None = None
        orig_set_epoch = self.sampler.set_epoch

        def set_epoch(epoch: int) -> None:  # the trainer's DDP call picks the next epoch's order
            orig_set_epoch(epoch)
            self._epoch_from_sampler = True

        self.sampler.set_epoch = set_epoch  # type: ignore[method-assign]

    # -- the contract -------------------------------------------------------------------------
    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        """A fresh pass. The epoch is the sampler's once `sampler.set_epoch` has been called (the
        trainer drives it); otherwise each pass takes the next epoch. Nothing is built until the
        first batch is asked for, so an iterator made and dropped costs nothing."""
        self.reset()
        epoch = self.sampler.epoch if self._epoch_from_sampler else self._next_epoch
        self._next_epoch = epoch + 1
        self._epoch = epoch
        if self.epochs and self.hyp.close_mosaic and epoch >= self.epochs - self.hyp.close_mosaic and self.dataset.mosaic:
            self.dataset.close_mosaic()
        start, self._resume_batch = self._resume_batch, 0
        self._batches_done = start
        self._active = _Epoch(self, epoch, start)
        return self._active

    def reset(self) -> None:
        """Stop any epoch in flight (its threads end); the next iteration starts fresh."""
        if self._active is not None:
            self._active.close()
            self._active = None

    def state_dict(self) -> dict:
        """Where this rank is: resume with `load_state_dict` to continue with the samples not yet seen."""
        return {"epoch": self._epoch, "batches_done": self._batches_done, "seed": self.seed, "rank": self.rank,
                "num_samples": len(self.sampler), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("num_samples") != len(self.sampler) or state.get("batch_size") != self.batch_size:
            raise ValueError("loader state is from another dataset, seed or batch size")
        self._next_epoch = int(state["epoch"])
        self._resume_batch = int(state["batches_done"])
        if self._epoch_from_sampler:
            self.sampler.epoch = int(state["epoch"])

    def close(self) -> None:
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

    def _slot_buffer(self, buffers: list[bytearray], slot: int, need: int) -> bytearray:
        while len(buffers) <= slot:
            buffers.append(bytearray(0))
        if len(buffers[slot]) < need:
            buffers[slot] = bytearray(need)
        return buffers[slot]

    def _batch_buffers(self) -> list[bytearray]:
        """The decode buffers of the batch assembled by the calling thread (reused batch after batch)."""
        if not hasattr(self._local, "buffers"):
            self._local.buffers = []
        return self._local.buffers

    def _decode_one(self, i: int, slot: int, min_scale_target: bool, buffers: list[bytearray] | None = None,
                    into: np.ndarray | None = None) -> _Decoded:
        """Decode sample i. With `into` (eval mode) the letterboxed result is written there directly:
        when the image needs no resize and fills whole rows (1440x808 into 1440x832), libjpeg-turbo
        decodes straight into the batch tensor and only the padding rows are filled."""
        src = self.source
        payload = src.payload(i)
        w0, h0 = (int(v) for v in src.sizes[i])
        if src.mode == "raw":
            H, W = src.raw_hw
            frame = np.frombuffer(payload, np.uint8).reshape(H, W, 3)
            left, top, nw, nh = src.raw_content(i)
            content = frame[top : top + nh, left : left + nw]
            if into is not None:
                if into.shape == frame.shape:  # packed at this very shape: the frame is the eval image
                    np.copyto(into, frame)
                else:
                    letterbox(content, *into.shape[:2], out=into)
                return _Decoded(into, (1.0, 1.0), i)
            return _Decoded(content, (w0 / nw, h0 / nh), i)
        name = src.describe(i)
        info = probe(payload, name)
        if into is not None:
            H, W = into.shape[:2]
            lb = letterbox_params(h0, w0, H, W)
            direct = (info.format == "jpeg" and info.orientation == 1 and info.channels == 3 and lb.left == 0
                      and (lb.new_w, lb.new_h) == (w0, h0) == (info.width, info.height) and W == w0)
            if direct:
                decode_rgb(payload, name, info=info, buffer=into[lb.top : lb.top + h0])
                into[: lb.top] = PAD_VALUE
                into[lb.top + h0 :] = PAD_VALUE
            else:
                buf = self._slot_buffer(buffers, slot, info.width * info.height * 3) if buffers is not None else None
                letterbox(decode_rgb(payload, name, info=info, buffer=buf), H, W, out=into)
            return _Decoded(into, (1.0, 1.0), i)
        min_size = None
        if min_scale_target:
            H, W = self.imgsz
            r = min(H / h0, W / w0)
            if r <= 0.5:  # libjpeg-turbo's DCT scaling: decode at 1/2, 1/4 or 1/8 instead of full size
                min_size = (max(1, math.ceil(w0 * r)), max(1, math.ceil(h0 * r)))
        buf = self._slot_buffer(buffers, slot, info.width * info.height * 3) if buffers is not None else None
        img = decode_rgb(payload, name, min_size=min_size, info=info, buffer=buf)
        return _Decoded(img, (w0 / img.shape[1], h0 / img.shape[0]), i)

    def _decode(self, i: int, slot: int, buffers: list[bytearray] | None = None, into: np.ndarray | None = None) -> _Decoded:
        return self._with_policy(i, lambda j: self._decode_one(j, slot, self.augment, buffers, into))

    def _with_policy(self, i: int, attempt: Callable[[int], T]) -> T:
        """`attempt(i)`, applying `on_error` to bad records: raise, or log, count and try the next sample."""
        tries = 0
        n = len(self.source)
        while True:
            try:
                return attempt(i)
            except (ImageError, StoreError) as e:
                if self.on_error == "raise":
                    raise
                self.skipped += 1
                tries += 1
                log.warning("skipping %s: %s", self.source.describe(i), e)
                if tries >= _SKIP_TRIES:
                    raise SainetError(f"{tries} bad samples in a row near {self.source.describe(i)}; giving up") from e
                i = (i + 1) % n

    def build_batch(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        """Decode in the pool while this thread plans the batch (sizes and labels come from the
        index, not the pixels), then render in the pool."""
        buffers = self._batch_buffers()
        if not self.augment:  # eval: decode and letterbox straight into the batch, no render phase
            out, img = self._batches.get(len(indices))
            arr = out.numpy()
            done = list(self.pool.map(lambda k: self._decode(int(indices[k]), k, buffers, arr[k]), range(len(indices))))
            used = [d.index for d in done]
            return self._pack(img, self._plan(used, rng), used)
        futures = [self.pool.submit(self._decode, int(i), k, buffers) for k, i in enumerate(indices)]
        state = rng.bit_generator.state
        plan = self._plan(indices.tolist(), rng)
        decoded = [f.result() for f in futures]
        used = [d.index for d in decoded]
        if used != indices.tolist():  # a bad sample was replaced (on_error="skip"): plan what was used
            rng.bit_generator.state = state
            plan = self._plan(used, rng)
        return self._render(decoded, plan)

    def _plan(self, used: list[int], rng: np.random.Generator) -> BatchPlan:
        src = self.source
        return plan_batch(rng, [tuple(src.sizes[i]) for i in used], [(src.cls[i], src.boxes[i]) for i in used],
                          self.imgsz, self.dataset.hyp, augment=self.augment, mosaic=self.dataset.mosaic)

    def _assemble(self, decoded: list[_Decoded], rng: np.random.Generator) -> dict:
        """Plan and render already-decoded sources (the DALI CPU path)."""
        return self._render(decoded, self._plan([d.index for d in decoded], rng))

    def _render(self, decoded: list[_Decoded], plan: BatchPlan) -> dict:
        """Render a planned batch with the OpenCV executor in the thread pool."""
        used = [d.index for d in decoded]
        n = len(decoded)
        out, img = self._batches.get(n)
        arr = out.numpy()
        images = [d.image for d in decoded]
        scales = [d.scale for d in decoded]
        mixup = self.augment and any(ip.mixup is not None for ip in plan.images)

        def one(k: int) -> None:
            render_image(plan.images[k], images, scales, arr[k])
            if self.augment and not mixup:  # HSV right away; with mixup it must wait for the partners
                finish_image(plan, k, arr, {})

        list(self.pool.map(one, range(n)))
        if mixup:
            partners = mixup_partners(plan, arr)
            list(self.pool.map(lambda k: finish_image(plan, k, arr, partners), range(n)))
        return self._pack(img, plan, used)

    def _pack(self, img: torch.Tensor, plan: BatchPlan, used: list[int]) -> dict:
        """The Ultralytics batch dict around `img` (B,3,H,W) uint8 (on the CPU a view of a
        channels-last buffer; on the GPU the torch executor's output)."""
        src = self.source
        H, W = self.imgsz
        cls, bboxes, batch_idx = collate_boxes(plan)
        return {
            "img": img,
            "cls": cls, "bboxes": bboxes, "batch_idx": batch_idx,
            "im_file": tuple(src.names[i] for i in used),
            "ori_shape": tuple((int(src.sizes[i][1]), int(src.sizes[i][0])) for i in used),
            "resized_shape": tuple((H, W) for _ in used),
            "ratio_pad": tuple(ip.ratio_pad for ip in plan.images),
        }


class _Epoch:
    """One pass: a producer thread fills a bounded queue; iteration takes from it."""

    _DONE = object()

    def __init__(self, loader: SainetLoader, epoch: int, start_batch: int) -> None:
        self.loader, self.epoch = loader, epoch
        order = loader.sampler.order(epoch)
        B = loader.batch_size
        self.batches = [order[k * B : (k + 1) * B] for k in range(start_batch, len(loader))]
        self.start = start_batch
        self.queue: queue.Queue = queue.Queue(maxsize=loader.prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name=f"sainet-loader-e{epoch}", daemon=True)

    def _produce(self) -> None:
        """`assemblers` batches in flight: one batch's serial steps (planning, collating) overlap the
        other's decoding and rendering in the shared pool. Batches are still queued in order."""
        loader = self.loader

        def build(k: int, idx: np.ndarray) -> dict:
            rng = np.random.default_rng([loader.seed, self.epoch, k, loader.rank])
            t0 = time.perf_counter()
            item = loader.build_batch(idx, rng)
            loader.busy_seconds += (time.perf_counter() - t0) / loader.assemblers  # wall time shared by those in flight
            loader.images_built += len(idx)
            return item

        try:
            with ThreadPoolExecutor(loader.assemblers, thread_name_prefix="sainet-batch") as assemblers:
                pending: list = []
                for k, idx in enumerate(self.batches, start=self.start):
                    if self.stop.is_set():
                        return
                    pending.append(assemblers.submit(build, k, idx))
                    if len(pending) >= loader.assemblers:
                        self._put(pending.pop(0).result())
                for f in pending:
                    if self.stop.is_set():
                        return
                    self._put(f.result())
            self._put(self._DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)

    def _put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> _Epoch:
        return self

    def __next__(self) -> dict:
        if self.stop.is_set():
            raise StopIteration
        if not self.thread.is_alive() and self.thread.ident is None:
            self.thread.start()
        item = self.queue.get()
        if item is self._DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            self.loader.close()  # an epoch that failed leaves no threads behind (the pool is rebuilt on demand)
            raise item
        self.loader._batches_done += 1
        return item

    def close(self) -> None:
        self.stop.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread.ident is not None and self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join()
