"""Issue 25, one value one trip: each value parsed or read once, one rule in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sainet.core.geometry as geometry
from cache_tools.format import INDEX_NAME
from cache_tools.store import is_store
from loaders import BACKENDS, build_loader
from loaders.backends import reader_for
from loaders.sampler import ShardedSampler
from sainet.cli._app import imgsz_type
from sainet.core.errors import DistributedError, StoreFormatError
from sainet.core.geometry import Imgsz, parse_imgsz
from sainet.core.topology import Topology, TorchrunEnv
from sainet.settings import LOADERS, TrainSettings

ROOT = Path(__file__).resolve().parents[1]


def test_the_image_size_is_parsed_once(monkeypatch):
    texts: list[str] = []
    real = geometry.parse_wxh
    monkeypatch.setattr(geometry, "parse_wxh", lambda t: texts.append(t) or real(t))
    hw = imgsz_type("1440x808")  # the CLI's option type: the one parse
    assert isinstance(hw, Imgsz) and hw == (832, 1440) and repr(hw) == "(832, 1440)"
    s = TrainSettings(data="x", imgsz=hw)
    assert s.imgsz is hw and s.replace(batch=2).imgsz is hw and parse_imgsz(hw) is hw
    assert texts == ["1440x808"]
    assert TrainSettings.from_dict(s.to_dict()).imgsz == hw  # a settings file (a torchrun rank's) parses its list


def test_the_trainer_takes_its_options_not_an_environment_variable():
    from sainet.train import trainer

    assert not hasattr(trainer, "ENV_OPTIONS") and not hasattr(trainer.SainetOptions, "to_env")
    with pytest.raises(TypeError, match="options=SainetOptions"):
        trainer.SainetTrainer(overrides={})


def test_torchrun_environment_is_read_in_one_place():
    env = {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8"}
    assert Topology.from_env(env) == Topology(11, 16, 3, 8) and TorchrunEnv.from_env(env).started
    assert Topology.from_env({}) == Topology() and not TorchrunEnv.from_env({}).started
    assert TorchrunEnv.from_env({"LOCAL_WORLD_SIZE": "4"}).local_world_size == 4
    with pytest.raises(DistributedError, match="RANK is not"):
        Topology.from_env({"WORLD_SIZE": "2"})
    names = re.compile(r"""["'](RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE)["']""")
    readers = sorted(str(p.relative_to(ROOT)) for pkg in ("sainet", "loaders", "cache_tools") for p in (ROOT / pkg).rglob("*.py")
                     if names.search(p.read_text()))
    assert readers == ["sainet/core/topology.py"], readers


def test_ultralytics_is_an_external_entry_of_the_backend_table(tmp_path):
    assert LOADERS == tuple(BACKENDS) and LOADERS[-1] == "ultralytics"
    assert [n for n, b in BACKENDS.items() if b.external] == ["ultralytics"]
    with pytest.raises(ValueError, match="Ultralytics' own"):
        build_loader(tmp_path, "ultralytics", batch_size=1, imgsz=64)


def test_one_store_rule_and_one_container_rule(tmp_path):
    assert not is_store(tmp_path)
    (tmp_path / INDEX_NAME).write_bytes(b"")
    assert is_store(tmp_path)  # whether the index is valid: open_store's job
    assert reader_for("lmdb", "lmdb", "/x") == "lmdb" and reader_for("dali", "shards", "/x") == "dali"
    assert reader_for("lmdb", "shards", "/x", given=False) == "shm"  # a profile's default, adapted
    with pytest.raises(StoreFormatError, match="--loader shm"):
        reader_for("lmdb", "shards", "/x")  # the user's choice, refused with the one that reads it


def test_the_sampler_records_set_epoch():
    s = ShardedSampler(10)
    assert not s.epoch_set
    s.set_epoch(3)
    assert s.epoch_set and s.epoch == 3
