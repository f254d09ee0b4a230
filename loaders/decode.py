"""Decode stage: a payload to pixels, in the decode threads (libjpeg-turbo releases the GIL).

Contract: `Decoder.decode(i)` returns a `Decoded` — the image (HxWx3 uint8 RGB, showing the
whole original content at some scale), the `scale` from its pixels to original coordinates, and the
sample index it came from. The augment plan is made in original coordinates, so the executor only
needs that scale. Three ways to get there, each chosen to avoid work:

- raw stores: no decode; the image is a view of the letterboxed frame in the store (zero-copy).
- train: JPEGs far larger than the training shape decode at a reduced DCT scale (1/2, 1/4, 1/8).
- eval (`decode_into`): the letterboxed result goes straight into the batch tensor; when no resize
  is needed and the image fills whole rows, libjpeg-turbo decodes into the batch itself.

Decoded pixels go into `Scratch` buffers reused batch after batch (page faults are expensive).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from loaders.sources import Source
from sainet.core.geometry import PAD_VALUE, letterbox, letterbox_params
from sainet.core.imaging import ImageInfo, decode_rgb, probe, scaled_bytes

__all__ = ["Decoded", "Decoder", "Scratch"]


@dataclass
class Decoded:
    image: np.ndarray
    scale: tuple[float, float]  # decoded pixels -> original coordinates
    index: int  # the sample actually used (differs from the asked one after a skip)


class Scratch:
    """Decode buffers of one batch in assembly, one per slot (the sample's place in the batch).

    Each assembling thread owns one `Scratch`; a slot's buffer grows to the largest image seen
    there and is then reused, so a steady state decodes without allocating.
    """

    def __init__(self) -> None:
        self._buffers: list[bytearray] = []

    def get(self, slot: int, need: int) -> bytearray:
        while len(self._buffers) <= slot:
            self._buffers.append(bytearray(0))
        if len(self._buffers[slot]) < need:
            self._buffers[slot] = bytearray(need)
        return self._buffers[slot]


#: how train images are resampled: ``"fast"`` (a reduced-DCT decode and one resample: the speed) or
#: ``"ultralytics"`` (Ultralytics' two: a full decode, its bilinear resize to the load size, then the
#: warp; its sharpness at every decode ratio, see benchmarks/README.md "Augment parity image by image")
RESAMPLE = ("fast", "ultralytics")


def check_resample(resample: str) -> str:
    """`resample` if it is one of `RESAMPLE`, else ValueError."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample {resample!r}: one of {', '.join(RESAMPLE)}")
    return resample


