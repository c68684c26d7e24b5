"""Hostile input: the image-path rule and the one validator every index goes through.

Annotation files are untrusted (they are passed around as downloads), so an image
path they supply must stay under the dataset root: :func:`safe_relpath` refuses
absolute paths and ``..`` components lexically, at load time, and
:func:`image_file` is the one place a record's image path is joined to the root.
Symlinks are not resolved: a folder the user linked under the root
(``ROOT/images -> /datasets/coco``) is the user's choice, not the file's.

:func:`check_index` finds the records that train and eval must skip (bad boxes,
sizes, phrases, duplicates), counts and names them; ``strict=True`` makes the
first one fatal.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vgkit.errors import VgkitError

if TYPE_CHECKING:
    from vgkit.data.index import DatasetIndex, Record

__all__ = ["EPSILON", "PATH_RULE", "PROBLEM_KINDS", "IndexCheck", "UnsafePathError",
           "box_problem", "check_index", "image_file", "safe_relpath"]

PATH_RULE = "image paths in annotations must be relative to the dataset root, without '..'"
# In the order they are checked: a record is counted under its first problem only.
PROBLEM_KINDS = ("bad_image_size", "nan_box", "degenerate_box", "box_outside_image",
                 "empty_phrase", "duplicate")
EPSILON = 1e-3  # pixels a box may stick out of the image (float rounding of converted boxes)
_MAX_EXAMPLES = 5
_DRIVE = re.compile(r"^[A-Za-z]:")  # C:\x, C:/x and drive-relative C:x


class UnsafePathError(VgkitError):
    """An annotation-supplied image path that could reach outside the dataset root."""


@functools.lru_cache(maxsize=1 << 16)
def _normalise(path: str) -> tuple[str, str]:
    """(normalised path, "") or ("", why it is refused); cached: indexes repeat images."""
    if not path:
        return "", "is empty"
    if "\0" in path:
        return "", "contains a NUL byte"
    if path[0] in "/\\" or _DRIVE.match(path):  # POSIX, UNC (\\server), rooted (\x), C:
        return "", "is absolute"
    parts = path.replace("\\", "/").split("/")
    if ".." in parts:
        return "", "has a '..' component"
    norm = "/".join(p for p in parts if p not in ("", "."))
    return (norm, "") if norm else ("", "is empty")


def safe_relpath(path: object, where: str) -> str:
    """`path` as a POSIX path relative to the dataset root; UnsafePathError if it could escape
    (or is not a string: it usually comes from a file)."""
    norm, why = _normalise(path) if isinstance(path, str) else ("", "is not a string")
    if why:
        raise UnsafePathError(f"{where}: image path {path!r} {why}; {PATH_RULE}")
    return norm


def image_file(root: Path, rel: str, where: str = "index") -> Path:
    """The file of a record's image: `rel` under `root`, re-checked by :func:`safe_relpath`."""
    return Path(root) / safe_relpath(rel, where)


def box_problem(box: Any, width: float = 0, height: float = 0) -> str | None:
    """"nan_box", "degenerate_box", "box_outside_image" or None (size <= 0: not checked)."""
    try:
        x1, y1, x2, y2 = box
        # One chained test passes every good box (NaN and inf fail it); check_index calls
        # this per record, so the slow tests below run only for the few that fail it.
        if not (0 < x2 - x1 < math.inf and 0 < y2 - y1 < math.inf):
            if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2)
                    and math.isfinite(y2)):
                return "nan_box"
            if x2 <= x1 or y2 <= y1:
                return "degenerate_box"
        if (width > 0 and (x1 < -EPSILON or x2 > width + EPSILON)) or (
                height > 0 and (y1 < -EPSILON or y2 > height + EPSILON)):
            return "box_outside_image"
    except (TypeError, ValueError):  # not 4 numbers
        return "nan_box"
    return None


