"""Loader stages: the backend table, the DALI feed (CPU mode here), DALI's error policy, the GPU hand-off."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cache_tools import PackOptions, open_store, pack
from loaders import (
    BACKENDS,
    Hyp,
    LoaderKind,
    build_loader,
    check_container,
    default_threads,
    kind_for_container,
)
from loaders.sources import StoreSource
from sainet.core.errors import CorruptImage, StoreFormatError
from sainet.synth import synthesize

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no GPU on this machine")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    synthesize(root / "src", images=10, size=(160, 90), seed=7, val_fraction=0)
    pack(root / "src", root / "s", PackOptions(container="shards"))
    return root / "s"


def test_backend_table_is_the_one_rule():
    assert set(BACKENDS) == {k.value for k in LoaderKind}
    assert kind_for_container("shards") == "shm" and kind_for_container("lmdb") == "lmdb"
    for name, b in BACKENDS.items():
        for container in ("shards", "lmdb"):
            if b.reads == "store" and b.container not in (None, container):
                with pytest.raises(StoreFormatError, match=f"--loader {kind_for_container(container)}"):
                    check_container(name, container, "/x")
            else:
                check_container(name, container, "/x")
    with pytest.raises(ValueError, match="known: disk"):
        build_loader("/nonexistent", "tape", batch_size=1, imgsz=64)
    assert default_threads(cores=2, ranks=1) == 2 and default_threads(cores=64, ranks=1) == 8
    assert default_threads(cores=16, recommended=4, ranks=1) == 4 and default_threads(cores=16, ranks=8) == 2
    assert default_threads(cores=4, ranks=8) == 1


def test_no_private_torch_apis_in_loaders():
    """Issue 15: no private torch / Ultralytics calls in the loaders (each would need isolating)."""
    pattern = re.compile(r"torch\._C|_cdata|_storage_Use_Count|_shutdown_workers|\._utils\.")
    root = Path(__file__).resolve().parents[1] / "loaders"
    hits = [f"{p}:{n}" for p in root.rglob("*.py") for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_dali_feed_runs_ahead_in_order():
    """Two batches fed and scheduled before either is taken; each taker gets its own run's output."""
    pytest.importorskip("nvidia.dali")
    import io

    from PIL import Image

    from loaders.dali import DaliFeed

    def jpeg(w: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(np.full((16, w, 3), w, np.uint8)).save(buf, "JPEG")
        return np.frombuffer(buf.getvalue(), np.uint8)

    feed = DaliFeed(batch_size=2, threads=1, device="cpu", device_id=None)
    tickets = [feed.submit([jpeg(8 * (t + 1)), jpeg(8 * (t + 1))]) for t in range(3)]
    got: dict[int, tuple] = {}

    def take(t: int) -> None:
        out = feed.take(t)
        got[t] = np.asarray(out[0]).shape

    threads = [threading.Thread(target=take, args=(t,)) for t in reversed(tickets)]  # asked for out of order
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert got == {0: (16, 8, 3), 1: (16, 16, 3), 2: (16, 24, 3)}


def test_dali_submit_does_not_wait_for_a_take():
    """While one assembler waits in ``pipe.outputs()`` for its run, the other can feed and schedule
    the next batch (issue 21: take held the feed's lock across outputs(), so decode never ran ahead)."""
    pytest.importorskip("nvidia.dali")
    from loaders.dali import DaliFeed

    feed = DaliFeed(batch_size=1, threads=1, device="cpu", device_id=None)
    real, release, inside = feed.pipe.outputs, threading.Event(), threading.Event()

    def slow_outputs(*a):  # a run that takes as long as the test says
        inside.set()
        release.wait(60)
        return real(*a)

    feed.pipe.outputs = slow_outputs
    jpeg = np.frombuffer(cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))[1].tobytes(), np.uint8)
    first = feed.submit([jpeg])
    taker = threading.Thread(target=feed.take, args=(first,))
    taker.start()
    assert inside.wait(60)
    submitter = threading.Thread(target=feed.submit, args=([jpeg],))
    submitter.start()
    submitter.join(30)  # a deadlock guard, not a timing bound: with the old lock this waits for `release`
    fed_during_take = not submitter.is_alive()
    release.set()
    taker.join(60)
    submitter.join(60)
    assert fed_during_take
    assert np.asarray(feed.take(1)[0]).shape == (8, 8, 3)


