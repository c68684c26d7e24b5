"""vgkit: an extensible plugin toolkit for visual grounding (image + phrase -> box).

The front door::

    import vgkit
    g = vgkit.load("runs/demo")                    # a trained run -> Grounder
    p = g.predict("photo.jpg", "the red circle")    # -> Prediction (box in image pixels)
    g.figure("photo.jpg", "the red circle")         # -> PIL image: box, attention, words
    g.evaluate("test")                              # -> the numbers `vgkit eval` prints
    vgkit.train("synthetic-attn-regression", "runs/mine", ["train.epochs=2"])
    vgkit.load_recipe("my.toml"), vgkit.build_model(recipe), vgkit.registry()

Names are imported on first use, so ``import vgkit`` stays light.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from vgkit.errors import VgkitError
from vgkit.hookspecs import hookimpl

try:
    __version__ = version("vgkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it (imported lazily: torch is heavy)
_LAZY = {"load": "vgkit.api", "Grounder": "vgkit.api", "Prediction": "vgkit.api",
         "train": "vgkit.api", "load_recipe": "vgkit.recipe",
         "Recipe": "vgkit.recipe", "build_model": "vgkit.model"}

__all__ = ["Grounder", "Prediction", "Recipe", "VgkitError", "__version__", "build_model",
           "hookimpl", "load", "load_recipe", "registry", "train"]


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name == "registry":  # the module vgkit.registry is callable: vgkit.registry()
        return import_module("vgkit.registry")
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vgkit' has no attribute {name!r}")
