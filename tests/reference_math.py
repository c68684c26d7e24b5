"""Arithmetic the tests check vgkit against, written out independently of vgkit.boxes."""

from __future__ import annotations


def continuous_iou(a, b) -> float:
    """IoU of two xyxy boxes in continuous pixels (w = x2 - x1)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
