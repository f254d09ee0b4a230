"""PyroSDIS and FASDD as published: layouts, class conventions, box hygiene, duplicates and leaks,
TIFF, multi-source packs and a streaming pack, checked in exact numbers against `PLANTED`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import sainet.core.datasets.pyrosdis as pyrosdis_mod
from cache_tools import open_store
from cache_tools.pack import PackOptions, pack
from sainet.cli import app
from sainet.core.check import check_dataset
from sainet.core.datasets import Sample, open_dataset
from sainet.core.errors import CorruptImage, DatasetError, LayoutError
from sainet.core.imaging import decode_rgb, probe
from sainet.synth import PLANTED, synthesize

SIZE = (160, 96)
runner = CliRunner()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Real-shaped synthetic sources: FASDD CV (nested), FASDD RS (TIFF) and PyroSDIS."""
    root = tmp_path_factory.mktemp("real")
    made = {
        "cv": synthesize(root / "FASDD_CV", images=30, size=SIZE, layout="fasdd", seed=11, background=0.1, quirks=True),
        "rs": synthesize(root / "FASDD_RS", images=20, size=SIZE, layout="fasdd", subset="RS", seed=12, background=0.1,
                         quirks=True),
        "pyro": synthesize(root / "pyro", images=24, size=SIZE, layout="pyrosdis", seed=13, background=0.2, quirks=True),
    }
    return root, made


def _boxes(result) -> int:
    return sum(len(im.objects) for im in result)


def _dups(report) -> tuple[dict, dict]:
    d = report.duplicates.summary()
    return ({k: v["groups"] for k, v in d["within"].items()}, {k: v["groups"] for k, v in d["across"].items()})


def test_synth_fasdd_is_shaped_like_the_release(real):
    root, made = real
    inner = root / "FASDD_CV" / "FASDD_CV"
    ann = inner / "annotations"
    assert (inner / "images").is_dir() and not list(root.rglob("classes.txt"))
    assert sorted(p.name for p in (ann / "YOLO_CV").glob("*.txt")) == ["test.txt", "train.txt", "val.txt"]
    assert all(ln.startswith("./images/") for ln in (ann / "YOLO_CV" / "train.txt").read_text().splitlines())
    pattern = re.compile(r"^(fire|smoke|bothFireAndSmoke|neitherFireNorSmoke)_CV\d{6}\.jpg$")
    assert all(pattern.match(im.name) for im in made["cv"])
    cats = json.loads((ann / "COCO_CV" / "Annotations" / "train.json").read_text())["categories"]
    assert [c["name"] for c in sorted(cats, key=lambda c: c["id"])] == ["smoke", "fire"]  # not in class order
    raw = pq.read_table(next((root / "pyro" / "data").glob("train-*.parquet"))).column("annotations").to_pylist()
    assert {ln.split()[0] for a in raw for ln in a.splitlines()} == {"1"} and "" in raw  # id 1; negatives empty
    assert max(len(a.splitlines()) for a in raw) > 1  # several boxes per row


def test_check_fasdd_exact_counts_and_notes(real):
    root, made = real
    want = PLANTED["fasdd"]
    report = check_dataset(open_dataset(root / "FASDD_CV"))  # the outer folder: nested root accepted
    assert report.layout == "fasdd" and report.names == ["fire", "smoke"]
    assert set(report.splits) == {"train", "val", "test"}
    assert any("nested" in n for n in report.notes) and any("no classes.txt" in n for n in report.notes)
    t = report.tally
    assert (t.read, t.kept, t.clipped, t.lost) == (_boxes(made["cv"]) + want["zero_size_boxes"], _boxes(made["cv"]), 0, 0)
    assert dict(t.dropped) == {"box_zero_area": want["zero_size_boxes"]}
    assert report.boxes == _boxes(made["cv"])
    within, across = _dups(report)
    assert within == want["duplicate_groups"] and across == want["leaks"]


def test_fasdd_coco_maps_categories_by_name_and_clips_past_the_edge(real, tmp_path):
    root, _ = real
    coco_only = tmp_path / "FASDD_CV"
    shutil.copytree(root / "FASDD_CV" / "FASDD_CV", coco_only)
    shutil.rmtree(coco_only / "annotations" / "YOLO_CV")
    ds = open_dataset(coco_only)
    by_coco = {s.name: s for s in ds.samples()}
    by_yolo = {s.name: s for s in open_dataset(root / "FASDD_CV").samples()}
    assert by_coco.keys() == by_yolo.keys()
    for name, s in by_coco.items():
        np.testing.assert_array_equal(s.cls, by_yolo[name].cls)  # by name: fire 0, smoke 1 despite ids 2 / 1
        np.testing.assert_allclose(s.boxes, by_yolo[name].boxes, atol=1e-6)
    want = PLANTED["fasdd"]
    assert (ds.tally.clipped, dict(ds.tally.dropped), ds.tally.lost) == (
        want["past_edge_coco_boxes"], {"box_zero_area": want["zero_size_boxes"]}, 0)


