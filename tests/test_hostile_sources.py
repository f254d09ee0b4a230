"""Odd and hostile sources: symlinks out of the root, non-UTF-8 names, malformed COCO/YAML/parquet.

`check` and `pack` run in a child process per batch (tests/hostile.py); the long CLI series, with
exit codes and printed output, is `make test-slow`.
"""

from __future__ import annotations

import json

import pytest
import yaml

from sainet.core.check import check_dataset
from sainet.core.datasets import open_dataset
from sainet.core.datasets.guards import check_coco_doc, load_yaml
from sainet.core.errors import DatasetError
from tests.hostile import SECRET, format_table, run_jobs
from tests.hostile_cli import source_cases, source_jobs, source_outcomes


def _assert_all_clean(outcomes) -> None:  # noqa: ANN001
    bad = [f"{o.result}: {o.case}: {o.detail}" for o in outcomes if o.result != "clean"]
    assert not bad, "\n".join(bad) + "\n" + format_table(outcomes)


def test_every_hostile_source_is_a_problem_or_a_clear_error(tmp_path):
    outcomes = run_jobs(source_jobs(tmp_path / "src"))
    assert len(outcomes) == len(list(source_cases(tmp_path / "count")))
    _assert_all_clean(outcomes)


def test_symlinked_label_outside_the_root_is_reported_never_read(tmp_path):
    build = dict((c, b) for c, b, _ in source_cases(tmp_path))["YOLO label file is a symlink to a file outside the root"]
    (tmp_path / "case").mkdir()
    src = build(tmp_path / "case")
    report = check_dataset(open_dataset(src), threads=1)
    text = json.dumps(report.as_dict())
    assert SECRET not in text and "0.123" not in text
    assert any(p.kind.value == "path_outside_root" and p.path.endswith(".txt") for p in report.problems)


def test_yaml_aliases_and_size_are_refused(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("a: &x [1, 2]\nb: *x\n")
    with pytest.raises(DatasetError, match="anchors and aliases"):
        load_yaml(p)
    p.write_text("names: [fire]\n" + "#" * (1 << 20))
    with pytest.raises(DatasetError, match="more than a dataset YAML"):
        load_yaml(p)
    p.write_text(yaml.safe_dump({"names": ["fire", "smoke"], "train": "images/train"}))
    assert load_yaml(p)["names"] == ["fire", "smoke"]


def test_duplicate_coco_category_ids_are_an_error_not_a_relabel():
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "fire"}, {"id": 1, "name": "smoke"}]}
    with pytest.raises(DatasetError, match="category id 1 is used by more than one"):
        check_coco_doc(doc, "x.json")


@pytest.mark.slow
def test_hostile_sources_through_the_cli(tmp_path):
    _assert_all_clean(source_outcomes(tmp_path / "cli"))


def test_voc_oversized_annotation_and_class_names_are_bounded(tmp_path):
    """VOC gets the guards the other importers have: an annotation file over MAX_XML_BYTES is a
    problem naming it (not parsed, the rest imports), and class names pass check_class_names."""
    from sainet.core.datasets.voc import MAX_XML_BYTES
    from sainet.synth import synthesize

    src = tmp_path / "voc"
    synthesize(src, images=4, size=(96, 64), seed=1, val_fraction=0, layout="voc")
    xmls = sorted((src / "Annotations").glob("*.xml"))
    big = xmls[0]
    big.write_text(big.read_text().replace("</annotation>", "<!--" + "x" * MAX_XML_BYTES + "--></annotation>"))
    report = check_dataset(open_dataset(src), threads=1)
    bad = [p for p in report.problems if p.path.endswith(big.name)]
    assert bad and "not parsed" in bad[0].detail
    assert sum(1 for _ in open_dataset(src).samples()) == len(xmls) - 1
    (src / "classes.txt").write_text("smoke\n" + "f" * 300 + "\n")
    with pytest.raises(DatasetError, match="classes.txt: a class name of 300 characters"):
        open_dataset(src)
