"""Layers for plugins to share: dropout whose mask costs about as much as the multiply, and a
linear layer whose big CPU products run at the speed of oneDNN's convolutions."""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vgkit.errors import VgkitError


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


# Below this many rows a product stays with F.linear: the convolution's fixed cost wins there.
ONEDNN_MIN_ROWS = 128


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and numbers to fp32 rounding) whose big CPU
    products run as oneDNN 1x1 convolutions.

    torch sends an fp32 ``F.linear`` to the BLAS (MKL), and a convolution to oneDNN. On a
    CPU where MKL takes a slower code path than oneDNN (AMD's, where MKL runs its AVX2
    code), the 1x1 convolution does the same product about twice as fast, forward and
    backward: the paper's attention MLP, 196 rows an expression, is such a product. The
    rows are laid out as a channels-last image of one column, so nothing is copied.

    Used for fp32 inputs on the CPU with at least :data:`ONEDNN_MIN_ROWS` rows, outside
    tracing and export (ONNX keeps its ``Gemm``). ``VGKIT_CPU_GEMM=blas`` in the
    environment keeps every product on ``F.linear``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``x W^T + b`` over the last dimension of `x`."""
        k, lead = self.in_features, x.shape[:-1]
        rows = lead.numel()
        if rows < ONEDNN_MIN_ROWS or not (k and self.out_features and _onednn_ok(x)):
            return F.linear(x, self.weight, self.bias)
        img = x.reshape(1, rows, 1, k).permute(0, 3, 1, 2)  # [1, K, rows, 1] channels-last
        y = F.conv2d(img, self.weight.view(self.out_features, k, 1, 1), self.bias)
        return y.permute(0, 2, 3, 1).reshape(*lead, self.out_features)


def _onednn_ok(x: Tensor) -> bool:
    return (x.dtype is torch.float32 and x.device.type == "cpu" and _cpu_gemm() == "onednn"
            and bool(torch.backends.mkldnn.enabled) and torch.backends.mkldnn.is_available()
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                     or torch.compiler.is_compiling()))


@functools.cache
def _cpu_gemm() -> str:
    mode = os.environ.get("VGKIT_CPU_GEMM", "onednn")
    if mode not in ("onednn", "blas"):
        raise VgkitError(f"VGKIT_CPU_GEMM must be 'onednn' or 'blas', got {mode!r}")
    return mode
