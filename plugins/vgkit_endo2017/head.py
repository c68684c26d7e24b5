"""The paper's region prediction model (§3.5): an MLP that regresses g = (x, y, w, h)."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from vgkit.interfaces import FeatureSpec, GroundingState, Head
from vgkit.layers import Dropout, Linear

from .attention import deeper_layers


class BoxRegressionOptions(BaseModel):
    """Options of ``box-regression`` (Table 1: hidden 450, 2 layers, dropout 0.6)."""

    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(450, gt=0)
    layers: int = Field(2, ge=1, le=3)
    dropout: float = Field(0.6, ge=0, lt=1)
    output: Literal["relu", "linear"] = "relu"  # the paper: g = relu(...); linear is a departure
    # "input" (a departure): g = (W, H, W, H) * relu(...), the MLP works in fractions of
    # the input. Same functions, but Adam's fixed step size then moves a box by
    # about 1/W of the image a step instead of about one pixel: training is far faster.
    output_scale: Literal["none", "input"] = "none"


class BoxRegression(Head):
    """h_p = tanh(W_pv v^I_alpha + W_pt v'_T + b_ph); g = relu(W_p h_p + b_p).

    g is (x, y, w, h) in pixels of the network input (224 x 224 in the paper).
    Without attention modules ``visual`` is V pooled over regions and ``text`` is v_T.
    """

    box_format = "xywh-pixels"
    scale: Tensor  # a buffer: (W, H, W, H) of the input, or ones

    def __init__(self, opts: BoxRegressionOptions, spec: FeatureSpec) -> None:
        super().__init__()
        with warnings.catch_warnings():  # visual_dim 0 (a blind model): b_ph alone, no weights
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.W_pv = Linear(spec.visual_dim, opts.hidden)  # its bias is b_ph
        self.W_pt = Linear(spec.text_dim, opts.hidden, bias=False) if spec.text_dim else None
        self.deeper = deeper_layers(opts.hidden, opts.layers, opts.dropout)
        self.drop = Dropout(opts.dropout)
        self.W_p = Linear(opts.hidden, 4)  # its bias is b_p
        self.output = opts.output
        H, W = spec.input_size
        scale = [W, H, W, H] if opts.output_scale == "input" else [1.0, 1.0, 1.0, 1.0]
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, state: GroundingState) -> Tensor:
        """Regress g [B, 4] = (x, y, w, h)."""
        pre = self.W_pv(state.visual)
        if self.W_pt is not None and state.text is not None:
            pre = pre + self.W_pt(state.text)
        h_p = self.deeper(torch.tanh(pre))
        g = self.W_p(self.drop(h_p))
        return (torch.relu(g) if self.output == "relu" else g) * self.scale

    def init_output_bias(self, box: Tensor) -> None:
        """b_p <- box, W_p <- small, so the untrained head predicts about `box` (x, y, w, h)."""
        with torch.no_grad():
            self.W_p.bias.copy_(box.to(self.W_p.bias) / self.scale)
            self.W_p.weight.mul_(0.01)


def build_box_regression(opts: BoxRegressionOptions, *, spec: FeatureSpec) -> BoxRegression:
    """The paper's region prediction MLP (§3.5)."""
    return BoxRegression(opts, spec)
