"""Helpers the annotation loaders share: problem counts, record checks, split plans, files.

Every loader (ReferIt, the RefCOCO family, Flickr30k) turns one expression into a
:class:`~vgkit.data.index.Record` through :func:`make_record`, so the box tests,
clipping, text decoding and problem counting are the same for all of them.
"""

from __future__ import annotations

import json
import pickle
import posixpath
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vgkit.data.index import Record
from vgkit.data.safe_pickle import safe_loads
from vgkit.data.validate import box_problem, image_file
from vgkit.errors import VgkitError
from vgkit.text import tokenize

__all__ = ["HeaderSizes", "Problems", "default_splits", "field", "load_pth_file", "make_record",
           "plan_splits", "read_json", "stem", "xywh_to_xyxy"]

_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes kept by surrogateescape
_MAX_EXAMPLES = 5
_SPLIT_ORDER = ("train", "val", "trainval", "testA", "testB", "testC", "test")


class Problems:
    """Counts and a few examples of bad input; raises at the first one when strict."""

    def __init__(self, strict: bool, dataset: str = "ReferIt") -> None:
        self.strict, self.dataset = strict, dataset
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.tokens: dict[str, tuple[str, ...]] = {}  # trainval repeats train and val phrases

    def add(self, kind: str, example: str) -> None:
        """Count one problem of `kind` (the first few with `example`); fatal when strict."""
        if self.strict:
            raise VgkitError(f"{self.dataset} data problem ({kind}): {example} (strict mode)")
        self.counts[kind] += 1
        if len(self.examples[kind]) < _MAX_EXAMPLES:
            self.examples[kind].append(example)

    def as_meta(self) -> dict[str, Any]:
        """A JSON-ready summary for an index's meta."""
        return {"counts": dict(sorted(self.counts.items())),
                "examples": {k: self.examples[k] for k in sorted(self.counts)}}


def read_json(path: Path) -> Any:
    """A JSON file's content; a missing or malformed file is one VgkitError line."""
    # surrogateescape keeps undecodable bytes as lone surrogates so they are reported
    # per phrase instead of failing the whole file.
    try:
        return json.loads(path.read_bytes().decode("utf-8", "surrogateescape"))
    except FileNotFoundError:
        raise VgkitError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise VgkitError(f"{path}: invalid JSON ({e})") from None



class _Tag:
    """``where: id#n``, formatted only when a problem message uses it (most records have none)."""

    __slots__ = ("id", "n", "where")

    def __init__(self, where: str, id_: str, n: int) -> None:
        self.where, self.id, self.n = where, id_, n

    def __format__(self, spec: str) -> str:
        return f"{self.where}: {self.id}#{self.n}"


def make_record(p: Problems, where: str, *, image_id: str, image_path: str, size: tuple[int, int],
                 box: Sequence[Any] | None, phrase: Any, split: str, ref_id: str,
                 sent_id: int) -> Record | None:
    """Validate and normalise one expression; None when it must be skipped."""
    tag = _Tag(where, ref_id or image_id, sent_id)  # its text is built only for a problem
    if isinstance(phrase, bytes):
        phrase = phrase.decode("utf-8", "surrogateescape")
    phrase = "" if phrase is None else str(phrase)
    if _UNDECODABLE.search(phrase):
        phrase = phrase.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        p.add("non_utf8", f"{tag} phrase {phrase!r}")
    tokens = p.tokens.get(phrase)
    if tokens is None:
        tokens = p.tokens[phrase] = tuple(tokenize(phrase))
    if not tokens:
        p.add("empty_phrase", f"{tag} phrase {phrase!r}")
        return None
    if box is None:
        p.add("missing_box", f"{tag} has no box")
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        p.add("nan_box", f"{tag} box {box!r} is not 4 numbers")
        return None
    # The same box tests as check_index (vgkit.data.validate), plus clipping: a box that
    # sticks out of the image is clipped here, so the index holds only valid boxes.
    w, h = size
    kind = box_problem((x1, y1, x2, y2), w if h > 0 else 0, h if w > 0 else 0)
    if kind in ("nan_box", "degenerate_box"):
        p.add(kind, f"{tag} box {[x1, y1, x2, y2]} " + (
            "has no area" if kind == "degenerate_box" else "is not finite"))
        return None
    if kind == "box_outside_image":
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        if box_problem((cx1, cy1, cx2, cy2)):
            p.add("box_outside_image", f"{tag} box {[x1, y1, x2, y2]} outside {w}x{h} image")
            return None
        p.add("box_clipped", f"{tag} box {[x1, y1, x2, y2]} clipped to {w}x{h} image")
        x1, y1, x2, y2 = cx1, cy1, cx2, cy2
    return Record(image_id=image_id, image_path=image_path, width=w, height=h,
                  box=(x1, y1, x2, y2), phrase=phrase, tokens=tokens, split=split,
                  ref_id=ref_id, sent_id=sent_id)



