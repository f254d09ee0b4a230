"""Hostile stores, pack targets and sources: a generator of cases, a crash-proof runner, and the table.

Every case ends in one of four outcomes:

- ``clean``   — a typed sainet error (or success) and nothing lost;
- ``crashed`` — a traceback (an exception that is not a `SainetError`), a signal (SIGBUS, SIGSEGV) or a hang;
- ``wrong``   — silently wrong: `verify` accepts a store that is inconsistent or that `inspect`, `export` or
                a loader then fail on; an export or a load that drops records without an error; secret
                text from outside a dataset echoed or packed;
- ``lost``    — data lost or written outside its place: user files deleted, files written outside the
                export folder, an old store gone after a failed replacement.

Store cases run in child processes (`python -m tests.hostile --probe`), several per process; a child
that dies (signal) or stops answering (hang) marks the case it was running as crashed and the rest
go on in a new child. CLI cases run `python -m sainet ...` with a timeout.

    python -m tests.hostile --table            # every case (the slow mutation series too) -> docs/RELIABILITY.md
    python -m tests.hostile --table --fast     # the `make test` subset
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ("clean", "crashed", "wrong", "lost")
CAT_STORES = "crafted stores (named cases)"
CAT_MUTATIONS = "index and metadata mutations (seeded)"
CAT_TARGETS = "pack targets, locks, full tmpfs, empty packs"
CAT_SOURCES = "odd and hostile sources"
CATEGORIES = (CAT_STORES, CAT_MUTATIONS, CAT_TARGETS, CAT_SOURCES)
#: Exit codes sainet documents (0 ok, 1 verify found bad records, 2 usage/dataset, 3 image, 4 store, 5 capacity).
DOCUMENTED_EXIT = {0, 1, 2, 3, 4, 5, 6}
FAST_MUTATIONS = 60
SLOW_MUTATIONS = 600


@dataclass
class Outcome:
    category: str
    case: str
    result: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(self.result)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}


# ----------------------------------------------------------------------------------------- base stores

def make_source(root: Path, images: int = 8, seed: int = 5) -> Path:
    from sainet.synth import synthesize

    synthesize(root, images=images, size=(96, 64), seed=seed, background=0.2)
    return root


def make_bases(work: Path) -> dict[str, Path]:
    """One small store per (container, mode) the cases start from."""
    from cache_tools import PackOptions, pack

    src = make_source(work / "src")
    bases = {}
    for name, container, mode in (("shards-jpeg", "shards", "jpeg"), ("lmdb-jpeg", "lmdb", "jpeg"), ("shards-raw", "shards", "raw")):
        bases[name] = work / "bases" / name
        pack(src, bases[name], PackOptions(container=container, mode=mode, imgsz=(64, 96) if mode == "raw" else None, threads=1))
    return bases


def load_index(store: Path):  # noqa: ANN201 - IndexData with writable arrays
    from cache_tools.format import read_index

    ix = read_index(store)
    ix.records, ix.boxes = ix.records.copy(), ix.boxes.copy()
    return ix


def write_index(store: Path, ix, meta_bytes: bytes | None = None) -> None:  # noqa: ANN001 - IndexData
    """Re-encode `ix` with a valid digest (a crafted store, not a damaged one). `meta_bytes` replaces the JSON."""
    import hashlib

    from cache_tools.format import HEADER_DTYPE, INDEX_NAME, encode_index

    blob = encode_index(ix)
    if meta_bytes is not None:
        h = np.frombuffer(blob[: HEADER_DTYPE.itemsize], HEADER_DTYPE).copy()[0]
        mo = int(h["meta_offset"])
        body = blob[HEADER_DTYPE.itemsize : mo] + meta_bytes
        h["meta_len"], h["total_len"], h["digest"] = len(meta_bytes), mo + len(meta_bytes), b""
        zeroed = h.tobytes() + body
        h["digest"] = hashlib.blake2b(zeroed, digest_size=16).digest()
        blob = h.tobytes() + body
    (store / INDEX_NAME).write_bytes(blob)


# ------------------------------------------------------------------------------------ named store cases

@dataclass
class StoreCase:
    name: str
    base: str
    craft: Callable[[Path, Path], None]  # (store, sandbox) -> None
    reject: bool = True  # an inconsistent store: verify (or opening it) must refuse it
    export_refuses: bool = False  # a good store whose export must be refused (a link out of the export folder)


def _edit(fn: Callable) -> Callable[[Path, Path], None]:
    def craft(store: Path, sandbox: Path) -> None:
        ix = load_index(store)
        fn(ix, sandbox)
        write_index(store, ix)
    return craft


def _set_name(ix, i: int, name: bytes) -> None:  # noqa: ANN001
    ix.records["name_start"][i], ix.records["name_len"][i] = len(ix.strings), len(name)
    ix.strings = bytes(ix.strings) + name


def _truncate(path: Path, frac: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * frac))


def _replace(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "devzero":
        path.symlink_to("/dev/zero")


def _lmdb_no_size(store: Path, sandbox: Path) -> None:
    ix = load_index(store)
    ix.meta.pop("lmdb_bytes", None)
    write_index(store, ix)
    _truncate(store / "data.mdb")


def _meta_bytes(payload: bytes) -> Callable[[Path, Path], None]:
    def craft(store: Path, sandbox: Path) -> None:
        write_index(store, load_index(store), meta_bytes=payload)
    return craft


def _meta(key: str, value: object) -> Callable[[Path, Path], None]:
    def fn(ix, sandbox: Path) -> None:  # noqa: ANN001
        ix.meta[key] = value
    return _edit(fn)


def _rec(field_: str, value: object, i: int = 0) -> Callable[[Path, Path], None]:
    def fn(ix, sandbox: Path) -> None:  # noqa: ANN001
        ix.records[field_][i] = value
    return _edit(fn)


def _box(field_: str, value: object, i: int = 0) -> Callable[[Path, Path], None]:
    def fn(ix, sandbox: Path) -> None:  # noqa: ANN001
        ix.boxes[field_][i] = value
    return _edit(fn)


def _export_link_out(store: Path, sandbox: Path) -> None:
    out = sandbox / "out"
    (out / "images").mkdir(parents=True)
    (sandbox / "elsewhere").mkdir()
    (out / "images" / "train").symlink_to(sandbox / "elsewhere")


def store_cases() -> list[StoreCase]:
    """Every crafted-store case of issue 17, and neighbours of each."""
    u8max = np.iinfo(np.uint64).max
    cases = [
        StoreCase("lmdb: index without lmdb_bytes, data.mdb truncated (was SIGBUS)", "lmdb-jpeg", _lmdb_no_size),
        StoreCase("lmdb: data.mdb truncated", "lmdb-jpeg", lambda s, b: _truncate(s / "data.mdb", 0.3)),
        StoreCase("lmdb: data.mdb is a named pipe", "lmdb-jpeg", lambda s, b: _replace(s / "data.mdb", "fifo")),
        StoreCase("lmdb: data.mdb is 10 bytes", "lmdb-jpeg", lambda s, b: _truncate(s / "data.mdb", 0.0001)),
        StoreCase("shard is a named pipe (was a hang)", "shards-jpeg", lambda s, b: _replace(s / "shard-00000.bin", "fifo")),
        StoreCase("shard is a folder", "shards-jpeg", lambda s, b: _replace(s / "shard-00000.bin", "dir")),
        StoreCase("shard is a link to /dev/zero", "shards-jpeg", lambda s, b: _replace(s / "shard-00000.bin", "devzero")),
        StoreCase("shard missing", "shards-jpeg", lambda s, b: (s / "shard-00000.bin").unlink()),
        StoreCase("shard truncated", "shards-raw", lambda s, b: _truncate(s / "shard-00000.bin")),
        StoreCase("index.sai is a named pipe", "shards-jpeg", lambda s, b: _replace(s / "index.sai", "fifo")),
        StoreCase("meta: classes is a string", "shards-jpeg", _meta("classes", "fire")),
        StoreCase("meta: classes are numbers", "shards-jpeg", _meta("classes", [0, 1])),
        StoreCase("meta: class list shorter than class ids", "shards-jpeg", _meta("classes", ["fire"])),
        StoreCase("meta: duplicate class names", "shards-jpeg", _meta("classes", ["fire", "fire"])),
        StoreCase("meta: splits is an object", "shards-jpeg", _meta("splits", {"train": 1})),
        StoreCase("meta: shards is a string", "shards-jpeg", _meta("shards", "x")),
        StoreCase("meta: shard size is text", "shards-jpeg", _meta("shards", [{"name": "shard-00000.bin", "bytes": "big"}])),
        StoreCase("meta: shard size 2^70", "shards-jpeg", _meta("shards", [{"name": "shard-00000.bin", "bytes": 2**70}])),
        StoreCase("meta: bad is a number", "shards-jpeg", _meta("bad", 5)),
        StoreCase("meta: lmdb_bytes is text", "lmdb-jpeg", _meta("lmdb_bytes", "many")),
        StoreCase("meta: reencoded is a list", "shards-jpeg", _meta("reencoded", [1])),
        StoreCase("meta: JSON array, not an object", "shards-jpeg", _meta_bytes(b"[1, 2]")),
        StoreCase("meta: 100k nested arrays", "shards-jpeg", _meta_bytes(b'{"classes": ["a"], "splits": ["train"], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")),
        StoreCase("meta: not UTF-8", "shards-jpeg", _meta_bytes(b'{"classes": ["\xff"]}')),
        StoreCase("record: original width 0", "shards-jpeg", _rec("orig_w", 0)),
        StoreCase("record: original height 0", "lmdb-jpeg", _rec("orig_h", 0)),
        StoreCase("record: name not UTF-8", "shards-jpeg", _edit(lambda ix, b: _set_name(ix, 0, b"\xff\xfe.jpg"))),
        StoreCase("record: name range splits a UTF-8 character", "shards-jpeg",
                  _edit(lambda ix, b: (_set_name(ix, 0, "é.jpg".encode()), ix.records["name_start"].__setitem__(0, ix.records["name_start"][0] + 1)))),
        StoreCase("record: empty name", "shards-jpeg", _rec("name_len", 0)),
        StoreCase("record: name range past the string table", "shards-jpeg", _rec("name_start", 2**63)),
        StoreCase("record: key range wraps around u64", "shards-jpeg", _rec("key_start", u8max)),
        StoreCase("record: box range wraps around u64", "shards-jpeg", _rec("box_start", u8max)),
        StoreCase("record: shard offset wraps around u64", "shards-jpeg", _rec("offset", u8max - 4)),
        StoreCase("record: shard number past the shards", "shards-jpeg", _rec("shard", 7)),
        StoreCase("record: unknown split", "lmdb-jpeg", _rec("split", 9)),
        StoreCase("record: ratio NaN", "shards-raw", _rec("ratio", np.nan)),
        StoreCase("raw: padding outside the frame", "shards-raw", _rec("pad_left", 96)),
        StoreCase("raw: scaled size 0", "shards-raw", _rec("new_h", 0)),
        StoreCase("box: class id past the class names", "shards-jpeg", _box("cls", 2)),
        StoreCase("box: class id 2^32-1", "lmdb-jpeg", _box("cls", 2**32 - 1)),
        StoreCase("box: NaN coordinate", "shards-jpeg", _box("x", np.nan)),
        StoreCase("box: negative width", "shards-jpeg", _box("w", -0.5)),
        StoreCase("box: names another record", "shards-jpeg", _box("record", 5)),
        StoreCase("export: record name absolute", "shards-jpeg", _edit(lambda ix, sb: _set_name(ix, 0, str(sb / "escaped.jpg").encode()))),
        StoreCase("export: record name with ../", "shards-jpeg", _edit(lambda ix, sb: _set_name(ix, 0, b"../../../escaped.jpg"))),
        StoreCase("export: record name ..", "lmdb-jpeg", _edit(lambda ix, sb: _set_name(ix, 0, b".."))),
        StoreCase("export: split name with ../", "shards-jpeg", _meta("splits", ["../../escaped_split", "val"])),
        StoreCase("export: split name absolute", "lmdb-jpeg", _edit(lambda ix, sb: ix.meta.__setitem__("splits", [str(sb / "abs_split"), "val"]))),
        StoreCase("export: images/train is a symlink out of the export folder", "shards-jpeg", _export_link_out,
                  reject=False, export_refuses=True),
        StoreCase("record names repeat within a split", "shards-jpeg",
                  _edit(lambda ix, sb: [_set_name(ix, i, b"same.jpg") for i in range(len(ix.records))]), reject=False),
        StoreCase("unmodified store", "lmdb-jpeg", lambda s, b: None, reject=False),
        StoreCase("unmodified raw store", "shards-raw", lambda s, b: None, reject=False),
    ]
    return cases


# ------------------------------------------------------------------------------------ seeded mutations

_INT_PICKS = ("zero", "one", "max", "max-1", "random", "plus1", "minus1", "big")
_FLOAT_PICKS = (np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 2.0, 0.5)
_JSON_PICKS = (None, 0, -1, 2**70, 1.5, "x", "", [], [1, "a"], {}, {"bytes": -1}, True, [[[]]], "\udcff", ["\udcff"],
               [{"name": "shard-00000.bin", "bytes": 10**12}], ["train", "train"], ["a/b"], "../x")
_META_KEYS = ("classes", "splits", "shards", "bad", "counts", "lmdb_bytes", "reencoded", "imgsz", "source", "layout",
              "created", "mode", "container", "max_size", "sainet_version")


def _pick_int(rng: np.random.Generator, dtype: np.dtype, old: int) -> int:
    info = np.iinfo(dtype)
    how = _INT_PICKS[int(rng.integers(len(_INT_PICKS)))]
    value = {"zero": 0, "one": 1, "max": info.max, "max-1": info.max - 1, "random": int(rng.integers(0, info.max, dtype=np.uint64)),
             "plus1": old + 1, "minus1": old - 1, "big": 2**31}[how]
    return int(value) % (int(info.max) + 1)


def mutate(ix, rng: np.random.Generator) -> str:  # noqa: ANN001 - IndexData
    """One random edit of an index field or of the metadata; returns what was done."""
    what = rng.choice(["record", "record", "box", "header", "meta", "meta", "strings"])
    if what in ("record", "box") and (len(ix.boxes) if what == "box" else len(ix.records)):
        arr = ix.records if what == "record" else ix.boxes
        i = int(rng.integers(len(arr)))
        name = str(rng.choice(arr.dtype.names))
        dt = arr.dtype[name]
        value = float(rng.choice(_FLOAT_PICKS)) if dt.kind == "f" else _pick_int(rng, dt, int(arr[name][i]))
        arr[name][i] = value
        return f"{what} {i}.{name} = {value!r}"
    if what == "header":
        choice = int(rng.integers(4))
        if choice == 0:
            ix.num_shards = int(rng.choice([0, 1, 2, 7]))
            return f"header num_shards = {ix.num_shards}"
        if choice == 1:
            ix.imgsz = (int(rng.choice([0, 1, 64, 65535])), int(rng.choice([0, 96, 1 << 20])))
            return f"header imgsz = {ix.imgsz}"
        if choice == 2:
            ix.container = "lmdb" if ix.container == "shards" else "shards"
            return f"header container = {ix.container}"
        ix.mode = "raw" if ix.mode == "jpeg" else "jpeg"
        ix.imgsz = ix.imgsz or (64, 96)
        return f"header mode = {ix.mode}"
    if what == "strings" and ix.strings:
        b = bytearray(ix.strings)
        pos = int(rng.integers(len(b)))
        b[pos] = int(rng.choice([0, 0x2F, 0x80, 0xC3, 0xFF, 0x2E]))
        ix.strings = bytes(b)
        return f"strings[{pos}] = {b[pos]:#x}"
    key = str(rng.choice(_META_KEYS))
    if rng.random() < 0.2:
        ix.meta.pop(key, None)
        return f"meta del {key}"
    value = _JSON_PICKS[int(rng.integers(len(_JSON_PICKS)))]
    ix.meta[key] = value
    return f"meta {key} = {value!r}"


# ------------------------------------------------------------------------------- the probing child

def _op(fn: Callable[[], object]) -> dict:
    from sainet.core.errors import SainetError

    try:
        return {"status": "ok", "value": fn()}
    except SainetError as e:
        return {"status": "typed", "error": type(e).__name__, "message": str(e)[:300]}
    except Exception as e:  # noqa: BLE001 - the point: anything else is a crash
        return {"status": "exception", "error": type(e).__name__, "message": "".join(traceback.format_exception(e))[-1500:]}


def _load(store: str) -> int:
    from cache_tools.store import open_store
    from loaders import build_loader

    with open_store(store) as s:
        kind, raw = ("shm" if s.container == "shards" else "lmdb"), s.mode == "raw"
        n = len(s)
    loader = build_loader(store, kind, batch_size=4, imgsz=(64, 96) if raw else 64, split=None, augment=True, threads=1,
                          shuffle=False)
    try:
        seen = sum(len(b["im_file"]) for b in loader)
    finally:
        loader.close()
    if seen != n:
        raise RuntimeError(f"loader yielded {seen} images for {n} records")
    return seen


def _export(store: str, out: str) -> int:
    from cache_tools.export import export_store

    n = export_store(store, out, force=True)
    images = [p for p in Path(out, "images").rglob("*") if p.is_file()]
    labels = [p for p in Path(out, "labels").rglob("*.txt") if p.is_file()]
    if not len(images) == len(labels) == n:
        raise RuntimeError(f"export wrote {len(images)} images and {len(labels)} labels for {n} records")
    return n


def probe(store: str, out: str) -> dict:
    """verify, inspect (JSON-serialised), export and one epoch of the loader, each caught separately."""
    from cache_tools.verify import describe_store, verify_store

    return {
        "verify": _op(lambda: verify_store(store, threads=1).ok),
        "inspect": _op(lambda: len(json.dumps(describe_store(store)))),
        "export": _op(lambda: _export(store, out)),
        "load": _op(lambda: _load(store)),
    }


SECRET = "HOSTILE-SECRET-7f3a"
#: The outside label file's box has this width, which no synthetic box has: finding it in a store means it was read.
SECRET_W = 0.123


def probe_source(src: str, store: str) -> dict:
    """`check` (its JSON report searched for text from outside the root) and `pack` (its boxes searched too)."""
    from cache_tools import PackOptions, open_store, pack
    from sainet.core.check import check_dataset
    from sainet.core.datasets import open_dataset

    def check() -> bool:
        return SECRET in json.dumps(check_dataset(open_dataset(src), threads=1).as_dict())

    def do_pack() -> bool:
        report = pack(src, store, PackOptions(threads=1, container="shards"))
        with open_store(store) as s:
            leaked = bool(len(s.index.boxes)) and bool((np.abs(s.index.boxes["w"] - SECRET_W) < 1e-4).any())
        return leaked or SECRET in json.dumps([p.as_dict() for p in report.problems] + report.bad)

    return {"check": _op(check), "pack": _op(do_pack)}


def _child(jobs_file: str) -> None:
    """Read one JSON job per line; print START before and RESULT after each (a crash leaves START alone)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    for line in Path(jobs_file).read_text().splitlines():
        job = json.loads(line)
        print("START", job["id"], flush=True)
        res = probe_source(job["src"], job["store"]) if job.get("src") else probe(job["store"], job["out"])
        print("RESULT", json.dumps({"id": job["id"], "ops": res}, default=str), flush=True)


