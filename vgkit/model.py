"""The composed grounding model: backbone -> text encoder -> attention chain -> head.

It runs from images or from precomputed backbone maps (the feature cache), and
from per-image maps shared by several expressions (``image_index``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vgkit.boxes import BoxFormat, convert, to_xyxy
from vgkit.errors import VgkitError
from vgkit.interfaces import (
    Backbone,
    FeatureSpec,
    GroundingState,
    Head,
    Loss,
    LossOutput,
    TextEncoder,
    TextInputs,
)
from vgkit.recipe import Recipe
from vgkit.registry import Registry
from vgkit.text import Vocabulary

# What a built component must offer, checked once at build time so a plugin's
# mistake is reported by name instead of failing deep inside a forward pass.
_CONTRACT: dict[str, tuple[str, ...]] = {
    "backbone": ("channels", "stride", "frozen", "identity"),
    "text_encoder": ("dim", "tokenize"),
    "attention": ("out_spec",),
    "head": ("box_format", "init_output_bias"),
    "loss": ("box_format",),
}


@dataclass
class GroundingOutput:
    """g: the head's raw boxes [B, 4] in its format; boxes: xyxy input pixels [B, 4]."""

    g: Tensor
    boxes: Tensor
    state: GroundingState


class GroundingModel(nn.Module):
    """A backbone, a text encoder, a chain of attention modules and a head."""

    backbone: Backbone
    text_encoder: TextEncoder
    head: Head
    feat_mean: Tensor
    feat_std: Tensor

    def __init__(self, backbone: Backbone, text_encoder: TextEncoder, attention: list[nn.Module],
                 head: Head, spec: FeatureSpec) -> None:
        super().__init__()
        self.backbone, self.text_encoder, self.head = backbone, text_encoder, head
        self.attention = nn.ModuleList(attention)
        self.spec = spec  # the final spec, after every attention module
        # a backbone with no channels reads no image (a text-only baseline): the engine
        # then serves neither images nor cached maps, and forward needs neither
        self.blind = backbone.channels == 0
        # model.feature_norm = "channel" (a departure): V_map standardised per channel with
        # statistics of the training maps; kept as buffers so checkpoints carry them
        self.register_buffer("feat_mean", torch.zeros(spec.channels))
        self.register_buffer("feat_std", torch.ones(spec.channels))

    def set_feature_norm(self, mean: Tensor, std: Tensor) -> None:
        """Standardise V_map per channel: (V_map - mean) / std."""
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std)

    def tokenize(self, phrases: list[str]) -> TextInputs:
        """Tokenize phrases the way this model's text encoder wants them."""
        return self.text_encoder.tokenize(phrases)

    def encode_image(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> V_map [B, C, h, w] (the text-independent part)."""
        return self.backbone(images)

    def forward(self, text: TextInputs, *, images: Tensor | None = None,
                features: Tensor | None = None, image_index: Tensor | None = None) -> GroundingOutput:
        """Ground each phrase; give `images` or precomputed `features` (V_map).

        With `image_index` [B], `images`/`features` hold one entry per distinct image
        and expression b uses entry image_index[b]: the backbone runs once per image.
        A blind model (``self.blind``) may be given neither.
        """
        if self.blind and images is None and features is None:
            V_map = torch.zeros(text.ids.shape[0], 0, *self.spec.grid, device=text.ids.device)
            image_index = None
        elif (images is None) == (features is None):
            raise VgkitError("GroundingModel: give exactly one of images= or features=")
        elif features is None:
            assert images is not None  # exactly one of the two is given
            V_map = self.encode_image(images)
        else:
            V_map = features
        if tuple(V_map.shape[-2:]) != self.spec.grid or V_map.shape[1] != self.spec.channels:
            raise VgkitError(f"feature maps are {tuple(V_map.shape[1:])}, the model expects "
                             f"({self.spec.channels}, {self.spec.grid[0]}, {self.spec.grid[1]})")
        dtype = next(self.head.parameters()).dtype
        # normalise once per image, before the maps are repeated for each expression
        V_map = (V_map.to(dtype) - self.feat_mean[:, None, None]) / self.feat_std[:, None, None]
        V_images = V_map.flatten(2).transpose(1, 2)  # [U, N, C], one row per distinct image
        V = V_images[image_index] if image_index is not None else V_images  # [B, N, C]
        # evaluation shares per-image work when images repeat (training keeps V alone, so its
        # gradients sum in the same order as ever)
        shared = image_index is not None and not self.training and len(V_images) < len(V)
        v_l, v_T = self.text_encoder(text.ids, text.mask)
        state = GroundingState(V=V, grid=self.spec.grid, v_l=v_l, word_mask=text.mask, v_T=v_T,
                               visual=V.mean(1), text=v_T,
                               V_images=V_images if shared else None,
                               image_index=image_index if shared else None)
        # the backbone and the text encoder see no state: terms they put in their own
        # `aux_losses` dict during forward join it here (a cached backbone ran no forward)
        parts: list[nn.Module] = [self.text_encoder]
        if features is None:
            parts.insert(0, self.backbone)
        for part in parts:
            for name, value in getattr(part, "aux_losses", {}).items():
                state.add_loss(name, value)
            if getattr(part, "aux_losses", None):
                setattr(part, "aux_losses", {})  # noqa: B010 (a plugin attribute)
        for module in self.attention:
            state = module(state)
        g = self.head(state)
        return GroundingOutput(g, to_xyxy(g, self.head.box_format, self.spec.input_size), state)


def compute_loss(loss: Loss, out: GroundingOutput, target_xyxy: Tensor,
                 head_format: BoxFormat, input_size: tuple[int, int]) -> LossOutput:
    """Evaluate `loss` with prediction and target converted to the loss's box format."""
    pred = convert(out.g, head_format, loss.box_format, input_size)
    target = convert(target_xyxy, "xyxy-pixels", loss.box_format, input_size)
    res = loss(pred, target, out.state, input_size)
    if not out.state.aux_losses:
        return res
    # every component's auxiliary terms join the loss, each logged under its name
    aux = {f"aux.{name}": value for name, value in out.state.aux_losses.items()}
    return LossOutput(res.total + sum(aux.values()), {**res.terms, **aux})


def build_model(recipe: Recipe, registry: Registry | None = None, *,
                vocab: Vocabulary | None = None, embeddings: Tensor | None = None,
                backbone_options: dict[str, Any] | None = None) -> tuple[GroundingModel, Loss]:
    """Build (model, loss) from a validated recipe; `backbone_options` override the recipe's."""
    if registry is None:
        from vgkit.plugins import get_registry

        registry = get_registry()
    m = recipe.model
    bb_opts = {**m.backbone.options(), **(backbone_options or {})}
    backbone = _checked(registry, "backbone", m.backbone.name, bb_opts)
    H, W = recipe.data.image_size
    if H % backbone.stride or W % backbone.stride or min(H, W) < backbone.stride:
        raise VgkitError(f"data.image_size {H}x{W} is not a positive multiple of the backbone's "
                         f"stride {backbone.stride}")
    text_encoder = _checked(registry, "text_encoder", m.text_encoder.name,
                            m.text_encoder.options(), vocab=vocab, embeddings=embeddings)
    spec = FeatureSpec(channels=backbone.channels, grid=(H // backbone.stride, W // backbone.stride),
                       word_dim=text_encoder.dim, visual_dim=backbone.channels,
                       text_dim=text_encoder.dim, input_size=(H, W))
    attention = []
    for a in m.attention:
        module = _checked(registry, "attention", a.name, a.options(), spec=spec)
        attention.append(module)
        spec = module.out_spec
    head = _checked(registry, "head", m.head.name, m.head.options(), spec=spec)
    loss = _checked(registry, "loss", recipe.loss.name, recipe.loss.options(), spec=spec)
    return GroundingModel(backbone, text_encoder, attention, head, spec), loss


def _checked(registry: Registry, kind: str, name: str, options: dict[str, Any], **context: Any) -> Any:
    try:
        obj = registry.build(kind, name, options, **context)
    except (MemoryError, RuntimeError) as exc:
        # torch reports an allocation that cannot be made as a RuntimeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if not isinstance(exc, MemoryError) and "alloc" not in first.lower():
            raise
        raise VgkitError(f"{kind} {name!r} with options {options}: not enough memory to build "
                         f"it ({first[:200]}); choose smaller sizes") from None
    missing = [a for a in _CONTRACT[kind] if not hasattr(obj, a)]
    if not isinstance(obj, nn.Module) or missing:
        plugin = registry.get(kind, name).plugin
        what = f"lacks {', '.join(missing)}" if missing else "is not a torch.nn.Module"
        raise VgkitError(f"{kind} {name!r} from plugin {plugin!r} breaks the {kind} contract: "
                         f"the object it built {what} (see vgkit.interfaces)")
    return obj


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return trainable, frozen


def parameter_counts(model: GroundingModel) -> list[tuple[str, int, int]]:
    """(part, trainable, frozen) for the backbone, the text encoder, each attention module
    (``attention.<i>``) and the head, then ``total``."""
    parts: list[tuple[str, nn.Module]] = [("backbone", model.backbone),
                                          ("text_encoder", model.text_encoder)]
    parts += [(f"attention.{i}", a) for i, a in enumerate(model.attention)]
    parts += [("head", model.head), ("total", model)]
    return [(label, *count_parameters(module)) for label, module in parts]


def describe_recipe_model(recipe: Any, registry: Any) -> GroundingModel:
    """The recipe's model built without pretrained weights (to count and describe it)."""
    import warnings

    with warnings.catch_warnings():  # counting parameters needs no pretrained weights
        warnings.simplefilter("ignore")
        bb = registry.get("backbone", recipe.model.backbone.name)
        no_weights = {"weights": None} if "weights" in bb.options.model_fields else {}
        model, _ = build_model(recipe, registry, backbone_options=no_weights)
    return model
