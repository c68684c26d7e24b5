"""A few (image file, phrase) pairs of a recipe's dataset: for the serve page and export checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One dataset image (its file and its path under the root) and a phrase about it."""

    file: Path
    name: str
    phrase: str


def dataset_samples(recipe: Any, n: int) -> list[Sample]:
    """Up to `n` distinct images of the recipe's dataset, test split first, then val, then the
    rest, each with its first phrase; records the index validator rejects are never offered."""
    from vgkit.data.validate import check_index, image_file
    from vgkit.plugins import get_registry

    root, ds = recipe.data_root(), recipe.data.dataset
    index = get_registry().build("dataset", ds.name, ds.options(), root=root)
    bad = set(check_index(index).invalid)
    rank = {"test": 0, "val": 1}
    splits = index.column("split")
    order = sorted(range(len(index)), key=lambda k: rank.get(splits[k], 2))
    seen: dict[str, Sample] = {}
    for k in order:
        r = index.records[k]
        if len(seen) == n:
            break
        if k in bad or r.image_path in seen:
            continue
        path = image_file(root, r.image_path)
        if path.is_file():
            seen[r.image_path] = Sample(path, r.image_path, r.phrase)
    return list(seen.values())
