"""Stores: round trips for lmdb/shards x jpeg/raw, export, planner, damage detection, atomicity."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cache_tools import (
    PackOptions,
    check_fits,
    describe_store,
    estimate_store,
    export_store,
    fs_info,
    open_store,
    pack,
    verify_store,
)
from cache_tools.format import CURRENT_VERSION, HEADER_DTYPE, INDEX_NAME, decode_index
from sainet.cli import app
from sainet.core.check import check_dataset
from sainet.core.datasets import open_dataset
from sainet.core.errors import (
    CapacityError,
    StoreCorruptError,
    StoreExistsError,
    StoreFormatError,
    StoreVersionError,
)
from sainet.core.geometry import letterbox
from sainet.core.imaging import decode_rgb
from sainet.synth import synthesize
from tests.hostile_cli import small_tmpfs as mount_tmpfs

runner = CliRunner()
IMGSZ = (128, 224)  # raw frame (H, W) for 192x108 sources: 224/192 scale, padded height


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src")
    synthesize(out, images=14, size=(192, 108), seed=5, background=0.2)
    return out


@pytest.fixture(scope="module")
def source_samples(source):
    return {s.name: s for s in open_dataset(source).samples()}


@pytest.mark.parametrize("container", ["lmdb", "shards"])
@pytest.mark.parametrize("mode", ["jpeg", "raw"])
def test_round_trip(tmp_path, source, source_samples, container, mode):
    report = pack(source, tmp_path / "store", PackOptions(container=container, mode=mode, imgsz=IMGSZ,
                                                           shard_size=64 << 10))
    assert report.records == len(source_samples) and not report.bad
    with open_store(tmp_path / "store") as store:
        assert (store.container, store.mode, len(store)) == (container, mode, len(source_samples))
        assert store.classes == ["fire", "smoke"]
        if container == "shards":
            assert store.index.num_shards > 1  # records spread over several fixed-size shards
        for i in range(len(store)):
            rec = store[i]
            src = source_samples[rec.name]
            assert rec.split == src.split
            np.testing.assert_array_equal(rec.cls, src.cls)
            np.testing.assert_array_equal(rec.boxes, src.boxes)
            assert rec.orig_size == (192, 108)
            if mode == "jpeg":
                assert bytes(rec.payload) == src.read()
            else:
                frame = np.frombuffer(rec.payload, np.uint8).reshape(*IMGSZ, 3)
                expected, lb = letterbox(decode_rgb(src.read()), *IMGSZ)
                assert np.abs(frame.astype(int) - expected.astype(int)).max() <= 1
                assert (rec.pad, rec.new_size) == ((lb.left, lb.top), (lb.new_w, lb.new_h))
        labels = store.labels("train")
        assert len(labels) == sum(s.split == "train" for s in source_samples.values())
        assert all(lb["cls"].shape == (len(lb["bboxes"]), 1) for lb in labels)
    assert verify_store(tmp_path / "store").ok


def test_export_then_check(tmp_path, source, source_samples):
    pack(source, tmp_path / "store", PackOptions(container="lmdb"))
    n = export_store(tmp_path / "store", tmp_path / "exported")
    assert n == len(source_samples)
    report = check_dataset(open_dataset(tmp_path / "exported"))
    assert report.problems == []
    original = check_dataset(open_dataset(source))
    assert {k: (v.images, v.boxes, v.backgrounds) for k, v in report.splits.items()} == {
        k: (v.images, v.boxes, v.backgrounds) for k, v in original.splits.items()}
    for s in open_dataset(tmp_path / "exported").samples():
        assert s.read() == source_samples[s.name].read()  # byte-identical
    raw = tmp_path / "raw"
    pack(source, raw, PackOptions(container="shards", mode="raw", imgsz=IMGSZ))
    export_store(raw, tmp_path / "exported_raw")
    assert check_dataset(open_dataset(tmp_path / "exported_raw")).problems == []


def test_planner_refuses_and_accepts_with_injected_free_space(tmp_path, source):
    est = estimate_store(images=95_000, boxes=300_000, jpeg_payload=21 * 10**9, name_bytes=95_000 * 60,
                         raw_shape=(832, 1440))
    shm = fs_info("/dev/shm", free=125 * 10**9, mem_available=250 * 10**9)
    with pytest.raises(CapacityError) as e:
        check_fits(est, "raw", "shards", shm)
    msg = str(e.value)
    assert "raw at 1440x832 needs 341.5 GB" in msg and "125.0 GB free" in msg and "use --mode jpeg" in msg
    check_fits(est, "jpeg", "shards", shm)  # fits: no error
    # tmpfs pages are RAM: a roomy tmpfs on a host without the RAM refuses too
    with pytest.raises(CapacityError, match="RAM available"):
        check_fits(est, "jpeg", "shards", fs_info("/dev/shm", free=125 * 10**9, mem_available=10 * 10**9))
    # pack runs the planner before writing anything
    with pytest.raises(CapacityError):
        pack(source, tmp_path / "s", PackOptions(container="shards", free_bytes=10_000))
    assert not (tmp_path / "s").exists() and not (tmp_path / ".s.partial").exists()
    pack(source, tmp_path / "s", PackOptions(container="shards", free_bytes=10**9))
    assert (tmp_path / "s" / INDEX_NAME).is_file()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A real tmpfs (tests.hostile_cli mounts it); the test skips only where mounting is not permitted."""
    with mount_tmpfs(path, size) as mnt:
        if mnt is None:
            pytest.skip("mounting a tmpfs is not permitted here (needs root)")
        yield mnt


