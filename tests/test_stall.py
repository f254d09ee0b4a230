"""Data-wait and bench throughput as the GPU sees them (loaders/stall.py): which clock is chosen."""

from __future__ import annotations

import torch

from loaders.stall import StallClock, clock_kind, settle


def test_clock_is_cuda_only_for_a_cuda_device_with_cuda_present():
    assert clock_kind("cuda:0", cuda_available=True) == "cuda"
    assert clock_kind(torch.device("cuda"), cuda_available=True) == "cuda"
    assert clock_kind("cuda:0", cuda_available=False) == "host"  # a CUDA run asked for on a box without one
    assert clock_kind("cpu", cuda_available=True) == "host"  # CPU training beside a GPU
    assert clock_kind(None, cuda_available=True) == "host"


def test_host_clock_records_nothing_and_says_so():
    clock = StallClock("cpu")
    token = clock.start()
    clock.stop(token)
    assert clock.kind == "host" and token is None and clock.seconds() is None


def test_cuda_clock_brackets_next_with_events(monkeypatch):
    """The CUDA branch (run here with a fake Event): one pair per batch, summed and cleared once."""
    made = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = len(made) * 5.0  # ms
            self.synced = False
            made.append(self)

        def record(self, stream):
            self.stream = stream

        def synchronize(self):
            self.synced = True

        def elapsed_time(self, other):
            return other.t - self.t

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream", device))
    clock = StallClock("cuda:0")
    assert clock.kind == "cuda"
    for _ in range(3):
        clock.stop(clock.start())
    assert len(made) == 6 and made[0].stream == ("stream", torch.device("cuda:0"))
    assert clock.seconds() == 3 * 5.0 / 1e3 and made[-1].synced  # waits for the last event only
    assert clock.seconds() == 0.0


def test_settle_synchronises_cuda_batches_only(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: type("S", (), {"synchronize": lambda self: synced.append(device)})())
    settle(torch.zeros(2))  # a CPU batch: nothing
    settle(None)
    assert synced == []

    class CudaLike(torch.Tensor):
        is_cuda = True

    settle(torch.zeros(2).as_subclass(CudaLike))
    assert len(synced) == 1
