"""The process loader (lmdb-mp / shm-mp, loaders/procs.py): the thread loader's batches, clean shutdown, no leftovers."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from cache_tools import PackOptions, open_store, pack
from loaders import build_loader
from sainet.core.errors import LoaderWorkerError, StoreCorruptError
from sainet.synth import synthesize

IMGSZ = "320x180"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("procs")
    synthesize(root / "src", images=13, size=(288, 162), seed=11, background=0.15)
    pack(root / "src", root / "lmdb", PackOptions(container="lmdb"))
    pack(root / "src", root / "shards", PackOptions(container="shards"))
    pack(root / "src", root / "raw", PackOptions(container="shards", mode="raw", imgsz=(180, 320)))
    return root


def _leftovers() -> list[str]:
    shm = Path("/dev/shm")
    return sorted(p.name for p in shm.glob(f"sainet-slots-{os.getpid()}-*")) if shm.is_dir() else []


def _batches(loader, epochs=2):
    out = []
    try:
        for _ in range(epochs):
            out += [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in b.items()} for b in loader]
    finally:
        loader.close()
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("img", "cls", "bboxes", "batch_idx"):
            assert torch.equal(x[key], y[key]), key
        assert x["im_file"] == y["im_file"] and x["ratio_pad"] == y["ratio_pad"]


@pytest.mark.parametrize(("procs", "partners", "augment"),
                         [(1, None, True), (2, None, True), (3, 2, True), (2, 0, True), (2, None, False)])
def test_same_batches_as_the_thread_loader(stores, procs, partners, augment):
    """Exactly the thread loader's batches for any number of processes, partner history included
    (one history shared by the processes), with partners from the batch alone, and in eval."""
    kw = dict(batch_size=4, imgsz=IMGSZ, augment=augment, seed=5, threads=procs, partner_batches=partners)
    ref = _batches(build_loader(stores / "lmdb", "lmdb", **kw))
    _same(_batches(build_loader(stores / "lmdb", "lmdb-mp", **kw)), ref)
    assert not _leftovers()


@pytest.mark.parametrize("store", ["lmdb", "raw"])
def test_same_batches_as_the_thread_loader_when_resampled_as_ultralytics(stores, store):
    """resample="ultralytics" (a full decode, Ultralytics' load-size resize, every tile warped) reaches
    the processes, their shared partner history included; its images differ from the fast path's."""
    kw = dict(batch_size=4, imgsz=IMGSZ, seed=5, threads=2)
    ref = _batches(build_loader(stores / store, "lmdb" if store == "lmdb" else "shm", resample="ultralytics", **kw))
    _same(_batches(build_loader(stores / store, "lmdb-mp" if store == "lmdb" else "shm-mp", resample="ultralytics", **kw)), ref)
    fast = _batches(build_loader(stores / store, "lmdb" if store == "lmdb" else "shm", **kw))
    assert not all(torch.equal(a["img"], b["img"]) for a, b in zip(fast, ref, strict=True))
    assert not _leftovers()


def test_the_partner_history_is_not_split_among_the_processes(stores):
    """However many processes, the history reaches as far back as the thread loader's (it was the
    budget / N each: none at 16 processes at 640), in P + A shared sets; nothing starts here."""
    kw = dict(batch_size=4, imgsz=IMGSZ)
    want = build_loader(stores / "lmdb", "lmdb", **kw).partner_batches
    for n in (2, 8, 16):
        loader = build_loader(stores / "lmdb", "lmdb-mp", threads=n, **kw)
        assert loader.partner_batches == want > 0
        assert loader.history_sets == want + loader.assemblers and not loader._procs
        assert loader.history_bytes >= loader.history_sets * 4 * 160 * 90 * 3  # 288x162 JPEGs decode at 1/2 for 320x180
    assert build_loader(stores / "lmdb", "lmdb-mp", partner_batches=0, **kw).history_bytes == 0


def test_raw_store_partners_are_shared_as_store_views(stores):
    """A raw store's partners are read in place by every process (no decoded copy): the thread loader's batches."""
    kw = dict(batch_size=3, imgsz=IMGSZ, seed=4, threads=2)
    ref = _batches(build_loader(stores / "raw", "shm", **kw))
    loader = build_loader(stores / "raw", "shm-mp", **kw)
    assert loader.partner_batches > 0 and loader.history_sample_bytes == 0
    _same(_batches(loader), ref)


def test_resume_and_hoarding_consumer(stores):
    """A resumed loader gives the batches an uninterrupted one gives (each process refills its partner
    history); a consumer holding every batch gets unpooled slots, not a deadlock."""
    kw = dict(batch_size=1, imgsz=IMGSZ, seed=2, threads=2)
    full = build_loader(stores / "shards", "shm-mp", **kw)
    full.slot_patience = 0.05
    ref = _batches(full)  # 20 batches held at once: more than the slots
    assert full.n_slots < 20
    first = build_loader(stores / "shards", "shm-mp", **kw)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    first.close()
    again = build_loader(stores / "shards", "shm-mp", **kw)
    again.load_state_dict(state)
    _same(_batches(again), ref[4:])
    assert not _leftovers()


def test_bad_record_raises_its_typed_error_in_the_parent(stores, tmp_path):
    store = tmp_path / "s"
    pack(stores / "src", store, PackOptions(container="shards"))
    with open_store(store) as s:
        victim = int(s.indices("train")[3])
        name, payload = s.index.name(victim), bytes(s.payload(victim))
    shard = store / "shard-00000.bin"
    blob = bytearray(shard.read_bytes())
    blob[blob.find(payload) + 100] ^= 0xFF
    shard.write_bytes(blob)
    loader = build_loader(store, "shm-mp", batch_size=4, imgsz=IMGSZ, threads=2)
    with pytest.raises(StoreCorruptError, match=name):
        list(loader)
    loader.close()
    skip = build_loader(store, "shm-mp", batch_size=4, imgsz=IMGSZ, threads=2, on_error="skip")
    assert sum(len(b["im_file"]) for b in skip) == len(skip.sampler) and skip.skipped == 1
    skip.close()
    assert not _leftovers()


def _pids(loader):
    return [p.proc.pid for p in loader._procs]


def test_close_gc_and_a_killed_worker(stores):
    loader = build_loader(stores / "lmdb", "lmdb-mp", batch_size=2, imgsz=IMGSZ, threads=2)
    next(iter(loader))
    pids = _pids(loader)
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    assert not _leftovers()  # unlinked as soon as both processes mapped it
    loader.close()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)

    loader = build_loader(stores / "lmdb", "lmdb-mp", batch_size=2, imgsz=IMGSZ, threads=2)
    _ = [b["img"].shape for b in loader]
    pids = _pids(loader)
    del loader, _
    gc.collect()
    assert not any(psutil.pid_exists(p) for p in pids)

    loader = build_loader(stores / "lmdb", "lmdb-mp", batch_size=2, imgsz=IMGSZ, threads=2)
    it = iter(loader)
    next(it)
    os.kill(_pids(loader)[1], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(LoaderWorkerError, match="assembler process"):
        for _ in range(len(loader) * 3):  # the next epoch too: whichever batch goes to the dead process
            next(it, None) or (it := iter(loader))
    assert time.monotonic() - t0 < 60
    loader.close()
    assert not _leftovers()


def test_workers_end_with_their_parent_and_leave_nothing(stores, tmp_path):
    """The trainer's process killed (SIGKILL) mid-epoch: its assembler processes exit, /dev/shm stays clean."""
    script = textwrap.dedent(f"""
        import os, sys
        from loaders import build_loader
        loader = build_loader({str(stores / 'lmdb')!r}, "lmdb-mp", batch_size=2, imgsz={IMGSZ!r}, threads=2)
        it = iter(loader)
        next(it)
        print(" ".join(str(p.proc.pid) for p in loader._procs), flush=True)
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    pids = [int(p) for p in out.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [p for p in pids if psutil.pid_exists(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive
    assert not list(Path("/dev/shm").glob(f"sainet-slots-{proc.pid}-*"))


def test_assembler_processes_do_not_import_torch():
    """Each process would carry ~290 MB of torch's private memory; pyarrow and Pillow (the importers'
    and other formats' libraries, ~9 MB private and ~20 MB PSS together) are not needed to read a store either."""
    code = "import sys, loaders.procworker; print([m for m in ('torch', 'pyarrow', 'PIL') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr[-500:]


def test_pinned_path_copies_and_frees_the_slot_at_once(stores):
    """With CUDA the batch is copied into a `BatchBuffers` block (pinned there; not here) and its slot is free at once."""
    from loaders.buffers import BatchBuffers

    kw = dict(batch_size=4, imgsz=IMGSZ, seed=5, threads=2, partner_batches=0)
    ref = _batches(build_loader(stores / "lmdb", "lmdb-mp", **kw))
    loader = build_loader(stores / "lmdb", "lmdb-mp", **kw)
    loader.pin_memory, loader.buffers = True, BatchBuffers(loader.imgsz, pin=False, keep=4)
    it = iter(loader)
    first = next(it)
    # at most one slot per process is busy (being written); none is lent to the consumer or the queue
    assert sum(loader._slots._free(s) for s in range(loader.n_slots)) >= loader.n_slots - loader.num_workers
    got = [first, *it]
    _same(got + _batches(loader, epochs=1), ref)


def test_a_slow_consumer_is_waited_for(stores, monkeypatch):
    """Slots held by batches the consumer has not taken yet are waited for: no unpooled slot per batch."""
    from loaders.procs import ProcLoader

    monkeypatch.setattr(ProcLoader, "slot_budget", 1)  # the minimum: one slot per process and the consumer's
    monkeypatch.setattr(ProcLoader, "slot_patience", 0.02)
    loader = build_loader(stores / "lmdb", "lmdb-mp", batch_size=1, imgsz=IMGSZ, threads=2)
    try:
        assert loader.n_slots == 3
        for _ in loader:
            time.sleep(0.1)  # a training step 5x the patience
        assert loader._slots.unpooled == 0
    finally:
        loader.close()


def test_processes_reopen_the_store_by_path_and_check_it(stores, tmp_path):
    """The store is never pickled: each process opens it by path and must find the store the loader
    was opened on; one packed over it meanwhile is the typed error, raised in the consumer's thread."""
    from sainet.core.errors import StoreReplacedError

    store = tmp_path / "s"
    pack(stores / "src", store, PackOptions(container="lmdb"))
    loader = build_loader(store, "lmdb-mp", batch_size=4, imgsz=IMGSZ, threads=2)
    synthesize(tmp_path / "other", images=13, size=(288, 162), seed=12, background=0.15)
    pack(tmp_path / "other", store, PackOptions(container="lmdb", force=True))
    with pytest.raises(StoreReplacedError, match="replaced"):
        next(iter(loader))
    loader.close()
    assert not _leftovers()


def test_close_mosaic_reaches_the_processes(stores):
    """Ultralytics' trainer calls `dataset.close_mosaic()` in the trainer's process; the next batches of
    the processes are unmosaicked, as the thread loader's are."""
    def run(kind):
        loader = build_loader(stores / "lmdb", kind, batch_size=4, imgsz=IMGSZ, seed=1, threads=2, partner_batches=0)
        first = _batches(loader, epochs=1)
        loader.dataset.close_mosaic()
        return first, _batches(loader, epochs=1)

    (a0, a1), (b0, b1) = run("lmdb"), run("lmdb-mp")
    _same(b0, a0)
    _same(b1, a1)


def test_a_lazy_store_source_reads_the_same_labels(stores):
    """The assembler processes' `StoreSource(lazy=True)` (labels from the index when asked) equals the eager one."""
    from loaders.sources import StoreSource

    with open_store(stores / "lmdb") as store:
        eager, lazy = StoreSource(store, "train"), StoreSource(store, "train", lazy=True)
        assert len(lazy) == len(eager) == 10 and list(lazy.names) == eager.names
        for i in range(len(eager)):
            assert np.array_equal(lazy.cls[i], eager.cls[i]) and np.array_equal(lazy.boxes[i], eager.boxes[i])
        assert lazy.describe(3) == eager.describe(3)
        with pytest.raises(IndexError):
            lazy.cls[10]


def test_batches_reach_each_process_in_order_when_a_slot_wait_reorders_the_build_threads(stores, monkeypatch):
    """Batch g may wait for its process's batch g - N (partner history), and a process builds in the
    order it gets tasks: a build thread delayed before sending (here: batch 0's slot wait) must not
    let batch N overtake it, else the process waits for batch 0 forever. Bounded: a hang fails."""
    import threading

    from loaders import procs

    take = procs.SlotPool.take
    first = threading.Event()

    def slow_first_take(self, queued=lambda: False):
        if not first.is_set():  # the first build thread to ask (batch 0) waits; batch 2 asks meanwhile
            first.set()
            time.sleep(0.5)
        return take(self, queued)

    monkeypatch.setattr(procs.SlotPool, "take", slow_first_take)
    loader = build_loader(stores / "shards", "shm-mp", batch_size=1, imgsz=IMGSZ, seed=2, threads=2)
    got: list = []
    t = threading.Thread(target=lambda: got.extend(_batches(loader, epochs=1)), daemon=True)
    t.start()
    t.join(120)
    if t.is_alive():
        loader.close()
        pytest.fail("the loader hung: a process got batch g + N before batch g")
    assert len(got) == len(loader)


@pytest.mark.parametrize("kind", ["lmdb", "lmdb-mp"])
def test_an_epoch_left_mid_way_does_not_hold_the_exit(stores, kind):
    """A script that breaks out of an epoch while a slow step let every pooled buffer / slot fill
    (built batches queued, so the build threads wait for the consumer) still exits: the wait ends
    once the main thread has ended (the exit joins the build threads before anything closes the epoch)."""
    script = textwrap.dedent(f"""
        import time
        from loaders import build_loader
        from loaders.loader import SainetLoader
        from loaders.procs import ProcLoader
        SainetLoader.pool_budget = ProcLoader.slot_budget = 1  # the minimum pool: it fills at once
        loader = build_loader({str(stores / 'lmdb')!r}, {kind!r}, batch_size=1, imgsz={IMGSZ!r}, threads=2)
        for k, b in enumerate(loader):
            time.sleep(0.3)  # a slow step: the producer fills the queue, the next build waits for a buffer
            if k == 2:
                break
        print("left", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{kind}: the script did not exit after leaving its epoch")
    assert proc.returncode == 0 and out.strip() == "left", err[-2000:]
    assert not list(Path("/dev/shm").glob(f"sainet-slots-{proc.pid}-*"))
