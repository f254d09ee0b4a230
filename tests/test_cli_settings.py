"""Settings are resolved once (one WxH parser, one profile choice, one thread formula) and `--resume`
restores the run's shape, loader and options; the one private Ultralytics hook is watched."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sainet.core.errors import SettingsError
from sainet.core.geometry import parse_imgsz, parse_wxh
from sainet.settings import DEFAULT_IMGSZ, TrainSettings, default_threads, parse_bytes, parse_device

runner = CliRunner()


def test_settings_round_trip_keeps_the_rectangular_shape():
    s = TrainSettings(data="/dev/shm/fasdd", loader="dali", imgsz="1440x808", batch=16, threads=8, sets={"lr0": 0.01})
    assert s.imgsz == (832, 1440) and s.shape == (832, 1440)  # (h, w), 808 padded to stride 32
    back = TrainSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and back.imgsz == (832, 1440)
    assert TrainSettings(imgsz=(832, 1440)).imgsz == (832, 1440)  # an (h, w) tuple is taken as it is
    assert TrainSettings().imgsz is None and TrainSettings().shape == DEFAULT_IMGSZ


@pytest.mark.parametrize("field,value,option", [
    ("imgsz", "12xq", "--imgsz"), ("loader", "fast", "--loader"), ("stage", 3, "--stage"), ("batch", 0, "--batch"),
    ("epochs", -1, "--epochs"), ("device", "gpu", "--device"), ("threads", 0, "--threads"),
    ("resample", "sharp", "--resample"),
])
def test_settings_refuse_bad_values_naming_the_option(field, value, option):
    with pytest.raises(SettingsError, match=option):
        TrainSettings(**{field: value})


def test_one_parser_for_sizes_threads_profiles():
    assert parse_wxh("1440x808") == (1440, 808)
    assert parse_imgsz("1440x808") == (832, 1440) and parse_imgsz("640") == (640, 640) and parse_imgsz(320) == (320, 320)
    for bad in ("1440", "x808", "0x10", "axb", "1x2x3"):
        with pytest.raises(ValueError):
            parse_wxh(bad)
    assert parse_bytes("1GiB") == 1 << 30 and parse_bytes("125GB") == 125 * 10**9
    assert parse_device(" 0, 1") == "0,1" and parse_device("CPU") == "cpu"
    assert 1 <= default_threads() <= 8 and default_threads(recommended=1) == 1
    from sainet.profiles import choose_profile

    assert choose_profile("a10g").name == "a10g"
    with pytest.raises(SettingsError, match="--profile"):
        choose_profile("laptop")
    # no other WxH parser left in the CLI or the training code
    for path in [*Path(__file__).parents[1].joinpath("sainet", "cli").glob("*.py"),
                 Path(__file__).parents[1] / "sainet" / "train" / "run.py"]:
        assert '.split("x")' not in path.read_text(), path


def test_restore_run_brings_back_shape_loader_and_options(tmp_path):
    from sainet.train import restore_run
    from sainet.train.run import SETTINGS_FILE

    saved = TrainSettings(data="/dev/shm/pyro", loader="shm", imgsz="1440x808", batch=6, threads=3, prefetch=4,
                          model="yolov8s.yaml", stage=2).to_dict()
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    last = run / "weights" / "last.pt"
    __import__("torch").save({"epoch": 0, "train_args": {"epochs": 3}}, last)  # one epoch done: resumable
    (run / SETTINGS_FILE).write_text(json.dumps(saved))
    # What the CLI builds for `sainet train --resume RUN/weights/last.pt` (no --imgsz: None, not "640")
    r = restore_run(TrainSettings(resume=str(last), device="cpu"))
    assert (r.imgsz, r.loader, r.batch, r.threads, r.prefetch, r.stage, r.data) == (
        (832, 1440), "shm", 6, 3, 4, 2, "/dev/shm/pyro")
    assert r.resume == str(last) and r.device == "cpu"
    assert restore_run(TrainSettings(resume=str(last), threads=1)).threads == 1  # harmless options may change
    with pytest.raises(SettingsError, match="--imgsz"):
        restore_run(TrainSettings(resume=str(last), imgsz=640))
    with pytest.raises(SettingsError, match="--loader"):
        restore_run(TrainSettings(resume=str(last), loader="lmdb"))
    # a run made before the settings file existed: the trainer's options file
    (run / SETTINGS_FILE).unlink()
    (run / "sainet_options.json").write_text(json.dumps({"data": "/s", "loader": "lmdb", "imgsz": [832, 1440],
                                                          "threads": 2, "prefetch": 2, "layout": None}))
    assert restore_run(TrainSettings(resume=str(last))).imgsz == (832, 1440)
    with pytest.raises(SettingsError, match="--resume"):
        restore_run(TrainSettings(resume=str(tmp_path / "nope.pt")))


def test_resume_of_a_rectangular_run_keeps_its_shape(tmp_path, monkeypatch):
    """320x180 frames train at 192x320; an interrupted run resumed from the CLI trains at 192x320 again."""
    import sainet.train.trainer as T
    from cache_tools import PackOptions, pack
    from sainet.cli import app
    from sainet.synth import synthesize
    from sainet.train import train

    synthesize(tmp_path / "src", images=10, size=(320, 180), seed=7, val_fraction=0.3)
    pack(tmp_path / "src", tmp_path / "store", PackOptions(container="shards"))
    shapes: list[tuple[int, int]] = []
    real = T.SainetTrainer.preprocess_batch

    def spy(self, batch):
        shapes.append(tuple(batch["img"].shape[2:]))
        return real(self, batch)

    monkeypatch.setattr(T.SainetTrainer, "preprocess_batch", spy)

    def stop_after_first(trainer) -> None:  # noqa: ANN001
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainSettings(data=str(tmp_path / "store"), loader="shm", model="yolov8n.yaml", imgsz="320x180", epochs=2,
                            batch=4, device="cpu", project=str(tmp_path / "runs"), name="cut",
                            sets={"plots": False, "val": False}, callbacks={"on_model_save": [stop_after_first]}))
    assert set(shapes) == {(192, 320)}
    shapes.clear()
    last = tmp_path / "runs" / "cut" / "weights" / "last.pt"
    res = runner.invoke(app, ["train", "--resume", str(last), "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert shapes and set(shapes) == {(192, 320)}  # not 640x640
    rows = list(csv.DictReader((tmp_path / "runs" / "cut" / "results.csv").open()))
    assert len(rows) == 2  # continued to epoch 2 of 2


def test_the_private_amp_hook_is_still_where_it_is_used():
    """sainet.train.offline.replace_amp_check rebinds ultralytics.engine.trainer.check_amp (no public switch
    keeps AMP on without its download). Fail loudly if Ultralytics moves or renames it."""
    from ultralytics.engine import trainer as ul_trainer

    from sainet.train import offline

    assert callable(getattr(ul_trainer, "check_amp", None)), "ultralytics.engine.trainer.check_amp is gone"
    assert "check_amp(self.model)" in inspect.getsource(ul_trainer.BaseTrainer._setup_train)
    original = ul_trainer.check_amp
    try:
        offline.replace_amp_check()
        assert ul_trainer.check_amp is offline._local_amp_check
        import torch

        assert offline._local_amp_check(torch.nn.Linear(2, 2)) is False  # CPU: no AMP
    finally:
        ul_trainer.check_amp = original


def test_resume_of_a_finished_run_is_one_line_not_a_traceback(tmp_path):
    """A finished run's last.pt (Ultralytics strips it: epoch -1) cannot resume: exit 2 naming --resume,
    no new run folder; a checkpoint of epoch 0 (one epoch done) is resumable."""
    import torch

    from sainet.cli import app
    from sainet.train.run import _refuse_finished

    weights = tmp_path / "runs" / "done" / "weights"
    weights.mkdir(parents=True)
    torch.save({"epoch": -1, "train_args": {"epochs": 3}, "model": None}, weights / "last.pt")
    res = CliRunner().invoke(app, ["train", "--resume", str(weights / "last.pt"), "--project", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    assert "finished its 3 epochs" in res.output and "--resume" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["done"]
    torch.save({"epoch": 0, "train_args": {"epochs": 3}, "model": None}, weights / "mid.pt")
    _refuse_finished(weights / "mid.pt")  # does not raise
    (weights / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SettingsError, match="not a readable"):
        _refuse_finished(weights / "junk.pt")
