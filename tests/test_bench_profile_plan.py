"""bench-loader (shape of its output, not its speed), profile and plan verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sainet.bench.gil import find_py_spy
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
                              "--loaders", "disk,ram,shm,lmdb,lmdb-mp,dali,ultralytics,raw-shm,raw-lmdb-mp", "--work", str(tmp_path / "w"),
                              "--out", str(tmp_path / "results"), "--tag", "t", "--json"])
    doc = _json(res)
    by = {r["name"]: r for r in doc["results"]}
    assert {"decode", "work-minimum", "raw-copy"} <= set(by)
    for name in ("disk", "ram", "shm", "lmdb", "lmdb-mp", "dali", "ultralytics", "raw-shm", "raw-lmdb-mp"):
        r = by[name]
        # of the PSS, the stores' own pages (shared with every reader), counted apart from the loader's memory
        assert r["pss_store_mb"] is not None and r["pss_store_mb"] >= 0, r
        if name == "disk":  # reads the source's files: maps no store
            assert r["pss_store_mb"] == 0, r
        if name == "raw-lmdb-mp":  # its processes map the raw LMDB store and read frames straight from it
            assert r["pss_store_mb"] > 0, r
        # the serial share of the loader's CPU time, and the Amdahl ceiling it implies: the parent's CPU
        # where the work runs in other processes, the trainer's GIL (sampled by py-spy) where it runs on threads
        if r["serial_share"] is not None:
            assert 0 < r["serial_share"] <= 1 and r["amdahl_ceiling"] == pytest.approx(1 / r["serial_share"])
            procs = name in ("lmdb-mp", "raw-lmdb-mp", "ultralytics")
            assert r["serial_basis"] == ("parent CPU" if procs else "GIL"), r
            if not procs:
                assert r["serial_share"] == r["gil_share"]
        # the GIL share, sampled by py-spy (make test installs it): a figure, or the reason there is none
        if r["gil_share"] is not None:
            assert 0 <= r["gil_share"] <= 1 and r["gil_note"] == "", r
        else:
            assert r["gil_note"] or find_py_spy() is None, r
        assert r["images_per_s"] > 0 and r["batches"] == 3 and r["p50_ms"] > 0 and r["pss_mb"] >= 0, r
        # ratios come from the figures of this same run
        assert r["ratios"]["vs_decode"] == pytest.approx(r["images_per_s"] / by["decode"]["images_per_s"], rel=1e-9)
        wm = "mpx_vs_work-minimum" if name == "ultralytics" else "vs_work-minimum"  # its square vs the reference's 320x192
        assert r["ratios"][wm] == pytest.approx(r["megapixels_per_s"] / by["work-minimum"]["megapixels_per_s"], rel=1e-9)
        assert r["out_shape"] == ("320x320" if name == "ultralytics" else "320x192") and r["augment"].startswith("mosaic=1")
        # CPU time per output image, and its ratio to the work-minimum's (the figure steady on a busy host)
        assert r["cpu_ms_per_image"] > 0
        # 12 work-minimum images can take less CPU than one clock tick (10 ms): then there is no ratio to give
        if name != "ultralytics" and by["work-minimum"]["cpu_ms_per_image"]:
            assert r["ratios"]["cpu_vs_work-minimum"] == pytest.approx(
                by["work-minimum"]["cpu_ms_per_image"] / r["cpu_ms_per_image"], rel=1e-9)
        if name != "ultralytics":
            # Ultralytics' batches are square (320x320), these are 320x192: no images/s ratio, only megapixels/s
            assert "vs_ultralytics" not in r["ratios"]
            assert r["ratios"]["mpx_vs_ultralytics"] == pytest.approx(
                r["images_per_s"] * 192 / (by["ultralytics"]["images_per_s"] * 320), rel=1e-9)
            assert r["decodes_per_image"] == (0 if name.startswith("raw") else 1)
    # mosaic partners from Ultralytics' buffer of decoded images (no decode); a mixup partner (0.15) is decoded
    assert by["ultralytics"]["decodes_per_image"] == pytest.approx(1.15)
    assert doc["host"]["profile"] == "cpu"
    saved = tmp_path / "results" / "cpu"
    assert (saved / "t.json").is_file() and (saved / "t.png").stat().st_size > 1000


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_bench_json_is_the_only_stdout_and_source_untouched(tmp_path):
    """A real process (as a user pipes it into json.tool): stdout parses as JSON although Ultralytics
    logs while it scans; the source folder keeps its exact file list and mtimes; at a square shape
    the ratio to Ultralytics is in images/s, and with --repeats every row keeps each round's figure."""
    src = tmp_path / "src"
    synthesize(src, images=12, size=(320, 180), seed=3, val_fraction=0.25)
    before = _files(src)
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "sainet", "bench-loader", "--source", str(src), "--imgsz", "192", "--batch", "4",
                           "--batches", "2", "--repeats", "2", "--loaders", "lmdb,ultralytics", "--work", str(tmp_path / "w"),
                           "--out", str(tmp_path / "results"), "--tag", "j", "--json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert _files(src) == before
    by = {r["name"]: r for r in doc["results"]}
    lm, ul = by["lmdb"], by["ultralytics"]
    assert lm["out_shape"] == ul["out_shape"] == "192x192" and lm["pixels_per_batch"] == 4 * 192 * 192
    assert len(lm["repeats"]) == 2 and lm["images_per_s"] == pytest.approx(sum(lm["repeats"]) / 2)
    assert lm["ratios"]["vs_ultralytics"] > 0 and "mpx_vs_ultralytics" not in lm["ratios"]
    assert not list(tmp_path.glob("w/sainet-bench-ultralytics-*"))  # the private link tree is removed


