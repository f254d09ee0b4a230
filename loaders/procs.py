"""A CPU loader whose per-image work runs in assembler processes: no GIL ceiling in the trainer's process.

The thread loader (`loader.SainetLoader`) decodes and renders in threads of the trainer's process;
the kernels release the GIL, but the per-image Python between them (planning, collating, handing
work to the pool) does not, so it stops scaling at a few cores. Here N assembler processes
(`loaders/procworker.py`, started as ``python -m loaders.procworker``: no fork of a process holding
threads and CUDA, no import of the trainer's main module) each build *whole batches* — decode, plan,
render, boxes — and the trainer's process only hands out tasks and wraps the results:

    trainer's process                                    assembler process w (of N)
    Epoch producer ── task(g, slot s) ──────────────▶    opens the store itself, by path (zero-copy)
      (batch g to process g mod N)                       decodes, plans, renders into slot s
    torch.from_numpy(slot s) ◀── used, boxes, ratio ──   (the slot file is shared memory)

- **Slots**: one file of fixed-size batch slots in /dev/shm (`SlotPool`), mapped shared by every
  process, **unlinked as soon as the processes have mapped it** — so nothing is left in /dev/shm
  whatever happens after (an exception, a kill, the parent's death); the memory goes when the
  last mapping does.
- **Reuse rule** (as `buffers.BatchBuffers`): a slot is written again only once no tensor made from
  it is alive — a weak reference to the numpy view the batch tensor was made from. When every slot
  is lent out for `patience` seconds (a consumer that holds batches), a batch gets an unpooled slot
  of its own (a file unlinked right after use): memory, never a deadlock. Slots: one per process
  plus the consumer's, then more within `SLOT_BYTES`.
- **Two tasks per process** where the slots allow (`assemblers` = min(2N, slots - 1)): the next task
  waits in the process's socket, so it starts its next batch as soon as it has answered one, without
  waiting for the trainer's threads to be scheduled (640, loaded 2-core box, 3 interleaved rounds: 246/247/357
  img/s against 222/173/361 with one task per process).
- **Pinned memory (CUDA)**: the batch is copied from its slot into a pinned buffer from
  `BatchBuffers` (whose reuse guards in-flight copies) and the slot is free at once.
- **Determinism**: a task carries (epoch, k); the process draws from
  ``default_rng([seed, epoch, k, rank])`` like the thread loader. Partner history: one for all the
  processes, in the slot file after the slots (`loaders.shared_history`: the thread loader's P
  batches plus one set per batch in assembly), so the batches equal the thread loader's for any
  number of processes (`tests/test_loader_procs.py`).
- **Errors**: a bad record raises its typed error (naming the record) in the trainer's thread, as
  in the thread loader; a process that dies or does not start is a `LoaderWorkerError`, never a hang.
  `close()`, garbage collection and interpreter exit stop the processes (`weakref.finalize`); a
  process whose parent died sees its socket close and exits.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loaders.buffers import pool_size, waiting_for_consumer
from loaders.collate import batch_dict
from loaders.decode import Decoder
from loaders.loader import SainetLoader
from loaders.procworker import WorkerConfig, slot_view
from loaders.shared_history import SharedHistory
from loaders.sources import StoreSource
from sainet.core.errors import LoaderWorkerError

__all__ = ["PROCESS_BYTES", "ProcLoader", "SlotPool"]

log = logging.getLogger(__name__)

#: The slots' byte budget: one slot per process and the consumer's always, then as many more (up to
#: prefetch + 1) as fit — at 1440x1440, batch 8, that is the 3 minimum of 50 MB (a fourth measured no faster).
SLOT_BYTES = 160 << 20
#: private memory of one assembler process once started (interpreter, numpy, OpenCV, the store's
#: index, its decode thread): 30-32 MiB measured (`benchmarks/loader_memory.py`; the run budget's figure)
PROCESS_BYTES = 32 << 20
#: seconds an assembler process may take to start (imports, opening the store) on a loaded machine
START_TIMEOUT = 120.0
_BUSY = object()  # a slot being written by an assembler process


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _slot_file(size: int) -> tuple[str, np.ndarray]:
    """A new shared file of `size` bytes (sparse: pages appear as written) and its mapping."""
    fd, path = tempfile.mkstemp(prefix=f"sainet-slots-{os.getpid()}-", dir=_shm_dir())
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path, np.frombuffer(mm, np.uint8)


def _child_env() -> dict[str, str]:
    """This environment, with the folder that holds `loaders` first on PYTHONPATH (also when sainet
    runs from a source tree that is not installed)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class SlotPool:
    """`count` batch slots of `slot_bytes` in one shared file (see the module doc for the rules)."""

    def __init__(self, count: int, slot_bytes: int, patience: float = 1.0, extra: int = 0) -> None:
        self.count, self.slot_bytes, self.patience = count, slot_bytes, patience
        self.path: str | None
        self.path, self.mem = _slot_file(count * slot_bytes + extra)  # `extra`: the shared partner history, after the slots
        self.unpooled = 0  # batches that got a slot of their own (telemetry; a steady state makes none)
        self._lent: list[Any] = [None] * count  # None: free; _BUSY; or a weak reference to the lent view
        self._lock = threading.Lock()

    def unlink(self) -> None:
        """Remove the file (the mappings stay valid): done once every process has mapped it."""
        _unlink(self.path)
        self.path = None

    def _free(self, s: int) -> bool:
        lent = self._lent[s]
        return lent is None or (lent is not _BUSY and lent() is None)

    def take(self, queued: Callable[[], bool] = lambda: False) -> int | None:
        """A free slot, marked busy; None when all stayed lent out for `patience` seconds (make an unpooled
        one). The patience runs only while nothing is `queued`: a built batch not yet taken by the consumer
        frees a slot once it is taken (a slow consumer is waited for; only one that keeps its batches is not,
        nor one the exiting interpreter left mid-epoch: `buffers.waiting_for_consumer`)."""
        deadline = time.monotonic() + self.patience
        while True:
            with self._lock:
                s = next((s for s in range(self.count) if self._free(s)), None)
                if s is not None:
                    self._lent[s] = _BUSY
                    return s
            if waiting_for_consumer(queued):
                deadline = time.monotonic() + self.patience
            elif time.monotonic() > deadline:
                self.unpooled += 1
                if self.unpooled == 1:
                    log.info("all %d batch slots still held after %.1f s; making unpooled ones", self.count, self.patience)
                return None
            time.sleep(0.002)

    def lend(self, s: int, n: int, hw: tuple[int, int]) -> np.ndarray:
        """Slot s's batch (n, H, W, 3) as a view; the slot is free again once the view (and every tensor on it) is gone."""
        view = slot_view(self.mem, s * self.slot_bytes, n, hw).view()
        with self._lock:
            self._lent[s] = weakref.ref(view)
        return view

    def release(self, s: int) -> None:
        with self._lock:
            self._lent[s] = None