class Decoder:
    """Decodes the samples of one source for a training shape `imgsz` (h, w); `resample`: `RESAMPLE`."""

    def __init__(self, source: Source, imgsz: tuple[int, int], resample: str = "fast",
                 fit: tuple[int, int] | None = None) -> None:
        self.source, self.imgsz, self.resample = source, imgsz, check_resample(resample)
        self.fit = fit  # eval: the letterbox's size inside the batch shape (`LoaderDataset.fit`)
        self._local = threading.local()  # each decode thread's full-size buffer (resample "ultralytics")

    def min_size(self, w0: int, h0: int) -> tuple[int, int] | None:
        """The smallest (w, h) a train decode of a w0 x h0 image needs: its size at the training
        shape when that is at most half the original (libjpeg-turbo's DCT scaling then decodes at
        1/2, 1/4 or 1/8 instead of full size), else None (full size)."""
        H, W = self.imgsz
        r = min(H / h0, W / w0)
        return (max(1, math.ceil(w0 * r)), max(1, math.ceil(h0 * r))) if r <= 0.5 else None

    def decode(self, i: int, *, reduce: bool, scratch: Scratch | None = None, slot: int = 0) -> Decoded:
        """Sample i's content. `reduce`: allow a reduced-DCT decode when the training shape is
        at most half the original (train mode; eval decodes at full size, as Ultralytics does)."""
        src = self.source
        w0, h0 = (int(v) for v in src.sizes[i])
        payload = src.payload(i)
        two_stage = reduce and self.resample == "ultralytics"
        if src.mode == "raw":
            frame, (left, top, nw, nh) = self._frame(payload), src.raw_content(i)
            d = Decoded(frame[top : top + nh, left : left + nw], (w0 / nw, h0 / nh), i)
            return self.to_load_size(d, w0, h0, scratch, slot) if two_stage else d
        name = src.describe(i)
        info = probe(payload, name)
        if two_stage:  # full size, as Ultralytics' imread, then its resize
            img = decode_rgb(payload, name, info=info, buffer=self._full_buffer(info, w0, h0, scratch, slot))
            return self.to_load_size(Decoded(img, (w0 / img.shape[1], h0 / img.shape[0]), i), w0, h0, scratch, slot)
        min_size = self.min_size(w0, h0) if reduce else None
        buf = scratch.get(slot, scaled_bytes(info, min_size)) if scratch is not None else None  # the reduced size, not the full
        img = decode_rgb(payload, name, min_size=min_size, info=info, buffer=buf)
        return Decoded(img, (w0 / img.shape[1], h0 / img.shape[0]), i)

    def load_size(self, w0: int, h0: int) -> tuple[int, int]:
        """Ultralytics' `load_image` size in train mode: the long side at the training size's (rounded
        up, as its ``math.ceil``); larger than the original where the training size is."""
        size = max(self.imgsz)
        r = size / max(w0, h0)
        return (w0, h0) if r == 1 else (min(math.ceil(w0 * r), size), min(math.ceil(h0 * r), size))

    def train_bytes(self, w0: int, h0: int) -> int:
        """An upper bound of the bytes a w0 x h0 train image is decoded to, for this `resample` (with
        "ultralytics" the load-size image; its full-size decode is a transient)."""
        if self.resample == "ultralytics":
            w, h = self.load_size(w0, h0)
            return w * h * 3
        return scaled_bytes(ImageInfo("jpeg", w0, h0, 3), self.min_size(w0, h0))

    def _full_buffer(self, info: ImageInfo, w0: int, h0: int, scratch: Scratch | None, slot: int) -> bytearray | None:
        """Where a two-stage train decode puts the full-size image. The slot's buffer only when the
        stored image (not the original: a store packed with a max size holds a smaller one) decodes at
        the load size as it is (it is then the sample's image, with no resize to follow); else the
        calling thread's own, which the resize into the slot empties before the thread decodes again
        (one per decode thread, not one per slot: no pages faulted in per image; never the resize's
        destination). None without `scratch` (a fresh array, as every decode without one)."""
        if scratch is None:
            return None
        need = scaled_bytes(info, None)
        if info.orientation == 1 and (info.width, info.height) == self.load_size(w0, h0):
            return scratch.get(slot, need)
        return self._thread_buffer(need)

    def _thread_buffer(self, need: int) -> bytearray:
        """The calling decode thread's buffer for an image it consumes before its next decode (a full
        size decode that is resized or letterboxed at once), grown to the largest seen."""
        buf = getattr(self._local, "full", None)
        if buf is None or len(buf) < need:
            buf = self._local.full = bytearray(need)
        return buf

    def to_load_size(self, d: Decoded, w0: int, h0: int, scratch: Scratch | None = None, slot: int = 0) -> Decoded:
        """Ultralytics' `load_image` in train mode: resized to `load_size` with a bilinear `cv2.resize`."""
        w, h = self.load_size(w0, h0)
        if (d.image.shape[1], d.image.shape[0]) == (w, h):
            return d
        out = None
        if scratch is not None:
            out = np.frombuffer(scratch.get(slot, w * h * 3), np.uint8, w * h * 3).reshape(h, w, 3)
        img = cv2.resize(np.ascontiguousarray(d.image), (w, h), dst=out, interpolation=cv2.INTER_LINEAR)
        return Decoded(img, (w0 / w, h0 / h), d.index)

    def decode_into(self, i: int, into: np.ndarray, scratch: Scratch | None = None, slot: int = 0) -> Decoded:
        """Eval: sample i letterboxed to ``into.shape`` and written into `into` (a batch row). With a
        `scratch` (the loader's) a decode that needs resizing goes through the calling thread's own
        buffer: one full-size image per decode thread, not one per slot of the batch."""
        src = self.source
        payload = src.payload(i)
        if src.mode == "raw":
            frame = self._frame(payload)
            if into.shape == frame.shape and self.fit is None:  # packed at this very shape: the frame is the eval image
                np.copyto(into, frame)
            else:
                left, top, nw, nh = src.raw_content(i)
                letterbox(frame[top : top + nh, left : left + nw], *into.shape[:2], out=into, fit=self.fit)
            return Decoded(into, (1.0, 1.0), i)
        name = src.describe(i)
        info = probe(payload, name)
        if not self._decode_direct(payload, name, info, src.sizes[i], into, self.fit):
            # letterboxed at once: the thread's own buffer, not the slot's (a batch of full-size decodes)
            buf = self._thread_buffer(info.width * info.height * 3) if scratch is not None else None
            letterbox(decode_rgb(payload, name, info=info, buffer=buf), *into.shape[:2], out=into, fit=self.fit)
        return Decoded(into, (1.0, 1.0), i)

    def _frame(self, payload: memoryview | bytes) -> np.ndarray:
        H, W = self.source.raw_hw
        return np.frombuffer(payload, np.uint8).reshape(H, W, 3)

    @staticmethod
    def _decode_direct(payload: memoryview | bytes, name: str, info: ImageInfo, size: np.ndarray, into: np.ndarray,
                       fit: tuple[int, int] | None = None) -> bool:
        """Decode straight into the rows of `into` when the letterbox is only vertical padding
        (1440x808 into 1440x832): no resize, no copy. False when that does not apply."""
        w0, h0 = int(size[0]), int(size[1])
        H, W = into.shape[:2]
        lb = letterbox_params(h0, w0, H, W, fit)
        if not (info.format == "jpeg" and info.orientation == 1 and info.channels == 3 and lb.left == 0
                and (lb.new_w, lb.new_h) == (w0, h0) == (info.width, info.height) and W == w0):
            return False
        rows = into[lb.top : lb.top + h0]
        out = decode_rgb(payload, name, info=info, buffer=rows)
        if not np.shares_memory(out, rows):  # the decoder could not use the rows: copy its result in
            rows[...] = out
        into[: lb.top] = PAD_VALUE
        into[lb.top + h0 :] = PAD_VALUE
        return True
