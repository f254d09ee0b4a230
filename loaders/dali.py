"""DALI backend: a DALI pipeline decodes the store's JPEGs; the plan is applied after it.

The pipeline is an external source of encoded bytes (this rank's shard of the epoch order, read
zero-copy from the store) into ``fn.decoders.image``: ``device="mixed"`` (nvJPEG) when CUDA is
present, ``"cpu"`` with ``device_id=None`` otherwise. On the GPU the decoded tensors stay on the
device (DLPack into torch) and the torch executor renders the batch there: no host round trip.
On the CPU the decoded arrays go to the OpenCV executor (torch float ops are the wrong tool there).
Raw stores need no decoding and use the plain path.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from loaders.augment.plan import plan_batch
from loaders.augment.torch_exec import render_batch
from loaders.loader import SainetLoader, _Decoded
from sainet.errors import CorruptImage
from sainet.imaging import probe

__all__ = ["DaliLoader", "dali_available"]

log = logging.getLogger(__name__)


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class DaliLoader(SainetLoader):
    kind = "dali"
    assemblers = 1  # one pipeline: its outputs are only valid until its next run

    def __init__(self, source, *, device: str | None = None, **kw) -> None:  # noqa: ANN001 - Source
        if not dali_available():
            raise ImportError("the dali loader needs nvidia-dali: pip install 'sainet[dali]' (CUDA 13) or 'sainet[dali-cu12]'")
        super().__init__(source, **kw)
        want_gpu = device not in ("cpu",) and torch.cuda.is_available()
        self.device = torch.device(device if device and device != "cpu" else "cuda") if want_gpu else torch.device("cpu")
        self.dali_device = "mixed" if want_gpu else "cpu"
        self._pipe = None
        self._pipe_lock = threading.Lock()
        log.info("dali loader: decoders.image on %s", self.dali_device)

    def _pipeline(self):  # noqa: ANN202 - nvidia.dali.Pipeline
        if self._pipe is None:
            with self._pipe_lock:
                if self._pipe is None:
                    from nvidia.dali import fn, pipeline_def, types

                    device_id = (self.device.index or 0) if self.dali_device == "mixed" else None

                    @pipeline_def(batch_size=self.batch_size, num_threads=self.num_workers, device_id=device_id,
                                  prefetch_queue_depth=1, exec_dynamic=True)
                    def decode_pipe():  # noqa: ANN202
                        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1, no_copy=True)
                        return fn.decoders.image(jpegs, device=self.dali_device, output_type=types.RGB)

                    pipe = decode_pipe()
                    pipe.build()
                    self._pipe = pipe
        return self._pipe

    def _to_torch(self, t):  # noqa: ANN001, ANN202 - a DALI TensorGPU
        """A decoded GPU tensor as torch, without leaving the device (DLPack, else DALI's own copy)."""
        try:
            return torch.from_dlpack(t)
        except (TypeError, RuntimeError, AttributeError):
            from nvidia.dali.plugin.pytorch import feed_ndarray

            out = torch.empty(tuple(t.shape()), dtype=torch.uint8, device=self.device)
            feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
            return out

    def _encoded(self, i: int) -> tuple[np.ndarray, int]:
        """The sample's bytes as a uint8 array (CRC and header checked), under the error policy."""

        def attempt(j: int) -> tuple[np.ndarray, int]:
            payload = self.source.payload(j)
            probe(payload, self.source.describe(j))
            return np.frombuffer(payload, np.uint8), j

        return self._with_policy(i, attempt)

    def _run_dali(self, arrays: list[np.ndarray], used: list[int]) -> list:
        pipe = self._pipeline()
        pipe.feed_input("jpegs", arrays)
        try:
            (out,) = pipe.run()
        except RuntimeError as e:
            # A payload that passed the header check but fails to decode: find it on the CPU path.
            for i in used:
                try:
                    self._decode_one(i, 0, False)
                except CorruptImage:
                    if self.on_error == "raise":
                        raise
            raise CorruptImage(self.source.where, f"DALI decode failed: {e}") from None
        return [out[k] for k in range(len(arrays))]

    def build_batch(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        if self.source.mode == "raw":
            return super().build_batch(indices, rng)
        enc = [self._encoded(int(i)) for i in indices]
        used = [u for _, u in enc]
        decoded = self._run_dali([a for a, _ in enc], used)
        src = self.source
        if self.dali_device == "cpu":
            images = [np.asarray(t) for t in decoded]  # views of DALI's buffers, valid until the next run
            return self._assemble([_Decoded(img, (src.sizes[u][0] / img.shape[1], src.sizes[u][1] / img.shape[0]), u)
                                   for img, u in zip(images, used, strict=True)], rng)
        images = [self._to_torch(t) for t in decoded]
        scales = [(src.sizes[u][0] / img.shape[1], src.sizes[u][1] / img.shape[0]) for img, u in zip(images, used, strict=True)]
        plan = plan_batch(rng, [tuple(src.sizes[u]) for u in used], [(src.cls[u], src.boxes[u]) for u in used],
                          self.imgsz, self.dataset.hyp, augment=self.augment, mosaic=self.dataset.mosaic)
        return self._pack(render_batch(plan, images, scales), plan, used)
