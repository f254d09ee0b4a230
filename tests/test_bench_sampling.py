"""What the bench measures beside time: the GIL share (sainet/bench/gil.py: py-spy's raw samples
counted, the bench's own helper threads left out, a sampler that tells a thread spinning in Python
from one waiting in C), how rounds merge it, and a PSS baseline without the previous backend's
freed heap pages (sainet/bench/sampling.py)."""

from __future__ import annotations

import threading
import time

import pytest

from sainet.bench.gil import GilSampler, find_py_spy, held_samples
from sainet.bench.results import BenchResult

RAW = """\
<module> (run.py:3);spin (run.py:9) 57
<module> (run.py:3);decode (loaders/decode.py:80) 3
_bootstrap (threading.py:995);_Sampler._run (sainet/bench/sampling.py:140);_sample (sainet/bench/sampling.py:118) 11
_bootstrap (threading.py:995);GilSampler._read (sainet/bench/gil.py:120) 2
not a sample line
"""


def test_held_samples_counts_stacks_but_the_benchs_own_threads():
    assert held_samples(RAW) == 60
    assert held_samples(RAW, exclude=()) == 73
    assert held_samples("") == 0


def test_serial_share_is_the_gil_for_threads_and_the_parent_for_processes():
    threads = BenchResult("lmdb", "loader", 1.0)
    threads.set_serial(parent_cpu_s=10.0, tree_cpu_s=10.0, gil_s=2.5)  # all CPU in the trainer's process
    assert (threads.serial_share, threads.serial_basis, threads.gil_share) == (0.25, "GIL", 0.25)
    assert threads.amdahl_ceiling == pytest.approx(4.0)
    procs = BenchResult("lmdb-mp", "loader", 1.0)
    procs.set_serial(parent_cpu_s=1.0, tree_cpu_s=20.0, gil_s=0.5)
    assert (procs.serial_share, procs.serial_basis, procs.gil_share) == (0.05, "parent CPU", 0.025)
    unsampled = BenchResult("lmdb", "loader", 1.0)
    unsampled.set_serial(parent_cpu_s=10.0, tree_cpu_s=10.0)  # threads, GIL not sampled: no guess
    assert unsampled.serial_share is None and unsampled.amdahl_ceiling is None and unsampled.gil_share is None
    # a run so short (or so loaded) that the trainer's process shows no CPU once the sampler's is taken
    # off: the GIL share of the tree's CPU still stands, the serial share does not (the bench's test
    # saw this under load: raw-lmdb-mp with 3 batches)
    short = BenchResult("raw-lmdb-mp", "loader", 1.0)
    short.set_serial(parent_cpu_s=0.0, tree_cpu_s=2.0, gil_s=0.1)
    assert (short.gil_share, short.serial_share, short.gil_note) == (0.05, None, "")
    idle = BenchResult("raw-lmdb-mp", "loader", 1.0)
    idle.set_serial(parent_cpu_s=0.0, tree_cpu_s=0.0, gil_s=0.0)
    assert idle.gil_share is None and idle.gil_note.startswith("the timed run used no measurable CPU")


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed (it comes with sainet[bench], which make test installs)")
def test_sampler_tells_python_spinning_from_waiting_in_c():
    def spin(until: float) -> None:
        while time.perf_counter() < until:
            pass

    with GilSampler() as busy:  # a thread that never leaves Python holds the GIL whether or not a core runs it
        t = threading.Thread(target=spin, args=(time.perf_counter() + 1.5,))
        t.start()
        t.join()
    assert busy.reason == "" and busy.pids, busy.reason
    with GilSampler() as idle:  # every thread waits in C with the GIL released
        time.sleep(1.5)
    assert idle.reason == "", idle.reason
    assert busy.share is not None and busy.share > 0.7, busy.share
    assert idle.share is not None and idle.share < 0.2, idle.share


def test_sampler_without_py_spy_says_why(monkeypatch):
    monkeypatch.setattr("sainet.bench.gil.find_py_spy", lambda: None)
    with GilSampler() as g:
        pass
    assert g.share is None and g.held_seconds is None and "py-spy is not installed" in g.reason


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed (it comes with sainet[bench], which make test installs)")
def test_stop_ends_the_window_once_and_leaves_no_process():
    import psutil

    with GilSampler() as g:
        time.sleep(0.5)
        g.stop()
        seconds = g.seconds
        time.sleep(0.5)  # after stop: not in the window
    assert seconds is not None and seconds < 0.9 and g.seconds == seconds, g.seconds
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in g.pids)


def test_rounds_merge_the_serial_share_of_the_basis_most_rounds_had():
    from sainet.bench.report import merge_rounds

    def row(share: float | None, basis: str, gil: float | None, note: str = "") -> BenchResult:
        r = BenchResult("lmdb", "loader", 100.0, batches=3, images=24, seconds=1.0)
        r.serial_share, r.serial_basis, r.gil_share, r.gil_note = share, basis, gil, note
        return r

    rounds = [[row(0.30, "GIL", 0.30)], [row(0.04, "parent CPU", 0.02)], [row(0.20, "GIL", None, "py-spy fell behind")]]
    (m,) = merge_rounds(rounds)
    assert m.serial_basis == "GIL" and m.serial_share == pytest.approx(0.25) and m.amdahl_ceiling == pytest.approx(4.0)
    assert m.gil_share == pytest.approx(0.16) and m.gil_note == ""  # a median exists: no note


def test_freed_heap_pages_go_back_before_a_backend_is_measured():
    """A thread's freed 100 kB buffers stay resident in glibc's arena until trimmed: the next
    backend's PSS baseline must not include them (sainet/bench/run.py calls this first)."""
    import psutil

    from sainet.bench.sampling import release_freed_memory

    keep: list[bytearray] = []

    def work() -> None:
        bufs = [bytearray(100_000) for _ in range(1000)]  # 100 MB in this thread's arena
        keep.append(bytearray(100_000))  # above them: the arena's top cannot shrink by itself
        del bufs

    t = threading.Thread(target=work)
    t.start()
    t.join()
    before = psutil.Process().memory_info().rss
    assert release_freed_memory()
    assert before - psutil.Process().memory_info().rss > 50e6


def test_loader_scaling_cycles_a_store_smaller_than_its_warm_up(tmp_path):
    """benchmarks/loader_scaling.py's batches wrap the epoch (a one-batch loader gives the 3 warm-up
    batches and more); a loader with no batch stops with the store named instead of spinning."""
    from tests.bench_scripts import load

    cycle = load("loader_scaling")._Cycle
    one = [{"img": [0] * 8}]
    batches = cycle(one, tmp_path)
    assert [len(batches.next()["img"]) for _ in range(5)] == [8] * 5
    with pytest.raises(SystemExit, match=str(tmp_path)):
        cycle([], tmp_path).next()


def test_tree_and_own_cpu_come_from_one_read_of_the_clock():
    """A thread loader's tree CPU minus its own is its children's: 0 with none, however busy its threads
    are between reads (two reads of the same clock counted that as children's CPU in a short run)."""
    import psutil

    from sainet.bench.sampling import child_pids, cpu_seconds

    stop = threading.Event()
    t = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)], daemon=True)
    t.start()
    try:
        for _ in range(50):
            tree, own = cpu_seconds(psutil.Process(), child_pids())
            assert tree == own  # the children there were before are left out, as the bench does
    finally:
        stop.set()
        t.join()
