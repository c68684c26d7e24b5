"""Scoring protocols: when a predicted box counts as correct.

Grounding results are published under slightly different rules; each rule is one
:class:`Protocol` here, as data: what overlap is measured between the prediction
and the ground truth, the threshold, and whether reaching it exactly counts
(``>=``) or not (``>``). Boxes are xyxy in original-image pixels.

Overlaps are computed in float64 with no epsilon added to the denominator, so an
overlap that is exactly the threshold (say 50 of 100 pixels) compares as exactly
the threshold. A box with no area (or an inverted one) overlaps nothing: 0, and
where both boxes are empty, 0 too. docs/engine.md names where each rule comes from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vgkit.errors import VgkitError

Measure = Literal["iou", "giou", "inclusive-iou"]


@dataclass(frozen=True)
class Protocol:
    """One scoring rule: ``measure(pred, gt) >= threshold`` (``>`` when ``strict``)."""

    name: str
    measure: Measure
    threshold: float
    strict: bool  # True: the threshold itself is a failure
    description: str


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("iou>=0.5", "iou", 0.5, False,
             "IoU of continuous boxes (w = x2 - x1) >= 0.5"),
    Protocol("iou>0.5", "iou", 0.5, True,
             "IoU of continuous boxes (w = x2 - x1) > 0.5: exactly 0.5 fails"),
    Protocol("giou>=0.5", "giou", 0.5, False,
             "generalized IoU (IoU less the enclosing box's share outside the union) >= 0.5"),
    Protocol("inclusive", "inclusive-iou", 0.5, False,
             "IoU of boxes rounded to whole pixels and counted inclusively "
             "(w = x2 - x1 + 1 over the last pixel index) >= 0.5"),
)}
DEFAULT = "iou>=0.5"


def get_protocol(name: str) -> Protocol:
    """The protocol called `name` (an error listing the choices otherwise)."""
    if name not in PROTOCOLS:
        raise VgkitError(f"unknown protocol {name!r}; choose one of "
                         f"{', '.join(PROTOCOLS)}, or all")
    return PROTOCOLS[name]


def parse_protocols(spec: str | Iterable[str] | None) -> list[Protocol]:
    """Protocols from ``"all"``, one name, a comma-separated list or a list of names."""
    if spec is None:
        return [PROTOCOLS[DEFAULT]]
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if not names or any(not n for n in names):
        raise VgkitError(f"protocol {spec!r}: an empty name; choose from "
                         f"{', '.join(PROTOCOLS)}, or all")
    if "all" in names:
        return list(PROTOCOLS.values())
    return [get_protocol(n) for n in dict.fromkeys(names)]


def _parts(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(intersection, union) areas of xyxy boxes, float64; empty boxes have area 0."""
    def area(x: Tensor) -> Tensor:
        return (x[..., 2] - x[..., 0]).clamp(min=0) * (x[..., 3] - x[..., 1]).clamp(min=0)

    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    return inter, area(a) + area(b) - inter


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny),
                       torch.zeros_like(num))


def overlap(pred: Tensor, gt: Tensor, measure: Measure) -> Tensor:
    """The overlap [n] (float64) of each predicted box [n, 4] with its ground truth [n, 4]."""
    a, b = pred.double(), gt.double()
    if measure == "inclusive-iou":
        # continuous x2 = x1 + w is inclusive pixel x2 - 1: the +1 of inclusive widths
        # cancels it, so the inclusive IoU of the rounded boxes is their plain IoU
        a, b = a.round(), b.round()
    inter, union = _parts(a, b)
    v = _ratio(inter, union)
    if measure == "giou":
        # the smallest box enclosing both, and the share of it outside the union
        cw = (torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])).clamp(min=0)
        ch = (torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])).clamp(min=0)
        enclosing = cw * ch
        v = v - _ratio(enclosing - union, enclosing)
    elif measure not in ("iou", "inclusive-iou"):
        raise VgkitError(f"unknown overlap measure {measure!r}; choose iou, giou or inclusive-iou")
    return v


def score(pred: Tensor, gt: Tensor, protocol: Protocol | str) -> Tensor:
    """Whether each prediction [n, 4] is correct against its ground truth [n, 4] (bool [n])."""
    p = get_protocol(protocol) if isinstance(protocol, str) else protocol
    v = overlap(pred, gt, p.measure)
    return v > p.threshold if p.strict else v >= p.threshold


def accuracies(pred: Tensor, gt: Tensor, protocols: Sequence[Protocol], *,
               unscored: int = 0) -> dict[str, dict[str, float | int]]:
    """Per protocol: ``correct`` and ``acc`` over the scored and `unscored` (failures) together."""
    n = len(pred) + unscored
    out: dict[str, dict[str, float | int]] = {}
    for p in protocols:
        k = int(score(pred, gt, p).sum()) if len(pred) else 0
        out[p.name] = {"correct": k, "acc": k / n if n else 0.0}
    return out
