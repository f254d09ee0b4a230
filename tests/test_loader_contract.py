"""One contract, every backend: disk, ram, shm, lmdb, dali (CPU here; the GPU variant runs with CUDA)."""

from __future__ import annotations

import pytest
import torch

from cache_tools import PackOptions, pack
from loaders import LoaderKind, build_loader
from sainet.core.errors import StoreFormatError
from sainet.synth import synthesize

IMGSZ = "320x180"  # -> (192, 320)
BACKENDS = ["disk", "ram", "shm", "lmdb", "lmdb-mp", "dali"]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no GPU on this machine")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    synthesize(root / "src", images=13, size=(288, 162), seed=11, background=0.15)
    pack(root / "src", root / "shards", PackOptions(container="shards"))
    pack(root / "src", root / "lmdb", PackOptions(container="lmdb"))
    pack(root / "src", root / "raw", PackOptions(container="shards", mode="raw", imgsz=(192, 320)))
    return root


def _data(stores, kind):
    return {"disk": stores / "src", "ram": stores / "lmdb", "shm": stores / "shards", "lmdb": stores / "lmdb",
            "lmdb-mp": stores / "lmdb", "shm-mp": stores / "shards", "dali": stores / "shards"}[kind]


def _epoch(loader):
    return list(loader)


@pytest.mark.parametrize("kind", BACKENDS)
def test_batch_contract(stores, kind):
    loader = build_loader(_data(stores, kind), kind, batch_size=4, imgsz=IMGSZ, augment=True, threads=2)
    try:
        assert len(loader) == 3  # 10 train images / 4, last batch partial
        assert loader.batch_size == 4 and loader.drop_last is False and loader.num_workers == 2
        assert len(loader.sampler) == 10 and len(loader.dataset) == 10
        labels = loader.dataset.labels
        assert len(labels) == 10 and all(lb["cls"].ndim == 2 and lb["bboxes"].shape[1] == 4 for lb in labels)
        for epoch in range(2):
            batches = _epoch(loader)
            assert len(batches) == len(loader), epoch
            for b in batches:
                assert set(b) >= {"img", "cls", "bboxes", "batch_idx", "im_file", "ori_shape", "resized_shape", "ratio_pad"}
                n = b["img"].shape[0]
                assert b["img"].shape[1:] == (3, 192, 320) and b["img"].dtype == torch.uint8
                assert b["cls"].dtype == torch.float32 and b["cls"].ndim == 2 and b["cls"].shape[1] == 1
                assert b["bboxes"].dtype == torch.float32 and b["bboxes"].shape == (len(b["cls"]), 4)
                assert b["batch_idx"].dtype == torch.float32 and b["batch_idx"].shape == (len(b["cls"]),)
                assert torch.all(b["batch_idx"][1:] >= b["batch_idx"][:-1])
                if len(b["bboxes"]):
                    assert b["bboxes"].min() >= 0 and b["bboxes"].max() <= 1
                    assert b["batch_idx"].max() < n
                    assert set(b["cls"].flatten().tolist()) <= {0.0, 1.0}
                assert len(b["im_file"]) == len(b["ori_shape"]) == len(b["resized_shape"]) == len(b["ratio_pad"]) == n
        it = iter(loader)
        next(it)
        loader.reset()  # stops the epoch in flight
        assert len(_epoch(loader)) == len(loader)
    finally:
        loader.close()


def _eval_batches(stores, kind, **kw):
    loader = build_loader(_data(stores, kind), kind, batch_size=5, imgsz=IMGSZ, augment=False, split="train", **kw)
    try:
        return _epoch(loader)
    finally:
        loader.close()


def test_eval_batches_identical_across_backends(stores):
    ref = _eval_batches(stores, "shm")
    for kind in BACKENDS:
        got = _eval_batches(stores, kind)
        assert len(got) == len(ref), kind
        for a, b in zip(ref, got, strict=True):
            assert a["im_file"] == b["im_file"], kind
            assert (a["img"].int() - b["img"].int()).abs().max() <= 1, kind
            torch.testing.assert_close(a["bboxes"], b["bboxes"], atol=1e-6, rtol=0)
            assert torch.equal(a["cls"], b["cls"]) and torch.equal(a["batch_idx"], b["batch_idx"])
    # a raw store packed at the same shape gives the same eval batches
    loader = build_loader(stores / "raw", "shm", batch_size=5, imgsz=IMGSZ, augment=False)
    try:
        for a, b in zip(ref, list(loader), strict=True):
            assert (a["img"].int() - b["img"].int()).abs().max() <= 1
            torch.testing.assert_close(a["bboxes"], b["bboxes"], atol=1e-6, rtol=0)
    finally:
        loader.close()


