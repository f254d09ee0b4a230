"""Augmentation hyperparameters, with Ultralytics' names, defaults and meanings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Hyp"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hyp:
    hsv_h: float = 0.015  # hue gain (fraction)
    hsv_s: float = 0.7  # saturation gain (fraction)
    hsv_v: float = 0.4  # value gain (fraction)
    degrees: float = 0.0  # rotation (+/- deg)
    translate: float = 0.1  # translation (+/- fraction of the output size)
    scale: float = 0.5  # scale gain (+/-)
    shear: float = 0.0  # shear (+/- deg)
    perspective: float = 0.0  # not supported (affine only); must be 0
    flipud: float = 0.0  # probability
    fliplr: float = 0.5  # probability
    mosaic: float = 1.0  # probability
    mixup: float = 0.0  # probability
    copy_paste: float = 0.0  # needs segments: a no-op for box-only data (warned)
    close_mosaic: int = 10  # epochs at the end with mosaic off

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Hyp:
        """Take the augmentation keys of an Ultralytics hyp/cfg dict; other keys are ignored."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        hyp = cls(**{k: type(getattr(cls, k))(v) for k, v in d.items() if k in names and v is not None})
        if hyp.perspective:
            raise ValueError("perspective > 0 is not supported by sainet's affine plan; set it to 0")
        if hyp.copy_paste > 0:
            log.warning("copy_paste=%s has no effect: it needs segments and these datasets have boxes only", hyp.copy_paste)
        return hyp

    @classmethod
    def off(cls) -> Hyp:
        """Every gain and probability 0: train mode then equals eval mode."""
        return cls(hsv_h=0, hsv_s=0, hsv_v=0, translate=0, scale=0, fliplr=0, mosaic=0, mixup=0, close_mosaic=0)
