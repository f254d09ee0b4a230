"""Hostile stores: every crafted-store case of issue 17 and seeded index/metadata mutations.

Each case runs verify, inspect, export and one loader epoch in a child process (a signal or a hang
is caught there); see tests/hostile.py for the outcome rules. 0 crashed, 0 silently wrong, 0 lost.
"""

from __future__ import annotations

import numpy as np
import pytest

from cache_tools import export_store, open_store, verify_store
from cache_tools.store import lmdb_required_bytes
from sainet.core.errors import StoreFormatError, UnsafeName
from tests.hostile import (
    CAT_MUTATIONS,
    CAT_STORES,
    FAST_MUTATIONS,
    SLOW_MUTATIONS,
    format_table,
    load_index,
    make_bases,
    mutation_jobs,
    run_jobs,
    store_cases,
    store_jobs,
    write_index,
)


def _assert_all_clean(outcomes) -> None:  # noqa: ANN001
    bad = [f"{o.result}: {o.case}: {o.detail}" for o in outcomes if o.result != "clean"]
    assert not bad, "\n".join(bad) + "\n" + format_table(outcomes)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return make_bases(tmp_path_factory.mktemp("hostile-bases"))


@pytest.fixture(scope="module")
def fast_outcomes(bases, tmp_path_factory):
    """The named cases and the fast mutations, in one batch of child processes."""
    work = tmp_path_factory.mktemp("hostile-stores")
    return run_jobs(store_jobs(bases, work / "named") + mutation_jobs(bases, work / "mut", FAST_MUTATIONS))


def test_every_named_crafted_store_is_refused_or_works(fast_outcomes):
    named = [o for o in fast_outcomes if o.category == CAT_STORES]
    assert len(named) == len(store_cases())
    _assert_all_clean(named)
    refused = {o.case for o in named if o.detail.startswith("refused")}
    assert "shard is a named pipe (was a hang)" in refused
    assert "lmdb: index without lmdb_bytes, data.mdb truncated (was SIGBUS)" in refused


def test_seeded_index_and_metadata_mutations(fast_outcomes):
    mutations = [o for o in fast_outcomes if o.category == CAT_MUTATIONS]
    assert len(mutations) == FAST_MUTATIONS
    _assert_all_clean(mutations)
    # the series is not trivial: it holds both stores verify refuses and stores it accepts
    assert {o.detail.split(" ")[0] for o in mutations} == {"refused", "accepted"}


@pytest.mark.slow
def test_seeded_mutations_long_series(bases, tmp_path):
    _assert_all_clean(run_jobs(mutation_jobs(bases, tmp_path, SLOW_MUTATIONS - FAST_MUTATIONS, start=FAST_MUTATIONS)))


def test_rejections_name_the_record_and_field(bases, tmp_path):
    import shutil

    store = tmp_path / "s"
    shutil.copytree(bases["shards-jpeg"], store)
    ix = load_index(store)
    ix.records["orig_w"][3] = 0
    write_index(store, ix)
    with pytest.raises(StoreFormatError, match=r"orig_w/orig_h is 0 \(first at row 3"):
        verify_store(store)
    ix.records["orig_w"][3] = 96
    ix.meta["bad"] = {"not": "a list"}
    write_index(store, ix)
    with pytest.raises(StoreFormatError, match="metadata field 'bad' is a dict"):
        open_store(store)


def test_export_refuses_a_link_out_and_writes_nothing_there(bases, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "images").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "images" / "train").symlink_to(elsewhere)
    with pytest.raises(UnsafeName, match="outside"):
        export_store(bases["shards-jpeg"], out, force=True)
    assert not any(elsewhere.iterdir())
    assert export_store(bases["shards-jpeg"], tmp_path / "fresh") == len(open_store(bases["shards-jpeg"]))


def test_lmdb_size_from_its_meta_pages_matches_the_file(bases):
    data = bases["lmdb-jpeg"] / "data.mdb"
    need = lmdb_required_bytes(data)
    assert need == data.stat().st_size  # what the pack wrote, found without the index's lmdb_bytes
    assert np.iinfo(np.int64).max > need > 8192
