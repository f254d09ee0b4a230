"""Hardware profiles (configs/profiles/*.yaml) and training stages (configs/train/*.yaml).

They ship inside the installed package; `load(kind, name)` reads one with yaml.safe_load.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["config_dir", "names", "load"]


def config_dir(kind: str) -> Path:
    """Folder of one kind of config: "profiles" or "train"."""
    return Path(str(resources.files(__name__) / kind))


def names(kind: str) -> list[str]:
    return sorted(p.stem for p in config_dir(kind).glob("*.yaml"))


def load(kind: str, name: str) -> dict[str, Any]:
    path = config_dir(kind) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} config {name!r} (have: {', '.join(names(kind))})")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping")
    return doc
