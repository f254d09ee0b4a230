"""File-system steps shared by the store builder, the exporter, synth and the trainer's checkpoints:
durable (fsync by path) and named (an error says which file)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["fsync_path", "naming", "write_bytes", "write_text"]


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder by path (a folder: so that a rename inside it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError raised inside without a file name (ENOSPC, EIO, EDQUOT from a write or a flush)
    gets `path` as its name, so the error the user sees names the file (same errno, same class)."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), os.fspath(path)) from e
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> int:
    """`Path.write_bytes` whose errors name the file (`naming`)."""
    with naming(path):
        return Path(path).write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> int:
    """`Path.write_text` whose errors name the file (`naming`)."""
    with naming(path):
        return Path(path).write_text(text)
