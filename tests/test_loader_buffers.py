"""Batch buffers: a batch the consumer (or an async copy) may still read is never overwritten."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from cache_tools import PackOptions, pack
from loaders import build_loader
from loaders.buffers import BatchBuffers, pool_size
from sainet.synth import synthesize

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no GPU on this machine")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("buffers")
    synthesize(root / "src", images=14, size=(128, 72), seed=5, val_fraction=0)
    pack(root / "src", root / "s", PackOptions(container="shards"))
    return root / "s"


def test_from_numpy_keeps_its_array_alive():
    """What the CPU pool relies on (loaders/buffers.py): every tensor sharing memory with
    ``torch.from_numpy(view)`` keeps `view` alive, and dropping them all releases it. If torch
    changes this, reuse would be unsafe: this test is the alarm."""
    mem = np.zeros((2, 4, 4, 3), np.uint8)
    view = mem.view()
    ref = weakref.ref(view)
    t = torch.from_numpy(view)
    del view
    part = t.permute(0, 3, 1, 2)[1, :, :2]  # a slice of a permuted view
    arr = t[0].numpy()
    del t
    gc.collect()
    assert ref() is not None
    del part
    gc.collect()
    assert ref() is not None  # the .numpy() of a slice still holds it
    del arr
    gc.collect()
    assert ref() is None


def test_pool_reuses_only_free_buffers():
    bufs = BatchBuffers((8, 16), pin=False, keep=4, patience=0)
    a, img_a = bufs.get(2)
    b, _ = bufs.get(2)
    assert a.data_ptr() != b.data_ptr()
    ptr_a = a.data_ptr()
    del a  # img_a (a view) still holds the buffer
    c, _ = bufs.get(2)
    assert c.data_ptr() not in (ptr_a, b.data_ptr())
    del img_a
    gc.collect()
    d, _ = bufs.get(2)
    assert d.data_ptr() == ptr_a  # free again: reused, no fresh allocation
    more = [bufs.get(2)[0] for _ in range(6)]  # past `keep`: fresh unpooled buffers, all distinct
    assert len({t.data_ptr() for t in [b, c, d, *more]}) == 9


def test_pool_waits_for_a_returned_buffer_then_stops_waiting_for_a_hoarder():
    """With every pooled buffer lent out, `get` waits for one to come back (bounded memory) rather
    than allocating; when none comes back within `patience` it makes an unpooled one and does not
    wait again until a pooled buffer is free."""
    bufs = BatchBuffers((8, 16), pin=False, keep=2, patience=5.0)
    a, _ = bufs.get(2)
    b, _ = bufs.get(2)
    ptr_a = a.data_ptr()
    timer = threading.Timer(0.2, lambda: held.clear())
    held = [a]
    del a
    timer.start()
    t0 = time.monotonic()
    c, _ = bufs.get(2)  # blocks until the timer drops `a`
    assert c.data_ptr() == ptr_a and 0.1 < time.monotonic() - t0 < 4.0 and bufs.fresh == 0
    bufs.patience = 0.1
    d, _ = bufs.get(2)  # b and c held: waits 0.1 s in vain, then an unpooled buffer
    assert d.data_ptr() not in (b.data_ptr(), c.data_ptr()) and bufs.fresh == 1
    bufs.patience = 60.0
    t0 = time.monotonic()
    e, _ = bufs.get(2)  # a hoarder was seen: no second wait
    assert time.monotonic() - t0 < 5.0 and bufs.fresh == 2
    del c
    gc.collect()
    f, _ = bufs.get(2)
    assert f.data_ptr() == ptr_a  # reuse resumes once a pooled buffer is back
    small, _ = bufs.get(1)  # another size (an epoch's last batch): never waits for the full-size pool
    assert small.shape[0] == 1 and bufs.fresh == 2


def test_a_queued_batch_is_waited_for_past_the_patience():
    """While a built batch awaits the consumer, a full pool waits for a buffer however long that
    takes (the consumer frees one when it takes the batch): memory stays bounded under a slow step."""
    queued = [True]
    bufs = BatchBuffers((8, 16), pin=False, keep=2, patience=0.05, queued=lambda: queued[0])
    a, _ = bufs.get(2)
    b, _ = bufs.get(2)
    ptr_a, held = a.data_ptr(), [a]
    del a
    threading.Timer(0.5, lambda: held.clear()).start()  # ten times the patience
    c, _ = bufs.get(2)
    assert c.data_ptr() == ptr_a and bufs.fresh == 0
    queued[0] = False  # nothing queued: every buffer is the consumer's, so the patience applies again
    d, _ = bufs.get(2)
    assert d.data_ptr() not in (b.data_ptr(), c.data_ptr()) and bufs.fresh == 1


def test_a_slow_training_step_makes_no_unpooled_buffers(store, monkeypatch):
    """The thread loader at its smallest pool (one buffer per assembler and the consumer's) with a
    step ten times the patience: every batch is built into a pooled buffer."""
    from loaders.loader import SainetLoader

    monkeypatch.setattr(SainetLoader, "pool_budget", 1)
    loader = build_loader(store, "shm", batch_size=2, imgsz=64, threads=2, prefetch=2)
    if loader.pin_memory:
        pytest.skip("with CUDA, batches come from torch's pinned host cache, not this pool")
    # 50 ms: between the consumer taking the last queued batch and dropping the one it held, its thread
    # must not stall past the patience (20 ms did once, with two trainings sharing the 2 cores)
    loader.buffers.patience = 0.05
    try:
        assert loader.buffers.keep == loader.assemblers + 1
        for _ in loader:
            time.sleep(0.5)
        assert loader.buffers.fresh == 0
    finally:
        loader.close()


def test_pool_size_is_bounded_in_bytes():
    mb = 1 << 20
    assert pool_size(10 * mb, least=3, most=6, budget=192 * mb) == 6  # 640x640 batch 8: all stages busy
    assert pool_size(50 * mb, least=3, most=6, budget=192 * mb) == 3  # 1440x1440 batch 8: 150 MB, not 300
    assert pool_size(115 * mb, least=3, most=6, budget=192 * mb) == 3  # never below consumer + assemblers
    assert pool_size(8 * 1440 * 1440 * 3, least=3, most=6) == 3  # the default budget at 1440x1440, batch 8


@pytest.mark.parametrize("augment", [True, False])
def test_held_batches_are_never_overwritten(store, augment):
    """Hold every batch of two epochs (whole batches and bare slices) and compare each with the
    copy taken when it was yielded; then, with nothing held, the pool is reused."""
    loader = build_loader(store, "shm", batch_size=2, imgsz=64, augment=augment, threads=2, prefetch=2)
    try:
        held, copies = [], []
        for _ in range(2):
            for k, b in enumerate(loader):
                keep = b["img"] if k % 2 else b["img"][:1, :, 8:40]  # a slice alone keeps the buffer too
                held.append(keep)
                copies.append(keep.clone())
        assert len(held) == 2 * len(loader) > loader.prefetch + loader.assemblers + 2
        for h, c in zip(held, copies, strict=True):
            assert torch.equal(h, c)
        del held, h, keep, b
        gc.collect()
        ptrs = {b["img"].data_ptr() for b in loader}
        if not loader.pin_memory:  # the CPU pool (pinned batches come from torch's host cache instead)
            assert len(ptrs) <= loader.prefetch + loader.assemblers + 2  # buffers went back into service
    finally:
        loader.close()


@pytest.mark.gpu
@GPU
def test_async_copies_of_consecutive_batches_keep_their_bytes(store):
    """Ultralytics' pattern: start a non-blocking copy, drop the batch at once. The copies are held
    back behind GPU work, so a recycled pinned buffer would be overwritten before they read it."""
    loader = build_loader(store, "shm", batch_size=2, imgsz=64, augment=True, threads=2, prefetch=2)
    assert loader.pin_memory
    busy = torch.randn(2048, 2048, device="cuda")
    try:
        for _ in range(2):
            copies, expected = [], []
            for b in loader:
                for _ in range(20):  # queue work ahead of the copy on the same stream
                    busy = busy @ busy / busy.norm()
                expected.append(b["img"].clone())
                copies.append(b["img"].to("cuda", non_blocking=True))
                del b
            torch.cuda.synchronize()
            for d, e in zip(copies, expected, strict=True):
                assert torch.equal(d.cpu(), e)
    finally:
        loader.close()
