"""Hostile input, round 3 (issues 26 and 28): stores replaced or truncated under a reader, export of a
damaged store, damaged LMDB pages, deep YAML and folders, duplicate class names, layout detection,
exit codes, output paths, control characters in names, COCO quirks.

Every test here failed on main 6fb5bcb (see docs/RELIABILITY.md, "round 3").
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cache_tools import PackOptions, open_store, pack, verify_store
from sainet.core.errors import StoreCorruptError, StoreReplacedError
from tests.hostile import ROOT, env, make_source, sainet

CASES = [("shards", "raw"), ("shards", "jpeg"), ("lmdb", "jpeg"), ("lmdb", "raw")]


def _opts(container: str, mode: str, **kw) -> PackOptions:
    return PackOptions(container=container, mode=mode, imgsz=(64, 96) if mode == "raw" else None, threads=1, **kw)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    work = tmp_path_factory.mktemp("round3-src")
    return make_source(work / "a", seed=1), make_source(work / "b", seed=2)


# ---------------------------------------------------------------------- 26.1: a reader never mixes stores

@pytest.mark.parametrize(("container", "mode"), CASES)
def test_store_packed_over_a_reader_is_refused_as_replaced(sources, tmp_path, container, mode):
    """An index read, payloads not yet mapped, then `pack SAME --force` from other images: the old
    reader names the store and says it was replaced (never the new store's pixels, never 'truncated')."""
    a, b = sources
    st = tmp_path / "s"
    pack(a, st, _opts(container, mode))
    old = open_store(st)
    before = bytes(open_store(st).payload(1))
    pack(b, st, _opts(container, mode, force=True))
    try:
        got = bytes(old.payload(1))
    except StoreReplacedError as e:
        assert str(st) in str(e) and "replaced" in str(e)
    else:  # a reader may keep the old files open: then it must still see the old pixels
        assert got == before
    fresh = open_store(st)
    fresh.payload(1, verify=True)  # a new reader of the new store works in the same process
    assert fresh.meta["store_id"] != old.meta["store_id"]


def test_store_handed_to_another_process_after_a_replace_is_refused(sources, tmp_path):
    """A store object is rebuilt from its path in a worker: a store packed over it meanwhile is refused there."""
    import pickle

    a, b = sources
    st = tmp_path / "s"
    pack(a, st, _opts("shards", "jpeg"))
    blob = pickle.dumps(open_store(st))
    pack(b, st, _opts("shards", "jpeg", force=True))
    with pytest.raises(StoreReplacedError, match="replaced"):
        pickle.loads(blob)


def test_shard_of_another_store_copied_in_is_refused(sources, tmp_path):
    a, b = sources
    pack(a, tmp_path / "s1", _opts("shards", "jpeg"))
    pack(b, tmp_path / "s2", _opts("shards", "jpeg"))
    (tmp_path / "s1" / "shard-00000.bin").write_bytes((tmp_path / "s2" / "shard-00000.bin").read_bytes())
    report = verify_store(tmp_path / "s1")
    assert not report.ok and all("replaced" in b["reason"] or "does not belong" in b["reason"] for b in report.bad), report.bad
    assert not any("truncated" in b["reason"] or "checksum" in b["reason"] for b in report.bad)  # main: "checksum mismatch"


# ------------------------------------------------------------- 28.2: a shard shrinking under a reader

_TRUNCATE_DURING_READ = textwrap.dedent("""
    import os, sys
    from cache_tools import open_store
    from sainet.core.errors import StoreCorruptError
    s = open_store(sys.argv[1])
    s.payload(0)  # the shard is mapped now
    path = os.path.join(sys.argv[1], "shard-00000.bin")
    os.truncate(path, os.path.getsize(path) // 4)  # another tool (or a full tmpfs) cuts it under the reader
    try:
        for i in range(len(s)):
            bytes(s.payload(i))
    except StoreCorruptError as e:
        print("TYPED", e)
        sys.exit(4)
    print("NO ERROR")
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jpeg", "raw"])
def test_shard_truncated_during_a_read_is_a_typed_error_not_sigbus(sources, tmp_path, mode):
    st = tmp_path / "s"
    pack(sources[0], st, _opts("shards", mode))
    r = subprocess.run([sys.executable, "-c", _TRUNCATE_DURING_READ, str(st)], env=env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)  # -7 (SIGBUS) on main
    assert "TYPED" in r.stdout and str(st) in r.stdout and "shrank" in r.stdout


def test_shard_truncated_after_mapping_is_refused_in_process(sources, tmp_path):
    st = tmp_path / "s"
    pack(sources[0], st, _opts("shards", "jpeg"))
    s = open_store(st)
    s.payload(0)
    shard = st / "shard-00000.bin"
    import os

    os.truncate(shard, 10)
    with pytest.raises(StoreCorruptError, match="shrank"):
        s.payload(len(s) - 1)


# --------------------------------------------------------------- 26.3: one damaged LMDB record alone

def _damage_lmdb_record(store: Path, victim: int) -> None:
    """Point record `victim`'s overflow-page number (in its leaf node) past the file: MDB_PAGE_NOTFOUND,
    which also marks LMDB's read transaction as failed (MDB_BAD_TXN for every later read in it)."""
    with open_store(store) as s:
        key = int(s.index.records[victim]["offset"]).to_bytes(8, "big")
    data = bytearray((store / "data.mdb").read_bytes())
    node = b"\x01\x00\x08\x00" + key  # F_BIGDATA, key size 8, the key
    pos, hits = data.find(node), 0
    while pos >= 0:
        data[pos + 12 : pos + 20] = (10**9).to_bytes(8, "little")
        pos, hits = data.find(node, pos + 1), hits + 1
    assert hits, "the record's leaf node was not found"
    (store / "data.mdb").write_bytes(bytes(data))


def test_damaged_lmdb_record_is_reported_alone_and_skipped(tmp_path):
    from loaders import build_loader

    src = make_source(tmp_path / "src", images=24, seed=1)
    st = tmp_path / "s"
    pack(src, st, _opts("lmdb", "jpeg"))
    _damage_lmdb_record(st, 9)
    report = verify_store(st)
    assert [b["record"] for b in report.bad] == [9], report.bad  # main: 9..20, "MDB_BAD_TXN"
    loader = build_loader(st, "lmdb", batch_size=4, imgsz=64, on_error="skip", split=None, threads=2)
    try:
        assert sum(len(b["im_file"]) for b in loader) == len(loader.sampler) and loader.skipped == 1
    finally:
        loader.close()


# ------------------------------------------------------------ 26.2: export checks every payload

def _flip_payload(store: Path, record: int) -> str:
    with open_store(store) as s:
        name, payload = s.index.name(record), bytes(s.payload(record))
    shard = store / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[data.find(payload) + 50] ^= 0xFF
    shard.write_bytes(bytes(data))
    return name


def test_export_refuses_a_damaged_payload_unless_skip_bad(sources, tmp_path):
    from cache_tools import export_store

    st = tmp_path / "s"
    pack(sources[0], st, _opts("shards", "jpeg"))
    name = _flip_payload(st, 3)
    with pytest.raises(StoreCorruptError, match=rf"record\(s\).*3 \({name}\)"):
        export_store(st, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*.jpg"))  # main: exit 0 and the damaged JPEG written
    skipped: list[dict] = []
    n = export_store(st, tmp_path / "out2", skip_bad=True, skipped=skipped)
    assert [b["record"] for b in skipped] == [3] and n == len(open_store(st)) - 1
    assert not list((tmp_path / "out2").rglob(Path(name).stem + ".*"))


def test_export_cli_exit_codes_for_a_damaged_store(sources, tmp_path):
    from tests.hostile import sainet

    st = tmp_path / "s"
    pack(sources[0], st, _opts("shards", "jpeg"))
    name = _flip_payload(st, 2)
    r = sainet("export", str(st), "--to", str(tmp_path / "out"))
    assert r.returncode == 4 and name in r.stderr, (r.returncode, r.stderr)
    r = sainet("export", str(st), "--to", str(tmp_path / "out2"), "--skip-bad")
    assert r.returncode == 0 and "left out record 2" in r.stdout, (r.returncode, r.stdout, r.stderr)


# --------------------------------------------------- 28.1: every output path is checked, one helper

def test_export_refuses_root_system_folders_the_store_and_inside_a_store(sources, tmp_path):
    from cache_tools import export_store
    from sainet.core.errors import TargetError

    st = tmp_path / "s"
    pack(sources[0], st, _opts("shards", "jpeg"))
    for target in ("/", "/etc", "/tmp", str(st), str(st / "inner")):
        with pytest.raises(TargetError, match="system folder|store|source"):
            export_store(st, target, force=True)
    assert not (st / "inner").exists() and sorted(p.name for p in st.iterdir()) == ["index.sai", "shard-00000.bin"]


def test_pack_into_a_store_is_refused(sources, tmp_path):
    from sainet.core.errors import TargetError

    st = tmp_path / "s"
    pack(sources[0], st, _opts("shards", "jpeg"))
    with pytest.raises(TargetError, match="inside the sainet store"):
        pack(sources[1], st / "inner", _opts("shards", "jpeg"))
    pack(sources[1], st, _opts("shards", "jpeg", force=True))  # exactly a store, with --force: replaced
    assert open_store(st).meta["source"] == str(sources[1].resolve()) or len(open_store(st))


def test_crafted_created_field_never_steers_the_training_export(sources, tmp_path):
    from sainet.train.run import _yolo_data_for
    from tests.hostile import load_index, write_index

    st = tmp_path / "deep" / "a" / "b" / "s"
    pack(sources[0], st, _opts("shards", "jpeg"))
    ix = load_index(st)
    ix.meta.pop("store_id", None)  # a store from before store ids: the name came from `created` alone
    ix.meta["created"] = "x/../../../../../ESCAPED"
    write_index(st, ix)
    (st / "shard-00000.bin").write_bytes((st / "shard-00000.bin").read_bytes()[: ix.meta["shards"][0]["bytes"]])
    project = tmp_path / "deep" / "a" / "b" / "proj"
    data_yaml = Path(_yolo_data_for(str(st), str(project)))
    assert data_yaml.is_file() and data_yaml.resolve().is_relative_to((project / ".exports").resolve())
    assert not list(tmp_path.rglob("ESCAPED*"))


@pytest.mark.parametrize(("project", "name", "why"), [
    ("/", None, "system folder"), ("/etc", None, "system folder"), ("PROJ", "../../x", "plain folder name"),
    ("PROJ", "a/b", "plain folder name"), ("STORE", None, "source|store"),
])
def test_train_project_and_name_are_checked(sources, tmp_path, project, name, why):
    from sainet.core.errors import SettingsError
    from sainet.settings import TrainSettings
    from sainet.train.run import _plan

    st = tmp_path / "s"
    pack(sources[0], st, _opts("shards", "jpeg"))
    project = {"PROJ": str(tmp_path / "runs"), "STORE": str(st / "runs")}.get(project, project)
    with pytest.raises(SettingsError, match=why):  # main: planned, then Ultralytics writes there
        _plan(TrainSettings(data=str(st), project=project, name=name, device="cpu", imgsz=(64, 64), batch=2, epochs=1))


def test_bench_loader_tag_and_out_are_checked_before_the_run(sources, tmp_path):
    from tests.hostile import sainet

    st = tmp_path / "s"
    pack(sources[0], st, _opts("shards", "jpeg"))
    r = sainet("bench-loader", "--store", str(st), "--out", str(tmp_path / "res"), "--tag", "../../escaped",
               "--loaders", "shm", "--batches", "1")
    assert r.returncode == 2 and "--tag" in r.stderr, (r.returncode, r.stderr)
    assert not list(tmp_path.parent.rglob("escaped*"))
    r = sainet("bench-loader", "--store", str(st), "--out", str(st), "--loaders", "shm", "--batches", "1")
    assert r.returncode == 2 and ("source" in r.stderr or "store" in r.stderr), (r.returncode, r.stderr)


# ------------------------------------------- 26.4: no traceback for deep input; duplicate class names

def test_deeply_nested_yaml_is_a_dataset_error(tmp_path):
    from sainet.core.datasets import open_dataset
    from sainet.core.datasets.guards import load_yaml
    from sainet.core.errors import DatasetError

    p = tmp_path / "data.yaml"
    p.write_text("[" * 200_000 + "]" * 200_000)  # 400 KB, under the 1 MB cap: RecursionError on main
    with pytest.raises(DatasetError, match="nested"):
        load_yaml(p)
    with pytest.raises(DatasetError):
        open_dataset(tmp_path, "yolo")
    p.write_text("names:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 40)) + "train: images\n")
    assert isinstance(load_yaml(p), dict)  # ordinary nesting still reads


def _deep_image_folder(root: Path, depth: int) -> Path:
    import os

    from sainet.synth import synthesize

    synthesize(root, images=2, size=(64, 48), seed=3, background=0.0)
    img = next((root / "images" / "train").glob("*.jpg"))
    fd = os.open(root / "images" / "train", os.O_RDONLY)
    try:  # walk down with dir fds: the path itself may be past PATH_MAX
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(img.read_bytes())
    finally:
        os.close(fd)
    return root


@pytest.fixture
def deep_tmp(tmp_path):
    """A folder removed by GNU rm (iterative) afterwards: pytest's own cleanup (shutil.rmtree) recurses
    and would fail on every later session with RecursionError."""
    yield tmp_path
    subprocess.run(["rm", "-rf", str(tmp_path / "src")], check=False)


@pytest.mark.parametrize("depth", [1100, 2500])
def test_image_folder_thousands_deep_is_walked_without_recursion(deep_tmp, depth):
    from sainet.core.check import check_dataset
    from sainet.core.datasets import open_dataset

    src = _deep_image_folder(deep_tmp / "src", depth)
    ds = open_dataset(src)
    samples = list(ds.samples("train"))  # RecursionError in pathlib.rglob on main
    if depth == 1100:  # a path of ~2,300 characters: found
        assert any(s.name == "deep.jpg" for s in samples)
    else:  # past PATH_MAX: reported, not a crash
        assert any("cannot be listed" in p.detail for p in ds.problems)
    report = check_dataset(open_dataset(src), threads=1)
    assert report.as_dict()["images"] >= 2


@pytest.mark.parametrize("names", ["{0: fire, 1: fire}", "[fire, smoke, fire]"])
def test_duplicate_class_names_are_refused(tmp_path, names):
    from sainet.core.datasets import open_dataset
    from sainet.core.errors import DatasetError

    make_source(tmp_path / "src")
    (tmp_path / "src" / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames: {names}\n")
    with pytest.raises(DatasetError, match="class name 'fire' is used by ids 0 and"):
        open_dataset(tmp_path / "src")


# ----------------------------------------- 26.5: layout detection asks every importer that claims it

def test_detection_picks_the_importer_that_can_read_the_folder(tmp_path):
    from sainet.core.datasets import detect_layout, open_dataset
    from sainet.synth import synthesize

    src = tmp_path / "coco"
    synthesize(src, images=6, size=(64, 48), seed=3, layout="coco")
    (src / "data.yaml").write_text("description: the published COCO copy\nlicense: CC-BY\n")  # yolo claims it, cannot read it
    assert detect_layout(src) == "coco"  # main: LayoutError/DatasetError from the yolo importer
    ds = open_dataset(src)
    assert ds.layout == "coco" and any("yolo" in n for n in ds.notes) and len(list(ds.samples())) == 6


def test_detection_with_no_readable_importer_lists_what_each_found(tmp_path):
    from sainet.core.datasets import open_dataset
    from sainet.core.errors import LayoutError

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text("[1, 2]")
    (tmp_path / "data.yaml").write_text("names: [fire]\n")
    with pytest.raises(LayoutError, match=r"yolo: .*; coco: .*a COCO json is an object"):
        open_dataset(tmp_path)


# ------------------------------------------------------------------ 28.4: COCO ids, depth and quirks

def _coco(tmp_path: Path, edit) -> Path:  # noqa: ANN001
    import json

    from sainet.synth import synthesize

    src = tmp_path / "coco"
    synthesize(src, images=6, size=(64, 48), seed=3, layout="coco", background=0.0)
    jf = next((src / "annotations").glob("*train*.json"))
    doc = json.loads(jf.read_text())
    edit(doc)
    jf.write_text(json.dumps(doc))
    return src


def _problems(src: Path) -> list[str]:
    from sainet.core.datasets import open_dataset

    ds = open_dataset(src, "coco")
    list(ds.samples())
    return [f"{p.kind.value}: {p.detail}" for p in ds.problems]


def test_coco_image_id_of_the_wrong_type_is_a_problem(tmp_path):
    def edit(doc):  # noqa: ANN001, ANN202
        doc["annotations"][0]["image_id"] = [doc["annotations"][0]["image_id"]]  # TypeError (unhashable) on main
    assert any("image_id is list" in p for p in _problems(_coco(tmp_path, edit)))


def test_coco_nested_100k_deep_is_a_dataset_error(tmp_path):
    from sainet.core.datasets import open_dataset
    from sainet.core.errors import DatasetError

    src = _coco(tmp_path, lambda doc: None)
    jf = next((src / "annotations").glob("*train*.json"))
    jf.write_text('{"images": [], "categories": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DatasetError, match="nested too deep"):  # RecursionError on main
        list(open_dataset(src, "coco").samples())


def test_coco_duplicate_image_ids_string_iscrowd_and_orphans_are_problems(tmp_path):
    def edit(doc):  # noqa: ANN001, ANN202
        doc["images"][1]["id"] = doc["images"][0]["id"]  # two images, one id: one annotation became two boxes
        doc["annotations"][-1]["iscrowd"] = "0"  # a string: the box was dropped as crowd
        doc["annotations"].append({**doc["annotations"][-1], "id": 99999, "image_id": 424242, "iscrowd": 0})

    found = _problems(_coco(tmp_path, edit))
    assert any("is used by 2 images" in p for p in found), found
    assert any("iscrowd is str '0'" in p for p in found), found
    assert any("image id 424242, which no usable image has" in p for p in found), found


# ------------------------------------------------- 28.3: names shown with control characters escaped

def test_check_shows_control_characters_in_names_escaped(tmp_path):
    import json

    from tests.hostile import sainet

    src = make_source(tmp_path / "src")
    img = next((src / "images" / "train").glob("*.jpg"))
    evil = "\x1b[31mRED\x1b]0;TITLE\x07\x9bX"
    img.rename(img.with_name(evil + ".jpg"))  # its label is missing now: a background image, named in notes
    (src / "images" / "train" / (evil + "2.jpg")).write_bytes(b"\xff\xd8 truncated")  # a problem row naming it
    r = sainet("check", str(src), "--max-problems", "100")
    out = r.stdout + r.stderr
    assert r.returncode in (0, 1) and "\x1b" not in out and "\x07" not in out and "\x9b" not in out, repr(out[-600:])
    assert "\\x1b[31mRED" in out  # main: printed raw (rich strips BEL, not ESC)
    r = sainet("check", str(src), "--json")
    doc = json.loads(r.stdout)
    assert "\x1b" not in r.stdout and any(evil in p["path"] for p in doc["problems"])  # escaped as \u001b, read back whole


# ------------------------------------------------------------- 26.6: exit codes, file-system errors

def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_error_exit_code_is_in_the_readme_table():
    import re

    import sainet.train.distributed  # noqa: F401 - DistributedError (exit 6) lives there
    from sainet.cli import EXIT_CODES
    from sainet.core.errors import SainetError

    readme = (ROOT / "README.md").read_text()
    for cls in [SainetError, *_subclasses(SainetError)]:
        assert cls.exit_code in EXIT_CODES, f"{cls.__name__} exits {cls.exit_code}, not in EXIT_CODES"
        assert re.search(rf"\|\s*{cls.exit_code}\s*\|", readme), f"{cls.__name__}: README lacks exit code {cls.exit_code}"


def test_a_full_filesystem_while_writing_a_run_names_the_run_folder(tmp_path):
    import errno

    from sainet.core.errors import CapacityError
    from sainet.train.run import run_files_named

    with pytest.raises(CapacityError, match=str(tmp_path)):
        with run_files_named(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name
    with pytest.raises(OSError) as e:
        with run_files_named(tmp_path):
            raise OSError(errno.EIO, "Input/output error")
    assert e.value.filename == str(tmp_path)
    with pytest.raises(OSError) as e:
        with run_files_named(tmp_path):
            raise OSError(errno.EACCES, "Permission denied", "/x/results.csv")
    assert e.value.filename == "/x/results.csv"


@pytest.mark.parametrize("cmd", [["synth", "/", "--images", "1"], ["synth", "/etc", "--images", "1"], ["demo", "--out", "/"]])
def test_synth_and_demo_refuse_system_folders(cmd):
    from tests.hostile import sainet

    r = sainet(*cmd)
    assert r.returncode == 2 and "system folder" in r.stderr, (r.returncode, r.stderr[-400:])


# ------------------------------------------------------------------ 26.6: a full disk names the file
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to make a write fail with ENOSPC")
def test_a_write_that_fails_without_a_file_name_names_the_file(tmp_path):
    """ENOSPC from write() carries no file name: `sainet.core.fsio` adds it, so the one error line says
    which file could not be written (here synth's data.yaml, a link to /dev/full)."""
    import errno

    from sainet.core.fsio import write_bytes

    with pytest.raises(OSError) as e:
        write_bytes(Path("/dev/full"), b"x")
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"
    out = tmp_path / "synth"
    out.mkdir()
    (out / "data.yaml").symlink_to("/dev/full")
    r = sainet("synth", str(out), "--images", "4", "--size", "64x48")
    assert r.returncode == 1, r.stderr
    assert "No space left on device" in r.stderr and "data.yaml" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
