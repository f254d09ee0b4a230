"""Fault injection and hostile inputs across pack, stores, loaders and training (docs/RELIABILITY.md)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_tools import PackOptions, open_store, pack, verify_store
from cache_tools.format import INDEX_NAME, decode_index, encode_index, payload_checksum
from loaders import build_loader
from sainet.core.errors import CorruptImage, ImageError, SainetError, StoreCorruptError, StoreFormatError
from sainet.core.imaging import decode_rgb, encode_jpeg
from sainet.synth import synthesize
from tests.conftest import make_image, pil_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel-src")
    synthesize(out, images=16, size=(256, 144), seed=8, background=0.1)
    return out


# ------------------------------------------------------------------------------------------ kill -9

KILL_SCRIPT = """
import sys
from cache_tools import pack, PackOptions
pack(sys.argv[1], sys.argv[2], PackOptions(container=sys.argv[3], mode=sys.argv[4], imgsz=(160, 256),
     shard_size=40 << 10, resume=sys.argv[5] == "resume", threads=2))
"""


def kill9_trials(source: Path, work: Path, trials: int, seed: int) -> dict[str, int]:
    """kill -9 `sainet pack` at random moments; after each kill, the target is either a complete
    store or absent (never a store `open_store` accepts but that is incomplete); the next run
    (alternately --resume and a clean restart) completes with every record.

    Kill moments are drawn within each combination's measured run time (one unkilled run each),
    so most kills land mid-write whatever the machine's speed."""
    rng = np.random.default_rng(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    n_images = sum(1 for _ in (source / "images").rglob("*.jpg"))
    outcome = {"killed_mid_write": 0, "finished_before_kill": 0, "resumed_runs": 0, "restarted_runs": 0}
    combos = [("shards", "jpeg"), ("lmdb", "jpeg"), ("shards", "raw"), ("lmdb", "raw")]
    duration = {}
    for container, mode in combos[: min(trials, len(combos))]:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(source), str(work / "calib"), container, mode, "fresh"],
                       env=env, check=True, capture_output=True, timeout=300)
        duration[(container, mode)] = time.perf_counter() - t0
        shutil.rmtree(work / "calib")
    for t in range(trials):
        container, mode = combos[t % len(combos)]
        store = work / f"s{t}"
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(source), str(store), container, mode, "fresh"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.4, 0.98)) * duration[(container, mode)])
        proc.kill()
        proc.wait()
        try:
            s = open_store(store)
        except StoreFormatError:
            assert not store.exists()  # nothing that looks like a store
            outcome["killed_mid_write"] += 1
        else:
            assert len(s) == n_images and verify_store(store).ok
            outcome["finished_before_kill"] += 1
            s.close()
            continue
        how = "resume" if t % 2 == 0 else "fresh"
        done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(source), str(store), container, mode, how],
                              env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        outcome["resumed_runs" if how == "resume" else "restarted_runs"] += 1
        with open_store(store) as s:
            assert len(s) == n_images
        assert verify_store(store).ok
        shutil.rmtree(store)
    return outcome


def test_kill9_quick(tmp_path, source):
    outcome = kill9_trials(source, tmp_path, trials=4, seed=int(uuid.uuid4().int % 2**32))
    assert outcome["killed_mid_write"] + outcome["finished_before_kill"] == 4


@pytest.mark.slow
def test_kill9_series(tmp_path):
    """The long series (`make test-slow`): 24 kills across containers and modes, on 120 images."""
    src = tmp_path / "src"
    synthesize(src, images=120, size=(640, 360), seed=9, background=0.1)
    outcome = kill9_trials(src, tmp_path, trials=24, seed=20261123)
    print("kill -9 series:", outcome)
    assert outcome["killed_mid_write"] >= 12


# ------------------------------------------------------------------------------------------ damage


