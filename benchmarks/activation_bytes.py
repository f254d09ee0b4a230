"""Activation bytes per input pixel of YOLOv8 n/s/m/l/x in training: the constants of sainet.budget.

Counts the bytes of every tensor autograd saves for the backward pass of one training forward
(`torch.autograd.graph.saved_tensors_hooks`, deduplicated by storage, parameters left out) at two
shapes and reports the slope, bytes per input pixel per image: the part that grows with batch x H x W
(weights cast once per step under autocast are a constant and drop out of the slope). No allocator,
no RSS: the count is exact and the same on any machine.

    python benchmarks/activation_bytes.py                 # fp32 and autocast (bf16 on CPU, fp16 on CUDA)
    python benchmarks/activation_bytes.py --scales n s --json out.json
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> int:
    """Bytes autograd keeps for backward after one training forward of `x`."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    model.train()
    dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(x.device.type, dtype=dtype, enabled=amp):
        model(x)
    return sum(n for ptr, n in seen.items() if ptr not in params)


def per_pixel(scale: str, amp: bool, device: str, shapes: tuple[tuple[int, int, int], ...]) -> float:
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(f"yolov8{scale}.yaml", nc=2, verbose=False).to(device)
    points = [(b * h * w, saved_bytes(model, torch.rand(b, 3, h, w, device=device), amp)) for b, h, w in shapes]
    (p0, n0), (p1, n1) = points
    return (n1 - n0) / (p1 - p0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", nargs="+", default=list("nsmlx"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    shapes = ((1, 160, 256), (2, 320, 320))
    rows = []
    for s in a.scales:
        row = {"scale": s, "device": a.device, "fp32": per_pixel(s, False, a.device, shapes),
               "amp": per_pixel(s, True, a.device, shapes)}
        rows.append(row)
        print(f"yolov8{s} {a.device}: fp32 {row['fp32']:.1f} B/px, amp {row['amp']:.1f} B/px", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"shapes": shapes, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
