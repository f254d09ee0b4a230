"""Datasets read straight from a zip archive as downloaded (FASDD ships as 12-15 GB zips): members are
streamed on demand, nothing is unzipped to disk.

`ZipTree` lists an archive once and answers the questions an importer asks of a folder (is this a file,
which files are in this folder, read this text); `ZipMember` is what a `Sample.path` holds for an image
inside it: `read_bytes()` and `stat().st_size`, like a `pathlib.Path`, so pack and check read it as they
read a file. Member names are normalised (``./images/a.jpg``, ``images//a.jpg``); a name that climbs
out of the archive (``../``) or is absolute is never matched.
"""

from __future__ import annotations

import posixpath
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sainet.core.errors import DatasetError

__all__ = ["ZipTree", "ZipMember", "is_zip", "MAX_TEXT_BYTES", "MAX_MEMBER_BYTES"]

#: Annotation texts (split lists, label files) read from an archive are at most this large uncompressed.
MAX_TEXT_BYTES = 256 << 20
#: Any member read is at most this large uncompressed (the size the archive declares bounds what zipfile
#: reads): a zip bomb of one 10 GB member is refused before a byte is inflated.
MAX_MEMBER_BYTES = 1 << 30


def is_zip(path: Path) -> bool:
    """A file that is a zip archive (by its signature, not its name)."""
    try:
        return Path(path).is_file() and zipfile.is_zipfile(path)
    except OSError:
        return False


def _clean(name: str) -> str | None:
    """A member or listed name as a relative posix path, or None when it is absolute or climbs out."""
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":"):
        return None
    n = posixpath.normpath(n)
    return None if n == ".." or n.startswith("../") else ("" if n == "." else n)


@dataclass(frozen=True)
class _Stat:
    st_size: int


class ZipTree:
    """One archive, listed once; its members read on demand (thread-safe: one reader at a time per open)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise DatasetError(f"{self.path}: not a readable zip archive ({e})") from None
        self._lock = threading.Lock()
        self.files: dict[str, zipfile.ZipInfo] = {}
        self.dirs: set[str] = {""}
        for info in infos:
            name = _clean(info.filename)
            if name is None or info.is_dir():
                if name:
                    self.dirs.add(name.rstrip("/"))
                continue
            self.files[name] = info
            parent = posixpath.dirname(name)
            while parent and parent not in self.dirs:
                self.dirs.add(parent)
                parent = posixpath.dirname(parent)

    def close(self) -> None:
        self._zip.close()

    def join(self, *parts: str) -> str | None:
        """The normalised path of `parts` joined, or None when it leaves the archive."""
        return _clean(posixpath.join(*[p for p in parts if p]) if any(parts) else ".")

    def is_file(self, name: str | None) -> bool:
        return name is not None and name in self.files

    def is_dir(self, name: str | None) -> bool:
        return name is not None and name.rstrip("/") in self.dirs

    def children(self, folder: str) -> list[str]:
        """Names (not paths) of the folders directly inside `folder`."""
        prefix = folder.rstrip("/") + "/" if folder else ""
        return sorted({d[len(prefix):] for d in self.dirs if d.startswith(prefix) and d != folder.rstrip("/")
                       and "/" not in d[len(prefix):]})

    def listdir(self, folder: str) -> list[str]:
        """Paths of the files directly inside `folder`."""
        prefix = folder.rstrip("/") + "/" if folder else ""
        return sorted(n for n in self.files if n.startswith(prefix) and "/" not in n[len(prefix):])

    def read_bytes(self, name: str) -> bytes:
        info = self.files.get(name)
        if info is None:
            raise DatasetError(f"{self.path}: no member {name}")
        if info.file_size > MAX_MEMBER_BYTES:
            raise DatasetError(f"{self.path}!{name}: {info.file_size} bytes uncompressed; sainet reads members of at "
                               f"most {MAX_MEMBER_BYTES >> 20} MB")
        try:
            with self._lock:
                return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as e:
            raise DatasetError(f"{self.path}!{name}: cannot read ({e})") from None

    def read_text(self, name: str) -> str:
        info = self.files[name]
        if info.file_size > MAX_TEXT_BYTES:
            raise DatasetError(f"{self.path}!{name}: {info.file_size} bytes uncompressed; annotation texts are at "
                               f"most {MAX_TEXT_BYTES >> 20} MB")
        return self.read_bytes(name).decode("utf-8", errors="replace")

    def member(self, name: str) -> ZipMember:
        return ZipMember(self, name)


class ZipMember:
    """An image inside an archive, read like a file: `read_bytes()`, `stat().st_size`, `name`, `suffix`."""

    __slots__ = ("tree", "member")

    def __init__(self, tree: ZipTree, member: str) -> None:
        self.tree, self.member = tree, member

    @property
    def name(self) -> str:
        return posixpath.basename(self.member)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.member)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    def read_bytes(self) -> bytes:
        return self.tree.read_bytes(self.member)

    def stat(self) -> _Stat:
        return _Stat(self.tree.files[self.member].file_size)

    def is_file(self) -> bool:
        return self.member in self.tree.files

    def __str__(self) -> str:  # for messages: ARCHIVE!MEMBER (not a file on disk)
        return f"{self.tree.path}!{self.member}"

    def __repr__(self) -> str:
        return f"ZipMember({str(self)!r})"
