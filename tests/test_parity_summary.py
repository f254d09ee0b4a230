"""The accuracy comparison's bookkeeping (benchmarks/accuracy_parity.py, issue 22), without training:
the seed pairing and its interval, the choice of the common validator's metric, the run order, and
how rows recorded before the common validator get it from their weights."""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import pytest

from tests.bench_scripts import load


def _parity():
    return load("accuracy_parity")


def _row(group: str, loader: str, seed: int, final: float, val: float | None = None, init: str = "w") -> dict:
    r = {"group": group, "loader": loader, "seed": seed, "batch": 16, "imgsz": "256", "hours": None, "order": "own",
         "init_digest": f"{init}{seed}", "wall_s": 100.0, "epochs_done": 16, "mAP50_final": final, "mAP50_best": final,
         "mAP50-95_final": final / 2, "mAP50-95_best": final / 2}
    if val is not None:
        r |= {"mAP50_val": val, "mAP50-95_val": val / 2}
    return r


def test_pairs_use_the_common_validator_when_every_row_has_it():
    p = _parity()
    own = [0.80, 0.85, 0.78, 0.90]
    common_u = [0.79, 0.84, 0.80, 0.88]
    common_l = [0.80, 0.86, 0.79, 0.90]
    rows = [_row("ultralytics b16", "ultralytics", s, own[s], common_u[s]) for s in range(4)]
    rows += [_row("lmdb b16", "lmdb", s, own[s] + 0.03, common_l[s]) for s in range(4)]
    g = {x["group"]: x for x in p.summarize(rows)}["lmdb b16"]
    diffs = [common_l[s] - common_u[s] for s in range(4)]
    assert g["paired_metric"] == "mAP50_val" and g["paired_diffs"] == pytest.approx(diffs)
    half = p.t975(3) * statistics.stdev(diffs) / math.sqrt(4)
    mean = statistics.fmean(diffs)
    assert g["paired_mean_diff"] == pytest.approx(mean) and g["paired_ci95"] == pytest.approx([mean - half, mean + half])
    assert g["paired_own_val"]["paired_mean_diff"] == pytest.approx(0.03)  # what the trainers' own validators said
    assert g["same_init"] is True and g["parity"] is (abs(mean) <= 0.01 and mean - half >= -0.02 and mean + half <= 0.02)
    # one row without the common metric: the whole group falls back to each trainer's own
    rows[-1].pop("mAP50_val")
    g = {x["group"]: x for x in p.summarize(rows)}["lmdb b16"]
    assert g["paired_metric"] == "mAP50_final" and g["paired_mean_diff"] == pytest.approx(0.03)


def test_pairs_say_when_the_initial_weights_differ():
    p = _parity()
    rows = [_row("ultralytics b16", "ultralytics", s, 0.8 + s / 100) for s in range(3)]
    rows += [_row("lmdb b16", "lmdb", s, 0.8, init="x" if s == 1 else "w") for s in range(3)]
    assert {x["group"]: x for x in p.summarize(rows)}["lmdb b16"]["same_init"] is False


def test_runs_are_planned_seed_major():
    p = _parity()
    args = p.parse_args(["--seeds", "3", "--dali-seeds", "2", "--extra-seeds", "1"])
    plan = [(r.loader, r.seed, r.batch) for r in p.plan_runs(args)]
    assert plan == [("ultralytics", 0, 16), ("lmdb", 0, 16), ("dali", 0, 16), ("ultralytics", 1, 16), ("lmdb", 1, 16),
                    ("dali", 1, 16), ("ultralytics", 2, 16), ("lmdb", 2, 16), ("ultralytics", 0, 32), ("lmdb", 0, 32)]
    args = p.parse_args(["--seeds", "3", "--dali-seeds", "3", "--lmdb-seeds", "1", "--extra-batch", "0"])
    plan = [(r.loader, r.seed) for r in p.plan_runs(args)]
    assert plan == [("ultralytics", 0), ("lmdb", 0), ("dali", 0), ("ultralytics", 1), ("dali", 1), ("ultralytics", 2), ("dali", 2)]


