"""`sainet check` finds each problem kind, names the file, and passes a clean dataset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sainet.cli import app
from sainet.core.check import check_dataset
from sainet.core.datasets import ProblemKind, open_dataset
from sainet.core.imaging import encode_jpeg
from tests.conftest import make_image, pil_bytes

runner = CliRunner()


def _exif_rotated(img: np.ndarray, orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_bytes(img, "JPEG", exif=exif.tobytes())


@pytest.fixture()
def hostile(tmp_path):
    """A YOLO dataset with one of each problem check must find (file name -> expected kind)."""
    root = tmp_path / "ds"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    good = encode_jpeg(make_image(64, 48, 1))
    files = {
        "ok.jpg": good,
        "zero.jpg": b"",
        "truncated.jpg": encode_jpeg(make_image(64, 48, 2))[:300],
        "garbage.jpg": b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + bytes(range(256)) * 4,
        "png_named.jpg": pil_bytes(make_image(64, 48, 3), "PNG"),
        "gray.jpg": pil_bytes(make_image(64, 48, 4)[:, :, 0], "JPEG"),
        "cmyk.jpg": None,
        "progressive.jpg": pil_bytes(make_image(64, 48, 5), "JPEG", progressive=True),
        "rotated.jpg": _exif_rotated(make_image(64, 48, 6), 6),
        "dup.jpg": good,
        "labels_bad.jpg": encode_jpeg(make_image(64, 48, 7)),
    }
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(make_image(64, 48, 8)).convert("CMYK").save(buf, "JPEG")
    files["cmyk.jpg"] = buf.getvalue()
    for name, data in files.items():
        (root / "images" / "train" / name).write_bytes(data)
    (root / "labels" / "train" / "ok.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "train" / "labels_bad.txt").write_text(
        "0 0.5 0.5 0.2\n"            # wrong field count
        "1 a b c d\n"                # not numbers
        "7 0.5 0.5 0.2 0.2\n"        # class out of range
        "0 nan 0.5 0.2 0.2\n"        # NaN
        "0 0.5 0.5 -0.2 0.2\n"       # negative
        "0 0.95 0.5 0.2 0.2\n"       # out of range (clipped)
        "1 0.5 0.5 0.0 0.2\n"        # zero area
        "1 0.4 0.4 0.1 0.1\n"        # fine
    )
    (tmp_path / "outside.jpg").write_bytes(good)
    lst = root / "train.txt"
    lst.write_text("".join(f"./images/train/{n}\n" for n in files) + "../outside.jpg\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "train.txt", "names": ["fire", "smoke"]}))
    expected = {
        "zero.jpg": ProblemKind.ZERO_BYTE, "truncated.jpg": ProblemKind.TRUNCATED, "garbage.jpg": ProblemKind.UNDECODABLE,
        "png_named.jpg": ProblemKind.NOT_JPEG, "gray.jpg": ProblemKind.GRAYSCALE, "cmyk.jpg": ProblemKind.CMYK,
        "progressive.jpg": ProblemKind.PROGRESSIVE, "rotated.jpg": ProblemKind.EXIF_ORIENTATION,
        "dup.jpg": ProblemKind.DUPLICATE_IMAGE, "outside.jpg": ProblemKind.PATH_OUTSIDE_ROOT,
    }
    return root, expected


def test_check_finds_each_problem_kind(hostile):
    root, expected = hostile
    report = check_dataset(open_dataset(root))
    found = {(p.kind, p.path) for p in report.problems}
    for name, kind in expected.items():
        assert any(k is kind and name in path for k, path in found), (name, kind, sorted(found))
    label_kinds = {p.kind for p in report.problems if p.path.endswith("labels_bad.txt")}
    assert label_kinds >= {
        ProblemKind.LABEL_MALFORMED, ProblemKind.CLASS_OUT_OF_RANGE, ProblemKind.BOX_NAN,
        ProblemKind.BOX_NEGATIVE, ProblemKind.BOX_OUT_OF_RANGE, ProblemKind.BOX_ZERO_AREA,
    }
    st = report.splits["train"]
    # good: ok, png_named, gray, cmyk, progressive, rotated, dup, labels_bad -> 8; bad: zero, truncated, garbage
    assert (st.images, st.bad_images) == (8, 3)
    # labels_bad keeps the out-of-range (clipped) box and the fine one; ok.jpg has one box
    assert st.boxes == 3
    assert report.unusable_reason() is None  # usable: bad images are left out


def test_check_cli_json_and_exit_codes(hostile, synth_yolo, tmp_path):
    root, _ = hostile
    res = runner.invoke(app, ["check", str(root), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    for key in ("images", "boxes", "per_class", "backgrounds", "problems"):
        assert key in doc
    assert all({"path", "kind", "detail"} <= p.keys() for p in doc["problems"])
    assert runner.invoke(app, ["check", str(root), "--strict"]).exit_code == 1

    clean = runner.invoke(app, ["check", str(synth_yolo), "--json"])
    assert clean.exit_code == 0
    doc = json.loads(clean.stdout[clean.stdout.index("{"):])
    assert doc["problems"] == [] and doc["images"] == 12 and doc["backgrounds"] >= 1

    # A dataset with nothing decodable is not usable: non-zero exit and a one-line reason.
    empty = tmp_path / "empty"
    shutil.copytree(root, empty)
    for p in (empty / "images" / "train").iterdir():
        p.write_bytes(b"")
    res = runner.invoke(app, ["check", str(empty)])
    assert res.exit_code == 1
    assert "not usable" in res.output


def test_check_size_mismatch_from_annotation(tmp_path):
    from sainet.synth import synthesize

    synthesize(tmp_path, images=3, size=(96, 64), layout="coco", background=0)
    ann = tmp_path / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    doc["images"][0]["width"] = 100
    ann.write_text(json.dumps(doc))
    report = check_dataset(open_dataset(tmp_path))
    assert [p.kind for p in report.problems] == [ProblemKind.SIZE_MISMATCH]
    assert doc["images"][0]["file_name"] in report.problems[0].path


def test_unknown_layout_is_a_typed_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    res = runner.invoke(app, ["check", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a known dataset layout" in res.output


def test_check_reports_unmatched_images_and_labels_and_class_typos(synth_yolo, tmp_path):
    """An image without a label file, a label file without an image, and (no data.yaml) class 5 in a
    set using 0 and 1: each reported, with counts and examples; warnings fail only with --strict."""
    src = tmp_path / "ds"
    shutil.copytree(synth_yolo, src)
    (src / "data.yaml").unlink()
    labels = sorted((src / "labels" / "train").glob("*.txt"))
    with_boxes = [p for p in labels if p.read_text().strip()]
    (src / "images" / "train" / (labels[0].stem + ".jpg")).unlink()  # its label file stays: an orphan
    with_boxes[1].unlink()  # its image stays: no label file
    with_boxes[2].write_text(with_boxes[2].read_text() + "5 0.5 0.5 0.1 0.1\n")
    report = check_dataset(open_dataset(src))
    kinds = {p.kind: p for p in report.problems}
    assert kinds[ProblemKind.ORPHAN_LABEL].path == f"labels/train/{labels[0].name}"
    typo = kinds[ProblemKind.CLASS_OUT_OF_RANGE]
    assert typo.path == f"images/train/{with_boxes[2].stem}.jpg" and "class 5" in typo.detail and "typo" in typo.detail
    assert any(n.startswith("1 images have no label file") and with_boxes[1].name in n for n in report.notes)
    assert any(n.startswith("1 label files have no image") and labels[0].name in n for n in report.notes)
    runner = CliRunner()
    assert runner.invoke(app, ["check", str(src)]).exit_code == 0  # warnings: listed, usable
    res = runner.invoke(app, ["check", str(src), "--strict"])
    assert res.exit_code == 1 and "--strict" in res.stderr
    helptext = runner.invoke(app, ["check", "--help"], env={"COLUMNS": "200"}).stdout
    assert "0" in helptext and "--strict any warning" in helptext.replace("\n", " ").replace("  ", " ")


def test_check_with_names_reports_no_gap_and_complete_sets_nothing(synth_yolo):
    report = check_dataset(open_dataset(synth_yolo))
    kinds = {p.kind for p in report.problems}
    assert ProblemKind.ORPHAN_LABEL not in kinds and ProblemKind.CLASS_OUT_OF_RANGE not in kinds
