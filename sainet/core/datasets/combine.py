"""Several sources read as one dataset, classes unified and selected by name.

``sainet pack FASDD_CV FASDD_UAV FASDD_RS --to ...`` combines subsets whose class ids may differ:
a class is its name, so every source's ids are mapped to the store's list by name. With
``classes=["smoke"]`` only those classes are kept, in that order (stage 2 of the FASDD -> PyroSDIS
workflow keeps smoke alone); a name no source has is refused. Boxes of other classes are counted in
`filtered`, never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from sainet.core.datasets.base import BoxTally, Importer, Problem, Sample
from sainet.core.errors import DatasetError

__all__ = ["SourceSet"]


class SourceSet:
    """One or more opened sources; `samples()` yields them in order with store class ids."""

    def __init__(self, paths: Sequence[str | Path], layout: str | None = None,
                 class_ids: dict[int, str] | None = None, classes: Sequence[str] | None = None) -> None:
        from sainet.core.datasets import open_dataset  # the registry imports this package's modules

        if not paths:
            raise DatasetError("no source given")
        self.paths = [Path(p) for p in paths]
        self._args = (layout, class_ids, list(classes) if classes else None)
        self.importers: list[Importer] = [open_dataset(p, layout, class_ids) for p in self.paths]
        self.selected = list(dict.fromkeys(classes)) if classes else None
        self.names: list[str] = list(self.selected) if self.selected else []
        self.filtered: Counter = Counter()  # class name -> boxes left out by `classes`
        self._prefixes = self._key_prefixes()
        if self.selected:
            have = {n for imp in self.importers for n in imp.names}
            missing = [n for n in self.selected if n not in have]
            if missing and all(imp.names for imp in self.importers):
                raise DatasetError(f"--classes {','.join(self.selected)}: {', '.join(missing)} not in the source "
                                   f"classes {sorted(have)}")

    def reopen(self) -> SourceSet:
        """The same sources opened afresh (a second pass without doubling problems and counts)."""
        layout, class_ids, classes = self._args
        return SourceSet(self.paths, layout, class_ids, classes)

    def _key_prefixes(self) -> list[str]:
        if len(self.importers) == 1:
            return [""]
        seen: Counter = Counter()
        out = []
        for imp in self.importers:
            name = imp.root.name
            seen[name] += 1
            out.append(f"{name}/" if seen[name] == 1 else f"{name}~{seen[name]}/")
        return out

    @property
    def layout(self) -> str:
        return "+".join(dict.fromkeys(imp.layout for imp in self.importers))

    @property
    def source(self) -> str:
        return ", ".join(str(p.resolve()) for p in self.paths)

    @property
    def problems(self) -> list[Problem]:
        return [p for imp in self.importers for p in imp.problems]

    @property
    def notes(self) -> list[str]:
        many = len(self.importers) > 1
        return [f"{imp.root.name}: {n}" if many else n for imp in self.importers for n in imp.notes]

    @property
    def tally(self) -> BoxTally:
        total = BoxTally()
        for imp in self.importers:
            t = imp.tally
            total.read, total.kept, total.clipped = total.read + t.read, total.kept + t.kept, total.clipped + t.clipped
            total.dropped.update(t.dropped)
        return total

    def class_map(self) -> list[dict[str, object]]:
        """Per source: its class names and the store id each maps to (None: not kept)."""
        return [{"source": str(imp.root), "names": {n: (self.names.index(n) if n in self.names else None)
                                                   for n in imp.names}} for imp in self.importers]

    def _lookup(self, imp: Importer) -> np.ndarray:
        """Source class id -> store class id (-1: not selected)."""
        ids = []
        for n in imp.names:
            if n not in self.names and self.selected is None:
                self.names.append(n)
            ids.append(self.names.index(n) if n in self.names else -1)
        return np.asarray(ids, np.int64)

    def samples(self) -> Iterator[Sample]:
        for imp, prefix in zip(self.importers, self._prefixes, strict=True):
            lookup, known = self._lookup(imp), len(imp.names)
            for s in imp.samples():
                if len(imp.names) != known:  # a YOLO source without names learns them while reading
                    lookup, known = self._lookup(imp), len(imp.names)
                mapped = lookup[s.cls] if len(s.cls) else s.cls
                keep = mapped >= 0
                for c in s.cls[~keep]:
                    self.filtered[imp.names[c]] += 1
                yield replace(s, key=prefix + s.key, cls=mapped[keep].astype(np.int32), boxes=s.boxes[keep])
