"""Hardware profiles (configs/profiles/*.yaml), host detection and the nearest profile."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

import configs
from sainet.core.errors import SettingsError

__all__ = ["Profile", "HostInfo", "load_profiles", "get_profile", "detect_host", "nearest_profile", "choose_profile",
           "profile_names"]

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
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        rec = dict(d.get("recommended") or {})
        for key in ("loader", "store", "mode", "batch", "threads", "prefetch"):
            if key not in rec:
                raise ValueError(f"profile {d.get('name')!r}: recommended.{key} missing")
        return cls(str(d["name"]), str(d.get("description", "")), int(d["gpus"]), float(d["vram_gb"]), float(d["ram_gb"]),
                   int(d["cores"]), float(d.get("shm_gb", 0)), rec)


def load_profiles() -> dict[str, Profile]:
    return {n: Profile.from_dict(configs.load("profiles", n)) for n in configs.names("profiles")}


def profile_names() -> list[str]:
    """Names of the shipped profiles (configs/profiles/*.yaml), without reading them."""
    return list(configs.names("profiles"))


def get_profile(name: str) -> Profile:
    profiles = load_profiles()
    if name not in profiles:
        raise SettingsError(f"no profile {name!r} (have: auto, {', '.join(profiles)})", "--profile")
    return profiles[name]


def choose_profile(name: str = "auto", host: HostInfo | None = None) -> Profile:
    """The one profile choice of every command: ``auto`` is the nearest to this host, else by name."""
    if name == "auto":
        return nearest_profile(host or detect_host())[0]
    return get_profile(name)


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
