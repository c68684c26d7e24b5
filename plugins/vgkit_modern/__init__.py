"""A second, modern plugin set: a TransVG-style model (Deng et al., ICCV 2021).

Hugging Face text encoders (``hf``, ``minilm``), a visual-linguistic transformer
with a [REG] token (``transformer-fusion``), a sigmoid box MLP (``box-mlp``) and
the L1 + GIoU loss (``giou-l1``). Backbones come from the reference set's
``timm:*`` family (e.g. ``timm:resnet50``, TransVG's) or its ``vgg16``.
Registered through the ``vgkit.plugins`` entry point like any third-party plugin.
"""

from __future__ import annotations

from importlib import resources

from vgkit.hookspecs import hookimpl
from vgkit.recipe import recipe_from_file
from vgkit.registry import Registry

from . import fusion, head, loss, text


@hookimpl
def vgkit_register(registry: Registry) -> None:
    """Register the modern components and their recipes."""
    registry.add("text_encoder", "hf", text.build_hf, options=text.HFOptions)
    registry.add("text_encoder", "minilm", text.build_minilm, options=text.MiniLMOptions)
    registry.add("attention", "transformer-fusion", fusion.build_transformer_fusion,
                 options=fusion.TransformerFusionOptions)
    registry.add("head", "box-mlp", head.build_box_mlp, options=head.BoxMLPOptions)
    registry.add("loss", "giou-l1", loss.build_giou_l1, options=loss.GiouL1Options)
    for item in sorted(resources.files(__name__).joinpath("recipes").iterdir(), key=str):
        if item.name.endswith(".toml"):
            registry.add("recipe", item.name.removesuffix(".toml"),
                         recipe_from_file(item), doc=f"built-in recipe {item.name}")
