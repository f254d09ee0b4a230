"""Batch tensors: where the pixels of a yielded batch live, and when that memory may be used again.

The rule: a buffer is never written while anything may still read it — the consumer's tensors, or
an asynchronous host-to-device copy that the consumer started and then forgot (Ultralytics calls
``batch["img"].to(device, non_blocking=True)`` and drops its reference at once).

- **Pinned (CUDA present)**: no recycling here. Every batch is a fresh ``torch.empty(...,
  pin_memory=True)``, which torch serves from its caching host allocator: a non-blocking copy
  records an event on the copying stream for the block it reads
  (``CachingHostAllocator_recordEvent`` in aten/src/ATen/native/cuda/Copy.cu), and a freed block
  goes back to the free list only once all events recorded for it have completed
  (Note [HostAllocator design] in aten/src/ATen/core/CachingHostAllocator.h). After warm-up the
  blocks come from that cache: no cudaHostAlloc and no page faults per batch.
- **Not pinned (CPU only)**: no copy is in flight once the consumer drops its tensors, so a buffer
  may be reused as soon as no tensor made from it is alive. A fresh batch is costly here (measured
  on the 2-core dev box: 8 x 832 x 1440 x 3 fresh 30.8 ms vs reused 2.6 ms per batch, 6,400 page
  faults; at batch 32, 283 ms vs 27 ms — glibc maps allocations over 32 MB anew each time), so
  buffers are pooled. Whether a buffer is still lent out is read from a weak reference to the
  numpy view that the yielded tensor was made from (``torch.from_numpy`` keeps that array alive as
  long as any tensor sharing its memory — the batch, a slice of it, a ``.numpy()`` of it — lives;
  `tests/test_loader_buffers.py` checks exactly that, so a change in torch fails loudly).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch

__all__ = ["BatchBuffers"]


class _Slot:
    __slots__ = ("mem", "lent")

    def __init__(self, mem: np.ndarray) -> None:
        self.mem = mem
        self.lent: weakref.ref | None = None  # the view handed out last; dead = the buffer is free

    def free(self) -> bool:
        return self.lent is None or self.lent() is None


class BatchBuffers:
    """Hands out (base (n,H,W,3), img view (n,3,H,W)) uint8 tensors for one batch each.

    `keep`: how many CPU buffers to pool; when all are lent out a fresh (unpooled) one is made,
    so a consumer holding many batches costs memory, never correctness.
    """

    def __init__(self, hw: tuple[int, int], pin: bool, keep: int) -> None:
        self.hw, self.pin, self.keep = hw, pin, keep
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()

    def get(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = self.hw
        if self.pin:  # the caching host allocator guards reuse against in-flight copies (module doc)
            t = torch.empty((n, H, W, 3), dtype=torch.uint8, pin_memory=True)
            return t, t.permute(0, 3, 1, 2)
        with self._lock:  # two batches are assembled at once: pick and mark a slot atomically
            slot = next((s for s in self._slots if s.mem.shape[0] == n and s.free()), None)
            if slot is None:
                slot = _Slot(np.empty((n, H, W, 3), np.uint8))
                if len(self._slots) < self.keep:
                    self._slots.append(slot)
            view = slot.mem.view()
            t = torch.from_numpy(view)  # the tensor (and all its views) keep `view` alive
            slot.lent = weakref.ref(view)
        return t, t.permute(0, 3, 1, 2)
