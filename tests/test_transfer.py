"""Classes between training stages, by name: the stage/store check and the head's class rows carried over."""

from __future__ import annotations

import logging

import pytest
import torch

from sainet.core.errors import ClassMappingError, DatasetError
from sainet.train.transfer import ClassCarry, carry_class_rows, check_stage_classes, match_classes


def _model(names: dict[int, str]):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(len(names))
    m = DetectionModel("yolov8n.yaml", nc=len(names), verbose=False)
    m.names = dict(names)
    return m


def _cls_convs(m):
    return [branch[-1] for branch in m.model[-1].cv3]


@pytest.fixture(scope="module")
def stage1():
    m = _model({0: "fire", 1: "smoke"})
    with torch.no_grad():  # rows unlike any fresh initialisation
        for conv in _cls_convs(m):
            conv.weight.normal_()
            conv.bias.copy_(torch.tensor([-3.0, 2.5]))
    return m


def test_smoke_rows_follow_their_name(stage1, caplog):
    new = _model({0: "0"})  # placeholder names: Ultralytics' own load copies shape-matched tensors only
    new.load(stage1, verbose=False)
    new.names = {0: "smoke"}
    assert not torch.equal(_cls_convs(new)[0].weight[0], _cls_convs(stage1)[0].weight[1])  # re-initialised
    box_before = [p.clone() for p in new.model[-1].cv2.parameters()]
    with caplog.at_level(logging.INFO, logger="sainet.train.transfer"):
        carried = carry_class_rows(new, stage1, {0: "smoke"}, origin="stage-1")
    assert carried == [ClassCarry("smoke", 1, 0)]
    assert "smoke: stage-1 class 1 → class 0 (3 head convs)" in caplog.text
    for dst, src in zip(_cls_convs(new), _cls_convs(stage1), strict=True):
        assert dst.weight.shape[0] == 1
        assert torch.equal(dst.weight[0], src.weight[1]) and dst.bias[0] == src.bias[1] == 2.5
    assert all(torch.equal(a, b) for a, b in zip(box_before, new.model[-1].cv2.parameters(), strict=True))
    # everything else is Ultralytics' shape-matched transfer: the hidden cls layers and the box branch came from stage 1
    assert torch.equal(new.model[-1].cv3[0][0].conv.weight, stage1.model[-1].cv3[0][0].conv.weight)
    assert torch.equal(new.model[-1].cv2[2][-1].weight, stage1.model[-1].cv2[2][-1].weight)


def test_rows_reordered_by_name_and_identity_left_alone(stage1):
    swapped = _model({0: "0", 1: "1"})
    swapped.load(stage1, verbose=False)
    assert carry_class_rows(swapped, stage1, {0: "Smoke ", 1: "fire"}) == [ClassCarry("Smoke ", 1, 0),
                                                                           ClassCarry("fire", 0, 1)]
    for dst, src in zip(_cls_convs(swapped), _cls_convs(stage1), strict=True):
        assert torch.equal(dst.weight, src.weight[[1, 0]]) and torch.equal(dst.bias, src.bias[[1, 0]])
    assert carry_class_rows(swapped, stage1, {0: "fire", 1: "smoke"}) == []  # same classes, same order: nothing to do
    assert match_classes({0: "fire", 1: "smoke"}, {0: "person"}) == []


def test_stage_classes_checked_by_name():
    check_stage_classes(2, ["smoke"], {0: "smoke"}, "/dev/shm/pyro")
    check_stage_classes(1, ["fire", "smoke"], {0: "smoke", 1: "fire"}, "/dev/shm/fasdd")  # any order, by name
    with pytest.raises(ClassMappingError) as e:
        check_stage_classes(1, ["fire", "smoke"], {0: "smoke"}, "/dev/shm/pyro")
    assert isinstance(e.value, DatasetError) and e.value.missing == ["fire"] and e.value.have == ["smoke"]
    assert "'fire'" in str(e.value) and "/dev/shm/pyro" in str(e.value) and "its classes: smoke" in str(e.value)
    with pytest.raises(ClassMappingError) as e:
        check_stage_classes(2, ["smoke"], {0: "fire", 1: "smoke"}, "/dev/shm/mixed")
    assert e.value.extra == ["fire"] and "sainet pack SRC --classes smoke" in str(e.value)
    assert "/dev/shm/mixed" in str(e.value)
    check_stage_classes(2, ["smoke"], {0: "fire", 1: "smoke"}, "/dev/shm/mixed", merge=True)  # single_cls on purpose
