"""The process loader's shared partner history (loaders/shared_history.py), on one region seen by two
"processes" (two instances over the same memory): the contract of `assemble.History`."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from loaders.decode import Decoded
from loaders.shared_history import SharedHistory

B, M, P, S = 3, 4 * 5 * 3, 2, 4


def _pair():
    mem = np.zeros(SharedHistory.nbytes(S, B, M), np.uint8)
    a, b = (SharedHistory(mem, P, S, B, M, alive=lambda: True) for _ in range(2))
    a.clear()
    return a, b


def _decode(h: SharedHistory, g: int, sizes=((4, 5), (2, 3), (4, 5))) -> list[Decoded]:
    """Batch g "decoded" into its set as a decoder would (into the scratch buffers), pixels = g*10 + slot."""
    scratch = h.scratch(g)
    out = []
    for j, (hh, ww) in enumerate(sizes):
        buf = scratch.get(j, hh * ww * 3)
        img = np.frombuffer(buf, np.uint8)[: hh * ww * 3].reshape(hh, ww, 3) if isinstance(buf, bytearray) else buf.reshape(hh, ww, 3)
        img[...] = g * 10 + j
        out.append(Decoded(img, (2.0, 1.5), 100 * g + j))
    return out


def test_partners_decoded_by_one_process_are_read_by_the_other():
    a, b = _pair()
    for g in range(3):
        a.publish(g, _decode(a, g))
    got = b.recent(3)  # batches 1 and 2
    assert [d.index for d in got] == [100, 101, 102, 200, 201, 202]
    assert all(int(d.image[0, 0, 0]) == (d.index // 100) * 10 + d.index % 100 for d in got)
    assert got[1].image.shape == (2, 3, 3) and got[0].scale == (2.0, 1.5)
    assert b.recent(0) == []


def test_a_reader_waits_for_the_publish_and_a_failed_batch_gives_no_partners():
    a, b = _pair()
    a.publish(0, _decode(a, 0))
    scratch_claimed = a.scratch(1)  # batch 1 claimed, being decoded
    assert scratch_claimed is not None
    got: list = []
    t = threading.Thread(target=lambda: got.append(b.recent(2)))
    t.start()
    t.join(0.2)
    assert t.is_alive()  # waiting for batch 1
    a.publish(1, None)  # it failed
    t.join(5)
    assert not t.is_alive() and [d.index for d in got[0]] == [0, 1, 2]


def test_a_reader_gives_up_when_its_loader_is_gone():
    mem = np.zeros(SharedHistory.nbytes(S, B, M), np.uint8)
    h = SharedHistory(mem, P, S, B, M, alive=lambda: False)
    h.clear()
    with pytest.raises(RuntimeError, match="partner batch 0 was never decoded"):
        h.recent(1)
    a, b = _pair()
    a.stop()  # a process died: the loader tells the others
    with pytest.raises(RuntimeError, match="stopped before partner batch 0"):
        b.recent(1)


def test_a_sample_not_decoded_in_place_is_copied_in_or_left_out():
    a, b = _pair()
    rotated = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)  # a rotated JPEG: a fresh array
    big = np.ones((9, 9, 3), np.uint8)  # larger than a region
    a.scratch(0)
    a.publish(0, [Decoded(rotated, (1.0, 1.0), 7), Decoded(big, (1.0, 1.0), 8)])
    got = b.recent(1)
    assert [d.index for d in got] == [7] and np.array_equal(got[0].image, rotated)


def test_begin_keeps_the_ready_sets_a_pass_needs_and_names_the_rest():
    a, b = _pair()
    for g in range(4):
        a.publish(g, _decode(a, g))
    a.scratch(4)  # the abandoned pass claimed batch 4 (set 0)
    a.publish(4, None)
    assert b.begin(4) == []  # batches 2 and 3 are held
    assert b.begin(6) == [4, 5]  # 4 failed, 5 never decoded
    assert [int(t) for t in a.tag[:, 0]] == [-1, -1, -1, -1]  # nothing else kept
    assert b.begin(1) == [0]
