"""Evaluation: predictions in original pixels, Acc@0.5 and mean IoU.

Acc@0.5 counts a prediction correct when IoU(prediction, ground truth) >= 0.5,
both in ORIGINAL image pixels. Every expression of the split is in the
denominator: one that cannot be scored (its image is unreadable, its record
invalid) counts as a failure with IoU 0, and the numbers say how many there were. ``continuous`` IoU treats boxes as real-valued
(x2 = x1 + w); ``inclusive`` is ReferIt's hu form's: coordinates rounded to whole
pixels, both boxes counted inclusively (+1 on widths and heights).

Several splits are predicted in one pass (:func:`predict_splits`) and scored under
the rules of :mod:`vgkit.engine.protocols` (:func:`split_scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from vgkit.boxes import iou
from vgkit.data.index import Record
from vgkit.engine.bundle import UNREADABLE, DataBundle, ExprSet, eval_order
from vgkit.engine.memory import keep_freed_memory
from vgkit.engine.protocols import Protocol, accuracies
from vgkit.model import GroundingModel

IoUConvention = Literal["continuous", "inclusive"]


@dataclass
class Predictions:
    """Per-expression outputs of one split, aligned with ``exprs.records``."""

    exprs: ExprSet
    boxes: Tensor  # [n, 4] xyxy original pixels
    alpha_I: Tensor | None  # [n, N] image attention, when the model has one
    alpha_T: list[Tensor] | None  # per expression [L_b] text attention over real words

    def without(self, drop: set[int], reason: str) -> Predictions:
        """These predictions less positions `drop`, whose expressions become unscored."""
        keep = torch.tensor([i for i in range(len(self.boxes)) if i not in drop], dtype=torch.long)
        return Predictions(self.exprs.without(drop, reason), self.boxes[keep],
                           None if self.alpha_I is None else self.alpha_I[keep],
                           None if self.alpha_T is None else [self.alpha_T[i] for i in keep.tolist()])


def predict(model: GroundingModel, bundle: DataBundle, exprs: ExprSet, *, batch_size: int = 64,
            device: torch.device | None = None, keep_attention: bool = False,
            workers: int = 0) -> Predictions:
    """Run `model` over every expression; each image's maps are computed once."""
    boxes, alpha_I, alpha_T, unreadable = _predict(model, bundle, exprs, batch_size=batch_size,
                                                   device=device, keep_attention=keep_attention,
                                                   workers=workers)
    preds = Predictions(exprs, boxes, alpha_I, alpha_T)
    return preds.without(unreadable, UNREADABLE) if unreadable else preds


def _predict(model: GroundingModel, bundle: DataBundle, exprs: ExprSet, *, batch_size: int,
             device: torch.device | None, keep_attention: bool, workers: int,
             ) -> tuple[Tensor, Tensor | None, list[Tensor] | None, set[int]]:
    """(boxes, alpha_I, alpha_T, positions whose image could not be read) of every expression."""
    device = device or next(model.parameters()).device
    if device.type == "cpu":
        keep_freed_memory()  # batch-64 activations are over glibc's mmap threshold
    model.eval()
    boxes = torch.zeros(len(exprs), 4)
    alpha_I: Tensor | None = None
    alpha_T: list[Tensor] | None = [torch.zeros(0)] * len(exprs) if keep_attention else None
    amp = device.type == "cuda"
    unreadable: set[int] = set()  # images read on the fly that failed to decode
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for b in bundle.batches(exprs, eval_order(exprs, batch_size), model.tokenize,
                                workers=workers):
            if b.on_bad_image is not None:
                unreadable.update(b.idx[b.on_bad_image].tolist())
            b = b.to(device)
            out = model(b.text, features=b.features, images=b.images, image_index=b.image_index)
            idx = b.idx
            sizes = exprs.sizes[idx]
            boxes[idx] = bundle.transform.box_to_original(out.boxes.float().cpu(), sizes[:, 0],
                                                          sizes[:, 1])
            if keep_attention and out.state.alpha_I is not None:
                if alpha_I is None:
                    alpha_I = torch.zeros(len(exprs), out.state.alpha_I.shape[1])
                alpha_I[idx] = out.state.alpha_I.float().cpu()
            if keep_attention and alpha_T is not None and out.state.alpha_T is not None:
                a, m = out.state.alpha_T.float().cpu(), b.text.mask.cpu()
                for j, i in enumerate(idx.tolist()):
                    alpha_T[i] = a[j][m[j]]
    if alpha_T is not None and all(t.numel() == 0 for t in alpha_T):
        alpha_T = None
    return boxes, alpha_I, alpha_T, unreadable


