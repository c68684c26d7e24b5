"""The reference plugin set: Endo et al., IJCAI 2017, "An Attention-based Regression
Model for Grounding Textual Phrases in Images".

Registered through the ``vgkit.plugins`` entry point like any third-party plugin.
"""

from __future__ import annotations

from importlib import resources

from vgkit.hookspecs import hookimpl
from vgkit.recipe import recipe_from_file
from vgkit.registry import Registry

from . import attention, backbones, head, loss, text


@hookimpl
def vgkit_register(registry: Registry) -> None:
    """Register the paper's components and its recipes."""
    registry.add("backbone", "vgg16", backbones.build_vgg16, options=backbones.BackboneOptions)
    registry.add("backbone", "timm:*", backbones.build_timm, options=backbones.BackboneOptions)
    registry.add("backbone", "none", backbones.build_none, options=backbones.NoBackboneOptions)
    registry.add("text_encoder", "blstm", text.build_blstm, options=text.BLSTMOptions)
    registry.add("attention", "image-attention", attention.build_image_attention,
                 options=attention.ImageAttentionOptions)
    registry.add("attention", "text-attention", attention.build_text_attention,
                 options=attention.TextAttentionOptions)
    registry.add("head", "box-regression", head.build_box_regression,
                 options=head.BoxRegressionOptions)
    registry.add("loss", "iou-se-area", loss.build_iou_se_area, options=loss.IouSeAreaOptions)
    for item in sorted(resources.files(__name__).joinpath("recipes").iterdir(), key=str):
        if item.name.endswith(".toml"):
            registry.add("recipe", item.name.removesuffix(".toml"),
                         recipe_from_file(item), doc=f"built-in recipe {item.name}")