def test_planner_with_a_small_tmpfs_mount(tmp_path, source):
    with small_tmpfs(tmp_path / "mnt", "1m") as mnt:
        with pytest.raises(CapacityError, match="raw at"):
            pack(source, mnt / "raw", PackOptions(mode="raw", imgsz=(832, 1440)))
        report = pack(source, mnt / "jpeg", PackOptions(mode="jpeg"))
        assert report.container == "shards"  # the default on tmpfs
        assert verify_store(mnt / "jpeg").ok


def test_full_tmpfs_mid_write_is_a_clean_error(tmp_path, source):
    """The planner is told there is room; the real tmpfs fills mid-write: typed error, no SIGBUS, no store."""
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    with small_tmpfs(tmp_path / "mnt", "256k") as mnt:
        with pytest.raises(CapacityError, match="filesystem full"):
            pack(source, mnt / "s", PackOptions(container="shards", mode="raw", imgsz=IMGSZ, shard_size=256 << 10,
                                               free_bytes=10**9, mem_available=10**10))
        assert not (mnt / "s").exists()
        assert not (mnt / ".s.partial" / INDEX_NAME).exists()
        with pytest.raises(StoreFormatError):
            open_store(mnt / ".s.partial")
    assert before == {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}  # source untouched


def test_full_filesystem_injected_writer(tmp_path, source, monkeypatch):
    real = os.pwrite
    written = {"n": 0}

    def pwrite(fd, data, offset):
        written["n"] += len(data)
        if written["n"] > 60_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(CapacityError, match="filesystem full"):
        pack(source, tmp_path / "s", PackOptions(container="shards"))
    monkeypatch.setattr(os, "pwrite", real)
    assert not (tmp_path / "s").exists()
    report = pack(source, tmp_path / "s", PackOptions(container="shards", resume=True))
    assert report.resumed > 0 and report.records == 14 and verify_store(tmp_path / "s").ok


@pytest.mark.parametrize("container", ["lmdb", "shards"])
def test_flipped_payload_byte_is_named_by_verify(tmp_path, source, container):
    store = tmp_path / "s"
    pack(source, store, PackOptions(container=container))
    with open_store(store) as s:
        victim = 3
        rec = s.index.records[victim]
        name = s.index.name(victim)
        payload = bytes(s.payload(victim))
    data_file = store / ("data.mdb" if container == "lmdb" else f"shard-{int(rec['shard']):05d}.bin")
    blob = bytearray(data_file.read_bytes())
    pos = blob.find(payload) + len(payload) // 2
    blob[pos] ^= 0xFF
    data_file.write_bytes(blob)
    report = verify_store(store)
    assert not report.ok
    assert [b["name"] for b in report.bad] == [name]
    res = runner.invoke(app, ["verify", str(store)])
    assert res.exit_code == 1 and name in res.output
    with open_store(store) as s, pytest.raises(StoreCorruptError, match=name):
        s.payload(victim, verify=True)


