"""Distributed training on CPU ranks (gloo): sharding, synchronised weights, one writer, faults, resume.

The multi-process tests start ``python -m torch.distributed.run`` in a session of its own and kill
that whole process group when they end, whatever happens, so no rank outlives a test.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache_tools import PackOptions, pack
from cache_tools.store import open_store
from loaders.sampler import ShardedSampler, padding
from sainet.core.errors import SainetError
from sainet.train.distributed import (
    DistInfo,
    DistributedError,
    cuda_device,
    per_rank_batch,
    ranks_to_spawn,
    store_fingerprint,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--loader", "lmdb", "--model", "yolov8n.yaml", "--imgsz", "64", "--batch", "4", "--device", "cpu",
              "--threads", "1", "--prefetch", "1", "--set", "nbs=4", "--set", "plots=False"]


# ------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("n,world", [(9, 2), (10, 4), (3, 4), (1, 3), (12, 3)])
def test_padding_rule_every_record_once_plus_head_of_the_epoch(n, world):
    for epoch in range(3):
        samplers = [ShardedSampler(n, rank=r, world_size=world, seed=7) for r in range(world)]
        parts = [s.order(epoch).tolist() for s in samplers]
        assert {len(p) for p in parts} == {-(-n // world)} == {len(s) for s in samplers}  # same steps on every rank
        flat = [i for p in parts for i in p]
        assert sorted(set(flat)) == list(range(n))  # every record
        perm = samplers[0].permutation(epoch).tolist()
        extra = padding(n, world)
        assert extra < world and len(flat) == n + extra
        repeated = sorted(flat)
        for i in range(n):
            repeated.remove(i)
        assert sorted(repeated) == sorted((perm * world)[:extra])  # the padding: the epoch's head, nothing else


def test_padding_changes_with_the_epoch_and_is_rank_independent():
    a = [ShardedSampler(9, rank=0, world_size=2, seed=1).permutation(e)[:1].tolist() for e in range(6)]
    assert len({tuple(x) for x in a}) > 1  # a different record is repeated in different epochs
    assert ShardedSampler(9, rank=1, world_size=2, seed=1).permutation(3).tolist() == \
        ShardedSampler(9, rank=0, world_size=2, seed=1).permutation(3).tolist()


@pytest.mark.parametrize("n,world", [(3, 2), (10, 4), (2, 3), (7, 7)])
def test_eval_shards_are_contiguous_and_unpadded(n, world):
    parts = [ShardedSampler(n, rank=r, world_size=world, shuffle=False, pad=False).order(0).tolist() for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))  # contiguous, in order, each image once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [len(ShardedSampler(n, rank=r, world_size=world, pad=False)) for r in range(world)] == list(map(len, parts))


def test_global_batch_must_divide():
    assert per_rank_batch(60, 2) == 30
    with pytest.raises(DistributedError, match="--batch 7 is the global batch.*2 ranks"):
        per_rank_batch(7, 2)
    with pytest.raises(DistributedError):
        per_rank_batch(2, 4)


def test_rank_and_device_from_the_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert DistInfo.from_env() == DistInfo() and ranks_to_spawn("0,1") == 2 and ranks_to_spawn("0") == 0
    assert ranks_to_spawn("cpu") == 0
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("RANK", "11")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    info = DistInfo.from_env()
    assert (info.rank, info.world_size, info.local_rank) == (11, 16, 3)
    assert ranks_to_spawn("0,1") == 0  # already a rank: never re-spawn
    assert cuda_device("0,1,2,3,4,5,6,7", info) == 3 and cuda_device("4,5,6,7,0,1,2,3", info) == 7
    assert cuda_device(None, info) == 3 and cuda_device("0", info) == 3
    with pytest.raises(DistributedError, match="nproc-per-node"):
        cuda_device("0,1", info)


def test_batch_is_global_and_profiles_give_it_per_gpu(store, monkeypatch):
    """resolve(): the profile's batch is per GPU, --batch is global; the memory plan uses the per-rank batch."""
    from sainet.budget import estimate_budget
    from sainet.train import TrainRequest, resolve

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    req = TrainRequest(data=str(store), loader="lmdb", imgsz=64, device="cpu", profile="a100x2", threads=1, prefetch=1)
    overrides, _, chosen = resolve(req)
    assert overrides["batch"] == 64 and chosen["batch"] == 64  # a100x2 recommends 32 per GPU
    from cache_tools.store import open_store
    from sainet.budget import store_decode_sizes

    with open_store(store) as st:
        decode = store_decode_sizes(st, (64, 64))  # the decoded batch: the store's 32 largest images (all 12 here)
    per_rank = estimate_budget(images=12, imgsz=(64, 64), batch=32, threads=1, prefetch=1, workers=8, model=req.model,
                               amp=False, decode=decode, device="cpu")
    assert chosen["loader_buffer_bytes"] == per_rank.sainet_loader_bytes and decode.images == 12
    assert chosen["decode_bytes"] == decode.batch_bytes(32) == sum(decode.largest) > 0
    with pytest.raises(DistributedError, match="--batch 5"):
        resolve(TrainRequest(data=str(store), loader="lmdb", imgsz=64, batch=5, device="cpu", threads=1, prefetch=1))


