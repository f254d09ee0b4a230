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

import numpy as np

from loaders.augment.cpu import finish_image, mixup_partners, render_image
from loaders.augment.plan import BatchPlan
from loaders.buffers import BatchBuffers
from loaders.collate import collate
from loaders.dataset import LoaderDataset
from loaders.decode import Decoded, Decoder, Scratch
from loaders.read import ErrorPolicy

__all__ = ["CpuAssembler", "History"]


class History:
    """The decoded samples of one epoch's recent batches, shared by the assemblers: batch k's mosaic
    partners come from batches k-P..k (P = `batches`), as Ultralytics' come from each worker's
    buffer of the last min(n, 8 x batch, 1000) images it loaded. With P = 0 a batch's partners are
    its own samples (each sample decoded once either way; P costs P batches of decoded pixels).

    Deterministic: what batch k may draw from is fixed by the epoch's order, not by which thread
    finished first — batch k waits for the decodes of batches k-P..k-1 (already submitted: the
    producer submits in order), never for their rendering. After a mid-epoch resume at batch s,
    batches before s are not decoded again: the first P batches draw from fewer batches.

    Memory: batch k decodes into scratch set k mod (P + A), A the batches assembled at once. The
    producer starts batch k + P + A only once batch k + P — the last one that may read set k — is
    built (it keeps at most A batches in assembly, in order), so a set is never overwritten while read.
    """

    def __init__(self, batches: int, assemblers: int, start: int = 0, sets: list[Scratch] | None = None) -> None:
        self.batches, self.start = batches, start
        self._sets = sets or [Scratch() for _ in range(batches + assemblers)]  # kept by the loader across epochs
        if len(self._sets) < batches + assemblers:
            raise ValueError(f"{len(self._sets)} scratch sets for {batches} partner batches and {assemblers} assemblers")
        self._decoded: dict[int, list[Decoded] | None] = {}
        self._ready: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def scratch(self, k: int) -> Scratch:
        return self._sets[k % len(self._sets)]

    def _event(self, k: int) -> threading.Event:
        with self._lock:
            return self._ready.setdefault(k, threading.Event())

    def publish(self, k: int, decoded: list[Decoded] | None) -> None:
        """Batch k's decoded samples (None: it failed; the epoch is ending) for later batches to share."""
        with self._lock:
            self._decoded[k] = decoded
            for old in [j for j in self._decoded if j < k - self.batches]:
                self._decoded.pop(old, None)
                self._ready.pop(old, None)
        self._event(k).set()

    def recent(self, k: int) -> list[Decoded]:
        """The decoded samples of batches max(start, k-P)..k-1, in batch order."""
        out: list[Decoded] = []
        for j in range(max(self.start, k - self.batches), k):
            self._event(j).wait()
            with self._lock:
                out.extend(self._decoded.get(j) or [])
        return out


class CpuAssembler:
    """Builds batches of `dataset` with the decode threads of `pool()`."""

    def __init__(self, dataset: LoaderDataset, policy: ErrorPolicy, buffers: BatchBuffers,
                 pool: Callable[[], ThreadPoolExecutor]) -> None:
        self.dataset, self.policy, self.buffers, self.pool = dataset, policy, buffers, pool
        self.decoder = Decoder(dataset.source, dataset.imgsz)
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

    def build(self, indices: np.ndarray, rng: np.random.Generator, k: int = 0, history: History | None = None) -> dict:
        """Decode in the pool while this thread plans the batch, then render in the pool. `k`: the
        batch number, which keys the partner `history` (None: partners from this batch only)."""
        pool = self.pool()
        if not self.dataset.augment:  # eval: decode and letterbox straight into the batch, no render phase
            scratch = self.scratch()
            out, img = self.buffers.get(len(indices))
            arr = out.numpy()
            done = list(pool.map(lambda j: self.decode(int(indices[j]), j, scratch, arr[j]), range(len(indices))))
            used = [d.index for d in done]
            return collate(img, self.dataset.plan(used, rng), self.dataset.source, used)
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
        return self.render(decoded + recent, plan)

    def render(self, decoded: list[Decoded], plan: BatchPlan) -> dict:
        """Render a planned batch with the OpenCV executor in the pool (also the DALI CPU path).
        `decoded`: the batch's samples, then any partners' (only the first len(plan.images) are output)."""
        pool = self.pool()
        n = len(plan.images)
        out, img = self.buffers.get(n)
        arr = out.numpy()
        images, scales = [d.image for d in decoded], [d.scale for d in decoded]
        augment = self.dataset.augment
        mixup = augment and any(ip.mixup is not None for ip in plan.images)

        def one(k: int) -> None:
            render_image(plan.images[k], images, scales, arr[k])
            if augment and not mixup:  # HSV right away; with mixup it must wait for the partners
                finish_image(plan, k, arr, {})

        list(pool.map(one, range(n)))
        if mixup:
            partners = mixup_partners(plan, arr)
            list(pool.map(lambda k: finish_image(plan, k, arr, partners), range(n)))
        return collate(img, plan, self.dataset.source, [d.index for d in decoded[:n]])