# ---------------------------------------------------------------------------------- the parent side

@dataclass
class Job:
    id: int
    category: str
    case: str
    store: Path
    sandbox: Path
    reject: bool = True
    export_refuses: bool = False
    before: set[str] = field(default_factory=set)
    src: Path | None = None  # a source case: check and pack `src` into `store`
    digest: str = ""  # of the source before the case


def classify_source(job: Job, ops: dict) -> Outcome:
    from tests.hostile_cli import digest_tree

    crashed = {k: v for k, v in ops.items() if v["status"] == "exception"}
    if crashed:
        k, v = next(iter(crashed.items()))
        return Outcome(job.category, job.case, "crashed", f"{k}: {v['message'].strip().splitlines()[-1]}")
    if digest_tree(job.src) != job.digest:
        return Outcome(job.category, job.case, "lost", "the source changed")
    leaked = [k for k, v in ops.items() if v["status"] == "ok" and v["value"]]
    if leaked:
        return Outcome(job.category, job.case, "wrong", f"{leaked[0]}: text or boxes from a file outside the root")
    if job.reject and ops["pack"]["status"] == "ok":
        return Outcome(job.category, job.case, "wrong", "packed without an error")
    p = ops["pack"]
    return Outcome(job.category, job.case, "clean", "packed" if p["status"] == "ok" else f"{p['error']}: {p['message'][:140]}")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def classify(job: Job, ops: dict | None, died: str = "") -> Outcome:
    if died:
        return Outcome(job.category, job.case, "crashed", died)
    if job.src is not None:
        return classify_source(job, ops)
    outside = {f for f in _files(job.sandbox) - job.before if not f.startswith(("out", "store"))}
    if outside:
        return Outcome(job.category, job.case, "lost", f"written outside the export folder: {sorted(outside)[:3]}")
    crashed = {k: v for k, v in ops.items() if v["status"] == "exception"}
    if crashed:
        k, v = next(iter(crashed.items()))
        return Outcome(job.category, job.case, "crashed", f"{k}: {v['message'].strip().splitlines()[-1]}")
    accepted = ops["verify"]["status"] == "ok" and ops["verify"]["value"] is True
    if accepted and job.reject:
        return Outcome(job.category, job.case, "wrong", "verify accepted an inconsistent store")
    failed = {k: v for k, v in ops.items() if k != "verify" and v["status"] != "ok" and not (k == "export" and job.export_refuses)}
    if accepted and failed:
        k, v = next(iter(failed.items()))
        return Outcome(job.category, job.case, "wrong", f"verify accepted it but {k} failed: {v.get('message', '')[:120]}")
    if job.export_refuses and ops["export"]["status"] == "ok":
        return Outcome(job.category, job.case, "wrong", "export followed a link out of the export folder")
    verdict = "accepted" if accepted else f"refused ({ops['verify'].get('error', 'bad records')})"
    return Outcome(job.category, job.case, "clean", verdict)