def test_memory_per_node(monkeypatch):
    from sainet.train.distributed import host_bytes_per_node, ranks_per_node

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert ranks_per_node("0,1") == 2 and ranks_per_node("cpu") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert ranks_per_node("0") == 8
    assert host_bytes_per_node(8, 10, 1000, "shm") == 80  # the store: once per machine, in the page cache / shm
    assert host_bytes_per_node(8, 10, 1000, "ram") == 8080  # ... but copied into every rank by the ram loader


def test_ddp_shim_target_still_exists():
    """`hooks.ddp_device_ids_for_cpu` patches this module global for Ultralytics' DDP wrap."""
    import inspect

    import torch
    import ultralytics.engine.trainer as ut

    assert ut.nn is torch.nn
    assert "nn.parallel.DistributedDataParallel(" in inspect.getsource(ut.BaseTrainer._setup_train)


# ------------------------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from sainet.synth import synthesize

    root = tmp_path_factory.mktemp("dist")
    synthesize(root / "ds", images=12, size=(96, 64), seed=1, val_fraction=0.25, background=0.1)
    pack(root / "ds", root / "store", PackOptions(container="lmdb"))
    return root / "store"


def _train_names(store: Path) -> list[str]:
    with open_store(store) as s:
        return [s.index.name(int(i)) for i in s.indices("train")]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "SAINET_RECORD_SAMPLES": "1", **extra}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(args: list[str], **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], cwd=REPO, env=_env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Wait for every launch; on timeout (or any error) kill their process groups. Returns outputs."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            _kill_group(p)
    return outs


