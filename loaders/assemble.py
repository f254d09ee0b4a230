"""One batch on the CPU: read + decode (pool) while the plan is drawn, render (pool), collate.

The stages meet here and nowhere else: `read.ErrorPolicy` wraps each sample's read and decode,
`decode.Decoder` gives pixels, `LoaderDataset.plan` gives the augment plan, the OpenCV executor
(`augment.cpu`) renders it into a `buffers.BatchBuffers` tensor, and `collate.collate` makes the
Ultralytics batch dict. Decoding, warping and colour ops release the GIL, so the pool's threads run
them in parallel; the plan needs only the index (sizes and labels), so it is drawn while the
samples decode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from loaders.augment.cpu import Cover, finish_image, mixup_partners, render_image
from loaders.augment.plan import BatchPlan
from loaders.collate import collate
from loaders.dataset import LoaderDataset
from loaders.decode import Decoded, Decoder, Scratch
from loaders.read import ErrorPolicy

if TYPE_CHECKING:  # torch-free at import: the assembler processes (loaders/procworker.py) import this module
    from loaders.buffers import BatchBuffers

__all__ = ["CpuAssembler", "History", "PartnerHistory"]


class PartnerHistory(Protocol):
    """What a batch builder needs of a partner history: `History` (one process) or
    `shared_history.SharedHistory` (the assembler processes, in shared memory)."""

    def scratch(self, g: int) -> Any: ...  # batch g's decode buffers (`decode.Scratch`'s `get`)

    def publish(self, g: int, decoded: list[Decoded] | None) -> None: ...

    def recent(self, g: int) -> list[Decoded]: ...


class History:
    """The decoded samples of a rank's recent batches, shared by the assemblers and kept for the
    loader's lifetime: batch g's mosaic partners come from batches g-P..g-1 (P = `batches`) and
    from g itself, as Ultralytics' come from each worker's buffer of the last min(n, 8 x batch, 1000)
    images it loaded, a buffer its persistent workers keep from epoch to epoch.

    Batches are numbered across epochs (g = epoch x batches per epoch + k), so the first batches of
    an epoch draw from the last ones of the epoch before, as Ultralytics' do. Only the very first
    batch of a run has no history. With P = 0 a batch's partners are its own samples.

    Deterministic: what batch g may draw from is fixed by the order of the epochs, not by which
    thread finished first — batch g waits for the decodes of batches g-P..g-1 of its own pass
    (already submitted: the producer submits in order), never for their rendering. Batches before
    the pass's first (`begin`) that are not held — a resume from a state dict, an epoch abandoned
    before its end, a new process — are decoded again by `fill` (the loader's: their sample indices
    are a pure function of (seed, epoch)), so a resumed run draws the same partners as one that
    never stopped. Without `fill` (the dali loader) such batches give no partners.

    Memory (unchanged by the cross-epoch history): batch g decodes into scratch set g mod (P + A),
    A the batches assembled at once, and nothing else is kept: P + A sets of one batch's decoded
    samples each. The producer starts batch g + P + A only once batch g + P — the last one that may
    read set g — is built (it keeps at most A batches in assembly, in order), so a set is never
    overwritten while read; taking a set forgets the batch that held it before.
    """

    def __init__(self, batches: int, assemblers: int, fill: Callable[[int, Scratch], list[Decoded]] | None = None) -> None:
        self.batches = batches
        self._sets = [Scratch() for _ in range(batches + assemblers)]
        self._owner: list[int | None] = [None] * len(self._sets)
        self._fill = fill
        self._first = 0  # the first batch of the pass in progress: earlier ones are past
        self._decoded: dict[int, list[Decoded] | None] = {}
        self._ready: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def begin(self, first: int) -> None:
        """A pass starts at batch `first`: keep what batches first-P..first-1 published (their sets
        still hold it), forget the rest (a failed batch's None included: it is decoded again)."""
        with self._lock:
            self._first = first
            keep = [j for j, d in self._decoded.items() if first - self.batches <= j < first and d is not None]
            self._decoded = {j: self._decoded[j] for j in keep}
            self._ready = {j: self._ready[j] for j in keep}

    def scratch(self, g: int) -> Scratch:
        """Batch g's decode buffers (the set's previous batch is forgotten)."""
        s = g % len(self._sets)
        with self._lock:
            old = self._owner[s]
            if old is not None and old != g:
                self._decoded.pop(old, None)
                self._ready.pop(old, None)
            self._owner[s] = g
        return self._sets[s]

    def publish(self, g: int, decoded: list[Decoded] | None) -> None:
        """Batch g's decoded samples (None: it failed; the epoch is ending) for later batches to share."""
        with self._lock:
            self._decoded[g] = decoded
            for old in [j for j in self._decoded if j < g - self.batches]:
                self._decoded.pop(old, None)
                self._ready.pop(old, None)
            event = self._ready.setdefault(g, threading.Event())
        event.set()

    def recent(self, g: int) -> list[Decoded]:
        """The decoded samples of batches max(0, g-P)..g-1, in batch order, each sample once (at its
        latest place: Ultralytics' buffer holds distinct images, as a reloaded one is cached)."""
        out: list[Decoded] = []
        for j in range(max(0, g - self.batches), g):
            out.extend(self._get(j))
        last = {d.index: k for k, d in enumerate(out)}
        return [d for k, d in enumerate(out) if last[d.index] == k]

    def _get(self, j: int) -> list[Decoded]:
        with self._lock:
            event = self._ready.get(j)
            claim = event is None and j < self._first  # a past batch not held: decode it again, once
            if claim and self._fill is None:
                return []
            if event is None:
                event = self._ready[j] = threading.Event()
        if claim:
            decoded = None
            try:
                decoded = self._fill(j, self.scratch(j))  # type: ignore[misc]
            finally:
                self.publish(j, decoded)
        event.wait()
        with self._lock:
            return self._decoded.get(j) or []


class CpuAssembler:
    """Builds batches of `dataset` with the decode threads of `pool()`."""

    def __init__(self, dataset: LoaderDataset, policy: ErrorPolicy, buffers: BatchBuffers,
                 pool: Callable[[], ThreadPoolExecutor]) -> None:
        self.dataset, self.policy, self.buffers, self.pool = dataset, policy, buffers, pool
        self.decoder = Decoder(dataset.source, dataset.imgsz, dataset.resample, dataset.fit)
        self._local = threading.local()  # decode buffers, one set per batch being assembled

    def scratch(self) -> Scratch:
        """The decode buffers of the batch assembled by the calling thread (reused batch after batch)."""
        if not hasattr(self._local, "scratch"):
            self._local.scratch = Scratch()
        return self._local.scratch

    def decode(self, i: int, slot: int, scratch: Scratch | None = None, into: np.ndarray | None = None) -> Decoded:
        """Sample i (or the next good one, under ``on_error="skip"``), decoded for this loader's mode."""
        dec = self.decoder
        if into is not None:
            return self.policy.run(i, lambda j: dec.decode_into(j, into, scratch, slot))
        return self.policy.run(i, lambda j: dec.decode(j, reduce=self.dataset.augment, scratch=scratch, slot=slot))

    def build(self, indices: np.ndarray, rng: np.random.Generator, k: int = 0, history: PartnerHistory | None = None) -> dict:
        """Decode in the pool while this thread plans the batch, then render in the pool. `k`: the
        batch number across epochs, which keys the partner `history` (None: partners from this batch only)."""
        if not self.dataset.augment:  # eval: decode and letterbox straight into the batch, no render phase
            out, img = self.buffers.get(len(indices))
            plan, used = self.build_into(indices, rng, out.numpy())
            return collate(img, plan, self.dataset.source, used)
        decoded, plan = self.prepare(indices, rng, k, history)
        return self.render(decoded, plan)

    def build_into(self, indices: np.ndarray, rng: np.random.Generator, arr: np.ndarray, k: int = 0,
                   history: PartnerHistory | None = None) -> tuple[BatchPlan, list[int]]:
        """`build` with the pixels written into `arr` (n, H, W, 3) uint8 (an assembler process's
        shared-memory slot): returns the plan and the samples used, what `collate` needs."""
        if not self.dataset.augment:
            scratch = self.scratch()
            done = list(self.pool().map(lambda j: self.decode(int(indices[j]), j, scratch, arr[j]), range(len(indices))))
            used = [d.index for d in done]
            return self.dataset.plan(used, rng), used
        decoded, plan = self.prepare(indices, rng, k, history)
        self.render_into(decoded, plan, arr)
        return plan, [d.index for d in decoded[: len(plan.images)]]

    def prepare(self, indices: np.ndarray, rng: np.random.Generator, k: int,
                history: PartnerHistory | None) -> tuple[list[Decoded], BatchPlan]:
        """A train batch decoded (in the pool) and planned (here, meanwhile): its samples then the
        partners' from `history`, and the plan."""
        pool = self.pool()
        scratch = history.scratch(k) if history is not None else self.scratch()
        futures = [pool.submit(self.decode, int(i), j, scratch) for j, i in enumerate(indices)]
        decoded = None
        try:
            recent = history.recent(k) if history is not None and self.dataset.mosaic else []
            state = rng.bit_generator.state
            plan = self.dataset.plan(indices.tolist(), rng, [d.index for d in recent])
            decoded = [f.result() for f in futures]
        finally:
            if history is not None:
                history.publish(k, decoded)  # also on failure: later batches must not wait for it
        used = [d.index for d in decoded]
        if used != indices.tolist():  # a bad sample was replaced (on_error="skip"): plan what was used
            rng.bit_generator.state = state
            plan = self.dataset.plan(used, rng, [d.index for d in recent])
        return decoded + recent, plan

    def redecode(self, indices: np.ndarray, scratch: Scratch) -> list[Decoded]:
        """A past batch decoded again into `scratch`, for the partner history (`History.fill`)."""
        return list(self.pool().map(lambda j: self.decode(int(indices[j]), j, scratch), range(len(indices))))

    def render(self, decoded: list[Decoded], plan: BatchPlan) -> dict:
        """Render a planned batch with the OpenCV executor in the pool (also the DALI CPU path).
        `decoded`: the batch's samples, then any partners' (only the first len(plan.images) are output)."""
        n = len(plan.images)
        out, img = self.buffers.get(n)
        self.render_into(decoded, plan, out.numpy())
        return collate(img, plan, self.dataset.source, [d.index for d in decoded[:n]])

    def render_into(self, decoded: list[Decoded], plan: BatchPlan, arr: np.ndarray) -> None:
        """`render`'s pixels, written into `arr` (n, H, W, 3) uint8."""
        pool = self.pool()
        n = len(plan.images)
        images, scales = [d.image for d in decoded], [d.scale for d in decoded]
        augment = self.dataset.augment
        mixup = augment and any(ip.mixup is not None for ip in plan.images)

        covers: list[Cover] = [None] * n  # what each image painted: HSV converts only that

        def one(k: int) -> None:
            covers[k] = render_image(plan.images[k], images, scales, arr[k], resize=self.decoder.resample == "fast")
            if augment and not mixup:  # HSV right away; with mixup it must wait for the partners
                finish_image(plan, k, arr, {}, covers=covers)

        list(pool.map(one, range(n)))
        if mixup:
            partners = mixup_partners(plan, arr)
            list(pool.map(lambda k: finish_image(plan, k, arr, partners, covers=covers), range(n)))
