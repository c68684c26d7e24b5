"""Layers for plugins to share: dropout whose mask costs about as much as the multiply."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Dropout(nn.Module):
    """``nn.Dropout`` with a mask that costs about as much as the multiply.

    nn.Dropout draws its mask on the CPU with ``bernoulli_``, one generator call a unit: the
    paper's model spent ~46% of a training step there. This mask compares 16-bit integers,
    four to each 64-bit draw of torch's generator (seeded, checkpointed and restored like
    any other draw), with a threshold: the keep probability is 1 - p rounded to a multiple
    of 2**-16 (exact for 0.5, 0.25, ...; at most 7.6e-6 off otherwise) and the kept units
    are scaled by its inverse, so the expectation is exactly x. Identity in eval mode.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability has to be in [0, 1), got {p!r}")
        self.p = p
        kept = min(max(round((1.0 - p) * 65536), 1), 65536)  # kept values of the 2**16
        self._threshold = kept - 32768  # an int16 below it keeps its unit
        self._scale = 65536 / kept

    def forward(self, x: Tensor) -> Tensor:
        """Zero each unit with probability p and scale the rest by 1 / (1 - p) (training only)."""
        if not self.training or self._threshold == 32768:
            return x
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
        bits = words.random_(-2**63, 2**63 - 1).view(torch.int16)[:n].view(x.shape)
        mask = bits.lt(self._threshold).to(x.dtype).mul_(self._scale)
        return x * mask

    def extra_repr(self) -> str:
        """``p=0.6`` in the module's repr, as nn.Dropout shows it."""
        return f"p={self.p}"
