"""Why a prediction failed: buckets read off the model's own outputs.

Error analyses of attention models sort wrong predictions by hand; the two
causes that can be read off the model itself are a wrong image attention and a
box incoherent with a right attention (docs/reproduction.md compares with a
published hand analysis). Here every failure (IoU < 0.5) gets exactly one
bucket, the first that applies in this order:

1. ``image attention``: less than half of alpha_I's mass lies inside the
   ground-truth box (also when the map is all zero: it attends to nothing);
2. ``incoherent box``: the attention is on the target (half or more of its mass
   in the ground truth) but less than half of it lies inside the predicted box;
3. ``wrong size``: the predicted box's centre lies inside the ground truth box;
4. ``wrong place``: anything else (the centre is outside the target).

"Mass inside a box" counts each grid cell by the share of its area the box covers,
so a box that covers half a cell takes half of that cell's weight; negative
weights count as zero. Boxes are xyxy in fractions of the network input, the
frame the grid covers: cell (r, c) of an (h, w) grid is [c/w, (c+1)/w] x [r/h, (r+1)/h].
Without an image attention map the first two buckets do not apply (reported as
n/a) and failures fall in 3 or 4.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vgkit.boxes import cell_coverage

SHARE = 0.5  # "half of the mass", for buckets 1 and 2
IMAGE_ATTENTION, INCOHERENT, WRONG_SIZE, WRONG_PLACE = (
    "image attention", "incoherent box", "wrong size", "wrong place")
BUCKETS = (IMAGE_ATTENTION, INCOHERENT, WRONG_SIZE, WRONG_PLACE)  # the order of precedence
NEEDS_ATTENTION = (IMAGE_ATTENTION, INCOHERENT)


def attention_share(alpha_I: Tensor, grid: tuple[int, int], boxes: Tensor) -> Tensor:
    """alpha_I [n, h*w], boxes [n, 4] fractions -> [n]: share of the mass inside each box (0 if none)."""
    a = alpha_I.float().clamp(min=0)
    total = a.sum(1)
    inside = (a * cell_coverage(boxes.float(), grid)).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.zeros_like(total))


def centre_inside(pred: Tensor, gt: Tensor) -> Tensor:
    """[n] bool: the centre of each predicted box lies inside (or on) its ground-truth box."""
    cx, cy = (pred[:, 0] + pred[:, 2]) / 2, (pred[:, 1] + pred[:, 3]) / 2
    return (cx >= gt[:, 0]) & (cx <= gt[:, 2]) & (cy >= gt[:, 1]) & (cy <= gt[:, 3])


def classify(alpha_I: Tensor | None, grid: tuple[int, int], pred: Tensor, gt: Tensor) -> list[str]:
    """The bucket of each failure; pred, gt [n, 4] xyxy fractions of the input, alpha_I [n, h*w]."""
    size = centre_inside(pred, gt)
    out = [WRONG_SIZE if s else WRONG_PLACE for s in size.tolist()]
    if alpha_I is None:
        return out
    on_target = (attention_share(alpha_I, grid, gt) >= SHARE).tolist()
    in_pred = (attention_share(alpha_I, grid, pred) >= SHARE).tolist()
    for i, (t, p) in enumerate(zip(on_target, in_pred, strict=True)):
        if not t:
            out[i] = IMAGE_ATTENTION
        elif not p:
            out[i] = INCOHERENT
    return out


def failure_buckets(preds: Any, transform: Any, grid: tuple[int, int], ious: Tensor,
                    threshold: float = 0.5) -> list[str | None]:
    """Per expression of `preds`: its failure bucket, or None when IoU >= `threshold`."""
    from vgkit.engine.evaluate import gt_boxes

    wrong = (ious < threshold).nonzero().flatten()
    out: list[str | None] = [None] * len(ious)
    if not len(wrong):
        return out
    sizes = preds.exprs.sizes[wrong]
    H, W = transform.size
    scale = torch.tensor([W, H, W, H], dtype=torch.float32)

    def to_input(b: Tensor) -> Tensor:  # original pixels -> fractions of the network input
        return transform.box_to_input(b, sizes[:, 0], sizes[:, 1]) / scale

    alpha = None if preds.alpha_I is None else preds.alpha_I[wrong]
    names = classify(alpha, grid, to_input(preds.boxes[wrong]), to_input(gt_boxes(preds.exprs)[wrong]))
    for i, name in zip(wrong.tolist(), names, strict=True):
        out[i] = name
    return out


def summarize(buckets: list[str | None], has_attention: bool) -> dict[str, Any]:
    """Counts per bucket (None for n/a buckets), the number of failures and the definitions."""
    failures = [b for b in buckets if b is not None]
    rows = [{"bucket": name,
             "n": (None if name in NEEDS_ATTENTION and not has_attention
                   else sum(1 for b in failures if b == name)),
             "rank": k + 1} for k, name in enumerate(BUCKETS)]
    for r in rows:
        r["share"] = None if r["n"] is None or not failures else r["n"] / len(failures)
    return {"failures": len(failures), "n": len(buckets), "has_image_attention": has_attention,
            "buckets": rows, "share_threshold": SHARE,
            "definition": "first that applies: image attention (< half of alpha_I in the GT box), "
                          "incoherent box (>= half in GT, < half in the predicted box), "
                          "wrong size (predicted centre inside the GT box), wrong place"}


def evaluation_failures(ev: Any, ious: Tensor) -> tuple[list[str | None], dict[str, Any]]:
    """Each expression's failure bucket (None when right) and the counts, for an evaluated split."""
    buckets = failure_buckets(ev.preds, ev.bundle.transform, ev.model.spec.grid, ious)
    return buckets, summarize(buckets, ev.preds.alpha_I is not None)
