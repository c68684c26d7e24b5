"""The paper's attention models: image attention (§3.3) and text attention (§3.4)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vgkit.errors import VgkitError
from vgkit.interfaces import Attention, FeatureSpec, GroundingState
from vgkit.layers import Dropout, Linear


class ImageAttentionOptions(BaseModel):
    """Options of ``image-attention`` (Table 1: hidden 750, 3 layers)."""

    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(750, gt=0)  # n
    layers: int = Field(3, ge=1, le=3)  # tanh hidden layers of the MLP
    dropout: float = Field(0.6, ge=0, lt=1)
    # footnote 1: relu trains, softmax did not. "softmax-n" (a departure) is softmax times
    # N: it sums to N (mean 1 a region) instead of 1, so the map reaches the next layers at
    # the scale of an input feature rather than ~1/N, and they learn from it N times faster.
    activation: Literal["relu", "softmax", "softmax-n"] = "relu"


class TextAttentionOptions(BaseModel):
    """Options of ``text-attention`` (Table 1: hidden 500, 1 layer)."""

    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(500, gt=0)  # m
    layers: int = Field(1, ge=1, le=3)
    dropout: float = Field(0.6, ge=0, lt=1)


def deeper_layers(hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """Hidden layers after the first: (dropout, linear, tanh) x (layers - 1)."""
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [Dropout(dropout), Linear(hidden, hidden), nn.Tanh()]
    return nn.Sequential(*mods)


class ImageAttention(Attention):
    """h_vi = tanh(W_vr v_ri + W_vt v_T + b_v); alpha^I_i = relu(W_vh h_vi + b_vh).

    Writes ``alpha_I`` [B, N] and sets ``visual`` to the map v^I_alpha itself: the
    paper's text attention and region prediction read the map, not attended features.
    """

    def __init__(self, opts: ImageAttentionOptions, spec: FeatureSpec) -> None:
        super().__init__()
        self.W_vr = Linear(spec.channels, opts.hidden, bias=False)
        self.W_vt = Linear(spec.word_dim, opts.hidden)  # its bias is b_v
        self.deeper = deeper_layers(opts.hidden, opts.layers, opts.dropout)
        self.drop = Dropout(opts.dropout)
        self.W_vh = Linear(opts.hidden, 1)  # its bias is b_vh
        self.activation = opts.activation
        if opts.activation != "relu":
            # softmax is shift-invariant: b_vh gets no gradient but rounding noise, which
            # Adam would scale up into lr-sized random steps. Frozen, it stays what it is.
            self.W_vh.bias.requires_grad_(False)
        self.out_spec = spec.with_(visual_dim=spec.regions,
                                   provided=spec.provided | {"alpha_I"})

    def forward(self, state: GroundingState) -> GroundingState:
        """Compute alpha_I over the N regions of V."""
        # W_vr v_ri once per distinct image (an exact rewrite), then the phrase's term
        h_v = torch.tanh(state.per_image(self.W_vr) + self.W_vt(state.v_T).unsqueeze(1))  # [B, N, n]
        h_v = self.deeper(h_v)
        score = self.W_vh(self.drop(h_v)).squeeze(-1)  # [B, N]
        if self.activation == "relu":
            alpha_I = torch.relu(score)
        else:
            alpha_I = score.softmax(-1) * (score.shape[-1] if self.activation == "softmax-n" else 1)
        state.alpha_I, state.visual = alpha_I, alpha_I
        return state


class TextAttention(Attention):
    """h_tl = tanh(W_tw v_l + W_talpha v^I_alpha + b_t); alpha^T = softmax_l(W_th h_tl + b_th).

    v'_T = sum_l alpha^T_l v_l replaces ``text``; padded words get zero weight.
    """

    def __init__(self, opts: TextAttentionOptions, spec: FeatureSpec) -> None:
        super().__init__()
        if "alpha_I" not in spec.provided:
            raise VgkitError("attention text-attention reads the image attention map: put "
                             "image-attention before it in model.attention")
        self.W_tw = Linear(spec.word_dim, opts.hidden, bias=False)
        self.W_talpha = Linear(spec.regions, opts.hidden)  # its bias is b_t
        self.deeper = deeper_layers(opts.hidden, opts.layers, opts.dropout)
        self.drop = Dropout(opts.dropout)
        self.W_th = Linear(opts.hidden, 1)  # its bias is b_th
        self.out_spec = spec.with_(text_dim=spec.word_dim, provided=spec.provided | {"alpha_T"})

    def forward(self, state: GroundingState) -> GroundingState:
        """Weight the words by alpha_T and pool them into v'_T."""
        assert state.alpha_I is not None
        h_t = torch.tanh(self.W_tw(state.v_l) + self.W_talpha(state.alpha_I).unsqueeze(1))
        h_t = self.deeper(h_t)  # [B, L, m]
        score = self.W_th(self.drop(h_t)).squeeze(-1)  # [B, L]
        alpha_T = score.masked_fill(~state.word_mask, float("-inf")).softmax(-1)
        state.alpha_T = alpha_T
        state.text = (alpha_T.unsqueeze(-1) * state.v_l).sum(1)  # v'_T [B, D]
        return state


def build_image_attention(opts: ImageAttentionOptions, *, spec: FeatureSpec) -> ImageAttention:
    """The paper's image attention model (§3.3)."""
    return ImageAttention(opts, spec)


def build_text_attention(opts: TextAttentionOptions, *, spec: FeatureSpec) -> TextAttention:
    """The paper's text attention model (§3.4), driven by the image attention map."""
    return TextAttention(opts, spec)
