"""The sainet store format: one versioned, little-endian index beside the payload container.

A store is a folder::

    NAME/
      index.sai          # this module's format; written last, so its presence means "complete"
      shard-00000.bin    # container "shards": payloads back to back, records never span shards
      ...
      data.mdb           # container "lmdb": one LMDB environment, key = source ordinal (u64 BE)

``index.sai`` layout (all little-endian; offsets from the start of the file)::

    HEADER   one row of HEADER_DTYPE (256 bytes)
    records  num_records rows of RECORD_DTYPE
    boxes    num_boxes rows of BOX_DTYPE, grouped by record (record's box_start/box_count)
    strings  UTF-8: each record's name and source key, addressed by (start, len)
    meta     UTF-8 JSON: classes, splits, source, mode, imgsz, creation time, shard sizes, bad images

The header's ``digest`` is BLAKE2b-128 of the whole file with the digest field zeroed: one flipped
byte anywhere in the index is a `StoreCorruptError`. Everything that sizes an allocation
(counts, offsets, lengths) is checked against the file size first: a header claiming absurd counts
is a `StoreFormatError` before any array is made. JSON and numpy dtypes only: no pickle anywhere.

Why a numpy dtype for the header (as FFCV does): one definition gives the byte layout, the
reader and the writer, and `np.frombuffer` on a dtype never executes anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sainet.errors import StoreCorruptError, StoreFormatError, StoreVersionError

__all__ = [
    "MAGIC",
    "CURRENT_VERSION",
    "INDEX_NAME",
    "CONTAINERS",
    "MODES",
    "HEADER_DTYPE",
    "RECORD_DTYPE",
    "BOX_DTYPE",
    "IndexData",
    "encode_index",
    "decode_index",
    "read_index",
    "payload_checksum",
    "shard_name",
]

MAGIC = b"SAINETIX"
#: Bump on any change to the dtypes below or to the meaning of a field; readers refuse newer ones.
CURRENT_VERSION = 1
INDEX_NAME = "index.sai"
CONTAINERS = ("lmdb", "shards")
MODES = ("jpeg", "raw")

HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u2"),
        ("container", "<u1"),  # index into CONTAINERS
        ("mode", "<u1"),  # index into MODES
        ("header_size", "<u4"),
        ("num_records", "<u8"),
        ("num_boxes", "<u8"),
        ("num_shards", "<u4"),
        ("imgsz_h", "<u4"),  # raw mode: stored frame height (padded training shape); 0 for jpeg
        ("imgsz_w", "<u4"),
        ("channels", "<u4"),
        ("records_offset", "<u8"),
        ("boxes_offset", "<u8"),
        ("strings_offset", "<u8"),
        ("strings_len", "<u8"),
        ("meta_offset", "<u8"),
        ("meta_len", "<u8"),
        ("total_len", "<u8"),
        ("payload_bytes", "<u8"),
        ("digest", "S16"),
        ("reserved", "S128"),
    ]
)
if HEADER_DTYPE.itemsize != 256:  # a layout invariant of this module
    raise ImportError(f"HEADER_DTYPE must be 256 bytes, is {HEADER_DTYPE.itemsize}")

RECORD_DTYPE = np.dtype(
    [
        ("shard", "<u4"),  # shards: shard file number; lmdb: 0
        ("offset", "<u8"),  # shards: byte offset in the shard; lmdb: the key (source ordinal)
        ("length", "<u8"),  # payload bytes
        ("crc", "<u4"),  # zlib.crc32 of the payload
        ("split", "<u2"),  # index into meta["splits"]
        ("flags", "<u2"),  # bit 0: payload was re-encoded (--max-size)
        ("orig_w", "<u4"),  # displayed (EXIF-oriented) original size
        ("orig_h", "<u4"),
        ("ratio", "<f4"),  # raw: letterbox scale; jpeg: 1
        ("new_w", "<u4"),  # raw: scaled image size inside the frame; jpeg: stored image size
        ("new_h", "<u4"),
        ("pad_left", "<u4"),  # raw: letterbox padding; jpeg: 0
        ("pad_top", "<u4"),
        ("box_start", "<u8"),
        ("box_count", "<u4"),
        ("name_start", "<u8"),
        ("name_len", "<u4"),
        ("key_start", "<u8"),
        ("key_len", "<u4"),
    ]
)

BOX_DTYPE = np.dtype([("record", "<u4"), ("cls", "<u4"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4")])

FLAG_REENCODED = 1


def payload_checksum(data: bytes | memoryview) -> int:
    import zlib

    return zlib.crc32(data) & 0xFFFFFFFF


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


@dataclass
class IndexData:
    container: str
    mode: str
    imgsz: tuple[int, int] | None  # (H, W) of raw frames
    records: np.ndarray  # RECORD_DTYPE
    boxes: np.ndarray  # BOX_DTYPE
    strings: bytes
    meta: dict[str, Any]
    num_shards: int = 0
    version: int = CURRENT_VERSION

    def name(self, i: int) -> str:
        r = self.records[i]
        return self.strings[int(r["name_start"]) : int(r["name_start"]) + int(r["name_len"])].decode()

    def key(self, i: int) -> str:
        r = self.records[i]
        return self.strings[int(r["key_start"]) : int(r["key_start"]) + int(r["key_len"])].decode()


def encode_index(ix: IndexData) -> bytes:
    records = np.ascontiguousarray(ix.records, RECORD_DTYPE)
    boxes = np.ascontiguousarray(ix.boxes, BOX_DTYPE)
    meta = json.dumps(ix.meta, sort_keys=True, allow_nan=False).encode()
    h = np.zeros((), HEADER_DTYPE)
    off = HEADER_DTYPE.itemsize
    h["magic"], h["version"], h["header_size"] = MAGIC, CURRENT_VERSION, HEADER_DTYPE.itemsize
    h["container"], h["mode"] = CONTAINERS.index(ix.container), MODES.index(ix.mode)
    h["num_records"], h["num_boxes"], h["num_shards"] = len(records), len(boxes), ix.num_shards
    h["imgsz_h"], h["imgsz_w"] = ix.imgsz if ix.imgsz else (0, 0)
    h["channels"] = 3
    h["records_offset"] = off
    off += records.nbytes
    h["boxes_offset"] = off
    off += boxes.nbytes
    h["strings_offset"], h["strings_len"] = off, len(ix.strings)
    off += len(ix.strings)
    h["meta_offset"], h["meta_len"] = off, len(meta)
    off += len(meta)
    h["total_len"] = off
    h["payload_bytes"] = int(records["length"].sum()) if len(records) else 0
    blob = bytearray(h.tobytes() + records.tobytes() + boxes.tobytes() + ix.strings + meta)
    digest = hashlib.blake2b(bytes(blob), digest_size=16).digest()
    start = HEADER_DTYPE.fields["digest"][1]
    blob[start : start + 16] = digest
    return bytes(blob)


def _section(buf: bytes, offset: int, length: int, what: str, source: str) -> None:
    if offset < HEADER_DTYPE.itemsize or offset + length > len(buf):
        raise StoreFormatError(f"{source}: {what} section [{offset}, +{length}) lies outside the {len(buf)}-byte index")


def decode_index(buf: bytes, source: str) -> IndexData:
    """Parse an index. Foreign, newer, impossible or damaged indexes raise typed errors."""
    if len(buf) < 10 or buf[:8] != MAGIC:
        raise StoreFormatError(f"{source}: not a sainet store index (bad magic)")
    version = int.from_bytes(buf[8:10], "little")
    if version > CURRENT_VERSION or version == 0:
        raise StoreVersionError(f"{source}: store format version {version}; this sainet reads up to {CURRENT_VERSION}")
    if len(buf) < HEADER_DTYPE.itemsize:
        raise StoreFormatError(f"{source}: index shorter than its header")
    h = np.frombuffer(buf, HEADER_DTYPE, count=1)[0]
    if int(h["total_len"]) != len(buf) or int(h["header_size"]) != HEADER_DTYPE.itemsize:
        raise StoreFormatError(f"{source}: index is {len(buf)} bytes but its header says {int(h['total_len'])} (truncated or padded)")
    n, nb = int(h["num_records"]), int(h["num_boxes"])
    if n > len(buf) // RECORD_DTYPE.itemsize or nb > len(buf) // BOX_DTYPE.itemsize:
        raise StoreFormatError(f"{source}: header claims {n} records and {nb} boxes, more than the index can hold")
    _section(buf, int(h["records_offset"]), n * RECORD_DTYPE.itemsize, "records", source)
    _section(buf, int(h["boxes_offset"]), nb * BOX_DTYPE.itemsize, "boxes", source)
    _section(buf, int(h["strings_offset"]), int(h["strings_len"]), "strings", source)
    _section(buf, int(h["meta_offset"]), int(h["meta_len"]), "meta", source)
    if int(h["container"]) >= len(CONTAINERS) or int(h["mode"]) >= len(MODES):
        raise StoreFormatError(f"{source}: unknown container {int(h['container'])} or mode {int(h['mode'])}")
    start = HEADER_DTYPE.fields["digest"][1]
    zeroed = buf[:start] + b"\x00" * 16 + buf[start + 16 :]
    if hashlib.blake2b(zeroed, digest_size=16).digest() != bytes(h["digest"]).ljust(16, b"\x00"):
        raise StoreCorruptError(f"{source}: index checksum mismatch (the index was modified or damaged)")
    records = np.frombuffer(buf, RECORD_DTYPE, count=n, offset=int(h["records_offset"]))
    boxes = np.frombuffer(buf, BOX_DTYPE, count=nb, offset=int(h["boxes_offset"]))
    so, sl = int(h["strings_offset"]), int(h["strings_len"])
    mo, ml = int(h["meta_offset"]), int(h["meta_len"])
    try:
        meta = json.loads(buf[mo : mo + ml].decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise StoreFormatError(f"{source}: metadata is not JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list) or not isinstance(meta.get("splits"), list):
        raise StoreFormatError(f"{source}: metadata lacks classes/splits")
    # Cross-checks that keep later indexing in bounds.
    if n and np.any(records["box_start"] + records["box_count"] > nb):
        raise StoreFormatError(f"{source}: a record's boxes lie outside the box table")
    if n and (np.any(records["name_start"] + records["name_len"] > sl) or np.any(records["key_start"] + records["key_len"] > sl)):
        raise StoreFormatError(f"{source}: a record's name lies outside the string table")
    if n and int(records["split"].max()) >= len(meta["splits"]):
        raise StoreFormatError(f"{source}: a record names an unknown split")
    if nb and int(boxes["record"].max()) >= n:
        raise StoreFormatError(f"{source}: a box names an unknown record")
    mode = MODES[int(h["mode"])]
    imgsz = (int(h["imgsz_h"]), int(h["imgsz_w"])) if mode == "raw" else None
    return IndexData(
        container=CONTAINERS[int(h["container"])], mode=mode, imgsz=imgsz, records=records, boxes=boxes,
        strings=buf[so : so + sl], meta=meta, num_shards=int(h["num_shards"]), version=version,
    )


def read_index(store: Path) -> IndexData:
    path = Path(store) / INDEX_NAME
    if not Path(store).exists():
        raise StoreFormatError(f"{store}: no such store")
    if not path.is_file():
        raise StoreFormatError(f"{store}: not a sainet store (no {INDEX_NAME}; an unfinished pack leaves none)")
    return decode_index(path.read_bytes(), str(path))
