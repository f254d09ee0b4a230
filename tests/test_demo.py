"""`sainet demo`: the workflow runs end to end (fast, tiny settings) and, with the demo's own settings,
the detector learns: mAP50 above `DEMO.map50_threshold` and a falling loss (slow: `make test-slow`)."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cache_tools.format import INDEX_NAME
from sainet.demo import DEMO, run_demo, store_root

SHM = Path("/dev/shm")
on_tmpfs = pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this host")


@pytest.fixture()
def shm_name():
    name = f"sainet-demo-cli-test-{os.getpid()}"
    yield name
    shutil.rmtree(SHM / name, ignore_errors=True)


def test_store_root_falls_back_with_a_reason(tmp_path):
    root, why = store_root(1, shm=tmp_path / "absent")
    assert root is None and "no writable" in why
    root, why = store_root(1, shm=tmp_path)
    assert (root is None and "not a tmpfs" in why) or root == tmp_path  # tmp_path on a tmpfs is a fine target
    if SHM.is_dir():
        root, why = store_root(1 << 60)  # more than any host has
        assert root is None and "needs" in why


@on_tmpfs
def test_demo_runs_every_step_and_packs_into_shm(tmp_path, shm_name):
    tiny = replace(DEMO, images=12, epochs=2, batch=4, bench_loaders=("shm",), bench_seconds=0.2)
    report = run_demo(tmp_path, tiny, shm_name=shm_name)
    steps = [s for s, _ in report.steps]
    assert steps == ["synth", "check", "store", "pack shards", "pack lmdb", "bench-loader", "train"]
    assert report.store == SHM / shm_name and (report.store / INDEX_NAME).is_file()
    assert {r.name for r in report.bench} >= {"decode", "shm"} and report.bench_saved.is_file()
    assert report.bench_saved.with_suffix(".png").is_file()  # the chart, its legend naming the shapes
    assert report.train is not None and (report.train.save_dir / "results.csv").is_file()
    # validated after every epoch: every row of results.csv holds measured val losses, not Ultralytics' 0
    rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader((report.train.save_dir / "results.csv").open())]
    assert len(rows) == 2 and all(r["val/box_loss"] + r["val/cls_loss"] + r["val/dfl_loss"] > 0 for r in rows)
    summary = dict(report.steps)["train"]
    assert "validated after each" in summary and "(epoch 2)" in summary
    assert report.next_steps and report.next_steps[0].startswith(f"sainet preview {report.store}")


def test_read_losses_leaves_out_epochs_that_were_not_validated(tmp_path):
    from sainet.demo import read_losses

    head = "epoch,train/box_loss,train/cls_loss,train/dfl_loss,metrics/mAP50(B),val/box_loss,val/cls_loss,val/dfl_loss\n"
    (tmp_path / "results.csv").write_text(head + "1,3,3,3,0,0,0,0\n2,2,2,2,0.5,1,1,1\n")
    assert read_losses(tmp_path / "results.csv") == [(6.0, 0.5)]  # epoch 1's 0 is no measurement


def _curve(results_csv: Path) -> tuple[list[float], list[float]]:
    rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(results_csv.open())]
    loss = [r["train/box_loss"] + r["train/cls_loss"] + r["train/dfl_loss"] for r in rows]
    return loss, [r["metrics/mAP50(B)"] for r in rows]


@pytest.mark.slow
@on_tmpfs
def test_demo_settings_learn(tmp_path, shm_name):
    """The demo's settings, as `sainet demo` runs them (bench left out): it learns, visibly."""
    report = run_demo(tmp_path, DEMO, shm_name=shm_name, bench=False)
    loss, map50 = _curve(report.train.save_dir / "results.csv")
    assert len(loss) == DEMO.epochs
    assert map50[-1] > DEMO.map50_threshold, map50
    assert loss[-1] < 0.7 * loss[0], loss  # the loss falls, by more than noise
    assert report.results_png is not None and report.results_png.is_file()
