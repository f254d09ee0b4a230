"""`sainet export`: a store back to an Ultralytics YOLO folder (images/, labels/, data.yaml).

jpeg stores give byte-identical image files. raw stores hold letterboxed frames: the image region
is cropped out of the frame and written as JPEG (quality 95), which re-encodes, and is logged.

Every record and split name becomes a path only through `sainet.core.safepath.resolve_inside`: a
crafted store whose names are absolute, contain ``..`` or a separator, or meet a symlink that
leaves the export folder is refused with `UnsafeName` before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from cache_tools.format import payload_checksum
from cache_tools.store import Store, open_store
from sainet.core.errors import StoreCorruptError, StoreError, StoreExistsError, UnsafeName
from sainet.core.fsio import write_bytes, write_text
from sainet.core.imaging import encode_jpeg
from sainet.core.safepath import is_plain_name, output_dir, printable, resolve_inside

__all__ = ["export_store", "safe_child"]

log = logging.getLogger(__name__)


def safe_child(root: Path, name: str, what: str) -> Path:
    """`root / name` when `name` is one plain path component that stays inside `root` (symlinks resolved)."""
    if not is_plain_name(name):
        raise UnsafeName(f"{what} {name!r} is not a plain file name; refusing to write it under {root}")
    return resolve_inside(root, name, error=lambda rel, r: UnsafeName(f"{what} {rel!r} would be written outside {r}"))


def _plan_names(s: Store, out: Path) -> list[tuple[Path, Path]]:
    """(image path, label path) per record, all checked before anything is written."""
    split_dirs = {}
    for sp in s.splits:
        split_dirs[sp] = (safe_child(out / "images", sp, "split name"), safe_child(out / "labels", sp, "split name"))
    used: set[tuple[str, str]] = set()
    plan = []
    for i in range(len(s)):
        split = s.splits[int(s.index.records[i]["split"])]
        name = s.index.name(i)
        if s.mode == "raw":
            name = Path(name).stem + ".jpg"
        stem, suffix, k = Path(name).stem, Path(name).suffix, 0
        # An image and its label share a stem: keep stems unique per split (a.jpg + a.png would share a.txt).
        while (split, stem) in used:
            k += 1
            stem = f"{Path(name).stem}_{i}" + (f"_{k}" if k > 1 else "")
        used.add((split, stem))
        name = stem + suffix
        img_dir, lbl_dir = split_dirs[split]
        img = safe_child(img_dir, name, f"record {i} name")
        lbl = safe_child(lbl_dir, stem + ".txt", f"record {i} name")
        plan.append((img, lbl))
    return plan


def _damaged(s: Store) -> list[dict]:
    """Records whose payload cannot be read or fails its checksum: {"record", "name", "reason"}."""
    bad = []
    for i in range(len(s)):
        try:
            s.payload(i, verify=True)
        except StoreError as e:
            bad.append({"record": i, "name": s.index.name(i), "reason": str(e)})
    return bad


def export_store(store_path: str | Path, out: str | Path, *, force: bool = False, skip_bad: bool = False,
                 skipped: list[dict] | None = None, progress: Callable[[int], None] | None = None) -> int:
    """Write the store at `store_path` as a YOLO folder `out`; return the number of images written.

    Every payload's checksum is checked before anything is written: a damaged record is a
    `StoreCorruptError` naming them all, unless `skip_bad` leaves them out (appended to `skipped`).
    `out` is checked by `output_dir`: never ``/``, a system folder, the store or inside a store.
    """
    out = output_dir(out, "export folder", sources=(store_path,))
    if out.exists() and any(out.iterdir()) and not force:
        raise StoreExistsError(f"{out} exists and is not empty; pass --force to write into it")
    n = 0
    with open_store(store_path) as s:
        bad = _damaged(s)
        if bad and not skip_bad:
            names = ", ".join(f"{b['record']} ({printable(b['name'])})" for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise StoreCorruptError(f"{s.path}: {len(bad)} damaged record(s), nothing exported: {names}; "
                                    "`sainet verify` lists them, --skip-bad leaves them out")
        if skipped is not None:
            skipped.extend(bad)
        leave_out = {b["record"] for b in bad}
        if s.mode == "raw":
            log.warning("%s holds raw frames: exported images are re-encoded as JPEG (quality 95)", s.path)
        out.mkdir(parents=True, exist_ok=True)
        for sub in ("images", "labels"):
            safe_child(out, sub, "folder")
        plan = _plan_names(s, out)
        for i, (img, lbl) in enumerate(plan):
            if i in leave_out:
                log.warning("left out record %d (%s): damaged", i, printable(s.index.name(i)))
                continue
            _write_one(s, i, img, lbl, out)
            n += 1
            if progress:
                progress(1)
        # No `path`: Ultralytics then resolves the splits against this file's folder.
        cfg = {**{sp: f"images/{sp}" for sp in s.splits}, "names": dict(enumerate(s.classes))}
    write_text(safe_child(out, "data.yaml", "file"), yaml.safe_dump(cfg, sort_keys=False))
    return n


def _write_one(s: Store, i: int, img: Path, lbl: Path, out: Path) -> None:
    r = s[i]
    if payload_checksum(r.payload) != int(s.index.records[i]["crc"]):  # checked again as it is written
        raise StoreCorruptError(f"{s.path}: record {i} ({printable(r.name)}): payload checksum mismatch")
    img.parent.mkdir(parents=True, exist_ok=True)
    lbl.parent.mkdir(parents=True, exist_ok=True)
    # Re-check after mkdir: a folder created since planning must not be a link out of `out`.
    resolve_inside(out, img, error=lambda rel, root: UnsafeName(f"{rel} would be written outside {root}"))
    if s.mode == "jpeg":
        write_bytes(img, r.payload)
    else:
        h, w = s.imgsz
        frame = np.frombuffer(r.payload, np.uint8).reshape(h, w, 3)
        (left, top), (nw, nh) = r.pad, r.new_size
        write_bytes(img, encode_jpeg(frame[top : top + nh, left : left + nw], 95))
    rows = "".join(f"{c} {x:.8f} {y:.8f} {bw:.8f} {bh:.8f}\n" for c, (x, y, bw, bh) in zip(r.cls.tolist(), r.boxes.tolist(), strict=True))
    write_text(lbl, rows)
