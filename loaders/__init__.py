"""Loaders: disk, ram, shm, lmdb, shm-mp, lmdb-mp (assembler processes) and DALI behind one contract (Ultralytics' detection batch).

    >>> from loaders import build_loader
    >>> loader = build_loader("/dev/shm/fasdd", "shm", batch_size=16, imgsz="1440x808")
    >>> for batch in loader: batch["img"].shape   # (16, 3, 832, 1440) uint8

The stages and their contracts: loaders/README.md. The backend table: `loaders.backends.BACKENDS`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loaders.augment.hyp import Hyp
from loaders.backends import (
    BACKENDS,
    Backend,
    LoaderKind,
    check_container,
    default_threads,
    get_backend,
    kind_for_container,
)
from loaders.dataset import LoaderDataset
from loaders.sampler import ShardedSampler
from sainet.core.geometry import parse_imgsz

if TYPE_CHECKING:
    from loaders.loader import SainetLoader

__all__ = ["BACKENDS", "Backend", "Hyp", "LoaderDataset", "LoaderKind", "SainetLoader", "ShardedSampler", "build_loader",
           "check_container", "default_threads", "get_backend", "kind_for_container"]


def __getattr__(name: str) -> Any:
    """`SainetLoader` is imported on first use: it brings torch, which `sainet --help` and the
    library's light users (settings, the backend table) do not need."""
    if name == "SainetLoader":
        from loaders.loader import SainetLoader

        return SainetLoader
    raise AttributeError(f"module 'loaders' has no attribute {name!r}")


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
    partner_batches: int | None = None,
    resample: str = "fast",
    rect: bool = False,
    stride: int = 32,
) -> SainetLoader:
    """Build a loader over one split of `data` (a store; for ``disk`` a dataset folder or data.yaml).

    `imgsz`: int (square), (h, w) tuple, or ``"WxH"`` string; padded up to stride 32 (an `Imgsz`,
    what `TrainSettings` and the CLI hold, is already parsed and taken as it is).
    `threads`: decode threads (default `default_threads()`).
    `on_error`: ``"raise"`` a typed error naming the record, or ``"skip"`` it (logged and counted).
    `verify`: check each payload's CRC as it is read. Default: on for jpeg stores (cheap next to
    decoding), off for raw stores (the CRC would cost more than the copy; `sainet verify` checks them).
    `epochs`: when given, mosaic and mixup switch off by themselves for the last ``hyp.close_mosaic``
    epochs (Ultralytics' trainer instead calls ``loader.dataset.close_mosaic()``).
    `partner_batches`: how many recent batches' decoded samples mosaics may take partners from
    (None: as many as Ultralytics' buffer spans, up to `loader.PARTNER_BYTES` of decoded pixels;
    0: partners from the batch itself; the dali loader keeps the same history).
    `resample`: how train images are resampled (`loaders.decode.RESAMPLE`).
    `rect` (eval, square `imgsz`): Ultralytics' rect val batches (`geometry.rect_val_shape`) at `stride`
    (the model's largest, at least 32: Ultralytics' ``gs``).
    """
    backend = get_backend(kind)
    hyp = hyp if isinstance(hyp, Hyp) else Hyp.from_dict(hyp)
    common = dict(batch_size=batch_size, imgsz=parse_imgsz(imgsz), augment=augment, hyp=hyp, rank=rank,
                  world_size=world_size, seed=seed, threads=threads or default_threads(), prefetch=prefetch,
                  on_error=on_error, shuffle=shuffle, epochs=epochs, partner_batches=partner_batches,
                  resample=resample, rect=rect, stride=stride)
    if backend.reads != "store":  # a dataset folder (disk); Ultralytics' own loader refuses in `build`
        return backend.build(Path(data), split, {"layout": layout}, common)
    from cache_tools.store import open_store

    store = open_store(data)
    try:
        check_container(backend.kind, store.container, data)
    except Exception:
        store.close()
        raise
    options = {"verify": store.mode == "jpeg" if verify is None else verify, "device": device}
    return backend.build(store, split, options, common)
