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
    meta     UTF-8 JSON: classes, splits, source, mode, imgsz, creation time, shard sizes, bad images, store id

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
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sainet.core.errors import StoreCorruptError, StoreFormatError, StoreVersionError
from sainet.core.imaging import MAX_PIXELS
from sainet.core.safepath import STORE_MARKER, UNSAFE_NAME_BYTES, is_plain_name

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
    "check_meta",
    "check_records",
    "check_boxes",
    "content_fingerprint",
    "shard_name",
    "new_store_id",
    "shard_trailer",
    "parse_trailer",
    "TRAILER_SIZE",
    "STORE_ID_KEY",
]

MAGIC = b"SAINETIX"
#: Bump on any change to the dtypes below or to the meaning of a field; readers refuse newer ones.
CURRENT_VERSION = 1
INDEX_NAME = STORE_MARKER  # the index file; its presence is what makes a folder a store (sainet.core.safepath.is_store)
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
#: An index larger than this is refused before it is read (a 1M-image store's index is ~150 MB).
MAX_INDEX_BYTES = 4 << 30


def payload_checksum(data: bytes | memoryview) -> int:
    import zlib

    return zlib.crc32(data) & 0xFFFFFFFF


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


# A store id ties the container files to the index that names them (a reader never mixes stores):
# ``meta["store_id"]`` (32 hex digits, `new_store_id`) is also written after the last payload of
# every shard (a 32-byte trailer at exactly the recorded shard size) and under STORE_ID_KEY in the
# LMDB main DB. Payload offsets and the recorded shard sizes are unchanged by it.
TRAILER_MAGIC = b"SAINETSH"
TRAILER_SIZE = 32
#: Key of the store id in the LMDB main DB (payload keys are 8 bytes: it never collides).
STORE_ID_KEY = b"sainet:store-id"


def new_store_id(ix: IndexData) -> str:
    """The id of a store about to be committed: a digest of what it holds (`content_fingerprint`),
    where each payload sits and when it was packed. Another pack over the same path differs in
    content, placement or time, so a reader of the old files refuses it; two packs of the same
    source in the same second are the same bytes, so their ids may match (and `pack` twice gives a
    byte-identical index, on any path)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(content_fingerprint(ix).encode() + b"\0" + str(ix.meta.get("created", "")).encode() + b"\0")
    h.update(np.ascontiguousarray(ix.records).tobytes())  # placement: shard and offset of every payload
    return h.hexdigest()


def shard_trailer(store_id: str, shard: int) -> bytes:
    """The 32 bytes after shard `shard`'s payloads: magic, the store id (16 bytes), the shard number."""
    return TRAILER_MAGIC + bytes.fromhex(store_id) + int(shard).to_bytes(4, "little") + bytes(4)


def parse_trailer(buf: bytes) -> tuple[str, int] | None:
    """(store id, shard number) of a trailer, or None when `buf` is not one."""
    if len(buf) != TRAILER_SIZE or buf[:8] != TRAILER_MAGIC:
        return None
    return buf[8:24].hex(), int.from_bytes(buf[24:28], "little")


@dataclass
class IndexData:
    container: str
    mode: str
    imgsz: tuple[int, int] | None  # (H, W) of raw frames
    records: np.ndarray  # RECORD_DTYPE
    boxes: np.ndarray  # BOX_DTYPE
    strings: bytes | memoryview  # a view of the index buffer when read (no copy)
    meta: dict[str, Any]
    num_shards: int = 0
    version: int = CURRENT_VERSION

    def name(self, i: int) -> str:
        r = self.records[i]
        return str(self.strings[int(r["name_start"]) : int(r["name_start"]) + int(r["name_len"])], "utf-8")

    def key(self, i: int) -> str:
        r = self.records[i]
        return str(self.strings[int(r["key_start"]) : int(r["key_start"]) + int(r["key_len"])], "utf-8")


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


