"""The built-in datasets, registered through the ``vgkit.plugins`` entry point ``datasets``.

A dataset build function is called as ``build(options, root=Path)`` and returns
a :class:`~vgkit.data.index.DatasetIndex` whose ``image_path`` values are
relative to ``root``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vgkit.data.index import DatasetIndex
from vgkit.errors import VgkitError
from vgkit.hookspecs import hookimpl
from vgkit.registry import Registry


class SyntheticOptions(BaseModel):
    """Options of the ``synthetic`` dataset: what the dataset at the root must have been made with.

    Only ``vgkit data synth`` (and ``make demo``) generate data: a mistyped root must not
    silently become minutes of drawing and extraction.
    """

    model_config = ConfigDict(extra="forbid")
    # None: use the dataset found at the root as it is
    n_images: int | None = Field(None, ge=10)
    seed: int | None = None
    image_size: tuple[int, int] | None = None  # (W, H) of the generated JPEGs


class ReferItOptions(BaseModel):
    """Options of the ``referit`` dataset."""

    model_config = ConfigDict(extra="forbid")
    format: str = "auto"  # auto | hu | refer | pth
    index: str | None = None  # a directory written by `vgkit data prepare`; default <root>/vgkit-index


class RefCocoOptions(BaseModel):
    """Options of ``refcoco``, ``refcoco+``, ``refcocog`` and ``refclef``."""

    model_config = ConfigDict(extra="forbid")
    format: str = "auto"  # auto | refer | pth | simrec | seqtr | mdetr | json
    split_by: str | None = None  # None: the dataset's first (unc; refcocog: umd)
    index: str | None = None  # a `vgkit data prepare` directory; default <root>/vgkit-index
    image_dir: str | None = None  # images folder under the root; default per dataset


class Flickr30kOptions(BaseModel):
    """Options of ``flickr30k`` (one-stage ``flickr_<split>.pth`` files or SeqTR's json)."""

    model_config = ConfigDict(extra="forbid")
    format: str = "auto"  # auto | pth | seqtr | json
    index: str | None = None
    image_dir: str | None = None  # default Flickr30k/flickr30k_images


def build_synthetic(opts: SyntheticOptions, *, root: Path) -> DatasetIndex:
    """The PIL-drawn scenes at `root`, made by ``vgkit data synth`` (never generated here)."""
    from vgkit.data import synth

    given = {k: v for k, v in opts.model_dump().items() if v is not None}
    if "image_size" in given:
        given["image_size"] = list(given["image_size"])
    make = (f"vgkit data synth --out {root} --n-images {given.get('n_images', synth.DEFAULT_N_IMAGES)}"
            + (f" --seed {given['seed']}" if "seed" in given else "")
            + (" --width {} --height {}".format(*given["image_size"]) if "image_size" in given
               else ""))
    if not (root / "manifest.json").is_file():
        raise VgkitError(f"no synthetic dataset at {root} (no manifest.json); check data.root / "
                         f"--root, or make one with `{make}`")
    index = synth.load_synthetic(root)
    differ = [f"{k}={index.meta.get(k)!r} (asked {v!r})" for k, v in given.items()
              if index.meta.get(k) != v]
    if differ:
        raise VgkitError(f"the synthetic dataset at {root} was made with {', '.join(differ)}; "
                         f"make the one asked for with `{make}` or point data.root elsewhere")
    return index


def build_referit(opts: ReferItOptions, *, root: Path) -> DatasetIndex:
    """ReferIt (the berkeley split) from any of its three forms, or a prepared index."""
    from vgkit.data.referit import load_referit

    return _prepared(opts.index, root, "ReferIt") or load_referit(root, format=opts.format)


def _prepared(index: str | None, root: Path, what: str) -> DatasetIndex | None:
    """The prepared index (`index`, default ROOT/vgkit-index) if there is one, else None;
    without one, `root` must exist for the raw annotations to be read."""
    index_dir = Path(index) if index else root / "vgkit-index"
    if (index_dir / "manifest.json").is_file():
        return DatasetIndex.load(index_dir)
    if not root.exists():
        raise VgkitError(f"{what} root {root} does not exist (set data.root=PATH)")
    return None


def _refcoco_builder(name: str) -> Callable[..., DatasetIndex]:
    def build(opts: RefCocoOptions, *, root: Path) -> DatasetIndex:
        from vgkit.data.refcoco import load_refcoco

        return _prepared(opts.index, root, name) or load_refcoco(
            root, name, opts.format, opts.split_by, image_dir=opts.image_dir)

    build.__doc__ = f"{name} in its refer or one-stage pth form, or a prepared index."
    return build


def build_flickr30k(opts: Flickr30kOptions, *, root: Path) -> DatasetIndex:
    """Flickr30k Entities from one-stage pth files or SeqTR's json, or a prepared index."""
    from vgkit.data.refcoco import load_flickr30k

    return _prepared(opts.index, root, "flickr30k") or load_flickr30k(
        root, image_dir=opts.image_dir, format=opts.format)


@hookimpl
def vgkit_register(registry: Registry) -> None:
    """Register the built-in datasets."""
    registry.add("dataset", "synthetic", build_synthetic, options=SyntheticOptions)
    registry.add("dataset", "referit", build_referit, options=ReferItOptions)
    for name in ("refcoco", "refcoco+", "refcocog", "refclef"):
        registry.add("dataset", name, _refcoco_builder(name), options=RefCocoOptions)
    registry.add("dataset", "flickr30k", build_flickr30k, options=Flickr30kOptions)
