"""The CPU executor's speed levers stay within stated bounds of the exact paths they replace."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from loaders.augment.cpu import (
    apply_hsv,
    apply_hsv_fast,
    finish_image,
    hsv_op,
    hsv_over,
    mixup_partners,
    render_image,
)
from loaders.augment.hyp import Hyp
from loaders.augment.plan import plan_batch
from sainet.core.geometry import PAD_VALUE
from tests.test_augment import assert_boxes_cover_their_colour, patch_images, render


def colour_chart() -> np.ndarray:
    """Every 2nd OpenCV hue x every 8th saturation x every 8th value, as RGB (180 x 1024 x 3)."""
    h, s, v = np.meshgrid(np.arange(0, 180, 2), np.arange(0, 256, 8), np.arange(0, 256, 8), indexing="ij")
    hsv = np.stack([h, s, v], -1).reshape(-1, 1, 3).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(90, -1, 3)


def test_apply_hsv_is_ultralytics_random_hsv_exactly():
    """The same draw through Ultralytics' RandomHSV (BGR) and sainet's apply_hsv (RGB): equal pixels."""
    from ultralytics.data.augment import RandomHSV

    chart = colour_chart()
    for seed in range(6):
        np.random.seed(seed)
        r = np.random.uniform(-1, 1, 3) * [0.015, 0.7, 0.4]
        np.random.seed(seed)
        bgr = np.ascontiguousarray(chart[..., ::-1])
        RandomHSV(0.015, 0.7, 0.4)({"img": bgr})
        ours = chart.copy()
        apply_hsv(ours, (1 + r[0], 1 + r[1], 1 + r[2]))
        np.testing.assert_array_equal(ours, bgr[..., ::-1])


def test_fast_hsv_stays_within_a_few_levels_of_the_exact_one():
    """apply_hsv_fast vs apply_hsv over Ultralytics' default gain ranges and a wider hue range (both
    signs of the hue shift, the mirrored conversion included) on a colour chart: at least 95% of
    values equal (99% overall), none more than 3 levels off."""
    chart = colour_chart()
    rng = np.random.default_rng(0)
    for hue in (0.015, 0.3):
        for _ in range(15):
            g = tuple(float(x) for x in rng.uniform(-1, 1, 3) * [hue, 0.7, 0.4] + 1)
            a, b = chart.copy(), chart.copy()
            apply_hsv(a, g)
            apply_hsv_fast(b, g)
            diff = np.abs(a.astype(int) - b.astype(int))
            assert diff.max() <= 3 and (diff == 0).mean() > 0.95, (g, diff.max(), (diff == 0).mean())


@pytest.mark.parametrize("hyp", [Hyp(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, flipud=0.5),
                                 Hyp(mosaic=0, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, scale=0.5)])
def test_resize_path_matches_the_warp_within_a_pixel(hyp):
    """Axis-aligned placements are drawn with cv2.resize; forcing warpAffine gives nearly the same
    image (differences only along edges, from rounding positions to whole pixels), and the boxes
    still cover their colour."""
    imgs, labels = patch_images(6, seed=11)
    plan = plan_batch(np.random.default_rng(3), [(240, 160)] * 6, labels, (160, 224), hyp, augment=True)
    fast = render(plan, imgs)
    assert assert_boxes_cover_their_colour(plan, fast, 0.9) > 3
    slow = render(plan, imgs, resize=False)  # warpAffine everywhere
    diff = np.abs(fast.astype(int) - slow.astype(int)).max(axis=3)
    assert (diff <= 2).mean() > 0.97, (diff <= 2).mean()
    # a large difference is always next to an edge of the exact image (position rounded, not wrong)
    edges = np.stack([cv2.dilate(cv2.Canny(s, 8, 24), np.ones((5, 5), np.uint8)) > 0 for s in slow])
    edges[:, [0, -1]] = edges[:, :, [0, -1]] = True  # a partly covered border pixel: blended by the warp, not by resize
    assert (diff[~edges] <= 4).all()


@pytest.mark.parametrize("hyp", [
    Hyp(mixup=0.5),  # mosaic of letterbox-shaped frames, axis-aligned (cv2.resize), half of them blended
    Hyp(mixup=0.5, degrees=15, shear=5, fliplr=0.5, flipud=0.5),  # warped quadrants (rectangles overlap)
    Hyp(mosaic=0, scale=0.9, translate=0.3, mixup=0.5),  # one placement, padding on its sides
    Hyp(mosaic=0, degrees=20, hsv_h=0.4),  # a whole-image warp (no cover), a hue shift past the fast path
])
@pytest.mark.parametrize("exact", [False, True])
def test_hsv_over_painted_pixels_equals_hsv_over_the_image(hyp, exact):
    """HSV converted only inside what `render_image` painted, the padding filled with the padding's
    converted colour, gives the same bytes as converting the whole image, for both colour paths,
    with mixup (the union of two covers) and with rotated quadrants; and the saving is real: the
    covers leave padding out."""
    rng = np.random.default_rng(3)
    sizes = [(160, 90), (90, 160), (200, 113), (120, 120), (77, 131), (160, 90)]
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
    labels = [(np.zeros(1, np.int32), np.array([[0.5, 0.5, 0.3, 0.3]], np.float32))] * len(imgs)
    uncovered = 0
    for seed in range(5):
        plan = plan_batch(np.random.default_rng(seed), sizes, labels, (128, 160), hyp, augment=True)
        n = len(plan.images)
        out = np.empty((n, 128, 160, 3), np.uint8)
        covers = [render_image(plan.images[k], imgs, [(1.0, 1.0)] * len(imgs), out[k]) for k in range(n)]
        ref = out.copy()
        partners = mixup_partners(plan, out)
        for k in range(n):
            finish_image(plan, k, ref, partners, exact_colour=exact)
            finish_image(plan, k, out, partners, exact_colour=exact, covers=covers)
            if covers[k] is not None:
                mask = np.zeros((128, 160), bool)
                for x0, y0, x1, y1 in covers[k]:
                    mask[y0:y1, x0:x1] = True
                uncovered += int((~mask).sum())
        np.testing.assert_array_equal(out, ref)
    if hyp.degrees < 20:
        assert uncovered > 0


def test_hsv_over_an_empty_cover_fills_the_converted_padding():
    img = np.full((8, 40, 3), PAD_VALUE, np.uint8)
    ref = img.copy()
    g = (1.01, 0.6, 1.3)
    apply_hsv(ref, g)
    hsv_over(img, hsv_op(g, exact=True), ())
    np.testing.assert_array_equal(img, ref)
    assert ref[0, 0, 0] != PAD_VALUE
