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

__all__ = ["CpuAssembler"]


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

    def build(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        """Decode in the pool while this thread plans the batch, then render in the pool."""
        scratch, pool = self.scratch(), self.pool()
        if not self.dataset.augment:  # eval: decode and letterbox straight into the batch, no render phase
            out, img = self.buffers.get(len(indices))
            arr = out.numpy()
            done = list(pool.map(lambda k: self.decode(int(indices[k]), k, scratch, arr[k]), range(len(indices))))
            used = [d.index for d in done]
            return collate(img, self.dataset.plan(used, rng), self.dataset.source, used)
        futures = [pool.submit(self.decode, int(i), k, scratch) for k, i in enumerate(indices)]
        state = rng.bit_generator.state
        plan = self.dataset.plan(indices.tolist(), rng)
        decoded = [f.result() for f in futures]
        used = [d.index for d in decoded]
        if used != indices.tolist():  # a bad sample was replaced (on_error="skip"): plan what was used
            rng.bit_generator.state = state
            plan = self.dataset.plan(used, rng)
        return self.render(decoded, plan)

    def render(self, decoded: list[Decoded], plan: BatchPlan) -> dict:
        """Render a planned batch with the OpenCV executor in the pool (also the DALI CPU path)."""
        pool = self.pool()
        n = len(decoded)
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
        return collate(img, plan, self.dataset.source, [d.index for d in decoded])
