"""vgkit-broken: a plugin whose compiled dependency is missing, so importing it fails.

It stands for the common real case (a CUDA extension that was never built, an
optional dependency left out): ``vgkit plugins`` lists it with status ``error``
and the ImportError, the other plugins keep working, and ``VGKIT_STRICT_PLUGINS=1``
turns the failure into a one-line fatal error.
"""

from __future__ import annotations

# deliberately absent: this import is what fails
from roi_align_cuda_ext import roi_align  # type: ignore[import-not-found]

from vgkit.hookspecs import hookimpl
from vgkit.registry import Registry


@hookimpl
def vgkit_register(registry: Registry) -> None:
    """Never reached: the module fails to import."""
    registry.add("attention", "roi-align", roi_align)
