"""Importers never read outside the dataset root; every command documents itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from sainet.cli import app
from sainet.core.check import check_dataset
from sainet.core.datasets import ProblemKind, open_dataset
from sainet.synth import synthesize

runner = CliRunner()


@pytest.fixture()
def read_log(monkeypatch):
    """Record every file the importers and check open for reading."""
    opened: list[str] = []
    real_read_bytes, real_read_text = Path.read_bytes, Path.read_text

    def rb(self):
        opened.append(os.path.realpath(self))
        return real_read_bytes(self)

    def rt(self, *a, **k):
        opened.append(os.path.realpath(self))
        return real_read_text(self, *a, **k)

    monkeypatch.setattr(Path, "read_bytes", rb)
    monkeypatch.setattr(Path, "read_text", rt)
    return opened


def _hostile_variant(layout: str, root: Path, secret: Path) -> None:
    """Point one annotation of a synthetic dataset at `secret` (outside the root)."""
    rel = os.path.relpath(secret, root)
    if layout == "yolo":
        lst = root / "train.txt"
        lst.write_text(f"./images/train/{next((root / 'images' / 'train').iterdir()).name}\n{rel}\n{secret}\n")
        cfg = yaml.safe_load((root / "data.yaml").read_text())
        cfg["train"] = "train.txt"
        (root / "data.yaml").write_text(yaml.safe_dump(cfg))
        # and a symlink that leaves the root, listed like any image
        (root / "images" / "train" / "link.jpg").symlink_to(secret)
        lst.write_text(lst.read_text() + "./images/train/link.jpg\n")
    elif layout == "coco":
        ann = root / "annotations" / "instances_train.json"
        doc = json.loads(ann.read_text())
        doc["images"][0]["file_name"] = "../../" + rel
        doc["images"][1]["file_name"] = str(secret)
        ann.write_text(json.dumps(doc))
    elif layout == "voc":
        xml = next((root / "Annotations").glob("*.xml"))
        xml.write_text(xml.read_text().replace("<filename>", f"<filename>../{rel}").replace(".jpg</filename>", ".jpg</filename>"))
        import re

        xml.write_text(re.sub(r"<filename>.*?</filename>", f"<filename>../{rel}</filename>", xml.read_text()))
    elif layout == "fasdd":
        lst = root / "FASDD_CV" / "annotations" / "YOLO_CV" / "train.txt"  # unzipped double nested
        lst.write_text(lst.read_text() + f"./{rel}\n{secret}\n")
    elif layout == "pyrosdis":
        shard = next((root / "data").glob("train-*.parquet"))
        table = pq.read_table(shard)
        names = table.column("image_name").to_pylist()
        names[0] = "../../etc/passwd"
        names[1] = "/abs/evil.jpg"
        import pyarrow as pa

        table = table.set_column(table.schema.get_field_index("image_name"), "image_name", pa.array(names, pa.string()))
        pq.write_table(table, shard)


@pytest.mark.parametrize("layout", ["yolo", "coco", "voc", "fasdd", "pyrosdis"])
def test_importers_never_read_outside_root(tmp_path, layout, read_log):
    root = tmp_path / "ds"
    classes = ["smoke"] if layout == "pyrosdis" else None
    synthesize(root, images=6, size=(64, 48), layout=layout, val_fraction=0, seed=2, classes=classes)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((next(root.rglob("*.jpg")) if layout != "pyrosdis" else Path(__file__)).read_bytes())
    _hostile_variant(layout, root, secret)
    read_log.clear()
    report = check_dataset(open_dataset(root))
    outside = [p for p in report.problems if p.kind is ProblemKind.PATH_OUTSIDE_ROOT]
    assert outside, report.problems
    assert str(secret.resolve()) not in read_log
    assert all(os.path.commonpath([str(root.resolve()), p]) == str(root.resolve()) for p in read_log)


def test_help_lists_commands_and_examples():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    for name in commands:
        assert name in res.output
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, name
        assert "Example" in sub.output, f"`sainet {name} --help` shows no example"


def test_synth_cli_writes_dataset(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "-n", "4", "--size", "96x64", "--layout", "voc"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "d" / "JPEGImages").glob("*.jpg"))) == 4
    bad = runner.invoke(app, ["synth", str(tmp_path / "e"), "--size", "big"])
    assert bad.exit_code == 2


def test_progress_in_a_log_is_plain_periodic_lines(tmp_path, monkeypatch):
    """stderr is no terminal (CliRunner, like a pipe or CI): lines while the work advances, the last with the
    time the work took, no bar drawn only at the end."""
    import sainet.cli._app as cli_app

    monkeypatch.setattr(cli_app, "LOG_PROGRESS_INTERVAL", 0.0)
    res = runner.invoke(app, ["synth", str(tmp_path / "s"), "--images", "6", "--size", "64x48"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("synth:")]
    assert len(lines) >= 6 and lines[-1].endswith(" done"), res.stderr
    assert lines[0].startswith("synth: 1/6 ") and lines[-1].startswith("synth: 6/6 ")
    assert "━" not in res.stderr


def test_bench_results_go_to_runs_bench_by_default():
    from typer.main import get_command

    bench = get_command(app).commands["bench-loader"]
    out = next(p for p in bench.params if p.name == "out")
    assert Path(out.default) == Path("runs/bench")


def test_version():
    from sainet import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.startswith(f"sainet {__version__} (ultralytics ")


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """README.md's "From Python" block (pack -> loader -> train), executed as written in a fresh folder."""
    import re
    import runpy

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"<!-- python-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "example.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(tmp_path / "example.py"), run_name="__main__")
    assert (tmp_path / "stores" / "py-synth").is_dir()
    assert (tmp_path / "runs" / "py" / "example" / "weights" / "best.pt").is_file()
