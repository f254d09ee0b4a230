"""`sainet preview`: one training batch, drawn, from the same loader path as training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache_tools import PackOptions, pack
from sainet.cli import app
from sainet.synth import synthesize

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview")
    synthesize(root / "src", images=10, size=(160, 96), seed=2, val_fraction=0.2)
    pack(root / "src", root / "store", PackOptions(container="shards"))
    return root / "store"


def test_preview_batch_is_the_trainers_first_batch(store):
    """The same arguments SainetTrainer.get_dataloader gives build_loader: the same pixels and boxes."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from loaders import build_loader
    from sainet.preview import preview_batch

    b, names = preview_batch(store, imgsz=(96, 160), batch=4, hyp={"mosaic": 1.0}, seed=3)
    loader = build_loader(store, "shm", batch_size=4, imgsz=(96, 160), split="train", augment=True,
                          hyp={**DEFAULT_CFG_DICT, "mosaic": 1.0}, seed=3, shuffle=True, device="cpu")
    try:
        ref = next(iter(loader))
    finally:
        loader.close()
    assert names == ["fire", "smoke"]
    assert tuple(b["img"].shape) == (4, 3, 96, 160)
    assert torch.equal(b["img"], ref["img"]) and torch.equal(b["bboxes"], ref["bboxes"])


def test_draw_grid_draws_each_box_in_its_class_colour():
    from sainet.preview import _COLOURS, draw_grid

    img = torch.full((2, 3, 64, 64), 114, dtype=torch.uint8)
    b = {"img": img, "cls": torch.tensor([[1.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]),
         "batch_idx": torch.tensor([1.0])}
    grid = draw_grid(b, ["fire", "smoke"])
    assert grid.shape == (64, 128, 3)  # two tiles side by side
    assert (grid[:, :64] == 114).all()  # the first image has no box
    edge = grid[16:48, 64 + 16]  # the box's left edge in the second tile
    assert (np.abs(edge.astype(int) - _COLOURS[1]).sum(axis=1) < 60).mean() > 0.8


def test_preview_cli_writes_a_jpeg_and_checks_its_settings(store, tmp_path):
    out = tmp_path / "p.jpg"
    res = runner.invoke(app, ["preview", str(store), "--imgsz", "160x96", "--batch", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:2] == b"\xff\xd8" and "4 training images of 160x96" in res.stdout
    assert "sainet's loader" in res.stdout
    bad = runner.invoke(app, ["preview", str(store), "--set", "perspective=0.1", "--out", str(out)])
    assert bad.exit_code == 2 and bad.stderr.startswith("error:")