def test_pyrosdis_one_based_ids_detected_or_given(real):
    root, made = real
    ds = open_dataset(root / "pyro")
    samples = list(ds.samples())
    assert ds.names == ["smoke"] and len(ds.notes) == 1 and "1-based" in ds.notes[0]
    assert sum(len(s.cls) for s in samples) == _boxes(made["pyro"]) and all((s.cls == 0).all() for s in samples)
    assert ds.problems == [] and ds.tally.lost == 0
    given = open_dataset(root / "pyro", class_ids={1: "smoke"})
    assert sum(len(s.cls) for s in given.samples()) == _boxes(made["pyro"])
    wrong = open_dataset(root / "pyro", class_ids={0: "smoke"})  # every box reported and counted, none silently
    assert sum(len(s.cls) for s in wrong.samples()) == 0
    assert dict(wrong.tally.dropped) == {"class_out_of_range": _boxes(made["pyro"])} and wrong.tally.lost == 0
    report = check_dataset(open_dataset(root / "pyro"))
    assert _dups(report) == (PLANTED["pyrosdis"]["duplicate_groups"], PLANTED["pyrosdis"]["leaks"])


def test_pyrosdis_hub_layout_and_unknown_layouts(real, tmp_path):
    root, _ = real
    original = {sp: sorted(s.name for s in open_dataset(root / "pyro").samples(sp)) for sp in ("train", "val")}
    hub = tmp_path / "hub"
    for sp in ("train", "val"):
        (hub / "default" / sp).mkdir(parents=True)
        shutil.copy(next((root / "pyro" / "data").glob(f"{sp}-*.parquet")), hub / "default" / sp / "0000.parquet")
    for src in (hub, hub / "default"):
        ds = open_dataset(src)
        assert ds.layout == "pyrosdis" and ds.splits() == ["train", "val"]
        assert {sp: sorted(s.name for s in ds.samples(sp)) for sp in ("train", "val")} == original
    odd = tmp_path / "odd"
    (odd / "stuff").mkdir(parents=True)
    shutil.copy(hub / "default" / "train" / "0000.parquet", odd / "stuff" / "part.parquet")
    with pytest.raises(LayoutError, match="stuff/part.parquet"):
        open_dataset(odd)
    (hub / "other" / "train").mkdir(parents=True)
    shutil.copy(hub / "default" / "train" / "0000.parquet", hub / "other" / "train" / "0000.parquet")
    with pytest.raises(LayoutError, match="several configs"):
        open_dataset(hub)


def test_tiff_sized_from_header_decoded_and_stored_as_jpeg(real, tmp_path):
    root, made = real
    tifs = sorted((root / "FASDD_RS").rglob("*.tif"))
    assert len(tifs) == 20
    infos = [probe(p.read_bytes(), p.name) for p in tifs]
    assert all(i.format == "tiff" and i.size == SIZE for i in infos)
    assert sum(i.bit_depth == 16 for i in infos) == PLANTED["fasdd"]["sixteen_bit_tiffs_rs"]
    with pytest.raises(CorruptImage):
        probe(b"II*\x00" + b"\x00" * 64, "broken.tif")  # a TIFF whose size cannot be read is refused
    r = pack(root / "FASDD_RS", tmp_path / "rs", PackOptions(container="shards", threads=2))
    assert r.records == 20 and r.reencoded == 20 and r.boxes["lost"] == 0
    with open_store(tmp_path / "rs") as st:
        payload = st.payload(0)
        assert bytes(payload[:2]) == b"\xff\xd8" and decode_rgb(payload).shape == (SIZE[1], SIZE[0], 3)
        assert {(int(r["orig_w"]), int(r["orig_h"])) for r in st.index.records} == {SIZE}
    r = pack(root / "FASDD_RS", tmp_path / "rs-raw", PackOptions(container="shards", mode="raw", imgsz=(96, 160), threads=2))
    assert r.records == 20 and r.payload_bytes == 20 * 96 * 160 * 3


