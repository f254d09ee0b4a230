"""`SainetTrainer`: Ultralytics' DetectionTrainer with sainet loaders for train and val.

Everything but the data path stays Ultralytics': loss, EMA, validator, metrics, early stopping,
checkpoints, results.csv, the runs/ layout, --resume. sainet's own options (`SainetOptions`, resolved
once by `sainet.train.run` from the `TrainSettings`) are handed to the constructor; a torchrun rank
resolves them itself from the settings file the launcher gives it (`sainet.train.rank`).

Under torchrun the trainer, not Ultralytics, owns the process group (`sainet.train.distributed`):
world size and global rank come from the environment rather than from the device string, gloo
serves CPU ranks and NCCL GPU ranks, the loaders shard by global rank, ranks agree on one run
folder and one store, and rank 0 alone writes. What is overridden and why:

* ``__init__`` creates the process group first and sets ``world_size`` (Ultralytics: 0 on CPU);
* ``_setup_ddp`` does nothing (Ultralytics forces CUDA + NCCL and a 3-hour timeout there);
* ``_setup_train`` lets DDP wrap a CPU model (`sainet.train.hooks.ddp_device_ids_for_cpu`);
* ``get_dataloader`` ignores the LOCAL_RANK Ultralytics passes and shards by global rank;
* ``final_eval`` sends best.pt's weights from rank 0 instead of reading the file on every rank;
* ``get_model`` carries the head's class rows over by name (`sainet.train.transfer`);
* ``resume_training`` also restores a mid-epoch checkpoint (`_mid_epoch_checkpoint`), also one
  written by another number of ranks (elastic: `loaders.prefetch.ResumeState`), and drops the
  telemetry rows of the epochs it replays (`sainet.train.telemetry`);
* ``train`` handles SIGTERM/SIGUSR1 (`sainet.train.preempt`): checkpoint, then exit for a requeue;
  Ultralytics' log lines name sainet's loader and the real shape while it runs (`_SainetLogLines`).

Every checkpoint is written atomically (`sainet.train.checkpoint`); the private Ultralytics APIs
this relies on are listed, and watched by a test, in `sainet.train.hooks`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ultralytics.models.yolo.detect import DetectionTrainer

from loaders.sampler import ShardedSampler
from loaders.stall import StallClock
from sainet.core.errors import SainetError
from sainet.train import hooks, preempt, telemetry
from sainet.train.checkpoint import MID_EPOCH_NAME, atomic_save, remove_leftovers
from sainet.train.distributed import (
    DistInfo,
    any_rank,
    broadcast,
    check_same_store,
    cuda_device,
    gather,
    init_process_group,
    per_rank_batch,
    shutdown_process_group,
    store_fingerprint,
    timeout_s,
)

__all__ = ["SainetTrainer", "SainetOptions", "ENV_RECORD_SAMPLES", "MID_EPOCH_NAME"]

log = logging.getLogger(__name__)
ENV_RECORD_SAMPLES = "SAINET_RECORD_SAMPLES"
MID_EPOCH_KEY = "sainet_mid_epoch"
RUN_INFO = "distributed.json"  # world size, backend, ranks: written by rank 0 of a distributed run


@dataclass
class SainetOptions:
    data: str  # store path (or a dataset folder for the disk loader)
    loader: str = "lmdb"
    imgsz: tuple[int, int] = (640, 640)  # (H, W) training shape, stride-padded
    threads: int = 2
    prefetch: int = 2
    layout: str | None = None
    resample: str = "fast"  # how train images are resampled (`loaders.decode.RESAMPLE`)
    train_split: str = "train"
    val_split: str = "val"
    names: dict[int, str] = field(default_factory=dict)
    checkpoint_every: int = 0  # > 0: a mid-epoch checkpoint (weights/mid_epoch.pt) every N batches
    weights_from: str = "pretrained"  # how logs name the pretrained weights' classes ("stage-1")


class _TimedLoader:
    """Pass-through around a sainet loader that measures how long the training step waits for data.

    With ``SAINET_RECORD_SAMPLES=1`` it also keeps the names of the images each epoch yielded
    (written to ``samples.csv`` by rank 0): a debugging aid, and how the tests prove that the
    ranks' shards are disjoint and cover the split.
    """

    def __init__(self, loader: Any, device: Any = None) -> None:
        self._loader = loader
        self.clock = StallClock(device)  # on CUDA: the wait as the training stream sees it (loaders/stall.py)
        self.wait_seconds = 0.0
        self.images = 0
        self.batches = 0
        self.record = os.environ.get(ENV_RECORD_SAMPLES) == "1"
        self.seen: list[str] = []
        #: samples.csv rows ({rank, im_file}) of this epoch from before the mid-epoch checkpoint it resumed from
        self.before: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):  # noqa: ANN204
        it = iter(self._loader)
        while True:
            t0, token = time.perf_counter(), self.clock.start()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_seconds += time.perf_counter() - t0
            self.clock.stop(token)
            self.images += len(batch["im_file"])
            self.batches += 1
            if self.record:
                self.seen.extend(batch["im_file"])
            yield batch

    def take(self) -> dict[str, Any]:
        out = {"wait_s": self.wait_seconds, "gpu_wait_s": self.clock.seconds(), "images": self.images, "batches": self.batches,
               "busy_s": self._loader.busy_seconds, "built": self._loader.images_built, "seen": self.seen,
               "before": self.before}
        self.wait_seconds, self.images, self.batches, self.seen, self.before = 0.0, 0, 0, [], []
        self._loader.busy_seconds, self._loader.images_built = 0.0, 0
        return out


class _SainetLogLines(logging.Filter):
    """Ultralytics' log lines told the truth about a sainet run: its "imgsz=1440" is the long side of a
    1440x832 (WxH) shape, and its "Using 2 dataloader workers" counts DataLoader processes that a sainet
    loader does not have (it decodes in threads). The lines are rewritten, not dropped, so that logs
    still read as Ultralytics' users expect."""

    def __init__(self, options: SainetOptions) -> None:
        super().__init__()
        h, w = options.imgsz
        self.shape = f"{w}x{h}"
        self.loader = (f"Using sainet's {options.loader} loader: {options.threads} decode threads, prefetch "
                       f"{options.prefetch} batches (no DataLoader workers)")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        new = re.sub(r"Using \d+ dataloader workers", self.loader, msg)
        new = re.sub(r"\bimgsz=(\d+)\b(?! \(sainet)", rf"imgsz=\1 (sainet trains {self.shape} WxH)", new)
        if new != msg:
            record.msg, record.args = new, None
        return True


