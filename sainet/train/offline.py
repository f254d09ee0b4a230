"""Keep Ultralytics offline and quiet: no settings sync, no font/AMP/update downloads.

Must run before `ultralytics` is imported (its config dir is read at import time).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["prepare_offline", "replace_amp_check"]


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
    import torch

    if torch.cuda.is_available():  # on CPU, amp=False (run._overrides) means the check never runs
        replace_amp_check()
    return cfg


def _local_amp_check(model: object) -> bool:
    """AMP works when an autocast matmul on the model's CUDA device gives finite numbers."""
    import torch

    device = next(model.parameters()).device  # type: ignore[attr-defined]
    if device.type != "cuda":
        return False
    try:
        x = torch.randn(64, 64, device=device)
        with torch.autocast("cuda"):
            y = x @ x
        return bool(torch.isfinite(y).all())
    except RuntimeError:
        return False


def replace_amp_check() -> None:
    """Replace Ultralytics' AMP check with a local one, on CUDA only.

    Why a private hook: with ``amp=True`` Ultralytics' ``BaseTrainer._setup_train`` calls
    ``ultralytics.engine.trainer.check_amp``, which loads ``yolo26n.pt`` (a download) to compare FP32
    and AMP outputs; offline it fails. There is no public switch that keeps AMP on and skips the
    check (``amp=False`` turns AMP off; ``amp="bf16"`` changes the numerics). So the module-level
    name is rebound here, in this one place; tests/test_cli_settings.py fails loudly if Ultralytics
    stops calling it by that name.
    """
    from ultralytics.engine import trainer as ul_trainer

    if not hasattr(ul_trainer, "check_amp"):
        raise RuntimeError("ultralytics.engine.trainer.check_amp is gone: update sainet.train.offline.replace_amp_check")
    ul_trainer.check_amp = _local_amp_check
