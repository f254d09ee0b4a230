"""Training that survives preemption: content fingerprints, atomic checkpoints, SIGTERM/SIGUSR1,
telemetry once per epoch after a resume, elastic mid-epoch resume, the Ultralytics hooks.

Multi-process tests start their processes in a session of their own and kill that process group
when they end, whatever happens.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from cache_tools import PackOptions, pack
from sainet.train.distributed import store_fingerprint


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from sainet.synth import synthesize

    root = tmp_path_factory.mktemp("resume")
    synthesize(root / "ds", images=12, size=(96, 64), seed=1, val_fraction=0.25, background=0.1)
    return root / "ds"


@pytest.fixture(scope="module")
def store(source) -> Path:
    pack(source, source.parent / "store", PackOptions(container="lmdb"))
    return source.parent / "store"


# --------------------------------------------------------------------------------------- fingerprint
def test_two_packs_of_the_same_source_share_a_content_fingerprint(source, store, tmp_path, monkeypatch):
    """Another path, another time: the same fingerprint (the index bytes differ; with the same path
    and time they are identical); another option, record set or label: another fingerprint."""
    from cache_tools.format import INDEX_NAME

    moved = tmp_path / "elsewhere" / "ds"
    shutil.copytree(source, moved)
    monkeypatch.setattr(time, "strftime", lambda *_: "2031-01-01T00:00:00+0000")  # packed "later"
    again = tmp_path / "node1" / "store"
    pack(moved, again, PackOptions(container="lmdb"))
    assert (again / INDEX_NAME).read_bytes() != (store / INDEX_NAME).read_bytes()
    twin = tmp_path / "node2" / "store"  # the same path and pack time: nothing else in the index varies
    pack(moved, twin, PackOptions(container="lmdb"))
    assert (twin / INDEX_NAME).read_bytes() == (again / INDEX_NAME).read_bytes()
    assert store_fingerprint(again) == store_fingerprint(store)
    other_option = tmp_path / "shards"
    pack(source, other_option, PackOptions(container="shards"))
    label = next(p for p in sorted(moved.rglob("*.txt")) if p.read_text().strip() and "labels" in p.parts)
    first, *rest = label.read_text().splitlines()
    label.write_text("\n".join([" ".join(["0", *first.split()[1:]]) if first.split()[0] != "0"
                                else " ".join(["1", *first.split()[1:]]), *rest]) + "\n")
    relabelled = tmp_path / "relabelled"
    pack(moved, relabelled, PackOptions(container="lmdb"))
    image = next(p for p in sorted(moved.rglob("*.jpg")) if "train" in str(p))
    image.unlink()
    fewer = tmp_path / "fewer"
    pack(moved, fewer, PackOptions(container="lmdb"))
    prints = [store_fingerprint(s).digest for s in (store, other_option, relabelled, fewer)]
    assert len(set(prints)) == 4, prints


# ----------------------------------------------------------------------------------- hooks, atomic
def test_private_ultralytics_apis_are_as_hooked():
    """Each private Ultralytics API in `sainet.train.hooks.PRIVATE_APIS` exists in the installed
    Ultralytics with the parameters and the code the hook relies on."""
    import importlib
    import inspect

    from sainet.train.hooks import PRIVATE_APIS

    assert len(PRIVATE_APIS) >= 6
    for api in PRIVATE_APIS:
        module, _, cls = api.owner.partition(":")
        owner = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner
        assert hasattr(owner, api.name), f"{api.owner}.{api.name} is gone (hooked: {api.how})"
        target = getattr(owner, api.name)
        if api.params is not None:
            assert tuple(inspect.signature(target).parameters) == api.params, f"{api.owner}.{api.name}{inspect.signature(target)}"
        source = inspect.getsource(target) if api.source_has else ""
        for text in api.source_has:
            assert text in source, f"{api.owner}.{api.name} no longer contains {text!r} ({api.how})"


def test_console_output_into_a_log_is_plain_lines(monkeypatch):
    """Written to a file, Ultralytics' bars redraw every frame with \\r and an ANSI erase and its log lines
    carry colour codes; inside `plain_console_output` (the trainers', when stdout is not a terminal) a
    bar writes one final line and the log lines have no escape codes. A terminal keeps both unless
    NO_COLOR is set. Everything is restored after."""
    import io
    import logging

    from ultralytics.utils import LOGGER, colorstr
    from ultralytics.utils.tqdm import TQDM

    from sainet.train.hooks import plain_console_output

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    def bar(buf: io.StringIO) -> str:
        pbar = TQDM(range(40), total=40, file=buf, mininterval=0, desc=colorstr("train: ") + "Scanning")
        for _ in pbar:
            pbar.desc = colorstr("train: ") + "Scanning 3 images"  # as Ultralytics' label scan updates it
        pbar.close()
        return buf.getvalue()

    def logged(msg: str, *args: object) -> str:
        caught = io.StringIO()
        handler = next(h for h in LOGGER.handlers if isinstance(h, logging.StreamHandler))
        monkeypatch.setattr(handler, "stream", caught)
        LOGGER.warning(msg, *args)
        return caught.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\r\033[K" in bar(io.StringIO())  # Ultralytics' own, into a log
    assert "\033[1m" in logged(f"Results saved to {colorstr('bold', 'runs/x')}")
    log = io.StringIO()
    with plain_console_output(log):
        out = bar(log)
        text = logged("Results saved to %s, %d", colorstr("bold", "runs/x"), 3)
    assert "\r" not in out and "\033" not in out and out.count("\n") == 1 and "40/40" in out and "train: Scanning 3 images" in out
    assert "\033" not in text and "Results saved to runs/x, 3" in text and "WARNING" in text
    assert "\r\033[K\033[34m" in bar(io.StringIO())  # restored after
    assert "\033[1m" in logged(colorstr("bold", "x"))
    with plain_console_output(Tty()):  # a terminal keeps its colours and live bars
        assert "\033[1m" in logged(colorstr("bold", "x")) and "\r\033[K" in bar(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    with plain_console_output(Tty()):
        assert "\033" not in logged(colorstr("bold", "x"))


def test_atomic_paths_and_the_stripped_checkpoint(tmp_path):
    """AtomicPath.write_bytes and children joined to it; a failed write leaves the old file and no
    temporary; the leftovers of a killed write are removed; the atomic strip_optimizer writes in place."""
    import torch

    from sainet.train.checkpoint import AtomicPath, atomic_save, remove_leftovers
    from sainet.train.hooks import atomic_strip_optimizer, strip_optimizer_atomic

    wdir = AtomicPath(tmp_path)
    child = wdir / "epoch3.pt"
    assert isinstance(child, AtomicPath)
    child.write_bytes(b"new")
    assert child.read_bytes() == b"new"

    def half_then_fail(f) -> None:  # noqa: ANN001
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(child, half_then_fail)
    assert child.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["epoch3.pt"]
    (tmp_path / ".last.pt.123.tmp").write_bytes(b"x" * 10)
    (tmp_path / "mid_epoch.tmp").write_bytes(b"x")
    assert {p.name for p in remove_leftovers(tmp_path)} == {".last.pt.123.tmp", "mid_epoch.tmp"}
    ckpt = {"epoch": 2, "model": torch.nn.Conv2d(1, 1, 1), "ema": None, "optimizer": {"x": 1}, "train_args": {}}
    torch.save(ckpt, tmp_path / "last.pt")
    out = strip_optimizer_atomic(tmp_path / "last.pt")
    assert out["epoch"] == -1 and torch.load(tmp_path / "last.pt", weights_only=False)["optimizer"] is None
    import ultralytics.engine.trainer as ut

    real = ut.strip_optimizer
    with atomic_strip_optimizer():
        assert ut.strip_optimizer is strip_optimizer_atomic
    assert ut.strip_optimizer is real
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch3.pt", "last.pt"]


def test_latest_checkpoint_prefers_a_newer_mid_epoch_file(tmp_path):
    import torch

    from sainet.train.checkpoint import MID_EPOCH_NAME, latest_checkpoint

    last, mid = tmp_path / "last.pt", tmp_path / MID_EPOCH_NAME
    torch.save({"epoch": 0}, mid)  # preempted in the first epoch: no last.pt yet
    assert latest_checkpoint(last) == mid
    torch.save({"epoch": 0}, last)  # epoch 1 finished after it: the mid-epoch file is stale
    assert latest_checkpoint(last) == last and not mid.exists()
    torch.save({"epoch": 1}, mid)  # stopped within epoch 2
    assert latest_checkpoint(last) == mid == latest_checkpoint(mid)


def test_telemetry_rows_of_replayed_epochs_are_dropped(tmp_path):
    from sainet.train.telemetry import keep_epochs_up_to

    (tmp_path / "results.csv").write_text("epoch,time,loss\n1,2.0,0.5\n2,4.0,0.4\n3,6.0,0.3\n")
    (tmp_path / "loader.csv").write_text("epoch,images\n1,9\n2,9\n")
    (tmp_path / "samples.csv").write_text("epoch,rank,im_file\n1,0,a.jpg\n2,0,b.jpg\n2,0,c.jpg\n")
    assert keep_epochs_up_to(tmp_path, 1) == {"results.csv": 2, "loader.csv": 1, "samples.csv": 2}
    assert (tmp_path / "results.csv").read_text() == "epoch,time,loss\n1,2.0,0.5\n"
    assert (tmp_path / "samples.csv").read_text() == "epoch,rank,im_file\n1,0,a.jpg\n"
    assert keep_epochs_up_to(tmp_path, 1) == {}


# ------------------------------------------------------------------------------------------ elastic
@pytest.mark.parametrize("before,after,batches", [(2, 1, 1), (1, 2, 1), (2, 3, 1), (3, 2, 1), (1, 3, 0)])
def test_elastic_loader_resume_covers_the_epoch_once(store, before, after, batches):
    """A loader state saved by `before` ranks after `batches` batches, resumed on `after` ranks with
    the same global batch: every record of the epoch once, plus only the new ranks' padding."""
    from loaders import build_loader
    from loaders.sampler import padding

    glob = 6

    def loaders(world: int) -> list:
        return [build_loader(store, "lmdb", batch_size=glob // world, imgsz=64, split="train", augment=False,
                             hyp={}, rank=r, world_size=world, seed=3, threads=1, prefetch=1, shuffle=True)
                for r in range(world)]

    first = loaders(before)
    seen: list[str] = []
    for ld in first:
        ld.sampler.set_epoch(1)
        it = iter(ld)
        for _ in range(batches):
            seen += next(it)["im_file"]
        ld.reset()
    state = first[0].state_dict()
    second = loaders(after)
    for ld in second:
        ld.load_state_dict(state)
        ld.sampler.set_epoch(1)
        parts = [b["im_file"] for b in ld]
        seen += [f for p in parts for f in p]
        assert ld.state_dict()["batches_done"] == ld.state_dict()["batches_total"] == len(parts)
    n = len(first[0].dataset)
    rest = n - batches * glob
    counts = Counter(seen)
    assert len(counts) == n and sum(counts.values()) == n + padding(rest, after), counts
    with pytest.raises(ValueError, match="global batch"):
        build_loader(store, "lmdb", batch_size=1, imgsz=64, split="train", augment=False, hyp={}, rank=0,
                     world_size=after, seed=3, threads=1, prefetch=1).load_state_dict(state)


# ------------------------------------------------------------------------------ in-process training
def _request(store: Path, tmp_path: Path, name: str, **kw):  # noqa: ANN202
    from sainet.train import TrainRequest

    base = dict(data=str(store), loader="lmdb", model="yolov8n.yaml", imgsz=64, epochs=2, batch=2, device="cpu",
                threads=1, prefetch=1, project=str(tmp_path), name=name, sets={"nbs": 2, "plots": False})
    return TrainRequest(**{**base, **kw})


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader(path.open()))


