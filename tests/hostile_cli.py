"""Hostile pack targets and hostile sources, run through the real CLI (`python -m sainet`) with timeouts.

Each case returns an `Outcome` (see tests/hostile.py): a traceback, a signal or a hang is crashed; user
files deleted or a store lost is lost; an exit 0 where sainet should have refused, or text from a
file outside the dataset in the output or the store, is wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from tests.hostile import (
    CAT_SOURCES,
    CAT_TARGETS,
    SECRET,
    SECRET_W,
    Job,
    Outcome,
    cli_crash,
    env,
    make_source,
    sainet,
)


def digest_tree(root: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode(errors="surrogateescape"))
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def _verdict(case: str, category: str, r: subprocess.CompletedProcess, *, lost: str = "", wrong: str = "") -> Outcome:
    crash = cli_crash(r)
    if crash:
        return Outcome(category, case, "crashed", crash)
    if lost:
        return Outcome(category, case, "lost", lost)
    if wrong:
        return Outcome(category, case, "wrong", wrong)
    return Outcome(category, case, "clean", f"exit {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1][:140] if (r.stderr or r.stdout).strip() else ''}")


# -------------------------------------------------------------------------------------------- targets

def _refusal(case: str, src: Path, to: Path, *extra: str, keep: Path | None = None, must_fail: bool = True) -> Outcome:
    """Pack `src` to `to`; `keep` (default the source) must be byte-identical afterwards."""
    keep = keep or src
    before = digest_tree(keep) if keep.exists() else ""
    r = sainet("pack", str(src), "--to", str(to), "--format", "shards", *extra)
    after = digest_tree(keep) if keep.exists() else ""
    lost = f"{keep} changed or deleted" if before != after else ""
    wrong = "exit 0: the pack was not refused" if must_fail and r.returncode == 0 else ""
    return _verdict(case, CAT_TARGETS, r, lost=lost, wrong=wrong)


def _user_folder(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "thesis.txt").write_text("years of work\n")
    return path


def target_cases(work: Path, src: Path) -> Iterator[Callable[[], Outcome]]:
    store = work / "store"
    yield lambda: _refusal("--force onto a folder that is not a store", src, _user_folder(work / "home"), "--force",
                           keep=work / "home")
    yield lambda: _refusal("--to the source itself, --force", src, src, "--force")
    yield lambda: _refusal("--to a folder inside the source, --force", src, src / "images" / "store", "--force")
    yield lambda: _refusal("--to the folder that contains the source, --force", src, src.parent, "--force", keep=src)
    yield lambda: (work / "link-to-src").symlink_to(src) or _refusal("--to a symlink to the source, --force", src,
                                                                      work / "link-to-src", "--force")
    yield lambda: ((work / "afile").write_text("keep me") and
                   _refusal("--force onto a file", src, work / "afile", "--force", keep=work / "afile"))
    yield lambda: (_user_folder(work / ".p.partial") and
                   _refusal("a user folder named like the partial (.NAME.partial), --resume", src, work / "p", "--resume",
                            keep=work / ".p.partial"))
    yield lambda: _fake_store(work, src)
    yield lambda: _replace_store(store, src)
    yield lambda: _refusal("--to an existing store without --force", src, store, keep=store)


def _fake_store(work: Path, src: Path) -> Outcome:
    """A folder with an index.sai-named file among user files is still not a store."""
    folder = _user_folder(work / "fake")
    (folder / "index.sai").write_bytes(b"SAINETIX" + b"\0" * 300)
    return _refusal("--force onto a user folder holding a file named index.sai", src, folder, "--force", keep=folder)


def _replace_store(store: Path, src: Path) -> Outcome:
    sainet("pack", str(src), "--to", str(store), "--format", "lmdb")
    r = sainet("pack", str(src), "--to", str(store), "--format", "shards", "--force")
    v = sainet("verify", str(store))
    wrong = "" if r.returncode == 0 and v.returncode == 0 else f"replace exit {r.returncode}, verify exit {v.returncode}"
    return _verdict("--force replaces a sainet store", CAT_TARGETS, r, wrong=wrong)


def concurrent_packs(work: Path, src: Path, trial: int) -> Outcome:
    """Two packs of one target started together: one packs, the other refuses with a clear message."""
    to = work / f"race{trial}"
    cmd = [sys.executable, "-m", "sainet", "pack", str(src), "--to", str(to), "--format", "lmdb" if trial % 2 else "shards"]
    procs = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
    case = f"two packs of one target at once (trial {trial})"
    for r in results:
        if cli_crash(r):
            return _verdict(case, CAT_TARGETS, r)
    codes = sorted(r.returncode for r in results)
    loser = max(results, key=lambda r: r.returncode)
    clear = "another pack is writing" in loser.stderr or "exists" in loser.stderr
    v = sainet("verify", str(to))
    wrong = "" if codes == [0, 4] and clear and v.returncode == 0 else f"exit codes {codes}, verify {v.returncode}: {loser.stderr.strip()[-160:]}"
    return _verdict(case, CAT_TARGETS, results[0], wrong=wrong)


HOLD_LOCK = """
import sys, time
from pathlib import Path
from cache_tools.target import TargetLock
lock = TargetLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def killed_lock_holder(work: Path, src: Path) -> Outcome:
    """A pack that holds the lock refuses others; after kill -9 of the holder the next pack proceeds."""
    to = work / "locked"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(to)], env=env(), stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    busy = sainet("pack", str(src), "--to", str(to))
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    after = sainet("pack", str(src), "--to", str(to))
    case = "lock held by a pack, then kill -9 of the holder (no stale lock)"
    if cli_crash(busy):
        return _verdict(case, CAT_TARGETS, busy)
    wrong = ""
    if busy.returncode != 4 or "another pack is writing" not in busy.stderr:
        wrong = f"while locked: exit {busy.returncode}"
    elif after.returncode != 0:
        wrong = f"after kill -9: exit {after.returncode}: {after.stderr.strip()[-160:]}"
    return _verdict(case, CAT_TARGETS, after, wrong=wrong)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path | None]:
    """A real tmpfs of `size` at `path` (root only); yields None when mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def full_tmpfs(work: Path, src: Path, container: str) -> Outcome | None:
    """Raw 1440x808 frames (3.5 MB each) into an 8 MB tmpfs, the planner told there is room."""
    case = f"full tmpfs mid-pack ({container}, raw)"
    with small_tmpfs(work / f"tmpfs-{container}", "8m") as mnt:
        if mnt is None:
            return None
        r = sainet("pack", str(src), "--to", str(mnt / "s"), "--format", container, "--mode", "raw", "--imgsz", "1440x808",
                   "--assume-free", "10GB")
        left = sorted(p.name for p in mnt.iterdir())
        used = shutil.disk_usage(mnt).used
        wrong = ""
        if r.returncode != 5 or "filesystem full" not in r.stderr:
            wrong = f"exit {r.returncode}: {r.stderr.strip()[-160:]}"
        elif left or used > 1 << 20:
            wrong = f"left behind {left} ({used} bytes used)"
        return _verdict(case, CAT_TARGETS, r, wrong=wrong)


def empty_packs(work: Path, src: Path) -> list[Outcome]:
    """A source whose every image is corrupt: no store; with --force over a store, the old store stays."""
    bad = work / "allbad"
    make_source(bad, images=3, seed=2)
    for p in (bad / "images").rglob("*.jpg"):
        p.write_bytes(b"\xff\xd8garbage")
    out = []
    r = sainet("pack", str(bad), "--to", str(work / "empty"))
    wrong = "" if r.returncode == 4 and not (work / "empty").exists() and not (work / ".empty.partial").exists() else \
        f"exit {r.returncode}, left {sorted(p.name for p in work.iterdir() if 'empty' in p.name)}"
    out.append(_verdict("a pack that packs nothing", CAT_TARGETS, r, wrong=wrong))
    good = work / "kept"
    sainet("pack", str(src), "--to", str(good))
    before = digest_tree(good)
    r = sainet("pack", str(bad), "--to", str(good), "--force")
    lost = "" if good.exists() and digest_tree(good) == before else "the old store was removed by a pack that packed nothing"
    out.append(_verdict("--force with a source that packs nothing, over a store", CAT_TARGETS, r, lost=lost,
                        wrong="exit 0" if r.returncode == 0 else ""))
    return out


def target_outcomes(work: Path, races: int = 3) -> list[Outcome]:
    work.mkdir(parents=True)
    src = make_source(work / "src", images=8)
    out = [case() for case in target_cases(work, src)]
    out += [concurrent_packs(work, src, t) for t in range(races)]
    out.append(killed_lock_holder(work, src))
    for container in ("lmdb", "shards"):
        o = full_tmpfs(work, src, container)
        if o is not None:
            out.append(o)
    out += empty_packs(work, src)
    return out


# -------------------------------------------------------------------------------------------- sources

def yolo_source(root: Path, images: int = 4) -> Path:
    return make_source(root, images=images, seed=9)


def _check_and_pack(case: str, src: Path, work: Path, *, expect_fail: bool = False) -> Outcome:
    """`check --json` and `pack`: no crash, no hang, no secret text echoed or packed, the source unchanged."""
    before = digest_tree(src)
    c = sainet("check", str(src), "--json", timeout=60)
    p = sainet("pack", str(src), "--to", str(work / "store"), "--json", timeout=60)
    for r in (c, p):
        if cli_crash(r):
            return _verdict(case, CAT_SOURCES, r)
    wrong = ""
    if SECRET in c.stdout + c.stderr + p.stdout + p.stderr:
        wrong = "text of a file outside the dataset was echoed"
    elif p.returncode == 0 and (work / "store").exists() and _store_holds_secret(work / "store"):
        wrong = "rows of a label file outside the dataset were packed"
    elif expect_fail and p.returncode == 0:
        wrong = "packed without an error"
    lost = "" if digest_tree(src) == before else "the source changed"
    return _verdict(case, CAT_SOURCES, p, lost=lost, wrong=wrong)


def _store_holds_secret(store: Path) -> bool:
    """The outside label file has a box of width 0.123 (a value no synthetic box has)."""
    from cache_tools.store import open_store

    with open_store(store) as s:
        return bool(len(s.index.boxes)) and bool(((s.index.boxes["w"] - SECRET_W).__abs__() < 1e-4).any())


def _outside_label(work: Path) -> Path:
    secret = work / "outside" / "secret.txt"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(f"0 0.5 0.5 {SECRET_W} 0.2\n{SECRET} x y z w\n")
    return secret


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


def source_cases(work: Path) -> Iterator[tuple[str, Callable[[Path], Path], bool]]:
    """(case, build(folder) -> source root, must the pack fail)."""
    def label_link(d: Path) -> Path:
        src = yolo_source(d / "ds")
        lbl = _first(src / "labels", "*.txt")
        lbl.unlink()
        lbl.symlink_to(_outside_label(d))
        return src

    def labels_dir_link(d: Path) -> Path:
        src = yolo_source(d / "ds")
        outside = d / "outside-labels"
        shutil.move(src / "labels" / "train", outside)
        for p in outside.glob("*.txt"):
            p.write_text(f"0 0.5 0.5 {SECRET_W} 0.2\n{SECRET} 1 2 3 4\n")
        (src / "labels" / "train").symlink_to(outside)
        return src

    def image_link(d: Path) -> Path:
        src = yolo_source(d / "ds")
        img = _first(src / "images", "*.jpg")
        (d / "outside.jpg").write_bytes(img.read_bytes())
        img.unlink()
        img.symlink_to(d / "outside.jpg")
        return src

    def non_utf8_names(d: Path) -> Path:
        src = yolo_source(d / "ds")
        img = _first(src / "images", "*.jpg")
        lbl = src / "labels" / img.parent.name / (img.stem + ".txt")
        os.rename(img, os.path.join(os.fsencode(img.parent), b"caf\xe9-\xff.jpg"))
        os.rename(lbl, os.path.join(os.fsencode(lbl.parent), b"caf\xe9-\xff.txt"))
        return src

    def non_utf8_list(d: Path) -> Path:
        src = yolo_source(d / "ds")
        imgs = sorted((src / "images" / "train").glob("*.jpg"))
        (src / "train.txt").write_bytes(b"\n".join(b"./images/train/" + p.name.encode() for p in imgs) + b"\n./images/\xff\xfe.jpg\n")
        cfg = yaml.safe_load((src / "data.yaml").read_text())
        cfg["train"] = "train.txt"
        (src / "data.yaml").write_text(yaml.safe_dump(cfg))
        return src

    def yaml_edit(edit: Callable[[dict], dict | str]) -> Callable[[Path], Path]:
        def build(d: Path) -> Path:
            src = yolo_source(d / "ds")
            cfg = edit(yaml.safe_load((src / "data.yaml").read_text()))
            (src / "data.yaml").write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
            return src
        return build

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)) + "train: images/train\nnames: [fire]\n"
    yield "YOLO label file is a symlink to a file outside the root", label_link, False
    yield "YOLO labels folder is a symlink outside the root", labels_dir_link, False
    yield "image file is a symlink outside the root", image_link, False
    yield "non-UTF-8 image and label file names", non_utf8_names, False
    yield "non-UTF-8 list file", non_utf8_list, False
    yield "data.yaml nc: 1e12", yaml_edit(lambda c: {**c, "nc": 1e12, "names": None}), True
    yield "data.yaml names: 10^6 classes", yaml_edit(lambda c: yaml.safe_dump({k: v for k, v in c.items() if k != "names"})
                                                      + "names: [" + ", ".join(f"c{i}" for i in range(10**6)) + "]\n"), True
    yield "data.yaml names: 10^5 classes in under 1 MB", yaml_edit(lambda c: {**c, "names": list(range(10**5))}), True
    yield "data.yaml nc: 10^12 (an integer)", yaml_edit(lambda c: {**c, "nc": 10**12, "names": None}), True
    yield "data.yaml alias bomb (9^9 nodes)", yaml_edit(lambda c: bomb), True
    yield "data.yaml larger than 1 MB", yaml_edit(lambda c: yaml.safe_dump(c) + "#" * (2 << 20) + "\n"), False
    yield "data.yaml is a list", yaml_edit(lambda c: "- 1\n- 2\n"), True
    yield from _coco_cases()
    yield from _parquet_cases()


def _coco_source(d: Path, edit: Callable[[dict], None]) -> Path:
    from sainet.synth import synthesize

    src = d / "coco"
    synthesize(src, images=4, size=(96, 64), seed=4, layout="coco")
    for js in sorted((src / "annotations").glob("*.json")):
        doc = json.loads(js.read_text())
        edit(doc)
        js.write_text(json.dumps(doc))
    return src


def _coco_cases() -> Iterator[tuple[str, Callable[[Path], Path], bool]]:
    def cat_no_name(doc: dict) -> None:
        doc["categories"][0].pop("name")

    def dup_ids(doc: dict) -> None:
        doc["categories"].append({**doc["categories"][0], "name": "dup"})

    def width0(doc: dict) -> None:
        doc["images"][0]["width"] = 0

    def non_objects(doc: dict) -> None:
        doc["images"].append(7)
        doc["annotations"].append("x")
        doc["categories"].append(None)

    yield "COCO category without a name", lambda d: _coco_source(d, cat_no_name), True
    yield "COCO duplicate category ids", lambda d: _coco_source(d, dup_ids), True
    yield "COCO annotations: null", lambda d: _coco_source(d, lambda doc: doc.__setitem__("annotations", None)), True
    yield "COCO non-object entries", lambda d: _coco_source(d, non_objects), True
    yield "COCO image width 0", lambda d: _coco_source(d, width0), False
    yield "COCO images is a string", lambda d: _coco_source(d, lambda doc: doc.__setitem__("images", "x")), True


def _parquet_cases() -> Iterator[tuple[str, Callable[[Path], Path], bool]]:
    def wrong_type(d: Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from sainet.synth import synthesize

        src = d / "pyro"
        synthesize(src, images=4, size=(96, 64), seed=4, layout="pyrosdis")
        for f in sorted(src.rglob("*.parquet")):
            t = pq.read_table(f)
            t = t.set_column(t.schema.get_field_index("image"), "image", pa.array(list(range(len(t))), pa.int64()))
            pq.write_table(t, f)
        return src

    yield "parquet image column of the wrong type", wrong_type, True


def source_jobs(work: Path, start: int = 5000) -> list[Job]:
    """The source cases as probe jobs (check + pack in a child process, several per child)."""
    work.mkdir(parents=True)
    jobs = []
    for k, (case, build, must_fail) in enumerate(source_cases(work)):
        d = work / f"s{k:02d}"
        d.mkdir()
        src = build(d)
        jobs.append(Job(start + k, CAT_SOURCES, case, d / "store", d, reject=must_fail, src=src, digest=digest_tree(src)))
    return jobs


def source_outcomes(work: Path) -> list[Outcome]:
    work.mkdir(parents=True)
    out = []
    for k, (case, build, must_fail) in enumerate(source_cases(work)):
        d = work / f"s{k:02d}"
        d.mkdir()
        try:
            src = build(d)
        except Exception as e:  # noqa: BLE001 - a case that cannot be built here is reported, not counted
            print(f"skipped {case}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        t0 = time.monotonic()
        out.append(_check_and_pack(case, src, d, expect_fail=must_fail))
        out[-1].detail += f" ({time.monotonic() - t0:.1f}s)"
    return out