class _Proc:
    """One assembler process and its end of the socket pair; tasks are answered in the order sent."""

    def __init__(self, cfg: WorkerConfig) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "loaders.procworker", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=_child_env())
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.send_lock = threading.Lock()
        self.turn = threading.Condition()
        self.sent = self.received = 0  # tasks sent, answers taken
        self.closing = False
        self.conn.send(cfg)

    def describe(self) -> str:
        return f"assembler process {self.proc.pid}"

    def recv(self, timeout: float | None = None) -> Any:
        """The next answer; a `LoaderWorkerError` if the process ends first (or `timeout` passes)."""
        t0 = time.monotonic()
        while not self.conn.poll(0.1):
            rc = self.proc.poll()
            if rc is not None or self.closing:
                raise LoaderWorkerError(f"{self.describe()} ended (exit status {rc}) before answering")
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise LoaderWorkerError(f"{self.describe()} did not answer within {timeout:.0f} s")
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError) as e:
            raise LoaderWorkerError(f"{self.describe()} ended (exit status {self.proc.poll()}) before answering") from e
        if kind == "err":
            raise value
        return value

    def call(self, task: dict, on_sent: Callable[[], None] | None = None) -> dict:
        """Send `task` at once (tasks queue in the socket: the process starts the next as soon as it has
        answered this one) and take its answer in turn (answers come in the order the tasks were sent).
        `on_sent` runs once the task is sent (or failed to be)."""
        with self.send_lock:
            ticket = self.sent
            try:
                self.conn.send(task)
            except OSError as e:
                raise LoaderWorkerError(f"{self.describe()} is gone (exit status {self.proc.poll()})") from e
            finally:
                if on_sent is not None:
                    on_sent()
            self.sent += 1
        with self.turn:
            while self.received != ticket:
                self.turn.wait(0.1)
        try:
            return self.recv()
        finally:
            with self.turn:
                self.received += 1
                self.turn.notify_all()

