"""Settings resolved once, at the edge, and passed down as one typed object.

The CLI (or a Python caller) builds a `TrainSettings`; the training shape inside it is already an
``(h, w)`` tuple, stride-padded (``"1440x808"`` -> ``(832, 1440)``), so nothing downstream parses
text again. The same module holds the other facts every command needs once: the default thread
count (``sainet.core.parallel.default_threads``, re-exported here), byte sizes written as text (``125GB``)
and device strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from loaders.backends import BACKENDS
from loaders.decode import check_resample
from sainet.core.errors import SettingsError
from sainet.core.geometry import Imgsz, parse_imgsz
from sainet.core.parallel import default_threads

__all__ = [
    "LOADERS",
    "BENCH_NAMES",
    "DEFAULT_IMGSZ",
    "TrainSettings",
    "default_threads",
    "parse_bytes",
    "parse_device",
]

#: Loaders `sainet train` accepts: the backend table (loaders.backends.BACKENDS), Ultralytics' own loader included.
LOADERS = tuple(BACKENDS)
#: every name `sainet bench-loader` measures: the loaders, Ultralytics' RAM cache (peer), raw-store variants
BENCH_NAMES = (*LOADERS, "ultralytics-ram", "raw-shm", "raw-lmdb", "raw-shm-mp", "raw-lmdb-mp")
#: Training shape when none is given and none is restored from a run: Ultralytics' default.
DEFAULT_IMGSZ = Imgsz(640, 640)

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text: str) -> int:
    """``'125GB'``, ``'1GiB'``, ``'4096'`` -> bytes (decimal and binary units); ValueError otherwise."""
    t = str(text).strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    try:
        value = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError(f"{text!r}: expected a size like 125GB or 1GiB") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{text!r}: a size must be positive")
    return int(value)


def parse_device(text: str) -> str:
    """``cpu``, ``0`` or ``0,1`` (CUDA indices) -> the same text, normalized; ValueError otherwise."""
    t = str(text).strip().lower().replace(" ", "")
    if t == "cpu":
        return t
    parts = t.split(",")
    if not t or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"{text!r}: expected cpu, a GPU index like 0, or a list like 0,1")
    return ",".join(parts)


def _positive(name: str, value: int | None, option: str) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise SettingsError(f"{name} must be a positive integer, got {value!r}", option)


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run needs, validated once.

    ``None`` means "not given": the hardware profile (batch, loader, threads, prefetch), the stage
    config, Ultralytics' defaults or, with `resume`, the run being resumed fill it in.
    `imgsz` accepts what users write (``640``, ``"1440x808"``) and is stored as ``(h, w)``.
    """

    data: str = ""
    loader: str | None = None
    model: str = "yolov8s.yaml"
    weights: str | None = None
    imgsz: tuple[int, int] | None = None  # (H, W), stride-padded; None: DEFAULT_IMGSZ or the resumed run's
    epochs: int | None = None
    batch: int | None = None
    device: str | None = None  # None: "0" with CUDA, else "cpu"
    profile: str = "auto"
    config: str | None = None  # a yaml of Ultralytics arguments
    stage: int | None = None  # 1 or 2: configs/train/stage{N}.yaml
    sets: dict[str, Any] = field(default_factory=dict)  # --set key=value (win over everything)
    project: str = "runs/sainet"
    name: str | None = None
    threads: int | None = None
    prefetch: int | None = None
    resume: str | None = None  # a run's weights/last.pt
    layout: str | None = None
    resample: str = "fast"  # how a sainet loader resamples train images (`loaders.decode.RESAMPLE`)
    callbacks: dict[str, list[Any]] = field(default_factory=dict, compare=False)  # Ultralytics event -> functions
    checkpoint_every: int = 0  # > 0: weights/mid_epoch.pt every N batches (resume continues mid-epoch)

    def __post_init__(self) -> None:
        if self.imgsz is not None:  # text or a plain tuple from a Python caller; an Imgsz (the CLI's) stays as it is
            try:
                object.__setattr__(self, "imgsz", parse_imgsz(self.imgsz))
            except (TypeError, ValueError) as e:
                raise SettingsError(str(e), "--imgsz") from None
        if self.loader is not None and self.loader not in LOADERS:
            raise SettingsError(f"unknown loader {self.loader!r} (choose from {', '.join(LOADERS)})", "--loader")
        try:
            check_resample(self.resample)
        except ValueError as e:
            raise SettingsError(str(e), "--resample") from None
        if self.stage is not None and self.stage not in (1, 2):
            raise SettingsError(f"stage must be 1 or 2, got {self.stage!r}", "--stage")
        for name in ("epochs", "batch", "threads", "prefetch"):
            _positive(name, getattr(self, name), f"--{name}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise SettingsError(f"must be 0 (off) or a positive number of batches, got {self.checkpoint_every!r}",
                                "--checkpoint-every")
        if self.device is not None:
            try:
                object.__setattr__(self, "device", parse_device(self.device))
            except ValueError as e:
                raise SettingsError(str(e), "--device") from None

    @property
    def shape(self) -> tuple[int, int]:
        """The training shape (H, W): the one given, else Ultralytics' default."""
        return self.imgsz or DEFAULT_IMGSZ

    def replace(self, **changes: Any) -> TrainSettings:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (callbacks left out; imgsz as [h, w])."""
        d = asdict(replace(self, callbacks={}))
        d.pop("callbacks")
        d["imgsz"] = list(self.imgsz) if self.imgsz else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        known = {f.name for f in fields(cls)} - {"callbacks"}
        unknown = set(d) - known
        if unknown:
            raise SettingsError(f"unknown settings {sorted(unknown)}")
        d = dict(d)
        if d.get("imgsz") is not None:
            d["imgsz"] = tuple(d["imgsz"])
        return cls(**d)
