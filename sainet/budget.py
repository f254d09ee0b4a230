"""Memory budget of a training run: store, loader buffers, Ultralytics' equivalents, VRAM.

Loader buffers for sainet: `prefetch` finished batches queued, one batch being rendered, and its
decoded sources (threads decode into reused per-slot buffers). Ultralytics' DataLoader holds
workers x prefetch_factor (2) batches, each worker a process with its own dataset copy; `cache=ram`
holds every image resized to imgsz, once per DDP rank.
VRAM is an estimate from the model scale (bytes of activations per input pixel at batch 1,
fitted to Ultralytics' reported GPU_mem for YOLOv8 n/s/m/l/x), plus weights and optimizer state.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cache_tools.plan import StoreEstimate, check_fits, estimate_store, fs_info, human_bytes
from sainet.core.errors import CapacityError, SettingsError
from sainet.core.geometry import format_imgsz, parse_wxh
from sainet.core.parallel import default_threads
from sainet.profiles import Profile
from sainet.settings import parse_bytes

__all__ = ["Budget", "estimate_budget", "VRAM_BYTES_PER_PIXEL", "MemoryPlan", "describe_source", "estimate_source",
           "plan_memory"]

#: Training activations per input pixel per image (AMP), by YOLOv8 scale.
VRAM_BYTES_PER_PIXEL = {"n": 380.0, "s": 640.0, "m": 1070.0, "l": 1530.0, "x": 2140.0}
_PARAMS = {"n": 3.2e6, "s": 11.2e6, "m": 25.9e6, "l": 43.7e6, "x": 68.2e6}
_ULTRA_WORKER_BYTES = 1.2e9  # a DataLoader worker process (torch + dataset copy), measured order of magnitude


def model_scale(model: str) -> str:
    m = re.search(r"yolov?\d+([nsmlx])", str(model).lower())
    return m.group(1) if m else "s"


@dataclass
class Budget:
    frame_bytes: int
    sainet_loader_bytes: int  # per rank
    ultralytics_loader_bytes: int  # per rank
    ultralytics_ram_cache_bytes: int  # per rank
    vram_bytes: int  # per GPU

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_budget(*, images: int, imgsz: tuple[int, int], batch: int, threads: int, prefetch: int, workers: int,
                    model: str = "yolov8s.yaml", source_hw: tuple[int, int] | None = None, amp: bool = True) -> Budget:
    H, W = imgsz
    frame = H * W * 3
    sh, sw = source_hw or imgsz
    src_frame = sh * sw * 3
    sainet = (prefetch + 1) * batch * frame + batch * src_frame + threads * 2 * frame
    ultra = workers * 2 * batch * frame + workers * int(_ULTRA_WORKER_BYTES)
    r = max(H, W) / max(sh, sw)  # Ultralytics caches images with the long side resized to imgsz
    cache = int(images * sh * sw * 3 * r * r)
    scale = model_scale(model)
    act = VRAM_BYTES_PER_PIXEL[scale] * batch * H * W * (1.0 if amp else 1.8)
    vram = int(act + _PARAMS[scale] * 16 + 0.6e9)  # weights+grads+optimizer (fp32) + CUDA context
    return Budget(frame, int(sainet), int(ultra), cache, vram)


# ---------------------------------------------------------------------------------------------- the memory plan


def describe_source(text: str) -> tuple[int, tuple[int, int], int] | None:
    """``'117000@1440x808:180KB'`` -> (images, (w, h), jpeg bytes); None when `text` is not a description."""
    m = re.fullmatch(r"(\d+)@([^:]+)(?::(.+))?", text.strip())
    if not m:
        return None
    try:
        w, h = parse_wxh(m.group(2))
        per = parse_bytes(m.group(3)) if m.group(3) else int(w * h * 0.15)  # ~0.15 B/px: a q90 photo
    except ValueError as e:
        raise SettingsError(f"{text!r}: {e} (expected N@WIDTHxHEIGHT[:avgKB], e.g. 117000@1440x808:180KB)",
                            "--source") from None
    n = int(m.group(1))
    if n < 1:
        raise SettingsError(f"{text!r}: the image count must be positive", "--source")
    return n, (w, h), n * per


def estimate_source(source: str | None, store: str | os.PathLike[str] | None, imgsz: tuple[int, int],
                    layout: str | None = None) -> tuple[StoreEstimate, tuple[int, int] | None]:
    """Bytes of a store made from `source` (a dataset or an ``N@WxH[:avgKB]`` description) or of `store`.

    Returns the estimate and the largest source frame (h, w), when known.
    """
    from cache_tools.pack import plan_pack
    from cache_tools.store import open_store
    from sainet.core.datasets import open_dataset

    if (source is None) == (store is None):
        raise SettingsError("give one of --source or --store")
    if store is not None:
        with open_store(store) as s:
            jpeg = int(s.index.records["length"].sum()) if s.mode == "jpeg" else 0
            est = estimate_store(len(s), len(s.index.boxes), jpeg, len(s.index.strings), imgsz)
            if not len(s):
                return est, None
            return est, (int(s.index.records["orig_h"].max()), int(s.index.records["orig_w"].max()))
    desc = describe_source(str(source))
    if desc is not None:
        n, (w, h), jpeg = desc
        return estimate_store(n, 3 * n, jpeg, 64 * n, imgsz), (h, w)
    ds = open_dataset(source, layout)
    first: list[tuple[int, int]] = []

    def sized(samples: Any) -> Any:  # streams: no sample (nor its pixels) is kept
        for s in samples:
            if not first:
                first.append(s.original_size())
            yield s

    est = plan_pack(sized(ds.samples()), imgsz)
    if not first:
        return est, None
    w, h = first[0]
    return est, (h, w)


@dataclass
class MemoryPlan:
    """What `sainet plan` prints: one row per memory item with its verdicts, and the advice."""

    profile: Profile
    images: int
    imgsz: tuple[int, int]
    batch: int
    model: str
    rows: list[dict[str, Any]]
    vram_estimate: int
    vram: str
    recommendation: str
    target: dict[str, Any] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "images": self.images, "imgsz": list(self.imgsz), "batch": self.batch,
                "model": self.model, "rows": self.rows, "vram_estimate": self.vram_estimate, "vram": self.vram,
                "recommendation": self.recommendation, "target": self.target}


def _verdict(need: float, have: float, where: str) -> str:
    if need <= have:
        return f"fits ({human_bytes(need)} of {human_bytes(have)} {where})"
    return f"does not fit ({human_bytes(need)} > {human_bytes(have)} {where})"


def _rows(est: StoreEstimate, bud: Budget, prof: Profile, imgsz: tuple[int, int]) -> list[dict[str, Any]]:
    ram, shm = prof.ram_gb * 1e9, prof.shm_gb * 1e9
    ranks = max(1, prof.gpus)
    rows = []
    for m in ("jpeg", "raw"):
        need = est.total(m, "shards")
        rows.append({"item": f"store {m}" + (f" at {format_imgsz(imgsz)}" if m == "raw" else ""), "bytes": need,
                     "host RAM (page cache)": _verdict(need, ram, "RAM"),
                     "/dev/shm": _verdict(need, shm, "shm") if shm else "no /dev/shm in this profile"})
    for item, per_rank in ((f"sainet loader buffers x {ranks} rank(s)", bud.sainet_loader_bytes),
                           (f"Ultralytics workers ({default_threads(cores=prof.cores, ranks=1)}/rank) x {ranks}", bud.ultralytics_loader_bytes),
                           (f"Ultralytics cache=ram x {ranks} rank(s)", bud.ultralytics_ram_cache_bytes)):
        rows.append({"item": item, "bytes": per_rank * ranks, "host RAM (page cache)": _verdict(per_rank * ranks, ram, "RAM"),
                     "/dev/shm": "-"})
    return rows


def _loader_for(prof: Profile, container: str) -> str:
    """The profile's loader when it can read `container`, else the zero-copy one that does."""
    from loaders.backends import get_backend, kind_for_container

    loader = prof.recommended["loader"]
    needs = get_backend(loader).container
    return loader if needs in (None, container) and get_backend(loader).reads == "store" else kind_for_container(container)