def _kill_group(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _leftover_shm(before: set[str]) -> set[str]:
    """/dev/shm entries new since `before` that no live process maps or holds open (other helpers'
    processes may create their own meanwhile; a leak of ours has no owner left)."""
    import psutil

    new = set(os.listdir("/dev/shm")) - before
    held: set[str] = set()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            held.update(m.path for m in proc.memory_maps())
            held.update(f.path for f in proc.open_files())
    return {n for n in new if f"/dev/shm/{n}" not in held}


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _check_shards(run: Path, names: list[str], world: int, epochs: int = 1) -> None:
    samples = _rows(run / "samples.csv")
    ranks = _rows(run / "ranks.csv")
    for epoch in range(1, epochs + 1):
        per_rank = [[r["im_file"] for r in samples if r["epoch"] == str(epoch) and r["rank"] == str(k)] for k in range(world)]
        flat = [f for p in per_rank for f in p]
        assert {len(p) for p in per_rank} == {-(-len(names) // world)}  # the same count on every rank
        assert sorted(set(flat)) == sorted(names)  # together: the whole split
        assert len(flat) - len(names) == padding(len(names), world)  # each once, plus the stated padding
        for k in range(world):  # exactly the sampler's shard for (seed 0, this epoch)
            assert per_rank[k] == [names[i] for i in ShardedSampler(len(names), rank=k, world_size=world).order(epoch - 1)]
        rows = [r for r in ranks if r["epoch"] == str(epoch)]
        assert sorted(int(r["rank"]) for r in rows) == list(range(world))
        assert len({r["weights"] for r in rows}) == 1  # gradients were all-reduced: identical weights
        assert all(int(r["images"]) == len(per_rank[0]) and float(r["pss_mb"]) > 0 for r in rows)


def test_two_gloo_ranks_train_one_epoch(store, tmp_path):
    """torchrun --nproc-per-node 2 -m sainet train --device cpu: disjoint shards covering the split,
    identical weights on both ranks, results.csv / last.pt written once, nothing left running."""
    shm_before = set(os.listdir("/dev/shm"))
    p = _torchrun(["--standalone", "--nproc-per-node", "2", "-m", "sainet", "train", "--data", str(store), *TRAIN_ARGS,
                   "--epochs", "1", "--project", str(tmp_path), "--name", "ddp"])
    (out,) = _finish([p], timeout=240)
    assert p.returncode == 0, out[-4000:]
    assert not _group_alive(p.pid)  # no orphaned rank
    run = tmp_path / "ddp"
    _check_shards(run, _train_names(store), world=2)
    info = json.loads((run / "distributed.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo" and info["batch_per_rank"] == 2
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("results.csv")] == ["ddp/results.csv"]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("last.pt")] == ["ddp/weights/last.pt"]
    assert len(_rows(run / "results.csv")) == 1 and len(_rows(run / "loader.csv")) == 1
    assert out.count("(best ") == 1  # rank 0 alone reports
    assert _leftover_shm(shm_before) == set()


FINGERPRINT_RANK = """
import sys, torch.distributed as dist
from sainet.train.distributed import DistributedError, check_same_store, store_fingerprint
path, port, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
try:
    check_same_store(path, store_fingerprint(path))
    print("ok")
except DistributedError as e:
    print(e)
dist.destroy_process_group()
"""


def test_ranks_refuse_different_stores(store, tmp_path):
    """The store fingerprint is all-gathered; a difference names the node and path, on every rank."""
    from sainet.synth import synthesize

    synthesize(tmp_path / "ds", images=13, size=(96, 64), seed=1, val_fraction=0.25, background=0.1)
    other = tmp_path / "other"
    pack(tmp_path / "ds", other, PackOptions(container="lmdb"))
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    assert store_fingerprint(store) == store_fingerprint(copy) != store_fingerprint(other)
    for stores, ok in (([store, copy], True), ([store, other], False)):
        port = str(_free_port())
        procs = [subprocess.Popen([sys.executable, "-c", FINGERPRINT_RANK, str(stores[r]), port, str(r)], env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
                 for r in range(2)]
        outs = [o.strip().splitlines()[-1] for o in _finish(procs, timeout=120)]
        if ok:
            assert outs == ["ok", "ok"]
        else:
            assert all(str(other) in o and socket.gethostname() in o and "different stores" in o for o in outs), outs


def test_mid_epoch_checkpoint_resumes_the_same_epoch_order(store, tmp_path, monkeypatch):
    """Stop after k batches, resume from weights/mid_epoch.pt: the epoch's samples, before and after,
    are the split, each once."""
    from sainet.train import TrainRequest, train
    from sainet.train.trainer import MID_EPOCH_NAME

    monkeypatch.setenv("SAINET_RECORD_SAMPLES", "1")
    before: list[str] = []

    class Stop(Exception):
        pass

    def crash_after_two(trainer) -> None:  # noqa: ANN001
        if trainer.train_loader.state_dict()["batches_done"] == 2:
            before.extend(trainer.train_loader.seen)
            raise Stop

    req = TrainRequest(data=str(store), loader="lmdb", model="yolov8n.yaml", imgsz=64, epochs=1, batch=2, device="cpu",
                       threads=1, prefetch=1, project=str(tmp_path), name="mid", checkpoint_every=2,
                       sets={"nbs": 2, "plots": False}, callbacks={"on_train_batch_end": [crash_after_two]})
    with pytest.raises(Stop):
        train(req)
    mid = tmp_path / "mid" / "weights" / MID_EPOCH_NAME
    assert mid.is_file() and len(before) == 4
    with pytest.raises(SainetError, match="resume it with --batch 2"):
        train(TrainRequest(data="", resume=str(mid), batch=4, device="cpu", project=str(tmp_path)))
    r = train(TrainRequest(data="", resume=str(mid), batch=2, device="cpu", project=str(tmp_path)))
    epoch = [row["im_file"] for row in _rows(r.save_dir / "samples.csv")]  # the samples seen before the stop, too
    names = _train_names(store)
    assert epoch[:4] == before and len(epoch) == len(names)
    assert sorted(epoch) == sorted(names)  # the rest of the same epoch order, each once
    assert r.last.is_file() and not mid.exists()  # the epoch's last.pt supersedes the mid-epoch file
    assert json.loads((r.save_dir / "distributed.json").read_text())["world_size"] == 1


# ------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_launch_spawns_torchrun_and_returns_the_run(store, tmp_path, monkeypatch):
    """What `sainet train --device 0,1` does, on two CPU ranks: torchrun in its own session, the run
    folder chosen by the caller, nothing left running."""
    import psutil

    from sainet.train import TrainRequest, resolve
    from sainet.train.launch import launch_request

    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    (tmp_path / "ddp").mkdir()  # taken: the launch must pick ddp-2, as Ultralytics would
    req = TrainRequest(data=str(store), loader="lmdb", model="yolov8n.yaml", imgsz=64, epochs=1, batch=4, device="cpu",
                       threads=1, prefetch=1, project=str(tmp_path), name="ddp", sets={"nbs": 4, "plots": False})
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    save_dir = launch_request(req, resolve(req)[0], 2)
    assert save_dir == tmp_path / "ddp-2"
    _check_shards(save_dir, _train_names(store), world=2)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.mark.slow
def test_two_nodes_on_localhost_each_with_its_own_store(store, tmp_path, monkeypatch):
    """Two torchrun launches (--nnodes 2, node ranks 0 and 1, c10d rendezvous), each node reading
    the store it packed itself (another path, another time: the same content fingerprint)."""
    copies = [tmp_path / f"node{k}" / "store" for k in range(2)]
    for k, c in enumerate(copies):
        monkeypatch.setattr(time, "strftime", lambda *_, k=k: f"203{k}-01-01T00:00:00+0000")
        pack(store.parent / "ds", c, PackOptions(container="lmdb"))
    monkeypatch.undo()
    assert (copies[0] / "index.sai").read_bytes() != (copies[1] / "index.sai").read_bytes()
    procs = _two_nodes(copies, tmp_path, 2, "nodes")
    outs = _finish(procs, timeout=400)
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    runs = [tmp_path / f"runs{k}" / "nodes" for k in range(2)]
    main = [r for r in runs if (r / "results.csv").is_file()]
    assert len(main) == 1  # only global rank 0 writes
    _check_shards(main[0], _train_names(store), world=2, epochs=2)
    info = json.loads((main[0] / "distributed.json").read_text())
    assert sorted(r["data"] for r in info["ranks"]) == sorted(str(c.resolve()) for c in copies)


def _two_nodes(stores: list[Path], tmp_path: Path, epochs: int, name: str) -> list[subprocess.Popen]:
    """Two torchrun launches as two nodes of one process each (node k reads stores[k])."""
    port = _free_port()
    return [_torchrun(["--nnodes", "2", "--node-rank", str(k), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                       "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"sainet-{name}", "-m", "sainet", "train",
                       "--data", str(stores[k]), *TRAIN_ARGS, "--epochs", str(epochs), "--project", str(tmp_path / f"runs{k}"),
                       "--name", name]) for k in range(2)]


@pytest.mark.slow
def test_killed_rank_on_another_node_stops_the_run(store, tmp_path, capsys):
    """Two nodes: kill -9 global rank 1; the other node's rank fails in its next collective (gloo
    sees the closed connection), long before the process-group timeout."""
    import psutil

    procs = _two_nodes([store, store], tmp_path, 8, "kn")
    try:
        deadline = time.monotonic() + 300
        while not any((tmp_path / f"runs{k}" / "kn" / "weights" / "last.pt").is_file() for k in range(2)):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
            time.sleep(0.5)
        victim = next((p, c) for p in procs for c in psutil.Process(p.pid).children(recursive=True)
                      if c.environ().get("RANK") == "1")
        other = next(p for p in procs if p is not victim[0])
        victim[1].kill()
        t0 = time.monotonic()
        out = other.communicate(timeout=300)[0]
        stopped_s = time.monotonic() - t0
        victim[0].wait(timeout=120)
        left = [p.pid for p in procs if _group_alive(p.pid)]  # before the clean-up below: orphans?
    finally:
        for p in procs:
            _kill_group(p)
    with capsys.disabled():
        print(f"\nkilled rank 1 on node B: node A's rank 0 stopped {stopped_s:.1f} s later, exit code {other.returncode}")
    # Node A learns it either from gloo (the peer's connection closed) or, when node B hosted the
    # c10d rendezvous store, from its agent losing the store; either way it stops, nothing left.
    assert other.returncode != 0, out[-3000:]
    assert re.search(r"Connection (closed|reset) by peer|RendezvousConnectionError", out), out[-3000:]
    assert left == []


@pytest.mark.slow
def test_killed_rank_stops_the_others_and_resume_continues(store, tmp_path, capsys):
    """kill -9 one rank mid-run: torchrun stops the other, nothing survives, no /dev/shm leftovers;
    --resume from rank 0's last.pt continues in the same world size."""
    import psutil

    shm_before = set(os.listdir("/dev/shm"))
    args = ["--standalone", "--nproc-per-node", "2", "-m", "sainet", "train"]
    p = _torchrun([*args, "--data", str(store), *TRAIN_ARGS, "--epochs", "5", "--project", str(tmp_path), "--name", "k"])
    run = tmp_path / "k"
    try:
        deadline = time.monotonic() + 300
        while not (run / "weights" / "last.pt").is_file():  # an epoch is done: training is under way
            assert p.poll() is None and time.monotonic() < deadline, p.stdout.read()[-3000:] if p.stdout else ""
            time.sleep(0.5)
        victim = next(c for c in psutil.Process(p.pid).children(recursive=True) if c.environ().get("RANK") == "1")
        victim.kill()
        t0 = time.monotonic()
        out = p.communicate(timeout=300)[0]
        stopped_s = time.monotonic() - t0
    finally:
        _kill_group(p)
    with capsys.disabled():
        print(f"\nkilled rank 1 (SIGKILL): torchrun and rank 0 stopped {stopped_s:.1f} s later, exit code {p.returncode}")
    assert p.returncode != 0 and "exitcode  : -9" in out
    assert not _group_alive(p.pid)
    assert _leftover_shm(shm_before) == set()
    epochs_done = len(_rows(run / "results.csv"))
    last = str(run / "weights" / "last.pt")
    resumed = _torchrun([*args, "--resume", last, "--device", "cpu"])  # another world size works too: test_resume
    (out,) = _finish([resumed], timeout=400)
    assert resumed.returncode == 0, out[-3000:]
    assert epochs_done < 5 and len(_rows(run / "results.csv")) == 5
