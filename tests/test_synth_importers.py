"""`sainet synth` in every layout, read back by the matching importer, gives identical samples."""

from __future__ import annotations

import numpy as np
import pytest

from sainet.core.datasets import LAYOUTS, detect_layout, open_dataset
from sainet.core.imaging import decode_rgb, probe
from sainet.synth import SYNTH_LAYOUTS, render, synthesize

SIZE = (160, 96)


def _expected(result):
    out = {}
    for im in result:
        cls = np.array([o.cls for o in im.objects], np.int32)
        boxes = np.array(
            [((o.box[0] + o.box[2]) / 2 / im.width, (o.box[1] + o.box[3]) / 2 / im.height,
              (o.box[2] - o.box[0]) / im.width, (o.box[3] - o.box[1]) / im.height) for o in im.objects],
            np.float32,
        ).reshape(-1, 4)
        out[im.name] = (im.split, cls, boxes, im.jpeg)
    return out


@pytest.fixture(scope="module")
def synth_all(tmp_path_factory):
    made = {}
    for layout in SYNTH_LAYOUTS:
        out = tmp_path_factory.mktemp(layout)
        classes = ["smoke"] if layout == "pyrosdis" else ["fire", "smoke"]
        made[layout] = (out, synthesize(out, images=10, size=SIZE, layout=layout, seed=7, background=0.2, classes=classes,
                                        test_fraction=0, quirks=False))
    return made


@pytest.mark.parametrize("layout", SYNTH_LAYOUTS)
def test_roundtrip_each_layout(synth_all, layout):
    out, result = synth_all[layout]
    assert detect_layout(out) == layout
    ds = open_dataset(out)
    samples = list(ds.samples())
    assert ds.problems == []
    assert ds.names == (["smoke"] if layout == "pyrosdis" else ["fire", "smoke"])
    expected = _expected(result)
    assert sorted(s.name for s in samples) == sorted(expected)
    assert any(len(s.cls) == 0 for s in samples), "the fixture should contain a background image"
    for s in samples:
        split, cls, boxes, jpeg = expected[s.name]
        assert s.split == split
        np.testing.assert_array_equal(s.cls, cls)
        np.testing.assert_allclose(s.boxes, boxes, atol=1e-6)
        assert s.read() == jpeg
        assert s.original_size() == SIZE


def test_layouts_agree_with_each_other(synth_all):
    """Same seed, four two-class layouts: the importers yield the same samples (pyrosdis is smoke-only)."""
    per_layout = {}
    for layout, (out, _) in synth_all.items():
        if layout == "pyrosdis":
            continue
        # FASDD's names follow the published pattern (smoke_CV000003.jpg): match them by index.
        per_layout[layout] = {f"synth_{s.name[-10:-4]}.jpg": (s.split, s.cls.tolist(), s.boxes) for s in open_dataset(out).samples()}
    ref = per_layout["yolo"]
    for layout, got in per_layout.items():
        assert got.keys() == ref.keys(), layout
        for name, (split, cls, boxes) in got.items():
            assert (split, cls) == ref[name][:2], (layout, name)
            np.testing.assert_allclose(boxes, ref[name][2], atol=1e-6)


def test_fasdd_coco_annotations_match_yolo(synth_all):
    """FASDD ships both YOLO and COCO annotations; the COCO reader gives the same samples."""
    import shutil

    out, _ = synth_all["fasdd"]
    coco_only = out.parent / (out.name + "_coco")
    shutil.copytree(out, coco_only)
    shutil.rmtree(coco_only / "FASDD_CV" / "annotations" / "YOLO_CV")
    a = {s.name: s for s in open_dataset(out).samples()}
    ds = open_dataset(coco_only)
    assert ds.coco_dir is not None
    b = {s.name: s for s in ds.samples()}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].split == b[k].split
        np.testing.assert_allclose(a[k].boxes, b[k].boxes, atol=1e-6)


def test_synth_is_deterministic_and_boxes_cover_drawn_pixels():
    a_img, a_obj = render(11, 4, (320, 180), ["fire", "smoke"], 0.0)
    b_img, b_obj = render(11, 4, (320, 180), ["fire", "smoke"], 0.0)
    np.testing.assert_array_equal(a_img, b_img)
    assert a_obj == b_obj and a_obj
    bg, _ = render(11, 4, (320, 180), ["fire", "smoke"], 1.0)  # same scene, no objects drawn
    changed = np.abs(a_img.astype(int) - bg.astype(int)).max(axis=2) > 40
    inside = np.zeros_like(changed)
    for o in a_obj:
        x0, y0, x1, y1 = o.box
        inside[y0:y1, x0:x1] = True
    # Strongly changed pixels (the visible object) lie inside the union of the boxes.
    assert changed.sum() > 50
    assert (changed & ~inside).sum() <= 0.01 * changed.sum()


def test_synth_realistic_jpeg_size(tmp_path):
    result = synthesize(tmp_path, images=3, size=(1440, 808), seed=1)
    sizes = [len(r.jpeg) for r in result]
    assert all(100_000 <= s <= 300_000 for s in sizes), sizes
    img = decode_rgb(result[0].jpeg)
    assert img.shape == (808, 1440, 3)
    assert probe(result[0].jpeg).size == (1440, 808)


def test_synth_single_class_and_errors(tmp_path):
    res = synthesize(tmp_path / "s", images=4, size=(96, 64), classes=["smoke"], layout="pyrosdis", background=0)
    assert all(o.cls == 0 for r in res for o in r.objects)
    with pytest.raises(ValueError, match="fire"):
        synthesize(tmp_path / "x", images=2, classes=["dog"])
    with pytest.raises(ValueError, match="layout"):
        synthesize(tmp_path / "y", images=2, layout="kitti")


def test_layout_registry_is_complete():
    assert set(LAYOUTS) == set(SYNTH_LAYOUTS)
