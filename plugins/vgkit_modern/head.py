"""TransVG's prediction head: an MLP that regresses a normalised (cx, cy, w, h) box."""

from __future__ import annotations

from itertools import pairwise

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from vgkit.interfaces import FeatureSpec, GroundingState, Head
from vgkit.layers import Dropout, Linear


class BoxMLPOptions(BaseModel):
    """Options of ``box-mlp`` (TransVG: 3 linear layers of width 256)."""

    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(256, gt=0)
    layers: int = Field(3, ge=1, le=6)  # linear layers, the output layer included
    dropout: float = Field(0.0, ge=0, lt=1)


class BoxMLP(Head):
    """b = sigmoid(MLP([visual; text])): (cx, cy, w, h) as fractions of the input's W and H.

    The sigmoid keeps every box inside the image with positive w and h, so the
    GIoU of ``giou-l1`` is always defined. ``text`` joins only when text_dim > 0.
    """

    box_format = "cxcywh-normalized"

    def __init__(self, opts: BoxMLPOptions, spec: FeatureSpec) -> None:
        super().__init__()
        widths = [spec.visual_dim + spec.text_dim] + [opts.hidden] * (opts.layers - 1)
        mods: list[nn.Module] = []
        for cin, cout in pairwise(widths):
            mods += [Linear(cin, cout), nn.ReLU(), Dropout(opts.dropout)]
        self.mlp = nn.Sequential(*mods)
        self.out = Linear(widths[-1], 4)
        self.uses_text = spec.text_dim > 0

    def forward(self, state: GroundingState) -> Tensor:
        """Regress b [B, 4] = (cx, cy, w, h) / (W, H, W, H)."""
        x = state.visual
        if self.uses_text:
            assert state.text is not None, "spec.text_dim > 0 but state.text is None"
            x = torch.cat((x, state.text), -1)
        return torch.sigmoid(self.out(self.mlp(x)))

    def init_output_bias(self, box: Tensor) -> None:
        """Output bias <- logit(box), weights <- small: the untrained head predicts about `box`."""
        with torch.no_grad():
            self.out.bias.copy_(torch.logit(box.to(self.out.bias).clamp(1e-4, 1 - 1e-4)))
            self.out.weight.mul_(0.01)


def build_box_mlp(opts: BoxMLPOptions, *, spec: FeatureSpec) -> BoxMLP:
    """TransVG's box MLP with a sigmoid output: normalised (cx, cy, w, h)."""
    return BoxMLP(opts, spec)