def _train_names(store: Path) -> list[str]:
    from cache_tools.store import open_store

    with open_store(store) as s:
        return [s.index.name(int(i)) for i in s.indices("train")]


def test_sigterm_saves_stops_with_the_requeue_code_and_resume_sees_each_sample_once(store, tmp_path, monkeypatch):
    """SIGTERM at batch 2 of epoch 1: the step finishes, mid_epoch.pt and the marker are written,
    Preempted (exit code 75) is raised, the handlers are restored; --resume RUN/weights/last.pt
    (there is none yet) continues from the mid-epoch file and every epoch sees each sample once."""
    import os
    import signal

    from sainet.train import TrainRequest, train
    from sainet.train.checkpoint import MID_EPOCH_NAME
    from sainet.train.preempt import MARKER, PREEMPTED_EXIT, Preempted

    monkeypatch.setenv("SAINET_RECORD_SAMPLES", "1")

    def term_at_two(trainer) -> None:  # noqa: ANN001
        if trainer.epoch == 0 and trainer.train_loader.state_dict()["batches_done"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    # sent by a callback after sainet's own check of batch 2: the next step (3) finishes, then it stops
    with pytest.raises(Preempted, match="SIGTERM at epoch 1, batch 3 of 5") as e:
        train(_request(store, tmp_path, "pre", callbacks={"on_train_batch_end": [term_at_two]}))
    assert e.value.exit_code == PREEMPTED_EXIT == 75 and signal.getsignal(signal.SIGTERM) == handler
    run = tmp_path / "pre"
    assert (run / "weights" / MID_EPOCH_NAME).is_file() and not (run / "weights" / "last.pt").exists()
    assert (run / MARKER).is_file() and not list((run / "weights").glob(".*"))
    r = train(TrainRequest(data="", resume=str(run / "weights" / "last.pt"), device="cpu", project=str(tmp_path)))
    assert r.save_dir == run and not (run / MARKER).exists() and not (run / "weights" / MID_EPOCH_NAME).exists()
    names = sorted(_train_names(store))
    samples = _rows(run / "samples.csv")
    for epoch in ("1", "2"):
        assert sorted(s["im_file"] for s in samples if s["epoch"] == epoch) == names
    assert [int(float(row["epoch"])) for row in _rows(run / "results.csv")] == [1, 2]
    assert [row["epoch"] for row in _rows(run / "loader.csv")] == ["1", "2"]


def test_telemetry_of_a_replayed_epoch_is_written_once(store, tmp_path, monkeypatch):
    """Killed after epoch 2's results row but before its last.pt (the copy of epoch 1's last.pt is
    put back): the resume replays epoch 2 and every telemetry file holds each epoch once."""
    import shutil as sh

    from sainet.train import TrainRequest, train

    monkeypatch.setenv("SAINET_RECORD_SAMPLES", "1")

    class Killed(Exception):
        pass

    def lose_epoch_two(trainer) -> None:  # noqa: ANN001
        keep = Path(trainer.wdir) / "epoch1-last.bak"
        if trainer.epoch == 0:
            sh.copyfile(trainer.last, keep)
        elif trainer.epoch == 1:
            sh.copyfile(keep, trainer.last)
            raise Killed

    with pytest.raises(Killed):
        train(_request(store, tmp_path, "replay", epochs=3, callbacks={"on_model_save": [lose_epoch_two]}))
    run = tmp_path / "replay"
    assert [int(float(r["epoch"])) for r in _rows(run / "results.csv")] == [1, 2]
    train(TrainRequest(data="", resume=str(run / "weights" / "last.pt"), device="cpu", project=str(tmp_path)))
    assert [int(float(r["epoch"])) for r in _rows(run / "results.csv")] == [1, 2, 3]
    assert [r["epoch"] for r in _rows(run / "loader.csv")] == ["1", "2", "3"]
    samples = _rows(run / "samples.csv")
    names = sorted(_train_names(store))
    assert all(sorted(s["im_file"] for s in samples if s["epoch"] == str(e)) == names for e in (1, 2, 3))


# ------------------------------------------------------------------------- processes: kills, elastic
REPO = Path(__file__).resolve().parents[1]
#: In the killed processes: every fsync (the step between a checkpoint's write and its rename) takes
#: 0.3 s longer, so that kills land during checkpoint writes often enough to count.
SLOW_FSYNC = "import os, time\n_fsync = os.fsync\n\n\ndef _slow(fd):\n    time.sleep(0.3)\n    return _fsync(fd)\n\n\nos.fsync = _slow\n"
TRAIN = ["--loader", "lmdb", "--model", "yolov8n.yaml", "--imgsz", "64", "--device", "cpu", "--threads", "1",
         "--prefetch", "1", "--set", "nbs=2", "--set", "plots=False"]


def _env(tmp_path: Path, slow_fsync: bool = False) -> dict[str, str]:
    import os

    path = [str(REPO)]
    if slow_fsync:
        (tmp_path / "slowfsync").mkdir(exist_ok=True)
        (tmp_path / "slowfsync" / "sitecustomize.py").write_text(SLOW_FSYNC)
        path.insert(0, str(tmp_path / "slowfsync"))
    env = {**os.environ, "PYTHONPATH": ":".join(path), "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "SAINET_RECORD_SAMPLES": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _start(args: list[str], env: dict[str, str], torchrun: bool = False):  # noqa: ANN202
    import subprocess
    import sys

    head = [sys.executable, "-m", "torch.distributed.run", *args] if torchrun else [sys.executable, "-m", "sainet", *args]
    return subprocess.Popen(head, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _kill_group(p) -> None:  # noqa: ANN001
    import contextlib
    import os
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _resume_path(run: Path) -> Path:
    """What a requeue script passes: last.pt, or before the first epoch ends the mid-epoch file."""
    last = run / "weights" / "last.pt"
    return last if last.is_file() else run / "weights" / "mid_epoch.pt"


def _wait_for(cond, p, timeout: float, poll: float = 0.005) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        if p.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def _writing(run: Path) -> bool:
    w = run / "weights"
    return w.is_dir() and any(f.name.endswith(".tmp") for f in w.iterdir())


def _kill_once(p, run: Path, sig: int, during_write: bool, delay: float) -> dict:  # noqa: ANN001
    """Wait until a checkpoint exists and this attempt writes one; then signal at once (during the
    write) or `delay` seconds later. Returns what happened."""
    has_one = lambda: (run / "weights" / "last.pt").is_file() or (run / "weights" / "mid_epoch.pt").is_file()  # noqa: E731
    started = _wait_for(has_one, p, timeout=240, poll=0.05) and _wait_for(lambda: _writing(run), p, timeout=240)
    if started and not during_write:
        time.sleep(delay)
    writing = _writing(run)
    if p.poll() is None:
        import os

        os.kill(p.pid, sig)
    out = p.communicate(timeout=120)[0]
    return {"rc": p.returncode, "writing": writing, "signalled": started, "out": out}


def _checkpoint_loads(path: Path) -> bool:
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path))
    except Exception:  # noqa: BLE001 - exactly what the series looks for
        return False
    return isinstance(ckpt, dict) and isinstance(ckpt.get("epoch"), int) and ckpt["epoch"] >= 0


def _kill_series(store: Path, tmp_path: Path, kills: int, epochs: int) -> dict:
    """Train, kill (SIGKILL and SIGTERM alternately, at spread moments, every other one during a
    checkpoint write), resume, ... `kills` times, then let the run finish. Returns the counts."""
    import signal

    from sainet.train.checkpoint import latest_checkpoint, remove_leftovers

    env, run = _env(tmp_path, slow_fsync=True), tmp_path / "ks"
    args = ["train", "--data", str(store), *TRAIN, "--batch", "2", "--epochs", str(epochs), "--checkpoint-every", "2",
            "--project", str(tmp_path), "--name", "ks"]
    counts = {"kills": 0, "SIGKILL": 0, "SIGTERM": 0, "during_write": 0, "exit_75": 0, "loadable": 0, "finished_early": 0}
    for i in range(kills):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
        p = _start(args if i == 0 else ["train", "--resume", str(_resume_path(run)), "--device", "cpu"], env)
        try:
            got = _kill_once(p, run, sig, during_write=i % 4 in (0, 1), delay=0.1 + (i * 0.61) % 2.5)
        finally:
            _kill_group(p)
        if not got["signalled"]:
            assert got["rc"] == 0, got["out"][-3000:]
            counts["finished_early"] += 1
            break
        counts["kills"] += 1
        counts[sig.name] += 1
        counts["during_write"] += got["writing"]
        if sig == signal.SIGTERM:
            assert got["rc"] in (75, 0), got["out"][-3000:]  # 0: it came at the end of the last epoch
            counts["exit_75"] += got["rc"] == 75
        remove_leftovers(run / "weights")  # what the next start does; counted below
        chosen = latest_checkpoint(_resume_path(run))
        counts["loadable"] += _checkpoint_loads(chosen)
    p = _start(["train", "--resume", str(_resume_path(run)), "--device", "cpu"], env)
    try:
        out = p.communicate(timeout=600)[0]
    finally:
        _kill_group(p)
    assert p.returncode == 0, out[-3000:]
    return counts


def _check_each_sample_once(run: Path, store: Path, epochs: int) -> None:
    names = sorted(_train_names(store))
    samples = _rows(run / "samples.csv")
    for e in range(1, epochs + 1):
        assert sorted(s["im_file"] for s in samples if s["epoch"] == str(e)) == names, f"epoch {e}"
    assert [int(float(r["epoch"])) for r in _rows(run / "results.csv")] == list(range(1, epochs + 1))
    assert [int(r["epoch"]) for r in _rows(run / "loader.csv")] == list(range(1, epochs + 1))


def test_kill_series_short(store, tmp_path, capsys):
    """2 kills (SIGKILL, then SIGTERM, both during a checkpoint write): each leaves a loadable
    checkpoint, and the finished run saw every sample once per epoch, with one telemetry row each
    (the 20-kill series: `test_kill_series_of_twenty`, slow)."""
    counts = _kill_series(store, tmp_path, kills=2, epochs=2)
    with capsys.disabled():
        print(f"\nkill series (short): {counts}")
    assert counts["kills"] == counts["loadable"] == 2 and counts["exit_75"] + counts["finished_early"] >= 1
    assert not list((tmp_path / "ks" / "weights").glob(".*"))
    _check_each_sample_once(tmp_path / "ks", store, 2)


@pytest.fixture(scope="module")
def bigger_store(tmp_path_factory) -> Path:
    from sainet.synth import synthesize

    root = tmp_path_factory.mktemp("series")
    synthesize(root / "ds", images=32, size=(96, 64), seed=2, val_fraction=0.25, background=0.1)
    pack(root / "ds", root / "store", PackOptions(container="lmdb"))
    return root / "store"


@pytest.mark.slow
def test_kill_series_of_twenty(bigger_store, tmp_path, capsys):
    """The issue's series: 20 kills at spread moments, half SIGKILL, half SIGTERM."""
    counts = _kill_series(bigger_store, tmp_path, kills=20, epochs=6)
    with capsys.disabled():
        print(f"\nkill series (20): {counts}")
    assert counts["kills"] == counts["loadable"] == 20 and counts["SIGKILL"] == counts["SIGTERM"] == 10
    assert counts["during_write"] >= 5
    _check_each_sample_once(tmp_path / "ks", bigger_store, 6)


def _sample_counts(run: Path) -> dict[int, Counter[str]]:
    out: dict[int, Counter[str]] = {}
    for s in _rows(run / "samples.csv"):
        out.setdefault(int(s["epoch"]), Counter())[s["im_file"]] += 1
    return out


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_elastic_resume_after_sigterm(store, tmp_path, before, after):
    """SIGTERM mid-epoch to a run of `before` gloo ranks (to torchrun's agent, which forwards it);
    --resume on `after` ranks: the interrupted epoch's samples are each seen once (plus only the new
    ranks' padding of the rest), every later epoch too, and the telemetry holds each epoch once."""
    import os
    import signal

    from loaders.sampler import padding
    from sainet.train.preempt import MARKER

    env, run, epochs = _env(tmp_path), tmp_path / "el", 2
    common = ["--checkpoint-every", "1", "--project", str(tmp_path), "--name", "el"]
    train = ["train", "--data", str(store), *TRAIN, "--batch", "2", "--epochs", str(epochs), *common]

    def start(args: list[str], world: int):  # noqa: ANN202
        if world == 1:
            return _start(args, env)
        return _start(["--standalone", "--nproc-per-node", str(world), "-m", "sainet", *args], env, torchrun=True)

    p = start(train, before)
    try:
        assert _wait_for(lambda: (run / "weights" / "mid_epoch.pt").is_file(), p, timeout=400, poll=0.05)
        os.kill(p.pid, signal.SIGTERM)
        out = p.communicate(timeout=200)[0]
    finally:
        _kill_group(p)
    assert p.returncode != 0 and (run / MARKER).is_file(), out[-3000:]
    stopped = int(json.loads((run / MARKER).read_text())["epoch"])
    q = start(["train", "--resume", str(_resume_path(run)), "--device", "cpu"], after)
    try:
        out = q.communicate(timeout=500)[0]
    finally:
        _kill_group(q)
    assert q.returncode == 0, out[-3000:]
    names = _train_names(store)
    n = len(names)
    counts = _sample_counts(run)
    assert sorted(counts) == list(range(1, epochs + 1))
    for epoch, c in counts.items():
        assert sorted(c) == sorted(names), epoch  # every record of the epoch
        extra = sum(c.values()) - n
        if epoch < stopped:
            assert extra == padding(n, before)
        elif epoch > stopped:
            assert extra == padding(n, after)
        else:  # the prefix taken by `before` ranks has no repeats; the rest is padded for `after` ranks
            assert extra < after
    assert [int(float(r["epoch"])) for r in _rows(run / "results.csv")] == list(range(1, epochs + 1))
    assert [int(r["epoch"]) for r in _rows(run / "loader.csv")] == list(range(1, epochs + 1))
    assert json.loads((run / "distributed.json").read_text())["world_size"] == after


@pytest.mark.slow
def test_launcher_passes_sigusr1_on_and_reports_the_preemption(store, tmp_path, monkeypatch):
    """`sainet train --device 0,1` (here two CPU ranks through `launch_request`): SIGUSR1 to the
    launcher becomes a SIGTERM to torchrun, whose ranks save and stop; the launcher raises
    Preempted (exit code 75) although torchrun itself exits 1."""
    import os
    import signal
    import threading

    from sainet.train import TrainRequest, resolve
    from sainet.train.launch import launch_request
    from sainet.train.preempt import MARKER, Preempted

    for k, v in _env(tmp_path).items():
        monkeypatch.setenv(k, v)
    req = TrainRequest(data=str(store), loader="lmdb", model="yolov8n.yaml", imgsz=64, epochs=2, batch=2, device="cpu",
                       threads=1, prefetch=1, project=str(tmp_path), name="ln", checkpoint_every=1,
                       sets={"nbs": 2, "plots": False})
    run = tmp_path / "ln"
    stop = threading.Event()

    def signal_when_training() -> None:
        while not stop.is_set() and not (run / "weights" / "mid_epoch.pt").is_file():
            time.sleep(0.05)
        if not stop.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)

    t = threading.Thread(target=signal_when_training, daemon=True)
    t.start()
    try:
        with pytest.raises(Preempted) as e:
            launch_request(req, resolve(req)[0], 2)
    finally:
        stop.set()
    assert e.value.exit_code == 75 and (run / MARKER).is_file()
    assert json.loads((run / MARKER).read_text())["world_size"] == 2
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
