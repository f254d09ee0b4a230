"""`sainet train` on CPU: every loader trains and validates; rectangular; two-stage; no network."""

from __future__ import annotations

import csv
import logging
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cache_tools import PackOptions, pack
from sainet.cli import app
from sainet.core.errors import ClassMappingError
from sainet.synth import synthesize
from sainet.train import TrainRequest, resolve, train, two_stage

runner = CliRunner()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    synthesize(root / "fasdd", images=12, size=(320, 180), seed=4, val_fraction=0.25, background=0.1)
    synthesize(root / "pyro", images=10, size=(320, 180), seed=5, val_fraction=0.3, classes=["smoke"], layout="pyrosdis")
    pack(root / "fasdd", root / "lmdb", PackOptions(container="lmdb"))
    pack(root / "fasdd", root / "shards", PackOptions(container="shards"))
    pack(root / "pyro", root / "pyro-shards", PackOptions(container="shards"))
    return root


def _check_run(save_dir: Path) -> None:
    assert (save_dir / "results.csv").is_file()
    assert (save_dir / "weights" / "last.pt").is_file() and (save_dir / "weights" / "best.pt").is_file()
    rows = list(csv.DictReader((save_dir / "results.csv").open()))
    assert len(rows) == 2 and "metrics/mAP50(B)" in {k.strip() for k in rows[0]}  # trained and validated


@pytest.mark.parametrize("loader,data", [("dali", "shards"), ("lmdb", "lmdb"), ("shm", "shards"), ("ultralytics", "lmdb")])
def test_cli_train_each_loader(stores, tmp_path, loader, data):
    res = runner.invoke(app, ["train", "--data", str(stores / data), "--loader", loader, "--model", "yolov8n.yaml",
                              "--imgsz", "320", "--epochs", "2", "--batch", "4", "--device", "cpu",
                              "--project", str(tmp_path), "--name", loader])
    assert res.exit_code == 0, res.output + repr(res.exception)
    _check_run(tmp_path / loader)
    if loader != "ultralytics":
        telemetry = list(csv.DictReader((tmp_path / loader / "loader.csv").open()))
        assert len(telemetry) == 2 and all(0 <= float(r["data_wait_fraction"]) <= 1 for r in telemetry)
        assert "profile=" in res.output  # the run says which profile and values it used


@pytest.mark.parametrize("model,imgsz,train_hw,val_hw", [("yolov8n.yaml", "256", (256, 256), (160, 288)),
                                                       ("yolov8n-p6.yaml", "256", (256, 256), (192, 320)),
                                                       ("yolov8n-p6.yaml", "352x200", (256, 384), (256, 384))])
def test_shapes_follow_the_models_stride(stores, tmp_path, monkeypatch, model, imgsz, train_hw, val_hw):
    """At a square imgsz the val batches take Ultralytics' rect val shape at the model's largest
    stride (its trainer's ``gs``): 288x160 for 320x180 images at 256, 320x192 for a P6 model (stride
    64), whose head cannot take 288x160. A rectangular imgsz is padded to that stride too (352x224,
    padded to 32, trains at 384x256 with a P6 model), train and val, as Ultralytics pads its square."""
    from ultralytics.models.yolo.detect import DetectionValidator

    import sainet.train.trainer as T

    shapes: dict[str, set] = {"train": set(), "val": set()}
    real_val, real_train = DetectionValidator.preprocess, T.SainetTrainer.preprocess_batch

    def spy_val(self, batch):
        shapes["val"].add(tuple(batch["img"].shape[2:]))
        return real_val(self, batch)

    def spy_train(self, batch):
        shapes["train"].add(tuple(batch["img"].shape[2:]))
        return real_train(self, batch)

    monkeypatch.setattr(DetectionValidator, "preprocess", spy_val)
    monkeypatch.setattr(T.SainetTrainer, "preprocess_batch", spy_train)
    r = train(TrainRequest(data=str(stores / "lmdb"), loader="lmdb", model=model, imgsz=imgsz, epochs=1, batch=2,
                           device="cpu", project=str(tmp_path), name="p", threads=1))
    assert (r.save_dir / "results.csv").is_file()
    assert shapes == {"train": {train_hw}, "val": {val_hw}}


