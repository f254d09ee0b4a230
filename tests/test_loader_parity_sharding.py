"""Eval parity with Ultralytics' YOLODataset; sharding, order, resume, distributed; error policy; memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cache_tools import PackOptions, open_store, pack
from loaders import build_loader
from loaders.sampler import ShardedSampler
from sainet.core.errors import StoreCorruptError
from sainet.synth import synthesize


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    synthesize(root / "src", images=12, size=(320, 180), seed=21, background=0.1, val_fraction=0.25)
    pack(root / "src", root / "store", PackOptions(container="shards"))
    return root


def test_eval_parity_with_ultralytics(data):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset

    ds = YOLODataset(img_path=str(data / "src" / "images" / "train"), imgsz=256, augment=False, rect=False, cache=False,
                     data={"names": {0: "fire", 1: "smoke"}, "channels": 3}, batch_size=1, stride=32, single_cls=False,
                     task="detect", hyp=get_cfg(), prefix="")
    theirs = {Path(ds[i]["im_file"]).name: ds[i] for i in range(len(ds))}
    loader = build_loader(data / "store", "shm", batch_size=3, imgsz=256, augment=False)
    try:
        n = 0
        for batch in loader:
            for k, name in enumerate(batch["im_file"]):
                t = theirs[name]
                ours = batch["img"][k]
                assert ours.shape == t["img"].shape
                assert (ours.float() - t["img"].float()).abs().mean() < 1.0, name
                sel = batch["batch_idx"] == k
                torch.testing.assert_close(batch["bboxes"][sel], t["bboxes"].float(), atol=1e-4, rtol=0)
                torch.testing.assert_close(batch["cls"][sel], t["cls"].float(), atol=0, rtol=0)
                assert batch["ori_shape"][k] == tuple(t["ori_shape"])
                n += 1
        assert n == len(theirs)
    finally:
        loader.close()


def _ultralytics_val(img_dir: Path, imgsz: int, batch: int, rect: bool, stride: int = 32):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset

    return YOLODataset(img_path=str(img_dir), imgsz=imgsz, augment=False, rect=rect, cache=False, pad=0.5 if rect else 0.0,
                       data={"names": {0: "fire", 1: "smoke"}, "channels": 3}, batch_size=batch, stride=stride,
                       single_cls=False, task="detect", hyp=get_cfg(), prefix="")


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no GPU on this machine")


@pytest.mark.parametrize("kind", ["shm", "shm-mp", "raw", "dali", pytest.param("dali-gpu", marks=[pytest.mark.gpu, _CUDA])])
def test_rect_eval_is_ultralytics_rect_val(data, kind):
    """`rect=True` at a square imgsz: the batches take Ultralytics' rect val shape (its validator's:
    288x160 for these 16:9 images at 256, `pad` 0.5) with each image letterboxed to 256 inside it,
    and give Ultralytics' own rect val dataset's images, boxes and ratio_pad. The thread, process,
    raw-store and dali (CPU; on a GPU the torch executor) paths all letterbox where the plan puts the image."""
    if kind.startswith("dali"):
        pytest.importorskip("nvidia.dali")
    ds = _ultralytics_val(data / "src" / "images" / "train", 256, 3, rect=True)
    theirs = {Path(ds[i]["im_file"]).name: ds[i] for i in range(len(ds))}
    store = data / "store"
    if kind == "raw":
        store = data / "raw"
        if not store.exists():
            pack(data / "src", store, PackOptions(container="shards", mode="raw", imgsz=(256, 256)))
    loader = build_loader(store, {"raw": "shm", "dali-gpu": "dali"}.get(kind, kind), batch_size=3, imgsz=256,
                          augment=False, rect=True, device="cuda" if kind == "dali-gpu" else "cpu")
    try:
        n = 0
        for batch in loader:
            assert tuple(batch["img"].shape[2:]) == (160, 288) == tuple(ds.batch_shapes[0])
            for k, name in enumerate(batch["im_file"]):
                t = theirs[name]
                img = batch["img"][k].cpu()
                assert img.shape == t["img"].shape
                assert (img.float() - t["img"].float()).abs().mean() < 1.0, name
                sel = batch["batch_idx"] == k
                torch.testing.assert_close(batch["bboxes"][sel].cpu(), t["bboxes"].float(), atol=1e-4, rtol=0)
                (rh, rw), pad = batch["ratio_pad"][k]
                assert (rh, rw) == pytest.approx(t["ratio_pad"][0]) and tuple(pad) == tuple(t["ratio_pad"][1])
                n += 1
        assert n == len(theirs)
    finally:
        loader.close()
    square = build_loader(data / "store", "shm", batch_size=3, imgsz=256, augment=False)
    try:
        assert tuple(next(iter(square))["img"].shape[2:]) == (256, 256)  # without rect: the square, as before
    finally:
        square.close()
    with pytest.raises(ValueError, match="rect is for eval"):
        build_loader(data / "store", "shm", batch_size=3, imgsz=256, augment=True, rect=True)


@pytest.mark.parametrize("sizes", [[(320, 180)] * 3, [(320, 180), (640, 480), (300, 200)], [(180, 320), (200, 300)],
                                   [(100, 100)] * 2, [(320, 180), (180, 320)]])
@pytest.mark.parametrize("stride", [32, 64])
def test_rect_val_shape_is_ultralytics_batch_shape(tmp_path, sizes, stride):
    """`rect_val_shape` is Ultralytics' `set_rectangle` for one batch of every image (landscape,
    several aspect ratios, portrait, square; a P5 and a P6 model's stride); images of both
    orientations give None."""
    import cv2
    import numpy as np

    from sainet.core.geometry import rect_val_shape

    d = tmp_path / "images"
    d.mkdir()
    for i, (w, h) in enumerate(sizes):
        cv2.imwrite(str(d / f"{i}.jpg"), np.full((h, w, 3), 90, np.uint8))
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = _ultralytics_val(d, 256, len(sizes), rect=True, stride=stride)
    got = rect_val_shape(np.array(sizes), 256, stride)
    mixed = min(h / w for w, h in sizes) < 1 < max(h / w for w, h in sizes)
    assert got is None if mixed else tuple(got) == tuple(ds.batch_shapes[0])
    assert rect_val_shape(np.array([*sizes, (0, 90)]), 256, stride) is None  # no shape from a size no image has
    assert rect_val_shape(np.zeros((0, 2)), 256, stride) is None


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharding_covers_every_sample_disjointly(world):
    n = 10
    for epoch in range(3):
        parts = []
        for rank in range(world):
            s = ShardedSampler(n, rank=rank, world_size=world, seed=5)
            s.set_epoch(epoch)
            parts.append(s.order().tolist())
            assert len(s) == len(parts[-1]) == -(-n // world)  # equal length, padded
        flat = [i for p in parts for i in p]
        assert set(flat) == set(range(n))
        assert len(flat) - len(set(flat)) == len(flat) - n  # duplicates are exactly the padding
    a, b = ShardedSampler(n, seed=5), ShardedSampler(n, seed=5)
    assert a.order(4).tolist() == b.order(4).tolist()  # a pure function of (seed, epoch)
    assert a.order(4).tolist() != a.order(5).tolist()
    assert ShardedSampler(n, seed=6).order(4).tolist() != a.order(4).tolist()


def test_epochs_advance_and_resume_mid_epoch(data):
    loader = build_loader(data / "store", "shm", batch_size=2, imgsz=128, seed=3)
    try:
        e0 = [b["im_file"] for b in loader]
        e1 = [b["im_file"] for b in loader]
        assert e0 != e1  # a new order each epoch
        assert sorted(sum(e0, ())) == sorted(sum(e1, ()))
        # stop after 2 batches of epoch 2, save, resume in a new loader
        it = iter(loader)
        seen = [next(it)["im_file"], next(it)["im_file"]]
        state = loader.state_dict()
        loader.reset()
        full = build_loader(data / "store", "shm", batch_size=2, imgsz=128, seed=3)
        list(full)
        list(full)
        expected = [b["im_file"] for b in full]  # epoch 2 straight through
        resumed = build_loader(data / "store", "shm", batch_size=2, imgsz=128, seed=3)
        resumed.load_state_dict(state)
        rest = [b["im_file"] for b in resumed]
        assert seen + rest == expected
        full.close()
        resumed.close()
    finally:
        loader.close()


def test_same_seed_same_batches(data):
    a = build_loader(data / "store", "shm", batch_size=3, imgsz=160, seed=9)
    b = build_loader(data / "store", "shm", batch_size=3, imgsz=160, seed=9)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["bboxes"], y["bboxes"])
    a.close()
    b.close()


DDP_SCRIPT = r"""
import os, sys, json, torch, torch.distributed as dist
from loaders import build_loader
dist.init_process_group("gloo", rank=int(sys.argv[2]), world_size=2, init_method=f"tcp://127.0.0.1:{sys.argv[3]}")
rank = dist.get_rank()
loader = build_loader(sys.argv[1], "shm", batch_size=2, imgsz=96, rank=rank, world_size=2, seed=1)
loader.sampler.set_epoch(3)
names = [n for b in loader for n in b["im_file"]]
gathered = [None, None]
dist.all_gather_object(gathered, names)
if rank == 0:
    print(json.dumps(gathered))
