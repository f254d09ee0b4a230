"""One rule for names that become paths: resolve (symlinks included), then require containment.

Used by the importers (annotation paths inside the dataset root), `export` (record and split names
inside the export folder) and `pack` (target vs source). Keeping it in one place means one set of
edge cases: absolute names, ``..``, symlinks that leave the root, NUL bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sainet.core.errors import PathOutsideRoot, SainetError

__all__ = ["resolve_inside", "is_inside", "overlaps", "is_plain_name", "utf8_text", "UNSAFE_NAME_BYTES"]

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
