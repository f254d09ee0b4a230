"""The partner history of the process loader, in shared memory: one history for all its processes.

`assemble.History` holds, in one process, the decoded samples of a rank's recent batches for mosaic
partners: batch g draws from batches g-P..g-1 and itself. `SharedHistory` is the same contract
(`scratch`, `publish`, `recent`) over a region of the loader's slot file that every assembler
process maps, so batch g built by process g mod N draws from batches decoded by the others: the
partners, and so the batches, are the thread loader's for any number of processes, and the history
is not split N ways (per process, a 16-process loader had no room left for even one past batch at 640).

Layout (after the batch slots in the slot file, sparse: pages appear as written):

    tag     int64 (S + 1, 2)    per set: the batch it holds and its state (WRITING, READY, FAILED);
                                then the loader's stop word (set when a process died or the loader closes)
    meta    float64 (S, B, 6)   per sample: index, h, w, scale x, scale y, kind
    pixels  uint8 (S, B, M)     decoded samples, M bytes each (the largest train decode of the split)

Set s holds batch g with g mod S = s, S = P + A (A: batches the loader has in assembly at once).
The rules are `History`'s: the loader starts batch g + S only once batch g + P — the last one that
reads set g — is built, so a set is never rewritten while read. A writer claims its set (WRITING,
then the batch number), decodes into it, writes the samples' meta, then READY (or FAILED: no
partners from it); x86's store order makes the meta visible before the state (the only targets
here). A reader polls for READY/FAILED; it stops (raises) when the loader sets the stop word — a
process died, so the batches it was to decode never come — or its parent process is gone.

Passes: at each pass's start the parent (no build running) keeps the sets of batches F-P..F-1
that are READY, forgets every other set, and hands the missing ones to the pass's first task to
decode again (`refill`), as `History.fill` would: a resumed run draws the same partners as one that
never stopped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np

from loaders.decode import Decoded

__all__ = ["SharedHistory"]

log = logging.getLogger(__name__)

WRITING, READY, FAILED = 0, 1, 2
_PIXELS, _VIEW, _PRIVATE = 1.0, 2.0, 3.0  # a sample's kind: in the set, a store view, or not shared
_ALIGN = 4096


def _up(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class _SetScratch:
    """`decode.Scratch` over one set's sample regions (a decode larger than a region gets a private buffer)."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels  # (B, M) uint8

    def get(self, slot: int, need: int) -> np.ndarray | bytearray:
        if slot < self.pixels.shape[0] and need <= self.pixels.shape[1]:
            return self.pixels[slot, :need]
        return bytearray(need)


