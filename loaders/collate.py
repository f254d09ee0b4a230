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

import numpy as np
import torch

from loaders.augment.plan import BatchPlan
from loaders.sources import Source

__all__ = ["collate", "collate_boxes"]


def collate_boxes(plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cls (N,1), bboxes (N,4) normalized xywh of the output, batch_idx (N,)) from a plan (one array op per
    column over the whole batch)."""
    H, W = plan.out_hw
    counts = [len(ip.cls) for ip in plan.images]
    if not sum(counts):
        return torch.zeros((0, 1)), torch.zeros((0, 4)), torch.zeros(0)
    b = np.concatenate([ip.boxes.reshape(-1, 4) for ip in plan.images])
    xywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / W, (b[:, 1] + b[:, 3]) / 2 / H, (b[:, 2] - b[:, 0]) / W, (b[:, 3] - b[:, 1]) / H], 1)
    cls = np.concatenate([ip.cls.reshape(-1) for ip in plan.images]).reshape(-1, 1)
    idx = np.repeat(np.arange(len(counts)), counts)
    return (torch.from_numpy(cls.astype(np.float32)), torch.from_numpy(xywh.astype(np.float32)),
            torch.from_numpy(idx.astype(np.float32)))


def collate(img: torch.Tensor, plan: BatchPlan, source: Source, used: list[int]) -> dict:
    """The batch dict around `img` (B,3,H,W) uint8 for samples `used` of `source`, rendered by `plan`."""
    H, W = plan.out_hw
    cls, bboxes, batch_idx = collate_boxes(plan)
    return {
        "img": img,
        "cls": cls, "bboxes": bboxes, "batch_idx": batch_idx,
        "im_file": tuple(source.names[i] for i in used),
        "ori_shape": tuple((int(source.sizes[i][1]), int(source.sizes[i][0])) for i in used),
        "resized_shape": tuple((H, W) for _ in used),
        "ratio_pad": tuple(ip.ratio_pad for ip in plan.images),
    }
