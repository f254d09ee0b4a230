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

  The pool is bounded in bytes as well as in count (`POOL_BYTES`): at 1440x1440, batch 8, one
  buffer is 50 MB, and six of them were most of the loader's memory. When every pooled buffer is
  lent out, `get` waits for one to come back. While a built batch is `queued` (the loader's: not
  yet taken by the consumer), a buffer will come back — the consumer drops its previous batch when
  it takes the next — so a slow consumer is waited for however long its step takes, and memory
  stays bounded. With nothing queued, every buffer is held by the consumer: after `patience`
  seconds `get` makes a fresh, unpooled one, so a consumer that holds many batches costs memory
  and a page-fault pass, never correctness or a deadlock, and `get` stops waiting until a pooled
  buffer comes back again. The same holds once the interpreter is exiting (the main thread has
  ended): an epoch abandoned mid-way must not keep the process alive.
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - registers its exit hook before ours (see `_exiting`)
import logging
import threading
import time
import weakref
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["BatchBuffers", "POOL_BYTES", "pool_size", "waiting_for_consumer"]

log = logging.getLogger(__name__)

#: The CPU pool's byte budget; it never holds fewer than `pool_size`'s minimum buffers. At
#: 1440x1440, batch 8 (47.5 MiB a batch) that is the minimum of 3: the consumer's and one per assembler.
POOL_BYTES = 160 << 20


#: set as the interpreter begins to exit, before its non-daemon threads are joined
_exiting = threading.Event()
# Python's exit joins the build threads (concurrent.futures' worker threads) before `atexit` or any
# finalizer could close an epoch the consumer left mid-way. Its threading-atexit hooks run in reverse
# order of registration, first thing in `threading._shutdown`: registered after concurrent.futures'
# own (imported above), this one runs before that join. (CPython >= 3.9; without it, the main
# thread's end is the signal, which comes later.)
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_exiting.set)


def waiting_for_consumer(queued: Callable[[], bool]) -> bool:
    """Whether a full pool should go on waiting without a deadline: a built batch awaits the consumer
    (`queued`), who frees a buffer when it takes it — unless the interpreter is exiting: waiting on
    for a consumer that left its epoch mid-way would hang the exit."""
    return queued() and not _exiting.is_set() and threading.main_thread().is_alive()


def pool_size(batch_bytes: int, least: int, most: int, budget: int = POOL_BYTES) -> int:
    """How many CPU batch buffers to pool: as many as `most` (what keeps every stage busy) fit in
    `budget`, never fewer than `least` (the consumer's batch plus one per assembler)."""
    return max(least, min(most, budget // max(1, batch_bytes)))


class _Slot:
    __slots__ = ("mem", "lent")

    def __init__(self, mem: np.ndarray) -> None:
        self.mem = mem
        self.lent: weakref.ref | None = None  # the view handed out last; dead = the buffer is free

    def free(self) -> bool:
        return self.lent is None or self.lent() is None


class BatchBuffers:
    """Hands out (base (n,H,W,3), img view (n,3,H,W)) uint8 tensors for one batch each.

    `keep`: how many CPU buffers to pool. When all are lent out, `get` waits for one to be
    returned: as long as `queued()` says a built batch awaits the consumer, otherwise up to
    `patience` seconds, then it makes a fresh (unpooled) one: a consumer holding many batches costs
    memory and time, never correctness (see the module doc).
    """

    def __init__(self, hw: tuple[int, int], pin: bool, keep: int, patience: float = 1.0,
                 queued: Callable[[], bool] = lambda: False) -> None:
        self.hw, self.pin, self.keep, self.patience, self.queued = hw, pin, keep, patience, queued
        self.fresh = 0  # unpooled buffers made (telemetry; a steady state makes none)
        self._slots: list[_Slot] = []
        self._hoarded = False  # a wait timed out and nothing came back since: the consumer keeps batches
        self._lock = threading.Lock()

    def get(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = self.hw
        if self.pin:  # the caching host allocator guards reuse against in-flight copies (module doc)
            t = torch.empty((n, H, W, 3), dtype=torch.uint8, pin_memory=True)
            return t, t.permute(0, 3, 1, 2)
        deadline = time.monotonic() + self.patience
        while True:
            with self._lock:  # two batches are assembled at once: pick and mark a slot atomically
                slot = self._take(n, wait=time.monotonic() < deadline)
                if slot is not None:
                    view = slot.mem.view()
                    t = torch.from_numpy(view)  # the tensor (and all its views) keep `view` alive
                    slot.lent = weakref.ref(view)
                    return t, t.permute(0, 3, 1, 2)
            if waiting_for_consumer(self.queued):
                deadline = time.monotonic() + self.patience
            time.sleep(0.002)  # every pooled buffer is lent out: one comes back per consumed batch

    def _take(self, n: int, wait: bool) -> _Slot | None:
        """A free pooled slot for `n` images, a new one (pooled while there is room), or None: wait
        for one of ours to come back."""
        slot = next((s for s in self._slots if s.mem.shape[0] == n and s.free()), None)
        if slot is not None:
            self._hoarded = False
            return slot
        ours = any(s.mem.shape[0] == n for s in self._slots)
        if len(self._slots) >= self.keep and ours and wait and not self._hoarded:
            return None
        slot = _Slot(np.empty((n, *self.hw, 3), np.uint8))
        if len(self._slots) < self.keep:
            self._slots.append(slot)
        elif ours:  # waited `patience` seconds in vain (a smaller last batch is simply not pooled)
            self._hoarded = True  # no more waiting until one of ours comes back
            self.fresh += 1
            if self.fresh == 1:
                log.info("all %d pooled %dx%d batch buffers still held after %.1f s; making unpooled ones "
                         "(memory and a page-fault pass per batch)", self.keep, *self.hw, self.patience)
        return slot
