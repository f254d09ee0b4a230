"""Tests that need a CUDA GPU (`pytest -m gpu`); skipped, with the reason, where there is none.

The batched torch executor on CUDA against the OpenCV executor, the hand-off from the loader's own
stream while the default stream is busy, pinned batches of the CPU loaders under non-blocking
copies, the DALI loader's augmented batches against the CPU loader's, and a 2-epoch training run
with ``--loader dali --device 0``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loaders import build_loader
from loaders.augment.hyp import Hyp
from loaders.augment.plan import plan_batch
from loaders.augment.torch_exec import render_batch
from tests.test_augment import patch_images
from tests.test_gpu_executor import CASES, OUT_HW, _Count, _cpu_render, _sources

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: none on this machine")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from cache_tools import PackOptions, pack
    from sainet.synth import synthesize

    root = tmp_path_factory.mktemp("gpu")
    synthesize(root / "src", images=48, size=(320, 180), seed=21, val_fraction=0.25, background=0.1)
    pack(root / "src", root / "shards", PackOptions(container="shards"))
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_batched_executor_on_cuda_matches_opencv(name):
    hyp, augment = CASES[name]
    imgs, labels, sizes, decoded, scales = _sources(6, seed=len(name), mixed_sizes=True)
    plan = plan_batch(np.random.default_rng(7), sizes, labels, OUT_HW, hyp, augment=augment)
    sources = [torch.from_numpy(d).cuda() for d in decoded]
    torch.cuda.synchronize()
    with _Count() as calls:  # and no host synchronisation inside
        out = render_batch(plan, sources, scales)
    assert out.is_cuda and out.dtype == torch.uint8 and out.shape == (6, 3, *OUT_HW)
    assert calls.calls.count("to") == 1  # one host->device copy: the packed plan
    diff = np.abs(_cpu_render(plan, decoded, scales).astype(int) - out.permute(0, 2, 3, 1).cpu().numpy().astype(int))
    assert diff.mean() < 0.3 and np.percentile(diff, 99) <= 3 and (diff > 2).mean() < 0.02, (diff.mean(), (diff > 2).mean())
    on_cpu = render_batch(plan, [torch.from_numpy(d) for d in decoded], scales)  # the same kernels on the CPU
    assert (out.cpu().int() - on_cpu.int()).abs().max() <= 1


def test_stream_hand_off_while_the_default_stream_is_busy():
    """The loader renders on its own stream while the default stream works through a long matmul
    queue; the consumer waits on the event (not the host), and reads the right bytes."""
    imgs, labels, sizes, decoded, scales = _sources(6, seed=5, mixed_sizes=False)
    plan = plan_batch(np.random.default_rng(3), sizes, labels, OUT_HW, CASES["full"][0], augment=True)
    expected = render_batch(plan, [torch.from_numpy(d) for d in decoded], scales)
    sources = [torch.from_numpy(d).cuda() for d in decoded]
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    for _ in range(400):  # ~55 TFLOP queued on the default stream: far longer than one render
        a = a @ a
        a /= a.norm()
    loader_stream = torch.cuda.Stream()
    img = render_batch(plan, sources, scales, stream=loader_stream)
    ready = torch.cuda.Event()
    ready.record(loader_stream)
    ready.synchronize()  # the host waits for the loader's work only
    assert not torch.cuda.current_stream().query(), "the render waited for the default stream's queue"
    torch.cuda.current_stream().wait_event(ready)  # the consumer's hand-off: no host sync
    img.record_stream(torch.cuda.current_stream())
    got = img.float().cpu()  # on the default stream, after the matmuls and the event
    assert (got.int() - expected.int()).abs().max() <= 1


def test_pinned_batches_survive_non_blocking_copies(store):
    """A CPU loader's (pinned) batches copied with .to('cuda', non_blocking=True) and all kept: each
    device copy holds its own batch (a buffer reused before its copy completed would show the next
    one), compared with a CPU-only pass of the same seed."""

    def run(to_cuda: bool) -> list[torch.Tensor]:
        loader = build_loader(store / "shards", "shm", batch_size=4, imgsz=(192, 320), seed=9, threads=2, prefetch=2)
        try:
            return [b["img"].to("cuda", non_blocking=True) if to_cuda else b["img"].clone() for b in loader]
        finally:
            loader.close()

    on_gpu, reference = run(True), run(False)
    torch.cuda.synchronize()
    assert len(on_gpu) == len(reference) >= 8
    for k, (g, c) in enumerate(zip(on_gpu, reference, strict=True)):
        assert torch.equal(g.cpu(), c), f"batch {k}: the device copy holds other bytes"


def test_pinned_buffers_outlive_a_stalled_copy_stream(store):
    """The CPU loader's pinned batches copied on a side stream that is held up behind a long matmul
    queue, while the loader goes on building batches: no buffer is reused before its copy ran."""

    def run(stall: bool) -> list[torch.Tensor]:
        loader = build_loader(store / "shards", "shm", batch_size=4, imgsz=(192, 320), seed=9, threads=2, prefetch=2)
        copy, a = torch.cuda.Stream(), torch.randn(4096, 4096, device="cuda")
        out = []
        try:
            for b in loader:
                with torch.cuda.stream(copy):
                    if stall:
                        for _ in range(40):  # the copy waits behind this
                            a = a @ a
                            a /= a.norm()
                    out.append(b["img"].to("cuda", non_blocking=True) if stall else b["img"].clone())
        finally:
            loader.close()
        return out

    got, reference = run(True), run(False)
    torch.cuda.synchronize()
    assert len(got) == len(reference) >= 8
    for k, (g, c) in enumerate(zip(got, reference, strict=True)):
        assert torch.equal(g.cpu(), c), f"batch {k}: the stalled copy read a reused buffer"


def test_dali_hand_off_to_a_busy_consumer_stream(store):
    """DaliAssembler -> consumer: while the consumer's stream is kept busy (the trainer's step), the
    batches it reads after the hand-off event are the ones a quiet consumer reads."""
    pytest.importorskip("nvidia.dali", reason="needs nvidia-dali")

    def run(busy: bool) -> list[torch.Tensor]:
        loader = build_loader(store / "shards", "dali", batch_size=4, imgsz=(192, 320), hyp=Hyp(mixup=0.3), seed=8, device="cuda")
        a, out = torch.randn(4096, 4096, device="cuda"), []
        try:
            for b in loader:
                if busy:
                    for _ in range(40):
                        a = a @ a
                        a /= a.norm()
                out.append(b["img"].clone())  # on the consumer's stream, ordered after the hand-off
        finally:
            loader.close()
        return out

    quiet, busy = run(False), run(True)
    torch.cuda.synchronize()
    assert len(quiet) == len(busy) >= 8
    for k, (q, b) in enumerate(zip(quiet, busy, strict=True)):
        assert torch.equal(q, b), f"batch {k} differs when the consumer is busy"


def _shm_and_dali_on_gpu(store, check=None, **kw) -> list[tuple[dict, dict]]:
    """The shm loader's batches and the DALI loader's on CUDA, same settings (`kw`), paired; the
    same files and boxes, pixels within decoder and interpolation rounding (mean abs diff < 2).
    `check(loader)`: asked of each loader before it runs."""
    pytest.importorskip("nvidia.dali", reason="needs nvidia-dali")
    out = {}
    for kind, device in (("shm", None), ("dali", "cuda")):
        loader = build_loader(store / "shards", kind, batch_size=4, seed=4, device=device, **kw)
        try:
            assert check is None or check(loader)
            out[kind] = list(loader)
        finally:
            loader.close()
    assert len(out["shm"]) == len(out["dali"]) >= 8
    pairs = list(zip(out["shm"], out["dali"], strict=True))
    for a, b in pairs:
        assert b["img"].is_cuda and a["im_file"] == b["im_file"]
        torch.testing.assert_close(a["bboxes"], b["bboxes"], atol=1e-6, rtol=0)
        diff = (a["img"].int() - b["img"].cpu().int()).abs().float()
        assert diff.mean() < 2.0, diff.mean()  # JPEG decoders (IDCT) and interpolation rounding
    return pairs


def test_dali_augmented_batches_match_the_cpu_loader(store):
    """Same seed, same plan: the DALI loader (nvJPEG + batched torch executor) and the shm loader
    (libjpeg-turbo + OpenCV) give the same boxes and nearly the same pixels."""
    for a, b in _shm_and_dali_on_gpu(store, imgsz=(192, 320), hyp=Hyp(mixup=0.3, degrees=5)):
        assert torch.equal(a["cls"], b["cls"]) and torch.equal(a["batch_idx"], b["batch_idx"])


def test_dali_resample_ultralytics_on_gpu_matches_the_cpu_loader(store):
    """resample="ultralytics" at a decode ratio of 2 (320x180 at 160x96): DALI's full-size decode,
    resized to Ultralytics' load size on the GPU (`resize_hwc`), then the torch executor's warp,
    against the shm loader's full decode, cv2.resize and OpenCV warp: the same boxes and nearly the
    same pixels."""
    def sized_at_the_load_size(loader) -> bool:
        return loader.kind != "dali" or loader.partner_batches == 0 or loader._decoded_bytes(320, 180) == 160 * 90 * 3

    _shm_and_dali_on_gpu(store, check=sized_at_the_load_size, imgsz=(96, 160), resample="ultralytics")


def test_train_two_epochs_with_the_dali_loader_on_gpu(store, tmp_path):
    pytest.importorskip("nvidia.dali", reason="needs nvidia-dali")
    from sainet.train import TrainRequest, train
    from tests.test_train import _check_run

    r = train(TrainRequest(data=str(store / "shards"), loader="dali", model="yolov8n.yaml", imgsz="320x180", epochs=2,
                           batch=8, device="0", project=str(tmp_path), name="dali-gpu"))
    _check_run(r.save_dir)
    assert (r.save_dir / "loader.csv").is_file()


def test_fused_render_on_cuda_matches_eager():
    """render_batch(fuse=True): each tile slot and the colour stage one torch.compile'd region on the
    GPU; the same batch as the eager ops but for float contraction (fma) in the sampling grid, and no
    host synchronisation once compiled."""
    from loaders.augment import torch_exec

    imgs, labels, sizes, decoded, scales = _sources(6, seed=2, mixed_sizes=True)
    plan = plan_batch(np.random.default_rng(5), sizes, labels, OUT_HW, CASES["full"][0], augment=True)
    sources = [torch.from_numpy(d).cuda() for d in decoded]
    eager = render_batch(plan, sources, scales)
    render_batch(plan, sources, scales, fuse=True)  # compiles
    assert not torch_exec._FUSE_FAILED, torch_exec._FUSE_FAILED
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused = render_batch(plan, sources, scales, fuse=True)
        again = render_batch(plan, sources, scales)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    diff = (eager.int() - fused.int()).abs()
    assert diff.max() <= 3 and (diff > 0).float().mean() < 1e-3, (diff.max(), (diff > 0).float().mean())
    assert torch.equal(eager, again)


@pytest.mark.parametrize("fuse", [False, True])
def test_executor_at_full_size_matches_opencv(fuse):
    """Batch 32 of 1440x808 sources -> 1440x832 with the full train augment: the torch executor on
    CUDA (eager and compiled) against the OpenCV executor, pixel by pixel."""
    imgs, labels = patch_images(32, size=(1440, 808), seed=11)
    hyp = Hyp(mixup=0.15)
    plan = plan_batch(np.random.default_rng(3), [(1440, 808)] * 32, labels, (832, 1440), hyp, augment=True)
    scales = [(1.0, 1.0)] * 32
    out = render_batch(plan, [torch.from_numpy(i).cuda() for i in imgs], scales, fuse=fuse)
    diff = np.abs(_cpu_render(plan, imgs, scales).astype(int) - out.permute(0, 2, 3, 1).cpu().numpy().astype(int))
    assert diff.mean() < 0.3 and np.percentile(diff, 99) <= 3 and (diff > 2).mean() < 0.02, (diff.mean(), (diff > 2).mean())


def test_gpu_data_wait_is_timed_on_the_training_stream(store, tmp_path):
    """loader.csv of a CUDA run says its data-wait came from CUDA events."""
    import csv

    pytest.importorskip("nvidia.dali", reason="needs nvidia-dali")
    from sainet.train import TrainRequest, train

    r = train(TrainRequest(data=str(store / "shards"), loader="dali", model="yolov8n.yaml", imgsz="320x180", epochs=1,
                           batch=8, device="0", project=str(tmp_path), name="wait"))
    rows = list(csv.DictReader((r.save_dir / "loader.csv").open()))
    assert rows and all(row["data_wait_clock"] == "cuda" and 0 <= float(row["data_wait_fraction"]) <= 1 for row in rows)
