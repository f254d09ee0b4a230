"""The stores a bench reads, packed once from the source dataset."""

from __future__ import annotations

from pathlib import Path

from cache_tools.store import is_store, open_store
from sainet.core.geometry import format_imgsz


def prepare_stores(source: Path | None, store: Path | None, work: Path, imgsz: tuple[int, int], raw: bool,
                   raw_lmdb: bool = False) -> tuple[dict[str, Path], Path | None]:
    """The stores a bench needs: both jpeg containers (and raw shards / raw LMDB), packed once into `work`."""
    from cache_tools.pack import PackOptions, pack

    stores: dict[str, Path] = {}
    if store is not None:
        with open_store(store) as s:
            key = ("raw" if s.container == "shards" else "raw-lmdb") if s.mode == "raw" else s.container
            stores[key] = Path(store)
            source = source or (Path(s.meta["source"]) if s.meta.get("source") and Path(s.meta["source"]).exists() else None)
    if source is not None:
        work.mkdir(parents=True, exist_ok=True)
        for key, opts in (("shards", PackOptions(container="shards")), ("lmdb", PackOptions(container="lmdb")),
                          ("raw", PackOptions(container="shards", mode="raw", imgsz=imgsz)),
                          ("raw-lmdb", PackOptions(container="lmdb", mode="raw", imgsz=imgsz))):
            if key in stores or (key == "raw" and not raw) or (key == "raw-lmdb" and not raw_lmdb):
                continue
            target = work / f"{key}-{format_imgsz(imgsz) if key.startswith('raw') else 'jpeg'}"
            if not is_store(target):
                pack(source, target, PackOptions(**{**opts.__dict__, "force": True}))
            stores[key] = target
    return stores, source
