"""The backends a bench measures, each opened as an endless iterator of images per batch plus a
close function: sainet's loaders (one table, `loaders.backends`) and Ultralytics' own loader over a
private link tree."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from loaders.backends import BACKENDS
from loaders.stall import settle
from sainet.bench.results import BENCH_NAMES, BenchConfig


def _loop(make: Callable[[], Iterator[dict]]) -> Iterator[int]:
    """Endless batches from a loader factory (one epoch after another): images per batch. A batch
    on the GPU is counted once the consumer's stream has caught up with it (its render done), so a
    GPU-bound loader cannot look faster than its kernels (loaders/stall.py)."""
    while True:
        got = False
        for b in make():
            got = True
            settle(b.get("img"))
            yield len(b["im_file"]) if "im_file" in b else int(b["img"].shape[0])
        if not got:
            return

def _sainet_backend(kind: str, cfg: BenchConfig, store: Path | None) -> tuple[Iterator[int], Callable[[], None]]:
    from loaders import build_loader

    data = cfg.source if BACKENDS[kind].reads == "dataset" else store
    loader = build_loader(data, kind, batch_size=cfg.batch, imgsz=cfg.imgsz, split=cfg.split, augment=cfg.augment,
                          hyp=cfg.hyp, threads=cfg.threads, prefetch=cfg.prefetch, device=None)
    return _loop(lambda: iter(loader)), loader.close

def _ultralytics_backend(cfg: BenchConfig, cache: bool, img_dir: Path) -> tuple[Iterator[int], Callable[[], None]]:
    """Ultralytics' YOLODataset + InfiniteDataLoader over `img_dir` (the private link tree)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader
    from ultralytics.data.dataset import YOLODataset

    from sainet.core.datasets import open_dataset

    ds = open_dataset(cfg.source)
    size = max(cfg.imgsz)
    hyp = get_cfg(overrides={"imgsz": size, "cache": "ram" if cache else False, **cfg.hyp})
    if not cfg.augment:
        hyp.mosaic = 0.0
    dataset = YOLODataset(img_path=str(img_dir), imgsz=size, augment=cfg.augment, rect=False, cache="ram" if cache else False,
                          data={"names": dict(enumerate(ds.names)), "channels": 3}, batch_size=cfg.batch, stride=32,
                          single_cls=False, task="detect", hyp=hyp, prefix="")
    loader = build_dataloader(dataset, batch=cfg.batch, workers=cfg.workers, shuffle=True, rank=-1, pin_memory=False, device="cpu")

    def close() -> None:
        it = getattr(loader, "iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    return _loop(lambda: iter(loader)), close

def _yolo_split_dir(source: Path, split: str) -> Path:
    for cand in (source / "images" / split, source / split / "images"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"{source}: the ultralytics backend needs a YOLO folder with images/{split}")

def link_tree(source: Path, split: str, root: Path) -> Path:
    """A private YOLO tree of symlinks to the split's images and labels under `root`; returns its
    image folder. Ultralytics writes its labels cache beside the labels it reads, so it must never
    read them in the user's source folder."""
    from ultralytics.data.utils import IMG_FORMATS, img2label_paths

    img_dir = _yolo_split_dir(source, split)
    images = sorted(p for p in img_dir.rglob("*") if p.is_file() and p.suffix[1:].lower() in IMG_FORMATS)
    out_img, out_lab = root / "images" / split, root / "labels" / split
    for p, lab in zip(images, img2label_paths([str(p) for p in images]), strict=True):
        rel = p.relative_to(img_dir)
        (out_img / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_img / rel).symlink_to(p.resolve())
        if Path(lab).is_file():
            target = (out_lab / rel).with_suffix(".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path(lab).resolve())
    return out_img

def jpeg_store(cfg: BenchConfig) -> Path | None:
    return cfg.stores.get("shards") or cfg.stores.get("lmdb")

def open_backend(name: str, cfg: BenchConfig, ultralytics_dir: Callable[[], Path]) -> tuple[Iterator[int], Callable[[], None]]:
    """Build backend `name`; FileNotFoundError / ValueError say why it cannot run here."""
    b = BACKENDS.get(name)  # what each loader reads: the loaders' one table
    if name == "ultralytics-ram" or (b is not None and b.external):  # Ultralytics' own loader (and its RAM cache)
        if cfg.source is None:
            raise FileNotFoundError("the ultralytics backend needs the source dataset")
        return _ultralytics_backend(cfg, name == "ultralytics-ram", ultralytics_dir())
    if b is not None:
        store = None if b.reads == "dataset" else cfg.stores.get(b.container) if b.container else jpeg_store(cfg)
        if b.reads == "store" and store is None:
            raise FileNotFoundError(f"no store for the {name} backend")
        if b.reads == "dataset" and cfg.source is None:
            raise FileNotFoundError(f"the {name} backend needs the source dataset")
        return _sainet_backend(name, cfg, store)
    if name.startswith("raw-"):
        kind = name.removeprefix("raw-")
        if kind not in BACKENDS or BACKENDS[kind].reads != "store":
            raise ValueError(f"unknown backend {name!r} (known: {', '.join(BENCH_NAMES)})")
        key = "raw-lmdb" if BACKENDS[kind].container == "lmdb" else "raw"  # raw-lmdb(-mp): the raw LMDB store
        if key not in cfg.stores:
            raise FileNotFoundError(f"no raw {kind} store (pass --raw, or a raw store)")
        return _sainet_backend(kind, cfg, cfg.stores[key])
    raise ValueError(f"unknown backend {name!r} (known: {', '.join(BENCH_NAMES)})")
