"""Build a vgkit index from a dataset's raw annotations (what ``vgkit data prepare`` does).

:data:`LOADERS` maps each dataset name to its reader; :func:`prepare_index` reads,
validates (:func:`vgkit.data.validate.check_index`), looks for every image under the
root and writes the index (``manifest.json`` + ``records.jsonl``). Nothing is left
out silently: invalid records, problems met while reading and missing images are
counted in the index's ``meta`` and in the returned :class:`Prepared`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vgkit.data.index import DatasetIndex
from vgkit.data.refcoco import DATASETS, load_refcoco
from vgkit.data.referit import DEFAULT_SPLITS, load_referit
from vgkit.data.validate import IndexCheck, check_index, image_file
from vgkit.errors import UnknownNameError, VgkitError

DEFAULT_OUT = "vgkit-index"  # under the root, unless told otherwise
SHOW = 5  # how many example paths a report names


def _referit(root: Path, fmt: str, splits: list[str] | None, strict: bool, split_by: str | None,
             image_dir: str | None) -> DatasetIndex:
    if split_by not in (None, "berkeley") or image_dir is not None:
        raise VgkitError("referit is the berkeley split with its own image folders: "
                         "--split-by and --image-dir do not apply (refclef has the unc split)")
    return load_referit(root, fmt, splits or DEFAULT_SPLITS, strict=strict)


def _refcoco(name: str) -> Callable[..., DatasetIndex]:
    return lambda root, fmt, splits, strict, split_by, image_dir: load_refcoco(
        root, name, fmt, split_by, splits, strict=strict, image_dir=image_dir)


# dataset name -> loader(root, format, splits or None, strict, split_by, image_dir)
LOADERS: dict[str, Callable[..., DatasetIndex]] = {
    "referit": _referit,
    **{name: _refcoco(name) for name in DATASETS},
}


@dataclass
class Missing:
    """Images an index names that are not under the root."""

    count: int
    images: int  # distinct images the index names
    examples: list[str]


@dataclass
class Prepared:
    """A written index with what was found wrong on the way."""

    index: DatasetIndex
    out: Path
    check: IndexCheck
    missing: Missing

    def images_per_split(self) -> dict[str, int]:
        """Distinct images of each split."""
        images: dict[str, set[str]] = {}
        for split, image_id in self.index.values("split", "image_id"):
            images.setdefault(split, set()).add(image_id)
        return {split: len(ids) for split, ids in images.items()}


def missing_images(index: DatasetIndex, root: Path) -> Missing:
    """Which of the index's images are not files under `root` (the first few named)."""
    paths = sorted(set(index.column("image_path")))
    missing = [p for p in paths if not image_file(root, p).is_file()]
    return Missing(len(missing), len(paths), missing[:SHOW])


def prepare_index(dataset: str, root: Path, *, format: str = "auto",
                  splits: Sequence[str] | None = None, split_by: str | None = None,
                  image_dir: str | None = None, strict: bool = False,
                  out: Path | None = None) -> Prepared:
    """Read `dataset`'s annotations under `root` and write its index to `out`.

    `out` defaults to ``ROOT/vgkit-index`` (refused when the root is read-only).
    `strict` makes any invalid record or reading problem an error.
    """
    if dataset not in LOADERS:
        raise UnknownNameError("dataset", dataset, LOADERS)
    if not root.is_dir():
        raise VgkitError(f"--root {root} is not a directory")
    out_dir = out if out is not None else root / DEFAULT_OUT
    if out is None and not root.stat().st_mode & 0o222:
        # Checked by mode bits, not os.access: as root, os.access would say yes and the
        # index would land inside a dataset directory marked read-only.
        raise VgkitError(f"{root} is read-only; choose where to write the index with --out")
    if splits is not None and not splits:
        raise VgkitError("--splits names no split")
    index = LOADERS[dataset](root, format, None if splits is None else list(splits), strict,
                             split_by, image_dir)
    if not len(index):
        raise VgkitError(f"{root}: no {dataset} expressions found")
    check = check_index(index, strict=strict)
    index.meta["validation"] = check.as_meta()
    missing = missing_images(index, root)
    index.meta["missing_images"] = {"count": missing.count, "images": missing.images,
                                    "examples": missing.examples}
    try:
        index.save(out_dir)
    except OSError as e:
        raise VgkitError(f"cannot write the index to {out_dir} ({e.strerror or e}); "
                         f"choose another place with --out") from None
    return Prepared(index, out_dir, check, missing)