def test_pack_counts_every_box_and_drops_leaks(real, tmp_path):
    root, made = real
    want = PLANTED["fasdd"]
    r = pack(root / "FASDD_CV", tmp_path / "cv", PackOptions(container="shards", threads=2, drop_leaks=True))
    leaks = sum(want["leaks"].values())
    assert r.records == 30 - leaks and len(r.dropped_leaks) == leaks
    b = r.boxes
    assert b["lost"] == 0 and b["dropped"] == {"box_zero_area": want["zero_size_boxes"]}
    assert b["stored"] + b["in_dropped_leaks"] == _boxes(made["cv"])
    with open_store(tmp_path / "cv") as st:
        assert st.meta["boxes"] == b and st.meta["dropped_leaks"] == r.dropped_leaks
        assert len(st.index.boxes) == b["stored"]
        assert not {d["key"] for d in r.dropped_leaks} & {st.index.key(i) for i in range(len(st))}


def test_pack_several_sources_unified_and_selected_by_name(real, tmp_path):
    root, made = real
    srcs = [root / "FASDD_CV", root / "FASDD_RS", root / "pyro"]
    r = pack(srcs, tmp_path / "all", PackOptions(container="shards", threads=2))
    n_images = sum(len(v) for v in made.values())
    assert r.records == n_images and r.boxes["lost"] == 0
    with open_store(tmp_path / "all") as st:
        assert st.meta["classes"] == ["fire", "smoke"] and len(st.meta["sources"]) == 3
        pyro = [i for i in range(len(st)) if st.index.key(i).startswith("pyro/")]
        assert len(pyro) == len(made["pyro"])
        assert {int(c) for i in pyro for c in st.labels_of(i)[0]} == {1}  # PyroSDIS smoke -> the store's smoke
    fire = sum(o.cls == 0 for k in ("cv", "rs") for im in made[k] for o in im.objects)
    r = pack(srcs, tmp_path / "smoke", PackOptions(container="shards", threads=2, classes=["smoke"]))
    assert r.boxes["filtered_by_class"] == {"fire": fire} and r.boxes["lost"] == 0
    with open_store(tmp_path / "smoke") as st:
        assert st.meta["classes"] == ["smoke"] and set(st.index.boxes["cls"].tolist()) == {0}
    with pytest.raises(DatasetError, match="dog"):
        pack(srcs, tmp_path / "dog", PackOptions(container="shards", classes=["smoke", "dog"]))


def test_pack_streams_a_bounded_window(real, tmp_path, monkeypatch):
    """Pack never holds more than a small window of samples with pixels, however long the source."""
    root, made = real
    live, peak, made_n = [0], [0], [0]

    class Tracked(Sample):
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            live[0] += 1
            made_n[0] += 1
            peak[0] = max(peak[0], live[0])

        def __del__(self) -> None:
            live[0] -= 1

    monkeypatch.setattr(pyrosdis_mod, "Sample", Tracked)
    threads = 2
    r = pack(root / "pyro", tmp_path / "p", PackOptions(container="shards", threads=threads))
    assert r.records == len(made["pyro"])
    assert made_n[0] >= 2 * len(made["pyro"])  # both passes went through the instrumented iterator
    assert peak[0] <= 4 * threads + 4 < len(made["pyro"])  # ordered_map's window, not the dataset


