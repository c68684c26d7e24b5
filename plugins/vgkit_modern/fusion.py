"""TransVG-style fusion (Deng et al., ICCV 2021): one transformer over [REG], regions and words.

Visual tokens (V) and word tokens (v_l) are projected to one width d, given
position and modality embeddings, and a learnable [REG] token is prepended.
After the encoder layers, the [REG] output alone carries everything the head needs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from vgkit.errors import VgkitError
from vgkit.interfaces import Attention, FeatureSpec, GroundingState
from vgkit.layers import Linear


class TransformerFusionOptions(BaseModel):
    """Options of ``transformer-fusion`` (defaults: TransVG's visual-linguistic transformer)."""

    model_config = ConfigDict(extra="forbid")
    d_model: int = Field(256, gt=0)  # d: width of every token
    heads: int = Field(8, gt=0)
    layers: int = Field(6, ge=1)
    ffn: int = Field(2048, gt=0)  # feed-forward width inside each layer
    dropout: float = Field(0.1, ge=0, lt=1)
    visual_pos: Literal["learned", "sine"] = "learned"  # per grid cell, or fixed 2-D sine
    # average-pool the region grid by this factor first (a CPU economy; TransVG: 1):
    # 2 turns 14 x 14 = 196 visual tokens into 49, and the attention cost with them
    pool: int = Field(1, ge=1)
    norm_first: bool = False  # pre-LN: steadier without warm-up; TransVG is post-LN

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerFusionOptions:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if self.visual_pos == "sine" and self.d_model % 4:
            raise ValueError(f"visual_pos = sine needs d_model divisible by 4 (got {self.d_model})")
        return self


def sine_1d(n: int, d: int, device: torch.device | None = None) -> Tensor:
    """Fixed sinusoidal positions [n, d] (Vaswani et al. 2017)."""
    pos = torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32, device=device)
                     * (-math.log(10000.0) / d))
    out = torch.zeros(n, d, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return out


def sine_2d(h: int, w: int, d: int) -> Tensor:
    """Fixed 2-D sine positions [h*w, d]: half the channels encode the row, half the column."""
    rows = sine_1d(h, d // 2).unsqueeze(1).expand(h, w, d // 2)
    cols = sine_1d(w, d // 2).unsqueeze(0).expand(h, w, d // 2)
    return torch.cat((rows, cols), -1).reshape(h * w, d)


class TransformerFusion(Attention):
    """x = [REG; W_v V + p_v + m_v; W_l v_l + p_l + m_l]; visual = Encoder(x)[:, 0].

    Writes ``visual`` = the [REG] output [B, d] and ``text`` = None (the phrase is
    already fused into [REG]); padded words are masked out of every layer.
    """

    def __init__(self, opts: TransformerFusionOptions, spec: FeatureSpec) -> None:
        super().__init__()
        d = opts.d_model
        self.W_v = Linear(spec.channels, d)  # visual tokens -> d
        self.W_l = Linear(spec.word_dim, d)  # word tokens -> d
        self.reg = nn.Parameter(torch.zeros(1, 1, d))  # the [REG] token
        self.modality = nn.Parameter(torch.zeros(2, d))  # m_v, m_l
        nn.init.normal_(self.reg, std=0.02)
        nn.init.normal_(self.modality, std=0.02)
        h, w = spec.grid
        if h % opts.pool or w % opts.pool:
            raise VgkitError(f"attention transformer-fusion: pool {opts.pool} does not divide "
                             f"the {h} x {w} feature grid")
        self.pool = opts.pool
        h, w = h // opts.pool, w // opts.pool
        if opts.visual_pos == "learned":
            self.p_v = nn.Parameter(torch.randn(h * w, d) * 0.02)  # one vector per grid cell
        else:
            self.register_buffer("p_v", sine_2d(h, w, d), persistent=False)
        layer = nn.TransformerEncoderLayer(d, opts.heads, opts.ffn, opts.dropout,
                                           batch_first=True, norm_first=opts.norm_first)
        # pre-LN leaves the last layer's output unnormalised; post-LN already ends in a norm
        self.encoder = nn.TransformerEncoder(layer, opts.layers,
                                             norm=nn.LayerNorm(d) if opts.norm_first else None,
                                             enable_nested_tensor=False)
        self.d_model = d
        self.out_spec = spec.with_(visual_dim=d, text_dim=0)

    def forward(self, state: GroundingState) -> GroundingState:
        """Fuse regions and words; the [REG] output becomes ``state.visual``."""
        V = state.V
        if self.pool > 1:
            B, N, C = V.shape
            grid = V.transpose(1, 2).reshape(B, C, *state.grid)
            V = F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)  # [B, N / pool^2, C]
        B, N, _ = V.shape
        L = state.v_l.shape[1]
        vis = self.W_v(V) + self.p_v + self.modality[0]  # [B, N, d]
        p_l = sine_1d(L, self.d_model, device=state.v_l.device).to(vis.dtype)
        txt = self.W_l(state.v_l) + p_l + self.modality[1]  # [B, L, d]
        x = torch.cat((self.reg.expand(B, 1, -1).to(vis.dtype), vis, txt), 1)  # [B, 1+N+L, d]
        keep = torch.cat((state.word_mask.new_ones(B, 1 + N), state.word_mask), 1)
        y = self.encoder(x, src_key_padding_mask=~keep)
        state.visual, state.text = y[:, 0], None  # [B, d]
        return state


def build_transformer_fusion(opts: TransformerFusionOptions, *,
                             spec: FeatureSpec) -> TransformerFusion:
    """TransVG's visual-linguistic transformer: [REG] + regions + words -> visual [B, d]."""
    return TransformerFusion(opts, spec)