dist.destroy_process_group()
"""


def test_two_process_gloo(data):
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", DDP_SCRIPT, str(data / "store"), str(r), str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1].decode()[-2000:] + outs[1][1].decode()[-2000:]
    r0, r1 = json.loads(outs[0][0].decode().strip().splitlines()[-1])
    train = [open_store(data / "store").index.name(int(i)) for i in open_store(data / "store").indices("train")]
    assert len(r0) == len(r1)
    assert set(r0) | set(r1) == set(train)
    assert len(set(r0) & set(r1)) <= len(r0) + len(r1) - len(train)  # disjoint but for the padding
    s0 = ShardedSampler(len(train), rank=0, world_size=2, seed=1)
    s0.set_epoch(3)
    assert len(r0) == len(s0)


def _flip_payload(store_path: Path, record: int) -> str:
    with open_store(store_path) as s:
        rec = s.index.records[record]
        name = s.index.name(record)
    shard = store_path / f"shard-{int(rec['shard']):05d}.bin"
    blob = bytearray(shard.read_bytes())
    blob[int(rec["offset"]) + int(rec["length"]) // 2] ^= 0xFF
    shard.write_bytes(blob)
    return name


def test_bad_record_mid_epoch_raises_or_skips(tmp_path, data):
    import shutil
    import threading

    store = tmp_path / "store"
    shutil.copytree(data / "store", store)
    victim = int(open_store(store).indices("train")[4])
    name = _flip_payload(store, victim)
    threads_before = threading.active_count()
    loader = build_loader(store, "shm", batch_size=2, imgsz=96, seed=0)
    with pytest.raises(StoreCorruptError, match=name):
        for _ in loader:
            pass
    loader.close()
    skip = build_loader(store, "shm", batch_size=2, imgsz=96, seed=0, on_error="skip")
    batches = list(skip)
    assert len(batches) == len(skip) and skip.skipped == 1
    assert name not in {n for b in batches for n in b["im_file"]}
    skip.close()
    dali = build_loader(store, "dali", batch_size=2, imgsz=96, seed=0)
    with pytest.raises(StoreCorruptError, match=name):
        list(dali)
    dali.close()
    assert threading.active_count() <= threads_before  # no leaked loader threads


MEMORY_SCRIPT = r"""
import json, sys
from pathlib import Path
from loaders import build_loader

