"""vgkit-giou: an example third-party vgkit plugin.

Registers a generalized-IoU loss ``giou`` (Rezatofighi et al., CVPR 2019), a
small trainable backbone ``tiny-cnn`` and a recipe ``tiny-giou``, through the
``vgkit.plugins`` entry point exactly as any plugin outside vgkit would.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from vgkit.boxes import to_xyxy
from vgkit.errors import VgkitError
from vgkit.hookspecs import hookimpl
from vgkit.interfaces import Backbone, FeatureSpec, GroundingState, Loss, LossOutput
from vgkit.recipe import recipe_from_file
from vgkit.registry import Registry

__version__ = "0.1.0"


# ---------------------------------------------------------------- loss


class GiouOptions(BaseModel):
    """Options of the ``giou`` loss."""

    model_config = ConfigDict(extra="forbid")
    l1: float = Field(0.0, ge=0)  # weight of the L1 term on normalised (cx, cy, w, h)
    eps: float = Field(1e-7, gt=0)  # keeps the ratios finite for degenerate boxes


def generalized_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise GIoU of xyxy boxes [..., 4], in [-1, 1]."""
    # an untrained head may emit x2 < x1: order the corners so areas stay meaningful
    a = torch.cat((torch.minimum(a[..., :2], a[..., 2:]), torch.maximum(a[..., :2], a[..., 2:])), -1)
    b = torch.cat((torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])), -1)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    # C: the smallest box enclosing both; its empty part is what GIoU penalises
    c_lt, c_rb = torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])
    hull = (c_rb - c_lt).prod(-1)
    return iou - (hull - union) / (hull + eps)


class GiouLoss(Loss):
    """L = mean_b (1 - GIoU(g, t)) + l1 * mean_b ||g - t||_1, boxes (cx, cy, w, h) / (W, H).

    GIoU is scale-invariant, so normalised coordinates lose nothing and keep the
    L1 term on the same scale for any input size.
    """

    box_format = "cxcywh-normalized"

    def __init__(self, opts: GiouOptions) -> None:
        super().__init__()
        self.opts = opts

    def forward(self, pred: Tensor, target: Tensor, state: GroundingState,
                input_size: tuple[int, int]) -> LossOutput:
        """pred, target: [B, 4] normalised (cx, cy, w, h)."""
        g, t = pred.float(), target.float()
        unit = (1, 1)  # already normalised: convert corners without rescaling
        L_giou = (1 - generalized_iou(to_xyxy(g, self.box_format, unit),
                                      to_xyxy(t, self.box_format, unit), self.opts.eps)).mean()
        L_l1 = self.opts.l1 * (g - t).abs().sum(-1).mean() if self.opts.l1 else g.new_zeros(())
        return LossOutput(L_giou + L_l1, {"L_GIoU": L_giou, "L_L1": L_l1})


def build_giou(opts: GiouOptions, *, spec: FeatureSpec) -> GiouLoss:
    """Generalized IoU loss (Rezatofighi et al. 2019), optionally plus L1."""
    del spec  # GIoU reads only the boxes
    return GiouLoss(opts)


# ---------------------------------------------------------------- backbone


class TinyCNNOptions(BaseModel):
    """Options of the ``tiny-cnn`` backbone."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(64, gt=0)  # C of V_map
    width: int = Field(16, gt=0)  # channels of the first conv, doubled per stage
    # `vgkit recipes show` passes weights=None to every backbone, so the field must exist
    weights: str | None = None  # local state-dict file (.pth/.pt); None: random init
    frozen: bool = False  # trained with the rest of the model by default


class TinyCNN(Backbone):
    """Four stride-2 3x3 conv + ReLU stages: images [B, 3, H, W] -> [B, channels, H/16, W/16]."""

    stride = 16

    def __init__(self, opts: TinyCNNOptions) -> None:
        super().__init__()
        widths = [3, opts.width, opts.width * 2, opts.width * 4, opts.channels]
        layers: list[nn.Module] = []
        for cin, cout in pairwise(widths):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.channels, self.frozen = opts.channels, opts.frozen
        self.weights = _load_weights(self.body, opts.weights)
        if self.frozen:
            self.body.requires_grad_(False)
            self.body.eval()

    def train(self, mode: bool = True) -> TinyCNN:
        """Keep a frozen backbone in eval mode."""
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> V_map [B, channels, H/16, W/16]."""
        return self.body(images)

    def identity(self) -> dict[str, Any]:
        """Name, shape options and the weights' sha256 (or "random"): the feature-cache key."""
        digest = hashlib.sha256(self.weights.read_bytes()).hexdigest() if self.weights else "random"
        return {"model": "tiny-cnn", "channels": self.channels, "weights_sha256": digest}


def _load_weights(body: nn.Module, path: str | None) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise VgkitError(f"backbone tiny-cnn: weights file not found: {p}")
    try:
        body.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    except (RuntimeError, ValueError) as exc:
        raise VgkitError(f"{p}: does not fit tiny-cnn: {str(exc).splitlines()[0]}") from exc
    return p


def build_tiny_cnn(opts: TinyCNNOptions) -> TinyCNN:
    """A tiny trainable stride-16 CNN (random init): for fast experiments and tests."""
    return TinyCNN(opts)


# ---------------------------------------------------------------- registration


@hookimpl
def vgkit_register(registry: Registry) -> None:
    """Register the giou loss, the tiny-cnn backbone and the tiny-giou recipe."""
    registry.add("loss", "giou", build_giou, options=GiouOptions)
    registry.add("backbone", "tiny-cnn", build_tiny_cnn, options=TinyCNNOptions)
    recipe = resources.files(__name__).joinpath("recipes", "tiny-giou.toml")
    registry.add("recipe", "tiny-giou", recipe_from_file(recipe), doc="recipe tiny-giou.toml")