def test_damaged_or_foreign_index_is_a_typed_error(tmp_path, source):
    store = tmp_path / "s"
    pack(source, store, PackOptions(container="shards"))
    index = store / INDEX_NAME
    good = index.read_bytes()
    rng = np.random.default_rng(0)
    for pos in [*rng.integers(HEADER_DTYPE.itemsize, len(good), 20), 12, 40, 100]:
        bad = bytearray(good)
        bad[int(pos)] ^= 0x5A
        index.write_bytes(bad)
        with pytest.raises((StoreCorruptError, StoreFormatError)):
            open_store(store)
    # newer version, foreign file, absurd counts (rejected before allocating anything)
    newer = bytearray(good)
    newer[8:10] = (CURRENT_VERSION + 1).to_bytes(2, "little")
    with pytest.raises(StoreVersionError):
        decode_index(bytes(newer), "x")
    with pytest.raises(StoreFormatError, match="not a sainet store"):
        decode_index(b"\x80\x04\x95pickle-payload" * 10, "x")
    absurd = np.frombuffer(good[: HEADER_DTYPE.itemsize], HEADER_DTYPE).copy()
    absurd["num_records"] = 2**62
    with pytest.raises(StoreFormatError, match="more than the index can hold"):
        decode_index(absurd.tobytes() + good[HEADER_DTYPE.itemsize:], "x")
    index.write_bytes(good)
    truncated_shard = store / "shard-00000.bin"
    truncated_shard.write_bytes(truncated_shard.read_bytes()[:1000])
    with open_store(store) as s, pytest.raises(StoreCorruptError, match="truncated"):
        s.payload(len(s) - 1)  # no SIGBUS: the short shard is refused before it is mapped
    assert runner.invoke(app, ["inspect", str(tmp_path / "nothing")]).exit_code == 4


def test_existing_store_needs_force_and_is_replaced_atomically(tmp_path, source):
    store = tmp_path / "s"
    pack(source, store, PackOptions(container="lmdb"))
    with pytest.raises(StoreExistsError):
        pack(source, store, PackOptions(container="lmdb"))
    pack(source, store, PackOptions(container="shards", force=True))
    assert describe_store(store)["container"] == "shards"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_corrupt_images_are_left_out_and_reported(tmp_path):
    src = tmp_path / "src"
    synthesize(src, images=6, size=(96, 64), val_fraction=0, background=0)
    imgs = sorted((src / "images" / "train").iterdir())
    imgs[1].write_bytes(imgs[1].read_bytes()[:200])
    imgs[2].write_bytes(b"")
    report = pack(src, tmp_path / "s", PackOptions(container="shards"))
    assert report.records == 4
    assert sorted(b["key"] for b in report.bad) == sorted(f"images/train/{p.name}" for p in imgs[1:3])
    assert describe_store(tmp_path / "s")["left_out"] == 2


def test_max_size_reencodes_and_says_so(tmp_path, source):
    report = pack(source, tmp_path / "s", PackOptions(container="shards", max_size=96))
    assert report.reencoded == 14
    with open_store(tmp_path / "s") as s:
        r = s[0]
        assert decode_rgb(r.payload).shape[:2] == (54, 96) and r.orig_size == (192, 108)


def _read_all(path: str) -> list[str]:
    with open_store(path) as s:
        return [f"{s[i].name}:{len(s[i].payload)}" for i in range(len(s))]


def test_store_is_shared_by_processes_never_pickled_whole(tmp_path, source):
    from concurrent.futures import ProcessPoolExecutor

    pack(source, tmp_path / "s", PackOptions(container="lmdb"))
    store = open_store(tmp_path / "s")
    assert len(pickle.dumps(store)) < 300  # only the path travels
    single = _read_all(str(tmp_path / "s"))
    with ProcessPoolExecutor(4) as pool:
        results = list(pool.map(_read_all, [str(tmp_path / "s")] * 8))
    assert all(r == single for r in results)


KILL_SCRIPT = """
import sys
from cache_tools import pack, PackOptions
pack(sys.argv[1], sys.argv[2], PackOptions(container=sys.argv[3], mode=sys.argv[4], imgsz=(128, 224), shard_size=48 << 10, resume=True, threads=2))
"""


@pytest.mark.parametrize("container,mode", [("shards", "jpeg"), ("lmdb", "raw")])
def test_kill9_during_pack_never_leaves_a_valid_incomplete_store(tmp_path, source, container, mode):
    """kill -9 at random moments: `inspect` accepts only complete stores; the rerun completes."""
    import time

    rng = np.random.default_rng(int(uuid.uuid4().int % 2**32))
    store = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for _trial in range(3):
        if store.exists():
            shutil.rmtree(store)
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(source), str(store), container, mode], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.3, 2.5)))
        proc.kill()
        proc.wait()
        res = runner.invoke(app, ["inspect", str(store), "--json"])
        if res.exit_code == 0:  # it finished before the kill: then it must be complete
            assert describe_store(store)["records"] == 14 and verify_store(store).ok
        else:
            assert not store.exists()
        done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(source), str(store), container, mode], env=env,
                              capture_output=True) if not store.exists() else None
        assert done is None or done.returncode == 0, done.stderr.decode()[-2000:]
        assert describe_store(store)["records"] == 14
        assert verify_store(store).ok