def test_rows_recorded_before_the_common_validator_get_it_from_their_weights(tmp_path, monkeypatch):
    p = _parity()
    calls: list[tuple[Path, str]] = []
    monkeypatch.setattr(p, "common_val", lambda args, w, imgsz: calls.append((w, imgsz)) or {"mAP50_val": 0.5})
    run = p.Run("lmdb b16", "lmdb", 3, 16, "256x144")
    weights = tmp_path / "old" / "lmdb-b16-s3" / "weights" / "last.pt"
    args = argparse.Namespace(runs_dir=[tmp_path / "elsewhere", tmp_path / "old"])
    row = _row("lmdb b16", "lmdb", 3, 0.8)
    assert p._with_common_val(args, run, row) == row and not calls  # no weights anywhere: left as it was
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w")
    assert p._with_common_val(args, run, row)["mAP50_val"] == 0.5 and calls == [(weights, "256x144")]
    done = {**row, "mAP50_val": 0.7}
    assert p._with_common_val(args, run, done) is done and len(calls) == 1  # already scored: not validated again


#: two-sided 95 % Student t quantiles from the printed tables
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042, 39: 2.0227, 40: 2.021,
        59: 2.0010, 60: 2.000, 120: 1.980}


def test_t_quantile_matches_the_tables():
    p = _parity()
    for df, q in T975.items():
        assert p.t975(df) == pytest.approx(q, abs=1.5e-3), df  # every df, not only the tabulated ones
    assert p.t975(39) < 2.030  # the df=30 table value (2.042) would widen a 40-pair interval by 1 %
    assert p.t_quantile(0.9875, 59) == pytest.approx(2.2998, abs=1e-3)  # two looks at 60 pairs (tables: 2.2998)


def test_looks_widen_the_interval_and_before_rows_are_paired():
    p = _parity()
    u = [0.80, 0.84, 0.78, 0.86, 0.82, 0.79]
    now = [0.81, 0.83, 0.79, 0.85, 0.83, 0.78]
    was = [0.82, 0.86, 0.79, 0.87, 0.85, 0.80]
    rows = [_row("ultralytics b16", "ultralytics", s, u[s], u[s]) for s in range(6)]
    rows += [_row("lmdb b16", "lmdb", s, now[s], now[s]) for s in range(6)]
    earlier = [_row("lmdb b16", "lmdb", s, was[s], was[s]) for s in range(6)]
    g = {x["group"]: x for x in p.summarize(rows, {"lmdb b16": 2}, {"lmdb b16": earlier})}["lmdb b16"]
    diffs = [now[s] - u[s] for s in range(6)]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    looks = g["paired_ci_looks"]
    assert looks["looks"] == 2 and looks["confidence"] == pytest.approx(0.975)
    half = p.t_quantile(0.9875, 5) * sd / math.sqrt(6)
    assert looks["interval"] == pytest.approx([mean - half, mean + half])
    assert looks["interval"][0] < g["paired_ci95"][0] and looks["interval"][1] > g["paired_ci95"][1]
    assert g["parity_looks"] is (abs(mean) <= 0.01 and mean - half >= -0.02 and mean + half <= 0.02)
    b = g["before"]
    assert b["paired_mean_diff"] == pytest.approx(statistics.fmean([was[s] - u[s] for s in range(6)]))
    assert b["after_minus_before"]["paired_mean_diff"] == pytest.approx(statistics.fmean([now[s] - was[s] for s in range(6)]))
    assert p.looks_of(["lmdb b16=2"]) == {"lmdb b16": 2}


def test_commands_of_the_results_file_are_kept(tmp_path):
    p = _parity()
    f = tmp_path / "r.json"
    assert p._commands(f) == []  # no file yet
    f.write_text('{"commands": ["python benchmarks/accuracy_parity.py --seeds 6"], "runs": []}')
    assert p._commands(f) == ["python benchmarks/accuracy_parity.py --seeds 6"]
    f.write_text("not json")
    assert p._commands(f) == []


