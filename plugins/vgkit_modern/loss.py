"""DETR/TransVG box loss: L = l1 * ||b - t||_1 + giou * (1 - GIoU(b, t))."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from vgkit.boxes import to_xyxy
from vgkit.interfaces import FeatureSpec, GroundingState, Loss, LossOutput


class GiouL1Options(BaseModel):
    """Options of ``giou-l1`` (TransVG/DETR weights: L1 5, GIoU 2)."""

    model_config = ConfigDict(extra="forbid")
    l1: float = Field(5.0, ge=0)  # weight of the L1 term on normalised (cx, cy, w, h)
    giou: float = Field(2.0, ge=0)  # weight of 1 - GIoU
    eps: float = Field(1e-7, gt=0)  # keeps the ratios finite for degenerate boxes

    @model_validator(mode="after")
    def _some_term(self) -> GiouL1Options:
        if self.l1 == 0 and self.giou == 0:
            raise ValueError("l1 and giou are both 0: the loss would be constant")
        return self


def generalized_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise GIoU of xyxy boxes [..., 4], in [-1, 1] (Rezatofighi et al. 2019)."""
    # a head in another format may emit x2 < x1: order the corners so areas stay meaningful
    a = torch.cat((torch.minimum(a[..., :2], a[..., 2:]), torch.maximum(a[..., :2], a[..., 2:])), -1)
    b = torch.cat((torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])), -1)
    area_a = (a[..., 2:] - a[..., :2]).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(-1)
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])
             ).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    # the enclosing box's empty part is what gives disjoint boxes a gradient
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).prod(-1)
    return inter / (union + eps) - (hull - union) / (hull + eps)


class GiouL1(Loss):
    """L_L1 = l1 * mean_b ||b - t||_1; L_GIoU = giou * mean_b (1 - GIoU(b, t)).

    Boxes are (cx, cy, w, h) / (W, H): the L1 term has the same scale for any input size.
    """

    box_format = "cxcywh-normalized"

    def __init__(self, opts: GiouL1Options) -> None:
        super().__init__()
        self.opts = opts

    def forward(self, pred: Tensor, target: Tensor, state: GroundingState,
                input_size: tuple[int, int]) -> LossOutput:
        """pred b, target t: [B, 4] normalised (cx, cy, w, h)."""
        b, t = pred.float(), target.float()
        unit = (1, 1)  # already normalised: corners without rescaling
        g = generalized_iou(to_xyxy(b, self.box_format, unit), to_xyxy(t, self.box_format, unit),
                            self.opts.eps)
        L_L1 = self.opts.l1 * (b - t).abs().sum(-1).mean()
        L_GIoU = self.opts.giou * (1 - g).mean()
        return LossOutput(L_L1 + L_GIoU, {"L_L1": L_L1, "L_GIoU": L_GIoU})


def build_giou_l1(opts: GiouL1Options, *, spec: FeatureSpec) -> GiouL1:
    """L1 + generalised IoU on normalised (cx, cy, w, h) boxes (DETR, TransVG)."""
    del spec  # reads only the boxes
    return GiouL1(opts)
