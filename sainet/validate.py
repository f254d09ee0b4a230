"""Every training setting checked before Ultralytics sees it: known key, type, range, and that it takes effect.

Ultralytics' own tables in `ultralytics.cfg` (`DEFAULT_CFG_DICT`, `CFG_FLOAT_KEYS`, `CFG_FRACTION_KEYS`,
`CFG_INT_KEYS`, `CFG_BOOL_KEYS`, `CFG_STR_KEYS`, `check_cfg`) are the source of truth for keys and types;
this module adds what Ultralytics accepts but then ignores or crashes on later:

- a key that is not an Ultralytics argument (Ultralytics prints its whole help and raises SyntaxError);
- a value of the wrong type or out of range, NaN and infinities included;
- a key sainet sets from its own option (`imgsz` from `--imgsz`, ...): the option is named instead;
- `lr0` / `momentum` given while `optimizer` is ``auto``: Ultralytics then ignores them ("optimizer=auto
  found, ignoring lr0"), so the stage-2 fine-tuning rate would never apply; refused, naming the fix;
- an augmentation sainet's loaders do not implement, with a value other than the default;
- `--model` / `--weights` that are not a model, and `--device` GPUs that are not visible.

Each refusal is a `SettingsError` naming where the value came from (``--set``, ``--config FILE``, ``stage 2``).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from sainet.core.errors import SettingsError

__all__ = ["check_hyp", "check_model", "check_weights", "check_device", "OPTIMIZERS", "OWNED_KEYS"]

#: Ultralytics' optimizer names (BaseTrainer.build_optimizer).
OPTIMIZERS = ("SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop", "MuSGD", "auto")
#: Ultralytics arguments sainet sets from its own options: given with --set they would fight the option.
OWNED_KEYS = {"data": "--data", "model": "--model", "imgsz": "--imgsz", "device": "--device", "batch": "--batch",
              "project": "--project", "name": "--name", "resume": "--resume", "pretrained": "--weights",
              "mode": None, "task": None}
#: Arguments sainet's loaders do not apply (their default is the only value that takes effect), and why.
_NOT_IN_SAINET_LOADERS = {
    "cutmix": "sainet's loaders do not implement cutmix",
    "perspective": "sainet's augmentation plan is affine (perspective must be 0)",
    "bgr": "sainet's loaders always give RGB",
    "cache": "a store is already the cache (Ultralytics' cache would be a second copy)",
    "fraction": "sainet's loaders read the whole store; pack the subset to train on",
    "rect": "train rectangular with --imgsz WIDTHxHEIGHT (mosaic and shuffle stay on)",
    "workers": "sainet's loaders decode in threads: use --threads",
}
#: Arguments with a lower bound Ultralytics does not check (ultralytics.cfg.CFG_INT_MIN covers the others).
_MIN = {"workers": 0, "close_mosaic": 0, "save_period": -1, "warmup_epochs": 0.0, "box": 0.0, "cls": 0.0,
        "dfl": 0.0, "time": 0.0}


def _closest(key: str, known: Any) -> str:
    near = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _check_one(key: str, value: Any, origin: str) -> Any:
    """One key=value against Ultralytics' tables; returns the value as Ultralytics will use it."""
    from ultralytics.cfg import CFG_FLOAT_KEYS, CFG_FRACTION_KEYS, CFG_INT_KEYS, DEFAULT_CFG_DICT, check_cfg

    if key not in DEFAULT_CFG_DICT and key != "save_dir":
        raise SettingsError(f"{key!r} is not an Ultralytics training argument{_closest(key, DEFAULT_CFG_DICT)}", origin)
    if key in OWNED_KEYS:
        option = OWNED_KEYS[key]
        how = f"use {option}" if option else "sainet trains detection only"
        raise SettingsError(f"{key} is set by sainet from its own option: {how}", origin)
    numeric = CFG_FLOAT_KEYS | CFG_FRACTION_KEYS | CFG_INT_KEYS
    if isinstance(value, str) and key in numeric:  # YAML reads 1e-3 (no dot) as text; Ultralytics' CLI takes it
        try:
            value = float(value)
        except ValueError:
            pass
        else:
            value = int(value) if key in CFG_INT_KEYS and value.is_integer() else value
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{key}={value}: not a finite number", origin)
    if isinstance(value, (dict, list)) and key not in ("fraction", "scale", "classes", "freeze", "augmentations"):
        raise SettingsError(f"{key}={value!r}: expected one value, not a {type(value).__name__}", origin)
    if isinstance(value, bool) and key in numeric:
        raise SettingsError(f"{key}={value}: expected a number, not a boolean", origin)
    cfg = {key: value}
    try:
        check_cfg(cfg, hard=True)
    except (TypeError, ValueError) as e:
        raise SettingsError(str(e).replace("'", ""), origin) from None
    value = cfg[key]
    if key in _MIN and isinstance(value, (int, float)) and value < _MIN[key]:
        raise SettingsError(f"{key}={value}: must be >= {_MIN[key]}", origin)
    if key == "optimizer" and str(value).lower() not in {o.lower() for o in OPTIMIZERS}:
        raise SettingsError(f"optimizer={value!r}: choose from {', '.join(OPTIMIZERS)}", origin)
    return value


