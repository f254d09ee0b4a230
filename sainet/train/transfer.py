"""Classes between training stages, by name.

Stage 1 trains FASDD {fire, smoke}; stage 2 trains PyroSDIS {smoke} from stage 1's best.pt. Two
rules keep that mapping explicit:

* `check_stage_classes`: before a stage trains, its config's ``classes`` are checked against the
  store's class names. A class the store lacks is refused; so is a store holding classes the stage
  does not name (``sainet pack SRC --classes smoke`` makes a store of exactly the stage's classes),
  unless the user asked Ultralytics to merge every class into one (``--set single_cls=true``).
* `carry_class_rows`: Ultralytics transfers pretrained tensors whose shapes match, so a head built
  for another class count gets a freshly initialised classification layer (and, in releases from
  8.3.x on that have ``cls_remap``, rows re-mapped by name). After that load, the rows of the
  Detect head's classification convs (the last conv of every ``cv3`` branch: one weight row and
  one bias per class) are copied from the pretrained head to the new indices of the classes both
  heads name: smoke, class 1 in stage 1, becomes class 0 in stage 2 with what stage 1 learned.
  Doing it here as well makes the result the same whatever the installed Ultralytics does, and
  says by name what was carried.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sainet.core.errors import ClassMappingError

__all__ = ["ClassCarry", "check_stage_classes", "match_classes", "carry_class_rows", "HEAD_BRANCHES"]

log = logging.getLogger(__name__)

#: Detect-head attributes whose branches end in a per-class conv (``one2one_cv3``: end-to-end heads).
HEAD_BRANCHES = ("cv3", "one2one_cv3")


def _norm(name: Any) -> str:
    return str(name).strip().lower()


def check_stage_classes(stage: int, classes: Sequence[str], names: Mapping[int, str], store: str, *,
                        merge: bool = False) -> None:
    """Refuse a store whose classes are not exactly the stage's (compared by name, case-insensitive).

    `names` are the store's classes by index. With `merge` (the user set ``single_cls`` on purpose)
    extra classes are allowed: Ultralytics trains them as one.
    """
    have = [str(names[i]) for i in sorted(names)]
    have_n = {_norm(n) for n in have}
    want_n = {_norm(c) for c in classes}
    missing = [c for c in classes if _norm(c) not in have_n]
    extra = [n for n in have if _norm(n) not in want_n]
    shown = ", ".join(have) or "none"
    if missing:
        raise ClassMappingError(f"stage {stage} trains {', '.join(classes)}, but {store} has no class "
                                f"{', '.join(repr(c) for c in missing)} (its classes: {shown})",
                                store=store, have=have, missing=missing, extra=extra)
    if extra and merge:
        log.warning("stage %d: single_cls merges every class of %s (%s) into one", stage, store, shown)
    elif extra:
        keep = ",".join(classes)
        raise ClassMappingError(f"stage {stage} trains {', '.join(classes)} only, but {store} also holds "
                                f"{', '.join(extra)} (its classes: {shown}); make a store of the stage's classes with "
                                f"`sainet pack SRC --classes {keep} --to STORE` (or merge every class into one on "
                                "purpose with --set single_cls=true)", store=store, have=have, missing=[], extra=extra)


@dataclass(frozen=True)
class ClassCarry:
    """One class whose head rows move from the pretrained index `src` to the new index `dst`."""

    name: str
    src: int
    dst: int


def match_classes(src_names: Mapping[int, str], dst_names: Mapping[int, str]) -> list[ClassCarry]:
    """The classes both heads name (by name, case-insensitive), with their old and new indices."""
    lookup = {_norm(v): int(k) for k, v in src_names.items()}
    return [ClassCarry(str(v), lookup[_norm(v)], int(k)) for k, v in sorted(dst_names.items())
            if _norm(v) in lookup]


def _class_convs(model: Any) -> list[Any]:
    """The last conv of every classification branch of the model's Detect head (in branch order)."""
    head = model.model[-1] if hasattr(model, "model") else None
    convs = []
    for attr in HEAD_BRANCHES:
        for branch in getattr(head, attr, None) or ():
            convs.append(branch[-1])
    return convs


def carry_class_rows(model: Any, pretrained: Any, dst_names: Mapping[int, str], *, origin: str = "pretrained",
                     verbose: bool = True) -> list[ClassCarry]:
    """Copy the pretrained head's per-class rows into `model`'s head, matched by class name.

    `pretrained` is the model the weights came from (its ``names`` are its classes); `dst_names`
    are the new model's classes. Nothing happens when both name the same classes in the same order
    (the shape-matched transfer already copied them). Returns what was carried.
    """
    import torch

    src_names = dict(getattr(pretrained, "names", None) or {})
    dst_names = dict(dst_names)
    carries = match_classes(src_names, dst_names)
    if len(src_names) == len(dst_names) and all(c.src == c.dst for c in carries) and len(carries) == len(dst_names):
        return []
    if not carries:
        if verbose and src_names:
            log.warning("%s names no class of %s: the head's class rows start fresh", origin, sorted(dst_names.values()))
        return []
    pairs = list(zip(_class_convs(model), _class_convs(pretrained), strict=False))  # shapes checked below
    src_idx = torch.tensor([c.src for c in carries])
    dst_idx = torch.tensor([c.dst for c in carries])
    done = 0
    with torch.no_grad():
        for dst, src in pairs:
            if (dst.out_channels, src.out_channels) != (len(dst_names), len(src_names)) or \
                    dst.weight.shape[1:] != src.weight.shape[1:]:
                continue  # a head of another width (model scale): nothing to carry in this branch
            dst.weight[dst_idx] = src.weight[src_idx].to(dst.weight)
            if dst.bias is not None and src.bias is not None:
                dst.bias[dst_idx] = src.bias[src_idx].to(dst.bias)
            done += 1
    if not done:
        log.warning("%s: its head's class convs do not fit this model's (another model scale?): nothing carried", origin)
        return []
    if verbose:
        for c in carries:
            log.info("%s: %s class %d → class %d (%d head convs)", c.name, origin, c.src, c.dst, done)
    return carries
