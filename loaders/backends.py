"""The backends: name -> what it reads, which store container it needs, and how it is built.

This table is the only place that knows which loader reads which container (and which source
class). `loaders.build_loader`, the benchmark and the trainer all look here:

    >>> from loaders.backends import BACKENDS, kind_for_container
    >>> BACKENDS["shm"].container, BACKENDS["ram"].container, BACKENDS["disk"].reads
    ('shards', None, 'dataset')
    >>> kind_for_container("lmdb")
    'lmdb'
    >>> BACKENDS["ultralytics"].external
    True

Ultralytics' own loader is an entry too (``external``: no factory here; `sainet train --loader
ultralytics` runs Ultralytics' trainer with its own dataloader, `sainet bench-loader` measures it),
so that the trainer, the settings and the benchmark ask this table instead of testing the name.

Adding a backend: a `Source` subclass (or a `SainetLoader` subclass with its own batch builder,
like DALI), a factory below, and one `Backend` entry; the contract test runs it like the others.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loaders.sources import DiskSource, RamSource, Source, StoreSource
from sainet.core.errors import StoreFormatError
from sainet.core.parallel import (
    default_threads,  # the one thread formula (re-exported: loaders.default_threads)
)

if TYPE_CHECKING:
    from cache_tools.store import Store
    from loaders.loader import SainetLoader

__all__ = ["BACKENDS", "Backend", "LoaderKind", "check_container", "default_threads", "get_backend", "kind_for_container",
           "reader_for"]


class LoaderKind(str, enum.Enum):
    DISK = "disk"  # JPEG files of the source dataset (Ultralytics without cache)
    RAM = "ram"  # a store copied into process memory (Ultralytics cache=ram)
    SHM = "shm"  # shm shards, zero-copy
    LMDB = "lmdb"  # LMDB, zero-copy
    SHM_MP = "shm-mp"  # shm shards, batches built by assembler processes (loaders/procs.py)
    LMDB_MP = "lmdb-mp"  # LMDB, batches built by assembler processes
    DALI = "dali"  # NVIDIA DALI decode (mixed on GPU, cpu otherwise) from a store
    ULTRALYTICS = "ultralytics"  # Ultralytics' own dataloader (external: for comparison, built by Ultralytics)


@dataclass(frozen=True)
class Backend:
    """One loader backend. `make(backend, data, split, options, common)`: `data` is the dataset
    folder (``reads == "dataset"``) or the opened `Store`; `options` holds layout / verify /
    device; `common` the `SainetLoader` keyword arguments. An external backend (Ultralytics' own
    loader) has no source and no factory: sainet does not build it."""

    kind: LoaderKind
    reads: str  # "dataset" (a source folder or data.yaml), "store", or "ultralytics" (a dataset or a store, exported)
    container: str | None  # the store container it needs ("shards", "lmdb"); None: any store, or none
    source: type[Source] | None  # where its samples come from (None: external)
    summary: str
    make: Callable[[Backend, Any, str | None, dict, dict], SainetLoader] | None  # None: external

    @property
    def processes(self) -> bool:
        """Builds batches in assembler processes (`loaders.procs`): `threads` counts processes."""
        return self.make is _proc_loader

    @property
    def external(self) -> bool:
        """Built by Ultralytics, not by `loaders.build_loader`."""
        return self.make is None

    def build(self, data: Any, split: str | None, options: dict, common: dict) -> SainetLoader:
        if self.make is None:
            raise ValueError(f"the {self.kind.value} loader is Ultralytics' own: sainet does not build it "
                             f"(sainet loaders: {', '.join(n for n, b in BACKENDS.items() if not b.external)})")
        return self.make(self, data, split, options, common)


def _dataset_loader(b: Backend, data: Path, split: str | None, options: dict, common: dict) -> SainetLoader:
    from loaders.loader import SainetLoader

    return SainetLoader(b.source(data, split, options.get("layout")), **common)


def _store_loader(b: Backend, store: Store, split: str | None, options: dict, common: dict) -> SainetLoader:
    from loaders.loader import SainetLoader

    return SainetLoader(b.source(store, split, verify=options["verify"]), **common)


def _proc_loader(b: Backend, store: Store, split: str | None, options: dict, common: dict) -> SainetLoader:
    from loaders.procs import ProcLoader

    return ProcLoader(b.source(store, split, verify=options["verify"]), split=split, **common)


def _dali_loader(b: Backend, store: Store, split: str | None, options: dict, common: dict) -> SainetLoader:
    from loaders.dali import DaliLoader

    return DaliLoader(b.source(store, split, verify=options["verify"]), device=options.get("device"), **common)


BACKENDS: dict[str, Backend] = {b.kind.value: b for b in (
    Backend(LoaderKind.DISK, "dataset", None, DiskSource, "image files of the source dataset, decoded per sample", _dataset_loader),
    Backend(LoaderKind.RAM, "store", None, RamSource, "a store copied into process memory (like Ultralytics cache=ram)", _store_loader),
    Backend(LoaderKind.SHM, "store", "shards", StoreSource, "shm shards read zero-copy (mmap)", _store_loader),
    Backend(LoaderKind.LMDB, "store", "lmdb", StoreSource, "an LMDB store read zero-copy (mmap)", _store_loader),
    Backend(LoaderKind.SHM_MP, "store", "shards", StoreSource, "shm shards; whole batches built by assembler processes "
            "into shared memory (threads = processes)", _proc_loader),
    Backend(LoaderKind.LMDB_MP, "store", "lmdb", StoreSource, "LMDB; whole batches built by assembler processes "
            "into shared memory (threads = processes)", _proc_loader),
    Backend(LoaderKind.DALI, "store", None, StoreSource, "DALI decode (nvJPEG on a GPU, CPU otherwise) of a jpeg store", _dali_loader),
    Backend(LoaderKind.ULTRALYTICS, "ultralytics", None, None, "Ultralytics' own dataloader (for comparison)", None),
)}


def get_backend(kind: str | LoaderKind) -> Backend:
    """The backend called `kind`; ValueError naming the known ones otherwise."""
    name = kind.value if isinstance(kind, LoaderKind) else str(kind)
    if name not in BACKENDS:
        raise ValueError(f"unknown loader {name!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[name]


def kind_for_container(container: str) -> str:
    """The zero-copy backend that reads a store of this container ("shards" -> "shm")."""
    for name, b in BACKENDS.items():
        if b.container == container:
            return name
    raise StoreFormatError(f"no loader reads {container!r} stores")


def _reads_container(b: Backend, container: str) -> bool:
    return b.reads != "store" or b.container in (None, container)


def reader_for(kind: str | LoaderKind, container: str, where: str | os.PathLike[str], *, given: bool = True) -> str:
    """The backend that reads the `container` store at `where`: `kind` when it can; otherwise the
    zero-copy one that does when `kind` is only a default (a profile's, ``given=False``), and a
    `StoreFormatError` naming it when the user chose `kind`."""
    b = get_backend(kind)
    if _reads_container(b, container):
        return b.kind.value
    if given:
        check_container(kind, container, where)
    return kind_for_container(container)


def check_container(kind: str | LoaderKind, container: str, where: str | os.PathLike[str]) -> None:
    """Raise a `StoreFormatError` naming the right loader if backend `kind` cannot read a store
    of `container` at `where`."""
    b = get_backend(kind)
    if not _reads_container(b, container):
        raise StoreFormatError(f"{where} holds a {container!r} store; the {b.kind.value} loader reads {b.container!r} stores "
                               f"(use --loader {kind_for_container(container)})")


