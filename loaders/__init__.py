"""Loaders: disk, ram, shm, lmdb and DALI behind one contract (Ultralytics' detection batch).

    >>> from loaders import build_loader
    >>> loader = build_loader("/dev/shm/fasdd", "shm", batch_size=16, imgsz="1440x808")
    >>> for batch in loader: batch["img"].shape   # (16, 3, 832, 1440) uint8
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any

from loaders.augment.hyp import Hyp
from loaders.loader import LoaderDataset, SainetLoader
from loaders.sampler import ShardedSampler
from loaders.sources import DiskSource, RamSource, StoreSource
from sainet.errors import StoreFormatError
from sainet.geometry import parse_imgsz

__all__ = ["LoaderKind", "Hyp", "LoaderDataset", "SainetLoader", "ShardedSampler", "build_loader"]


class LoaderKind(str, enum.Enum):
    DISK = "disk"  # JPEG files of the source dataset (Ultralytics without cache)
    RAM = "ram"  # a store copied into process memory (Ultralytics cache=ram)
    SHM = "shm"  # shm shards, zero-copy
    LMDB = "lmdb"  # LMDB, zero-copy
    DALI = "dali"  # NVIDIA DALI decode (mixed on GPU, cpu otherwise) from a store


def build_loader(
    data: str | os.PathLike[str],
    kind: str | LoaderKind,
    *,
    batch_size: int,
    imgsz: int | str | tuple[int, int],
    split: str | None = "train",
    augment: bool = True,
    hyp: Hyp | dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    device: str | None = None,
    threads: int | None = None,
    prefetch: int = 2,
    on_error: str = "raise",
    shuffle: bool | None = None,
    layout: str | None = None,
    verify: bool | None = None,
    epochs: int | None = None,
) -> SainetLoader:
    """Build a loader over one split of `data` (a store; for ``disk`` a dataset folder or data.yaml).

    `imgsz`: int (square), (h, w) tuple, or ``"WxH"`` string; padded up to stride 32.
    `on_error`: ``"raise"`` a typed error naming the record, or ``"skip"`` it (logged and counted).
    `verify`: check each payload's CRC as it is read. Default: on for jpeg stores (cheap next to
    decoding), off for raw stores (there the CRC would cost more than the copy; `sainet verify`
    checks them offline).
    `epochs`: when given, mosaic and mixup switch off by themselves for the last ``hyp.close_mosaic``
    epochs (Ultralytics' trainer instead calls ``loader.dataset.close_mosaic()``).
    """
    kind = LoaderKind(kind)
    shape = parse_imgsz(imgsz)
    hyp = hyp if isinstance(hyp, Hyp) else Hyp.from_dict(hyp)
    threads = threads or min(8, os.cpu_count() or 2)
    common = dict(batch_size=batch_size, imgsz=shape, augment=augment, hyp=hyp, rank=rank, world_size=world_size,
                  seed=seed, threads=threads, prefetch=prefetch, on_error=on_error, shuffle=shuffle, epochs=epochs)
    if kind is LoaderKind.DISK:
        return SainetLoader(DiskSource(Path(data), split, layout), **common)
    from cache_tools.store import open_store

    store = open_store(data)
    if verify is None:
        verify = store.mode == "jpeg"
    if kind is LoaderKind.SHM and store.container != "shards":
        raise StoreFormatError(f"{data} is an {store.container} store; the shm loader reads shard stores (use --loader lmdb)")
    if kind is LoaderKind.LMDB and store.container != "lmdb":
        raise StoreFormatError(f"{data} is a {store.container} store; the lmdb loader reads LMDB stores (use --loader shm)")
    if kind is LoaderKind.RAM:
        return SainetLoader(RamSource(store, split, verify=verify), **common)
    if kind is LoaderKind.DALI:
        from loaders.dali import DaliLoader

        return DaliLoader(StoreSource(store, split, verify=verify), device=device, **common)
    return SainetLoader(StoreSource(store, split, verify=verify), **common)
