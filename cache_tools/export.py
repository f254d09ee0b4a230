"""`sainet export`: a store back to an Ultralytics YOLO folder (images/, labels/, data.yaml).

jpeg stores give byte-identical image files. raw stores hold letterboxed frames: the image region
is cropped out of the frame and written as JPEG (quality 95), which re-encodes, and is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from cache_tools.store import open_store
from sainet.errors import StoreExistsError
from sainet.imaging import encode_jpeg

__all__ = ["export_store"]

log = logging.getLogger(__name__)


def export_store(store_path: str | Path, out: str | Path, *, force: bool = False,
                 progress: Callable[[int], None] | None = None) -> int:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise StoreExistsError(f"{out} exists and is not empty; pass --force to write into it")
    n = 0
    with open_store(store_path) as s:
        if s.mode == "raw":
            log.warning("%s holds raw frames: exported images are re-encoded as JPEG (quality 95)", s.path)
        used: set[tuple[str, str]] = set()
        for i in range(len(s)):
            r = s[i]
            name = r.name
            if (r.split, name) in used:  # names are unique per source; keep them unique per split here too
                name = f"{Path(name).stem}_{i}{Path(name).suffix}"
            used.add((r.split, name))
            img_dir, lbl_dir = out / "images" / r.split, out / "labels" / r.split
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            if s.mode == "jpeg":
                (img_dir / name).write_bytes(r.payload)
            else:
                h, w = s.imgsz
                frame = np.frombuffer(r.payload, np.uint8).reshape(h, w, 3)
                (left, top), (nw, nh) = r.pad, r.new_size
                name = str(Path(name).with_suffix(".jpg"))
                (img_dir / name).write_bytes(encode_jpeg(frame[top : top + nh, left : left + nw], 95))
            rows = "".join(f"{c} {x:.8f} {y:.8f} {bw:.8f} {bh:.8f}\n" for c, (x, y, bw, bh) in zip(r.cls.tolist(), r.boxes.tolist(), strict=True))
            (lbl_dir / (Path(name).stem + ".txt")).write_text(rows)
            n += 1
            if progress:
                progress(1)
        # No `path`: Ultralytics then resolves the splits against this file's folder.
        cfg = {**{sp: f"images/{sp}" for sp in s.splits}, "names": dict(enumerate(s.classes))}
    (out / "data.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return n
