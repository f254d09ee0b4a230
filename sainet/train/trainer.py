"""`SainetTrainer`: Ultralytics' DetectionTrainer with sainet loaders for train and val.

Everything but the data path stays Ultralytics': loss, EMA, validator, metrics, early stopping,
checkpoints, results.csv, the runs/ layout, --resume. The class is importable by module path so
Ultralytics' DDP launch can rebuild it in each rank; sainet's own options travel in the
``SAINET_TRAIN_OPTIONS`` environment variable (JSON), which the ranks inherit.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import RANK

__all__ = ["SainetTrainer", "SainetOptions", "ENV_OPTIONS"]

log = logging.getLogger(__name__)
ENV_OPTIONS = "SAINET_TRAIN_OPTIONS"


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
    """Pass-through around a sainet loader that measures how long the training step waits for data."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self.wait_seconds = 0.0
        self.images = 0
        self.batches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):  # noqa: ANN204
        it = iter(self._loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_seconds += time.perf_counter() - t0
            self.images += len(batch["im_file"])
            self.batches += 1
            yield batch

    def take(self) -> dict[str, float]:
        out = {"wait_s": self.wait_seconds, "images": self.images, "batches": self.batches,
               "busy_s": self._loader.busy_seconds, "built": self._loader.images_built}
        self.wait_seconds, self.images, self.batches = 0.0, 0, 0
        self._loader.busy_seconds, self._loader.images_built = 0.0, 0
        return out


class SainetTrainer(DetectionTrainer):
    """DetectionTrainer whose dataloaders are sainet loaders (see module docstring)."""

    def __init__(self, cfg: Any = None, overrides: dict | None = None, _callbacks: Any = None) -> None:
        from ultralytics.cfg import DEFAULT_CFG

        self.sainet = SainetOptions.from_env()
        super().__init__(cfg or DEFAULT_CFG, overrides, _callbacks)
        self._epoch_t0 = time.perf_counter()
        self.loader_telemetry: list[dict[str, float]] = []
        self.add_callback("on_train_epoch_start", _epoch_start)
        self.add_callback("on_train_epoch_end", _epoch_end)
        if RANK in (-1, 0):  # what `sainet train --resume RUN/weights/last.pt` needs to rebuild the loaders
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.save_dir) / "sainet_options.json").write_text(json.dumps(asdict(self.sainet), indent=2))
            if not self.args.resume:  # a reused run folder (exist_ok) starts a fresh telemetry file
                (Path(self.save_dir) / "loader.csv").unlink(missing_ok=True)

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
        if RANK in (-1, 0):
            import yaml

            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            described = Path(self.save_dir) / "sainet_data.yaml"
            described.write_text(yaml.safe_dump({"path": str(Path(self.sainet.data).resolve()), "train": ".", "val": ".",
                                                 "names": dict(data["names"]), "nc": data["nc"]}, sort_keys=False))
            self.args.data = str(described)
        return data

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):  # noqa: ANN201
        from loaders import build_loader

        world = self.world_size if self.world_size > 1 else 1
        train = mode == "train"
        hyp = vars(self.args).copy()
        loader = build_loader(
            self.sainet.data, self.sainet.loader, batch_size=batch_size, imgsz=self.sainet.imgsz,
            split=self.sainet.train_split if train else self.sainet.val_split, augment=train, hyp=hyp,
            rank=max(rank, 0) if train else 0, world_size=world if train else 1, seed=int(self.args.seed),
            threads=self.sainet.threads, prefetch=self.sainet.prefetch, layout=self.sainet.layout,
            device=str(self.device) if self.device.type == "cuda" else "cpu", shuffle=train,
        )
        if self.args.single_cls:
            _single_class(loader)
        return _TimedLoader(loader) if train else loader

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


def _epoch_end(trainer: SainetTrainer) -> None:
    loader = trainer.train_loader
    if not isinstance(loader, _TimedLoader) or RANK not in (-1, 0):
        return
    t = loader.take()
    epoch_s = time.perf_counter() - trainer._epoch_t0
    row = {"epoch": trainer.epoch + 1, "epoch_s": round(epoch_s, 3), "data_wait_s": round(t["wait_s"], 3),
           "data_wait_fraction": round(t["wait_s"] / epoch_s, 4) if epoch_s else 0.0, "images": t["images"],
           "train_img_per_s": round(t["images"] / epoch_s, 2) if epoch_s else 0.0,
           "loader_img_per_s": round(t["built"] / t["busy_s"], 2) if t["busy_s"] else 0.0}
    trainer.loader_telemetry.append(row)
    path = Path(trainer.save_dir) / "loader.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
