"""One rule for names that become paths: resolve (symlinks included), then require containment.

Used by the importers (annotation paths inside the dataset root), `export` (record and split names
inside the export folder) and `pack` (target vs source). Keeping it in one place means one set of
edge cases: absolute names, ``..``, symlinks that leave the root, NUL bytes.

Every folder sainet writes into is built by `output_dir` (from the user's options) and `plain_child`
(a name from a store, a dataset or an option that must be one plain component): `export --to`,
`pack --to`, `bench-loader --out/--tag`, `train --project/--name` and the training data folder made
from a store. They refuse ``/``, system folders, the source, a sainet store
or a folder inside one (a store at exactly the target path is the caller's to replace with --force).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sainet.core.errors import PathOutsideRoot, SainetError

__all__ = ["resolve_inside", "is_inside", "overlaps", "is_plain_name", "utf8_text", "UNSAFE_NAME_BYTES", "output_dir",
           "plain_child", "enclosing_store", "printable", "SYSTEM_DIRS"]

#: Bytes a plain file name (one path component) may not hold.
UNSAFE_NAME_BYTES = (b"/", b"\x00")


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(path)


def utf8_text(text: str) -> str:
    """`text` as valid UTF-8: bytes a non-UTF-8 file name held as surrogate escapes become ``\\xNN``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def is_plain_name(name: str) -> bool:
    """One path component: not empty, not ``.``/``..``, no separator or NUL (an absolute name has one)."""
    return bool(name) and name not in (".", "..") and not any(b.decode() in name for b in UNSAFE_NAME_BYTES)


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether `path` is `root` or lies under it, after resolving symlinks on both."""
    p, r = _real(path), _real(root)
    return os.path.commonpath([r, p]) == r


def overlaps(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether `a` and `b` are the same folder or one contains the other (symlinks resolved)."""
    return is_inside(a, b) or is_inside(b, a)


def resolve_inside(root: str | os.PathLike[str], rel: str | os.PathLike[str], base: str | os.PathLike[str] | None = None,
                   *, error: Callable[[str, str], SainetError] = PathOutsideRoot) -> Path:
    """Join `rel` to `base` (default `root`) and return the resolved path only if it stays inside `root`.

    Symlinks are resolved first, so a link that leaves the root is refused like ``../`` or an
    absolute name. A NUL byte (which no path can hold) is refused the same way. `error(rel, root)`
    builds the typed error raised (default `PathOutsideRoot`, a dataset error).
    """
    root_real = _real(root)
    if "\x00" in os.fsdecode(rel):
        raise error(os.fsdecode(rel).replace("\x00", "\\0"), root_real)
    candidate = _real(os.path.join(base if base is not None else root, rel))
    if os.path.commonpath([root_real, candidate]) != root_real:
        raise error(os.fsdecode(rel), root_real)
    return Path(candidate)


#: Folders no output may be (their contents may: /tmp/x, /dev/shm/x, /home/me/x are fine).
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/dev/shm", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local",
    "/var", "/var/tmp", "/var/lib",
})
#: The file that marks a sainet store folder: its index (`cache_tools.format.INDEX_NAME` is this name).
STORE_MARKER = "index.sai"


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a store: a folder holding a sainet index (`STORE_MARKER`). The one rule every
    caller asks (the trainer, the benchmark, distributed training, the pack target, the output-path
    checks); whether the index is valid is checked when the store is opened
    (`cache_tools.store.open_store`), and before `--force` deletes anything
    (`cache_tools.target.is_store_folder`)."""
    return (Path(path) / STORE_MARKER).is_file()


def enclosing_store(path: str | os.PathLike[str]) -> Path | None:
    """The sainet store folder `path` is, or lies inside (its nearest folder holding an index), or None."""
    p = Path(_real(path))
    for folder in (p, *p.parents):
        if is_store(folder):
            return folder
    return None


def output_dir(path: str | os.PathLike[str], what: str, *, sources: tuple[str | os.PathLike[str], ...] = (),
               store_ok: bool = False, error: Callable[[str], SainetError] | None = None) -> Path:
    """`path` as a folder sainet may write into, or a typed error naming it and why.

    Refused: ``/`` and the system folders of SYSTEM_DIRS, a folder
    that is or lies inside one of `sources`, a sainet store or a folder inside one
    (`store_ok`: a store at exactly `path` is allowed, for ``pack --force`` to replace).
    """
    from sainet.core.errors import TargetError

    make = error or TargetError
    if "\x00" in os.fsdecode(path):
        raise make(f"{what} {os.fsdecode(path)!r} holds a NUL byte")
    real = _real(path)
    if real in SYSTEM_DIRS:
        raise make(f"{what} {path} is a system folder ({real}); name a folder of its own")
    for src in sources:
        if is_inside(real, src):
            rel = "is" if _real(src) == real else "lies inside"
            raise make(f"{what} {path} {rel} the source {src}; name a folder outside it")
    store = enclosing_store(real)
    if store is not None and not (store_ok and str(store) == real):
        where = "is the sainet store" if str(store) == real else "lies inside the sainet store"
        raise make(f"{what} {path} {where} {store}; name a folder outside any store")
    return Path(path)


def plain_child(root: str | os.PathLike[str], name: str, what: str,
                error: Callable[[str], SainetError] | None = None) -> Path:
    """`root / name` when `name` (from a store, a dataset or an option) is one plain component
    (no separator, NUL, ``.``/``..``, control character) that stays inside `root` (symlinks resolved)."""
    from sainet.core.errors import UnsafeName

    make = error or UnsafeName
    if not isinstance(name, str) or not is_plain_name(name) or any(_is_control(c) for c in name):
        raise make(f"{what} {printable(str(name))!r} is not a plain folder name; refusing to write it under {root}")
    return resolve_inside(root, name, error=lambda rel, r: make(f"{what} {printable(rel)!r} would be written outside {r}"))


def _is_control(c: str) -> bool:
    return ord(c) < 32 or 127 <= ord(c) < 160


def printable(text: str, keep: str = "") -> str:
    """`text` with control characters (C0, DEL, C1; except those in `keep`) shown as ``\\xNN``: a name
    from a file system or a store can never move the cursor, recolour or retitle a terminal.
    Non-UTF-8 bytes (surrogate escapes) are shown the same way."""
    text = utf8_text(text)
    if not any(_is_control(c) and c not in keep for c in text):
        return text
    return "".join(f"\\x{ord(c):02x}" if _is_control(c) and c not in keep else c for c in text)