def anon_kb():
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])

loader = build_loader(sys.argv[1], sys.argv[2], batch_size=4, imgsz=256, seed=0, threads=2)
base = anon_kb()
per_epoch = []
for _ in range(3):
    for _b in loader:
        pass
    per_epoch.append(anon_kb() - base)
print(json.dumps({"built": base, "per_epoch": per_epoch}))
"""


def test_loader_memory_flat_across_epochs_and_store_size(tmp_path):
    """Anonymous (process-private) memory, each loader in a fresh process: flat over 3 epochs and
    with a 10x larger store for the zero-copy loaders; the ram backend's grows with the store."""
    import json

    synthesize(tmp_path / "s1", images=8, size=(640, 360), seed=1, val_fraction=0)
    synthesize(tmp_path / "s10", images=80, size=(640, 360), seed=1, val_fraction=0)
    for tag in ("s1", "s10"):
        pack(tmp_path / tag, tmp_path / f"{tag}.store", PackOptions(container="shards", mode="raw", imgsz=(384, 640)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    got = {}
    for kind in ("shm", "ram"):
        for tag in ("s1", "s10"):
            r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / f"{tag}.store"), kind], env=env,
                               capture_output=True, timeout=300)
            assert r.returncode == 0, r.stderr.decode()[-2000:]
            got[(kind, tag)] = json.loads(r.stdout.decode().strip().splitlines()[-1])
    print("anonymous kB:", got)
    for tag in ("s1", "s10"):
        e = got[("shm", tag)]["per_epoch"]
        assert e[2] - e[0] < 8_000, e  # flat across epochs
    # flat with 10x the store: built loader plus 3 epochs
    shm1 = got[("shm", "s1")]["built"] + got[("shm", "s1")]["per_epoch"][2]
    shm10 = got[("shm", "s10")]["built"] + got[("shm", "s10")]["per_epoch"][2]
    assert shm10 - shm1 < 16_000, got
    ram1, ram10 = got[("ram", "s1")]["built"], got[("ram", "s10")]["built"]
    assert ram10 - ram1 > 40_000, got  # ~72 more raw frames of 0.7 MB copied into the process


def test_close_mosaic(data):
    import loaders.dataset as L

    plans = []
    real = L.plan_batch

    def spy(*a, **k):
        plans.append(real(*a, **k))
        return plans[-1]

    L.plan_batch = spy
    try:
        loader = build_loader(data / "store", "shm", batch_size=3, imgsz=96, epochs=3, hyp={"close_mosaic": 1, "mixup": 0.5})
        per_epoch = []
        for _ in range(3):
            plans.clear()
            list(loader)
            per_epoch.append(max(len(ip.placements) for p in plans for ip in p.images))
        loader.close()
    finally:
        L.plan_batch = real
    assert per_epoch[:2] == [4, 4] and per_epoch[2] == 1  # the last epoch: no mosaic
    assert loader.dataset.hyp.mixup == 0
