"""Prefetch stage: one epoch as a producer thread filling a bounded queue, plus the resume state.

Contract: an `Epoch` is given this rank's batches of sample indices and a ``build(k, indices)``
function (batch number k, returning a batch dict, or something `hand_off` turns into one in the
consumer's thread — the DALI loader's CUDA hand-off). A producer thread keeps `assemblers` batches in
assembly at once — one batch's serial steps (planning, collating) overlap the other's pool work —
and queues them in order, at most `depth` ahead of the consumer. Nothing starts until the first
batch is asked for; `close()` stops the thread and drops what was queued. An exception in the
producer is handed over and raised in the consumer's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Epoch", "ResumeState"]


class Epoch:
    """One pass over `batches` (batch numbers start at `start`)."""

    _DONE = object()

    def __init__(self, batches: list[np.ndarray], build: Callable[[int, np.ndarray], dict], *, start: int = 0, depth: int = 2,
                 assemblers: int = 2, on_batch: Callable[[], None] | None = None,
                 on_error: Callable[[], None] | None = None, hand_off: Callable[[Any], dict] | None = None,
                 name: str = "sainet-loader") -> None:
        self.batches, self.build, self.start, self.assemblers = batches, build, start, assemblers
        self.on_batch, self.on_error, self.hand_off = on_batch, on_error, hand_off
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def _produce(self) -> None:
        try:
            with ThreadPoolExecutor(self.assemblers, thread_name_prefix="sainet-batch") as pool:
                pending: list = []
                for k, idx in enumerate(self.batches, start=self.start):
                    if self.stop.is_set():
                        return
                    pending.append(pool.submit(self.build, k, idx))
                    if len(pending) >= self.assemblers:
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

    def __iter__(self) -> Epoch:
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
            if self.on_error is not None:
                self.on_error()
            raise item
        if self.on_batch is not None:
            self.on_batch()
        return self.hand_off(item) if self.hand_off is not None else item

    def close(self) -> None:
        """Stop the producer (it finishes the batches in hand) and drop what was queued."""
        self.stop.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread.ident is not None and self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join()


@dataclass
class ResumeState:
    """Where a rank is in its epoch; `batches_done` batches of `epoch` have been handed out.

    The epoch order is a pure function of (seed, epoch), so this is all a resume needs; the other
    fields make sure the state is applied to the same split, seed and batch size. `skip` samples of
    the epoch's order were consumed before this pass began (an elastic resume; `ShardedSampler.resume`),
    and `batches_total` is how many batches this pass has in all.

    Elastic resume: the ranks of a training pass together consume a prefix of the epoch's order
    (rank r takes every world_size-th entry, all ranks the same number of batches), so after k
    batches of b on each of w ranks the first ``skip + k * b * w`` entries are done, whatever w.
    A state saved with another world size therefore resumes as a pass over the rest of the order,
    sharded over the new ranks, provided the global batch (b * w) is the same.
    """

    epoch: int = 0
    batches_done: int = 0
    seed: int = 0
    rank: int = 0
    num_samples: int = 0
    batch_size: int = 1
    world_size: int = 1
    records: int = 0
    skip: int = 0
    batches_total: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, state: dict) -> ResumeState:
        """`state` (a `to_dict`) as a ResumeState for this loader: the same pass when saved with
        this world size, else (elastic) a pass over what the saved ranks had not consumed."""
        world = int(state.get("world_size", self.world_size))
        if state.get("seed") != self.seed:
            raise ValueError("loader state is from another seed")
        if world == self.world_size:
            if state.get("num_samples") != self.num_samples or state.get("batch_size") != self.batch_size:
                raise ValueError("loader state is from another dataset, seed or batch size")
            return ResumeState(int(state["epoch"]), int(state["batches_done"]), self.seed,
                               int(state.get("rank", self.rank)), self.num_samples, self.batch_size, self.world_size,
                               self.records, int(state.get("skip", 0)))
        if int(state.get("records", -1)) != self.records:
            raise ValueError(f"loader state is from a split of {state.get('records')} records, this one has {self.records}")
        if int(state["batch_size"]) * world != self.batch_size * self.world_size:
            raise ValueError(f"loader state is from a global batch of {int(state['batch_size']) * world}; "
                             f"this one is {self.batch_size * self.world_size}")
        consumed = int(state.get("skip", 0)) + int(state["batches_done"]) * int(state["batch_size"]) * world
        return ResumeState(int(state["epoch"]), 0, self.seed, self.rank, self.num_samples, self.batch_size,
                           self.world_size, self.records, min(consumed, self.records))