def test_cli_check_and_pack_report_counts(real, tmp_path):
    root, _ = real
    res = runner.invoke(app, ["check", str(root / "FASDD_CV")])
    assert res.exit_code == 0, res.output
    assert "boxes: read" in res.output and "lost 0" in res.output and "box_zero_area 2" in res.output
    assert "train/val 1 groups" in res.output and "note: nested archive root" in res.output
    res = runner.invoke(app, ["check", str(root / "pyro"), "--class-ids", "1=smoke", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert doc["box_counts"]["lost"] == 0 and doc["box_counts"]["kept"] == doc["boxes"] > 0
    assert doc["notes"] == ["class ids mapped as given: 1 -> smoke"]
    res = runner.invoke(app, ["pack", str(root / "FASDD_CV"), str(root / "pyro"), "--to", str(tmp_path / "s"),
                              "--format", "shards", "--classes", "smoke", "--drop-leaks", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    leaks = sum(PLANTED["fasdd"]["leaks"].values()) + sum(PLANTED["pyrosdis"]["leaks"].values())
    assert len(doc["dropped_leaks"]) == leaks and doc["boxes"]["lost"] == 0


def test_relative_source_paths_read_like_absolute_ones(real, tmp_path, monkeypatch):
    """`sainet pack FASDD_CV FASDD_RS --to ...` from the folder that holds them (as the README writes it):
    list-file paths joined onto a relative root were once joined twice."""
    root, made = real
    monkeypatch.chdir(root)
    report = check_dataset(open_dataset(Path("FASDD_CV")))
    assert report.boxes == _boxes(made["cv"])
    res = runner.invoke(app, ["pack", "FASDD_CV", "FASDD_RS", "--to", str(tmp_path / "s"), "--format", "shards"])
    assert res.exit_code == 0, res.output


def _records(store: Path) -> list[tuple]:
    with open_store(store) as st:
        return [(r.name, r.key, r.split, r.orig_size, r.cls.tolist(), r.boxes.tolist(), bytes(r.payload))
                for r in (st[i] for i in range(len(st)))]


@pytest.mark.parametrize("nesting", ["as-synth", "double", "flat"])
def test_pack_reads_the_fasdd_archive_as_downloaded(real, tmp_path, nesting, monkeypatch):
    """`sainet pack FASDD_CV.zip` streams the members (nothing unzipped to disk) and stores exactly what the
    unzipped folder gives: same names, keys, splits, boxes and payload bytes, the same problems found."""
    import zipfile

    from sainet.synth import write_zip

    root, _ = real
    src = root / "FASDD_CV"  # holds FASDD_CV/ (the archive's own root folder)
    archive = tmp_path / "FASDD_CV.zip"
    if nesting == "as-synth":
        res = runner.invoke(app, ["synth", str(tmp_path / "cli" / "FASDD_CV"), "--layout", "fasdd", "--zip",
                                  "--images", "30", "--size", "160x96", "--seed", "11", "--background", "0.1"])
        assert res.exit_code == 0, res.output
        assert (tmp_path / "cli" / "FASDD_CV.zip").is_file() and [p.name for p in (tmp_path / "cli").iterdir()] == ["FASDD_CV.zip"]
        archive = tmp_path / "cli" / "FASDD_CV.zip"
    elif nesting == "double":
        (tmp_path / "outer").mkdir()
        shutil.copytree(src, tmp_path / "outer" / "FASDD_CV")
        write_zip(tmp_path / "outer", archive)  # members FASDD_CV/FASDD_CV/images/...
    else:
        write_zip(src / "FASDD_CV", archive)  # members images/..., annotations/...
    with zipfile.ZipFile(archive) as zf:
        assert any(n.endswith(".jpg") for n in zf.namelist())
    opened: list[str] = []
    real_open = open

    def spy(file, *a, **kw):  # nothing is written or read from an unzipped copy
        opened.append(str(file))
        return real_open(file, *a, **kw)

    from_zip = check_dataset(open_dataset(archive))
    from_dir = check_dataset(open_dataset(src))
    assert open_dataset(archive).layout == "fasdd"
    assert sorted((p.path, p.kind) for p in from_zip.problems) == sorted((p.path, p.kind) for p in from_dir.problems)
    assert from_zip.images == from_dir.images == 30 and from_zip.boxes == from_dir.boxes
    monkeypatch.setattr("builtins.open", spy)
    res = runner.invoke(app, ["pack", str(archive), "--to", str(tmp_path / "zst"), "--format", "lmdb"])
    monkeypatch.undo()
    assert res.exit_code == 0, res.output
    assert "nothing unzipped" in res.output
    assert not [f for f in opened if f.endswith((".jpg", ".txt")) and str(tmp_path) in f]
    pack(src, tmp_path / "dst", PackOptions(container="lmdb"))
    assert _records(tmp_path / "zst") == _records(tmp_path / "dst")


def test_a_zip_that_is_not_fasdd_or_climbs_out_is_refused(tmp_path):
    import zipfile

    bad = tmp_path / "other.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../../evil/images/a.jpg", b"x")
        zf.writestr("readme.txt", "hello")
    res = runner.invoke(app, ["check", str(bad)])
    assert res.exit_code == 2 and "not a known dataset layout" in res.stderr
    with pytest.raises(DatasetError, match="no images/ and annotations"):
        open_dataset(bad, "fasdd")


def test_an_archive_member_too_large_is_refused_naming_it(tmp_path, monkeypatch):
    import zipfile

    import sainet.core.datasets.archive as archive

    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images/big.jpg", b"\0" * 4096)  # inflates 4 KB from a few bytes
    tree = archive.ZipTree(z)
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1024)
    with pytest.raises(DatasetError, match=r"a.zip!images/big.jpg: 4096 bytes uncompressed"):
        tree.member("images/big.jpg").read_bytes()
    tree.close()
