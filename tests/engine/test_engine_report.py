"""Breakdowns partition the expressions; the IoU conventions; the predictions JSONL."""

from __future__ import annotations

import json

import pytest
import torch

from vgkit.data.index import Record
from vgkit.engine.bundle import ExprSet
from vgkit.engine.evaluate import Predictions
from vgkit.engine.report import (
    breakdowns,
    length_bucket,
    prediction_rows,
    size_bucket,
    write_predictions,
)


def _record(i: int, n_words: int, box, size=(100, 100), kind: str | None = None) -> Record:
    words = tuple(f"w{k}" for k in range(n_words))
    return Record(image_id=f"img{i % 3}", image_path=f"images/img{i % 3}.jpg", width=size[0],
                  height=size[1], box=tuple(float(c) for c in box), phrase=" ".join(words),
                  tokens=words, split="test", ref_id=f"img{i % 3}_{i}", sent_id=i % 2,
                  extra={"type": kind} if kind else {})


def _preds(records: list[Record], boxes) -> Predictions:
    ids = sorted({r.image_id for r in records})
    exprs = ExprSet(records, ids, torch.tensor([ids.index(r.image_id) for r in records]),
                    torch.zeros(len(records), 4),
                    torch.tensor([[r.width, r.height] for r in records], dtype=torch.float32))
    return Predictions(exprs, torch.as_tensor(boxes, dtype=torch.float32), None, None)


@pytest.mark.parametrize(("n", "bucket"), [(0, "1"), (1, "1"), (2, "2"), (3, "3-4"), (4, "3-4"),
                                           (5, "5-8"), (8, "5-8"), (9, "9+"), (30, "9+")])
def test_length_buckets(n, bucket):
    assert length_bucket(n) == bucket


@pytest.mark.parametrize(("rel", "bucket"), [(0.0, "small (<1/32)"), (1 / 32 - 1e-9, "small (<1/32)"),
                                             (1 / 32, "medium (1/32-1/4)"),
                                             (0.2499, "medium (1/32-1/4)"),
                                             (0.25, "large (>=1/4)"), (1.0, "large (>=1/4)")])
def test_size_buckets(rel, bucket):
    assert size_bucket(rel) == bucket


def test_breakdowns_partition_the_expressions():
    g = torch.Generator().manual_seed(0)
    recs, boxes = [], []
    lengths = [1, 2, 3, 4, 5, 7, 8, 9, 12, 2, 6, 1]
    for i, n in enumerate(lengths):
        x1, y1 = torch.randint(0, 50, (2,), generator=g).tolist()
        w, h = torch.randint(1, 50, (2,), generator=g).tolist()
        kind = ["attribute", "position", None][i % 3]
        recs.append(_record(i, n, (x1, y1, x1 + w, y1 + h), kind=kind))
        # every other prediction is exact, so both Acc@0.5 outcomes occur
        boxes.append(recs[-1].box if i % 2 == 0 else (0, 0, 5, 5))
    out = breakdowns(_preds(recs, boxes))
    assert out["n"] == len(recs)
    for key in ("by_length", "by_size", "by_type"):
        assert sum(r["n"] for r in out[key]) == len(recs), key
    by_len = {r["bucket"]: r["n"] for r in out["by_length"]}
    assert by_len == {"1": 2, "2": 2, "3-4": 2, "5-8": 4, "9+": 2}
    assert {r["bucket"] for r in out["by_type"]} == {"attribute", "position", "(none)"}
    # accuracy over a partition's buckets, weighted by n, is the overall accuracy
    for key in ("by_length", "by_size", "by_type"):
        acc = sum(r["acc@0.5"] * r["n"] for r in out[key] if r["n"]) / out["n"]
        assert acc == pytest.approx(out["acc@0.5"])


def test_no_type_breakdown_without_types():
    recs = [_record(i, 3, (0, 0, 10, 10)) for i in range(4)]
    assert "by_type" not in breakdowns(_preds(recs, [r.box for r in recs]))


def test_inclusive_differs_from_continuous_on_a_small_box(tmp_path):
    # a 2x2 ground truth and a prediction offset by fractions of a pixel
    recs = [_record(0, 2, (10, 10, 12, 12))]
    p = _preds(recs, [(10.6, 10.6, 12.4, 12.4)])
    cont = breakdowns(p, "continuous")["miou"]
    incl = breakdowns(p, "inclusive")["miou"]
    # continuous: 1.4^2 / (4 + 1.8^2 - 1.4^2); inclusive: rounded to (11, 11, 12, 12), i.e.
    # the single pixel (11, 11) against pixels 10..11 x 10..11 -> 1 / 4
    assert cont == pytest.approx(1.96 / 5.28, abs=1e-5)
    assert incl == pytest.approx(0.25, abs=1e-5)
    line = json.loads(write_predictions(p, tmp_path / "p.jsonl", "inclusive").read_text())
    assert line["iou"] == pytest.approx(0.25, abs=1e-5) and line["iou_convention"] == "inclusive"


def test_write_predictions_one_line_per_expression(tmp_path):
    recs = [_record(i, 3, (0, 0, 10 + i, 10)) for i in range(5)]
    p = _preds(recs, [(0, 0, 10, 10)] * 5)
    path = write_predictions(p, tmp_path / "sub" / "p.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 5
    assert lines == prediction_rows(p)
    assert {"image_id", "ref_id", "sent_id", "phrase", "gt", "pred", "iou", "correct"} <= set(lines[0])
    assert lines[0]["correct"] and lines[0]["iou"] == pytest.approx(1.0)
