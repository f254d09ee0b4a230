"""Training that survives preemption: content fingerprints, atomic checkpoints, SIGTERM/SIGUSR1,
telemetry once per epoch after a resume, elastic mid-epoch resume, the Ultralytics hooks.

Multi-process tests start their processes in a session of their own and kill that process group
when they end, whatever happens.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from cache_tools import PackOptions, pack
from sainet.train.distributed import store_fingerprint


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from sainet.synth import synthesize

    root = tmp_path_factory.mktemp("resume")
    synthesize(root / "ds", images=12, size=(96, 64), seed=1, val_fraction=0.25, background=0.1)
    return root / "ds"


@pytest.fixture(scope="module")
def store(source) -> Path:
    pack(source, source.parent / "store", PackOptions(container="lmdb"))
    return source.parent / "store"


# --------------------------------------------------------------------------------------- fingerprint
def test_two_packs_of_the_same_source_share_a_content_fingerprint(source, store, tmp_path, monkeypatch):
    """Another path, another time: the same fingerprint (the index bytes differ); another option,
    record set or label: another fingerprint."""
    from cache_tools.format import INDEX_NAME

    moved = tmp_path / "elsewhere" / "ds"
    shutil.copytree(source, moved)
    monkeypatch.setattr(time, "strftime", lambda *_: "2031-01-01T00:00:00+0000")  # packed "later"
    again = tmp_path / "node1" / "store"
    pack(moved, again, PackOptions(container="lmdb"))
    assert (again / INDEX_NAME).read_bytes() != (store / INDEX_NAME).read_bytes()
    assert store_fingerprint(again) == store_fingerprint(store)
    other_option = tmp_path / "shards"
    pack(source, other_option, PackOptions(container="shards"))
    label = next(p for p in sorted(moved.rglob("*.txt")) if p.read_text().strip() and "labels" in p.parts)
    first, *rest = label.read_text().splitlines()
    label.write_text("\n".join([" ".join(["0", *first.split()[1:]]) if first.split()[0] != "0"
                                else " ".join(["1", *first.split()[1:]]), *rest]) + "\n")
    relabelled = tmp_path / "relabelled"
    pack(moved, relabelled, PackOptions(container="lmdb"))
    image = next(p for p in sorted(moved.rglob("*.jpg")) if "train" in str(p))
    image.unlink()
    fewer = tmp_path / "fewer"
    pack(moved, fewer, PackOptions(container="lmdb"))
    prints = [store_fingerprint(s).digest for s in (store, other_option, relabelled, fewer)]
    assert len(set(prints)) == 4, prints
