"""DALI backend: a DALI pipeline decodes the store's JPEGs, running ahead of the batch that uses them.

Per batch (`DaliAssembler.build`, two batches in assembly at once):

1. read (decode pool): each sample's bytes, zero-copy from the store, CRC-checked (when the
   store verifies) and header-probed under the `on_error` policy. Where and what it costs: in the
   loader's decode pool, in parallel (zlib's CRC releases the GIL), overlapped with DALI decoding
   the previous batch and the render of the one before. Measured on the 2-core dev box: CRC
   ~1 GB/s per core (0.59 ms for a 558 KB JPEG), probe ~0.1 ms; a batch of 32 x 190 KB is
   8-10 ms of CPU, ~1.2 ms of wall time on 8 threads — next to the ~10 ms a batch may take at
   3,000 img/s. ``build_loader(verify=False)`` drops the CRC (`sainet verify` checks offline).
2. feed: the encoded batch goes to the pipeline and a run is scheduled at once (`DaliFeed`). The
   other assembling thread feeds the next batch while this one waits for its outputs, so DALI
   always has the next batch before the current one is consumed; with ``exec_dynamic=True`` a
   run's outputs stay valid after later runs.
3. plan (CPU, numpy) while DALI decodes; then render: on the GPU the torch executor
   (`augment.torch_exec.render_batch`) on the loader's own CUDA stream; on the CPU the OpenCV
   executor (torch float ops are the wrong tool there, see docs/ARCHITECTURE.md).
4. hand-off (GPU): an event recorded on the loader stream after the render; the consumer's stream
   waits on it in the consumer's thread, and the batch tensor is marked as used by that stream
   (``record_stream``) so its memory is not reused early. Nothing blocks the default stream.

A batch that DALI cannot decode (DALI fails the whole run and does not name the sample): the
failing samples are found by bisection — the halves of the failed run are fed to DALI again until each
failing sample stands alone (about 2 log2(n) small runs per bad sample, once: `_repair`). Only those
are decoded on the CPU, in the loader's pool, under the `on_error` policy (raised, or skipped: counted
and replaced by the next good sample); every other sample is DALI's decode. A record DALI failed on
is remembered: later epochs decode it on the CPU while DALI decodes the rest, so it never fails a run
again. Raw stores need no decoding and use the plain CPU path.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from loaders.assemble import CpuAssembler, History
from loaders.augment.torch_exec import render_batch, resize_hwc
from loaders.collate import collate
from loaders.decode import Decoded
from loaders.loader import SainetLoader
from loaders.read import read_encoded
from sainet.core.imaging import scaled_size

__all__ = ["DaliAssembler", "DaliFeed", "DaliLoader", "dali_available", "hw_decoder_load"]

log = logging.getLogger(__name__)

#: decode rate the hybrid (CPU Huffman) share is sized for, img/s per rank (issue 16's target)
_TARGET_RATE = 3000
_CPU_HUFFMAN_RATE = 250  # 1440x808 JPEGs per second per core (docs/ARCHITECTURE.md)


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def hw_decoder_load(threads: int) -> float:
    """Share of the JPEGs sent to the hardware decoder (A100/H100 NVJPG) in the mixed decoder.

    The rest is decoded hybrid, its Huffman stage on this rank's `threads` CPU threads. DALI's
    default 0.65 leaves 35 % to the CPU: at 2 threads per rank (16 cores, 8 ranks) that caps a
    rank near 1,400 img/s. Here the CPU share is what its threads can do at the target rate,
    between 0.65 and 0.95. Chosen from the rates above, not yet tuned on a GPU.
    """
    cpu_share = threads * _CPU_HUFFMAN_RATE / _TARGET_RATE
    return float(min(0.95, max(0.65, 1.0 - cpu_share)))


class DaliFeed:
    """One DALI pipeline, fed ahead: `submit` feeds a batch and schedules its run; `take` returns
    that run's outputs. Runs complete in submission order, so `take` waits for its turn."""

    def __init__(self, batch_size: int, threads: int, device: str, device_id: int | None) -> None:
        from nvidia.dali import fn, pipeline_def, types

        # exec_dynamic: outputs outlive later runs (two batches use them at once) and can be bound
        # to the loader's CUDA stream. exec_pipelined=False: each schedule_run runs exactly the
        # batch fed before it (the pipelined executor's first run wants prefetch_queue_depth
        # batches fed at once); exec_async: it runs in DALI's threads while Python goes on, up to
        # prefetch_queue_depth runs in flight.
        @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=2,
                      exec_dynamic=True, exec_pipelined=False, exec_async=True)
        def decode_pipe():  # noqa: ANN202
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1, no_copy=True)
            extra = {}
            if device == "mixed":
                # affine=False: several ranks on a node would otherwise pin their decode threads to
                # the same cores; hw_decoder_load: see hw_decoder_load().
                extra = {"affine": False, "hw_decoder_load": hw_decoder_load(threads)}
            return fn.decoders.image(jpegs, device=device, output_type=types.RGB, **extra)

        self.pipe = decode_pipe()
        self.pipe.build()
        self._cond = threading.Condition()  # takers' turns
        self._submit_lock = threading.Lock()  # feed_input + schedule_run of one batch stay together
        self._fed = 0
        self._taken = 0

    def submit(self, arrays: list[np.ndarray]) -> int:
        """Feed one batch of encoded images and schedule its run; returns its ticket. Never waits for
        a run: a `take` waiting in ``outputs()`` holds no lock this needs."""
        with self._submit_lock:
            self.pipe.feed_input("jpegs", arrays)
            self.pipe.schedule_run()
            ticket = self._fed
            self._fed += 1
            return ticket

    def take(self, ticket: int, stream: Any = None) -> Any:
        """The decoded TensorList of run `ticket` (bound to CUDA `stream` when given), or the
        exception DALI raised for it. Every submitted ticket must be taken exactly once.

        Runs complete in submission order: a taker waits for its turn, then waits for its run in
        ``outputs()`` holding no lock, so the other assembler feeds the next batch meanwhile (DALI
        decodes it as soon as this run is done: up to ``prefetch_queue_depth`` = 2 runs in flight)."""
        with self._cond:
            self._cond.wait_for(lambda: self._taken == ticket)
        try:
            (out,) = self.pipe.outputs(stream) if stream is not None else self.pipe.outputs()
            return out
        except RuntimeError as e:  # that run failed; DALI goes on with the next one
            return e
        finally:
            with self._cond:
                self._taken += 1
                self._cond.notify_all()


