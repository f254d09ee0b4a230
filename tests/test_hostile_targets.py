"""Pack targets: --force replaces only a store, never the source; one pack per target; full tmpfs; empty packs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from cache_tools import PackOptions, pack, verify_store
from cache_tools.target import TargetLock, lock_path, partial_path
from sainet.core.errors import CapacityError, StoreError, StoreExistsError, TargetError, TargetLocked
from tests.hostile import env, make_source
from tests.hostile_cli import HOLD_LOCK, concurrent_packs, digest_tree, small_tmpfs, target_outcomes

OPTS = PackOptions(container="shards", threads=1)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_source(tmp_path_factory.mktemp("targets") / "src", images=6)


def _user_folder(path):
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "thesis.txt").write_text("years of work\n")
    return path


@pytest.mark.parametrize("where", ["non-store folder", "source", "inside source", "contains source", "link to source",
                                  "file", "fake store"])
def test_force_refuses_what_is_not_a_store(tmp_path, src, where):
    work = tmp_path
    target = {
        "non-store folder": lambda: _user_folder(work / "home"),
        "source": lambda: src,
        "inside source": lambda: src / "images" / "store",
        "contains source": lambda: src.parent,
        "link to source": lambda: (work / "ln").symlink_to(src) or work / "ln",
        "file": lambda: (work / "f").write_text("keep") and work / "f",
        "fake store": lambda: ((_user_folder(work / "fake") / "index.sai").write_bytes(b"SAINETIX" + bytes(300))
                               and work / "fake"),
    }[where]()
    def snapshot():
        return digest_tree(target) if target.is_dir() else target.read_bytes() if target.exists() else None

    before_src, before_target = digest_tree(src), snapshot()
    with pytest.raises(TargetError, match="source|not a sainet store|replaces only"):
        pack(src, target, PackOptions(container="shards", threads=1, force=True))
    assert digest_tree(src) == before_src
    assert snapshot() == before_target
    assert not lock_path(target).exists() and not partial_path(target).exists()


def test_a_foreign_partial_folder_is_never_cleared(tmp_path, src):
    foreign = _user_folder(partial_path(tmp_path / "s"))
    with pytest.raises(TargetError, match="not a pack's partial folder"):
        pack(src, tmp_path / "s", OPTS)
    assert (foreign / "notes" / "thesis.txt").read_text() == "years of work\n"


def test_force_replaces_a_store_and_leaves_nothing_beside_it(tmp_path, src):
    pack(src, tmp_path / "s", PackOptions(container="lmdb", threads=1))
    with pytest.raises(StoreExistsError):
        pack(src, tmp_path / "s", OPTS)
    pack(src, tmp_path / "s", PackOptions(container="shards", threads=1, force=True))
    assert verify_store(tmp_path / "s").ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no lock file, no partial, no .old


def test_second_pack_refuses_or_waits_for_the_lock(tmp_path, src):
    to = tmp_path / "s"
    with TargetLock(to):
        with pytest.raises(TargetLocked, match=f"another pack is writing this target \\(pid {os.getpid()}\\)"):
            pack(src, to, OPTS)
        with pytest.raises(TargetLocked, match="after waiting 0.2s"):
            pack(src, to, PackOptions(container="shards", threads=1, lock_wait=0.2))
    holder = TargetLock(to)
    holder.acquire()
    threading.Timer(0.3, holder.release).start()
    assert pack(src, to, PackOptions(container="shards", threads=1, lock_wait=30)).records == 6


def test_kill9_of_the_lock_holder_leaves_no_stale_lock(tmp_path, src):
    to = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(to)], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TargetLocked, match=f"pid {holder.pid}"):
            pack(src, to, OPTS)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert lock_path(to).exists()  # the file stays after kill -9, the lock does not
    assert pack(src, to, OPTS).records == 6 and not lock_path(to).exists()


def test_two_packs_at_once_through_the_cli(tmp_path, src):
    outcome = concurrent_packs(tmp_path, src, 0)
    assert outcome.result == "clean", outcome.detail


@pytest.mark.parametrize("container", ["lmdb", "shards"])
def test_full_tmpfs_is_a_typed_error_and_gives_the_memory_back(tmp_path, src, container):
    with small_tmpfs(tmp_path / "mnt", "8m") as mnt:
        if mnt is None:
            pytest.skip("mounting a tmpfs is not permitted here")
        with pytest.raises(CapacityError, match="filesystem full.*removed to give the tmpfs"):
            pack(src, mnt / "s", PackOptions(container=container, mode="raw", imgsz=(832, 1440), threads=1,
                                              free_bytes=10**10, mem_available=10**11))
        assert list(mnt.iterdir()) == []
        assert os.statvfs(mnt).f_bfree * os.statvfs(mnt).f_frsize > 7 << 20  # the tmpfs is empty again


def test_a_pack_that_packs_nothing_leaves_no_store_and_keeps_the_old_one(tmp_path, src):
    bad = make_source(tmp_path / "bad", images=3, seed=2)
    for p in (bad / "images").rglob("*.jpg"):
        p.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(StoreError, match="no image could be packed"):
        pack(bad, tmp_path / "empty", OPTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    pack(src, tmp_path / "kept", OPTS)
    before = digest_tree(tmp_path / "kept")
    with pytest.raises(StoreError, match="existing store was kept"):
        pack(bad, tmp_path / "kept", PackOptions(container="shards", threads=1, force=True))
    assert digest_tree(tmp_path / "kept") == before and verify_store(tmp_path / "kept").ok


@pytest.mark.slow
def test_pack_targets_through_the_cli(tmp_path):
    bad = [o for o in target_outcomes(tmp_path / "cli") if o.result != "clean"]
    assert not bad, bad