class _Truncated(StoreSource):
    """A store whose record `victim` is cut in half: its header and CRC-free read pass, decoding fails."""

    def __init__(self, path: Path, victim: int) -> None:
        super().__init__(open_store(path), None, verify=False)
        self.victim = victim

    def payload(self, i: int) -> memoryview:
        p = super().payload(i)
        return p[: len(p) // 2] if i == self.victim else p


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, GPU])])
@pytest.mark.parametrize("augment", [True, False])
def test_dali_on_error_skip_skips_a_record_dali_cannot_decode(store, augment, device):
    """A record cut in half: DALI (CPU backend here; `mixed` on a GPU) fails its run, bisection finds
    it, the CPU cannot decode it either: "skip" replaces it, "raise" names it; epoch 2 again."""
    pytest.importorskip("nvidia.dali")
    from loaders.dali import DaliLoader

    common = dict(batch_size=4, imgsz=(96, 160), augment=augment, hyp=Hyp(), threads=2, seed=3, device=device)
    victim = 5
    src = _Truncated(store, victim)
    loader = DaliLoader(src, on_error="skip", **common)
    try:
        batches = list(loader)
        assert [len(b["im_file"]) for b in batches] == [4, 4, 2]  # full batches: the bad record was replaced
        assert src.names[victim] not in {n for b in batches for n in b["im_file"]}
        assert loader.skipped == 1
        again = list(loader)  # the pipeline goes on after the failed run
        assert len(again) == 3 and loader.skipped == 2
    finally:
        loader.close()
    raising = DaliLoader(_Truncated(store, victim), on_error="raise", **common)
    try:
        with pytest.raises(CorruptImage, match=re.escape(src.names[victim])):
            list(raising)
    finally:
        raising.close()


def test_dali_cpu_batches_repeat_with_the_seed(store):
    pytest.importorskip("nvidia.dali")
    runs = []
    for _ in range(2):
        loader = build_loader(store, "dali", batch_size=3, imgsz=96, seed=4, threads=2, device="cpu")
        try:
            runs.append([(b["img"].clone(), b["bboxes"].clone(), b["im_file"]) for b in loader])
        finally:
            loader.close()
    for (ia, ba, na), (ib, bb, nb) in zip(*runs, strict=True):
        assert na == nb and torch.equal(ia, ib) and torch.equal(ba, bb)


@pytest.mark.gpu
@GPU
def test_dali_gpu_hand_off_to_a_busy_consumer_stream(store):
    """Batches rendered on the loader's stream, consumed on another stream kept busy: each must
    equal the same batch taken with a full device sync (the event hand-off orders them)."""
    pytest.importorskip("nvidia.dali")

    def epoch(busy: bool) -> list[torch.Tensor]:
        loader = build_loader(store, "dali", batch_size=3, imgsz=96, seed=4, threads=2, device="cuda")
        out, x = [], torch.randn(2048, 2048, device="cuda")
        consumer = torch.cuda.Stream()
        try:
            with torch.cuda.stream(consumer):
                for b in loader:
                    assert b["img"].is_cuda
                    if busy:
                        for _ in range(10):
                            x = x @ x / x.norm()
                    else:
                        torch.cuda.synchronize()
                    out.append(b["img"].float().sum((1, 2, 3)))
            torch.cuda.synchronize()
            return out
        finally:
            loader.close()

    for a, b in zip(epoch(False), epoch(True), strict=True):
        torch.testing.assert_close(a, b)


def test_plan_partners_come_from_the_batch_and_its_history():
    """plan_batch with n_out: outputs only for the batch, mosaic partners from every source given
    (the batch, then the recent batches' samples); with no history the draws are what they were."""
    from loaders.augment.plan import plan_batch

    sizes = [(160, 90)] * 12
    labels = [(np.zeros(1, np.int64), np.array([[0.5, 0.5, 0.2, 0.2]], np.float32))] * 12
    hyp = Hyp(mosaic=1.0)
    plan = plan_batch(np.random.default_rng(0), sizes, labels, (96, 96), hyp, augment=True, n_out=4)
    assert len(plan.images) == 4
    srcs = {p.src for ip in plan.images for p in ip.placements}
    assert max(srcs) >= 4 and all(ip.placements[0].src == k for k, ip in enumerate(plan.images))
    a = plan_batch(np.random.default_rng(1), sizes[:4], labels[:4], (96, 96), hyp, augment=True)
    b = plan_batch(np.random.default_rng(1), sizes[:4], labels[:4], (96, 96), hyp, augment=True, n_out=4)
    assert [[p.src for p in ip.placements] for ip in a.images] == [[p.src for p in ip.placements] for ip in b.images]


