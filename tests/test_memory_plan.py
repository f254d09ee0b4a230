"""The memory plan (issues 27.6, 28.4, 28.5): one recommendation for profile, plan and the demo; profile
files; activation memory checked against a real forward; decode sizes from every header; exit 5
with what would fit; sizes that cannot be allocated refused before anything is allocated."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sainet import profiles
from sainet.cli import app
from sainet.core.errors import CapacityError
from sainet.synth import synthesize

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _doc(res) -> dict:
    return json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])


# ---------------------------------------------------------------------------------------------- activations


def _saved_bytes(model, x) -> int:
    """Bytes autograd keeps for backward (storages deduplicated, parameters left out)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(n for p, n in seen.items() if p not in params)


@pytest.mark.parametrize("scale", ["n", "s"])
def test_activation_constant_matches_a_real_forward_at_another_shape(scale):
    """The per-pixel constants were measured at 160x256 and 320x320; a forward at 96x160, batch 3,
    saves what the constant predicts (it is linear in batch x H x W)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from sainet.budget import PEAK_FACTOR, SAVED_BYTES_PER_PIXEL, activation_bytes

    torch.manual_seed(0)
    model = DetectionModel(f"yolov8{scale}.yaml", nc=2, verbose=False)
    real = _saved_bytes(model, torch.rand(3, 3, 96, 160))
    predicted = SAVED_BYTES_PER_PIXEL[scale][0] * 3 * 96 * 160
    assert real == pytest.approx(predicted, rel=0.03)
    est = activation_bytes(f"yolov8{scale}.yaml", (96, 160), 3, amp=False, device="cpu")
    assert est == int(predicted * PEAK_FACTOR["cpu"]) and est > real


_STEP = """
import os, sys
os.environ["YOLO_OFFLINE"] = "1"
import psutil, torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
torch.manual_seed(0)
torch.set_num_threads(1)
m = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
m.args = get_cfg()
m.train()
def batch(b, h, w):
    return {"img": torch.rand(b, 3, h, w), "batch_idx": torch.zeros(b), "cls": torch.zeros(b, 1),
            "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * b)}
loss, _ = m.loss(batch(2, 64, 64)); loss.sum().backward()  # lazy allocations first
m.zero_grad(set_to_none=False)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))
# Peak RSS of this process image: VmHWM, reset to the current RSS first (clear_refs 5). Not ru_maxrss,
# which Linux carries over exec from the forked parent (pytest, after training tests: ~1 GB).
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before, file_before = status("VmRSS"), status("RssFile")
loss, _ = m.loss(batch(2, 480, 640)); loss.sum().backward()
# the step's own growth: peak RSS less the library pages paged back in meanwhile
print(status("VmHWM") - before - max(0, status("RssFile") - file_before))
"""


def test_cpu_training_step_peak_is_within_the_estimate():
    """A real training step (forward, loss, backward) of yolov8n at 2x480x640 on the CPU, in its own
    process: its peak RSS growth is below the plan's estimate and above the bytes it saves for backward."""
    from sainet.budget import SAVED_BYTES_PER_PIXEL, activation_bytes

    proc = subprocess.run([sys.executable, "-c", _STEP], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "YOLO_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    growth = int(proc.stdout.strip().splitlines()[-1])
    saved = SAVED_BYTES_PER_PIXEL["n"][0] * 2 * 480 * 640
    assert 0.8 * saved < growth <= activation_bytes("yolov8n.yaml", (480, 640), 2, amp=False, device="cpu")


# ---------------------------------------------------------------------------------------------- decode sizes


def _png_header(w: int, h: int) -> bytes:
    """A small PNG whose header declares w x h (the pixel data is a tiny, incomplete stream)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 30000)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan-src")
    synthesize(out, images=12, size=(320, 180), seed=4, val_fraction=0.25)
    return out


def test_plan_counts_the_decode_size_of_every_image(small_set, tmp_path):
    """Three ~30 KB PNGs declaring 16000x16000 (issue 28: peak training RSS 1.38 -> 3.55 GB, unseen):
    the plan reads every header and counts them in the decoded batch, and a 4 GB host refuses batch 8."""
    import shutil

    from sainet.budget import estimate_source, plan_memory
    from sainet.profiles import get_profile

    src = tmp_path / "src"
    shutil.copytree(small_set, src)
    for i in range(3):
        (src / "images" / "train" / f"bomb{i}.png").write_bytes(_png_header(16000, 16000))
        (src / "labels" / "train" / f"bomb{i}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    est, decode = estimate_source(str(src), None, (192, 320))
    assert decode.images == 15 and decode.largest_hw == (16000, 16000)
    per_bomb = 16000 * 16000 * 3 * 2  # the RGB result and the decoder's 3-channel 8-bit intermediate
    assert decode.largest[:3] == (per_bomb,) * 3 and decode.batch_bytes(8) > 3 * per_bomb
    clean, clean_decode = estimate_source(str(small_set), None, (192, 320))
    assert clean_decode.batch_bytes(8) < 8 * 320 * 180 * 3 + 1  # JPEGs decode at most at full size
    small_host = dataclasses.replace(get_profile("cpu"), ram_gb=4.0, shm_gb=0.0)
    assert plan_memory(clean, small_host, (192, 320), batch=8, model="yolov8n.yaml", decode=clean_decode).fits
    p = plan_memory(est, small_host, (192, 320), batch=8, model="yolov8n.yaml", decode=decode)
    assert not p.fits and "host RAM" in p.problems[0]
    assert 0 < p.recommended.batch < 8  # fewer than 3 bombs per batch would fit 4 GB
    assert f"--batch {p.recommended.batch}" in str(p.refusal())


# ---------------------------------------------------------------------------------------------- one recommendation

_HOSTS = {
    "cpu with /dev/shm": profiles.HostInfo(0, [], 0.0, 24.0, 20.0, 2, 12.0, 12.0),
    "cpu without /dev/shm": profiles.HostInfo(0, [], 0.0, 16.0, 12.0, 4, 0.0, 0.0),
    "a10g-like": profiles.HostInfo(1, ["NVIDIA A10G"], 23.0, 62.0, 55.0, 16, 31.0, 31.0),
    "2 x a100": profiles.HostInfo(2, ["A100", "A100"], 40.0, 500.0, 480.0, 64, 250.0, 250.0),
}


@pytest.mark.parametrize("name", list(_HOSTS))
def test_profile_plan_and_demo_give_one_recommendation(name, small_set, tmp_path, monkeypatch):
    """`sainet profile`, `sainet plan` (auto) and the demo read the same simulated host and agree on
    loader, store and mode (and profile and plan on the batch)."""
    from sainet import demo

    host = _HOSTS[name]
    monkeypatch.setattr(profiles, "detect_host", lambda: host)
    prof = _doc(runner.invoke(app, ["profile", "--json"]))["recommended"]
    res = runner.invoke(app, ["plan", "--source", "12@320x180:10KB", "--imgsz", "320x192", "--model", "yolov8n.yaml", "--json"])
    assert res.exit_code == 0, res.output
    plan = _doc(res)
    assert plan["profile"].startswith("this host") and plan["fits"]
    rec = plan["recommended"]
    keys = ("loader", "container", "mode", "batch")
    assert {k: rec[k] for k in keys} == {k: prof[k] for k in keys}
    assert (rec["container"] == "shards") == (host.shm_gb > 0)
    seen = {}
    monkeypatch.setattr(demo, "_synth_and_check", lambda out, d, report, progress: small_set)
    monkeypatch.setattr(demo, "_pack_and_verify", lambda *a: {"shards": tmp_path / "shards", "lmdb": tmp_path / "lmdb"})
    monkeypatch.setattr(demo, "_train", lambda store, out, d, report: seen.update(store=store, loader=d.loader))
    demo.run_demo(tmp_path / "demo", bench=False)
    assert seen == {"store": tmp_path / rec["container"], "loader": rec["loader"]}


def test_profile_reads_the_measured_host_as_plan_does(monkeypatch):
    """`plan` plans against the measured host (its /dev/shm and RAM), not the nearest profile's figures."""
    host = profiles.HostInfo(0, [], 0.0, 64.0, 60.0, 8, 25.0, 25.0)
    monkeypatch.setattr(profiles, "detect_host", lambda: host)
    doc = _doc(runner.invoke(app, ["plan", "--source", "1000@1440x808:180KB", "--json"]))
    jpeg = next(r for r in doc["rows"] if r["item"] == "store jpeg")
    assert "of 25.0 GB shm" in jpeg["/dev/shm"] and "of 64.0 GB RAM" in jpeg["host RAM (page cache)"]


# ---------------------------------------------------------------------------------------------- profile files

_GOOD = """\
name: my-host
description: 1x RTX 4090 24 GB, 64 GB RAM
gpus: 1
vram_gb: 24
ram_gb: 64
cores: 16
shm_gb: 32
recommended:
  loader: dali
  store: shards
  mode: jpeg
  batch: 16
  threads: 8
  prefetch: 2
"""


def test_plan_takes_a_profile_file(tmp_path):
    f = tmp_path / "my-host.yaml"
    f.write_text(_GOOD)
    doc = _doc(runner.invoke(app, ["plan", "--profile", str(f), "--source", "1000@1440x808:180KB", "--json"]))
    assert doc["profile"] == "my-host" and doc["batch"] == 16 and doc["recommended"]["loader"] == "dali"
    from sainet.profiles import load_profile_file, load_profiles

    for p in load_profiles().values():  # every shipped profile has the documented shape
        assert p.recommended.keys() == load_profile_file(f).recommended.keys()


@pytest.mark.parametrize("edit, key", [
    (lambda t: t.replace("ram_gb: 64\n", ""), "ram_gb: missing"),
    (lambda t: t.replace("cores: 16", "cores: many"), "cores: expected a whole number"),
    (lambda t: t.replace("vram_gb: 24", "vram_gb: -1"), "vram_gb: must be at least 0"),
    (lambda t: t + "ramgb: 3\n", "unknown key(s) ramgb"),
    (lambda t: t.replace("loader: dali", "loader: turbo"), "recommended.loader: 'turbo' is not one of"),
    (lambda t: t.replace("  batch: 16\n", ""), "recommended.batch: missing"),
    (lambda t: t.replace("mode: jpeg", "mode: png"), "recommended.mode"),
    (lambda t: "- a\n- b\n", "expected a mapping"),
    (lambda t: "gpus: [1\n", "not valid yaml"),
])
def test_a_bad_profile_file_names_the_file_and_the_key(tmp_path, edit, key):
    f = tmp_path / "bad.yaml"
    f.write_text(edit(_GOOD))
    res = runner.invoke(app, ["plan", "--profile", str(f), "--source", "10@640x480"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert str(f) in res.stderr and key in res.stderr, res.stderr
    res = runner.invoke(app, ["plan", "--profile", str(tmp_path / "missing.yaml"), "--source", "10@640x480"])
    assert res.exit_code == 2 and "missing.yaml" in res.stderr and "cannot read" in res.stderr


# ---------------------------------------------------------------------------------------------- exit 5


def test_a_plan_that_does_not_fit_exits_5_and_says_what_would():
    """FASDD at 1440x808 on an A10G (23 GB): batch 64 per GPU does not fit its memory; the plan names
    the batch that does, and that batch passes."""
    res = runner.invoke(app, ["plan", "--profile", "a10g", "--source", "117000@1440x808:180KB", "--batch", "64"])
    assert res.exit_code == 5, res.output
    assert "GPU memory" in res.stderr and "would fit: pack --mode jpeg" in res.stderr
    batch = int(res.stderr.split("--batch ")[1].split()[0].rstrip(";,)"))
    assert 1 <= batch < 64
    assert runner.invoke(app, ["plan", "--profile", "a10g", "--source", "117000@1440x808:180KB", "--batch", str(batch)]).exit_code == 0
    res = runner.invoke(app, ["plan", "--profile", "a10g", "--source", "117000@1440x808:180KB", "--batch", str(batch + 1)])
    assert res.exit_code == 5
    res = runner.invoke(app, ["plan", "--profile", "cpu", "--source", "10@640x480", "--imgsz", "30000x30000"])
    assert res.exit_code == 5 and "not even batch 1" in res.stderr


# ---------------------------------------------------------------------------------------------- refused sizes


def test_sizes_that_cannot_be_allocated_are_refused_with_exit_5(tmp_path):
    """Run in a child process: a plan that let these through would allocate tens of GB and die."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    def sainet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sainet", *args], capture_output=True, text=True, env=env,
                              timeout=300, cwd=tmp_path)

    r = sainet("synth", str(tmp_path / "big"), "--size", "100000x100000")
    assert r.returncode == 5 and "MAX_PIXELS" in r.stderr and not (tmp_path / "big").exists()
    r = sainet("synth", str(tmp_path / "big"), "--size", "16000x16000", "--images", "1000000")
    assert r.returncode == 5 and "of RAM available" in r.stderr and not (tmp_path / "big").exists()
    r = sainet("bench-loader", "--source", str(tmp_path / "none"), "--imgsz", "100000", "--work", str(tmp_path / "w"),
               "--out", str(tmp_path / "r"))
    assert r.returncode == 5 and "loader buffers" in r.stderr and not (tmp_path / "w").exists()
    r = sainet("bench-loader", "--source", str(tmp_path / "none"), "--batch", "1000000", "--imgsz", "640",
               "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r"))
    assert r.returncode == 5 and not (tmp_path / "w").exists()


def test_train_refuses_sizes_before_anything_starts(small_set, tmp_path):
    """`train` on the CPU: the model's activations at 100000x32 and a batch of 10^6 exceed any host here."""
    from cache_tools import PackOptions, pack

    store = tmp_path / "store"
    pack(small_set, store, PackOptions(container="lmdb"))
    for extra in (["--imgsz", "100000x32", "--batch", "8"], ["--imgsz", "320", "--batch", "1000000"]):
        res = runner.invoke(app, ["train", "--data", str(store), "--loader", "lmdb", "--model", "yolov8s.yaml",
                                  "--device", "cpu", "--epochs", "1", "--project", str(tmp_path / "runs"), *extra])
        assert res.exit_code == 5, res.output
        assert "host RAM" in res.stderr and "train the model on the CPU" in res.stderr
        assert not (tmp_path / "runs").exists()
        if "1000000" in extra:  # the batch that fits is named, and it is accepted by the same plan
            fit = int(res.stderr.split("--batch ")[1].split()[0])
            assert 1 <= fit < 1000000
            from sainet.train import TrainRequest, resolve

            req = dict(data=str(store), loader="lmdb", model="yolov8s.yaml", imgsz=320, device="cpu", project=str(tmp_path / "r"))
            assert resolve(TrainRequest(**req, batch=fit))[2]["batch"] == fit
            with pytest.raises(CapacityError):
                resolve(TrainRequest(**req, batch=fit + 1))
        else:  # a batch that fits at this shape is named, or none
            assert "fits" in res.stderr.split("available")[-1]


def test_the_val_loader_is_in_the_run_budget():
    """A training run holds a val loader beside the train loader (Ultralytics' val batch: twice the
    train batch): its pooled batch buffers and a full-size decode buffer per thread are in the loader
    bytes of a run, and not in a benchmark's single loader (val_batch=0)."""
    from loaders.buffers import POOL_BYTES, pool_size
    from sainet.budget import estimate_budget

    kw = dict(images=100, imgsz=(832, 1440), batch=16, threads=4, prefetch=2, workers=8, source_hw=(808, 1440), device="cpu")
    run, bench = estimate_budget(**kw), estimate_budget(**kw, val_batch=0)
    frame = 832 * 1440 * 3
    val = pool_size(32 * frame, least=3, most=6, budget=POOL_BYTES) * 32 * frame + 4 * 808 * 1440 * 3
    assert run.val_loader_bytes == val and bench.val_loader_bytes == 0
    assert run.sainet_loader_bytes - bench.sainet_loader_bytes == val
    # on CUDA each batch is a fresh pinned tensor (the caching host allocator rounds it to a power of
    # two): as many as the epoch holds at once, prefetch + 2 assemblers + the consumer's
    cuda = estimate_budget(**{**kw, "device": "cuda"})
    assert cuda.val_loader_bytes == 5 * (1 << 27) + 4 * 808 * 1440 * 3 > val


def _mixed_store(small_set, tmp_path):
    """small_set (12 320x180 JPEGs) and two larger images: at imgsz 640 the median decode (172.8 KB),
    the largest image's (1300x800, reduced to 1/2: 780 KB) and the largest decode (1200x800, at full
    size: 2.88 MB) all differ."""
    import shutil

    import cv2
    import numpy as np

    from cache_tools import PackOptions, pack

    src = tmp_path / "src"
    shutil.copytree(small_set, src)
    for w, h in ((1200, 800), (1300, 800)):
        img = np.random.default_rng(w).integers(0, 256, (h, w, 3), np.uint8)
        cv2.imwrite(str(src / "images" / "train" / f"large{w}.jpg"), img)
        (src / "labels" / "train" / f"large{w}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    pack(src, tmp_path / "store", PackOptions(container="lmdb"))
    return tmp_path / "store"


@pytest.mark.parametrize(("augment", "resample", "batch"), [(True, "fast", 4), (False, "fast", 4), (True, "ultralytics", 4),
                                                             (True, "fast", 400)],
                         ids=["train", "val", "train-two-stage", "train-no-partners"])
def test_the_process_loaders_are_in_the_run_budget_as_they_allocate(small_set, tmp_path, augment, resample, batch):
    """`lmdb-mp` / `shm-mp`: the run budget counts what the loader itself sizes (its slot file: the
    slots and, for train, the shared partner history, its partner count from the median image and
    its sample region the largest decode of any image; one process's own memory per process, a
    batch of decodes per process where it keeps no history, a full-size decode per process for
    val and for the two-stage resample), not the thread loader's pool; on images of mixed sizes."""
    from cache_tools.store import open_store
    from loaders import build_loader
    from loaders.procs import PROCESS_BYTES
    from sainet.budget import estimate_budget, store_decode_sizes

    store = _mixed_store(small_set, tmp_path)
    hw, procs, full = (640, 640), 3, 1300 * 800 * 3
    ld = build_loader(store, "lmdb-mp", batch_size=batch, imgsz="640", augment=augment, threads=procs, prefetch=2,
                      resample=resample, rect=not augment)  # val: Ultralytics' rect val shape, as the trainer's
    try:
        assert tuple(ld.imgsz) == ((640, 640) if augment else (448, 672))
        assert ld.n_slots >= procs + 1 and (ld.history_bytes > 0) == (augment and batch < 100)
        assert not augment or ld._largest_decode() == (1200 * 800 * 3 if resample == "fast" else 640 * 427 * 3)
        own = (0 if ld.history_bytes or not augment else batch * ld._largest_decode()) + (full if not augment or resample != "fast" else 0)
        want = ld.n_slots * ld.slot_bytes + ld.history_bytes + procs * (PROCESS_BYTES + own)
    finally:
        ld.close()
    with open_store(store) as st:
        decode = store_decode_sizes(st, hw)
    kw = dict(images=14, imgsz=hw, threads=procs, prefetch=2, workers=0, decode=decode, device="cpu", resample=resample)
    if augment:
        est = estimate_budget(batch=batch, val_batch=0, processes=True, **kw).sainet_loader_bytes
        threads = estimate_budget(batch=batch, val_batch=0, **kw).sainet_loader_bytes
    else:
        est = estimate_budget(batch=1, val_batch=batch, processes=True, **kw).val_loader_bytes
        threads = estimate_budget(batch=1, val_batch=batch, **kw).val_loader_bytes
    assert est == want and est != threads


def test_the_trainer_plans_the_loader_it_runs(small_set, tmp_path):
    """`sainet train --loader lmdb-mp` is planned with the process loaders' figure (train + val),
    and --resample reaches the plan."""
    from cache_tools.store import open_store
    from sainet.budget import estimate_budget, store_decode_sizes
    from sainet.train import TrainRequest, resolve

    store = _mixed_store(small_set, tmp_path)
    req = dict(data=str(store), imgsz="640", batch=4, device="cpu", threads=3, prefetch=2)
    with open_store(store) as st:
        decode = store_decode_sizes(st, (640, 640))
    for loader, processes in (("lmdb", False), ("lmdb-mp", True)):
        for resample in ("fast", "ultralytics"):
            chosen = resolve(TrainRequest(loader=loader, resample=resample, **req))[2]["loader_buffer_bytes"]
            run = estimate_budget(images=14, imgsz=(640, 640), batch=4, threads=3, prefetch=2, workers=8, model="yolov8s.yaml",
                                  decode=decode, device="cpu", processes=processes, resample=resample)
            assert chosen == run.sainet_loader_bytes


def test_a_profile_naming_a_process_loader_is_planned_with_it():
    """A user profile whose loader is ``lmdb-mp``: the plan's host memory is the process loaders'."""
    from sainet.budget import _run_need, estimate_budget

    cpu = profiles.get_profile("cpu")
    mp = dataclasses.replace(cpu, recommended={**cpu.recommended, "loader": "lmdb-mp"})
    args = ((832, 1440), 8, "yolov8n.yaml", None, 100)
    (threads, _), (procs, _) = _run_need(cpu, *args), _run_need(mp, *args)
    rec = cpu.recommended
    kw = dict(images=100, imgsz=(832, 1440), batch=8, threads=int(rec["threads"]), prefetch=int(rec["prefetch"]), workers=0,
              model="yolov8n.yaml", device="cpu")
    gap = estimate_budget(**kw, processes=True).sainet_loader_bytes - estimate_budget(**kw).sainet_loader_bytes
    assert gap and procs - threads == gap
