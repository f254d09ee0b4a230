"""Training entry points: one run (`train`) and the two-stage FASDD -> PyroSDIS workflow (`two_stage`).

Resolves the data (a store, or for `disk`/`ultralytics` a dataset), the hardware profile (batch,
loader, threads, prefetch unless given), the stage config and user overrides into Ultralytics
arguments, checks the memory plan, then runs `SainetTrainer` (or Ultralytics' own trainer for
``loader="ultralytics"``, for side-by-side comparison).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import configs
from cache_tools.format import INDEX_NAME
from sainet.errors import CapacityError, DatasetError
from sainet.geometry import format_imgsz, parse_imgsz
from sainet.train import distributed

__all__ = ["TrainRequest", "TrainResult", "train", "two_stage", "resolve"]

log = logging.getLogger(__name__)
LOADERS = ("dali", "lmdb", "shm", "ram", "disk", "ultralytics")


@dataclass
class TrainRequest:
    data: str
    loader: str | None = None  # None: the profile's
    model: str = "yolov8s.yaml"
    weights: str | None = None
    imgsz: str | int = 640
    epochs: int | None = None
    batch: int | None = None  # None: the profile's
    device: str | None = None  # None: "0" with CUDA, else "cpu"
    profile: str = "auto"
    config: str | None = None  # a yaml of Ultralytics arguments
    stage: int | None = None  # 1 or 2: configs/train/stage{N}.yaml
    sets: dict[str, Any] = field(default_factory=dict)  # --set key=value (win over everything)
    project: str = "runs/sainet"
    name: str | None = None
    threads: int | None = None
    prefetch: int | None = None
    resume: str | None = None  # path to last.pt (the run's sainet_options.json fills in data, loader, imgsz)
    layout: str | None = None
    callbacks: dict[str, list[Any]] = field(default_factory=dict)  # Ultralytics callbacks, event -> functions
    checkpoint_every: int = 0  # > 0: weights/mid_epoch.pt every N batches (resume continues mid-epoch)


@dataclass
class TrainResult:
    save_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]
    telemetry: list[dict[str, float]]
    resolved: dict[str, Any]


def _is_store(path: str) -> bool:
    return (Path(path) / INDEX_NAME).is_file()


def _yolo_data_for(store: str, project: str) -> str:
    """A YOLO folder for Ultralytics' own loader: exported from the store once, reused after."""
    from cache_tools.export import export_store
    from cache_tools.format import read_index

    digest = read_index(Path(store)).meta.get("created", "x").replace(":", "")
    out = Path(project) / ".exports" / f"{Path(store).name}-{digest}"
    if not (out / "data.yaml").is_file():
        export_store(store, out, force=True)
    return str(out / "data.yaml")


def _from_run(req: TrainRequest) -> TrainRequest:
    """--resume RUN/weights/last.pt without --data: take data, loader and shape from the run."""
    import json
    from dataclasses import replace

    saved = Path(req.resume).resolve().parent.parent / "sainet_options.json"
    if req.data or not saved.is_file():
        return req
    o = json.loads(saved.read_text())
    h, w = o["imgsz"]
    return replace(req, data=o["data"], loader=req.loader or o["loader"], imgsz=req.imgsz if req.imgsz != 640 else f"{w}x{h}",
                   threads=req.threads or o["threads"], prefetch=req.prefetch or o["prefetch"], layout=o.get("layout"))


