"""Augmentation that could fail: boxes must keep covering what they mark, whatever the plan does."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from loaders.augment.cpu import finish_image, mixup_partners, render_image
from loaders.augment.hyp import Hyp
from loaders.augment.plan import plan_batch
from loaders.augment.torch_exec import render_batch

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8)


def patch_images(n: int, size=(240, 160), seed=0):
    """Grey images, each with 1-3 solid colour rectangles; labels are exactly those rectangles.
    Colour k marks box k of every image, so a box's colour is known from its position in the labels."""
    rng = np.random.default_rng(seed)
    w, h = size
    imgs, labels = [], []
    for _ in range(n):
        img = np.full((h, w, 3), 128, np.uint8)
        boxes, taken = [], np.zeros((h, w), bool)
        for _ in range(int(rng.integers(1, 4))):
            for _ in range(50):  # non-overlapping patches, so every box shows only its own colour
                bw, bh = int(rng.integers(w // 6, w // 3)), int(rng.integers(h // 6, h // 3))
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                if not taken[y0 : y0 + bh, x0 : x0 + bw].any():
                    break
            else:
                continue
            taken[y0 : y0 + bh, x0 : x0 + bw] = True
            img[y0 : y0 + bh, x0 : x0 + bw] = COLOURS[len(boxes)]
            boxes.append(((x0 + bw / 2) / w, (y0 + bh / 2) / h, bw / w, bh / h))
        imgs.append(img)
        labels.append((np.arange(len(boxes), dtype=np.int32), np.array(boxes, np.float32)))
    return imgs, labels


def render(plan, imgs, resize=True):
    H, W = plan.out_hw
    out = np.empty((len(plan.images), H, W, 3), np.uint8)
    for k in range(len(plan.images)):
        render_image(plan.images[k], imgs, [(1.0, 1.0)] * len(imgs), out[k], resize=resize)
    partners = mixup_partners(plan, out)
    for k in range(len(plan.images)):
        finish_image(plan, k, out, partners)
    return out


def assert_boxes_cover_their_colour(plan, out, min_fill):
    checked = 0
    for k, ip in enumerate(plan.images):
        for c, (x0, y0, x1, y1) in zip(ip.cls, ip.boxes, strict=True):
            xa, ya, xb, yb = int(np.ceil(x0)), int(np.ceil(y0)), int(np.floor(x1)), int(np.floor(y1))
            if xb - xa < 6 or yb - ya < 6:  # too thin to judge by its pixels
                continue
            H, W = plan.out_hw
            if min_fill < 0.5 and (x0 < 1 or y0 < 1 or x1 > W - 1 or y1 > H - 1):
                continue  # a rotated patch's corner cut by the border: its clipped box is mostly background
            inner = out[k, ya + 1 : yb - 1, xa + 1 : xb - 1].reshape(-1, 3).astype(int)
            match = (np.abs(inner - COLOURS[c]).max(axis=1) < 60).mean()
            # min_fill: ~1 for axis-aligned geometry; a rotated/sheared patch clipped by the border fills
            # less of its axis-aligned box. A misplaced box covers ~0% of its colour.
            assert match > min_fill, f"image {k} box {c} at {x0:.0f},{y0:.0f},{x1:.0f},{y1:.0f} covers {match:.0%} of its colour"
            checked += 1
        # no box claims a colour it does not cover: a box's class matches the patch under it (checked above)
    return checked


@pytest.mark.parametrize("name,hyp,out_hw,min_fill", [
    ("mosaic", Hyp(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0), (160, 160), 0.9),
    ("mosaic-rect", Hyp(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0), (128, 224), 0.9),
    ("mosaic-flips", Hyp(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, flipud=0.5), (128, 224), 0.9),
    ("affine", Hyp(mosaic=0, degrees=25, shear=8, translate=0.2, scale=0.5, hsv_h=0, hsv_s=0, hsv_v=0), (160, 224), 0.15),
    ("mosaic-affine-flips", Hyp(degrees=15, shear=5, flipud=0.5, fliplr=0.5, hsv_h=0, hsv_s=0, hsv_v=0), (192, 320), 0.15),
])
def test_boxes_follow_pixels(name, hyp, out_hw, min_fill):
    imgs, labels = patch_images(8, seed=zlib.crc32(name.encode()) % 1000)
    total = 0
    for seed in range(6):
        plan = plan_batch(np.random.default_rng(seed), [(240, 160)] * 8, labels, out_hw, hyp, augment=True)
        out = render(plan, imgs)
        total += assert_boxes_cover_their_colour(plan, out, min_fill)
    assert total > 20


def test_flips_mirror_boxes_exactly():
    imgs, labels = patch_images(4, seed=3)
    base = Hyp(mosaic=0, translate=0, scale=0, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0)
    lr = Hyp(mosaic=0, translate=0, scale=0, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=1.0)
    ud = Hyp(mosaic=0, translate=0, scale=0, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0, flipud=1.0)
    sizes = [(240, 160)] * 4
    p0 = plan_batch(np.random.default_rng(0), sizes, labels, (160, 256), base, augment=True)
    p1 = plan_batch(np.random.default_rng(0), sizes, labels, (160, 256), lr, augment=True)
    p2 = plan_batch(np.random.default_rng(0), sizes, labels, (160, 256), ud, augment=True)
    o0, o1, o2 = render(p0, imgs), render(p1, imgs), render(p2, imgs)
    for a, b, c in zip(p0.images, p1.images, p2.images, strict=True):
        np.testing.assert_allclose(b.boxes[:, [2, 0]], 256 - a.boxes[:, [0, 2]], atol=1e-9)
        np.testing.assert_allclose(b.boxes[:, [1, 3]], a.boxes[:, [1, 3]], atol=1e-9)
        np.testing.assert_allclose(c.boxes[:, [3, 1]], 160 - a.boxes[:, [1, 3]], atol=1e-9)
    assert np.abs(o1.astype(int) - o0[:, :, ::-1].astype(int)).max() <= 1
    assert np.abs(o2.astype(int) - o0[:, ::-1].astype(int)).max() <= 1


def test_hsv_changes_pixels_not_boxes():
    imgs, labels = patch_images(4, seed=5)
    a = Hyp(mosaic=0, hsv_h=0, hsv_s=0, hsv_v=0)
    b = Hyp(mosaic=0, hsv_h=0.5, hsv_s=0.9, hsv_v=0.9)
    pa = plan_batch(np.random.default_rng(2), [(240, 160)] * 4, labels, (160, 224), a, augment=True)
    pb = plan_batch(np.random.default_rng(2), [(240, 160)] * 4, labels, (160, 224), b, augment=True)
    # HSV draws its gains after the geometry, so the geometry and the boxes are the same
    for x, y in zip(pa.images, pb.images, strict=True):
        np.testing.assert_array_equal(x.boxes, y.boxes)
    assert np.abs(render(pa, imgs).astype(int) - render(pb, imgs).astype(int)).mean() > 3


def test_all_gains_zero_train_equals_eval():
    from loaders.augment.hyp import Hyp as H

    imgs, labels = patch_images(4, seed=9)
    sizes = [(240, 160)] * 4
    train = plan_batch(np.random.default_rng(0), sizes, labels, (192, 256), H.off(), augment=True)
    evalp = plan_batch(np.random.default_rng(0), sizes, labels, (192, 256), H.off(), augment=False)
    for a, b in zip(train.images, evalp.images, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-6)
    assert np.abs(render(train, imgs).astype(int) - render(evalp, imgs).astype(int)).max() <= 1


def test_cpu_and_torch_executors_agree():
    imgs, labels = patch_images(6, seed=4)
    hyp = Hyp(degrees=10, shear=4, mixup=0.5, flipud=0.3)
    for augment in (False, True):
        plan = plan_batch(np.random.default_rng(7), [(240, 160)] * 6, labels, (160, 256), hyp, augment=augment)
        cpu = render(plan, imgs)
        tch = render_batch(plan, [torch.from_numpy(i) for i in imgs], [(1.0, 1.0)] * 6).permute(0, 2, 3, 1).numpy()
        diff = np.abs(cpu.astype(int) - tch.astype(int))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8, (augment, diff.mean())  # seams and HSV rounding


def test_box_filter_drops_squashed_boxes():
    """A box pushed almost entirely out of the canvas is dropped, as Ultralytics' box_candidates does."""
    labels = [(np.array([0], np.int32), np.array([[0.02, 0.5, 0.04, 0.2]], np.float32))]
    hyp = Hyp(mosaic=0, translate=0, scale=0, fliplr=0, hsv_h=0, hsv_s=0, hsv_v=0)
    plan = plan_batch(np.random.default_rng(0), [(1000, 100)], labels, (64, 64), hyp, augment=True)
    assert len(plan.images[0].cls) == 0  # the 40x20 px box becomes 2.6x1.4 px: below Ultralytics' 2 px rule
    kept = plan_batch(np.random.default_rng(0), [(1000, 100)], labels, (640, 640), hyp, augment=True)
    assert len(kept.images[0].cls) == 1


def test_copy_paste_warns(caplog):
    with caplog.at_level("WARNING"):
        Hyp.from_dict({"copy_paste": 0.3, "lr0": 0.01})
    assert "no effect" in caplog.text
