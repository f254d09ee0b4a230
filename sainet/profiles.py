"""Hardware profiles (configs/profiles/*.yaml), host detection and the nearest profile."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import yaml

import configs
from sainet.core.errors import SettingsError

__all__ = ["Profile", "HostInfo", "load_profiles", "get_profile", "detect_host", "nearest_profile", "choose_profile",
           "profile_names", "load_profile_file", "host_profile", "PROFILE_KEYS"]

GB = 1e9


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    gpus: int
    vram_gb: float
    ram_gb: float
    cores: int
    shm_gb: float
    recommended: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, source: str = "<profile>") -> Profile:
        """A profile from its yaml mapping; a missing, unknown or invalid key raises `SettingsError`
        naming `source` (the file) and the key."""
        return _validated(d, source)


#: The documented shape of a profile file (configs/profiles/*.yaml; README "Hardware profiles"):
#: key -> (type, smallest value, required). `recommended` holds `_RECOMMENDED_KEYS`.
PROFILE_KEYS: dict[str, tuple[type, float, bool]] = {
    "name": (str, 0, False), "description": (str, 0, False), "gpus": (int, 0, True), "vram_gb": (float, 0, True),
    "ram_gb": (float, 0.001, True), "cores": (int, 1, True), "shm_gb": (float, 0, False),
}
_RECOMMENDED_KEYS: dict[str, tuple[type, float]] = {
    "loader": (str, 0), "store": (str, 0), "mode": (str, 0), "batch": (int, 1), "threads": (int, 1), "prefetch": (int, 1),
}


def _value(source: str, key: str, v: Any, kind: type, least: float) -> Any:
    if kind is str:
        if not isinstance(v, str) or not v:
            raise SettingsError(f"{key}: expected text, got {v!r}", source)
        return v
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or (kind is int and v != int(v)):
        raise SettingsError(f"{key}: expected {'a whole number' if kind is int else 'a number'}, got {v!r}", source)
    if v < least:
        raise SettingsError(f"{key}: must be at least {least:g}, got {v!r}", source)
    return kind(v)


def _choice(source: str, key: str, v: str, choices: Any) -> None:
    if v not in choices:
        raise SettingsError(f"{key}: {v!r} is not one of {', '.join(choices)}", source)


def _validated(d: Any, source: str) -> Profile:
    from cache_tools.format import CONTAINERS, MODES
    from loaders.backends import BACKENDS

    if not isinstance(d, dict):
        raise SettingsError(f"expected a mapping of {', '.join(PROFILE_KEYS)}, recommended; got {type(d).__name__}", source)
    unknown = sorted(set(d) - set(PROFILE_KEYS) - {"recommended"})
    if unknown:
        raise SettingsError(f"unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(PROFILE_KEYS)}, recommended)", source)
    vals = {}
    for key, (kind, least, required) in PROFILE_KEYS.items():
        if key not in d:
            if required:
                raise SettingsError(f"{key}: missing", source)
            continue
        vals[key] = _value(source, key, d[key], kind, least)
    rec = d.get("recommended")
    if not isinstance(rec, dict):
        raise SettingsError(f"recommended: expected a mapping of {', '.join(_RECOMMENDED_KEYS)}", source)
    unknown = sorted(set(rec) - set(_RECOMMENDED_KEYS))
    if unknown:
        raise SettingsError(f"recommended: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(_RECOMMENDED_KEYS)})", source)
    out: dict[str, Any] = {}
    for key, (kind, least) in _RECOMMENDED_KEYS.items():
        if key not in rec:
            raise SettingsError(f"recommended.{key}: missing", source)
        out[key] = _value(source, f"recommended.{key}", rec[key], kind, least)
    _choice(source, "recommended.loader", out["loader"], [n for n, b in BACKENDS.items() if b.reads == "store"])
    _choice(source, "recommended.store", out["store"], CONTAINERS)
    _choice(source, "recommended.mode", out["mode"], MODES)
    name = vals.get("name") or Path(source).stem
    return Profile(name, vals.get("description", ""), vals["gpus"], vals["vram_gb"], vals["ram_gb"], vals["cores"],
                   vals.get("shm_gb", 0.0), out)


def load_profile_file(path: str | os.PathLike[str]) -> Profile:
    """A profile of one's own hardware from a yaml file of the documented shape (`PROFILE_KEYS`)."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as e:
        raise SettingsError(f"cannot read the profile file: {e.strerror}", str(p)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SettingsError(f"not valid yaml: {e}", str(p)) from None
    return Profile.from_dict(doc, str(p))


def load_profiles() -> dict[str, Profile]:
    return {n: Profile.from_dict(configs.load("profiles", n), str(configs.config_dir("profiles") / f"{n}.yaml"))
            for n in configs.names("profiles")}


def profile_names() -> list[str]:
    """Names of the shipped profiles (configs/profiles/*.yaml), without reading them."""
    return list(configs.names("profiles"))


def get_profile(name: str) -> Profile:
    profiles = load_profiles()
    if name not in profiles:
        raise SettingsError(f"no profile {name!r} (have: auto, {', '.join(profiles)})", "--profile")
    return profiles[name]


def choose_profile(name: str = "auto", host: HostInfo | None = None) -> Profile:
    """The one profile choice of every command: ``auto`` is the nearest to this host, a path ending
    in .yaml/.yml a profile file of one's own, else a shipped profile by name."""
    if name == "auto":
        return nearest_profile(host or detect_host())[0]
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return load_profile_file(name)
    return get_profile(name)


def host_profile(host: HostInfo, base: Profile | None = None) -> Profile:
    """This host as measured (GPUs, VRAM, RAM, cores, /dev/shm), with the recommendations of the
    nearest profile (`base`): what `sainet profile` and `sainet plan --profile auto` both plan for."""
    base = base or nearest_profile(host)[0]
    return replace(base, name=f"this host (nearest: {base.name})", gpus=host.gpus, vram_gb=host.vram_gb,
                   ram_gb=host.ram_gb, cores=host.cores, shm_gb=host.shm_gb)


@dataclass(frozen=True)
class HostInfo:
    gpus: int
    gpu_names: list[str]
    vram_gb: float  # per GPU (the smallest)
    ram_gb: float
    ram_available_gb: float
    cores: int
    shm_gb: float
    shm_free_gb: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_host() -> HostInfo:
    names, vram = [], 0.0
    try:
        import torch

        if torch.cuda.is_available():
            props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
            names = [p.name for p in props]
            vram = min(p.total_memory for p in props) / GB
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no GPU" here
        names = []
    vm = psutil.virtual_memory()
    shm_total = shm_free = 0.0
    if os.path.isdir("/dev/shm"):
        u = shutil.disk_usage("/dev/shm")
        shm_total, shm_free = u.total / GB, u.free / GB
    return HostInfo(len(names), names, vram, vm.total / GB, vm.available / GB, os.cpu_count() or 1, shm_total, shm_free)


def _log_ratio(a: float, b: float) -> float:
    return abs(math.log((a + 1) / (b + 1)))


def nearest_profile(host: HostInfo, profiles: dict[str, Profile] | None = None) -> tuple[Profile, float]:
    """The profile closest to `host`: GPU count and VRAM dominate, then RAM, cores and /dev/shm."""
    profiles = profiles or load_profiles()

    def distance(p: Profile) -> float:
        if (p.gpus == 0) != (host.gpus == 0):
            return 100.0
        return (3 * abs(p.gpus - host.gpus) + 2 * _log_ratio(p.vram_gb, host.vram_gb) + _log_ratio(p.ram_gb, host.ram_gb)
                + 0.5 * _log_ratio(p.cores, host.cores) + 0.25 * _log_ratio(p.shm_gb, host.shm_gb))

    best = min(profiles.values(), key=distance)
    return best, distance(best)