def plan_splits(splits: Sequence[str], available: Iterable[str], where: str,
                dataset: str = "ReferIt") -> dict[str, list[str]]:
    """Which source splits make each requested split (trainval = train + val if absent)."""
    have = set(available)
    plan: dict[str, list[str]] = {}
    for s in dict.fromkeys(splits):
        if s in have:
            plan[s] = [s]
        elif s == "trainval" and {"train", "val"} <= have:
            plan[s] = ["train", "val"]
        else:
            raise VgkitError(f"{where}: no {dataset} split {s!r}; available: "
                             f"{', '.join(sorted(have)) or '(none)'}")
    return plan



def default_splits(available: Iterable[str]) -> list[str]:
    """The splits a form holds in the published order, plus trainval (train + val) if absent."""
    have = set(available)
    out = [s for s in _SPLIT_ORDER if s in have] + sorted(have - set(_SPLIT_ORDER))
    if "trainval" not in have and {"train", "val"} <= have:
        out.insert(out.index("val") + 1, "trainval")
    return out


class HeaderSizes:
    """Image sizes from the image header, else (0, 0), for forms that hold none."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[str, tuple[int, int]] = {}
        self.unknown: set[str] = set()

    def get(self, image_path: str) -> tuple[int, int]:
        """(width, height) of the image at `image_path` under the root; (0, 0) if unreadable."""
        if image_path not in self.cache:
            try:
                from PIL import Image

                with Image.open(image_file(self.root, image_path)) as im:  # header only
                    self.cache[image_path] = im.size
            except (OSError, ValueError):
                self.unknown.add(image_path)
                self.cache[image_path] = (0, 0)
        return self.cache[image_path]

    def notes(self) -> list[str]:
        """A note naming the images whose size is unknown (none when all were read)."""
        if not self.unknown:
            return []
        return [f"size unknown (0x0, boxes not checked against it) for {len(self.unknown):,} "
                f"images not readable under the root, e.g. {', '.join(sorted(self.unknown)[:3])}"]


def field(d: Any, name: str) -> Any:
    """``d[name]`` for dicts from a Python 2 pickle, whose str keys/values arrive as bytes."""
    if not isinstance(d, dict):
        return None
    v = d.get(name, d.get(name.encode()))
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v


def xywh_to_xyxy(b: Any) -> Any:
    """COCO [x, y, w, h] as continuous [x1, y1, x2, y2]."""
    try:
        x, y, w, h = (float(v) for v in b)
    except (TypeError, ValueError):
        return b  # _make_record reports it
    return [x, y, x + w, y + h]



def load_pth_file(path: Path) -> Any:
    """A torch.save'd list of plain tuples, never running code from the file."""
    # torch.load(weights_only=True) unpickles in pure Python (~4 s for a 60k-item
    # file); the same plain data read by the C-speed safe_pickle takes a fraction
    # of that. Anything else (tensors, legacy format) goes to torch's loader.
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) == 1:
                return safe_loads(z.read(pkl[0]), encoding="utf-8")
    except (zipfile.BadZipFile, VgkitError):
        pass
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        lines = str(e).splitlines() or [type(e).__name__]
        why = next((ln.strip() for ln in lines if "GLOBAL" in ln), lines[0])  # the offender
        raise VgkitError(f"{path}: cannot load as a weights-only torch file: {why}") from None


def _numpy_array_globals() -> list[Any]:
    """What a pickled numpy array names: Flickr30k's one-stage files hold their boxes so."""
    # Safe to admit: _reconstruct only builds an empty array of an allowlisted type, and
    # any object its state holds comes through the same weights-only unpickler.
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    # files written with numpy 1.x (all the published ones) name numpy.core, not numpy._core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype,
            (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            *(v for v in vars(getattr(np, "dtypes", object)).values() if isinstance(v, type))]


def stem(name: str) -> str:
    """The file name of `name` without folder and extension (``a/b/1_2.mat`` -> ``1_2``)."""
    return posixpath.splitext(posixpath.basename(name.replace("\\", "/")))[0]