def test_plan_partners_are_ultralytics_buffer_at_each_image():
    """Image i's partners: the batch's sources 0..i (loaded so far) or the latest 8 x batch - i - 2
    recent ones (Ultralytics' buffer when it loads image i: 8 x batch - 1 images), never a later
    image of the batch nor an older recent one."""
    from loaders.augment.plan import BUFFER_BATCHES, plan_batch

    B, n_hist = 4, 40
    sizes = [(160, 90)] * (B + n_hist)
    labels = [(np.zeros(1, np.int64), np.array([[0.5, 0.5, 0.2, 0.2]], np.float32))] * (B + n_hist)
    seen: set[tuple[int, int]] = set()
    for seed in range(60):
        plan = plan_batch(np.random.default_rng(seed), sizes, labels, (96, 96), Hyp(mosaic=1.0), augment=True, n_out=B)
        for i, ip in enumerate(plan.images):
            oldest = B + n_hist - (BUFFER_BATCHES * B - i - 2)
            for p in ip.placements[1:]:
                assert p.src <= i or p.src >= oldest, (i, p.src)
                seen.add((i, p.src))
    assert {s for i, s in seen if i == B - 1} >= {0, 1, 2, 3, B + n_hist - 1}  # the whole window is drawn from
    assert (0, B + n_hist - BUFFER_BATCHES * B + 2) in seen  # image 0 reaches 8B - 2 back


def _buffer_reference(B: int, ids: list[int], size: int) -> list[list[int]]:
    """Each image's candidates written out one by one: Ultralytics' buffer of `size` distinct images
    when it loads image i (sources: the batch's first, then the recent ones, oldest first)."""
    out = []
    for i in range(B):
        own = list(range(max(0, i + 1 - size), i + 1))
        loaded = set(ids[: i + 1])
        recent = [B + m for m, x in enumerate(ids[B:]) if x not in loaded]
        out.append(own + recent[max(0, len(recent) - (size - len(own))):] if size > len(own) else own)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_plan_partners_count_an_image_once_like_ultralytics_buffer(seed):
    """With dataset indices given, a recent image the batch has already loaded counts once (as the
    batch's: Ultralytics caches a reloaded image instead of adding it again), one the batch loads
    later stays a recent candidate, and the buffer holds `buffer` - 1 images: the draws equal the
    candidates written out one by one."""
    from loaders.augment.plan import _partners

    rng = np.random.default_rng(seed)
    B, buffer = int(rng.integers(2, 9)), int(rng.integers(4, 30))
    ids = [*rng.permutation(40)[:B].tolist(), *rng.permutation(40)[: int(rng.integers(1, 30))].tolist()]
    want = _buffer_reference(B, ids, buffer - 1)
    got = _partners(np.random.default_rng(seed), B, len(ids), ids, buffer)
    d = np.random.default_rng(seed).integers(0, np.array([[len(c)] for c in want]), (B, 3))
    assert got.tolist() == [[want[i][k] for k in d[i]] for i in range(B)]
    for i, row in enumerate(got.tolist()):  # never the same image twice among a candidate set
        cand = [ids[s] for s in want[i]]
        assert len(cand) == len(set(cand)) and all(s in want[i] for s in row)


def test_loader_partners_take_a_reloaded_image_once(store):
    """Across epochs the recent batches hold images the batch loads again: image i never takes
    one of its batch's images 0..i through the recent copy (Ultralytics' buffer holds it once)."""
    loader = build_loader(store, "shm", batch_size=4, imgsz=64, seed=0, threads=2, augment=True, hyp={"mosaic": 1.0})
    plan, seen = loader.dataset.plan, []

    def recording(used, rng, partners=()):
        out = plan(used, rng, partners)
        seen.append((list(used), list(partners), out))
        return out

    loader.dataset.plan = recording
    try:
        for _ in range(4):
            for _ in loader:
                pass
    finally:
        loader.close()
    overlapping = 0
    for used, partners, out in seen[1:]:  # the run's first batch has no recent ones: the whole batch
        every = used + partners
        overlapping += bool(set(used) & set(partners))
        for i, ip in enumerate(out.images):
            for p in ip.placements[1:]:
                assert p.src <= i or (p.src >= len(used) and every[p.src] not in used[: i + 1]), (used, partners, i, p.src)
    assert overlapping >= 3  # the epochs' first batches met their own images among the recent ones


