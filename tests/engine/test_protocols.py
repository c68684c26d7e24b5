"""Scoring protocols: the threshold's edge, GIoU against IoU, inclusive pixels on small boxes."""

from __future__ import annotations

import pytest
import torch

from vgkit.engine.evaluate import ious
from vgkit.engine.protocols import PROTOCOLS, accuracies, overlap, parse_protocols, score
from vgkit.errors import VgkitError


def _t(*boxes):
    return torch.tensor(boxes, dtype=torch.float32)


@pytest.mark.parametrize(("pred", "gt", "grow"), [
    ((0, 0, 10, 10), (0, 0, 10, 5), 3),  # 50 of 100 pixels
    ((0, 0, 1, 1), (0, 0, 1, 0.5), 3),  # the same in fractions
    ((3, 7, 43, 27), (3, 7, 23, 27), 2),  # 400 of 800, away from the origin
])
def test_iou_of_exactly_one_half_passes_with_ge_and_fails_with_gt(pred, gt, grow):
    p, g = _t(pred), _t(gt)
    assert overlap(p, g, "iou").item() == 0.5  # exactly: no epsilon in the denominator
    assert score(p, g, "iou>=0.5").tolist() == [True]
    assert score(p, g, "iou>0.5").tolist() == [False]
    # and just above the threshold (the ground truth grown inside the prediction) both count
    bigger = g.clone()
    bigger[0, grow] += 0.01
    assert score(p, bigger, "iou>=0.5").tolist() == score(p, bigger, "iou>0.5").tolist() == [True]


def test_giou_subtracts_the_enclosing_box_share_outside_the_union():
    # a diagonal shift: IoU 67.24 / 132.76 = 0.5065, enclosing box 11.8^2 = 139.24
    p, g = _t((0, 0, 10, 10)), _t((1.8, 1.8, 11.8, 11.8))
    iou_v, giou_v = overlap(p, g, "iou").item(), overlap(p, g, "giou").item()
    assert iou_v == pytest.approx(67.24 / 132.76)
    assert giou_v == pytest.approx(67.24 / 132.76 - (139.24 - 132.76) / 139.24)
    assert score(p, g, "iou>=0.5").tolist() == [True]
    assert score(p, g, "giou>=0.5").tolist() == [False]
    # a shift along one axis: the enclosing box is the union, GIoU equals IoU
    q = _t((3, 0, 13, 10))
    assert overlap(p, q, "giou").item() == pytest.approx(overlap(p, q, "iou").item())
    # disjoint boxes: IoU 0, GIoU negative (1 of the 3 enclosing pixels is outside both)
    far = _t((2, 0, 3, 1))
    assert overlap(_t((0, 0, 1, 1)), far, "iou").item() == 0.0
    assert overlap(_t((0, 0, 1, 1)), far, "giou").item() == pytest.approx(-1 / 3)


def test_inclusive_rounds_to_whole_pixels_which_matters_on_small_boxes():
    gt = _t((10, 10, 12, 12))  # a 2 x 2 pixel box
    off = _t((10.4, 10.4, 12.4, 12.4))  # 0.4 px off: continuous IoU 2.56 / 5.44 = 0.47
    assert overlap(off, gt, "iou").item() == pytest.approx(2.56 / 5.44)
    assert score(off, gt, "iou>=0.5").tolist() == [False]
    assert overlap(off, gt, "inclusive-iou").item() == 1.0  # the same pixels once rounded
    assert score(off, gt, "inclusive").tolist() == [True]
    # and the other way: one pixel more is a third of a 3 x 3 box's rows
    assert overlap(_t((10, 10, 12, 13)), gt, "inclusive-iou").item() == pytest.approx(4 / 6)


def _hu_compute_iou(boxes, target):
    """The formula of the inclusive source (see docs/engine.md): [xmin, ymin, xmax, ymax]
    0-indexed pixels, xmax and ymax included, so every width and height has a +1."""
    a = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    t = (target[:, 2] - target[:, 0] + 1) * (target[:, 3] - target[:, 1] + 1)
    iw = (torch.minimum(boxes[:, 2], target[:, 2]) - torch.maximum(boxes[:, 0], target[:, 0])
          + 1).clamp(min=0)
    ih = (torch.minimum(boxes[:, 3], target[:, 3]) - torch.maximum(boxes[:, 1], target[:, 1])
          + 1).clamp(min=0)
    return iw * ih / (a + t - iw * ih)


def test_inclusive_is_the_sources_formula_on_the_last_pixel_index_and_evals_convention():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 50
    pred = torch.cat([xy, xy + 1 + torch.rand(200, 2, generator=g) * 30], 1)
    gt = pred + (torch.rand(200, 4, generator=g) - 0.5) * 12
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    ours = overlap(pred, gt, "inclusive-iou")
    last = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # x2 = x1 + w: last pixel x2 - 1
    hu = _hu_compute_iou(pred.double().round() - last, gt.double().round() - last)
    assert torch.allclose(ours, hu)
    # what `vgkit eval --iou-convention inclusive` computes: the same numbers
    assert torch.allclose(ours.float(), ious(pred, gt, "inclusive"), atol=1e-6)
    # and different from continuous IoU on these boxes, so the test tells them apart
    assert not torch.allclose(ours, overlap(pred, gt, "iou"), atol=1e-3)


def test_empty_and_inverted_boxes_overlap_nothing_without_nan():
    empty, box = _t((5, 5, 5, 9)), _t((0, 0, 10, 10))
    inverted = _t((8, 8, 2, 2))
    for measure in ("iou", "inclusive-iou"):
        assert overlap(empty, box, measure).item() == 0.0
        assert overlap(inverted, box, measure).item() == 0.0
        assert overlap(empty, empty, measure).item() == 0.0
    assert overlap(empty, empty, "giou").item() == 0.0
    assert not any(score(empty, box, p).item() for p in PROTOCOLS)


def test_parse_protocols_all_lists_and_errors():
    assert [p.name for p in parse_protocols("all")] == list(PROTOCOLS) \
        == ["iou>=0.5", "iou>0.5", "giou>=0.5", "inclusive"]
    assert [p.name for p in parse_protocols(None)] == ["iou>=0.5"]
    assert [p.name for p in parse_protocols("giou>=0.5, iou>0.5")] == ["giou>=0.5", "iou>0.5"]
    assert [p.name for p in parse_protocols(["inclusive", "inclusive"])] == ["inclusive"]
    with pytest.raises(VgkitError, match=r"unknown protocol 'hu'; choose one of iou>=0\.5, "
                                         r"iou>0\.5, giou>=0\.5, inclusive, or all"):
        parse_protocols("hu")
    with pytest.raises(VgkitError, match="empty name"):
        parse_protocols("iou>=0.5,,giou>=0.5")


def test_accuracies_count_unscored_expressions_as_failures():
    pred = _t((0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10))
    gt = _t((0, 0, 10, 10), (0, 0, 10, 5), (50, 50, 60, 60))  # IoU 1, exactly 0.5, 0
    out = accuracies(pred, gt, parse_protocols("all"), unscored=1)
    assert out["iou>=0.5"] == {"correct": 2, "acc": 2 / 4}
    assert out["iou>0.5"] == {"correct": 1, "acc": 1 / 4}
    assert out["giou>=0.5"]["correct"] == 2 and out["inclusive"]["correct"] == 2
    assert accuracies(pred[:0], gt[:0], parse_protocols(None), unscored=0) == {
        "iou>=0.5": {"correct": 0, "acc": 0.0}}
