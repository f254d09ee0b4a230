"""Augment distribution parity with Ultralytics (issue 22): sainet's train batches and Ultralytics'
own `YOLODataset`, on the same synthetic images and hyperparameters, compared statistic by statistic
with two-sample tests (`sainet.bench.parity`). Calibrated both ways: Ultralytics against itself with
another seed passes, and two known-bad sainet variants (mosaic partners from the batch only; no
HSV) fail. Every draw is seeded, so each p-value is the same on every run."""

from __future__ import annotations

import pytest

from loaders.dali import dali_available
from sainet.bench.parity import Row, compare, ks_2samp, proportions_z, run

#: a statistic differs when its two-sample p-value is below this (about 17 statistics per
#: comparison: a family-wise false alarm rate under 2 %)
ALPHA = 1e-3
COLOUR = {"mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"}
PARTNERS = {"same_batch_partner_share", "distinct_sources_per_batch"}


@pytest.fixture(scope="module")
def draws(tmp_path_factory):
    variants = {"batch_only": {"partner_batches": 0}, "no_hsv": {"hyp": {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}}}
    if dali_available():
        variants["dali"] = {"kind": "dali"}  # CPU mode here (~5 s of CPU)
    return run(tmp_path_factory.mktemp("parity"), variants=variants)


def _differ(rows: list[Row]) -> dict[str, float]:
    return {r.name: r.p for r in rows if r.p < ALPHA}


def test_the_tests_themselves():
    """The numpy KS and z tests give the textbook answers."""
    assert ks_2samp([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)
    d, p = ks_2samp(range(100), range(50, 150))
    assert d == 0.5 and p < 1e-9  # half the mass apart: scipy.stats.ks_2samp(method="asymp") gives 1.2e-11
    assert proportions_z(10, 100, 10, 100) == (0.0, 1.0)
    assert proportions_z(50, 100, 20, 100)[1] < 1e-4


def test_ultralytics_against_itself_with_another_seed_passes(draws):
    assert _differ(compare(draws["ultralytics_seed2"], draws["ultralytics"])) == {}


def test_sainet_lmdb_matches_ultralytics(draws):
    """Boxes, colour, pad, sharpness and mosaic partners all within noise of Ultralytics'."""
    assert _differ(compare(draws["lmdb"], draws["ultralytics"])) == {}


def test_sainet_dali_cpu_matches_ultralytics(draws):
    """DALI decodes at full size; the dali loader brings its train images to the CPU decoder's
    reduced-DCT size first, or its images are far sharper than Ultralytics' (KS p 6e-109)."""
    if "dali" not in draws:
        pytest.skip("nvidia-dali is not installed")
    assert _differ(compare(draws["dali"], draws["ultralytics"])) == {}


def test_partners_from_the_batch_only_fail(draws):
    """Without the partner history the partner statistics differ (and only they)."""
    assert set(_differ(compare(draws["batch_only"], draws["ultralytics"]))) == PARTNERS


def test_no_hsv_fails(draws):
    """Without HSV the per-image colour statistics differ."""
    assert COLOUR <= set(_differ(compare(draws["no_hsv"], draws["ultralytics"])))
