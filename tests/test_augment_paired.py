"""Image-by-image parity with Ultralytics (issue 22; `sainet.bench.paired`): each of sainet's train
images against the image Ultralytics' own transforms make of the same sources under the same draws
(mosaic centre, affine, HSV gains, flips). The boxes must agree to the float and the pixels up to
resampling; a known-bad variant of each kind (no HSV: pixels; no left-right flip: boxes) must not."""

from __future__ import annotations

import pytest

from cache_tools import PackOptions, pack
from loaders.dali import dali_available
from sainet.bench.paired import paired_draws
from sainet.synth import synthesize

IMGSZ = 128
#: the dali cases need nvidia-dali (installed by `make venv`: they run in `make test`)
DALI = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    src, store = root / "src", root / "lmdb"
    # 2.25x the output's long side, as 1440x808 -> 640: the train decode runs at a reduced DCT scale
    synthesize(src, images=48, size=(288, 162), seed=3, val_fraction=0)
    pack(src, store, PackOptions(container="lmdb"))
    return src, store


def _check_twins(r, *, pixels: float) -> None:
    assert r.images == 48 and r.boxes[0] == r.boxes[1] > 48
    assert r.box_max_abs_px < 0.01 and r.classes_equal  # the same boxes and classes: geometry, clipping, box filter, flips
    assert r.pixel_mean_abs < pixels  # resampling only (grey levels of 255)
    assert all(abs(s) < 0.1 for s in r.shift_px)  # no sub-pixel bias between the images
    assert 0.85 < r.sharpness_ratio < 1.15  # resampling: sainet's one resample is a little sharper (README)


def test_lmdb_train_images_are_ultralytics_twins(data):
    _check_twins(paired_draws(*data, images=48, batch=8, imgsz=IMGSZ, seed=5), pixels=3.0)


@DALI
def test_dali_cpu_train_images_are_ultralytics_twins(data):
    _check_twins(paired_draws(*data, images=48, batch=8, imgsz=IMGSZ, seed=5, kind="dali"), pixels=4.0)


@pytest.mark.parametrize("kind", ["lmdb", pytest.param("dali", marks=DALI)])
@pytest.mark.parametrize("size", [(192, 108), (288, 162), (448, 252)])
def test_resampled_as_ultralytics_the_twins_are_as_sharp(tmp_path, size, kind):
    """resample="ultralytics" at decode ratios 1.5, 2.25 and 3.5 (imgsz 128): the sharpness of the
    twins within 2 % (the fast path: +37 % at 1.5, -10 % at 3; benchmarks/README.md), for the CPU
    loaders and for dali (CPU mode: DALI's full decode, then the same load-size resize and warp)."""
    src, store = tmp_path / "src", tmp_path / "lmdb"
    synthesize(src, images=24, size=size, seed=3, val_fraction=0)
    pack(src, store, PackOptions(container="lmdb"))
    r = paired_draws(src, store, images=24, batch=8, imgsz=IMGSZ, seed=5, resample="ultralytics", kind=kind)
    assert r.box_max_abs_px < 0.01 and r.classes_equal and r.pixel_mean_abs < 1.5
    assert abs(r.sharpness_ratio - 1) < 0.02


@DALI
def test_dali_cpu_resampled_as_ultralytics_is_the_cpu_loaders_batch(data):
    """dali (CPU mode) with resample="ultralytics": DALI's full decode, the load-size resize and the
    warp of every tile give the lmdb loader's batches in that mode, pixel for pixel (both decode
    with libjpeg-turbo); its partner history is sized at the load size."""
    import torch

    from loaders import build_loader

    out = {}
    for kind in ("lmdb", "dali"):
        loader = build_loader(data[1], kind, batch_size=8, imgsz=IMGSZ, seed=4, device="cpu", resample="ultralytics", threads=2)
        try:
            assert loader._decoded_bytes(288, 162) == 128 * 72 * 3
            out[kind] = [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in b.items()} for b in loader]
        finally:
            loader.close()
    assert len(out["lmdb"]) == len(out["dali"]) == 6
    for a, b in zip(out["lmdb"], out["dali"], strict=True):
        assert a["im_file"] == b["im_file"] and torch.equal(a["bboxes"], b["bboxes"]) and torch.equal(a["img"], b["img"])


@DALI
@pytest.mark.parametrize(("resample", "want"), [("fast", 288 * 162 * 3), ("ultralytics", 128 * 72 * 3)])
def test_dali_on_the_gpu_sizes_its_partner_history_by_what_it_keeps(data, resample, want):
    """The GPU (`mixed`) rule, asked of a CPU-built loader: DALI's full-size decode is what a
    train sample holds, or with resample="ultralytics" the load-size image it is resized to."""
    from loaders import build_loader

    loader = build_loader(data[1], "dali", batch_size=8, imgsz=IMGSZ, device="cpu", resample=resample, threads=2)
    try:
        loader.dali_device = "mixed"
        assert loader._decoded_bytes(288, 162) == want
    finally:
        loader.close()


def test_known_bad_variants_are_not_twins(data):
    no_hsv = paired_draws(*data, images=48, batch=8, imgsz=IMGSZ, seed=5, sainet_hyp={"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0})
    assert no_hsv.box_max_abs_px < 0.01 and no_hsv.pixel_mean_abs > 10
    no_flip = paired_draws(*data, images=48, batch=8, imgsz=IMGSZ, seed=5, sainet_hyp={"fliplr": 0.0})
    assert no_flip.box_max_abs_px > 5


def test_without_hsv_on_both_sides_and_at_an_imgsz_of_factor_three(data):
    """Ultralytics draws no HSV gains when they are all 0; whole-pixel centres survive imgsz 96 (3 x 32)."""
    r = paired_draws(*data, images=16, batch=8, imgsz=96, seed=2, hyp={"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0})
    assert r.box_max_abs_px < 0.01 and r.classes_equal and r.pixel_mean_abs < 3.0


def test_pipelines_it_cannot_pair_are_refused(data):
    with pytest.raises(ValueError, match="rotation"):
        paired_draws(*data, images=8, batch=8, imgsz=IMGSZ, hyp={"degrees": 10.0})
    with pytest.raises(ValueError, match="resample 'sharp': one of fast, ultralytics"):
        paired_draws(*data, images=8, batch=8, imgsz=IMGSZ, resample="sharp")