class SharedHistory:
    """The partner history of P = `batches` batches in `mem` (see the module doc). `view(i)`: sample i
    as a `Decoded` without decoding (a raw store's frame view); None for JPEG stores."""

    def __init__(self, mem: np.ndarray, batches: int, sets: int, batch_size: int, sample_bytes: int,
                 view: Callable[[int], Decoded] | None = None, alive: Callable[[], bool] = lambda: True) -> None:
        self.batches, self.sets, self.view, self.alive = batches, sets, view, alive
        o_meta = _up((sets + 1) * 2 * 8)
        o_pix = o_meta + _up(sets * batch_size * 6 * 8)
        head = mem[:o_meta].view(np.int64)[: (sets + 1) * 2].reshape(sets + 1, 2)
        self.tag, self._stop = head[:sets], head[sets]
        self.meta = mem[o_meta:o_pix].view(np.float64)[: sets * batch_size * 6].reshape(sets, batch_size, 6)
        self.pixels = mem[o_pix : o_pix + sets * batch_size * sample_bytes].reshape(sets, batch_size, sample_bytes)
        self._warned = False

    @staticmethod
    def nbytes(sets: int, batch_size: int, sample_bytes: int) -> int:
        return _up((sets + 1) * 2 * 8) + _up(sets * batch_size * 6 * 8) + _up(sets * batch_size * sample_bytes)

    # -- the parent -----------------------------------------------------------------------------
    def clear(self) -> None:
        """A new region: no set holds a batch."""
        self.tag[:, 0], self.tag[:, 1] = -1, FAILED
        self._stop[0] = 0

    def stop(self) -> None:
        """The loader is stopping (a process died, or `close`): readers waiting for a batch give up."""
        self._stop[0] = 1

    def begin(self, first: int) -> list[int]:
        """A pass starts at batch `first` (nothing is being built): keep the sets of batches
        first-P..first-1 that are READY, forget the rest; returns those of them not held."""
        want = range(max(0, first - self.batches), first)
        held = {int(self.tag[s, 0]) for s in range(self.sets) if self.tag[s, 1] == READY}
        for s in range(self.sets):
            if int(self.tag[s, 0]) not in want or self.tag[s, 1] != READY:
                self.tag[s, 1], self.tag[s, 0] = WRITING, -1
        return [j for j in want if j not in held]

    # -- an assembler process -----------------------------------------------------------------
    def scratch(self, g: int) -> _SetScratch:
        """Claim batch g's set and return its decode buffers."""
        s = g % self.sets
        self.tag[s, 1] = WRITING
        self.tag[s, 0] = g
        return _SetScratch(self.pixels[s])

    def publish(self, g: int, decoded: list[Decoded] | None) -> None:
        """Batch g's decoded samples (None: it failed) for the other processes' batches to draw from.
        A sample the decoder did not write into its region (a rotated JPEG, another format) is
        copied there; one larger than a region is no one's partner (logged once)."""
        s = g % self.sets
        if decoded is None:
            self.tag[s, 1] = FAILED
            return
        meta = self.meta[s]
        meta[:, 5] = 0.0
        for j, d in enumerate(decoded):
            h, w = d.image.shape[:2]
            kind = _VIEW if self.view is not None else self._place(s, j, d.image)
            meta[j] = (d.index, h, w, d.scale[0], d.scale[1], kind)
        self.tag[s, 1] = READY

    def _place(self, s: int, j: int, img: np.ndarray) -> float:
        region = self.pixels[s, j]
        if img.ctypes.data == region.ctypes.data and img.flags.c_contiguous:
            return _PIXELS  # decoded in place (the usual case)
        if img.nbytes <= region.size:
            region[: img.nbytes].reshape(img.shape)[...] = img
            return _PIXELS
        if not self._warned:
            self._warned = True
            log.warning("a decoded sample (%dx%d) is larger than the shared partner history's %d bytes "
                        "per sample: it is no one's partner", img.shape[1], img.shape[0], region.size)
        return _PRIVATE

    def recent(self, g: int) -> list[Decoded]:
        """The decoded samples of batches max(0, g-P)..g-1, in batch order, each sample once (at its
        latest place), as `History.recent`."""
        out: list[Decoded] = []
        for j in range(max(0, g - self.batches), g):
            out.extend(self._get(j))
        last = {d.index: k for k, d in enumerate(out)}
        return [d for k, d in enumerate(out) if last[d.index] == k]

    def _get(self, j: int) -> list[Decoded]:
        s = j % self.sets
        t0 = time.monotonic()
        while not (self.tag[s, 0] == j and self.tag[s, 1] != WRITING):
            if self._stop[0]:
                raise RuntimeError(f"the loader stopped before partner batch {j} was decoded")
            time.sleep(0.0005)
            if time.monotonic() - t0 > 1.0:
                if not self.alive():
                    raise RuntimeError(f"partner batch {j} was never decoded: the loader's process is gone")
                t0 = time.monotonic()
        if self.tag[s, 1] == FAILED:
            return []
        out = []
        for slot, (idx, h, w, sx, sy, kind) in enumerate(self.meta[s]):
            if kind == _PIXELS:
                h, w = int(h), int(w)
                out.append(Decoded(self.pixels[s, slot, : h * w * 3].reshape(h, w, 3), (float(sx), float(sy)), int(idx)))
            elif kind == _VIEW and self.view is not None:
                out.append(self.view(int(idx)))
            elif kind == 0.0:
                break
        return out


def parent_alive(ppid: int | None = None) -> Callable[[], bool]:
    """A check that this process's parent (at the time of the call) is still its parent."""
    first = os.getppid() if ppid is None else ppid
    return lambda: os.getppid() == first