#: Record fields that describe content (not where a payload lies: shard/offset follow --shard-size).
_CONTENT_FIELDS = ("split", "length", "crc", "flags", "orig_w", "orig_h", "new_w", "new_h", "ratio", "pad_left", "pad_top",
                   "box_count")


def content_fingerprint(ix: IndexData) -> str:
    """BLAKE2b-128 of what a store holds, not of when or where it was packed.

    Covers the format version, container, mode, shape, classes, splits, every record's name, split,
    payload length and checksum, sizes and letterbox, and every box; leaves out the creation time,
    the source paths, the sainet version and the payloads' placement (shard, offset). Two packs of
    the same source with the same options therefore match on any machine and path (what the ranks
    of a multi-node run compare); a different record set, option or label does not.
    """
    h = hashlib.blake2b(digest_size=16)
    head = {"version": int(ix.version), "container": ix.container, "mode": ix.mode,
            "imgsz": list(ix.imgsz) if ix.imgsz else None, "classes": ix.meta.get("classes"),
            "splits": ix.meta.get("splits"), "max_size": ix.meta.get("max_size")}
    h.update(json.dumps(head, sort_keys=True).encode() + b"\0")
    for f in _CONTENT_FIELDS:  # column by column: a multi-field view would carry the other fields' bytes
        h.update(np.ascontiguousarray(ix.records[f]).tobytes())
    for i in range(len(ix.records)):
        h.update(ix.name(i).encode() + b"\0")
    boxes = np.ascontiguousarray(ix.boxes, BOX_DTYPE)
    h.update(boxes.tobytes())
    return h.hexdigest()


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
    view = memoryview(buf)  # the digest over the index with its digest field zeroed, and the string table: no copies
    digest = hashlib.blake2b(digest_size=16)
    for part in (view[:start], b"\x00" * 16, view[start + 16 :]):
        digest.update(part)
    if digest.digest() != bytes(h["digest"]).ljust(16, b"\x00"):
        raise StoreCorruptError(f"{source}: index checksum mismatch (the index was modified or damaged)")
    records = np.frombuffer(buf, RECORD_DTYPE, count=n, offset=int(h["records_offset"]))
    boxes = np.frombuffer(buf, BOX_DTYPE, count=nb, offset=int(h["boxes_offset"]))
    so, sl = int(h["strings_offset"]), int(h["strings_len"])
    mo, ml = int(h["meta_offset"]), int(h["meta_len"])
    try:
        meta = json.loads(buf[mo : mo + ml].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StoreFormatError(f"{source}: metadata is not JSON: {str(e)[:200]}") from None
    mode = MODES[int(h["mode"])]
    imgsz = (int(h["imgsz_h"]), int(h["imgsz_w"])) if mode == "raw" else None
    strings = view[so : so + sl]
    check_meta(meta, source)
    check_records(records, strings, meta, mode, imgsz, source)
    check_boxes(boxes, records, len(meta["classes"]), source)
    return IndexData(
        container=CONTAINERS[int(h["container"])], mode=mode, imgsz=imgsz, records=records, boxes=boxes,
        strings=strings, meta=meta, num_shards=int(h["num_shards"]), version=version,
    )


#: Metadata fields sainet reads, with the JSON types they must have when present (bool is not an int here).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "classes": (list,), "splits": (list,), "shards": (list,), "bad": (list,), "counts": (dict,), "lmdb_bytes": (int,),
    "reencoded": (int,), "max_size": (int, type(None)), "imgsz": (list, type(None)), "source": (str, type(None)),
    "layout": (str, type(None)), "created": (str, type(None)), "mode": (str,), "container": (str,),
    "store_id": (str,),
}
_REQUIRED_META = ("classes", "splits")


