"""The paper's loss (§3.6): L = L_IoU + lambda1 L_SE + lambda2 L_S.

Units: g and t are (x, y, w, h) in pixels of the network input (224 x 224):
lambda1 = 1e-4 on a squared error of a few thousand pixels^2 only makes sense
there. S_box is the ground-truth area in feature-map cells (of 14 x 14 = 196).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from vgkit.boxes import cell_coverage, iou, to_xyxy
from vgkit.errors import VgkitError
from vgkit.interfaces import FeatureSpec, GroundingState, Loss, LossOutput


class IouSeAreaOptions(BaseModel):
    """Options of ``iou-se-area`` (Table 1: lambda1 = 1e-4, lambda2 = 1e-5)."""

    model_config = ConfigDict(extra="forbid")
    lambda1: float = Field(1e-4, ge=0)
    lambda2: float = Field(1e-5, ge=0)
    iou: bool = True  # switch L_IoU off
    se: bool = True  # switch L_SE off
    area: bool = True  # switch L_S off (Table 3, "- loss penalty")
    # A departure (0 = the paper): L_A supervises WHERE the image attention goes, where
    # L_S only fits how much of it there is. Weight of the cross-entropy between the
    # normalised attention map and the ground truth's share of each feature-map cell.
    lambda_att: float = Field(0.0, ge=0)


class IouSeArea(Loss):
    """L_IoU = 1 - IoU(t, g); L_SE = 1/2 ||t - g||^2; L_S = 1/2 (S_box - S_att)^2, S_att = sum_i alpha^I_i.

    Each term is averaged over the batch; a switched-off term is exactly zero.
    """

    box_format = "xywh-pixels"

    def __init__(self, opts: IouSeAreaOptions, spec: FeatureSpec) -> None:
        super().__init__()
        self.opts = opts
        self.use_area = opts.area and opts.lambda2 > 0
        if self.use_area and "alpha_I" not in spec.provided:
            raise VgkitError("loss iou-se-area: the area penalty L_S needs an image attention "
                             "map; add image-attention or set loss.area=false")
        if opts.lambda_att > 0 and "alpha_I" not in spec.provided:
            raise VgkitError("loss iou-se-area: lambda_att (L_A) needs an image attention map; "
                             "add image-attention or set loss.lambda_att=0")

    def forward(self, pred: Tensor, target: Tensor, state: GroundingState,
                input_size: tuple[int, int]) -> LossOutput:
        """pred g, target t: [B, 4] (x, y, w, h) in input pixels."""
        zero = pred.new_zeros(())
        g, t = pred.float(), target.float()
        L_IoU = (1 - iou(to_xyxy(t, "xywh-pixels", input_size),
                         to_xyxy(g, "xywh-pixels", input_size))).mean() if self.opts.iou else zero
        L_SE = 0.5 * ((t - g) ** 2).sum(-1).mean() if self.opts.se else zero
        L_S = zero
        if self.use_area:
            assert state.alpha_I is not None
            S_box = box_area_cells(t, state.grid, input_size)  # [B]
            S_att = state.alpha_I.float().sum(-1)  # [B]
            L_S = 0.5 * ((S_box - S_att) ** 2).mean()
        lam1 = self.opts.lambda1 if self.opts.se else 0.0
        lam2 = self.opts.lambda2 if self.use_area else 0.0
        terms = {"L_IoU": L_IoU, "L_SE": lam1 * L_SE, "L_S": lam2 * L_S}
        total = L_IoU + lam1 * L_SE + lam2 * L_S
        if self.opts.lambda_att > 0:
            assert state.alpha_I is not None
            L_A = attention_ce(state.alpha_I.float(), box_cell_coverage(t, state.grid, input_size))
            terms["L_A"] = self.opts.lambda_att * L_A
            total = total + terms["L_A"]
        return LossOutput(total, terms)


def box_area_cells(t: Tensor, grid: tuple[int, int], input_size: tuple[int, int]) -> Tensor:
    """S_box: the area of (x, y, w, h) pixel boxes measured in feature-map cells."""
    (h, w), (H, W) = grid, input_size
    return t[..., 2].clamp(min=0) * (w / W) * t[..., 3].clamp(min=0) * (h / H)


def box_cell_coverage(t: Tensor, grid: tuple[int, int], input_size: tuple[int, int]) -> Tensor:
    """The share of each feature-map cell [B, h*w] (row-major) that the (x, y, w, h) box covers."""
    x0, y0 = t[:, 0:1], t[:, 1:2]
    xyxy = torch.cat((x0, y0, x0 + t[:, 2:3].clamp(min=0), y0 + t[:, 3:4].clamp(min=0)), 1)
    return cell_coverage(xyxy, grid, input_size)


def attention_ce(alpha_I: Tensor, coverage: Tensor, eps: float = 1e-6) -> Tensor:
    """L_A: cross-entropy of the attention, normalised to sum 1, against the box's cells."""
    p = (alpha_I + eps) / (alpha_I + eps).sum(-1, keepdim=True)
    q = coverage / coverage.sum(-1, keepdim=True).clamp(min=eps)
    return -(q * p.log()).sum(-1).mean()


def build_iou_se_area(opts: IouSeAreaOptions, *, spec: FeatureSpec) -> IouSeArea:
    """The paper's loss (§3.6)."""
    return IouSeArea(opts, spec)
