"""Typed errors shared by every stage of the pipeline.

Library code raises these; only the CLI turns them into messages and exit codes. Every error that
comes from a file or a record names it, so a user can find the bad input among 100k images.
"""

from __future__ import annotations

__all__ = [
    "SainetError",
    "DatasetError",
    "LayoutError",
    "PathOutsideRoot",
    "ImageError",
    "CorruptImage",
    "ImageTooLarge",
    "StoreError",
    "StoreFormatError",
    "StoreVersionError",
    "StoreCorruptError",
    "StoreReplacedError",
    "StoreExistsError",
    "CapacityError",
    "UnsafeName",
    "TargetError",
    "TargetLocked",
    "StoreWriteError",
    "SettingsError",
    "ClassMappingError",
    "DistributedError",
    "LoaderWorkerError",
]


class SainetError(Exception):
    """Base class of every error sainet raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 1


class DatasetError(SainetError):
    """A source dataset cannot be read as asked (missing files, unreadable annotations)."""

    exit_code = 2


class LayoutError(DatasetError):
    """The layout of a source dataset could not be detected, or does not match `--layout`."""


class PathOutsideRoot(DatasetError):
    """An annotation names a file outside the dataset root (``../``, an absolute path, a symlink out)."""

    def __init__(self, path: str, root: str) -> None:
        super().__init__(f"{path!r} points outside the dataset root {root}")
        self.path = path
        self.root = root


class ImageError(SainetError):
    """An image cannot be decoded. `source` names the file or record."""

    exit_code = 3

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class CorruptImage(ImageError):
    """Zero-byte, truncated, undecodable or of an unsupported kind."""


class ImageTooLarge(ImageError):
    """The header claims more pixels than sainet will allocate (a decompression bomb)."""


class StoreError(SainetError):
    """A packed store is missing, foreign, damaged or of another version."""

    exit_code = 4


class StoreFormatError(StoreError):
    """The file is not a sainet store, or its header/index is impossible."""


class StoreVersionError(StoreError):
    """The store was written by a newer (or unknown) format version."""


class StoreCorruptError(StoreError):
    """A record's checksum or structure does not match the index."""


class StoreReplacedError(StoreCorruptError):
    """A store's files were replaced under a reader: a shard or ``data.mdb`` belongs to another index."""


class StoreExistsError(StoreError):
    """The target store exists and `--force` was not given."""


class CapacityError(SainetError):
    """The store (or the loader's buffers) will not fit the target filesystem or memory."""

    exit_code = 5


class UnsafeName(StoreFormatError):
    """A name from a store (record or split) would become a path outside its root (absolute, ``..``, a symlink out)."""


class TargetError(StoreError):
    """`pack` refuses its target: not a sainet store, the source itself, inside it or containing it."""


class TargetLocked(TargetError):
    """Another pack holds the target's lock."""


class StoreWriteError(StoreError):
    """Writing a store failed for a reason other than a full filesystem (I/O error, LMDB error)."""


class SettingsError(SainetError):
    """A setting is invalid: an option value, a profile name, a config file, or a run to resume.

    `option` names the command-line option (``--imgsz``) or file the value came from, when known.
    Exit code 2, as for any other bad command-line usage.
    """

    exit_code = 2

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(f"{option}: {message}" if option else message)
        self.option = option


class ClassMappingError(DatasetError):
    """A training stage names classes its store does not hold exactly (one missing, or others besides).

    `missing` are the stage's classes the store lacks, `extra` the store's classes the stage does
    not name; `store` is the data path and `have` the store's class names, in index order.
    """

    def __init__(self, message: str, *, store: str, have: list[str], missing: list[str], extra: list[str]) -> None:
        super().__init__(message)
        self.store, self.have, self.missing, self.extra = store, have, missing, extra


class DistributedError(SainetError):
    """The ranks of a distributed run disagree (store, world size, batch), a rank failed, or
    torchrun's environment is incomplete."""

    exit_code = 6


class LoaderWorkerError(SainetError):
    """An assembler process of a loader (`loaders.procs`) died, failed to start, or did not answer."""