@pytest.mark.gpu
@GPU
def test_dali_gpu_matches_cpu(stores):
    cpu = _eval_batches(stores, "dali", device="cpu")
    gpu = _eval_batches(stores, "dali", device="cuda")
    for a, b in zip(cpu, gpu, strict=True):
        assert b["img"].is_cuda
        assert (a["img"].int() - b["img"].cpu().int()).abs().float().mean() < 1.0
        torch.testing.assert_close(a["bboxes"], b["bboxes"], atol=1e-6, rtol=0)


def test_kind_must_match_container(stores):
    with pytest.raises(StoreFormatError, match="lmdb"):
        build_loader(stores / "lmdb", "shm", batch_size=2, imgsz=64)
    with pytest.raises(StoreFormatError, match="shards"):
        build_loader(stores / "shards", LoaderKind.LMDB, batch_size=2, imgsz=64)


def test_imgsz_forms(stores):
    for imgsz, shape in [(160, (160, 160)), ((100, 200), (128, 224)), ("320x180", (192, 320))]:
        loader = build_loader(stores / "shards", "shm", batch_size=2, imgsz=imgsz, augment=False)
        try:
            assert next(iter(loader))["img"].shape[2:] == shape
        finally:
            loader.close()


def test_reduced_dct_decode_when_training_shape_is_small(tmp_path):
    """Training at <= 1/2 of the source decodes at a reduced DCT scale (1/2, 1/4, 1/8), not full size."""
    synthesize(tmp_path / "src", images=4, size=(800, 400), seed=1, val_fraction=0)
    pack(tmp_path / "src", tmp_path / "s", PackOptions(container="shards"))
    loader = build_loader(tmp_path / "s", "shm", batch_size=2, imgsz=192, augment=True)
    try:
        d = loader.builder.decoder.decode(0, reduce=True)
        assert d.image.shape[:2] == (100, 200) and d.scale == (4.0, 4.0)  # 1/4: still >= 192/800 of the source
        full = loader.builder.decoder.decode(0, reduce=False)  # eval: full decode, as Ultralytics' letterbox sees it
        assert full.image.shape[:2] == (400, 800)
        assert next(iter(loader))["img"].shape[2:] == (192, 192)
    finally:
        loader.close()


@pytest.mark.parametrize("kind", ["shm", "lmdb", "disk"])
def test_eval_decodes_into_the_batch_rows(tmp_path, kind):
    """Frames whose letterbox is only vertical padding (1440x808 -> 1440x832; here 320x180 -> 320x192)
    are decoded straight into the batch: every batch must hold the decoded pixels of its own images
    (a buffer the decoder silently refused once left stale rows there)."""
    import numpy as np

    from sainet.core.geometry import PAD_VALUE
    from sainet.core.imaging import decode_rgb

    synthesize(tmp_path / "src", images=6, size=(320, 180), seed=5, background=0.2)
    pack(tmp_path / "src", tmp_path / "shards", PackOptions(container="shards"))
    pack(tmp_path / "src", tmp_path / "lmdb", PackOptions(container="lmdb"))
    data = {"shm": tmp_path / "shards", "lmdb": tmp_path / "lmdb", "disk": tmp_path / "src"}[kind]
    loader = build_loader(data, kind, batch_size=3, imgsz="320x180", augment=False, threads=2)
    try:
        src = loader.source
        names = list(src.names)
        for _ in range(2):  # the second epoch reuses the batch buffers of the first
            for batch in loader:
                for k, name in enumerate(batch["im_file"]):
                    want = decode_rgb(src.payload(names.index(name)), name)
                    img = batch["img"][k].permute(1, 2, 0).numpy()
                    assert np.array_equal(img[6:186], want), name
                    assert (img[:6] == PAD_VALUE).all() and (img[186:] == PAD_VALUE).all()
    finally:
        loader.close()