def resolve(req: TrainRequest) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """-> (Ultralytics overrides, SainetOptions or None, what was chosen and why)."""
    import torch

    if req.resume:
        req = _from_run(req)
    from cache_tools.store import open_store
    from sainet.budget import estimate_budget
    from sainet.profiles import detect_host, get_profile, nearest_profile
    from sainet.train.trainer import SainetOptions

    host = detect_host()
    if req.profile == "auto":
        profile, _ = nearest_profile(host)
    else:
        profile = get_profile(req.profile)
    rec = profile.recommended
    chosen: dict[str, Any] = {"profile": profile.name}
    loader = req.loader or rec["loader"]
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}")
    shape = parse_imgsz(req.imgsz)
    cuda = torch.cuda.is_available()
    device = req.device or ("0" if cuda else "cpu")
    on_cpu = device == "cpu"

    hyp: dict[str, Any] = {}
    if req.stage:
        hyp.update(configs.load("train", f"stage{req.stage}")["hyp"])
    if req.config:
        doc = yaml.safe_load(Path(req.config).read_text()) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{req.config}: expected a mapping of Ultralytics arguments")
        hyp.update(doc.get("hyp", doc))
    if req.epochs is not None:
        hyp["epochs"] = req.epochs
    hyp.update(req.sets)

    data = str(req.data)
    options = None
    names: dict[int, str] = {}
    store_bytes = 0
    images = 0
    if loader == "ultralytics":
        yolo_data = _yolo_data_for(data, req.project) if _is_store(data) else data
        if shape[0] != shape[1]:
            log.warning("Ultralytics' own loader trains square: imgsz %s becomes %d", format_imgsz(shape), max(shape))
        data_arg = yolo_data
    else:
        if loader == "disk":
            src = data
            if _is_store(data):
                with open_store(data) as s:
                    src = s.meta.get("source") or data
            from loaders.sources import DiskSource

            ds = DiskSource(Path(src), None, req.layout)
            names = dict(enumerate(ds.classes))
            images = len(ds)
            data_path = src
        else:
            if not _is_store(data):
                raise DatasetError(f"{data} is not a store: pack it first (sainet pack {data} --to /dev/shm/NAME), "
                                   "or train with --loader disk or --loader ultralytics")
            with open_store(data) as s:
                names = dict(enumerate(s.classes))
                images = len(s)
                store_bytes = s.nbytes()
                container = s.container
            if loader in ("shm", "lmdb") and {"shm": "shards", "lmdb": "lmdb"}[loader] != container:
                if req.loader:
                    raise DatasetError(f"{data} is a {container} store; use --loader {'shm' if container == 'shards' else 'lmdb'}")
                loader = "shm" if container == "shards" else "lmdb"
            data_path = data
        threads = req.threads or int(rec["threads"])
        prefetch = req.prefetch or int(rec["prefetch"])
        options = SainetOptions(data=data_path, loader=loader, imgsz=shape, threads=threads, prefetch=prefetch,
                                layout=req.layout, names=names, checkpoint_every=req.checkpoint_every)
        data_arg = data_path
        chosen.update(threads=threads, prefetch=prefetch)
    world = distributed.world_size_for(device)
    batch = req.batch or int(rec["batch"]) * world  # profiles give the batch per GPU; --batch is the global batch
    per_rank = distributed.per_rank_batch(batch, world) if loader != "ultralytics" else max(1, batch // world)
    chosen.update(loader=loader, batch=batch, imgsz=format_imgsz(shape), device=device)

    # The memory plan, before anything starts.
    ranks = distributed.ranks_per_node(device)
    b = estimate_budget(images=images, imgsz=shape, batch=per_rank, threads=chosen.get("threads", 2),
                        prefetch=chosen.get("prefetch", 2), workers=8, model=req.model, amp=not on_cpu)
    host_need = distributed.host_bytes_per_node(ranks, b.sainet_loader_bytes, store_bytes, loader)
    chosen.update(loader_buffer_bytes=b.sainet_loader_bytes, store_bytes=store_bytes, vram_estimate_bytes=b.vram_bytes)
    if host_need > host.ram_available_gb * 1e9:
        raise CapacityError(f"loader {loader} needs {host_need / 1e9:.1f} GB of host RAM ({ranks} rank(s): buffers "
                            f"{b.sainet_loader_bytes / 1e9:.1f} GB" + (f" + a {store_bytes / 1e9:.1f} GB RAM copy" if loader == "ram" else "")
                            + f"); {host.ram_available_gb:.1f} GB available: lower --batch or --prefetch, or use --loader shm/lmdb")
    if cuda and not on_cpu and host.vram_gb and b.vram_bytes > host.vram_gb * 1e9:
        raise CapacityError(f"batch {per_rank} per GPU at {format_imgsz(shape)} with {req.model} needs about {b.vram_bytes / 1e9:.1f} GB "
                            f"of GPU memory (estimate); the GPU has {host.vram_gb:.1f} GB: lower --batch")

    overrides: dict[str, Any] = {
        "model": req.model, "data": data_arg, "imgsz": max(shape), "batch": batch, "device": device,
        "project": str(Path(req.project).resolve()), "name": req.name or f"{loader}-{format_imgsz(shape)}",
        "exist_ok": False, "workers": 0 if loader != "ultralytics" else min(8, os.cpu_count() or 2),
        "amp": False if on_cpu else True, "pretrained": req.weights or False, "verbose": False, "plots": True,
        "rect": False,
    }
    overrides.update(hyp)
    if on_cpu:
        overrides["amp"] = False
    if req.resume:
        overrides["resume"] = req.resume
    return overrides, options, chosen


def train(req: TrainRequest) -> TrainResult:
    from sainet.train.offline import prepare_offline

    prepare_offline()
    overrides, options, chosen = resolve(req)
    log.info("profile %s: %s", chosen["profile"], ", ".join(f"{k}={v}" for k, v in chosen.items() if k != "profile"))
    if options is not None and (nproc := distributed.ranks_to_spawn(overrides["device"])):
        save_dir = distributed.launch_request(req, overrides, nproc)  # --device 0,1: torchrun, one rank per GPU
        return TrainResult(save_dir, save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt",
                           _last_metrics(save_dir / "results.csv"), [], {**chosen, "overrides": overrides})
    if options is not None:
        from sainet.train.trainer import SainetTrainer

        options.to_env()
        trainer = SainetTrainer(overrides=overrides)
    else:
        from ultralytics.models.yolo.detect import DetectionTrainer

        trainer = DetectionTrainer(overrides=overrides)
    for event, fns in req.callbacks.items():
        for fn in fns:
            trainer.add_callback(event, fn)
    trainer.train()
    save_dir = Path(trainer.save_dir)
    metrics = _last_metrics(save_dir / "results.csv")
    return TrainResult(save_dir, save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt", metrics,
                       list(getattr(trainer, "loader_telemetry", [])), {**chosen, "overrides": overrides})


def _last_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    if not rows:
        return {}
    out = {}
    for k, v in rows[-1].items():
        try:
            out[k.strip()] = float(v)
        except (TypeError, ValueError):
            continue
    out["best_mAP50"] = max(float(r.get("metrics/mAP50(B)", 0) or 0) for r in rows)
    return out


def two_stage(base: TrainRequest, stage1_data: str, stage2_data: str, *, stage1_epochs: int | None = None,
              stage2_epochs: int | None = None) -> tuple[TrainResult, TrainResult]:
    """Stage 1 (FASDD, fire + smoke) then stage 2 (PyroSDIS, smoke) from stage 1's best.pt."""
    from dataclasses import replace

    name = base.name or "two-stage"
    r1 = train(replace(base, data=stage1_data, stage=1, epochs=stage1_epochs or base.epochs, name=f"{name}-stage1"))
    if not r1.best.is_file():
        raise DatasetError(f"stage 1 produced no best.pt in {r1.save_dir}")
    r2 = train(replace(base, data=stage2_data, stage=2, epochs=stage2_epochs or base.epochs, weights=str(r1.best),
                       name=f"{name}-stage2"))
    return r1, r2