def check_meta(meta: object, source: str) -> None:
    """Metadata types and the class/split name lists; names the offending field."""
    if not isinstance(meta, dict):
        raise StoreFormatError(f"{source}: metadata is a JSON {type(meta).__name__}, not an object")
    for key in _REQUIRED_META:
        if key not in meta:
            raise StoreFormatError(f"{source}: metadata lacks {key!r}")
    for key, types in _META_TYPES.items():
        v = meta.get(key)
        if key in meta and (not isinstance(v, types) or isinstance(v, bool)):
            raise StoreFormatError(f"{source}: metadata field {key!r} is a {type(v).__name__}, expected {'/'.join(t.__name__ for t in types)}")
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise StoreFormatError(f"{source}: metadata field {key!r} is negative ({v})")
    for key in ("classes", "splits"):
        names = meta[key]
        bad = [i for i, c in enumerate(names) if not isinstance(c, str) or not c or "\x00" in c
               or (key == "splits" and not is_plain_name(c))]
        if bad:
            raise StoreFormatError(f"{source}: metadata field {key!r}[{bad[0]}] is {names[bad[0]]!r}, expected a non-empty string"
                                   + (" that is a plain folder name" if key == "splits" else ""))
        if len(set(names)) != len(names):
            raise StoreFormatError(f"{source}: metadata field {key!r} repeats a name")
    sid = meta.get("store_id")
    if sid is not None and (len(sid) != 32 or any(c not in "0123456789abcdef" for c in sid)):
        raise StoreFormatError(f"{source}: metadata field 'store_id' is {sid[:40]!r}, expected 32 hex digits")
    for i, sh in enumerate(meta.get("shards", [])):
        size = sh.get("bytes") if isinstance(sh, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 62:
            raise StoreFormatError(f"{source}: metadata field 'shards'[{i}] has no byte count")


def _refuse(mask: np.ndarray, source: str, what: str) -> None:
    """Raise naming the first record (or box) where `mask` is true."""
    bad = np.flatnonzero(mask)
    if len(bad):
        raise StoreFormatError(f"{source}: {what} (first at row {int(bad[0])}, {len(bad)} in all)")


def _check_ranges(records: np.ndarray, strings: bytes | memoryview, source: str) -> None:
    """Name/key ranges inside the string table, on UTF-8 character boundaries, names non-empty."""
    sl = len(strings)
    for f in ("name", "key"):
        start, length = records[f"{f}_start"], records[f"{f}_len"].astype(np.uint64)
        # Compare without adding: start + length can wrap around in u8.
        _refuse((start > sl) | (length > sl - np.minimum(start, sl)), source, f"record field {f}_start/{f}_len lies outside the string table")
    _refuse(records["name_len"] == 0, source, "record field name_len is 0 (an empty name)")
    try:
        str(strings, "utf-8")
    except UnicodeDecodeError as e:
        raise StoreFormatError(f"{source}: string table is not UTF-8 (byte {e.start}): a record name or key") from None
    # Valid UTF-8 overall plus every range starting and ending on a character boundary = every name valid.
    raw = np.frombuffer(strings, np.uint8)
    cont = np.concatenate([(raw & 0xC0) == 0x80, [False]])
    for f in ("name", "key"):
        start = records[f"{f}_start"].astype(np.int64)
        _refuse(cont[start] | cont[start + records[f"{f}_len"]], source, f"record field {f}_start/{f}_len splits a UTF-8 character")
    # Names become file names (export): one plain component, no separator or NUL, not "." or "..".
    start = records["name_start"].astype(np.int64)
    end = start + records["name_len"]
    unsafe = np.zeros(len(raw), bool)
    for b in UNSAFE_NAME_BYTES:
        unsafe |= raw == b[0]
    bad_pos = np.flatnonzero(unsafe)
    _refuse(np.searchsorted(bad_pos, start) < np.searchsorted(bad_pos, end), source,
            "record name holds a path separator or NUL (names are plain file names)")
    short = np.flatnonzero(records["name_len"] <= 2)
    dots = np.zeros(len(records), bool)
    dots[[int(i) for i in short if strings[start[i] : end[i]] in (b".", b"..")]] = True
    _refuse(dots, source, "record name is '.' or '..'")


def check_records(records: np.ndarray, strings: bytes | memoryview, meta: dict, mode: str, imgsz: tuple[int, int] | None,
                  source: str) -> None:
    """Cross-checks that keep every later lookup (names, boxes, splits, frame geometry) in bounds."""
    if not len(records):
        return
    nsplits = len(meta["splits"])
    _refuse(records["split"] >= nsplits, source, f"record field split names an unknown split (the index has {nsplits})")
    _check_ranges(records, strings, source)
    _refuse((records["orig_w"] == 0) | (records["orig_h"] == 0), source, "record field orig_w/orig_h is 0")
    _refuse(records["orig_w"].astype(np.uint64) * records["orig_h"] > MAX_PIXELS, source,
            f"record field orig_w*orig_h exceeds {MAX_PIXELS} pixels")
    _refuse(~np.isfinite(records["ratio"]) | (records["ratio"] <= 0), source, "record field ratio is not a positive number")
    if mode == "raw":
        H, W = imgsz or (0, 0)
        if not (0 < H <= 1 << 15 and 0 < W <= 1 << 15):
            raise StoreFormatError(f"{source}: header field imgsz {H}x{W} is not a frame size")
        _refuse(records["length"] != H * W * 3, source, f"record field length is not a {H}x{W}x3 raw frame")
        _refuse((records["new_w"] == 0) | (records["new_h"] == 0), source, "record field new_w/new_h is 0")
        _refuse((records["pad_left"].astype(np.uint64) + records["new_w"] > W)
                | (records["pad_top"].astype(np.uint64) + records["new_h"] > H), source,
                "record field pad/new size lies outside the raw frame")


def check_boxes(boxes: np.ndarray, records: np.ndarray, nc: int, source: str) -> None:
    """Boxes grouped by record exactly as the writer lays them out, class ids < len(classes), coordinates sane."""
    counts = records["box_count"].astype(np.uint64)
    if int(counts.sum()) != len(boxes):
        raise StoreFormatError(f"{source}: records claim {int(counts.sum())} boxes, the box table holds {len(boxes)}")
    starts = np.zeros(len(records), np.uint64)
    starts[1:] = np.cumsum(counts)[:-1]
    _refuse(records["box_start"] != starts, source, "record field box_start/box_count does not match the box table")
    if not len(boxes):
        return
    _refuse(boxes["record"] != np.repeat(np.arange(len(records), dtype=np.int64), counts.astype(np.int64)), source,
            "box field record does not match the record's box range")
    _refuse(boxes["cls"] >= nc, source, f"box field cls is not a class id (the index names {nc} classes)")
    xywh = np.stack([boxes["x"], boxes["y"], boxes["w"], boxes["h"]], axis=1)
    eps = 1e-3
    _refuse(~np.isfinite(xywh).all(axis=1) | (xywh < -eps).any(axis=1) | (xywh > 1 + eps).any(axis=1)
            | (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0), source, "box field x/y/w/h is not a normalized box")


def read_index(store: Path) -> IndexData:
    path = Path(store) / INDEX_NAME
    if not Path(store).exists():
        raise StoreFormatError(f"{store}: no such store")
    if not path.is_file():
        raise StoreFormatError(f"{store}: not a sainet store (no {INDEX_NAME}; an unfinished pack leaves none)")
    # O_NONBLOCK: if the file was swapped for a FIFO after the check above, open must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreFormatError(f"{path}: not a regular file")
        if st.st_size > MAX_INDEX_BYTES:
            raise StoreFormatError(f"{path}: {st.st_size} bytes, more than an index can be ({MAX_INDEX_BYTES})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            buf = f.read()
    finally:
        os.close(fd)
    return decode_index(buf, str(path))
