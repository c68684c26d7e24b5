"""Box formats, conversions and IoU (differentiable where it matters).

All pixel boxes are continuous: ``x2 = x1 + w``. ReferIt's hu form counts inclusive
pixels (``w = x_max - x_min + 1``); :func:`iou` takes ``inclusive=True`` for that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vgkit.interfaces import BoxFormat

FORMATS: tuple[BoxFormat, ...] = ("xyxy-pixels", "xywh-pixels", "cxcywh-normalized")


def to_xyxy(boxes: Tensor, fmt: BoxFormat, size: tuple[int, int]) -> Tensor:
    """Convert [..., 4] boxes in `fmt` to xyxy pixels of an image of `size` (H, W)."""
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xyxy-pixels":
        return boxes
    if fmt == "xywh-pixels":
        return torch.stack((a, b, a + c, b + d), -1)
    if fmt == "cxcywh-normalized":
        H, W = size
        return torch.stack(((a - c / 2) * W, (b - d / 2) * H, (a + c / 2) * W, (b + d / 2) * H), -1)
    raise ValueError(f"unknown box format {fmt!r}; valid: {', '.join(FORMATS)}")


def from_xyxy(boxes: Tensor, fmt: BoxFormat, size: tuple[int, int]) -> Tensor:
    """Convert [..., 4] xyxy pixel boxes to `fmt`."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xyxy-pixels":
        return boxes
    if fmt == "xywh-pixels":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), -1)
    if fmt == "cxcywh-normalized":
        H, W = size
        return torch.stack(((x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H), -1)
    raise ValueError(f"unknown box format {fmt!r}; valid: {', '.join(FORMATS)}")


def convert(boxes: Tensor, src: BoxFormat, dst: BoxFormat, size: tuple[int, int]) -> Tensor:
    """Convert boxes between formats (identity when equal, so gradients pass untouched)."""
    return boxes if src == dst else from_xyxy(to_xyxy(boxes, src, size), dst, size)


def area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes (0 for inverted ones)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def iou(a: Tensor, b: Tensor, *, inclusive: bool = False, eps: float = 1e-9) -> Tensor:
    """Element-wise IoU of xyxy boxes; ``inclusive`` adds the hu form's +1 to widths and heights."""
    one = 1.0 if inclusive else 0.0
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + one).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + one).clamp(min=0)
    inter = iw * ih

    def _area(x: Tensor) -> Tensor:
        return (x[..., 2] - x[..., 0] + one).clamp(min=0) * (x[..., 3] - x[..., 1] + one).clamp(min=0)

    return inter / (_area(a) + _area(b) - inter + eps)


def cell_coverage(boxes: Tensor, grid: tuple[int, int],
                  size: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """The share of each cell's area that each box covers: [n, h*w], row-major like V's regions.

    `boxes` [n, 4] are xyxy in a frame of `size` (H, W) that the (h, w) `grid` divides
    evenly: fractions with the default (1, 1), or pixels of the network input.
    """
    (h, w), (H, W) = grid, size
    cw, ch = W / w, H / h
    cx = torch.arange(w, device=boxes.device, dtype=boxes.dtype) * cw  # left edges [w]
    cy = torch.arange(h, device=boxes.device, dtype=boxes.dtype) * ch  # top edges [h]
    ox = (torch.minimum(boxes[:, 2:3], cx + cw) - torch.maximum(boxes[:, 0:1], cx)).clamp(min=0) / cw
    oy = (torch.minimum(boxes[:, 3:4], cy + ch) - torch.maximum(boxes[:, 1:2], cy)).clamp(min=0) / ch
    return (oy[:, :, None] * ox[:, None, :]).flatten(1)