@dataclass
class _GpuBatch:
    """A batch rendered on the loader stream, not yet handed over."""

    batch: dict
    ready: torch.cuda.Event
    keep: list  # DALI outputs the render read: released once `ready` has completed


class DaliAssembler:
    """Builds batches from DALI-decoded images (see the module docstring)."""

    def __init__(self, loader: DaliLoader) -> None:
        self.loader = loader
        self.cpu = CpuAssembler(loader.dataset, loader.policy, loader.buffers, lambda: loader.pool)
        self.gpu = loader.dali_device == "mixed"
        self.stream = torch.cuda.Stream(loader.device) if self.gpu else None
        self._feed: DaliFeed | None = None
        self._feed_lock = threading.Lock()
        self._retired: collections.deque[tuple[torch.cuda.Event, list]] = collections.deque()
        #: records DALI failed on (found by `_repair`): decoded on the CPU from then on
        self._cpu_only: set[int] = set()

    @property
    def feed(self) -> DaliFeed:
        with self._feed_lock:
            if self._feed is None:
                ld = self.loader
                device_id = (ld.device.index or 0) if self.gpu else None
                self._feed = DaliFeed(ld.batch_size, ld.num_workers, ld.dali_device, device_id)
            return self._feed

    def build(self, indices: np.ndarray, rng: np.random.Generator, k: int = 0, history: History | None = None) -> Any:
        """Batch k: DALI decodes while the plan is drawn; mosaic partners also come from the
        decoded samples of the `history`'s recent batches (kept as DALI output views or CUDA
        tensors; on the GPU they are read on this loader's stream only)."""
        if self.loader.source.mode == "raw":
            return self.cpu.build(indices, rng, k, history)
        decoded: list[Decoded] | None = None
        keep: list[Any] = []
        try:
            used = self._read(indices.tolist())
            on_cpu = [u in self._cpu_only for _, u in used]  # DALI failed on these before (read once: the other assembler may add)
            known = [p for p, c in enumerate(on_cpu) if c]
            fed = [p for p, c in enumerate(on_cpu) if not c]
            ticket = self.feed.submit([used[p][0] for p in fed]) if fed else None
            slots: list[Decoded | None] = [None] * len(used)
            for p, d in zip(known, self._cpu_decode([used[p][1] for p in known]), strict=True):
                slots[p] = d  # on the CPU while DALI decodes the rest
            used_idx = [u if d is None else d.index for d, (_, u) in zip(slots, used, strict=True)]
            state = rng.bit_generator.state
            if history is None:
                recent = []
                try:
                    plan = self.loader.dataset.plan(used_idx, rng)  # while DALI decodes
                finally:
                    out = self._take(ticket)
            else:  # tickets are taken in submission order, which two assemblers may swap: take first, then wait
                out = self._take(ticket)  # for the earlier batches' decodes (never the reverse)
                recent = history.recent(k) if self.loader.dataset.mosaic else []
                plan = self.loader.dataset.plan(used_idx, rng, [d.index for d in recent])
            if isinstance(out, Exception):  # DALI failed on some sample: find it, decode it on the CPU
                fixed, keep = self._repair([used_idx[p] for p in fed], [used[p][0] for p in fed], out)
            else:
                fixed, keep = (self._decoded(out, [used_idx[p] for p in fed]), [out]) if fed else ([], [])
            for p, d in zip(fed, fixed, strict=True):
                slots[p] = d
            decoded = [d for d in slots if d is not None]
            if [d.index for d in decoded] != used_idx:  # "skip" replaced a sample: the plan is redrawn for those used
                used_idx = [d.index for d in decoded]
                rng.bit_generator.state = state
                plan = self.loader.dataset.plan(used_idx, rng, [d.index for d in recent])
        finally:
            if history is not None:
                history.publish(k, decoded)  # also on failure: later batches must not wait for it
        if not self.gpu:
            return self.cpu.render(decoded + recent, plan)
        return self._render_gpu(keep, plan, decoded + recent, len(used_idx))

    def _take(self, ticket: int | None) -> Any:
        return None if ticket is None else self.feed.take(ticket, self.stream)

    def _decoded(self, out: Any, used: list[int]) -> list[Decoded]:
        """DALI's outputs as `Decoded` samples: numpy views of its buffers (CPU) or CUDA tensors."""
        if not self.gpu:
            images = [self._reduced(np.asarray(out[k]), u) for k, u in enumerate(used)]  # views of DALI's buffers, or smaller copies
            return [Decoded(img, self._scale(u, img.shape), u) for img, u in zip(images, used, strict=True)]
        with torch.cuda.stream(self.stream):
            images = [self._reduced_gpu(self.loader.to_torch(out[k]), u) for k, u in enumerate(used)]
        return [Decoded(t, self._scale(u, tuple(t.shape)), u) for t, u in zip(images, used, strict=True)]

    def _read(self, indices: list[int]) -> list[tuple[np.ndarray, int]]:
        """Encoded bytes of each sample (or its replacement under "skip"), read in the decode pool."""
        policy, src = self.loader.policy, self.loader.source
        return list(self.loader.pool.map(lambda i: policy.run(i, lambda j: (read_encoded(src, j), j)), indices))

    def _cpu_decode(self, indices: list[int]) -> list[Decoded]:
        """Samples decoded on the CPU in the loader's pool, under the `on_error` policy (a replacement
        under "skip" is decoded there too), uploaded to the loader's device on the GPU. Train mode
        decodes at reduced DCT where the output allows (every entropy-coded byte is still read, so a
        corrupt one is still found)."""
        if not indices:
            return []
        decoder, policy, reduce = self.cpu.decoder, self.loader.policy, self.loader.dataset.augment
        decoded = list(self.loader.pool.map(lambda i: policy.run(i, lambda j: decoder.decode(j, reduce=reduce)), indices))
        if not self.gpu:
            return decoded
        with torch.cuda.stream(self.stream):
            return [Decoded(torch.from_numpy(np.ascontiguousarray(d.image)).to(self.loader.device), d.scale, d.index) for d in decoded]

    def _repair(self, used: list[int], arrays: list[np.ndarray], error: Exception) -> tuple[list[Decoded], list[Any]]:
        """DALI failed the run of samples `used` (encoded `arrays`) without naming the sample. Feed
        halves of it again until each failing sample stands alone (a run of one that fails); those
        are decoded on the CPU under the `on_error` policy and remembered (`_cpu_only`), the rest
        are the halves' DALI decodes. Returns the samples in order and the DALI outputs they view."""
        log.warning("DALI could not decode a batch (%s); finding the samples it fails on",
                    str(error).splitlines()[0][:200])
        found: dict[int, Decoded] = {}
        bad: list[int] = []
        keep: list[Any] = []
        parts = _halves(list(range(len(used))))
        while parts:
            part = parts.pop()
            out = self._take(self.feed.submit([arrays[p] for p in part]))
            if not isinstance(out, Exception):
                keep.append(out)
                found.update(zip(part, self._decoded(out, [used[p] for p in part]), strict=True))
            elif len(part) == 1:
                bad.append(part[0])
            else:
                parts += _halves(part)
        bad.sort()
        self._cpu_only.update(used[p] for p in bad)
        if bad:
            log.warning("DALI cannot decode %s: decoded on the CPU from now on",
                        ", ".join(self.loader.source.describe(used[p]) for p in bad))
        found.update(zip(bad, self._cpu_decode([used[p] for p in bad]), strict=True))
        return [found[p] for p in range(len(used))], keep

    def _reduced(self, img: np.ndarray, u: int) -> np.ndarray:
        """A train image at the size the CPU loaders decode it to (`Decoder.min_size`: a reduced
        DCT scale when the training shape is at most half the original), by area averaging (what
        a reduced-DCT decode is close to). DALI decodes at full size; rendered from that in one
        bilinear resample, its images were far sharper than Ultralytics' (mean |Laplacian| 7.4 vs
        4.8 at 576x324 -> 256, `tests/test_augment_parity.py`). With resample="ultralytics":
        Ultralytics' load image, a bilinear resize of the full decode (`Decoder.to_load_size`)."""
        if not self.loader.augment:
            return img
        w0, h0 = (int(v) for v in self.loader.source.sizes[u])
        decoder = self.cpu.decoder
        if decoder.resample == "ultralytics":
            return decoder.to_load_size(Decoded(img, (w0 / img.shape[1], h0 / img.shape[0]), u), w0, h0).image
        min_size = decoder.min_size(w0, h0)
        w, h = scaled_size(img.shape[1], img.shape[0], min_size)
        return img if (w, h) == (img.shape[1], img.shape[0]) else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)

    def _reduced_gpu(self, img: torch.Tensor, u: int) -> torch.Tensor:
        """A train image on the GPU: DALI's full-size decode (the torch executor resamples it once,
        at sub-pixel positions), or with resample="ultralytics" first Ultralytics' load image, its
        bilinear resize to the load size (`resize_hwc`, on the loader's stream)."""
        if not self.loader.augment or self.cpu.decoder.resample != "ultralytics":
            return img
        w0, h0 = (int(v) for v in self.loader.source.sizes[u])
        size = self.cpu.decoder.load_size(w0, h0)
        return img if (img.shape[1], img.shape[0]) == size else resize_hwc(img, size)

    def _scale(self, u: int, shape: tuple[int, ...]) -> tuple[float, float]:
        w0, h0 = self.loader.source.sizes[u]
        return (w0 / shape[1], h0 / shape[0])

    def _render_gpu(self, keep: list[Any], plan: Any, decoded: list[Decoded], n: int) -> _GpuBatch:
        """Render on the loader's stream; the consumer's stream waits on `ready` at hand-off.
        `decoded`: the batch's n samples, then the partners' from recent batches."""
        with torch.cuda.stream(self.stream):
            images = [d.image for d in decoded]
            img = render_batch(plan, images, [d.scale for d in decoded], fuse=self.loader.fuse)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return _GpuBatch(collate(img, plan, self.loader.source, [d.index for d in decoded[:n]]), ready, [*keep, images])

    def hand_off(self, item: Any) -> dict:
        """In the consumer's thread: make its current stream wait for the batch (no host sync)."""
        if not isinstance(item, _GpuBatch):
            return item
        consumer = torch.cuda.current_stream(self.loader.device)
        consumer.wait_event(item.ready)
        item.batch["img"].record_stream(consumer)
        self._retired.append((item.ready, item.keep))
        while self._retired and self._retired[0][0].query():  # DALI buffers whose readers finished
            self._retired.popleft()
        return item.batch