@contextlib.contextmanager
def _truthful_log_lines(options: SainetOptions) -> Iterator[None]:
    from ultralytics.utils import LOGGER

    f = _SainetLogLines(options)
    LOGGER.addFilter(f)
    try:
        yield
    finally:
        LOGGER.removeFilter(f)


class SainetTrainer(DetectionTrainer):
    """DetectionTrainer whose dataloaders are sainet loaders (see module docstring)."""

    def __init__(self, cfg: Any = None, overrides: dict | None = None, _callbacks: Any = None, *,
                 options: SainetOptions | None = None) -> None:
        from ultralytics.cfg import DEFAULT_CFG

        if options is None:
            raise TypeError("SainetTrainer needs options=SainetOptions(...); start training through sainet.train.train()")
        self.sainet = options
        self.dist = DistInfo.from_env()
        overrides = dict(overrides or {})
        self.dist_backend = self._start_process_group(overrides) if self.dist.distributed else None
        with _truthful_log_lines(self.sainet):  # Ultralytics prints its arguments here
            super().__init__(cfg or DEFAULT_CFG, overrides, _callbacks)
        if self.dist.distributed:
            import torch

            per_rank_batch(int(self.args.batch), self.dist.world_size)  # refuse a batch that does not divide
            self.world_size, self.ddp = self.dist.world_size, False  # torchrun started us: never re-spawn
            if self.dist_backend == "nccl":
                self.device = torch.device("cuda", torch.cuda.current_device())
        self._epoch_t0 = time.perf_counter()
        self.loader_telemetry: list[dict[str, float]] = []
        self.add_callback("on_train_epoch_start", _epoch_start)
        self.add_callback("on_train_epoch_end", _epoch_end)
        if self.sainet.checkpoint_every > 0:
            self.add_callback("on_train_batch_end", _mid_epoch_checkpoint)
        self.add_callback("on_model_save", _drop_mid_epoch_checkpoint)  # also when resumed from one
        self.preemption = preempt.Preemption()
        self.add_callback("on_train_batch_end", _stop_if_preempted)
        hooks.atomic_checkpoints(self)
        if self.dist.main:
            remove_leftovers(self.wdir)
            preempt.clear_marker(self.save_dir)
        if self.dist.main:  # what `sainet train --resume RUN/weights/last.pt` needs to rebuild the loaders
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.save_dir) / "sainet_options.json").write_text(json.dumps(asdict(self.sainet), indent=2))
            if not self.args.resume:  # a reused run folder (exist_ok) starts fresh telemetry files
                for name in ("loader.csv", "ranks.csv", "samples.csv"):
                    (Path(self.save_dir) / name).unlink(missing_ok=True)

    def train(self) -> None:
        try:
            with self.preemption.installed(), _truthful_log_lines(self.sainet):
                super().train()
        finally:
            if self.dist_backend:
                shutdown_process_group()

    def _start_process_group(self, overrides: dict) -> str:
        """Create the process group (before Ultralytics' __init__, so that every rank can agree on
        rank 0's run folder: each would otherwise pick its own ``name-2``, ``name-3``...)."""
        import torch
        from ultralytics.cfg import DEFAULT_CFG, get_cfg, get_save_dir

        device = str(overrides.get("device") or "")
        on_cuda = device != "cpu" and torch.cuda.is_available()
        backend = init_process_group(self.dist, cuda_device(device, self.dist) if on_cuda else None)
        if not overrides.get("resume") and not overrides.get("save_dir"):
            mine = str(get_save_dir(get_cfg(DEFAULT_CFG, overrides))) if self.dist.main else None
            overrides["save_dir"] = gather(mine)[0]
        return backend

    def _setup_ddp(self) -> None:
        """The process group exists since __init__ (`sainet.train.distributed`); nothing else to do."""

    def _setup_train(self) -> None:
        with hooks.ddp_device_ids_for_cpu(self.world_size > 1 and self.device.type == "cpu"):
            super()._setup_train()
        self._agree_on_run()

    def _agree_on_run(self) -> None:
        """Before the first step: the same store on every node; rank 0 records who is who (also for
        a single process, so that a resume can tell the world size the run had)."""
        if self.dist.distributed:
            names = list(getattr(self.train_loader.dataset.source, "names", []))
            check_same_store(self.sainet.data, store_fingerprint(self.sainet.data, names))
        ranks = gather({"rank": self.dist.rank, "local_rank": self.dist.local_rank, "host": socket.gethostname(),
                        "device": str(self.device), "data": str(Path(self.sainet.data).resolve())})
        if self.dist.main:
            (Path(self.save_dir) / RUN_INFO).write_text(json.dumps(
                {"world_size": self.dist.world_size, "backend": self.dist_backend,
                 "timeout_s": timeout_s() if self.dist.distributed else None,
                 "batch": int(self.args.batch), "batch_per_rank": self.batch_size // self.dist.world_size, "ranks": ranks},
                indent=2))

    def get_dataset(self) -> dict:
        """The data dict Ultralytics expects, from the store's index.

        A small ``sainet_data.yaml`` describing it is written into the run folder and becomes
        ``args.data``, so Ultralytics' standalone validation of best.pt (which re-reads the data
        argument) finds class names without a dataset folder.
        """
        names = self.sainet.names
        data = {"path": self.sainet.data, "train": self.sainet.data, "val": self.sainet.data,
                "names": names, "nc": len(names), "channels": 3}
        if self.args.single_cls:
            data["names"], data["nc"] = {0: names.get(0, "item") if len(names) == 1 else "item"}, 1
        if self.dist.main:
            import yaml

            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            described = Path(self.save_dir) / "sainet_data.yaml"
            described.write_text(yaml.safe_dump({"path": str(Path(self.sainet.data).resolve()), "train": ".", "val": ".",
                                                 "names": dict(data["names"]), "nc": data["nc"]}, sort_keys=False))
            self.args.data = str(described)
        return data

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True):  # noqa: ANN201
        """Ultralytics' model (pretrained tensors transferred where shapes match), with the head's
        class rows carried over by class name from the pretrained head (`sainet.train.transfer`)."""
        from sainet.train.transfer import carry_class_rows

        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        source = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
        if source is not None:
            carry_class_rows(model, source, self.data["names"], origin=self.sainet.weights_from, verbose=verbose)
        return model

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):  # noqa: ANN201
        """A sainet loader over this rank's shard. Ultralytics passes LOCAL_RANK as `rank`; shards
        follow the global rank (`self.dist`), and `batch_size` is already the per-rank batch."""
        from loaders import build_loader

        train = mode == "train"
        world, me = self.dist.world_size, self.dist.rank
        hyp = vars(self.args).copy()
        loader = build_loader(
            self.sainet.data, self.sainet.loader, batch_size=batch_size, imgsz=self._shape(),
            split=self.sainet.train_split if train else self.sainet.val_split, augment=train, hyp=hyp,
            rank=me, world_size=world, seed=int(self.args.seed),
            threads=self.sainet.threads, prefetch=self.sainet.prefetch, layout=self.sainet.layout,
            resample=self.sainet.resample,
            device=str(self.device) if self.device.type == "cuda" else "cpu", shuffle=train,
            rect=not train, stride=self._stride(),  # at a square imgsz, Ultralytics' rect val shape (its validator's)
        )
        if not train and world > 1:  # contiguous, unpadded: each validation image is counted once
            loader.sampler = ShardedSampler(len(loader.dataset), rank=me, world_size=world, shuffle=False, pad=False)
        if self.args.single_cls:
            _single_class(loader)
        return _TimedLoader(loader, self.device) if train else loader

    def _shape(self) -> tuple[int, int]:
        """The training shape at the model's largest stride: `imgsz` (padded to 32) rounded up to a
        multiple of 64 for a P6 model, as Ultralytics' ``check_imgsz`` does to its square (a P6 head
        cannot take 1440x832); said once, and Ultralytics' log lines say it too."""
        from ultralytics.utils import LOGGER

        gs, (h, w) = self._stride(), self.sainet.imgsz
        shape = (math.ceil(h / gs) * gs, math.ceil(w / gs) * gs)
        if shape != (h, w) and not getattr(self, "_shape_said", False):
            self._shape_said = True
            log.warning("--imgsz %dx%d is not a multiple of the model's largest stride %d: training at %dx%d",
                        w, h, gs, shape[1], shape[0])
            for f in LOGGER.filters:
                if isinstance(f, _SainetLogLines):
                    f.shape = f"{shape[1]}x{shape[0]}"
        return shape

    def _stride(self) -> int:
        """The model's largest stride, at least 32: Ultralytics' ``gs`` for its val batch shapes
        (64 for a P6 model, whose head cannot take 160x288)."""
        import torch
        from ultralytics.utils.torch_utils import unwrap_model

        model = unwrap_model(self.model) if isinstance(self.model, torch.nn.Module) else None
        stride = getattr(model, "stride", None)
        return max(int(stride.max()) if isinstance(stride, torch.Tensor) else 0, 32)

    def resume_training(self, ckpt: dict | None) -> None:
        """Ultralytics' resume, plus a mid-epoch checkpoint's model weights and loader position."""
        mid = (ckpt or {}).get(MID_EPOCH_KEY) if self.resume else None
        if mid is None:
            super().resume_training(ckpt)
            self._drop_replayed_telemetry()
            return None
        saved = mid["loader"]["batch_size"] * int(mid["world_size"])
        if saved != int(self.args.batch):
            raise SainetError(f"{self.args.resume} stopped mid-epoch at --batch {saved}; resume it with --batch {saved} "
                              f"(the epoch continues where that batch order left off), not {self.args.batch}")
        from ultralytics.utils.torch_utils import unwrap_model

        hooks.load_checkpoint_state(self, ckpt)
        unwrap_model(self.model).load_state_dict(mid["model"])
        try:
            self.train_loader.load_state_dict(mid["loader"])
        except ValueError as e:
            raise SainetError(f"{self.args.resume}: cannot continue its epoch here ({e})") from None
        self.train_loader.before = list(mid.get("samples") or [])
        self.start_epoch = int(ckpt["epoch"])
        self._drop_replayed_telemetry()
        log.info("resuming epoch %d at batch %d of %d rank(s), now on %d", self.start_epoch + 1,
                 int(mid["loader"]["batches_done"]), int(mid["world_size"]), self.dist.world_size)
        return None

    def _drop_replayed_telemetry(self) -> None:
        """The epochs from `start_epoch` on run again: their rows (of an interrupted run) go."""
        if self.dist.main:
            telemetry.keep_epochs_up_to(Path(self.save_dir), self.start_epoch)

    def final_eval(self) -> None:
        """Ultralytics validates best.pt through a fresh model on ``cuda:<current device>`` with a
        file every rank must see; under torch.distributed rank 0 instead sends best.pt's weights to
        every rank (no shared filesystem needed, CPU ranks work) and all ranks validate their shard."""
        if self.world_size <= 1:
            with hooks.atomic_strip_optimizer():
                return super().final_eval()
        strip_optimizer = hooks.strip_optimizer_atomic
        state = None
        if self.dist.main and self.best.exists():
            ckpt = strip_optimizer(self.last) if self.last.exists() else {}
            strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})
            from ultralytics.nn.tasks import load_checkpoint

            state = load_checkpoint(self.best)[0].float().state_dict()
        state = broadcast(state)
        if state is None:
            return None
        self.ema.ema.load_state_dict(state)
        self.validator.args.plots = self.args.plots
        metrics = self.validator(trainer=self)
        if self.dist.main and metrics is not None:
            metrics.pop("fitness", None)
            self.metrics = metrics
            self.epoch += 1  # log best metrics at step epochs+1, as Ultralytics does
            self.run_callbacks("on_fit_epoch_end")
            self.epoch -= 1
        return None

    def plot_training_labels(self) -> None:
        try:
            super().plot_training_labels()
        except Exception as e:  # noqa: BLE001 - a plot must never stop a 30-hour run
            log.warning("label plot skipped: %s", e)