def _stop(procs: list[_Proc], pool: SlotPool | None, shared: SharedHistory | None = None) -> None:
    """Stop the processes (asked, then killed after 5 s) and remove the slot file if still there."""
    if shared is not None:
        shared.stop()  # a process waiting for a partner batch gives up and reads its socket
    for p in procs:
        p.closing = True
        try:
            p.conn.send(None)
        except OSError:
            pass
    for p in procs:
        try:
            p.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()
        p.conn.close()
    if pool is not None:
        pool.unlink()


class ProcLoader(SainetLoader):
    """The CPU loader with `threads` assembler processes instead of decode threads (see the module doc).

    Reads a store (shards or LMDB) by path; `threads` is the number of processes, each with
    `proc_threads` decode threads (1: the processes are the parallelism)."""

    kind = "cpu-procs"
    #: decode threads in each assembler process
    proc_threads = 1
    #: seconds to wait for a lent slot before a batch gets an unpooled one
    slot_patience = 1.0
    #: the slots' byte budget (never fewer than one per process plus the consumer's)
    slot_budget = SLOT_BYTES

    def __init__(self, source: StoreSource, *, split: str | None = "train", threads: int = 2,
                 partner_batches: int | None = None, proc_threads: int | None = None, **kw: Any) -> None:
        self.split, self.assemblers = split, threads
        super().__init__(source, threads=threads, partner_batches=0 if partner_batches is None else partner_batches, **kw)
        if partner_batches is None:  # one history shared by the processes: the thread loader's budget
            partner_batches = self._partner_batches(self.batch_size)
        self.partner_batches = partner_batches
        self.proc_threads = proc_threads or self.proc_threads
        self._history, self._redecoder = None, None  # the processes hold the history (SharedHistory)
        H, W = self.imgsz
        self.slot_bytes = self.batch_size * H * W * 3
        self.n_slots = self.slot_count(self.slot_bytes, threads, self.prefetch)
        self.assemblers = self.tasks_in_flight(threads, self.n_slots)
        # the shared partner history: P + A sets of one batch's decoded samples, after the slots
        self.history_sets = self.partner_batches + self.assemblers if self.partner_batches else 0
        self.history_sample_bytes = self._largest_decode() if self.history_sets else 0
        self.history_bytes = SharedHistory.nbytes(self.history_sets, self.batch_size, self.history_sample_bytes) \
            if self.history_sets else 0
        self._shared: SharedHistory | None = None
        self._refill: list[int] = []
        self._procs: list[_Proc] = []
        self._slots: SlotPool | None = None
        self._start_lock = threading.Lock()
        self._pass = 0
        # A process builds its batches in the order it gets them, and batch g may wait for its partner
        # history's batch g - N: so each process gets its batches in g order, whichever build thread
        # is ready first (a slot wait can reorder them). Next g each process is due, per pass.
        self._turn = threading.Condition()
        self._due: dict[int, int] = {}
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def slot_count(cls, slot_bytes: int, processes: int, prefetch: int) -> int:
        """Batch slots in the slot file: one per process and the consumer's, then as many more (up to
        prefetch + 1) as fit in `slot_budget` (also the run budget's rule)."""
        return pool_size(slot_bytes, least=processes + 1, most=processes + prefetch + 2, budget=cls.slot_budget)

    @staticmethod
    def tasks_in_flight(processes: int, slots: int) -> int:
        """Batches being built at once: two per process where the slots allow (the next task waits in
        its socket), one each at least."""
        return max(processes, min(2 * processes, slots - 1))

    @classmethod
    def host_bytes(cls, *, slot_bytes: int, processes: int, prefetch: int, history: Callable[[int], int],
                   per_process: int) -> int:
        """Host memory of a loader with these settings, its processes included (the run budget's
        figure): the slot file (the slots, then the shared partner history, whose bytes `history` gives
        for the batches in flight) and each process's own (`PROCESS_BYTES` plus `per_process`: its
        decode buffers beyond that: a full-size decode for an eval letterbox or a two-stage resample,
        a batch of decodes where there is no shared history)."""
        slots = cls.slot_count(slot_bytes, processes, prefetch)
        return slots * slot_bytes + history(cls.tasks_in_flight(processes, slots)) + processes * (PROCESS_BYTES + per_process)

    def __iter__(self) -> Any:
        epoch = super().__iter__()  # the last pass's builds are done: no process is working
        self._pass += 1
        self._first = self._state.epoch * len(self) + self._state.batches_done
        with self._turn:
            self._due = {}
        if self.history_sets:  # keep what the shared history holds of batches first-P..first-1, decode the rest again
            want = list(range(max(0, self._first - self.partner_batches), self._first))
            self._refill = want if self._shared is None else self._shared.begin(self._first)
        return epoch

    def _largest_decode(self) -> int:
        """Bytes of the largest train decode in the split (a reduced-DCT size where the decoder uses
        one): one shared-history sample region. Raw stores are read in place: none."""
        if self.source.mode == "raw" or len(self.source) == 0:
            return 0
        decoder = Decoder(self.source, self.imgsz, self.dataset.resample)
        sizes = np.unique(np.asarray(self.source.sizes, np.int64).reshape(-1, 2), axis=0)
        return max(decoder.train_bytes(int(w), int(h)) for w, h in sizes)

    def _wait_turn(self, proc: _Proc, w: int, g: int, n: int) -> None:
        """Until batch g is the next one process w is due in this pass (its first: the first g >= the
        pass's first batch with g mod n = w)."""
        with self._turn:
            while g > self._due.setdefault(w, self._first + (w - self._first) % n):
                if proc.closing:
                    raise LoaderWorkerError(f"{proc.describe()} is closing")
                self._turn.wait(0.1)

    def _sent(self, w: int, g: int, n: int) -> None:
        with self._turn:
            self._due[w] = max(self._due.get(w, g), g + n)
            self._turn.notify_all()

    def _config(self, w: int, path: str) -> WorkerConfig:
        store = self.source.store  # type: ignore[attr-defined]
        return WorkerConfig(str(store.path), store.meta.get("store_id"), self.split, self.source.verify,  # type: ignore[attr-defined]
                            tuple(self.imgsz), self.batch_size, self.augment, self.hyp, self.seed, self.rank,
                            self.sampler.world_size, self.sampler.shuffle, self.on_error, self.partner_batches, w,
                            self.num_workers, len(self), self.proc_threads, path, self.n_slots * self.slot_bytes + self.history_bytes,
                            self.n_slots * self.slot_bytes, self.history_sets, self.history_sample_bytes,
                            self.dataset.resample, self.dataset.fit)

    def _start(self) -> tuple[list[_Proc], SlotPool]:
        """Start the processes (once; they persist across epochs until `close`)."""
        with self._start_lock:
            if self._procs and self._slots is not None:
                return self._procs, self._slots
            pool = SlotPool(self.n_slots, self.slot_bytes, self.slot_patience, extra=self.history_bytes)
            if self.history_sets:
                region = pool.mem[self.n_slots * self.slot_bytes :]
                self._shared = SharedHistory(region, self.partner_batches, self.history_sets, self.batch_size,
                                             self.history_sample_bytes)
                self._shared.clear()
            procs: list[_Proc] = []
            try:
                for w in range(self.num_workers):
                    procs.append(_Proc(self._config(w, pool.path or "")))
                for p in procs:
                    p.recv(timeout=START_TIMEOUT)  # "ready": it has mapped the slot file
            except BaseException:
                _stop(procs, pool)
                raise
            pool.unlink()  # every process has it mapped: nothing left in /dev/shm from here on
            self._slots, self._procs = pool, procs
            self._finalizer = weakref.finalize(self, _stop, procs, pool, self._shared)
            return procs, pool

    def close(self) -> None:
        """Stop the epoch in flight and the assembler processes (restarted on demand)."""
        for proc in self._procs:  # build threads waiting for an answer give up, so the epoch's producer can end
            proc.closing = True
        super().close()
        if self._finalizer is not None:
            self._finalizer()  # _stop, once
            self._finalizer = None
        self._procs, self._slots, self._shared = [], None, None

    def _build(self, epoch: int, k: int, indices: np.ndarray) -> dict:
        """Batch k of `epoch` by process g mod N into a slot; wrapped here without a copy."""
        procs, pool = self._start()
        g = epoch * len(self) + k
        t0 = time.perf_counter()
        s = pool.take(lambda: self._queued > 0)
        tmp_path, tmp_mem = _slot_file(self.slot_bytes) if s is None else (None, None)
        task = {"g": g, "epoch": epoch, "k": k, "indices": indices, "pass": self._pass, "first": self._first,
                "resume": (epoch, self.sampler.skipped(epoch)), "mosaic": self.dataset.mosaic, "hyp": self.dataset.hyp,
                "path": tmp_path, "bytes": self.slot_bytes, "offset": 0 if s is None else s * self.slot_bytes,
                "refill": self._refill if g == self._first else []}
        try:
            w, n_procs = g % len(procs), len(procs)
            self._wait_turn(procs[w], w, g, n_procs)
            reply = procs[w].call(task, on_sent=lambda: self._sent(w, g, n_procs))
        except BaseException as e:
            if s is not None:
                pool.release(s)
            shared = self._shared
            if isinstance(e, LoaderWorkerError) and shared is not None:
                shared.stop()  # a process is gone: the batches it was to decode never come
            raise
        finally:
            _unlink(tmp_path)  # mapped here (tmp_mem) and written: the file itself is no longer needed
        n = len(reply["used"])
        arr = slot_view(tmp_mem, 0, n, self.imgsz) if s is None else pool.lend(s, n, self.imgsz)
        if self.pin_memory:  # copy into a pinned buffer (guarded against in-flight copies) and free the slot
            out, img = self.buffers.get(n)
            out.numpy()[:] = arr
            del arr
            if s is not None:
                pool.release(s)
        else:
            img = torch.from_numpy(arr).permute(0, 3, 1, 2)
        if reply["skipped"]:
            with self.policy._lock:
                self.policy.skipped += reply["skipped"]
        boxes = tuple(torch.from_numpy(a) for a in reply["boxes"])
        batch = batch_dict(img, boxes, self.source, reply["used"], reply["ratio_pad"], reply["out_hw"])
        with self._telemetry:
            self.busy_seconds += (time.perf_counter() - t0) / self.assemblers
            self.images_built += len(indices)
            self._queued += 1
        return batch

