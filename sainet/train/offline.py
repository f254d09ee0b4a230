"""Keep Ultralytics offline and quiet: no settings sync, no font/AMP/update downloads.

Must run before `ultralytics` is imported (its config dir is read at import time).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["prepare_offline"]


def prepare_offline(config_dir: str | os.PathLike[str] | None = None) -> Path:
    """Set YOLO_OFFLINE and a writable YOLO_CONFIG_DIR holding a font named Arial.ttf; disable sync."""
    os.environ["YOLO_OFFLINE"] = "1"
    cfg = Path(config_dir or os.environ.get("YOLO_CONFIG_DIR") or Path.home() / ".config" / "sainet" / "ultralytics")
    cfg.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (cfg / name).exists() and dejavu.exists():
            shutil.copyfile(dejavu, cfg / name)  # Ultralytics looks here before it tries to download
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False, "hub": False} if "hub" in SETTINGS else {"sync": False})
    _patch_amp_check()
    return cfg


def _patch_amp_check() -> None:
    """Ultralytics' AMP check downloads a model on CUDA; check autocast locally instead."""
    import torch
    from ultralytics.engine import trainer as ul_trainer

    def check_amp(model: torch.nn.Module) -> bool:
        device = next(model.parameters()).device
        if device.type != "cuda":
            return False
        try:
            x = torch.randn(64, 64, device=device)
            with torch.autocast("cuda"):
                y = x @ x
            return bool(torch.isfinite(y).all())
        except RuntimeError:
            return False

    ul_trainer.check_amp = check_amp
