"""Failure buckets (vgkit eval --errors): the pure functions on hand-made maps, then the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from vgkit.cli import app
from vgkit.data.images import ImageTransform
from vgkit.data.index import Record
from vgkit.engine.bundle import ExprSet
from vgkit.engine.evaluate import Predictions, gt_boxes, ious
from vgkit.engine.failures import (
    BUCKETS,
    IMAGE_ATTENTION,
    INCOHERENT,
    WRONG_PLACE,
    WRONG_SIZE,
    attention_share,
    cell_coverage,
    centre_inside,
    classify,
    failure_buckets,
    summarize,
)

G = (2, 2)  # cells, row-major: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
TL, TR, BR = (0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.5, 0.5, 1.0, 1.0)


def _t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_cell_coverage_counts_partial_cells_by_area():
    cov = cell_coverage(_t(TL, (0.25, 0.25, 0.75, 0.75), (0, 0, 1, 1), (0.0, 0.0, 0.25, 1.0)), G)
    torch.testing.assert_close(cov, _t([1, 0, 0, 0], [0.25] * 4, [1] * 4, [0.5, 0, 0.5, 0]))
    # rows before columns: a box over the bottom row covers cells 2 and 3
    torch.testing.assert_close(cell_coverage(_t((0, 0.5, 1, 1)), G), _t([0, 0, 1, 1]))


def test_attention_share():
    alpha = _t([1, 0, 0, 0], [1, 1, 0, 0], [1, 1.01, 0, 0], [0, 0, 0, 0], [-5, 1, 0, 0])
    gt = _t(TL, TL, TL, TL, TR)
    torch.testing.assert_close(attention_share(alpha, G, gt), _t(1.0, 0.5, 1 / 2.01, 0.0, 1.0))


def test_centre_inside_includes_the_border():
    pred = _t((0, 0, 0.9, 0.9), (0.6, 0.6, 1, 1), (0, 0, 1, 1))
    assert centre_inside(pred, _t(TL, TL, TL)).tolist() == [True, False, True]


def test_classify_each_bucket_and_the_order_of_precedence():
    on_tl = [1.0, 0, 0, 0]
    cases = [
        # attention on the top-left, target top-right: attention failed, whatever the box
        (on_tl, TR, TR, IMAGE_ATTENTION),
        (on_tl, TR, (0.55, 0.05, 0.6, 0.1), IMAGE_ATTENTION),  # centre inside: still attention first
        # attention on the target, box elsewhere: the box does not follow the attention
        (on_tl, TL, BR, INCOHERENT),
        # attention on the target, box holds it, centre inside the target: size is wrong
        (on_tl, TL, (0.0, 0.0, 0.9, 0.9), WRONG_SIZE),
        # target covers 64% of the attended cell; the huge box holds all of it but is centred off it
        (on_tl, (0.0, 0.0, 0.4, 0.4), (0.0, 0.0, 1.0, 1.0), WRONG_PLACE),
        # a dead (all-zero) map attends to nothing
        ([0.0, 0, 0, 0], TL, TL, IMAGE_ATTENTION),
    ]
    alpha = _t(*[c[0] for c in cases])
    got = classify(alpha, G, _t(*[c[2] for c in cases]), _t(*[c[1] for c in cases]))
    assert got == [c[3] for c in cases]


def test_without_attention_only_size_and_place():
    got = classify(None, G, _t((0.0, 0.0, 0.9, 0.9), BR), _t(TL, TL))
    assert got == [WRONG_SIZE, WRONG_PLACE]
    s = summarize([None, WRONG_SIZE, WRONG_PLACE, WRONG_PLACE], has_attention=False)
    n = {r["bucket"]: r["n"] for r in s["buckets"]}
    assert n == {IMAGE_ATTENTION: None, INCOHERENT: None, WRONG_SIZE: 1, WRONG_PLACE: 2}
    assert s["failures"] == 3 and [r["bucket"] for r in s["buckets"]] == list(BUCKETS)


def _rec(box, w=200, h=100) -> Record:
    return Record("img", "images/img.jpg", w, h, box, "the thing", ("the", "thing"), "test")


def test_failure_buckets_map_original_pixels_onto_the_grid():
    # a 200 x 100 image stretched to 64 x 64: its top-left quarter is the top-left cell
    records = [_rec((0.0, 0.0, 100.0, 50.0)), _rec((0.0, 0.0, 100.0, 50.0)),
               _rec((100.0, 0.0, 200.0, 50.0))]
    exprs = ExprSet(records, ["img"], torch.zeros(3, dtype=torch.long), torch.zeros(3, 4),
                    torch.tensor([[200.0, 100.0]] * 3))
    pred = _t((100, 50, 200, 100), (0, 0, 100, 50), (0, 0, 100, 50))
    alpha = _t([1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0])
    preds = Predictions(exprs, pred, alpha, None)
    v = ious(pred, gt_boxes(exprs))
    got = failure_buckets(preds, ImageTransform((64, 64)), G, v)
    assert got == [INCOHERENT, None, IMAGE_ATTENTION]
    no_attention = Predictions(exprs, pred, None, None)
    assert failure_buckets(no_attention, ImageTransform((64, 64)), G, v) == [
        WRONG_PLACE, None, WRONG_PLACE]


def test_eval_errors_counts_jsonl_and_gallery(tiny_run, runner, tmp_path):
    gallery = tmp_path / "gallery"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run.run), "--device", "cpu",
                                  "--errors", "--gallery", str(gallery), "--gallery-n", "8",
                                  "--predictions", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    assert "why the" in res.output and "incoherent box" in res.output
    summary = json.loads((tiny_run.run / "eval-test.json").read_text())
    err = summary["errors"]
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    wrong = [r for r in rows if not r["correct"]]
    assert err["failures"] == len(wrong) > 0
    assert sum(b["n"] for b in err["buckets"]) == len(wrong)  # the model has image attention
    assert all(r["error"] in BUCKETS for r in wrong)
    assert all(r["error"] is None for r in rows if r["correct"])
    listing = json.loads((gallery / "index.json").read_text())
    html = (gallery / "index.html").read_text()
    for item in listing:
        assert (gallery / item["file"]).is_file()
        assert item["bucket"] == rows[item["index"]]["error"]
        if item["bucket"]:
            assert f"<h2>wrong: {item['bucket']}" in html
    assert err["gallery_index"] == str(gallery / "index.json")


@pytest.mark.parametrize("n", [1, 5])
def test_summary_shares_add_up(n):
    buckets = [IMAGE_ATTENTION] * n + [INCOHERENT, WRONG_SIZE, None]
    s = summarize(buckets, has_attention=True)
    assert s["failures"] == n + 2
    assert sum(r["share"] for r in s["buckets"]) == pytest.approx(1.0)
