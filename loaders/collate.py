"""Collate stage: rendered pixels + the plan's boxes -> Ultralytics' detection batch dict.

| key | value |
|---|---|
| img | uint8 (B,3,H,W), RGB (on the CPU a view of a channels-last buffer; on the GPU the torch executor's output) |
| cls | float32 (N,1) |
| bboxes | float32 (N,4), xywh normalized to the padded output H,W |
| batch_idx | float32 (N,), sorted, grouping boxes by image |
| im_file, ori_shape, resized_shape, ratio_pad | tuples, one entry per image |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from loaders.augment.plan import BatchPlan
from loaders.sources import Source

if TYPE_CHECKING:
    import torch

__all__ = ["batch_dict", "collate", "collate_boxes", "plan_boxes"]


def plan_boxes(plan: BatchPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cls (N,1), bboxes (N,4) normalized xywh of the output, batch_idx (N,)) float32 numpy arrays
    from a plan, one array op per column over the whole batch (torch-free: what an assembler
    process sends to the trainer's)."""
    H, W = plan.out_hw
    counts = [len(ip.cls) for ip in plan.images]
    if not sum(counts):
        return np.zeros((0, 1), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    b = np.concatenate([ip.boxes.reshape(-1, 4) for ip in plan.images])
    xywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / W, (b[:, 1] + b[:, 3]) / 2 / H, (b[:, 2] - b[:, 0]) / W, (b[:, 3] - b[:, 1]) / H], 1)
    cls = np.concatenate([ip.cls.reshape(-1) for ip in plan.images]).reshape(-1, 1)
    idx = np.repeat(np.arange(len(counts)), counts)
    return cls.astype(np.float32), xywh.astype(np.float32), idx.astype(np.float32)


def collate_boxes(plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`plan_boxes` as torch tensors."""
    import torch  # imported here: assembler processes import this module and never need torch

    return tuple(torch.from_numpy(a) for a in plan_boxes(plan))  # type: ignore[return-value]


def batch_dict(img: Any, boxes: Sequence[Any], source: Source, used: Sequence[int], ratio_pad: Sequence[Any],
               out_hw: tuple[int, int]) -> dict:
    """The batch dict around `img` (B,3,H,W) and `boxes` (cls, bboxes, batch_idx tensors) for samples `used`."""
    H, W = out_hw
    cls, bboxes, batch_idx = boxes
    return {
        "img": img,
        "cls": cls, "bboxes": bboxes, "batch_idx": batch_idx,
        "im_file": tuple(source.names[i] for i in used),
        "ori_shape": tuple((int(source.sizes[i][1]), int(source.sizes[i][0])) for i in used),
        "resized_shape": tuple((H, W) for _ in used),
        "ratio_pad": tuple(ratio_pad),
    }


def collate(img: torch.Tensor, plan: BatchPlan, source: Source, used: list[int]) -> dict:
    """The batch dict around `img` (B,3,H,W) uint8 for samples `used` of `source`, rendered by `plan`."""
    return batch_dict(img, collate_boxes(plan), source, used, [ip.ratio_pad for ip in plan.images], plan.out_hw)