def predict_splits(model: GroundingModel, bundle: DataBundle, splits: Mapping[str, ExprSet], *,
                   batch_size: int = 64, device: torch.device | None = None,
                   workers: int = 0) -> tuple[dict[str, Predictions], ExprSet]:
    """Predict several splits in one pass: (each split's Predictions, the set predicted).

    An (image, phrase) pair that several splits hold is predicted once, and the pass
    groups every expression of an image together, so each image's maps are computed
    (or read from the cache) once across all the splits.
    """
    where: dict[tuple[str, str], int] = {}
    recs: list[Record] = []
    rows: list[tuple[ExprSet, int]] = []
    positions: dict[str, Tensor] = {}
    for name, exprs in splits.items():
        pos = []
        for i, r in enumerate(exprs.records):
            key = (r.image_id, r.phrase)  # all a prediction depends on
            if key not in where:
                where[key] = len(recs)
                recs.append(r)
                rows.append((exprs, i))
            pos.append(where[key])
        positions[name] = torch.tensor(pos, dtype=torch.long)
    union = ExprSet.of(recs, torch.stack([e.target[i] for e, i in rows]) if rows
                       else torch.zeros(0, 4),
                       torch.stack([e.sizes[i] for e, i in rows]) if rows else torch.zeros(0, 2),
                       [])
    boxes, _, _, unreadable = _predict(model, bundle, union, batch_size=batch_size, device=device,
                                       keep_attention=False, workers=workers)
    out: dict[str, Predictions] = {}
    for name, exprs in splits.items():
        at = positions[name]
        preds = Predictions(exprs, boxes[at], None, None)
        drop = {j for j, u in enumerate(at.tolist()) if u in unreadable}
        out[name] = preds.without(drop, UNREADABLE) if drop else preds
    return out, union


def gt_boxes(exprs: ExprSet) -> Tensor:
    """Ground-truth boxes [n, 4] xyxy in original pixels."""
    return torch.tensor([r.box for r in exprs.records], dtype=torch.float32)


def ious(pred: Tensor, gt: Tensor, convention: IoUConvention = "continuous") -> Tensor:
    """IoU per expression under `convention`."""
    if convention == "continuous":
        return iou(pred, gt)
    one = torch.tensor([0.0, 0.0, 1.0, 1.0])
    return iou(pred.round() - one, gt.round() - one, inclusive=True)


def accuracy(preds: Predictions, convention: IoUConvention = "continuous") -> dict[str, Any]:
    """Acc@0.5 and mean IoU over the whole split (unscored expressions count as IoU 0)."""
    return summarize(ious(preds.boxes, gt_boxes(preds.exprs), convention), preds.exprs)


def summarize(v: Tensor, exprs: ExprSet, threshold: float = 0.5) -> dict[str, Any]:
    """Acc@threshold, mean IoU and counts of IoUs `v` over `exprs` and its excluded expressions."""
    n = len(v) + len(exprs.excluded)
    return {"acc@0.5": (v >= threshold).sum().item() / n if n else 0.0,
            "miou": v.sum().item() / n if n else 0.0, "n": n, "scored": len(v),
            "unscored": exprs.excluded_counts()}


def split_scores(preds: Predictions, protocols: Sequence[Protocol]) -> dict[str, Any]:
    """One split's n, scored, unscored (by reason), mean IoU and, per protocol, correct and acc.

    Unscored expressions count as failures in every protocol, and as IoU 0 in the mean.
    """
    gt = gt_boxes(preds.exprs)
    base = summarize(ious(preds.boxes, gt), preds.exprs)
    return {"n": base["n"], "scored": base["scored"], "unscored": base["unscored"],
            "miou": base["miou"],
            "protocols": accuracies(preds.boxes, gt, protocols,
                                    unscored=len(preds.exprs.excluded))}