def _single_class(loader: Any) -> None:
    """single_cls: every box is class 0 (what Ultralytics' dataset does)."""
    src = loader.source
    src.cls = [c * 0 for c in src.cls]
    loader.dataset._labels = None


def _epoch_start(trainer: SainetTrainer) -> None:
    trainer._epoch_t0 = time.perf_counter()
    # The order is a pure function of (seed, epoch): tell the loader which epoch this is, so a
    # resumed run continues with the order it would have had (Ultralytics only does this under DDP).
    trainer.train_loader.sampler.set_epoch(trainer.epoch)


def _weights_digest(trainer: SainetTrainer) -> str:
    """A hash of the model's parameters: equal on every rank when DDP kept them in sync. (Buffers
    such as BatchNorm statistics are left out: Ultralytics turns DDP's buffer broadcast off, so
    each rank keeps its own; the EMA's buffers come from rank 0 before every validation.)"""
    from ultralytics.utils.torch_utils import unwrap_model

    h = hashlib.blake2b(digest_size=8)
    for v in unwrap_model(trainer.model).parameters():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _epoch_end(trainer: SainetTrainer) -> None:
    """Telemetry. Every rank measures its own epoch; rank 0 writes loader.csv (its own loader) and,
    in a distributed run, ranks.csv (every rank: images, data-wait share, host PSS, weights hash)."""
    import psutil

    loader = trainer.train_loader
    if not isinstance(loader, _TimedLoader):
        return
    t = loader.take()
    epoch_s = time.perf_counter() - trainer._epoch_t0
    waited = t["wait_s"] if t["gpu_wait_s"] is None else t["gpu_wait_s"]  # on CUDA: the training stream's stalls
    wait = round(waited / epoch_s, 4) if epoch_s else 0.0
    row = {"epoch": trainer.epoch + 1, "epoch_s": round(epoch_s, 3), "data_wait_s": round(waited, 3),
           "data_wait_fraction": wait, "data_wait_clock": loader.clock.kind, "host_wait_s": round(t["wait_s"], 3),
           "images": t["images"],
           "train_img_per_s": round(t["images"] / epoch_s, 2) if epoch_s else 0.0,
           "loader_img_per_s": round(t["built"] / t["busy_s"], 2) if t["busy_s"] else 0.0}
    save_dir = Path(trainer.save_dir)
    if trainer.dist.distributed:
        mine = {"epoch": trainer.epoch + 1, "rank": trainer.dist.rank, "host": socket.gethostname(), "images": t["images"],
                "batches": t["batches"], "data_wait_fraction": wait,
                "pss_mb": round(psutil.Process().memory_full_info().pss / 1e6, 1), "weights": _weights_digest(trainer)}
        everyone = gather((mine, t["seen"]))
        if trainer.dist.main:
            _append_csv(save_dir / "ranks.csv", [r for r, _ in everyone])
            if loader.record:
                _append_csv(save_dir / "samples.csv", [{"epoch": trainer.epoch + 1, **b} for b in t["before"]]
                            + [{"epoch": trainer.epoch + 1, "rank": r["rank"], "im_file": f} for r, seen in everyone for f in seen])
    elif loader.record:
        _append_csv(save_dir / "samples.csv", [{"epoch": trainer.epoch + 1, **b} for b in t["before"]]
                    + [{"epoch": trainer.epoch + 1, "rank": 0, "im_file": f} for f in t["seen"]])
    if trainer.dist.main:
        trainer.loader_telemetry.append(row)
        _append_csv(save_dir / "loader.csv", [row])


