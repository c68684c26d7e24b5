"""vgkit-clash: a plugin that re-registers the reference loss ``iou-se-area``.

Its first registration (``l1-fork``) succeeds, the second collides; vgkit must
name both plugins in the error and roll back ``l1-fork`` too, so a plugin is
either wholly in or wholly out.
"""

from __future__ import annotations

from torch import Tensor, nn

from vgkit.hookspecs import hookimpl
from vgkit.interfaces import FeatureSpec, GroundingState, Loss, LossOutput
from vgkit.registry import Registry


class L1Fork(Loss):
    """Mean L1 distance between xywh pixel boxes."""

    box_format = "xywh-pixels"

    def forward(self, pred: Tensor, target: Tensor, state: GroundingState,
                input_size: tuple[int, int]) -> LossOutput:
        """pred, target: [B, 4] (x, y, w, h) pixels."""
        total = (pred - target).abs().sum(-1).mean()
        return LossOutput(total, {"L1": total})


def build_l1_fork(opts: object, *, spec: FeatureSpec) -> nn.Module:
    """An L1 box loss (rolled back with the rest of this plugin)."""
    return L1Fork()


@hookimpl
def vgkit_register(registry: Registry) -> None:
    """Register l1-fork, then collide with the reference set's iou-se-area."""
    registry.add("loss", "l1-fork", build_l1_fork)
    registry.add("loss", "iou-se-area", build_l1_fork)