def run_jobs(jobs: list[Job], per_case_timeout: float = 60.0) -> list[Outcome]:
    """Run `jobs` in child processes; a child that dies or hangs marks its current case crashed."""
    outcomes: dict[int, Outcome] = {}
    pending = list(jobs)
    by_id = {j.id: j for j in jobs}
    while pending:
        # Jobs go through a file, not stdin: a child that dies early must not break (or block) the parent.
        jobs_file = pending[0].sandbox.parent / f"jobs-{pending[0].id}.jsonl"
        jobs_file.write_text("".join(json.dumps({"id": j.id, "store": str(j.store), "out": str(j.sandbox / "out"),
                                                 "src": str(j.src) if j.src else None}) + "\n" for j in pending))
        proc = subprocess.Popen([sys.executable, "-m", "tests.hostile", "--probe", str(jobs_file)], cwd=ROOT, env=env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        current = _read_child(proc, by_id, outcomes, per_case_timeout)
        if current is not None:
            outcomes[current] = classify(by_id[current], None, _death(proc))
        pending = [j for j in pending if j.id not in outcomes]
    return [outcomes[j.id] for j in jobs]


def _read_child(proc: subprocess.Popen, by_id: dict[int, Job], outcomes: dict[int, Outcome], timeout: float) -> int | None:
    """Collect RESULT lines; return the id of a case the child never finished (None: all done)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    current, buf = None, ""
    deadline = time.monotonic() + timeout + 30  # the first case also pays the imports
    while True:
        if not sel.select(max(deadline - time.monotonic(), 0)):
            proc.kill()
            proc.wait()
            proc.hang = True
            return current
        chunk = os.read(proc.stdout.fileno(), 65536).decode()
        if not chunk:
            proc.wait()
            return current
        buf += chunk
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            if line.startswith("START "):
                current, deadline = int(line.split()[1]), time.monotonic() + timeout
            elif line.startswith("RESULT "):
                res = json.loads(line[7:])
                outcomes[res["id"]] = classify(by_id[res["id"]], res["ops"])
                current = None


def _death(proc: subprocess.Popen) -> str:
    if getattr(proc, "hang", False):
        return "hang (killed after the timeout)"
    if proc.returncode and proc.returncode < 0:
        import signal

        return f"killed by {signal.Signals(-proc.returncode).name}"
    return f"child exited {proc.returncode} mid-case"


def _job(jid: int, category: str, case: str, base: Path, work: Path, **kw) -> Job:
    sandbox = work / f"case{jid:04d}"
    sandbox.mkdir(parents=True)
    store = sandbox / "store"
    shutil.copytree(base, store, symlinks=True)
    return Job(jid, category, case, store, sandbox, **kw)


def store_jobs(bases: dict[str, Path], work: Path) -> list[Job]:
    jobs = []
    for k, case in enumerate(store_cases()):
        job = _job(k, CAT_STORES, case.name, bases[case.base], work, reject=case.reject, export_refuses=case.export_refuses)
        case.craft(job.store, job.sandbox)
        job.before = _files(job.sandbox)
        jobs.append(job)
    return jobs


def mutation_jobs(bases: dict[str, Path], work: Path, count: int, seed: int = 17, start: int = 0) -> list[Job]:
    """`count` seeded mutations, each of a fresh copy of one base store. Whether a mutation breaks the
    store is not known in advance, so `reject` is False: the checks are no crash, and nothing that verify
    accepts fails later."""
    rng = np.random.default_rng(seed)
    names = sorted(bases)
    jobs = []
    for k in range(start, start + count):
        base = names[int(rng.integers(len(names)))]
        job = _job(1000 + k, CAT_MUTATIONS, "", bases[base], work, reject=False)
        ix = load_index(job.store)
        job.case = f"#{k} {base}: " + mutate(ix, rng)
        write_index(job.store, ix)
        job.before = _files(job.sandbox)
        jobs.append(job)
    return jobs


# --------------------------------------------------------------------------------------- CLI cases

def sainet(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m sainet ARGS` with a timeout; a hang comes back as returncode None."""
    try:
        return subprocess.run([sys.executable, "-m", "sainet", *args], cwd=cwd or ROOT, env=env(), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, None, e.stdout or "", e.stderr or "")


def cli_crash(r: subprocess.CompletedProcess) -> str:
    """Why a CLI run counts as crashed ('' when it did not)."""
    if r.returncode is None:
        return "hang"
    if r.returncode < 0:
        return f"signal {-r.returncode}"
    if "Traceback" in (r.stderr or "") or "Traceback" in (r.stdout or ""):
        return "traceback: " + (r.stderr or r.stdout).strip().splitlines()[-1][:160]
    if r.returncode not in DOCUMENTED_EXIT:
        return f"undocumented exit code {r.returncode}"
    return ""


def tally(outcomes: Iterable[Outcome]) -> dict[str, Counter]:
    table: dict[str, Counter] = {c: Counter() for c in CATEGORIES}
    for o in outcomes:
        table.setdefault(o.category, Counter())[o.result] += 1
    return table


def format_table(outcomes: list[Outcome]) -> str:
    rows = ["| category | tried | clean | crashed | silently wrong | lost / outside |", "|---|---|---|---|---|---|"]
    total: Counter = Counter()
    for cat, c in tally(outcomes).items():
        if not sum(c.values()):
            continue
        total.update(c)
        rows.append(f"| {cat} | {sum(c.values())} | {c['clean']} | {c['crashed']} | {c['wrong']} | {c['lost']} |")
    rows.append(f"| **all** | **{sum(total.values())}** | **{total['clean']}** | **{total['crashed']}** | "
                f"**{total['wrong']}** | **{total['lost']}** |")
    return "\n".join(rows)


BEGIN, END = "<!-- hostile-table:begin -->", "<!-- hostile-table:end -->"


def write_table(outcomes: list[Outcome], doc: Path, note: str) -> None:
    text = doc.read_text()
    block = f"{BEGIN}\n{note}\n\n{format_table(outcomes)}\n{END}"
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def run_all(work: Path, mutations: int) -> list[Outcome]:
    from tests.hostile_cli import source_outcomes, target_outcomes

    bases = make_bases(work)
    jobs = store_jobs(bases, work / "stores") + mutation_jobs(bases, work / "mutations", mutations)
    outcomes = run_jobs(jobs)
    outcomes += target_outcomes(work / "targets")
    outcomes += source_outcomes(work / "sources")  # through the CLI: exit codes and printed output too
    return outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.hostile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", metavar="JOBS", help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="write the counts table into docs/RELIABILITY.md")
    ap.add_argument("--fast", action="store_true", help=f"only the make-test subset ({FAST_MUTATIONS} mutations)")
    args = ap.parse_args(argv)
    if args.probe:
        _child(args.probe)
        return 0
    mutations = FAST_MUTATIONS if args.fast else SLOW_MUTATIONS
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="sainet-hostile-") as tmp:
        outcomes = run_all(Path(tmp), mutations)
    for o in outcomes:
        if o.result != "clean":
            print(f"{o.result:8s} {o.category}: {o.case}: {o.detail}")
    print(format_table(outcomes))
    if args.table:
        note = (f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m tests.hostile --table"
                f"{' --fast' if args.fast else ''}` ({mutations} seeded mutations, {time.time() - t0:.0f} s on this machine).")
        write_table(outcomes, ROOT / "docs" / "RELIABILITY.md", note)
    return 1 if any(o.result != "clean" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