def _append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


def _mid_epoch_path(trainer: SainetTrainer) -> Path:
    return Path(trainer.wdir) / MID_EPOCH_NAME


def _position(trainer: SainetTrainer) -> tuple[int, int]:
    """(batches done, batches in all) of the training pass in progress."""
    state = trainer.train_loader.state_dict()
    return int(state["batches_done"]), int(state.get("batches_total") or len(trainer.train_loader))


def _mid_epoch_checkpoint(trainer: SainetTrainer) -> None:
    """Every `checkpoint_every` batches (not at the epoch's last: last.pt follows): `_write_mid_epoch`."""
    done, total = _position(trainer)
    if done % trainer.sainet.checkpoint_every == 0 and done < total:
        _write_mid_epoch(trainer)


def _write_mid_epoch(trainer: SainetTrainer) -> Path:
    """Model, optimizer, EMA and loader position in one file, written atomically by rank 0.

    Ultralytics writes last.pt once per epoch; an epoch of FASDD at 1440x832 takes hours. This
    file has last.pt's layout (`hooks.checkpoint_dict`, so ``--resume`` accepts it) with the live
    model's weights and the loader's `state_dict` added; `SainetTrainer.resume_training` restores
    both and the epoch goes on with the batches not yet seen, in the same order (with another
    number of ranks: the rest of the order, sharded anew). All ranks hold the same weights and have
    done the same number of batches, so rank 0's loader state describes them all. With
    ``SAINET_RECORD_SAMPLES=1`` the samples every rank has seen so far this epoch go in too (a
    collective: every rank calls this at the same batch). Deleted once the epoch's last.pt is
    saved. Not saved: gradients accumulated since the last optimizer step. Ultralytics numbers the
    resumed epoch's batches from 0 again, so within that epoch the warmup schedule (first
    `warmup_epochs` only) and the plotted batch indices restart.
    """
    loader = trainer.train_loader
    samples = None
    if isinstance(loader, _TimedLoader) and loader.record:
        everyone = gather(loader.seen)
        samples = list(loader.before) + [{"rank": r, "im_file": f} for r, seen in enumerate(everyone) for f in seen]
    path = _mid_epoch_path(trainer)
    if not trainer.dist.main:
        return path
    import torch
    from ultralytics.utils.torch_utils import unwrap_model

    model = {k: v.detach().cpu().clone() for k, v in unwrap_model(trainer.model).state_dict().items()}
    ckpt = hooks.checkpoint_dict(trainer, **{MID_EPOCH_KEY: {"model": model, "loader": loader.state_dict(),
                                                             "world_size": trainer.dist.world_size, "samples": samples}})
    return atomic_save(path, lambda f: torch.save(ckpt, f))


def _stop_if_preempted(trainer: SainetTrainer) -> None:
    """After each step: if any rank got SIGTERM/SIGUSR1, all save and stop (`sainet.train.preempt`).
    At an epoch's last step the epoch first ends (validation, last.pt); the next step stops."""
    done, total = _position(trainer)
    if done >= total or not any_rank(trainer.preemption.requested):
        return
    path = _write_mid_epoch(trainer)
    cause = signal_name(trainer.preemption.signal) if trainer.preemption.signal else "another rank's signal"
    if trainer.dist.main:
        preempt.write_marker(trainer.save_dir, {"epoch": trainer.epoch + 1, "batches_done": done, "signal": cause,
                                                "checkpoint": str(path), "world_size": trainer.dist.world_size})
    raise preempt.Preempted(f"stopped by {cause} at epoch {trainer.epoch + 1}, batch {done} of {total}; saved {path}. "
                            f"Continue with --resume {Path(trainer.wdir) / 'last.pt'} (exit code {preempt.PREEMPTED_EXIT}: requeue)")


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _drop_mid_epoch_checkpoint(trainer: SainetTrainer) -> None:
    _mid_epoch_path(trainer).unlink(missing_ok=True)  # last.pt now holds a later state