def _advice(est: StoreEstimate, prof: Profile) -> str:
    ram, shm = prof.ram_gb * 1e9, prof.shm_gb * 1e9
    jpeg_need, raw_need = est.total("jpeg", "shards"), est.total("raw", "shards")
    if shm and jpeg_need <= shm and jpeg_need <= ram:
        advice = f"pack --mode jpeg into /dev/shm (shards) and train with --loader {_loader_for(prof, 'shards')}"
    elif jpeg_need <= ram:
        advice = ("pack --mode jpeg as LMDB on local disk (the page cache holds it) and train with "
                  f"--loader {_loader_for(prof, 'lmdb')}")
    else:
        advice = "the jpeg store exceeds RAM: pack LMDB on fast local disk and expect cold reads"
    if raw_need <= (shm or ram) and raw_need <= ram:
        advice += "; raw also fits and skips decoding"
    return advice


def _target(est: StoreEstimate, to: Path, free: int | None) -> dict[str, Any]:
    fs = fs_info(to.parent, free=free)
    target: dict[str, Any] = {"path": str(to), "fstype": fs.fstype, "free": fs.free, "usable": fs.usable, "verdicts": {}}
    for m in ("jpeg", "raw"):
        try:
            check_fits(est, m, "shards" if fs.in_memory else "lmdb", fs)
            target["verdicts"][m] = "fits"
        except CapacityError as e:
            target["verdicts"][m] = str(e)
    return target


def plan_memory(est: StoreEstimate, profile: Profile, imgsz: tuple[int, int], *, batch: int | None = None,
                model: str = "yolov8s.yaml", source_hw: tuple[int, int] | None = None, to: Path | None = None,
                assume_free: int | None = None) -> MemoryPlan:
    """The memory budget of a store and a training run against `profile`, and what fits."""
    rec = profile.recommended
    b = batch or int(rec["batch"])
    bud = estimate_budget(images=est.images, imgsz=imgsz, batch=b, threads=int(rec["threads"]),
                          prefetch=int(rec["prefetch"]), workers=default_threads(cores=profile.cores, ranks=1), model=model, source_hw=source_hw)
    vram = profile.vram_gb * 1e9
    vram_line = _verdict(bud.vram_bytes, vram, "VRAM") if vram else "no GPU in this profile"
    return MemoryPlan(profile, est.images, imgsz, b, model, _rows(est, bud, profile, imgsz), bud.vram_bytes, vram_line,
                      _advice(est, profile), _target(est, to, assume_free) if to is not None else None)