def _flip(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(blob)


@pytest.mark.parametrize("container", ["shards", "lmdb"])
def test_payload_bit_flip_and_truncation(tmp_path, source, container):
    store = tmp_path / "s"
    pack(source, store, PackOptions(container=container))
    with open_store(store) as s:
        victim = 5
        name = s.index.name(victim)
        payload = bytes(s.payload(victim))
        n = len(s)
    data = store / ("data.mdb" if container == "lmdb" else "shard-00000.bin")
    _flip(data, data.read_bytes().find(payload) + 100)
    report = verify_store(store)
    assert [b["name"] for b in report.bad] == [name]
    for policy in ("raise", "skip"):
        loader = build_loader(store, "lmdb" if container == "lmdb" else "shm", batch_size=4, imgsz=96, on_error=policy)
        if policy == "raise":
            with pytest.raises(StoreCorruptError, match=name):
                list(loader)
        else:
            assert sum(len(b["im_file"]) for b in loader) == len(loader.sampler) and loader.skipped >= 1
        loader.close()
    if container == "shards":  # truncation: a typed error, never SIGBUS
        shard = store / "shard-00000.bin"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        report = verify_store(store)
        assert report.bad and all("truncated" in b["reason"] for b in report.bad)
        loader = build_loader(store, "shm", batch_size=4, imgsz=96)
        with pytest.raises(StoreCorruptError, match="truncated"):
            list(loader)
        loader.close()
    else:  # a truncated LMDB file: refused before LMDB maps it (reading it would be a SIGBUS)
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
        code = subprocess.run([sys.executable, "-c", f"from cache_tools import verify_store; verify_store({str(store)!r})"],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=120)
        assert code.returncode == 1 and b"truncated" in code.stderr, (code.returncode, code.stderr[-500:])
        with pytest.raises(StoreCorruptError, match="truncated"):
            build_loader(store, "lmdb", batch_size=4, imgsz=96)
        assert n > 0


def test_index_bit_flips_are_typed_errors(tmp_path, source):
    store = tmp_path / "s"
    pack(source, store, PackOptions(container="shards"))
    good = (store / INDEX_NAME).read_bytes()
    for pos in range(0, len(good), max(1, len(good) // 60)):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        (store / INDEX_NAME).write_bytes(bad)
        with pytest.raises((StoreCorruptError, StoreFormatError)):
            open_store(store)
    (store / INDEX_NAME).write_bytes(good[:-7])
    with pytest.raises(StoreFormatError, match="truncated"):
        open_store(store)


def _readers(path: str, q) -> None:  # noqa: ANN001 - a multiprocessing queue
    with open_store(path) as s:
        q.put([payload_checksum(s.payload(i)) for i in range(len(s))])


def test_eight_readers_while_verify_runs(tmp_path, source):
    import multiprocessing as mp

    store = tmp_path / "s"
    pack(source, store, PackOptions(container="lmdb"))
    with open_store(store) as s:
        single = [payload_checksum(s.payload(i)) for i in range(len(s))]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_readers, args=(str(store), q)) for _ in range(8)]
    for p in procs:
        p.start()
    reports = [verify_store(store) for _ in range(3)]
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r.ok for r in reports)
    assert all(r == single for r in results)


def test_decode_error_mid_epoch_reaches_the_training_step(tmp_path, source):
    """A record made bad after packing: training fails with a typed error naming it; no thread leak."""
    from sainet.train import TrainRequest, train

    store = tmp_path / "s"
    pack(source, store, PackOptions(container="shards"))
    with open_store(store) as s:
        victim = int(s.indices("train")[3])
        rec, name = s.index.records[victim], s.index.name(victim)
    shard = store / f"shard-{int(rec['shard']):05d}.bin"
    # Replace the payload with garbage of the same length and a matching CRC: only decoding can tell.
    blob = bytearray(shard.read_bytes())
    off, length = int(rec["offset"]), int(rec["length"])
    blob[off + 2 : off + length] = os.urandom(length - 2)
    shard.write_bytes(blob)
    ix = decode_index((store / INDEX_NAME).read_bytes(), "x")
    records = ix.records.copy()
    records["crc"][victim] = payload_checksum(bytes(blob[off : off + length]))
    ix.records = records
    (store / INDEX_NAME).write_bytes(encode_index(ix))
    before = threading.active_count()
    with pytest.raises(ImageError, match=name):
        train(TrainRequest(data=str(store), loader="shm", model="yolov8n.yaml", imgsz=128, epochs=1, batch=4,
                           device="cpu", project=str(tmp_path / "runs"), name="bad"))
    time.sleep(0.5)
    assert threading.active_count() <= before + 1  # the loader's producer and decode threads are gone
    skip = build_loader(store, "shm", batch_size=4, imgsz=128, on_error="skip")
    assert sum(len(b["im_file"]) for b in skip) == len(skip.sampler) and skip.skipped == 1
    skip.close()