def test_headline_names_the_shapes_compared():
    from sainet.bench import BenchResult, fill_ratios, headline

    rows = [BenchResult("lmdb", "loader", 100.0, out_shape="1440x832", megapixels_per_s=100 * 1440 * 832 / 1e6),
            BenchResult("ultralytics", "loader", 40.0, out_shape="1440x1440", megapixels_per_s=40 * 1440 * 1440 / 1e6)]
    fill_ratios(rows)
    text = headline(rows)
    assert "1440x832" in text and "1440x1440" in text and "megapixels/s" in text and "vs_ultralytics" not in rows[0].ratios
    rows[1].out_shape, rows[1].megapixels_per_s = "1440x832", rows[0].megapixels_per_s * 0.4
    rows[0].ratios.clear()
    fill_ratios(rows)
    assert "2.50x Ultralytics" in headline(rows) and "both at 1440x832" in headline(rows)


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
    """A store that does not fit the target: the plan is printed, then exit 5 with the numbers."""
    res = runner.invoke(app, ["plan", "--source", str(source), "--imgsz", "320x180", "--to", str(tmp_path / "s"),
                              "--assume-free", "10KB", "--json"])
    assert res.exit_code == 5, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])
    assert doc["images"] == 16 and doc["fits"] is False
    assert "needs" in doc["target"]["verdicts"]["jpeg"]  # 10 KB free: refused with the numbers
    assert "does not fit" in res.stderr and "would fit: pack --mode jpeg" in res.stderr


def test_plan_advice_names_a_loader_that_reads_the_advised_container():
    """The cpu profile recommends the lmdb loader; advice to pack shards into /dev/shm must then name
    the loader that reads shards, or `train` refuses what `plan` advised."""
    from loaders.backends import get_backend
    from sainet.budget import _loader_for
    from sainet.profiles import get_profile

    cpu = get_profile("cpu")
    assert cpu.recommended["loader"] == "lmdb"
    assert _loader_for(cpu, "shards") == "shm" and _loader_for(cpu, "lmdb") == "lmdb"
    for name in ("a100x2", "h200", "h200-shm", "a10g", "a5000", "h100", "cpu"):
        prof = get_profile(name)
        for container in ("shards", "lmdb"):
            b = get_backend(_loader_for(prof, container))
            assert b.reads == "store" and b.container in (None, container), (name, container)
    doc = _json(runner.invoke(app, ["plan", "--profile", "cpu", "--source", "200@1440x808:180KB", "--json"]))
    assert "/dev/shm (shards) and train with --loader shm" in doc["recommendation"]