@dataclass
class IndexCheck:
    """What :func:`check_index` found: the invalid records, counted and named."""

    total: int = 0
    invalid: dict[int, str] = field(default_factory=dict)  # record position -> problem kind
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # up to 5 per kind

    @property
    def ok(self) -> bool:
        """True when no record is invalid."""
        return not self.invalid

    def valid(self, index: DatasetIndex) -> DatasetIndex:
        """`index` without its invalid records (name, source and meta kept)."""
        if self.ok:
            return index
        keep = [r for i, r in enumerate(index.records) if i not in self.invalid]
        return type(index)(keep, name=index.name, source=index.source, meta=index.meta)

    def as_meta(self) -> dict[str, Any]:
        """A JSON-ready summary for an index's meta."""
        return {"records": self.total, "invalid": len(self.invalid), "counts": dict(self.counts),
                "examples": dict(self.examples)}

    def summary(self) -> str:
        """One line: ``3 invalid of 120 records: nan_box 1, duplicate 2``."""
        if self.ok:
            return f"all {self.total:,} records valid"
        return (f"{len(self.invalid):,} invalid of {self.total:,} records: "
                + ", ".join(f"{k} {n:,}" for k, n in self.counts.items()))


def _name(i: int, r: Record) -> str:
    ident = f"{r.ref_id}#{r.sent_id}" if r.ref_id else f"#{r.sent_id}"
    return f"record {i} ({r.split}, image {r.image_id}, {ident})"


def _what(kind: str, r: Record) -> str:
    if kind == "bad_image_size":
        return f"image size {r.width}x{r.height}"
    if kind == "empty_phrase":
        return f"phrase {r.phrase!r}"
    if kind == "box_outside_image":
        return f"box {list(r.box)} outside {r.width}x{r.height} image"
    if kind == "duplicate":
        return f"repeats an earlier record: box {list(r.box)}, phrase {r.phrase!r}"
    return f"box {list(r.box)}"


def check_index(index: DatasetIndex, *, strict: bool = False) -> IndexCheck:
    """Validate every record of `index`; an unsafe image path always raises UnsafePathError."""
    check = IndexCheck(total=len(index))
    counts: Counter[str] = Counter()
    # A duplicate is the same expression twice. ReferIt has phrases repeated by different
    # players for one region (another sent_id): real annotations, so sent_id is in the key.
    # trainval repeats train and val under its own split name, so split is too.
    seen: set[tuple[Any, ...]] = set()
    safe: set[str] = set()  # image paths found safe (the same path repeats: checked once)
    # the fields straight from the index's columns: a Record is built only to be named
    for i, (image_path, width, height, box, tokens, phrase, split, image_id, ref_id,
            sent_id) in enumerate(index.values("image_path", "width", "height", "box", "tokens",
                                               "phrase", "split", "image_id", "ref_id",
                                               "sent_id")):
        if type(image_path) is not str or (image_path not in safe
                                           and _normalise(image_path)[1]):  # message only if bad
            safe_relpath(image_path, f"{index.name}: {_name(i, index.records[i])}")
        safe.add(image_path)
        try:
            kind = "bad_image_size" if width < 0 or height < 0 else box_problem(
                box, width, height)
        except TypeError:  # a size that is not a number
            kind = "bad_image_size"
        if kind is None and (not tokens or not isinstance(phrase, str) or not phrase.strip()):
            kind = "empty_phrase"
        if kind is None:
            # the box spread: one new tuple a record, not two (surviving tuples make the gc run)
            key = (split, image_id, ref_id, sent_id, *box, phrase)
            if key in seen:
                kind = "duplicate"
            seen.add(key)
        if kind is None:
            continue
        r = index.records[i]
        example = f"{_name(i, r)}: {_what(kind, r)}"
        if strict:
            raise VgkitError(f"{index.name}: invalid record ({kind}): {example} (strict mode)")
        check.invalid[i] = kind
        counts[kind] += 1
        shown = check.examples.setdefault(kind, [])
        if len(shown) < _MAX_EXAMPLES:
            shown.append(example)
    check.counts = {k: counts[k] for k in PROBLEM_KINDS if counts[k]}
    check.examples = {k: check.examples[k] for k in check.counts}
    return check
