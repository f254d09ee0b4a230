"""bench-loader (shape of its output, not its speed), profile and plan verdicts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sainet.cli import app
from sainet.synth import synthesize

runner = CliRunner()


def _json(res) -> dict:
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads(res.stdout[res.stdout.index("{"):])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-src")
    synthesize(out, images=16, size=(320, 180), seed=2, val_fraction=0.25)
    return out


def test_bench_loader_json_has_every_backend_and_references(source, tmp_path):
    res = runner.invoke(app, ["bench-loader", "--source", str(source), "--imgsz", "320x180", "--batch", "4", "--batches", "3",
                              "--loaders", "disk,ram,shm,lmdb,dali,ultralytics,raw-shm", "--work", str(tmp_path / "w"),
                              "--out", str(tmp_path / "results"), "--tag", "t", "--json"])
    doc = _json(res)
    by = {r["name"]: r for r in doc["results"]}
    assert {"decode", "work-minimum", "raw-copy"} <= set(by)
    for name in ("disk", "ram", "shm", "lmdb", "dali", "ultralytics", "raw-shm"):
        r = by[name]
        assert r["images_per_s"] > 0 and r["batches"] == 3 and r["p50_ms"] > 0 and r["pss_mb"] >= 0, r
        # ratios come from the figures of this same run
        assert r["ratios"]["vs_decode"] == pytest.approx(r["images_per_s"] / by["decode"]["images_per_s"], rel=1e-9)
        assert r["ratios"]["vs_work-minimum"] == pytest.approx(r["images_per_s"] / by["work-minimum"]["images_per_s"], rel=1e-9)
        if name != "ultralytics":
            assert r["ratios"]["vs_ultralytics"] == pytest.approx(r["images_per_s"] / by["ultralytics"]["images_per_s"], rel=1e-9)
    assert doc["host"]["profile"] == "cpu"
    saved = tmp_path / "results" / "cpu"
    assert (saved / "t.json").is_file() and (saved / "t.png").stat().st_size > 1000


def test_profile_names_cpu_here():
    doc = _json(runner.invoke(app, ["profile", "--json"]))
    assert doc["profile"] == "cpu"  # no GPU on this machine
    assert doc["host"]["cores"] >= 1 and doc["host"]["ram_gb"] > 0


def test_plan_reproduces_the_users_verdicts():
    """FASDD-sized (117k images of 1440x808, ~180 KB each) on the h200: a raw RAM cache (~419 GB)
    cannot fit 258 GB of RAM, Ultralytics cache=ram cannot either, the jpeg store (~21 GB) fits."""
    doc = _json(runner.invoke(app, ["plan", "--profile", "h200", "--source", "117000@1440x808:180KB", "--json"]))
    rows = {r["item"].split(" at ")[0]: r for r in doc["rows"]}
    raw, jpeg = rows["store raw"], rows["store jpeg"]
    assert 415e9 < raw["bytes"] < 425e9 and raw["host RAM (page cache)"].startswith("does not fit")
    assert 20e9 < jpeg["bytes"] < 22e9 and jpeg["host RAM (page cache)"].startswith("fits")
    cache = next(r for k, r in rows.items() if k.startswith("Ultralytics cache=ram"))
    assert cache["host RAM (page cache)"].startswith("does not fit")
    assert "jpeg" in doc["recommendation"]
    shm = _json(runner.invoke(app, ["plan", "--profile", "h200-shm", "--source", "117000@1440x808:180KB", "--json"]))
    rows = {r["item"].split(" at ")[0]: r for r in shm["rows"]}
    assert rows["store jpeg"]["/dev/shm"].startswith("fits") and rows["store raw"]["/dev/shm"].startswith("does not fit")
    assert "/dev/shm" in shm["recommendation"]


def test_plan_of_a_dataset_and_a_target(source, tmp_path):
    res = runner.invoke(app, ["plan", "--source", str(source), "--imgsz", "320x180", "--to", str(tmp_path / "s"),
                              "--assume-free", "10KB", "--json"])
    doc = _json(res)
    assert doc["images"] == 16
    assert "needs" in doc["target"]["verdicts"]["jpeg"]  # 10 KB free: refused with the numbers
