"""Training shapes and the letterbox, shared by the raw store writer and every loader.

Shapes are (height, width) in torch order. Users write resolutions as ``WIDTHxHEIGHT``
(``"1440x808"``); rectangular shapes are padded up to the model stride (808 -> 832).
The letterbox matches Ultralytics' evaluation path (``BaseDataset.load_image`` + ``LetterBox``
with ``scaleup=False``): scale by min(H/h0, W/w0), size ``ceil`` then clipped, INTER_LINEAR, centred
padding with Ultralytics' rounding, fill 114.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["PAD_VALUE", "Imgsz", "Letterbox", "parse_wxh", "parse_imgsz", "letterbox_params", "letterbox", "format_imgsz",
           "rect_val_shape", "paint_letterbox"]

PAD_VALUE = 114


def parse_wxh(text: str) -> tuple[int, int]:
    """``"1440x808"`` -> (1440, 808): width x height, as resolutions are written; both positive.

    The one parser of ``WIDTHxHEIGHT`` text in sainet (image sizes, training shapes, source descriptions).
    """
    parts = str(text).lower().strip().split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        raise ValueError(f"{text!r}: expected WIDTHxHEIGHT like 1440x808") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"{text!r}: width and height must be positive")
    return w, h


class Imgsz(NamedTuple):
    """A training shape (H, W) that has been parsed and padded to stride 32: what `parse_imgsz`
    returns. It is a plain ``(h, w)`` tuple to everything else (equality, JSON, numpy shapes, its
    repr); its type only records that parsing is done, so a value parsed at the edge (the CLI, a
    `TrainSettings`) crosses the settings, the trainer and `loaders.build_loader` without being
    parsed again."""

    h: int
    w: int

    def __repr__(self) -> str:
        return tuple.__repr__(self)


def parse_imgsz(value: int | str | tuple[int, int] | list[int], stride: int = 32) -> tuple[int, int]:
    """int (square), (h, w) tuple, or ``"WxH"`` / ``"N"`` string -> (H, W) rounded up to `stride`
    (an `Imgsz` at the default stride 32). An `Imgsz` is already parsed and is returned as it is."""
    if isinstance(value, Imgsz) and stride == 32:
        return value
    if isinstance(value, str):
        text = value.lower().strip()
        if "x" in text:
            w, h = parse_wxh(text)
        else:
            try:
                w = h = int(text)
            except ValueError:
                raise ValueError(f"imgsz {value!r}: expected an int or WIDTHxHEIGHT like 1440x808") from None
    elif isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"imgsz {value!r}: expected (height, width)")
        h, w = (int(v) for v in value)
    else:
        h = w = int(value)
    if h <= 0 or w <= 0:
        raise ValueError(f"imgsz {value!r} must be positive")
    hw = math.ceil(h / stride) * stride, math.ceil(w / stride) * stride
    return Imgsz(*hw) if stride == 32 else hw


def format_imgsz(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


@dataclass(frozen=True, slots=True)
class Letterbox:
    ratio: float  # scale applied to the original image
    new_w: int  # size of the scaled image inside the canvas
    new_h: int
    left: int  # padding before the image
    top: int


def letterbox_params(h0: int, w0: int, H: int, W: int, fit: tuple[int, int] | None = None) -> Letterbox:
    """Where a h0 x w0 image lands in an H x W canvas: sized to fit the canvas, or `fit` (h, w) when
    given (Ultralytics' rect val: the long side at imgsz, then padded into the batch's larger shape;
    never larger than the canvas), centred with Ultralytics' rounding."""
    fh, fw = (H, W) if fit is None else (min(fit[0], H), min(fit[1], W))
    r = min(fh / h0, fw / w0)
    new_w, new_h = min(math.ceil(w0 * r), fw), min(math.ceil(h0 * r), fh)
    dw, dh = (W - new_w) / 2, (H - new_h) / 2
    return Letterbox(r, new_w, new_h, round(dw - 0.1), round(dh - 0.1))


def letterbox(img: np.ndarray, H: int, W: int, out: np.ndarray | None = None,
              fit: tuple[int, int] | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize `img` (HxWx3 uint8) into an HxW canvas filled with 114 (sized to `fit` when given:
    `letterbox_params`); writes into `out` if given."""
    h0, w0 = img.shape[:2]
    p = letterbox_params(h0, w0, H, W, fit)
    return paint_letterbox(img, p, out if out is not None else np.empty((H, W, 3), np.uint8)), p


def paint_letterbox(img: np.ndarray, p: Letterbox, canvas: np.ndarray) -> np.ndarray:
    """Draw `img` at `p` (its resize, bilinear as Ultralytics' ``cv2.resize``) into `canvas`, 114 around it."""
    h0, w0 = img.shape[:2]
    canvas[...] = PAD_VALUE
    region = canvas[p.top : p.top + p.new_h, p.left : p.left + p.new_w]
    if (p.new_h, p.new_w) == (h0, w0):
        region[...] = img
    else:
        cv2.resize(img, (p.new_w, p.new_h), dst=region, interpolation=cv2.INTER_LINEAR)
    return canvas


def rect_val_shape(sizes: np.ndarray, imgsz: int, stride: int = 32, pad: float = 0.5) -> Imgsz | None:
    """Ultralytics' rectangular val shape (``BaseDataset.set_rectangle`` with its val ``pad`` 0.5) for
    one batch holding every image of `sizes` ((n, 2) width, height) at square `imgsz`: the shape of
    every one of its val batches when the images share one aspect ratio, and of its widest batch
    otherwise. None when the images are of both orientations (Ultralytics then sorts them into
    batches of different shapes; one shape for all would be the square plus padding)."""
    wh = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    if not len(wh) or not (wh > 0).all():  # no images, or a size no image has (the loader names such a record)
        return None
    ar = wh[:, 1] / wh[:, 0]  # h / w, as Ultralytics'
    lo, hi = float(ar.min()), float(ar.max())
    if lo < 1 < hi:
        return None
    shape = [hi, 1.0] if hi < 1 else [1.0, 1 / lo] if lo > 1 else [1.0, 1.0]
    h, w = (np.ceil(np.array(shape) * imgsz / stride + pad).astype(int) * stride).tolist()
    return Imgsz(int(h), int(w))
