"""Metric breakdowns of a split's predictions, and the per-expression JSONL.

Every breakdown partitions the expressions: each one falls in exactly one
bucket, so the bucket counts add up to the split's size.

- by phrase length: the record's token count in buckets 1, 2, 3-4, 5-8, 9+;
- by box size: the ground-truth box's area relative to the ORIGINAL image,
  small < 1/32 (about 3%), medium 1/32 to < 1/4, large >= 1/4;
- by ``extra["type"]`` (synthetic data: attribute / position / relation), when
  any record has one; records without a type fall in ``(none)``.

IoU follows ``convention``: ``continuous`` (x2 = x1 + w) or ``inclusive``
(ReferIt's hu-form whole pixels with +1 on widths and heights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vgkit.data.index import Record
from vgkit.engine.evaluate import IoUConvention, Predictions, gt_boxes, ious, summarize
from vgkit.fsutil import atomic_write_text
from vgkit.text import tokenize

THRESHOLD = 0.5
LENGTH_BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), ("5-8", 5, 8), ("9+", 9, float("inf")))
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small (<1/32)", 0.0, 1 / 32), ("medium (1/32-1/4)", 1 / 32, 1 / 4),
    ("large (>=1/4)", 1 / 4, float("inf")))
NO_TYPE = "(none)"


def percent(x: float | None) -> str:
    """A share as ``12.34%`` (``-`` for none)."""
    return "-" if x is None else f"{100 * x:.2f}%"


def number(x: float | None) -> str:
    """A metric such as mean IoU to three decimals (``-`` for none)."""
    return "-" if x is None else f"{x:.3f}"


def phrase_length(record: Record) -> int:
    """Token count of a record (its stored tokens, else the phrase tokenized)."""
    return len(record.tokens) if record.tokens else len(tokenize(record.phrase))


def length_bucket(n_tokens: int) -> str:
    """The phrase-length bucket of `n_tokens` (an empty phrase counts as length 1)."""
    n = max(n_tokens, 1)
    return next(name for name, lo, hi in LENGTH_BUCKETS if lo <= n <= hi)


def relative_area(record: Record) -> float:
    """GT box area over the original image's area."""
    x1, y1, x2, y2 = record.box
    return max(x2 - x1, 0.0) * max(y2 - y1, 0.0) / max(record.width * record.height, 1)


def size_bucket(rel_area: float) -> str:
    """The box-size bucket of a relative area."""
    return next(name for name, lo, hi in SIZE_BUCKETS if lo <= rel_area < hi)


def type_bucket(record: Record) -> str:
    """The record's ``extra["type"]``, or ``(none)``."""
    t = record.extra.get("type") if record.extra else None
    return str(t) if t else NO_TYPE


def prediction_ious(preds: Predictions, convention: IoUConvention = "continuous") -> Tensor:
    """IoU [n] of every prediction with its ground truth."""
    return ious(preds.boxes, gt_boxes(preds.exprs), convention)


def _rows(v: Tensor, keys: Sequence[str], order: Sequence[str]) -> list[dict[str, Any]]:
    """One row per bucket in `order` (empty buckets kept, so tables have a fixed shape)."""
    rows = []
    for name in order:
        sel = torch.tensor([k == name for k in keys], dtype=torch.bool)
        n = int(sel.sum())
        sub = v[sel]
        rows.append({"bucket": name, "n": n,
                     "acc@0.5": (sub >= THRESHOLD).float().mean().item() if n else None,
                     "miou": sub.mean().item() if n else None})
    return rows


def breakdowns(preds: Predictions, convention: IoUConvention = "continuous") -> dict[str, Any]:
    """Overall Acc@0.5 / mean IoU / n, and the by-length, by-size (and by-type) tables."""
    recs = preds.exprs.records
    v = prediction_ious(preds, convention)
    # the headline counts unscored expressions as failures; the breakdowns cover the scored
    out: dict[str, Any] = {"iou_convention": convention,
                           **summarize(v, preds.exprs, THRESHOLD)}
    by: dict[str, tuple[Callable[[Record], str], Sequence[str]]] = {
        "by_length": (lambda r: length_bucket(phrase_length(r)), [b[0] for b in LENGTH_BUCKETS]),
        "by_size": (lambda r: size_bucket(relative_area(r)), [b[0] for b in SIZE_BUCKETS]),
    }
    types = [type_bucket(r) for r in recs]
    if any(t != NO_TYPE for t in types):
        named = sorted({t for t in types if t != NO_TYPE})
        by["by_type"] = (type_bucket, named + ([NO_TYPE] if NO_TYPE in types else []))
    for key, (fn, order) in by.items():
        out[key] = _rows(v, [fn(r) for r in recs], order)
    return out


def prediction_rows(preds: Predictions, convention: IoUConvention = "continuous",
                    errors: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """One JSON-ready dict per expression, in the split's order (with ``error``: its failure bucket)."""
    v = prediction_ious(preds, convention).tolist()
    boxes = preds.boxes.tolist()
    rows = [{"image_id": r.image_id, "ref_id": r.ref_id, "sent_id": r.sent_id, "phrase": r.phrase,
             "gt": [float(c) for c in r.box], "pred": boxes[i], "iou": v[i],
             "correct": v[i] >= THRESHOLD, "iou_convention": convention}
            for i, r in enumerate(preds.exprs.records)]
    if errors is not None:
        for row, bucket in zip(rows, errors, strict=True):
            row["error"] = bucket
    rows += [{"image_id": r.image_id, "ref_id": r.ref_id, "sent_id": r.sent_id,
              "phrase": r.phrase, "gt": [float(c) for c in r.box], "pred": None, "iou": 0.0,
              "correct": False, "iou_convention": convention, "unscored": why}
             for r, why in preds.exprs.excluded]
    return rows


def write_predictions(preds: Predictions, path: str | os.PathLike[str],
                      convention: IoUConvention = "continuous",
                      errors: Sequence[str | None] | None = None) -> Path:
    """Write one JSON line per expression (boxes xyxy, continuous original pixels)."""
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                           for row in prediction_rows(preds, convention, errors)))
