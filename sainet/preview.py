"""`sainet preview STORE`: a JPEG grid of the augmented batches the trainer will see, boxes and class names drawn.

The batch comes from `loaders.build_loader` with the arguments `SainetTrainer.get_dataloader` gives it
(Ultralytics' defaults, then the stage config and `--set` values, checked by `sainet.validate`; the
train split, shuffled, augmented), so what is drawn is what training reads: mosaic tiles, flips, HSV,
the letterbox padding and the rectangular shape. Drawn with OpenCV's built-in Hershey font: no font
file, no download.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from sainet.core.errors import SettingsError

__all__ = ["preview_batch", "draw_grid", "write_preview"]

log = logging.getLogger(__name__)

_COLOURS = [(56, 56, 255), (255, 157, 151), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72)]  # BGR


def preview_batch(store: str | Path, *, imgsz: tuple[int, int], batch: int = 16, hyp: dict[str, Any] | None = None,
                  seed: int = 0, augment: bool = True, split: str = "train") -> tuple[dict[str, Any], list[str]]:
    """The first training batch of `store` as the trainer's loader makes it, and the store's class names."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from cache_tools.store import open_store
    from loaders import build_loader
    from loaders.backends import kind_for_container

    with open_store(store) as st:
        names, container, splits = list(st.classes), st.container, list(st.splits)
    if split not in splits:
        raise SettingsError(f"{store}: no {split!r} split to draw from (it has {', '.join(splits)})")
    args = {**DEFAULT_CFG_DICT, **(hyp or {})}
    loader = build_loader(store, kind_for_container(container), batch_size=batch, imgsz=imgsz, split=split,
                          augment=augment, hyp=args, seed=seed, shuffle=augment, device="cpu")
    try:
        first = next(iter(loader))
    finally:
        loader.close()
    return first, names


def draw_grid(b: dict[str, Any], names: list[str], max_width: int = 2048) -> np.ndarray:
    """The batch's images side by side (BGR uint8), each box drawn with its class name."""
    import cv2

    imgs = b["img"].numpy() if hasattr(b["img"], "numpy") else np.asarray(b["img"])
    n, _, h, w = imgs.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = min(1.0, max_width / (cols * w))
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    grid = np.full((rows * th, cols * tw, 3), 114, np.uint8)
    cls = np.asarray(b["cls"]).reshape(-1).astype(int)
    boxes = np.asarray(b["bboxes"]).reshape(-1, 4)
    idx = np.asarray(b["batch_idx"]).reshape(-1).astype(int)
    for i in range(n):
        tile = cv2.cvtColor(np.ascontiguousarray(imgs[i].transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)
        tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA) if scale < 1 else tile.copy()
        for c, (x, y, bw, bh) in zip(cls[idx == i], boxes[idx == i], strict=True):
            colour = _COLOURS[c % len(_COLOURS)]
            p1 = (round((x - bw / 2) * tw), round((y - bh / 2) * th))
            p2 = (round((x + bw / 2) * tw), round((y + bh / 2) * th))
            cv2.rectangle(tile, p1, p2, colour, 1, cv2.LINE_AA)
            label = names[c] if 0 <= c < len(names) else str(c)
            cv2.putText(tile, label, (p1[0], max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        r, col = divmod(i, cols)
        grid[r * th:(r + 1) * th, col * tw:(col + 1) * tw] = tile
    return grid


def write_preview(store: str | Path, out: str | Path, **kw: Any) -> tuple[Path, dict[str, Any]]:
    """`preview_batch` drawn by `draw_grid` into the JPEG `out`; returns it and facts about the batch."""
    import cv2

    b, names = preview_batch(store, **kw)
    grid = draw_grid(b, names)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid, [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise SettingsError(f"{out}: cannot write a JPEG there (the name must end in .jpg)", "--out")
    n, _, h, w = tuple(b["img"].shape)
    return out, {"images": int(n), "shape": f"{w}x{h}", "boxes": int(len(b["cls"])), "grid": f"{grid.shape[1]}x{grid.shape[0]}"}
