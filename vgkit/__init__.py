"""vgkit: an extensible plugin toolkit for visual grounding (image + phrase -> box)."""

from importlib.metadata import PackageNotFoundError, version

from vgkit.errors import VgkitError
from vgkit.hookspecs import hookimpl

try:
    __version__ = version("vgkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["VgkitError", "__version__", "hookimpl"]
