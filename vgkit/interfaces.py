"""What each kind of component takes and returns: the contract on one screen.

Data flows one way: images -> backbone -> V_map; phrase -> text encoder ->
(v_l, v_T); both -> a chain of attention modules that update a
:class:`GroundingState`; the head reads the state and regresses one box; the
loss compares it with the target. No component reaches back up.

Shapes: B batch, C backbone channels, (h, w) feature grid, N = h*w regions,
L words (padded), D word-feature size. Boxes are 4-vectors whose format the
head and loss declare (:data:`BoxFormat`); the model converts between them.

Build functions (registered with ``registry.add(kind, name, build, options=...)``)
are called as ``build(options, **context)`` with this context:

==============  ======================================  =========================
kind            context keyword arguments               returns
==============  ======================================  =========================
backbone        (none)                                  :class:`Backbone`
text_encoder    vocab: Vocabulary | None,               :class:`TextEncoder`
                embeddings: Tensor[V, E] | None
attention       spec: :class:`FeatureSpec`              :class:`Attention`
head            spec: :class:`FeatureSpec`              :class:`Head`
loss            spec: :class:`FeatureSpec` (final)      :class:`Loss`
dataset         root: Path | None                       ``DatasetIndex``
recipe          (none)                                  recipe data (``dict``)
==============  ======================================  =========================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vgkit.errors import VgkitError

BoxFormat = Literal["xyxy-pixels", "xywh-pixels", "cxcywh-normalized"]
"""``*-pixels``: pixels of the network input (e.g. 224x224); ``normalized``: /W, /H."""


@dataclass(frozen=True)
class FeatureSpec:
    """Sizes known when the model is built; each attention module returns an updated one."""

    channels: int  # C of V_map
    grid: tuple[int, int]  # (h, w) of V_map
    word_dim: int  # D of v_l and v_T
    visual_dim: int  # size of GroundingState.visual
    text_dim: int  # size of GroundingState.text (0: the head gets no text vector)
    input_size: tuple[int, int]  # (H, W) of the network input in pixels
    provided: frozenset[str] = frozenset()  # optional state fields set so far, e.g. "alpha_I"

    @property
    def regions(self) -> int:
        """N = h * w."""
        return self.grid[0] * self.grid[1]

    def with_(self, **changes: Any) -> FeatureSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class GroundingState:
    """Everything attention modules read and write; the head reads ``visual`` and ``text``.

    Before any attention, ``visual`` is V averaged over regions ([B, C]) and ``text`` is v_T.
    """

    V: Tensor  # [B, N, C] region features v_ri
    grid: tuple[int, int]  # (h, w), N = h * w
    v_l: Tensor  # [B, L, D] word features
    word_mask: Tensor  # [B, L] bool, True on real (unpadded) words
    v_T: Tensor  # [B, D] phrase feature
    visual: Tensor  # [B, visual_dim] what the head sees of the image
    text: Tensor | None  # [B, text_dim] what the head sees of the phrase
    alpha_I: Tensor | None = None  # [B, N] image attention map v^I_alpha, if computed
    alpha_T: Tensor | None = None  # [B, L] text attention, if computed
    extras: dict[str, Tensor] = field(default_factory=dict)  # plugin-specific outputs
    # In evaluation, when expressions share images: each distinct image's regions once
    # ([U, N, C]) and the row of each expression (V = V_images[image_index]); see per_image
    V_images: Tensor | None = None
    image_index: Tensor | None = None
    # named auxiliary loss terms (scalars, already weighted) that components contribute:
    # the engine adds each to the loss and logs it as "aux.<name>"
    aux_losses: dict[str, Tensor] = field(default_factory=dict)

    def per_image(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``fn(V)`` for a per-region map `fn`, computed once per distinct image and repeated.

        The same numbers as ``fn(self.V)`` (an exact rewrite): an image with four
        expressions pays for one ``W V`` instead of four.
        """
        if self.V_images is None or self.image_index is None:
            return fn(self.V)
        return fn(self.V_images)[self.image_index]

    def add_loss(self, name: str, value: Tensor) -> None:
        """Contribute an auxiliary loss term `name` (a scalar tensor, weighted as wanted)."""
        if name in self.aux_losses:
            raise VgkitError(f"auxiliary loss {name!r} is added twice; give each term its "
                             "own name")
        if value.dim() != 0:
            raise VgkitError(f"auxiliary loss {name!r} must be a scalar, got shape "
                             f"{tuple(value.shape)}")
        self.aux_losses[name] = value


@dataclass
class TextInputs:
    """A tokenized batch: ids [B, L] long, mask [B, L] bool (True on real tokens)."""

    ids: Tensor
    mask: Tensor

    def to(self, device: torch.device | str) -> TextInputs:
        """Move to `device`."""
        return TextInputs(self.ids.to(device), self.mask.to(device))


@dataclass
class LossOutput:
    """The scalar to minimise and its named terms (already weighted), for logging."""

    total: Tensor
    terms: dict[str, Tensor]


class Backbone(nn.Module):
    """images [B, 3, H, W] (ImageNet-normalised) -> V_map [B, channels, H/stride, W/stride].

    A frozen backbone has no trainable parameters and stays in eval mode after
    ``.train()`` (its batch-norm statistics must not move); only frozen backbones
    are cached. Options models should have ``weights: str | None`` (a local file).
    """

    channels: int
    stride: int
    frozen: bool

    def identity(self) -> dict[str, Any]:
        """What identifies this backbone's output (name, weights digest): the feature-cache key."""
        raise NotImplementedError


class TextEncoder(nn.Module):
    """Phrases -> word features v_l [B, L, dim] and phrase feature v_T [B, dim]."""

    dim: int

    def tokenize(self, phrases: list[str]) -> TextInputs:
        """Turn raw phrases into padded ids and a mask (called by the data pipeline)."""
        raise NotImplementedError

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Return (v_l [B, L, dim], v_T [B, dim]); padded positions must not change v_T."""
        raise NotImplementedError


class Attention(nn.Module):
    """GroundingState -> GroundingState; declares the FeatureSpec it leaves behind."""

    out_spec: FeatureSpec

    def forward(self, state: GroundingState) -> GroundingState:
        """Read what it needs from `state`, write its outputs, return it."""
        raise NotImplementedError


class Head(nn.Module):
    """GroundingState -> one box per expression [B, 4] in ``box_format``."""

    box_format: BoxFormat

    def forward(self, state: GroundingState) -> Tensor:
        """Regress the box."""
        raise NotImplementedError

    def init_output_bias(self, box: Tensor) -> None:
        """Set the output bias so an untrained head predicts `box` (4,) in ``box_format``."""
        raise NotImplementedError


class Loss(nn.Module):
    """(pred, target) boxes [B, 4] in ``box_format`` + the state -> LossOutput."""

    box_format: BoxFormat

    def forward(self, pred: Tensor, target: Tensor, state: GroundingState,
                input_size: tuple[int, int]) -> LossOutput:
        """Compute the loss; `input_size` is (H, W) of the network input."""
        raise NotImplementedError
