"""Every command, given bad input, answers with one line on stderr naming what is wrong and the
documented exit code (sainet.cli.EXIT_CODES) — never a traceback."""

from __future__ import annotations

import inspect as pyinspect
import re

import pytest
from typer.testing import CliRunner

from sainet.cli import EXIT_CODES, app

runner = CliRunner()

# (arguments, exit code, text the one-line message must contain: the option or file at fault)
BAD_OPTIONS = [
    # synth
    (["synth", "OUT", "--images", "0"], 2, "--images"),
    (["synth", "OUT", "--size", "big"], 2, "--size"),
    (["synth", "OUT", "--size", "0x10"], 2, "--size"),
    (["synth", "OUT", "--size", "-5x10"], 2, "--size"),
    (["synth", "OUT", "--layout", "kitti"], 2, "--layout"),
    (["synth", "OUT", "--val-fraction", "1.5"], 2, "--val-fraction"),
    (["synth", "OUT", "--background", "-0.1"], 2, "--background"),
    (["synth", "OUT", "--quality", "0"], 2, "--quality"),
    (["synth", "OUT", "--quality", "101"], 2, "--quality"),
    (["synth", "OUT", "--seed", "-1"], 2, "--seed"),
    (["synth", "OUT", "--classes", "water"], 2, "--classes"),
    (["synth", "OUT", "--images", "ten"], 2, "--images"),
    (["synth", "OUT", "--layout", "fasdd", "--subset", "IR"], 2, "--subset"),
    (["synth", "OUT", "--test-fraction", "2"], 2, "--test-fraction"),
    # check
    (["check", "SRC", "--threads", "0"], 2, "--threads"),
    (["check", "SRC", "--layout", "kitti"], 2, "--layout"),
    (["check", "SRC", "--max-problems", "-1"], 2, "--max-problems"),
    (["check", "SRC", "--class-ids", "one=smoke"], 2, "--class-ids"),
    # pack
    (["pack", "SRC", "--to", "T", "--format", "zip"], 2, "--format"),
    (["pack", "SRC", "--to", "T", "--mode", "png"], 2, "--mode"),
    (["pack", "SRC", "--to", "T", "--max-size", "-10"], 2, "--max-size"),
    (["pack", "SRC", "--to", "T", "--threads", "0"], 2, "--threads"),
    (["pack", "SRC", "--to", "T", "--imgsz", "wide"], 2, "--imgsz"),
    (["pack", "SRC", "--to", "T", "--imgsz", "0"], 2, "--imgsz"),
    (["pack", "SRC", "--to", "T", "--shard-size", "lots"], 2, "--shard-size"),
    (["pack", "SRC", "--to", "T", "--shard-size", "-1GB"], 2, "--shard-size"),
    (["pack", "SRC", "--to", "T", "--assume-free", "12XB"], 2, "--assume-free"),
    (["pack", "SRC"], 2, "--to"),
    (["pack", "SRC", "--to", "T", "--class-ids", "1="], 2, "--class-ids"),
    # verify
    (["verify", "STORE", "--threads", "-2"], 2, "--threads"),
    # plan
    (["plan", "--source", "100@1440x808", "--profile", "dgx"], 2, "--profile"),
    (["plan", "--source", "100@1440x808", "--batch", "0"], 2, "--batch"),
    (["plan", "--source", "100@1440x808", "--imgsz", "1440x"], 2, "--imgsz"),
    (["plan", "--source", "100@axb"], 2, "--source"),
    (["plan", "--source", "0@1440x808"], 2, "--source"),
    (["plan", "--source", "100@1440x808", "--to", "T", "--assume-free", "x"], 2, "--assume-free"),
    (["plan"], 2, "--source"),
    # bench-loader
    (["bench-loader", "--source", "SRC", "--loaders", "shm,nope"], 2, "--loaders"),
    (["bench-loader", "--source", "SRC", "--loaders", ","], 2, "--loaders"),
    (["bench-loader", "--source", "SRC", "--batch", "0"], 2, "--batch"),
    (["bench-loader", "--source", "SRC", "--seconds", "0"], 2, "--seconds"),
    (["bench-loader", "--source", "SRC", "--threads", "0"], 2, "--threads"),
    (["bench-loader", "--source", "SRC", "--profile", "laptop"], 2, "--profile"),
    (["bench-loader"], 2, "--store or --source"),
    (["bench-loader", "--source", "SRC", "--set", "mixup=lots"], 2, "--set: mixup=lots"),
    (["bench-loader", "--source", "SRC", "--set", "mixups=0.1"], 2, "did you mean mixup"),
    # train
    (["train", "--data", "STORE", "--loader", "fast"], 2, "--loader"),
    (["train", "--data", "STORE", "--profile", "nope"], 2, "--profile"),
    (["train", "--data", "STORE", "--profile", "/nonexistent/my-box.yaml"], 2, "my-box.yaml: cannot read the profile file"),
    (["bench-loader", "--source", "SRC", "--profile", "/nonexistent/my-box.yaml"], 2, "my-box.yaml: cannot read"),
    (["train", "--data", "STORE", "--imgsz", "12xq"], 2, "--imgsz"),
    (["train", "--data", "STORE", "--batch", "-1"], 2, "--batch"),
    (["train", "--data", "STORE", "--epochs", "0"], 2, "--epochs"),
    (["train", "--data", "STORE", "--threads", "0"], 2, "--threads"),
    (["train", "--data", "STORE", "--prefetch", "0"], 2, "--prefetch"),
    (["train", "--data", "STORE", "--stage", "3"], 2, "--stage"),
    (["train", "--data", "STORE", "--device", "gpu"], 2, "--device"),
    (["train", "--data", "STORE", "--device", "0,0"], 2, "--device"),
    (["train", "--data", "STORE", "--set", "lr0"], 2, "--set"),
    (["train", "--data", "STORE", "--set", "=1"], 2, "--set"),
    (["train", "--workflow", "three-stage"], 2, "--workflow"),
    (["train", "--workflow", "two-stage", "--stage1-data", "STORE"], 2, "--workflow"),
    (["train", "--data", "STORE", "--config", "MISSING"], 2, "--config"),
    (["train", "--resume", "MISSING"], 2, "--resume"),
    (["train"], 2, "--data"),
    (["train", "--data", "STORE", "--no-such-option"], 2, "--no-such-option"),
    (["train", "--data", "STORE", "--checkpoint-every", "-1"], 2, "--checkpoint-every"),
    # train: every --set key and value, --config, --model/--weights and --device checked before Ultralytics sees them
    (["train", "--data", "STORE", "--set", "foo=bar"], 2, "--set: 'foo' is not an Ultralytics training argument"),
    (["train", "--data", "STORE", "--set", "nonsense_key=1"], 2, "--set"),
    (["train", "--data", "STORE", "--set", "mosiac=0.5"], 2, "did you mean mosaic"),
    (["train", "--data", "STORE", "--set", "lr0=.nan"], 2, "--set: lr0=nan"),
    (["train", "--data", "STORE", "--set", "box=.inf"], 2, "not a finite number"),
    (["train", "--data", "STORE", "--set", "mosaic=abc"], 2, "--set: mosaic=abc"),
    (["train", "--data", "STORE", "--set", "mosaic=1.5"], 2, "between 0.0 and 1.0"),
    (["train", "--data", "STORE", "--set", "patience=-3"], 2, "patience"),
    (["train", "--data", "STORE", "--set", "cos_lr=maybe"], 2, "cos_lr"),
    (["train", "--data", "STORE", "--set", "epochs=true"], 2, "epochs"),
    (["train", "--data", "STORE", "--set", "optimizer=Lion"], 2, "optimizer"),
    (["train", "--data", "STORE", "--set", "lr0=0.002"], 2, "optimizer=auto"),
    (["train", "--data", "STORE", "--set", "imgsz=320"], 2, "use --imgsz"),
    (["train", "--data", "STORE", "--set", "batch=8"], 2, "use --batch"),
    (["train", "--data", "STORE", "--set", "workers=4"], 2, "use --threads"),
    (["train", "--data", "STORE", "--set", "cutmix=0.5"], 2, "cutmix"),
    (["train", "--data", "STORE", "--set", "perspective=0.001"], 2, "perspective"),
    (["train", "--data", "STORE", "--device", "cpu", "--set", "amp=true"], 2, "amp=True: mixed precision needs a CUDA"),
    (["preview", "STORE", "--set", "mosaic=2"], 2, "--set"),
    (["preview", "STORE", "--batch", "0"], 2, "--batch"),
    (["train", "--data", "STORE", "--config", "BADCFG"], 2, "--config"),
    (["train", "--data", "STORE", "--model", ""], 2, "--model"),
    (["train", "--data", "STORE", "--model", "NOTMODEL"], 2, "--model"),
    (["train", "--data", "STORE", "--model", "nosuch.yaml"], 2, "--model"),
    (["train", "--data", "STORE", "--model", "NOTMODEL_PT"], 2, "--model"),
    (["train", "--data", "STORE", "--weights", "NOTMODEL"], 2, "--weights"),
    (["train", "--data", "STORE", "--weights", "NOTMODEL_PT"], 2, "--weights"),
    (["train", "--data", "STORE", "--device", "7"], 2, "--device"),
    (["train", "--data", "STORE", "--device", "0,1"], 2, "--device"),
    # top level
    (["no-such-command"], 2, "no-such-command"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    from cache_tools import PackOptions, pack
    from sainet.synth import synthesize

    root = tmp_path_factory.mktemp("cli-errors")
    synthesize(root / "src", images=4, size=(64, 48), seed=1)
    pack(root / "src", root / "store", PackOptions(container="shards"))
    (root / "bad.yaml").write_text("lr0: 0.01\noptimizer: SGD\nmosaik: 0.5\n")
    (root / "not-a-model.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    return {"SRC": str(root / "src"), "STORE": str(root / "store"), "OUT": str(root / "out"), "T": str(root / "t"),
            "MISSING": str(root / "missing.yaml"), "BADCFG": str(root / "bad.yaml"),
            "NOTMODEL": str(root / "src" / "data.yaml"), "NOTMODEL_PT": str(root / "not-a-model.pt")}


def _one_clean_line(res, expected_code: int, needle: str) -> None:
    assert res.exit_code == expected_code, (res.exit_code, res.stdout, res.stderr)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.stdout + res.stderr
    progress = re.compile(r"━|\s\d+/[\d?]+\s")  # a progress bar drawn before the error
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not progress.search(ln)]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert needle in lines[0], (needle, lines[0])


def test_device_is_checked_against_the_visible_gpus():
    """`--device 0,1` on a machine with one GPU (or none): one line before anything spawns."""
    from sainet.core.errors import SettingsError
    from sainet.validate import check_device

    check_device("cpu", visible=0)
    check_device("0,1", visible=2)
    with pytest.raises(SettingsError, match=r"--device: 0,1: no CUDA GPU 1 on this machine \(1 visible"):
        check_device("0,1", visible=1)
    with pytest.raises(SettingsError, match="none visible"):
        check_device("0", visible=0)


def test_device_0_without_a_gpu_is_one_line_before_anything_starts(paths, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPU 0 exists here")
    res = runner.invoke(app, ["train", "--data", paths["STORE"], "--device", "0", "--project", str(tmp_path)])
    _one_clean_line(res, 2, "--device: 0: no CUDA GPU 0 on this machine (none visible)")
    assert not any(tmp_path.iterdir())  # nothing started, no run folder


def test_set_values_reach_ultralytics_as_it_reads_them():
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from sainet.validate import check_hyp

    got = check_hyp([("stage 1", {"optimizer": "SGD", "lr0": 0.01}),
                     ("--set", {"lr0": "1e-3", "epochs": "1e2", "mosaic": 1, "cos_lr": True})], sainet_loader=True)
    assert got == {"optimizer": "SGD", "lr0": 0.001, "epochs": 100, "mosaic": 1.0, "cos_lr": True}
    assert isinstance(got["epochs"], int) and set(got) <= set(DEFAULT_CFG_DICT)


def test_every_error_class_has_a_documented_exit_code():
    import sainet.train.distributed  # noqa: F401 - defines DistributedError
    from sainet.core.errors import SainetError

    def subclasses(c):
        return {c} | {s for sub in c.__subclasses__() for s in subclasses(sub)}

    codes = {c.__name__: c.exit_code for c in subclasses(SainetError)}
    assert codes["DistributedError"] == 6
    assert {n: c for n, c in codes.items() if c not in EXIT_CODES} == {}


@pytest.mark.parametrize("args,code,needle", BAD_OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_and_a_documented_code(paths, args, code, needle):
    res = runner.invoke(app, [paths.get(a, a) for a in args])
    assert code in EXIT_CODES
    _one_clean_line(res, code, needle)


def test_there_are_at_least_forty_bad_options_across_commands():
    assert len(BAD_OPTIONS) >= 40
    assert {a[0] for a, _, _ in BAD_OPTIONS} >= {"synth", "check", "pack", "verify", "plan", "bench-loader", "train"}


@pytest.mark.parametrize("args,code", [
    (["check", "MISSING_DIR"], 2),  # no such dataset
    (["check", "OUT_FILE"], 2),  # a file that is no dataset
    (["pack", "MISSING_DIR", "--to", "T"], 2),
    (["inspect", "MISSING_DIR"], 4),
    (["inspect", "SRC"], 4),  # a dataset is not a store
    (["verify", "SRC"], 4),
    (["export", "MISSING_DIR", "--to", "T"], 4),
    (["plan", "--store", "SRC"], 4),
    (["plan", "--source", "MISSING_DIR"], 2),
    (["train", "--data", "SRC", "--loader", "shm"], 2),  # not packed
    (["bench-loader", "--store", "SRC", "--loaders", "shm"], 4),
    (["demo", "--out", "OUT_FILE/demo"], 1),  # a file where a folder must go
])
def test_bad_files_name_the_file(paths, tmp_path, args, code):
    out_file = tmp_path / "a-file"
    out_file.write_text("not a dataset")
    table = {**paths, "MISSING_DIR": str(tmp_path / "nothing-here"), "OUT_FILE": str(out_file)}
    argv = [table.get(a, a.replace("OUT_FILE", str(out_file))) for a in args]
    res = runner.invoke(app, argv)
    named = next(v for v in argv[1:] if v.startswith(str(tmp_path)) or v in paths.values())
    _one_clean_line(res, code, "")
    assert named.split("/")[-1] in res.stderr or "nothing-here" in res.stderr or "a-file" in res.stderr, res.stderr


def test_exit_codes_are_documented_in_help_and_readme():
    from pathlib import Path

    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code in EXIT_CODES:
        assert re.search(rf"\b{code}\b", res.stdout), code
        assert re.search(rf"\|\s*{code}\s*\|", readme), f"README.md exit-code table lacks {code}"


def test_every_option_has_help_and_examples_render_one_per_line():
    from typer.main import get_command

    group = get_command(app)
    for name, cmd in group.commands.items():
        for p in cmd.params:
            if p.name != "help":
                assert (getattr(p, "help", None) or "").strip(), f"`sainet {name}` {p.name} has no help"
        doc = pyinspect.getdoc(cmd.callback) or ""
        examples = re.findall(r"`(sainet [^`]+)`", doc.split("Example")[-1])
        assert examples, f"`sainet {name}` has no examples"
        out = runner.invoke(app, [name, "--help"], env={"COLUMNS": "250"}).stdout
        lines = [ln.strip(" •│") for ln in out.splitlines()]
        for ex in examples:  # each example starts a line, and no line holds two
            own = [ln for ln in lines if ln == ex or ln.startswith(ex + " ")]
            assert own and all(ln.count("sainet ") == 1 for ln in own), f"`sainet {name} --help`: {ex}"


@pytest.mark.parametrize("exc,code,needle", [(MemoryError("Unable to allocate 112. GiB"), 5, "does not fit in memory"),
                                             (RecursionError("maximum recursion depth exceeded"), 2, "nested too deeply")])
def test_an_allocation_or_recursion_failure_is_one_line(exc, code, needle, capsys):
    """`synth --size 100000x100000` (numpy's MemoryError) or input nested 100k deep: one line, a documented code."""
    import typer

    from sainet.cli._app import run

    def body():
        raise exc

    with pytest.raises(typer.Exit) as e:
        run(body)
    assert e.value.exit_code == code and code in EXIT_CODES
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err and "Traceback" not in err