def test_interrupted_training_resumes_with_the_same_order(tmp_path, source):
    from sainet.train import TrainRequest, train

    store = tmp_path / "s"
    pack(source, store, PackOptions(container="lmdb"))

    def recorder(orders: dict):
        def spy(trainer) -> None:  # noqa: ANN001
            loader = trainer.train_loader
            orders[trainer.epoch] = loader.sampler.order(loader.sampler.epoch).tolist()

        return {"on_train_epoch_start": [spy]}

    base = dict(data=str(store), loader="lmdb", model="yolov8n.yaml", imgsz=96, epochs=3, batch=4, device="cpu",
                project=str(tmp_path / "runs"), sets={"close_mosaic": 0, "plots": False})
    full: dict = {}
    train(TrainRequest(**base, name="full", callbacks=recorder(full)))

    def stop_after_first(trainer) -> None:  # noqa: ANN001
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    part: dict = {}
    cbs = recorder(part)
    cbs["on_model_save"] = [stop_after_first]
    with pytest.raises(KeyboardInterrupt):
        train(TrainRequest(**base, name="cut", callbacks=cbs))
    last = tmp_path / "runs" / "cut" / "weights" / "last.pt"
    assert last.is_file()
    resumed: dict = {}
    r = train(TrainRequest(**{**base, "data": ""}, resume=str(last), callbacks=recorder(resumed)))
    assert sorted(resumed) == [1, 2]  # continued at epoch 2 of 3
    assert resumed[1] == full[1] and resumed[2] == full[2]  # with the order it would have had
    assert (r.save_dir / "weights" / "best.pt").is_file()


# ------------------------------------------------------------------------------------------ hostile inputs


def _hostile_images() -> dict[str, bytes | None]:
    from PIL import Image

    good = make_image(64, 48, 1)
    out: dict[str, bytes | None] = {
        "truncated.jpg": encode_jpeg(make_image(64, 48, 2))[:300],
        "zero.jpg": b"",
        "png_named.jpg": pil_bytes(make_image(64, 48, 3), "PNG"),
        "progressive.jpg": pil_bytes(good, "JPEG", progressive=True),
        "gray.jpg": pil_bytes(good[:, :, 0], "JPEG"),
        "one_pixel.jpg": pil_bytes(make_image(1, 1, 4), "JPEG"),
    }
    buf = io.BytesIO()
    Image.fromarray(good).convert("CMYK").save(buf, "JPEG")
    out["cmyk.jpg"] = buf.getvalue()
    import cv2

    out["png16.png"] = cv2.imencode(".png", make_image(64, 48, 5).astype(np.uint16) * 257)[1].tobytes()
    for o in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = o
        out[f"exif{o}.jpg"] = pil_bytes(make_image(64, 32, 6), "JPEG", exif=exif.tobytes(), quality=95)
    bomb = bytearray(encode_jpeg(make_image(16, 16)))
    i = bomb.index(b"\xff\xc0")
    bomb[i + 5 : i + 9] = (65535).to_bytes(2, "big") * 2
    out["bomb.jpg"] = bytes(bomb)
    return out


def test_hostile_images_pack_and_load(tmp_path):
    import yaml

    root = tmp_path / "ds"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    files = _hostile_images()
    for name, data in files.items():
        (root / "images" / "train" / name).write_bytes(data)
        (root / "labels" / "train" / (Path(name).stem + ".txt")).write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "names": ["fire", "smoke"]}))
    report = pack(root, tmp_path / "store", PackOptions(container="shards"))
    left_out = {Path(b["key"]).name: b["reason"] for b in report.bad}
    assert set(left_out) == {"truncated.jpg", "zero.jpg", "bomb.jpg"}
    assert "65535x65535" in left_out["bomb.jpg"]
    loader = build_loader(tmp_path / "store", "shm", batch_size=4, imgsz=64, augment=True)
    names = {n for b in loader for n in b["im_file"]}
    assert names == set(files) - set(left_out)  # CMYK, gray, 16-bit PNG, progressive, EXIF, 1x1 all load
    loader.close()
    with open_store(tmp_path / "store") as s:
        sizes = {s.index.name(i): tuple(s.index.records[i][["orig_w", "orig_h"]]) for i in range(len(s))}
    assert sizes["exif6.jpg"] == (32, 64) and sizes["exif3.jpg"] == (64, 32)  # the displayed frame