def check_hyp(layers: list[tuple[str, dict[str, Any]]], *, sainet_loader: bool) -> dict[str, Any]:
    """Merge the setting layers (lowest first: stage config, --config, --epochs, --set), each entry checked.

    `layers` holds (where the values came from, the values). Returns the merged Ultralytics arguments.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT

    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, values in layers:
        for key, value in values.items():
            if not isinstance(key, str):
                raise SettingsError(f"{key!r}: an argument name must be text", where)
            merged[key] = _check_one(key, value, where)
            origin[key] = where
    optimizer = str(merged.get("optimizer", DEFAULT_CFG_DICT["optimizer"]))
    ignored = [k for k in ("lr0", "momentum") if k in merged]
    if optimizer.lower() == "auto" and ignored:
        key = ignored[0]
        raise SettingsError(f"{key}={merged[key]} would be ignored: Ultralytics' optimizer=auto picks its own {key}; "
                            f"name the optimizer too (e.g. --set optimizer=SGD or optimizer: AdamW)", origin[key])
    if sainet_loader:
        for key, why in _NOT_IN_SAINET_LOADERS.items():
            if key in merged and (merged[key] != DEFAULT_CFG_DICT.get(key) or key == "workers"):
                raise SettingsError(f"{key}={merged[key]} would have no effect: {why}", origin[key])
    return merged


def check_model(model: str, option: str = "--model") -> None:
    """A model yaml (a file, or a name Ultralytics ships such as yolov8s.yaml) or a .pt checkpoint."""
    text = str(model).strip()
    if not text:
        raise SettingsError("empty; give a model yaml (e.g. yolov8s.yaml) or a .pt checkpoint", option)
    suffix = Path(text).suffix.lower()
    if suffix in (".yaml", ".yml"):
        _check_model_yaml(text, option)
    elif suffix == ".pt":
        check_weights(text, option)
    else:
        raise SettingsError(f"{text}: not a model; give a model yaml (e.g. yolov8s.yaml) or a .pt checkpoint", option)


def _check_model_yaml(text: str, option: str) -> None:
    import yaml

    if Path(text).is_file():
        try:
            doc = yaml.safe_load(Path(text).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
            raise SettingsError(f"{text}: not a readable model yaml ({type(e).__name__})", option) from None
        if not isinstance(doc, dict) or not {"backbone", "head"} <= set(doc):
            raise SettingsError(f"{text}: not a model yaml (no backbone/head)", option)
        return
    from ultralytics.nn.tasks import yaml_model_load

    try:
        yaml_model_load(text)
    except (FileNotFoundError, OSError, ValueError, TypeError, KeyError):
        raise SettingsError(f"{text}: no such file, and not a model Ultralytics ships (e.g. yolov8s.yaml)", option) from None


def check_weights(path: str, option: str = "--weights") -> None:
    """A readable Ultralytics checkpoint (a dict with a model), not any file."""
    p = Path(str(path))
    if not p.is_file():
        raise SettingsError(f"{path}: no such file", option)
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(p))
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's, reported in one line
        raise SettingsError(f"{path}: not an Ultralytics checkpoint ({type(e).__name__})", option) from None
    if not isinstance(ckpt, dict) or not (ckpt.get("ema") or ckpt.get("model")):
        raise SettingsError(f"{path}: not an Ultralytics checkpoint (no model inside)", option)


def check_device(device: str | None, visible: int | None = None) -> None:
    """`--device 0,1` names GPUs this process can see; checked before anything spawns.

    `visible` is the number of CUDA devices (torch.cuda.device_count() when not given).
    """
    if device is None or device == "cpu":
        return
    if visible is None:
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = [int(i) for i in str(device).split(",")]
    missing = [i for i in wanted if i >= visible]
    if missing:
        seen = f"{visible} visible (0..{visible - 1})" if visible else "none visible"
        raise SettingsError(f"{device}: no CUDA GPU {', '.join(map(str, missing))} on this machine ({seen}); "
                            "use --device cpu" + (f" or indices below {visible}" if visible else ""), "--device")
