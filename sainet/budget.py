"""Memory budget of a training run: store, loader buffers, Ultralytics' equivalents, VRAM.

Loader buffers for sainet: `prefetch` finished batches queued, one batch being rendered, and its
decoded sources (threads decode into reused per-slot buffers). Ultralytics' DataLoader holds
workers x prefetch_factor (2) batches, each worker a process with its own dataset copy; `cache=ram`
holds every image resized to imgsz, once per DDP rank.
VRAM is an estimate from the model scale (bytes of activations per input pixel at batch 1,
fitted to Ultralytics' reported GPU_mem for YOLOv8 n/s/m/l/x), plus weights and optimizer state.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

__all__ = ["Budget", "estimate_budget", "VRAM_BYTES_PER_PIXEL"]

#: Training activations per input pixel per image (AMP), by YOLOv8 scale.
VRAM_BYTES_PER_PIXEL = {"n": 380.0, "s": 640.0, "m": 1070.0, "l": 1530.0, "x": 2140.0}
_PARAMS = {"n": 3.2e6, "s": 11.2e6, "m": 25.9e6, "l": 43.7e6, "x": 68.2e6}
_ULTRA_WORKER_BYTES = 1.2e9  # a DataLoader worker process (torch + dataset copy), measured order of magnitude


def model_scale(model: str) -> str:
    m = re.search(r"yolov?\d+([nsmlx])", str(model).lower())
    return m.group(1) if m else "s"


@dataclass
class Budget:
    frame_bytes: int
    sainet_loader_bytes: int  # per rank
    ultralytics_loader_bytes: int  # per rank
    ultralytics_ram_cache_bytes: int  # per rank
    vram_bytes: int  # per GPU

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_budget(*, images: int, imgsz: tuple[int, int], batch: int, threads: int, prefetch: int, workers: int,
                    model: str = "yolov8s.yaml", source_hw: tuple[int, int] | None = None, amp: bool = True) -> Budget:
    H, W = imgsz
    frame = H * W * 3
    sh, sw = source_hw or imgsz
    src_frame = sh * sw * 3
    sainet = (prefetch + 1) * batch * frame + batch * src_frame + threads * 2 * frame
    ultra = workers * 2 * batch * frame + workers * int(_ULTRA_WORKER_BYTES)
    r = max(H, W) / max(sh, sw)  # Ultralytics caches images with the long side resized to imgsz
    cache = int(images * sh * sw * 3 * r * r)
    scale = model_scale(model)
    act = VRAM_BYTES_PER_PIXEL[scale] * batch * H * W * (1.0 if amp else 1.8)
    vram = int(act + _PARAMS[scale] * 16 + 0.6e9)  # weights+grads+optimizer (fp32) + CUDA context
    return Budget(frame, int(sainet), int(ultra), cache, vram)
