"""An assembler process: builds whole batches (decode + plan + render + boxes) into shared-memory slots.

Started by `loaders.procs.ProcLoader` as ``python -m loaders.procworker FD`` (FD: its end of a
socket pair, a `multiprocessing.connection.Connection`). It opens the store itself, by path
(zero-copy: its pages are the page cache's or /dev/shm's, shared with every other process; a store
is never pickled), maps the loader's slot file (`loaders.slots`) and then answers one task at a
time: batch g of the loader, rendered into slot s, answered with the small things only — the samples
used, the boxes as numpy arrays, ratio_pad. A task's random draws are the thread loader's,
``default_rng([seed, epoch, k, rank])``, so a batch is a pure function of where it is in the epoch.

Torch-free on purpose: importing torch costs a process ~290 MB of private memory; these processes
import numpy, OpenCV, the store and the loader stages only (`tests/test_loader_procs.py` checks).

Partner history: one for all the processes, in the slot file (`loaders.shared_history`): process w
of N builds the batches g with g mod N = w, decodes each into the shared set of g, and batch g's
mosaic partners come from batches g - P..g - 1 whichever process decoded them — the thread loader's
partners, so the batches are the thread loader's for any N. Batches a pass needs but no set holds
(a resume, new processes) are decoded again by the process that builds the pass's first batch
(the task's ``refill``).

Ends when the parent says so (None), when the parent's end of the socket closes (the parent died),
and on SIGTERM.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection

import cv2
import numpy as np

from loaders.assemble import CpuAssembler
from loaders.augment.hyp import Hyp
from loaders.collate import plan_boxes
from loaders.dataset import LoaderDataset
from loaders.read import ErrorPolicy
from loaders.sampler import ShardedSampler
from loaders.shared_history import SharedHistory, parent_alive
from loaders.sources import StoreSource
from sainet.core.errors import SainetError

__all__ = ["WorkerConfig", "map_slots", "slot_view"]

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    """What an assembler process needs (small and picklable; the store goes by path)."""

    store: str
    store_id: str | None
    split: str | None
    verify: bool
    imgsz: tuple[int, int]
    batch_size: int
    augment: bool
    hyp: Hyp
    seed: int
    rank: int
    world_size: int
    shuffle: bool
    on_error: str
    partner_batches: int
    worker: int  # w
    workers: int  # N
    batches_per_epoch: int
    threads: int
    slots_path: str
    slots_bytes: int
    history_offset: int = 0  # the shared partner history's region in the slot file (see `SharedHistory`)
    history_sets: int = 0  # S (0: no history)
    history_sample_bytes: int = 0  # M
    resample: str = "fast"  # `decode.RESAMPLE`
    fit: tuple[int, int] | None = None  # eval: `LoaderDataset.fit`


def map_slots(path: str, size: int) -> np.ndarray:
    """The slot file at `path` mapped shared, as a flat uint8 array (the mapping lives as long as it does)."""
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return np.frombuffer(mm, np.uint8)


def slot_view(mem: np.ndarray, offset: int, n: int, hw: tuple[int, int]) -> np.ndarray:
    """Batch rows (n, H, W, 3) at byte `offset` of a mapped slot file."""
    H, W = hw
    return mem[offset : offset + n * H * W * 3].reshape(n, H, W, 3)


class Worker:
    """One assembler process's state: its store, stages, decode threads and partner history."""

    def __init__(self, cfg: WorkerConfig) -> None:
        from cache_tools.store import open_store

        cv2.setNumThreads(1)  # parallelism comes from the processes
        self.cfg = cfg
        self.store = open_store(cfg.store, expect_id=cfg.store_id)
        source = StoreSource(self.store, cfg.split, verify=cfg.verify, lazy=True)  # names, labels: from the index
        self.dataset = LoaderDataset(source, cfg.hyp, cfg.augment, cfg.imgsz, cfg.batch_size, cfg.resample, cfg.fit)
        self.policy = ErrorPolicy(source, cfg.on_error)
        self.pool = ThreadPoolExecutor(cfg.threads, thread_name_prefix="sainet-proc-decode")
        self.assembler = CpuAssembler(self.dataset, self.policy, None, lambda: self.pool)  # type: ignore[arg-type]
        self.sampler = ShardedSampler(len(source), rank=cfg.rank, world_size=cfg.world_size, seed=cfg.seed,
                                      shuffle=cfg.shuffle)
        self.mem = map_slots(cfg.slots_path, cfg.slots_bytes)
        self.history: SharedHistory | None = None
        if cfg.partner_batches and cfg.history_sets:
            M, S = cfg.history_sample_bytes, cfg.history_sets
            region = self.mem[cfg.history_offset : cfg.history_offset + SharedHistory.nbytes(S, cfg.batch_size, M)]
            view = (lambda i: self.assembler.decoder.decode(i, reduce=True)) if source.mode == "raw" else None
            self.history = SharedHistory(region, cfg.partner_batches, S, cfg.batch_size, M, view, parent_alive())
        self.pass_id: int | None = None
        self.skipped = 0

    def _refill(self, history: SharedHistory, g: int) -> None:
        """Past batch g (numbered across epochs) decoded again into its shared set."""
        epoch, k = divmod(g, self.cfg.batches_per_epoch)
        B = self.cfg.batch_size
        decoded = None
        try:
            decoded = self.assembler.redecode(self.sampler.order(epoch)[k * B : (k + 1) * B], history.scratch(g))
        finally:
            history.publish(g, decoded)  # also on failure: the batches waiting for it go on without it

    def _begin(self, task: dict) -> None:
        """A new pass (epoch) of the loader: the sampler's resume point."""
        self.pass_id = task["pass"]
        self.sampler.resume(*task["resume"])

    def run(self, task: dict) -> dict:
        """Batch g of the loader into its slot; the small rest of the batch as the answer."""
        if task["pass"] != self.pass_id:
            self._begin(task)
        self.dataset.mosaic, self.dataset.hyp = task["mosaic"], task["hyp"]
        cfg = self.cfg
        indices = task["indices"]
        mem = map_slots(task["path"], task["bytes"]) if task["path"] else self.mem  # an unpooled slot: its own file
        arr = slot_view(mem, task["offset"], len(indices), cfg.imgsz)
        if self.history is not None:
            for g in task.get("refill", ()):
                self._refill(self.history, g)
        rng = np.random.default_rng([cfg.seed, task["epoch"], task["k"], cfg.rank])
        plan, used = self.assembler.build_into(indices, rng, arr, task["g"], self.history)
        skipped, self.skipped = self.policy.skipped - self.skipped, self.policy.skipped
        return {"used": used, "boxes": plan_boxes(plan), "ratio_pad": [ip.ratio_pad for ip in plan.images],
                "out_hw": plan.out_hw, "skipped": skipped}


def _picklable(e: BaseException) -> BaseException:
    """`e` if it survives pickling (typed errors naming the record do), else a SainetError saying what it was."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any pickling failure
        return SainetError(f"{type(e).__name__}: {e}")


def serve(conn: Connection) -> None:
    """Answer tasks until told to stop or the parent goes away."""
    cfg: WorkerConfig = conn.recv()
    try:
        _serve(conn, cfg)
    finally:  # the parent unlinks the slot file once every process mapped it; this covers its death before
        try:
            os.unlink(cfg.slots_path)
        except OSError:
            pass


def _serve(conn: Connection, cfg: WorkerConfig) -> None:
    try:
        worker = Worker(cfg)
    except BaseException as e:  # noqa: BLE001 - sent to the parent, raised there
        conn.send(("err", _picklable(e)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent died or closed its end
            return
        if task is None:
            return
        try:
            reply = ("ok", worker.run(task))
        except Exception as e:  # noqa: BLE001 - sent to the parent, raised there
            reply = ("err", _picklable(e))
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[1]))
    try:
        serve(conn)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
