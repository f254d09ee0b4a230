"""`SainetTrainer`: Ultralytics' DetectionTrainer with sainet loaders for train and val.

Everything but the data path stays Ultralytics': loss, EMA, validator, metrics, early stopping,
checkpoints, results.csv, the runs/ layout, --resume. sainet's own options travel in the
``SAINET_TRAIN_OPTIONS`` environment variable (JSON), which torchrun's ranks inherit.

Under torchrun the trainer, not Ultralytics, owns the process group (`sainet.train.distributed`):
world size and global rank come from the environment rather than from the device string, gloo
serves CPU ranks and NCCL GPU ranks, the loaders shard by global rank, ranks agree on one run
folder and one store, and rank 0 alone writes. What is overridden and why:

* ``__init__`` creates the process group first and sets ``world_size`` (Ultralytics: 0 on CPU);
* ``_setup_ddp`` does nothing (Ultralytics forces CUDA + NCCL and a 3-hour timeout there);
* ``_setup_train`` lets DDP wrap a CPU model (`_ddp_device_ids_for_cpu`);
* ``get_dataloader`` ignores the LOCAL_RANK Ultralytics passes and shards by global rank;
* ``final_eval`` sends best.pt's weights from rank 0 instead of reading the file on every rank;
* ``get_model`` carries the head's class rows over by name (`sainet.train.transfer`);
* ``resume_training`` also restores a mid-epoch checkpoint (`_mid_epoch_checkpoint`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ultralytics.models.yolo.detect import DetectionTrainer

from loaders.sampler import ShardedSampler
from loaders.stall import StallClock
from sainet.core.errors import SainetError
from sainet.train.distributed import (
    DistInfo,
    DistributedError,
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

__all__ = ["SainetTrainer", "SainetOptions", "ENV_OPTIONS", "ENV_RECORD_SAMPLES", "MID_EPOCH_NAME"]

log = logging.getLogger(__name__)
ENV_OPTIONS = "SAINET_TRAIN_OPTIONS"
ENV_RECORD_SAMPLES = "SAINET_RECORD_SAMPLES"
MID_EPOCH_NAME = "mid_epoch.pt"  # in the run's weights/ folder
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
    train_split: str = "train"
    val_split: str = "val"
    names: dict[int, str] = field(default_factory=dict)
    checkpoint_every: int = 0  # > 0: a mid-epoch checkpoint (weights/mid_epoch.pt) every N batches
    weights_from: str = "pretrained"  # how logs name the pretrained weights' classes ("stage-1")

    def to_env(self) -> None:
        os.environ[ENV_OPTIONS] = json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> SainetOptions:
        raw = os.environ.get(ENV_OPTIONS)
        if not raw:
            raise RuntimeError(f"SainetTrainer needs {ENV_OPTIONS}; start training through sainet.train.train()")
        d = json.loads(raw)
        d["imgsz"] = tuple(d["imgsz"])
        d["names"] = {int(k): v for k, v in d.get("names", {}).items()}
        return cls(**d)


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
               "busy_s": self._loader.busy_seconds, "built": self._loader.images_built, "seen": self.seen}
        self.wait_seconds, self.images, self.batches, self.seen = 0.0, 0, 0, []
        self._loader.busy_seconds, self._loader.images_built = 0.0, 0
        return out


@contextlib.contextmanager
def _ddp_device_ids_for_cpu(active: bool) -> Iterator[None]:
    """Let Ultralytics' DDP wrapping run on CPU ranks.

    `BaseTrainer._setup_train` wraps the model with ``nn.parallel.DistributedDataParallel(model,
    device_ids=[self.device.index])``: ``[None]`` on CPU, which DDP rejects (CPU modules take
    ``device_ids=None``). No argument or hook changes that call, so for its duration the module
    global ``nn`` of ``ultralytics.engine.trainer`` is replaced by a view of torch.nn whose DDP
    drops ``[None]``. `tests/test_distributed.py` fails loudly should Ultralytics rename it.
    """
    if not active:
        yield
        return
    import types

    import torch
    import ultralytics.engine.trainer as ut

    real = ut.nn

    def ddp(module: Any, device_ids: Any = None, **kw: Any) -> Any:
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=None if device_ids == [None] else device_ids, **kw)

    shim = types.SimpleNamespace(**{k: getattr(torch.nn, k) for k in dir(torch.nn) if not k.startswith("__")})
    shim.parallel = types.SimpleNamespace(DistributedDataParallel=ddp)
    ut.nn = shim
    try:
        yield
    finally:
        ut.nn = real


class SainetTrainer(DetectionTrainer):
    """DetectionTrainer whose dataloaders are sainet loaders (see module docstring)."""

    def __init__(self, cfg: Any = None, overrides: dict | None = None, _callbacks: Any = None) -> None:
        from ultralytics.cfg import DEFAULT_CFG

        self.sainet = SainetOptions.from_env()
        self.dist = DistInfo.from_env()
        overrides = dict(overrides or {})
        self.dist_backend = self._start_process_group(overrides) if self.dist.distributed else None
        super().__init__(cfg or DEFAULT_CFG, overrides, _callbacks)
        if self.dist.distributed:
            import torch

            per_rank_batch(int(self.args.batch), self.dist.world_size)  # refuse a batch that does not divide
            self.world_size, self.ddp = self.dist.world_size, False  # torchrun started us: never re-spawn
            if self.dist_backend == "nccl":
                self.device = torch.device("cuda", torch.cuda.current_device())
        self._same_world_as_before()
        self._epoch_t0 = time.perf_counter()
        self.loader_telemetry: list[dict[str, float]] = []
        self.add_callback("on_train_epoch_start", _epoch_start)
        self.add_callback("on_train_epoch_end", _epoch_end)
        if self.sainet.checkpoint_every > 0:
            self.add_callback("on_train_batch_end", _mid_epoch_checkpoint)
        self.add_callback("on_model_save", _drop_mid_epoch_checkpoint)  # also when resumed from one
        if self.dist.main:  # what `sainet train --resume RUN/weights/last.pt` needs to rebuild the loaders
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.save_dir) / "sainet_options.json").write_text(json.dumps(asdict(self.sainet), indent=2))
            if not self.args.resume:  # a reused run folder (exist_ok) starts fresh telemetry files
                for name in ("loader.csv", "ranks.csv", "samples.csv"):
                    (Path(self.save_dir) / name).unlink(missing_ok=True)

    def train(self) -> None:
        try:
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
        with _ddp_device_ids_for_cpu(self.world_size > 1 and self.device.type == "cpu"):
            super()._setup_train()
        self._agree_on_run()

    def _same_world_as_before(self) -> None:
        """A resumed run keeps its world size: the shards and the per-rank batch depend on it."""
        info = Path(self.save_dir) / RUN_INFO
        world = self.dist.world_size
        problem = None
        if self.dist.main and self.resume and info.is_file():
            before = json.loads(info.read_text()).get("world_size", 1)
            if before != world:
                problem = (f"{self.args.resume} was trained by {before} rank(s); resume it with {before} "
                           f"(e.g. torchrun --nproc-per-node {before} -m sainet train --resume ...), not {world}")
        problem = gather(problem)[0]
        if problem:
            raise DistributedError(problem)

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
            self.sainet.data, self.sainet.loader, batch_size=batch_size, imgsz=self.sainet.imgsz,
            split=self.sainet.train_split if train else self.sainet.val_split, augment=train, hyp=hyp,
            rank=me, world_size=world, seed=int(self.args.seed),
            threads=self.sainet.threads, prefetch=self.sainet.prefetch, layout=self.sainet.layout,
            device=str(self.device) if self.device.type == "cuda" else "cpu", shuffle=train,
        )
        if not train and world > 1:  # contiguous, unpadded: each validation image is counted once
            loader.sampler = ShardedSampler(len(loader.dataset), rank=me, world_size=world, shuffle=False, pad=False)
        if self.args.single_cls:
            _single_class(loader)
        return _TimedLoader(loader, self.device) if train else loader

    def resume_training(self, ckpt: dict | None) -> None:
        """Ultralytics' resume, plus a mid-epoch checkpoint's model weights and loader position."""
        mid = (ckpt or {}).get(MID_EPOCH_KEY) if self.resume else None
        if mid is None:
            return super().resume_training(ckpt)
        if int(mid["world_size"]) != self.dist.world_size:
            raise DistributedError(f"{self.args.resume} was written by {mid['world_size']} ranks; resume it with as many")
        saved = mid["loader"]["batch_size"] * int(mid["world_size"])
        if saved != int(self.args.batch):
            raise SainetError(f"{self.args.resume} stopped mid-epoch at --batch {saved}; resume it with --batch {saved} "
                              f"(the epoch continues where that batch order left off), not {self.args.batch}")
        from ultralytics.utils.torch_utils import unwrap_model

        self._load_checkpoint_state(ckpt)
        unwrap_model(self.model).load_state_dict(mid["model"])
        self.train_loader.load_state_dict(mid["loader"])
        self.start_epoch = int(ckpt["epoch"])
        log.info("resuming epoch %d at batch %d", self.start_epoch + 1, int(mid["loader"]["batches_done"]))
        return None

    def final_eval(self) -> None:
        """Ultralytics validates best.pt through a fresh model on ``cuda:<current device>`` with a
        file every rank must see; under torch.distributed rank 0 instead sends best.pt's weights to
        every rank (no shared filesystem needed, CPU ranks work) and all ranks validate their shard."""
        if self.world_size <= 1:
            return super().final_eval()
        from ultralytics.utils.torch_utils import strip_optimizer

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
                _append_csv(save_dir / "samples.csv", [{"epoch": trainer.epoch + 1, "rank": r["rank"], "im_file": f}
                                                       for r, seen in everyone for f in seen])
    elif loader.record:
        _append_csv(save_dir / "samples.csv", [{"epoch": trainer.epoch + 1, "rank": 0, "im_file": f} for f in t["seen"]])
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


def _mid_epoch_checkpoint(trainer: SainetTrainer) -> None:
    """Every `checkpoint_every` batches: model, optimizer, EMA and loader position in one file.

    Ultralytics writes last.pt once per epoch; an epoch of FASDD at 1440x832 takes hours. This
    file has last.pt's layout (so ``--resume`` accepts it) with the live model's weights and the
    loader's `state_dict` added; `SainetTrainer.resume_training` restores both and the epoch goes
    on with the batches not yet seen, in the same order. Written atomically by rank 0 (all ranks
    hold the same weights; the loader position differs only by rank); deleted once the epoch's
    last.pt is saved. Not saved: gradients accumulated since the last optimizer step. Ultralytics
    numbers the resumed epoch's batches from 0 again, so within that epoch the warmup schedule
    (first `warmup_epochs` only) and the plotted batch indices restart.
    """
    loader = trainer.train_loader
    done = int(loader.state_dict()["batches_done"])
    if not trainer.dist.main or done % trainer.sainet.checkpoint_every or done >= len(loader):
        return
    import torch
    from ultralytics import __version__
    from ultralytics.utils.torch_utils import unwrap_model

    model = {k: v.detach().cpu().clone() for k, v in unwrap_model(trainer.model).state_dict().items()}
    ckpt = {
        "epoch": trainer.epoch, "best_fitness": trainer.best_fitness,
        "stopper": {"best_fitness": trainer.stopper.best_fitness, "best_epoch": trainer.stopper.best_epoch},
        "model": None, "ema": deepcopy(trainer.ema.ema), "updates": trainer.ema.updates,
        "optimizer": deepcopy(trainer.optimizer.state_dict()), "scaler": trainer.scaler.state_dict(),
        "train_args": vars(trainer.args), "train_metrics": {**(trainer.metrics or {}), "fitness": trainer.fitness},
        "date": datetime.now().astimezone().isoformat(), "version": __version__,
        MID_EPOCH_KEY: {"model": model, "loader": loader.state_dict(), "world_size": trainer.dist.world_size},
    }
    path = _mid_epoch_path(trainer)
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def _drop_mid_epoch_checkpoint(trainer: SainetTrainer) -> None:
    _mid_epoch_path(trainer).unlink(missing_ok=True)  # last.pt now holds a later state