def test_summary_only_trains_nothing_and_names_what_is_missing(tmp_path):
    p = _parity()
    with pytest.raises(SystemExit, match=r"--summary-only: no --reuse file holds 12 planned run\(s\): ultralytics-b4-s0, lmdb-b4-s0, ultralytics-b4-s1"):
        # --smoke: seeds 0-1 at batch 4 and 2, and two equal-time pairs: 12 runs
        p.main(["--smoke", "--summary-only", "--loaders", "ultralytics,lmdb", "--work", str(tmp_path / "w"),
                "--reuse", str(tmp_path / "none.jsonl")])
    assert not (tmp_path / "w" / "runs").exists()  # nothing trained


def _reuse_args(tmp_path: Path, files: dict[str, list[dict]]) -> argparse.Namespace:
    paths = []
    for name, rows in files.items():
        path = tmp_path / name
        path.write_text("".join(__import__("json").dumps({**r, "config": "c"}) + "\n" for r in rows))
        paths.append(path)
    return argparse.Namespace(reuse=paths, config="c")


def test_a_run_trained_twice_in_the_reuse_files_stops_the_summary(tmp_path):
    """The same (group, seed) trained again (a group re-run after a change, its old rows still in a
    file) must not be settled by the order of --reuse: the script names both files."""
    p = _parity()
    run = p.Run("dali b16", "dali", 3, 16, "256")
    old = _row("dali b16", "dali", 3, 0.80, 0.79)
    new = {**old, "wall_s": 131.0, "mAP50_final": 0.83, "mAP50_val": 0.82}
    with pytest.raises(SystemExit, match=r"dali-b16-s3: two different trainings.*old.jsonl.*new.jsonl"):
        p._reused(_reuse_args(tmp_path, {"old.jsonl": [old], "new.jsonl": [new]}), run, quiet=True)
    # a copy of one training (an invocation writes the rows it reused) is the same run
    got = p._reused(_reuse_args(tmp_path, {"a.jsonl": [new], "b.jsonl": [dict(new)]}), run, quiet=True)
    assert got["mAP50_val"] == 0.82
    assert p._reused(_reuse_args(tmp_path, {"a.jsonl": [old]}), p.Run("dali b16", "dali", 4, 16, "256"), quiet=True) is None


def test_before_rows_of_other_data_and_twice_paired_seeds_are_refused(tmp_path):
    p = _parity()
    f = tmp_path / "before.jsonl"
    rows = [{**_row("lmdb b16", "lmdb", s, 0.8, 0.8), "config": "c" if s else "other"} for s in range(3)]
    f.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit, match=r"seeds \[0\] were trained on other data"):
        p.before_of([f"lmdb b16={f}"], "c")
    assert len(p.before_of([f"lmdb b16={f}"])["lmdb b16"]) == 3
    u = [_row("ultralytics b16", "ultralytics", s, 0.8, 0.8) for s in range(3)]
    with pytest.raises(ValueError, match=r"seeds \[1\] appear twice"):
        p.paired(rows + [rows[1]], u, "mAP50_val")


def test_a_resample_other_than_fast_is_a_group_of_its_own(tmp_path):
    """--resample ultralytics: sainet's runs form their own group (paired with the same Ultralytics
    rows); a row recorded before the field existed is a "fast" run, never one of these."""
    p = _parity()
    args = p.parse_args(["--seeds", "2", "--extra-batch", "0", "--rect-imgsz", "", "--loaders", "ultralytics,lmdb",
                         "--resample", "ultralytics"])
    plan = p.plan_runs(args)
    assert [(r.group, r.resample) for r in plan[:2]] == [("ultralytics b16", "fast"), ("lmdb b16 resample=ultralytics", "ultralytics")]
    old = {k: v for k, v in _row("lmdb b16", "lmdb", 0, 0.8, 0.8).items()}  # no "resample" key
    fast = p.Run("lmdb b16", "lmdb", 0, 16, "256")
    reuse = _reuse_args(tmp_path, {"old.jsonl": [old]})
    assert p._reused(reuse, fast, quiet=True) is not None
    assert p._reused(reuse, plan[1], quiet=True) is None
    args = p.parse_args(["--seeds", "1", "--dali-seeds", "1", "--extra-batch", "0", "--rect-imgsz", "",
                         "--loaders", "ultralytics,dali", "--resample", "ultralytics"])
    assert [r.group for r in p.plan_runs(args)] == ["ultralytics b16", "dali b16 resample=ultralytics"]