def test_history_waits_for_earlier_decodes_and_bounds_what_it_keeps():
    """Batch k sees the decodes of k-P..k-1 in batch order, waiting for one still decoding; a failed
    batch (None) never blocks the others; nothing older than P batches is kept."""
    from loaders.assemble import History
    from loaders.decode import Decoded

    h = History(batches=2, assemblers=2)
    d = lambda i: Decoded(np.zeros((1, 1, 3), np.uint8), (1.0, 1.0), i)  # noqa: E731
    h.publish(0, [d(0), d(1)])
    h.publish(1, None)  # batch 1 failed
    late = threading.Timer(0.2, lambda: h.publish(2, [d(4)]))
    late.start()
    assert [x.index for x in h.recent(3)] == [4]  # waited for batch 2; batch 1 gave nothing
    h.publish(3, [d(6)])
    assert [x.index for x in h.recent(4)] == [4, 6]
    assert set(h._decoded) <= {1, 2, 3}  # batch 0 is past every later batch's window
    assert h.scratch(0) is h.scratch(4) and h.scratch(0) is not h.scratch(1)
    h = History(batches=2, assemblers=2)
    h.begin(5)
    assert h.recent(5) == []  # past batches not held and nothing to decode them again with: no partners
    filled: list[int] = []
    h = History(batches=2, assemblers=2, fill=lambda g, scratch: filled.append(g) or [d(10 + g)])
    h.begin(5)
    assert [x.index for x in h.recent(5)] == [13, 14] and filled == [3, 4]  # decoded again, in batch order
    h.publish(5, [d(15)])
    assert [x.index for x in h.recent(6)] == [14, 15] and filled == [3, 4]  # once each
    h.begin(7)  # the next pass keeps what its first batch needs
    assert [x.index for x in h.recent(7)] == [15, 16] and filled == [3, 4, 6]  # batch 6 never ran: decoded


