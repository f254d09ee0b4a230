"""Shared fixtures: every test makes its own small data under tmp_path."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

ASSETS = Path(__import__("ultralytics").__file__).parent / "assets"


@pytest.fixture(scope="session")
def bus_jpg() -> bytes:
    """A real photo shipped with Ultralytics (810x1080)."""
    return (ASSETS / "bus.jpg").read_bytes()


def make_image(w: int = 64, h: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return np.ascontiguousarray(img)


def pil_bytes(img: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def synth_yolo(tmp_path_factory) -> Path:
    """A small synthetic YOLO dataset shared (read-only) by many tests."""
    from sainet.synth import synthesize

    out = tmp_path_factory.mktemp("synth_yolo")
    synthesize(out, images=12, size=(192, 108), seed=3, background=0.2)
    return out


def pytest_collection_modifyitems(config, items) -> None:
    """Every test marked `gpu` is skipped, with the reason, where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: none visible to torch on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