def test_rectangular_training_with_mosaic(stores, tmp_path, monkeypatch):
    import sainet.train.trainer as T

    shapes: list[tuple[int, int]] = []
    mosaic: list[bool] = []
    real_preprocess = T.SainetTrainer.preprocess_batch

    def spy(self, batch):
        shapes.append(tuple(batch["img"].shape[2:]))
        mosaic.append(self.train_loader.dataset.mosaic and self.train_loader.dataset.hyp.mosaic == 1.0)
        return real_preprocess(self, batch)

    monkeypatch.setattr(T.SainetTrainer, "preprocess_batch", spy)
    r = train(TrainRequest(data=str(stores / "shards"), loader="shm", model="yolov8n.yaml", imgsz="320x180", epochs=2,
                           batch=4, device="cpu", project=str(tmp_path), name="rect", sets={"close_mosaic": 0}))
    _check_run(r.save_dir)
    assert set(shapes) == {(192, 320)}  # H < W, padded to stride 32
    assert mosaic and all(mosaic)  # mosaic on for every training batch (close_mosaic=0)
    assert r.resolved["overrides"]["imgsz"] == 320 and r.resolved["imgsz"] == "320x192"
    val_rows = list(csv.DictReader((r.save_dir / "results.csv").open()))
    assert all("metrics/mAP50(B)" in {k.strip() for k in row} for row in val_rows)


def test_two_stage_starts_from_stage1_best(stores, tmp_path, caplog):
    optimizers: dict[str, tuple[str, set[float]]] = {}

    def read_optimizer(trainer):  # the optimizer Ultralytics really built, and its learning rate
        groups = trainer.optimizer.param_groups
        optimizers[trainer.args.name] = (type(trainer.optimizer).__name__, {g["initial_lr"] for g in groups})

    base = TrainRequest(data="", loader="shm", model="yolov8n.yaml", imgsz=160, epochs=2, batch=4, device="cpu",
                        project=str(tmp_path), name="ws", sets={"save_period": -1},
                        callbacks={"on_train_start": [read_optimizer]})
    with caplog.at_level(logging.INFO, logger="sainet.train.transfer"):
        r1, r2 = two_stage(base, str(stores / "shards"), str(stores / "pyro-shards"))
    # configs/train: stage 1 SGD lr0 0.01, stage 2 fine-tunes at lr0 0.001 (not optimizer=auto's own rate)
    assert optimizers == {"ws-stage1": ("SGD", {0.01}), "ws-stage2": ("SGD", {0.001})}
    _check_run(r1.save_dir)
    _check_run(r2.save_dir)
    assert r2.resolved["overrides"]["pretrained"] == str(r1.best)
    assert r1.resolved["overrides"]["lr0"] == 0.01 and r2.resolved["overrides"]["lr0"] == 0.001
    assert not r2.resolved["overrides"].get("single_cls")  # the store holds smoke alone: nothing to merge
    ckpt = torch.load(r2.best, map_location="cpu", weights_only=False)
    assert ckpt["train_args"]["pretrained"] == str(r1.best)
    assert ckpt["model"].nc == 1 and torch.load(r1.best, map_location="cpu", weights_only=False)["model"].nc == 2
    assert ckpt["model"].names == {0: "smoke"}
    assert "smoke: stage-1 class 1 → class 0" in caplog.text  # the head's smoke rows came from stage 1


def test_stage_classes_checked_before_training(stores, tmp_path):
    """Stage 2 names smoke: a fire + smoke store is refused (not merged), a smoke store lacks stage 1's fire."""
    base = TrainRequest(loader="shm", model="yolov8n.yaml", device="cpu", project=str(tmp_path))
    with pytest.raises(ClassMappingError, match=r"also holds fire .*sainet pack SRC --classes smoke"):
        resolve(base.replace(data=str(stores / "shards"), stage=2))
    with pytest.raises(ClassMappingError, match=r"has no class 'fire' \(its classes: smoke\)") as e:
        resolve(base.replace(data=str(stores / "pyro-shards"), stage=1))
    assert e.value.store == str(stores / "pyro-shards")
    overrides, _, _ = resolve(base.replace(data=str(stores / "shards"), stage=2, sets={"single_cls": True}))
    assert overrides["single_cls"] is True  # merging every class into one, when asked for, still works
    result = runner.invoke(app, ["train", "--data", str(stores / "shards"), "--stage", "2", "--device", "cpu",
                                 "--project", str(tmp_path)])
    assert result.exit_code == 2 and "--classes smoke" in result.output
    with pytest.raises(ClassMappingError, match="stage 2"):  # before stage 1 trains: no stage-1 run folder
        two_stage(base.replace(name="early", epochs=1), str(stores / "shards"), str(stores / "shards"))
    assert not list(tmp_path.glob("early*"))