def test_one_loader_in_both_resample_modes_in_one_invocation():
    """--loaders lmdb,lmdb:ultralytics: one group per mode (one summary can hold both), each with
    the loader's seeds; the b32 extra and the equal-time pairs stay with the --resample mode only."""
    p = _parity()
    args = p.parse_args(["--seeds", "3", "--lmdb-seeds", "2", "--dali-seeds", "1", "--extra-batch", "32", "--extra-seeds", "1",
                         "--loaders", "ultralytics,lmdb,lmdb:ultralytics,dali"])
    groups = [(r.group, r.seed) for r in p.plan_runs(args)]
    assert groups[:4] == [("ultralytics b16", 0), ("lmdb b16", 0), ("lmdb b16 resample=ultralytics", 0), ("dali b16", 0)]
    assert ("lmdb b16 resample=ultralytics", 1) in groups and ("lmdb b16 resample=ultralytics", 2) not in groups
    assert [g for g in groups if g[0].endswith("b32")] == [("ultralytics b32", 0), ("lmdb b32", 0)]
    assert {r.group for r in p.rect_runs(args)} == {"lmdb b16 square 256 (equal-time pair)", "lmdb b16 rect 256x144 (equal time)"}
    for bad in ("ultralytics:ultralytics", "lmdb:sharp"):
        with pytest.raises(SystemExit, match="resample mode"):
            p.plan_runs(p.parse_args(["--loaders", bad]))


def test_versus_pairs_two_groups_of_the_reuse_files(tmp_path):
    """--versus GROUP OTHER: GROUP - OTHER by seed (a setting's effect: resample=ultralytics against
    fast), OTHER's rows taken from the --reuse files; a seed of OTHER trained twice stops it, and a
    group named with "=" still works with --before."""
    p = _parity()
    u = [0.80, 0.84, 0.78, 0.86]
    fast = [0.79, 0.82, 0.78, 0.83]
    two = [0.81, 0.85, 0.77, 0.86]
    g2 = "lmdb b16 resample=ultralytics"
    rows = [_row("ultralytics b16", "ultralytics", s, u[s], u[s]) for s in range(4)]
    rows += [{**_row(g2, "lmdb", s, two[s], two[s]), "resample": "ultralytics"} for s in range(4)]
    fast_rows = [_row("lmdb b16", "lmdb", s, fast[s], fast[s]) for s in range(4)]
    args = _reuse_args(tmp_path, {"fast.jsonl": fast_rows, "other.jsonl": rows})
    args.versus = [[g2, "lmdb b16"]]
    versus = p.versus_of(args)
    assert [r["seed"] for r in versus[g2][1]] == [0, 1, 2, 3]
    g = {x["group"]: x for x in p.summarize(rows, versus=versus)}[g2]
    v = g["versus"]
    assert v["group"] == "lmdb b16" and v["paired_seeds"] == [0, 1, 2, 3]
    assert v["paired_mean_diff"] == pytest.approx(statistics.fmean([two[s] - fast[s] for s in range(4)]))
    assert g["paired_mean_diff"] == pytest.approx(statistics.fmean([two[s] - u[s] for s in range(4)]))  # still vs Ultralytics
    twice = {**fast_rows[2], "mAP50_final": 0.5, "wall_s": 1.0}
    args = _reuse_args(tmp_path, {"fast.jsonl": fast_rows, "again.jsonl": [twice]})
    args.versus = [[g2, "lmdb b16"]]
    with pytest.raises(SystemExit, match=r"seed 2 trained twice"):
        p.versus_of(args)
    args.versus = [[g2, "lmdb b99"]]
    with pytest.raises(SystemExit, match="no rows of that group"):
        p.versus_of(args)
    f = tmp_path / "before.jsonl"
    f.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows[4:]))
    assert len(p.before_of([f"{g2}={f}"])[g2]) == 4
