"""Phrase-blind baselines: the best constant box and a perfect detector that ignores the phrase."""

from __future__ import annotations

import torch

from vgkit.data.index import DatasetIndex, Record
from vgkit.engine.baselines import (
    WHOLE_IMAGE,
    best_constant_box,
    constant_box_accuracy,
    constant_box_scores,
    phrase_blind_accuracy,
)
from vgkit.engine.bundle import ExprSet


def _exprs(records: list[Record]) -> ExprSet:
    ids = sorted({r.image_id for r in records})
    sizes = torch.tensor([[r.width, r.height] for r in records], dtype=torch.float32)
    return ExprSet(records, ids, torch.tensor([ids.index(r.image_id) for r in records]),
                   torch.zeros(len(records), 4), sizes)


def _rec(image: str, box, w=200, h=100, sent=0) -> Record:
    return Record(image, f"images/{image}.jpg", w, h, tuple(float(v) for v in box), "p", ("p",),
                  "train", f"{image}_{box[0]}", sent)


def test_constant_box_finds_the_shared_box_and_transfers_by_image_fraction():
    # every target is the middle half of its image, whatever the image size
    train = _exprs([_rec(f"a{i}", (50, 25, 150, 75)) for i in range(5)]
                   + [_rec(f"b{i}", (100, 50, 300, 150), w=400, h=200) for i in range(5)])
    box = best_constant_box(train)
    assert constant_box_accuracy(box, train) == 1.0
    other = _exprs([_rec("c", (0, 0, 20, 20))])
    assert constant_box_accuracy(box, other) == 0.0


def test_phrase_blind_detector_expectation_is_the_share_of_matching_objects():
    objects = [(0, 0, 40, 40), (60, 0, 100, 40), (120, 0, 160, 40), (0, 50, 40, 90)]
    index = DatasetIndex([_rec("x", b, sent=k) for k, b in enumerate(objects)], name="t")
    exprs = _exprs([_rec("x", objects[0]), _rec("x", objects[2])])
    assert abs(phrase_blind_accuracy(index, exprs) - 0.25) < 1e-6
    # two nearly identical objects both count as right for either target
    index2 = DatasetIndex([_rec("y", (0, 0, 40, 40)), _rec("y", (1, 1, 41, 41), sent=1),
                           _rec("y", (100, 50, 140, 90), sent=2)], name="t")
    assert abs(phrase_blind_accuracy(index2, _exprs([_rec("y", (0, 0, 40, 40))])) - 2 / 3) < 1e-6


def test_whole_image_box_scores_by_the_targets_share_of_the_image():
    # IoU with the whole image is the target's share of it: 1/2 -> right, 1/4 -> wrong
    exprs = _exprs([_rec("a", (0, 0, 100, 100)), _rec("b", (50, 25, 150, 75))])
    s = constant_box_scores(WHOLE_IMAGE, exprs)
    assert s["acc@0.5"] == 0.5 and abs(s["miou"] - (0.5 + 0.25) / 2) < 1e-6