def test_disk_loader_from_a_store_needs_its_one_source_folder(stores, tmp_path):
    """--loader disk on a store reads the folder it was packed from: a store packed from two folders
    (its source reads "a, b") or whose folder is gone is refused in one line, naming the store."""
    from sainet.core.errors import DatasetError

    base = TrainRequest(loader="disk", model="yolov8n.yaml", device="cpu", project=str(tmp_path))
    overrides, _, _ = resolve(base.replace(data=str(stores / "lmdb")))  # one folder, still there: reads it
    assert Path(overrides["data"]).exists()
    pack([stores / "fasdd", stores / "pyro"], tmp_path / "both", PackOptions(container="shards"))
    with pytest.raises(DatasetError, match=r"both: --loader disk .* is not one folder here"):
        resolve(base.replace(data=str(tmp_path / "both")))


def test_profile_values_and_explicit_flags(stores, tmp_path):
    overrides, options, chosen = resolve(TrainRequest(data=str(stores / "lmdb"), profile="a10g", device="cpu",
                                                      project=str(tmp_path)))
    assert (chosen["profile"], chosen["batch"], chosen["threads"]) == ("a10g", 12, 6)
    assert chosen["loader"] == "dali"  # the profile's loader
    overrides, options, chosen = resolve(TrainRequest(data=str(stores / "lmdb"), profile="a10g", batch=3, threads=1,
                                                      loader="lmdb", device="cpu", project=str(tmp_path)))
    assert (chosen["batch"], chosen["threads"], chosen["loader"]) == (3, 1, "lmdb")  # explicit flags win
    assert overrides["amp"] is False  # CPU
    own = tmp_path / "my-box.yaml"  # a profile file of one's own, as `sainet plan --profile` takes
    own.write_text("name: my-box\ngpus: 0\nvram_gb: 0\nram_gb: 24\ncores: 2\n"
                   "recommended: {loader: lmdb, store: shards, mode: jpeg, batch: 5, threads: 1, prefetch: 2}\n")
    overrides, options, chosen = resolve(TrainRequest(data=str(stores / "lmdb"), profile=str(own), device="cpu",
                                                      project=str(tmp_path)))
    assert (chosen["profile"], chosen["batch"], chosen["threads"], chosen["loader"]) == ("my-box", 5, 1, "lmdb")


def test_memory_plan_refuses_what_cannot_fit(stores, tmp_path, monkeypatch):
    from sainet import profiles
    from sainet.core.errors import CapacityError

    real = profiles.detect_host

    def tiny_host():
        h = real()
        return profiles.HostInfo(**{**h.as_dict(), "ram_available_gb": 0.05})

    monkeypatch.setattr(profiles, "detect_host", tiny_host)
    with pytest.raises(CapacityError, match="host RAM"):
        resolve(TrainRequest(data=str(stores / "lmdb"), loader="lmdb", imgsz="1440x808", batch=64, device="cpu",
                             project=str(tmp_path)))


def test_training_reaches_no_host(stores, tmp_path, monkeypatch):
    """With the network calls of Python's socket layer blocked, a run completes and tried none."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    r = train(TrainRequest(data=str(stores / "lmdb"), loader="lmdb", model="yolov8n.yaml", imgsz=160, epochs=2, batch=4,
                           device="cpu", project=str(tmp_path), name="offline"))
    _check_run(r.save_dir)
    assert attempts == []


def test_ultralytics_log_lines_name_sainets_loader_and_the_real_shape():
    """Ultralytics' "imgsz=320" and "Using N dataloader workers" rewritten for a 320x192 sainet run."""
    import logging

    from ultralytics.utils import LOGGER

    from sainet.train.trainer import SainetOptions, _truthful_log_lines

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    h = Keep()
    LOGGER.addHandler(h)
    try:
        with _truthful_log_lines(SainetOptions(data="x", loader="shm", imgsz=(192, 320), threads=3, prefetch=4)):
            LOGGER.info("Using 9 train, 3 val images for fraction=1.0 at imgsz=320\nUsing 2 dataloader workers\n")
            LOGGER.info("engine/trainer: batch=4, imgsz=320, lr0=0.01")
        LOGGER.info("Using 2 dataloader workers")  # outside a sainet run: untouched
    finally:
        LOGGER.removeHandler(h)
    assert "at imgsz=320 (sainet trains 320x192 WxH)" in seen[0]
    assert "Using sainet's shm loader: 3 decode threads, prefetch 4 batches (no DataLoader workers)" in seen[0]
    assert "imgsz=320 (sainet trains 320x192 WxH), lr0" in seen[1] and seen[2] == "Using 2 dataloader workers"
