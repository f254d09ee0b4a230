"""Training entry points: one run (`train`) and the two-stage FASDD -> PyroSDIS workflow (`two_stage`).

`resolve` turns a `TrainSettings` into Ultralytics arguments in small steps: restore the run being
resumed, pick the hardware profile (batch, loader, threads, prefetch unless given), find the data
(a store, or for ``disk``/``ultralytics`` a dataset), merge the stage config and user overrides,
and check the memory plan before anything starts. `train` then runs `SainetTrainer` (or
Ultralytics' own trainer for ``loader="ultralytics"``, for side-by-side comparison) and records the
resolved settings in the run folder, so ``--resume`` restores the run's shape, loader and options.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

import configs
from cache_tools.store import is_store
from loaders.backends import BACKENDS, reader_for
from sainet.core.errors import CapacityError, DatasetError, SettingsError
from sainet.core.geometry import format_imgsz
from sainet.core.safepath import output_dir, plain_child
from sainet.core.topology import Topology
from sainet.profiles import HostInfo, Profile
from sainet.settings import LOADERS, TrainSettings, default_threads
from sainet.train import distributed, launch
from sainet.train.checkpoint import latest_checkpoint
from sainet.train.hooks import plain_console_output
from sainet.train.transfer import check_stage_classes

__all__ = ["TrainRequest", "TrainSettings", "TrainResult", "train", "two_stage", "resolve", "restore_run",
           "SETTINGS_FILE", "LOADERS"]

log = logging.getLogger(__name__)
#: The resolved settings of a run, written into its folder; `--resume` reads them back.
SETTINGS_FILE = "sainet_settings.json"
_OPTIONS_FILE = "sainet_options.json"  # what SainetTrainer writes (runs made before SETTINGS_FILE existed)

#: The old name of `TrainSettings`, kept for callers of the first release.
TrainRequest = TrainSettings


@dataclass
class TrainResult:
    save_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]
    telemetry: list[dict[str, float]]
    resolved: dict[str, Any]


@dataclass(frozen=True)
class _Data:
    arg: str  # Ultralytics' data= argument
    loader: str  # the loader, matched to the store's container
    names: dict[int, str] = field(default_factory=dict)
    images: int = 0
    store_bytes: int = 0
    decode: Any = None  # sainet.budget.DecodeSizes of the images, from the store's index or the headers


@dataclass
class _Plan:
    settings: TrainSettings  # every value concrete
    overrides: dict[str, Any]
    options: Any  # SainetOptions, or None for Ultralytics' own loader
    chosen: dict[str, Any]


# ---------------------------------------------------------------------------------------------- resume


def _saved_settings(run_dir: Path) -> TrainSettings | None:
    """The settings a run was trained with: its SETTINGS_FILE, else the trainer's options file."""
    path = run_dir / SETTINGS_FILE
    try:
        if path.is_file():
            return TrainSettings.from_dict(json.loads(path.read_text()))
        path = run_dir / _OPTIONS_FILE
        if path.is_file():
            o = json.loads(path.read_text())
            return TrainSettings(data=o["data"], loader=o["loader"], imgsz=tuple(o["imgsz"]), threads=o["threads"],
                                 prefetch=o["prefetch"], layout=o.get("layout"), resample=o.get("resample", "fast"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SettingsError(f"{path}: cannot read the run's settings ({e})", "--resume") from None
    return None


def restore_run(s: TrainSettings) -> TrainSettings:
    """`--resume RUN/weights/last.pt`: the run's data, loader, shape and options come back.

    Values the user gives win where changing them cannot change what is learned (data path,
    device, threads, prefetch, batch: Ultralytics also lets batch change on resume); a different
    shape or loader is refused, because the run would silently continue as another run. A
    mid-epoch checkpoint newer than last.pt (``weights/mid_epoch.pt``, periodic or written on
    preemption) is where the run continues (`sainet.train.checkpoint.latest_checkpoint`).
    """
    s = s.replace(resume=str(latest_checkpoint(str(s.resume))))  # a newer mid-epoch checkpoint, if any
    last = Path(str(s.resume))
    if not last.is_file():
        raise SettingsError(f"{last}: no such checkpoint (expected RUN/weights/last.pt)", "--resume")
    _refuse_finished(last)
    saved = _saved_settings(last.resolve().parent.parent)
    if saved is None:
        return s  # a run of Ultralytics' own trainer: its checkpoint carries its arguments
    for opt, mine, theirs in (("--imgsz", s.imgsz, saved.imgsz), ("--loader", s.loader, saved.loader)):
        if mine is not None and theirs is not None and mine != theirs:
            shown = (format_imgsz(mine), format_imgsz(theirs)) if opt == "--imgsz" else (mine, theirs)
            raise SettingsError(f"{shown[0]} differs from the run's {shown[1]}; resume continues the run as it was "
                                f"(leave {opt} out, or start a new run)", opt)
    keep = {k: getattr(s, k) for k in ("data", "device", "threads", "prefetch", "batch", "checkpoint_every") if getattr(s, k)}
    return saved.replace(**keep, resume=s.resume, callbacks=s.callbacks)


def _refuse_finished(last: Path) -> None:
    """A finished run's last.pt has no optimizer state and epoch -1 (Ultralytics strips it): say so in one
    line instead of Ultralytics' AssertionError after a new, empty run folder was made."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(last))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the user's file, not our bug
        raise SettingsError(f"{last}: not a readable Ultralytics checkpoint ({type(e).__name__}: {e})", "--resume") from None
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    if not isinstance(epoch, int) or epoch < 0:
        epochs = (ckpt.get("train_args") or {}).get("epochs", "?") if isinstance(ckpt, dict) else "?"
        raise SettingsError(f"{last}: the run finished its {epochs} epochs, nothing to resume; start a new run "
                            f"from it with --weights {last}", "--resume")


# ---------------------------------------------------------------------------------------------- resolve


def _yolo_data_for(store: str, project: str) -> str:
    """A YOLO folder for Ultralytics' own loader: exported from the store once, reused after."""
    from cache_tools.export import export_store
    from cache_tools.format import read_index

    meta = read_index(Path(store)).meta
    # Store fields never become path text: the folder is named by the store's folder name and a
    # digest of its id (or creation time, for stores packed before store ids), then checked to be plain.
    tag = hashlib.blake2b(str(meta.get("store_id") or meta.get("created") or "x").encode(), digest_size=6).hexdigest()
    exports = Path(project) / ".exports"
    out = plain_child(exports, f"{Path(os.path.realpath(store)).name}-{tag}", "export folder name")
    if not (out / "data.yaml").is_file():
        export_store(store, out, force=True)
    return str(out / "data.yaml")


def _check_outputs(s: TrainSettings) -> None:
    """--project may not be /, a system folder, the data or inside it, or inside a store; --name is one plain name."""
    output_dir(s.project, "--project", sources=(s.data,) if s.data else (),
               error=SettingsError)
    if s.name is not None:
        plain_child(s.project, s.name, "--name", error=SettingsError)


def _stage_config(s: TrainSettings) -> dict[str, Any]:
    """configs/train/stage{N}.yaml, or nothing without a stage."""
    return configs.load("train", f"stage{s.stage}") if s.stage else {}


def _hyperparameters(s: TrainSettings) -> dict[str, Any]:
    """Stage config < --config file < --epochs < --set, every key and value checked (sainet.validate)."""
    from sainet.validate import check_hyp

    layers: list[tuple[str, dict[str, Any]]] = [(f"stage {s.stage} (configs/train/stage{s.stage}.yaml)",
                                                 dict(_stage_config(s).get("hyp") or {}))]
    if s.config:
        try:
            doc = yaml.safe_load(Path(s.config).read_text()) or {}
        except (OSError, yaml.YAMLError, RecursionError, UnicodeDecodeError) as e:
            raise SettingsError(f"cannot read {s.config}: {e}", "--config") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("hyp", doc), dict):
            raise SettingsError(f"{s.config}: expected a mapping of Ultralytics arguments", "--config")
        layers.append((f"--config {s.config}", doc.get("hyp", doc)))
    if s.epochs is not None:
        layers.append(("--epochs", {"epochs": s.epochs}))
    layers.append(("--set", dict(s.sets)))
    return check_hyp(layers, sainet_loader=s.loader != "ultralytics")


def _resolve_data(s: TrainSettings, loader: str) -> _Data:
    """Where the images come from, and the loader that reads them (matched to the store's container)."""
    from cache_tools.store import open_store

    data = str(s.data)
    if BACKENDS[loader].external:  # Ultralytics' own loader: a dataset, or a store exported for it
        if s.shape[0] != s.shape[1]:
            log.warning("Ultralytics' own loader trains square: imgsz %s becomes %d", format_imgsz(s.shape), max(s.shape))
        if not is_store(data):
            return _Data(data, loader)
        with open_store(data) as st:
            names = dict(enumerate(st.classes))
        return _Data(data, loader, names)  # exported for Ultralytics once the classes are checked (_plan)
    if BACKENDS[loader].reads == "dataset":  # the disk loader: the dataset folder a store was packed from
        src = data
        if is_store(data):
            with open_store(data) as st:
                src = st.meta.get("source") or data
            if not Path(src).is_dir():  # moved, or several folders ("a, b": `sainet pack A B --to`)
                raise DatasetError(f"{data}: --loader disk reads the JPEG files of the dataset folder a store was packed "
                                   f"from, and this store's ({src}) is not one folder here; pass the dataset folder "
                                   "itself, or train from the store with --loader shm/lmdb/dali")
        from loaders.sources import DiskSource

        ds = DiskSource(Path(src), None, s.layout)
        from sainet.budget import DecodeSizes

        decode = DecodeSizes.collect(((int(h), int(w)), int(w) * int(h) * 3) for w, h in ds.sizes)
        return _Data(src, loader, dict(enumerate(ds.classes)), len(ds), decode=decode)
    if not is_store(data):
        raise DatasetError(f"{data} is not a store: pack it first (sainet pack {data} --to /dev/shm/NAME), "
                           "or train with --loader disk or --loader ultralytics")
    from sainet.budget import store_decode_sizes

    with open_store(data) as st:
        names, images, nbytes, container = dict(enumerate(st.classes)), len(st), st.nbytes(), st.container
        decode = store_decode_sizes(st, s.shape)
    # the user's loader must read this store (else an error naming the one that does); the profile's is adapted to it
    loader = reader_for(loader, container, data, given=bool(s.loader))
    return _Data(data, loader, names, images, nbytes, decode)


def _check_classes(s: TrainSettings, d: _Data, hyp: dict[str, Any]) -> None:
    """A stage trains exactly its config's classes: checked by name against the data's classes."""
    classes = _stage_config(s).get("classes")
    if not classes:
        return
    if not d.names:
        log.warning("stage %s: the classes of %s are not known before training; not checked against %s",
                    s.stage, s.data, ", ".join(classes))
        return
    check_stage_classes(int(s.stage), [str(c) for c in classes], d.names, str(s.data), merge=bool(hyp.get("single_cls")))


def _weights_from(s: TrainSettings) -> str:
    """How the logs name the pretrained weights: ``stage-1`` when a stage starts from another's."""
    source = _stage_config(s).get("from_stage")
    return f"stage-{source}" if s.weights and source else "pretrained"


def _memory_problem(s: TrainSettings, d: _Data, host: HostInfo, on_cpu: bool, cuda: bool, per_rank: int) -> tuple[Any, str]:
    """The budget of `per_rank` images per rank, and why it does not fit this host ("" when it does)."""
    from sainet.budget import estimate_budget

    ranks = distributed.ranks_per_node(s.device)
    b = estimate_budget(images=d.images, imgsz=s.shape, batch=per_rank, threads=s.threads or 2, prefetch=s.prefetch or 2,
                        workers=8, model=s.model, amp=not on_cpu, decode=d.decode, device="cpu" if on_cpu else "cuda",
                        processes=BACKENDS[d.loader].processes, resample=s.resample)
    ram_copy = d.store_bytes if d.loader == "ram" else 0
    model_ram = ranks * b.cpu_train_bytes if on_cpu else 0
    host_need = distributed.host_bytes_per_node(ranks, b.sainet_loader_bytes, d.store_bytes, d.loader) + model_ram
    if host_need > host.ram_available_gb * 1e9:
        return b, (f"batch {per_rank} at {format_imgsz(s.shape)} with {s.model}, loader {d.loader}, needs "
                   f"{host_need / 1e9:.1f} GB of host RAM ({ranks} rank(s): buffers {b.sainet_loader_bytes / 1e9:.1f} GB"
                   f" with {b.decode_bytes / 1e9:.2f} GB of decoded images and {b.val_loader_bytes / 1e9:.2f} GB for val"
                   + (f" + a {ram_copy / 1e9:.1f} GB RAM copy" if ram_copy else "")
                   + (f" + {b.cpu_train_bytes / 1e9:.1f} GB to train the model on the CPU (activations "
                      f"{b.activation_bytes / 1e9:.1f} GB)" if on_cpu else "")
                   + f"); {host.ram_available_gb:.1f} GB available")
    if cuda and not on_cpu and host.vram_gb and b.vram_bytes > host.vram_gb * 1e9:
        return b, (f"batch {per_rank} per GPU at {format_imgsz(s.shape)} with {s.model} needs about "
                   f"{b.vram_bytes / 1e9:.1f} GB of GPU memory (estimate); the GPU has {host.vram_gb:.1f} GB")
    return b, ""


def _check_memory(s: TrainSettings, d: _Data, host: HostInfo, on_cpu: bool, cuda: bool) -> dict[str, int]:
    """The memory plan, before anything starts: refuse what cannot fit host RAM or GPU memory (the loader's
    buffers with the decoded size of the data's largest images, and the model's activations for the shape
    and batch: in host RAM when training on the CPU, in GPU memory on CUDA), naming the batch that fits."""
    from sainet.budget import largest_fitting

    world = distributed.world_size_for(s.device)
    per_rank = max(1, s.batch // world) if BACKENDS[d.loader].external else distributed.per_rank_batch(s.batch, world)
    b, problem = _memory_problem(s, d, host, on_cpu, cuda, per_rank)
    if problem:
        fit = largest_fitting(lambda n: not _memory_problem(s, d, host, on_cpu, cuda, n)[1], per_rank - 1)
        raise CapacityError(problem + (f": --batch {fit * max(1, world)} fits" if fit else
                                       ": not even batch 1 fits; lower --imgsz or use a smaller --model"))
    return {"loader_buffer_bytes": b.sainet_loader_bytes, "store_bytes": d.store_bytes, "vram_estimate_bytes": b.vram_bytes,
            "decode_bytes": b.decode_bytes, "activation_bytes": b.activation_bytes}


def _overrides(s: TrainSettings, d: _Data, hyp: dict[str, Any]) -> dict[str, Any]:
    on_cpu = s.device == "cpu"
    out: dict[str, Any] = {
        "model": s.model, "data": d.arg, "imgsz": max(s.shape), "batch": s.batch, "device": s.device,
        "project": str(Path(s.project).resolve()), "name": s.name or f"{d.loader}-{format_imgsz(s.shape)}",
        "exist_ok": False, "workers": default_threads() if BACKENDS[d.loader].external else 0,
        # amp=False on CPU is Ultralytics' public switch: its AMP check (which downloads a model) never runs.
        "amp": not on_cpu, "pretrained": s.weights or False, "verbose": False, "plots": True, "rect": False,
    }
    if on_cpu and hyp.get("amp") not in (None, False):  # would be overridden below: refused, not ignored
        raise SettingsError(f"amp={hyp['amp']}: mixed precision needs a CUDA device; on --device cpu training runs "
                            "in fp32 (leave amp out)", "--set")
    out.update(hyp)
    if on_cpu:
        out["amp"] = False
    if s.resume:
        out["resume"] = s.resume
    return out


def _profile_defaults(s: TrainSettings, profile: Profile, cuda: bool) -> TrainSettings:
    """The profile's values where none were given. Profiles give the batch per GPU; --batch is the global batch."""
    rec = profile.recommended
    device = s.device or ("0" if cuda else "cpu")
    batch = s.batch or int(rec["batch"]) * distributed.world_size_for(device)
    return s.replace(loader=s.loader or rec["loader"], batch=batch, device=device, imgsz=s.shape,
                     threads=s.threads or int(rec["threads"]), prefetch=s.prefetch or int(rec["prefetch"]))


def _check_inputs(s: TrainSettings) -> None:
    """--device against the visible GPUs, --model and --weights against what a model file is: before anything starts."""
    from sainet.validate import check_device, check_model, check_weights

    check_device(s.device)
    if not s.resume:
        check_model(s.model)
    if s.weights:
        check_weights(s.weights)


def _plan(settings: TrainSettings) -> _Plan:
    import torch

    from sainet.profiles import choose_profile, detect_host
    from sainet.train.trainer import SainetOptions

    s = restore_run(settings) if settings.resume else settings
    _check_outputs(s)
    host = detect_host()
    profile = choose_profile(s.profile, host)
    cuda = torch.cuda.is_available()
    given_loader = s.loader
    s = _profile_defaults(s, profile, cuda)
    _check_inputs(s)
    d = _resolve_data(s.replace(loader=given_loader), s.loader)
    s = s.replace(loader=d.loader)
    chosen: dict[str, Any] = {"profile": profile.name}
    hyp = _hyperparameters(s)
    _check_classes(s, d, hyp)
    external = BACKENDS[d.loader].external  # Ultralytics' own loader and trainer
    if external and is_store(d.arg):
        d = replace(d, arg=_yolo_data_for(d.arg, s.project))
    options = None
    if not external:
        options = SainetOptions(data=d.arg, loader=d.loader, imgsz=s.shape, threads=s.threads, prefetch=s.prefetch,
                                layout=s.layout, resample=s.resample, names=d.names, checkpoint_every=s.checkpoint_every,
                                weights_from=_weights_from(s))
        chosen.update(threads=s.threads, prefetch=s.prefetch)
    chosen.update(loader=d.loader, batch=s.batch, imgsz=format_imgsz(s.shape), device=s.device)
    chosen.update(_check_memory(s, d, host, s.device == "cpu", cuda))
    return _Plan(s, _overrides(s, d, hyp), options, chosen)


def resolve(settings: TrainSettings) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """-> (Ultralytics overrides, SainetOptions or None, what was chosen and why)."""
    p = _plan(settings)
    return p.overrides, p.options, p.chosen


# ---------------------------------------------------------------------------------------------- run


@contextlib.contextmanager
def run_files_named(save_dir: Path) -> Iterator[None]:
    """A file-system error without a file name (a failed write() says only "No space left on device")
    names the run folder it happened under; a full filesystem is a `CapacityError` (exit 5)."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise CapacityError(f"{save_dir}: filesystem full while writing the run's files ({e.strerror})") from e
        raise OSError(e.errno, f"{e.strerror or e} (writing the run's files)", str(save_dir)) from e


def train(settings: TrainSettings) -> TrainResult:
    from sainet.train.offline import prepare_offline

    prepare_offline()
    p = _plan(settings)
    log.info("profile %s: %s", p.chosen["profile"], ", ".join(f"{k}={v}" for k, v in p.chosen.items() if k != "profile"))
    if p.options is not None and (nproc := distributed.ranks_to_spawn(p.overrides["device"])):
        save_dir = launch.launch_request(settings, p.overrides, nproc)  # --device 0,1: torchrun, one rank per GPU
        return TrainResult(save_dir, save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt",
                           _last_metrics(save_dir / "results.csv"), [], {**p.chosen, "overrides": p.overrides})
    with plain_console_output():  # both trainers, from their argument line on: no bar frames or colour codes in a log file
        if p.options is not None:
            from sainet.train.trainer import SainetTrainer

            trainer = SainetTrainer(overrides=p.overrides, options=p.options)
        else:
            from ultralytics.models.yolo.detect import DetectionTrainer

            trainer = DetectionTrainer(overrides=p.overrides)
        save_dir = Path(trainer.save_dir)
        if Topology.from_env().main:  # under torchrun, rank 0 alone writes
            save_dir.mkdir(parents=True, exist_ok=True)
            (save_dir / SETTINGS_FILE).write_text(json.dumps(p.settings.replace(resume=None).to_dict(), indent=2))
        for event, fns in settings.callbacks.items():
            for fn in fns:
                trainer.add_callback(event, fn)
        with run_files_named(save_dir):
            trainer.train()
    metrics = _last_metrics(save_dir / "results.csv")
    return TrainResult(save_dir, save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt", metrics,
                       list(getattr(trainer, "loader_telemetry", [])), {**p.chosen, "overrides": p.overrides})


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


def two_stage(base: TrainSettings, stage1_data: str, stage2_data: str, *, stage1_epochs: int | None = None,
              stage2_epochs: int | None = None) -> tuple[TrainResult, TrainResult]:
    """Stage 1 (FASDD, fire + smoke) then stage 2 (PyroSDIS, smoke) from stage 1's best.pt.

    Stage 2's plan (its classes against its store, its memory) is checked before stage 1 starts,
    so that a store stage 2 would refuse is found before a day of stage 1, not after.
    """
    name = base.name or "two-stage"
    second = base.replace(data=stage2_data, stage=2, epochs=stage2_epochs or base.epochs, name=f"{name}-stage2")
    _plan(second)
    r1 = train(base.replace(data=stage1_data, stage=1, epochs=stage1_epochs or base.epochs, name=f"{name}-stage1"))
    if not r1.best.is_file():
        raise DatasetError(f"stage 1 produced no best.pt in {r1.save_dir}")
    r2 = train(second.replace(weights=str(r1.best)))
    return r1, r2