def _halves(part: list[int]) -> list[list[int]]:
    """`part` split in two (a run of one is not split)."""
    h = len(part) // 2
    return [part[:h], part[h:]] if h else [part]


class DaliLoader(SainetLoader):
    kind = "dali"
    assemblers = 2  # one batch is fed to DALI while the other is rendered (DaliFeed keeps the order)
    #: render with the torch.compile'd executor (two fused regions, ~2 GB of device traffic per
    #: batch of 32 at 1440x832 instead of ~60: benchmarks/gpu_budget.py); eager if compiling fails.
    #: SAINET_FUSE=0 turns it off (the first batch then skips the compile, ~1 min).
    fuse = os.environ.get("SAINET_FUSE", "1") != "0"

    def __init__(self, source, *, device: str | None = None, **kw) -> None:  # noqa: ANN001 - Source
        if not dali_available():
            raise ImportError("the dali loader needs nvidia-dali: pip install 'sainet[dali]' (CUDA 13) or 'sainet[dali-cu12]'")
        want_gpu = device not in ("cpu",) and torch.cuda.is_available()
        self.device = torch.device(device if device and device != "cpu" else "cuda") if want_gpu else torch.device("cpu")
        self.dali_device = "mixed" if want_gpu else "cpu"
        super().__init__(source, **kw)
        log.info("dali loader: decoders.image on %s", self.dali_device)

    def _builder(self) -> DaliAssembler:
        return DaliAssembler(self)

    def _decoded_bytes(self, w0: int, h0: int) -> int:
        """What a decoded train sample's size really is, for sizing the partner history: on the GPU
        (`mixed`) DALI's full-size decode (no reduced DCT); in CPU mode the CPU loaders' reduced size
        (`DaliAssembler._reduced` shrinks DALI's output to it), and with resample="ultralytics" the
        load size on either; a raw store is read by the CPU path."""
        if self.source.mode == "raw" or (self.augment and (self.dali_device == "cpu" or self.dataset.resample != "fast")):
            return super()._decoded_bytes(w0, h0)
        return w0 * h0 * 3

    def reset(self) -> None:
        """Stop the epoch (batches still queued are dropped), then let the loader stream finish
        reading the DALI buffers of those batches before they go (once per epoch: cheap)."""
        super().reset()
        stream = getattr(getattr(self, "builder", None), "stream", None)
        if stream is not None:
            stream.synchronize()

    def _hand_off(self, item: Any) -> dict:
        return self.builder.hand_off(item)

    def to_torch(self, t: Any) -> torch.Tensor:
        """A decoded GPU sample as torch, without leaving the device (DLPack, else DALI's own copy),
        ordered on the current (loader) stream."""
        try:
            return torch.from_dlpack(t)
        except (TypeError, RuntimeError, AttributeError):
            from nvidia.dali.plugin.pytorch import feed_ndarray

            out = torch.empty(tuple(t.shape()), dtype=torch.uint8, device=self.device)
            feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
            return out