def test_partner_history_spans_epochs_and_resumes_exactly(store):
    """The partner history runs on across epochs (an epoch's first batches take partners from the
    last epoch's), and a loader resumed from a state dict, or iterated again after an abandoned
    epoch, gives the very pixels of one that never stopped."""
    def loader():
        return build_loader(store, "shm", batch_size=2, imgsz=64, seed=4, threads=2, partner_batches=3)

    ref = loader()
    whole = [[b["img"].clone() for b in ref] for _ in range(2)]
    ref.close()
    a = loader()
    it = iter(a)
    head = [next(it)["img"].clone() for _ in range(2)]
    state = a.state_dict()
    a.reset()  # abandoned mid-epoch: iterating again starts the next epoch
    assert all(torch.equal(x, y) for x, y in zip(head, whole[0], strict=False))
    assert all(torch.equal(x, y) for x, y in zip([b["img"].clone() for b in a], whole[1], strict=True))
    a.close()
    b = loader()
    b.load_state_dict(state)
    rest = [[x["img"].clone() for x in b] for _ in range(2)]
    b.close()
    assert all(torch.equal(x, y) for x, y in zip(rest[0], whole[0][2:], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(rest[1], whole[1], strict=True))
    fresh = loader()
    fresh.load_state_dict({**state, "epoch": 1, "batches_done": 0})
    fresh._history._fill = None  # epoch 1 without the earlier batches, as each epoch began before
    first = next(iter(fresh))["img"].clone()
    fresh.close()
    assert not torch.equal(first, whole[1][0])  # so epoch 1's first batch did take earlier partners


@pytest.mark.parametrize("partners", [0, 3])
def test_batches_repeat_with_the_seed_whatever_the_partner_history(store, partners):
    """Two assemblers and a shared history, yet the same seed gives the same pixels; the history's
    partners change what the batches look like."""
    def epoch(p: int) -> list[torch.Tensor]:
        loader = build_loader(store, "shm", batch_size=2, imgsz=64, seed=4, threads=2, partner_batches=p)
        try:
            assert loader.partner_batches == p
            return [b["img"].clone() for b in loader]
        finally:
            loader.close()

    a, b = epoch(partners), epoch(partners)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    if partners:
        assert not all(torch.equal(x, y) for x, y in zip(a, epoch(0), strict=True))


def test_dali_partner_history_is_sized_for_what_dali_outputs(store):
    """The CPU decoder reduces a 160x90 JPEG for a 32-pixel output (reduced DCT). DALI on the GPU
    decodes it whole, so its history holds fewer batches in the same bytes; DALI in CPU mode keeps
    the CPU's reduced size (`DaliAssembler._reduced`), so its history is the CPU loaders' (issue 21)."""
    pytest.importorskip("nvidia.dali")
    from loaders.loader import PARTNER_BYTES, PARTNER_MAX

    B = 400  # 400 x 160x90x3 = 17 MB per batch at full size: 3 batches fit 64 MB
    cpu = build_loader(store, "shm", batch_size=B, imgsz=32, threads=1)
    dali = build_loader(store, "dali", batch_size=B, imgsz=32, threads=1, device="cpu")
    try:
        assert cpu._decoded_bytes(160, 90) < 160 * 90 * 3
        assert dali._decoded_bytes(160, 90) == cpu._decoded_bytes(160, 90)
        assert dali.partner_batches == cpu.partner_batches
        dali.dali_device = "mixed"  # what a GPU loader sizes for (no CUDA here to build one)
        assert dali._decoded_bytes(160, 90) == 160 * 90 * 3
        assert dali._partner_batches(B) == min(PARTNER_MAX, PARTNER_BYTES // (B * 160 * 90 * 3)) == 3
        assert cpu.partner_batches > dali._partner_batches(B)
    finally:
        dali.dali_device = "cpu"
        cpu.close()
        dali.close()


def test_dali_only_the_samples_dali_cannot_decode_come_from_the_cpu(store, monkeypatch):
    """DALI fails a whole run without naming the sample. The failing sample is found by feeding
    halves of the run again (2 log2(4) = 4 runs for a batch of 4), only it is decoded on the CPU (in
    the loader's pool, under on_error="raise": it decodes there, so nothing raises), and it is
    remembered: the next epoch decodes it on the CPU beside DALI's run and no run fails again. The
    batches keep their samples, plans and boxes (issue 21)."""
    pytest.importorskip("nvidia.dali")
    from loaders.dali import DaliFeed, DaliLoader
    from loaders.decode import Decoder

    common = dict(batch_size=4, imgsz=(96, 160), augment=True, hyp=Hyp(), threads=2, seed=3, device="cpu", on_error="raise")
    victim = 6

    def run(epochs: int) -> list[list[dict]]:
        loader = DaliLoader(StoreSource(open_store(store), None, verify=False), **common)
        try:
            victim_bytes.append(bytes(loader.source.payload(victim)))
            return [list(loader) for _ in range(epochs)]
        finally:
            loader.close()

    victim_bytes: list[bytes] = []
    good = run(1)[0]
    real_take, real_submit = DaliFeed.take, DaliFeed.submit
    runs, failing, decoded, threads = [], set(), [], set()

    def submit(self, arrays):  # DALI that cannot decode the victim: every run holding it fails
        ticket = real_submit(self, arrays)
        holds = any(a.tobytes() == victim_bytes[-1] for a in arrays)
        runs.append(len(arrays))
        if holds:
            failing.add(ticket)
        return ticket

    def take(self, ticket, stream=None):
        out = real_take(self, ticket, stream)
        return RuntimeError("nvImageCodec failure: '#3'") if ticket in failing else out

    real_decode = Decoder.decode

    def decode(self, i, **kw):
        decoded.append(i)
        threads.add(threading.current_thread().name)
        return real_decode(self, i, **kw)

    monkeypatch.setattr(DaliFeed, "submit", submit)
    monkeypatch.setattr(DaliFeed, "take", take)
    monkeypatch.setattr(Decoder, "decode", decode)
    first, second = run(2)
    for epoch in (first, second):
        assert sorted(n for b in epoch for n in b["im_file"]) == sorted(n for b in good for n in b["im_file"])
    assert [b["im_file"] for b in first] == [b["im_file"] for b in good]
    for a, b in zip(good, first, strict=True):
        torch.testing.assert_close(a["bboxes"], b["bboxes"])
    assert decoded == [victim, victim]  # once per epoch, and nothing else on the CPU
    assert threads and threading.main_thread().name not in threads  # decoded in the loader's pool
    batches = len(good) * 2
    assert len(failing) == 1 + 2  # the batch's run, then the half holding it, then the run of the victim alone
    assert len(runs) == batches + 4  # the bisection's 4 runs, once: epoch 2 feeds DALI the victim's batch without it
    n = sum(len(b["im_file"]) for b in good)
    assert sum(runs[len(good) + 4 :]) == n - 1  # epoch 2 feeds DALI every sample but the victim


def test_two_stage_decode_reuses_its_full_size_buffer(store):
    """resample="ultralytics" decodes at full size, then resizes into the slot's buffer. With a
    `Scratch` the full-size image goes to the decode thread's own buffer: a steady state allocates no
    image (the first decode does), and the pixels are those of a decode without buffers. Where the
    load size is the full size the image lives in the slot's buffer, so the thread's next decode
    (another slot) does not overwrite it."""
    import tracemalloc

    from loaders.decode import Decoder, Scratch

    src = StoreSource(open_store(store), None, verify=False)
    dec, scratch = Decoder(src, (64, 64), "ultralytics"), Scratch()  # 160x90 -> load size 64x36: R 2.5
    full = 160 * 90 * 3
    dec.decode(0, reduce=True, scratch=scratch, slot=0)
    tracemalloc.start()
    try:
        for i in range(1, 6):
            got = dec.decode(i, reduce=True, scratch=scratch, slot=0)
            np.testing.assert_array_equal(got.image, dec.decode(i, reduce=True).image)
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            dec.decode(i, reduce=True, scratch=scratch, slot=0)
            assert tracemalloc.get_traced_memory()[1] - before < full // 2
    finally:
        tracemalloc.stop()

    same = Decoder(src, (160, 160), "ultralytics")  # load size 160x90: the full decode is the image
    a = same.decode(0, reduce=True, scratch=scratch, slot=0)
    kept = a.image.copy()
    same.decode(1, reduce=True, scratch=scratch, slot=1)
    np.testing.assert_array_equal(a.image, kept)
    assert a.image.shape == (90, 160, 3)


def test_eval_decodes_through_one_buffer_per_thread_not_per_slot(store):
    """An eval decode is letterboxed at once, so a batch of them needs one full-size buffer per decode
    thread, not one per slot (a val batch of 64 at 1440x808 held 64 x 3.5 MB per assembler): after
    the first, decodes into any slot allocate no image, and the pixels are those without buffers."""
    import tracemalloc

    from loaders.decode import Decoder, Scratch

    src = StoreSource(open_store(store), None, verify=False)
    dec, scratch = Decoder(src, (64, 64)), Scratch()  # 160x90 -> 64x36 inside 64x64: a resize, no direct decode
    rows = np.empty((8, 64, 64, 3), np.uint8)
    dec.decode_into(0, rows[0], scratch, 0)
    tracemalloc.start()
    try:
        for slot in range(1, 8):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            dec.decode_into(slot, rows[slot], scratch, slot)
            assert tracemalloc.get_traced_memory()[1] - before < 160 * 90 * 3 // 2
    finally:
        tracemalloc.stop()
    for slot in range(8):
        np.testing.assert_array_equal(rows[slot], dec.decode_into(slot, np.empty((64, 64, 3), np.uint8)).image)


@pytest.mark.parametrize("max_size,imgsz", [(80, 80), (96, 160)])
def test_two_stage_decode_of_a_smaller_stored_image(tmp_path, max_size, imgsz):
    """A store packed with a max size holds images smaller than their originals. Stored at the load
    size itself (80x45 for 160x90 at 80), the decode is the sample's image and must not sit in the
    thread's buffer, which the next decode reuses; smaller than the load size (96x54, loaded at 160x90),
    the upscale must not read and write one buffer. Either way a slot keeps the pixels of a decode
    without buffers, whatever else the thread decodes."""
    from loaders.decode import Decoder, Scratch

    synthesize(tmp_path / "src", images=4, size=(160, 90), seed=7, val_fraction=0)
    pack(tmp_path / "src", tmp_path / "s", PackOptions(container="shards", max_size=max_size))
    src = StoreSource(open_store(tmp_path / "s"), None, verify=False)
    dec, scratch = Decoder(src, (imgsz, imgsz), "ultralytics"), Scratch()
    want = [dec.decode(i, reduce=True).image for i in range(4)]
    for _ in range(2):  # the second pass reuses every slot's buffer
        got = [dec.decode(i, reduce=True, scratch=scratch, slot=i % 2) for i in range(2)]
        for i, d in enumerate(got):
            np.testing.assert_array_equal(d.image, want[i])
        others = [dec.decode(i, reduce=True, scratch=scratch, slot=2 + i) for i in range(2, 4)]
        for i, d in enumerate(others, 2):
            np.testing.assert_array_equal(d.image, want[i])
        for i, d in enumerate(got):  # not overwritten by the thread's later decodes
            np.testing.assert_array_equal(d.image, want[i])