def test_exif_labels_refer_to_the_frame_ultralytics_uses(tmp_path):
    """Orientation 6: Ultralytics (cv2.imread) rotates the pixels and keeps the labels as written;
    sainet does the same, so eval batches agree on pixels and boxes."""
    import yaml
    from PIL import Image
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset

    root = tmp_path / "ds"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    img = np.full((80, 160, 3), 90, np.uint8)
    img[10:30, 20:60] = (250, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "images" / "train" / "r.jpg").write_bytes(pil_bytes(img, "JPEG", exif=exif.tobytes(), quality=95))
    (root / "labels" / "train" / "r.txt").write_text("0 0.3 0.4 0.2 0.15\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/train", "names": ["fire", "smoke"]}))
    pack(root, tmp_path / "store", PackOptions(container="shards"))
    ds = YOLODataset(img_path=str(root / "images" / "train"), imgsz=160, augment=False, rect=False, cache=False,
                     data={"names": {0: "fire", 1: "smoke"}, "channels": 3}, batch_size=1, stride=32, single_cls=False,
                     task="detect", hyp=get_cfg(), prefix="")
    theirs = ds[0]
    loader = build_loader(tmp_path / "store", "shm", batch_size=1, imgsz=160, augment=False)
    ours = next(iter(loader))
    loader.close()
    assert tuple(theirs["ori_shape"]) == ours["ori_shape"][0] == (160, 80)
    torch.testing.assert_close(ours["bboxes"], theirs["bboxes"].float(), atol=1e-4, rtol=0)
    assert (ours["img"][0].float() - theirs["img"].float()).abs().mean() < 1.5


def test_labels_inf_and_empty_files(tmp_path):
    from sainet.core.check import check_dataset
    from sainet.core.datasets import ProblemKind, open_dataset

    synthesize(tmp_path, images=3, size=(64, 48), val_fraction=0, background=0)
    labels = sorted((tmp_path / "labels" / "train").iterdir())
    labels[0].write_text("0 inf 0.5 0.1 0.1\n1 0.5 0.5 0.1 -inf\n")
    labels[1].write_text("")
    report = check_dataset(open_dataset(tmp_path))
    assert [p.kind for p in report.problems].count(ProblemKind.BOX_NAN) == 2
    assert report.splits["train"].backgrounds >= 1  # an empty label file is a background image


def test_a_pickle_payload_is_never_executed(tmp_path, source):
    """A store whose payload is a pickle that would run code: reading it decodes bytes, never unpickles."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = pickle.dumps(Evil())
    store = tmp_path / "s"
    pack(source, store, PackOptions(container="shards"))
    with open_store(store) as s:
        rec = s.index.records[0]
    shard = store / "shard-00000.bin"
    blob = bytearray(shard.read_bytes())
    blob[int(rec["offset"]) : int(rec["offset"]) + len(evil)] = evil
    shard.write_bytes(blob)
    ix = decode_index((store / INDEX_NAME).read_bytes(), "x")
    records = ix.records.copy()
    records["length"][0] = len(evil)
    records["crc"][0] = payload_checksum(evil)
    ix.records = records
    (store / INDEX_NAME).write_bytes(encode_index(ix))
    with open_store(store) as s:
        assert bytes(s.payload(0, verify=True)) == evil
        with pytest.raises(CorruptImage):
            decode_rgb(s.payload(0), "record 0")
    loader = build_loader(store, "shm", batch_size=4, imgsz=64, split=None, augment=False)
    with pytest.raises(SainetError):
        list(loader)
    loader.close()
    assert not marker.exists()
    # and the index itself has nowhere to hide one: its metadata is JSON and its tables numpy dtypes
    with pytest.raises(StoreFormatError):
        decode_index(evil, "evil")
