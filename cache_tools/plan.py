"""Capacity planning: how many bytes a store takes in each mode, and whether it fits the target.

Bytes are exact for jpeg payloads (the encoded sizes), computed for raw frames (H x W x 3 each),
plus the index and the container's overhead (LMDB stores large values in whole 4 KiB overflow
pages). A tmpfs (/dev/shm) target is checked against its free space *and* available RAM, because
tmpfs pages are RAM.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from cache_tools.format import BOX_DTYPE, HEADER_DTYPE, RECORD_DTYPE
from sainet.core.errors import CapacityError
from sainet.core.geometry import format_imgsz

__all__ = ["FsInfo", "StoreEstimate", "fs_info", "estimate_store", "check_fits", "human_bytes"]

_LMDB_PAGE = 4096
#: Headroom kept free on the target: a full tmpfs starves the whole host.
_MARGIN_FRACTION = 0.02  # of the filesystem's size, at most _MARGIN_BYTES
_MARGIN_BYTES = 64 << 20
_MEMORY_FS = {"tmpfs", "ramfs", "shm"}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


@dataclass(frozen=True)
class FsInfo:
    path: str  # the existing folder the numbers describe
    mountpoint: str
    fstype: str
    free: int
    total: int
    mem_available: int

    @property
    def in_memory(self) -> bool:
        return self.fstype in _MEMORY_FS

    @property
    def usable(self) -> int:
        """Bytes a store may take here: free space (and available RAM for tmpfs) less a margin."""
        room = min(self.free, self.mem_available) if self.in_memory else self.free
        return max(0, int(room - min(_MARGIN_BYTES, _MARGIN_FRACTION * self.total)))


def _mount_of(path: str) -> tuple[str, str]:
    best = ("/", "unknown")
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best[0]):
            best = (mp, part.fstype)
    return best


def fs_info(target: str | os.PathLike[str], *, free: int | None = None, mem_available: int | None = None) -> FsInfo:
    """Describe the filesystem that `target` (which need not exist yet) would be written to.

    `free` / `mem_available` replace the measured figures (what-if planning and tests).
    """
    p = Path(os.path.abspath(target))
    while not p.exists():
        p = p.parent
    real = os.path.realpath(p)
    usage = shutil.disk_usage(real)
    mountpoint, fstype = _mount_of(real)
    return FsInfo(
        path=real, mountpoint=mountpoint, fstype=fstype,
        # An assumed free figure describes an empty filesystem of that size.
        free=usage.free if free is None else int(free), total=usage.total if free is None else int(free),
        mem_available=psutil.virtual_memory().available if mem_available is None else int(mem_available),
    )


@dataclass(frozen=True)
class StoreEstimate:
    images: int
    boxes: int
    jpeg_payload: int  # sum of encoded sizes
    raw_shape: tuple[int, int] | None  # (H, W) of raw frames
    index_bytes: int

    def payload(self, mode: str) -> int:
        if mode == "jpeg":
            return self.jpeg_payload
        if self.raw_shape is None:
            raise ValueError("raw estimate needs an imgsz")
        h, w = self.raw_shape
        return self.images * h * w * 3

    def total(self, mode: str, container: str) -> int:
        payload = self.payload(mode)
        if container == "lmdb":
            # Each value sits in whole overflow pages, plus a page-header and B-tree share per record.
            per = self.payload(mode) / max(1, self.images)
            pages = -(-int(per + 16) // _LMDB_PAGE)
            payload = self.images * (pages * _LMDB_PAGE + 64) + 8 * _LMDB_PAGE
        return payload + self.index_bytes


def estimate_store(images: int, boxes: int, jpeg_payload: int, name_bytes: int, raw_shape: tuple[int, int] | None) -> StoreEstimate:
    index = HEADER_DTYPE.itemsize + images * RECORD_DTYPE.itemsize + boxes * BOX_DTYPE.itemsize + name_bytes + 4096
    return StoreEstimate(images, boxes, jpeg_payload, raw_shape, index)


def check_fits(est: StoreEstimate, mode: str, container: str, fs: FsInfo) -> None:
    """Raise `CapacityError` with the numbers (and the alternative that fits) when `mode` does not fit."""
    need = est.total(mode, container)
    if need <= fs.usable:
        return
    where = f"{fs.mountpoint} ({fs.fstype})"
    have = f"{where} has {human_bytes(fs.free)} free"
    if fs.in_memory:
        have += f" and the host {human_bytes(fs.mem_available)} RAM available"
    what = f"raw at {format_imgsz(est.raw_shape)}" if mode == "raw" and est.raw_shape else mode
    msg = f"{what} needs {human_bytes(need)}; {have}"
    if mode == "raw":
        alt = est.total("jpeg", container)
        msg += (f"; jpeg needs {human_bytes(alt)} and fits: use --mode jpeg" if alt <= fs.usable
                else f"; jpeg needs {human_bytes(alt)} and does not fit either")
    raise CapacityError(msg)
