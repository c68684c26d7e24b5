"""The one normalized index every dataset produces: one record per expression.

Boxes are stored as ``[x1, y1, x2, y2]`` in *continuous* original-image pixel
coordinates: a box covering pixel columns 10..19 inclusive is ``x1=10, x2=20``,
so ``w = x2 - x1``. The hu form's inclusive boxes convert as ``x2 = x_max + 1``.

On disk an index is a directory with ``manifest.json`` (name, source, box
convention, counts per split, digest) and ``records.jsonl`` (one JSON object a
line, the fields of :class:`Record`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgkit.data.validate import safe_relpath
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text, replacing
from vgkit.text import tokenize

BOX_CONVENTION = "xyxy-continuous-pixels"
INDEX_VERSION = 1


@dataclass(frozen=True, slots=True)
class Record:
    """One referring expression: an image, a phrase and the box it refers to.

    Slotted (no per-record ``__dict__``), tokens interned by :func:`vgkit.text.tokenize`.
    """

    image_id: str
    image_path: str  # relative to the dataset root
    width: int  # original image size in pixels
    height: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 (BOX_CONVENTION)
    phrase: str
    tokens: tuple[str, ...]
    split: str
    ref_id: str = ""  # source id of the referred region (ReferIt: crop id "<image>_<n>")
    sent_id: int = 0  # index of this phrase among the region's phrases
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of this record."""
        # a shallow dict: dataclasses.asdict deep-copies and is ~10x slower on 100k records
        d: dict[str, Any] = {name: getattr(self, name) for name in _FIELD_NAMES}
        d["box"], d["tokens"] = list(self.box), list(self.tokens)
        if not d["extra"]:
            del d["extra"]
        return d

    def to_line(self) -> str:
        """This record as its ``records.jsonl`` line (no newline): sorted keys, UTF-8 as is.

        The same text as ``json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)``
        (tested), written out by hand for the common record: twice as fast, and writing
        an index is mostly this. A record with ``extra`` or a non-finite or non-float box
        number goes through json itself.
        """
        b = self.box
        if (self.extra or len(b) != 4 or not all(type(v) is float and v - v == 0.0 for v in b)
                or not type(self.width) is type(self.height) is type(self.sent_id) is int):
            return _LINE.encode(self.to_json())
        s = _json_str
        return (f'{{"box": [{b[0]!r}, {b[1]!r}, {b[2]!r}, {b[3]!r}], "height": {self.height}, '
                f'"image_id": {s(self.image_id)}, "image_path": {s(self.image_path)}, '
                f'"phrase": {s(self.phrase)}, "ref_id": {s(self.ref_id)}, '
                f'"sent_id": {self.sent_id}, "split": {s(self.split)}, '
                f'"tokens": [{", ".join(map(s, self.tokens))}], "width": {self.width}}}')

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        """Build a record from :meth:`to_json` output."""
        d = dict(d)
        d["box"] = tuple(map(float, d["box"]))
        d["tokens"] = tuple(d.get("tokens", ()))
        return cls(**d)


class DatasetIndex:
    """An ordered collection of :class:`Record` with a manifest."""

    def __init__(self, records: Iterable[Record], *, name: str, source: str = "",
                 meta: dict[str, Any] | None = None) -> None:
        self.records = list(records)
        self.name, self.source = name, source
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def splits(self) -> dict[str, int]:
        """Number of records per split."""
        return dict(sorted(Counter(r.split for r in self.records).items()))

    def split(self, name: str) -> DatasetIndex:
        """The records of one split (an error listing the splits when it has none)."""
        recs = [r for r in self.records if r.split == name]
        if not recs:
            raise VgkitError(f"dataset {self.name!r} has no split {name!r}; splits: "
                             f"{', '.join(self.splits()) or '(empty)'}")
        return DatasetIndex(recs, name=self.name, source=self.source, meta=self.meta)

    def digest(self) -> str:
        """A sha256 over the records' content (order included): identifies the data."""
        h = hashlib.sha256()
        for r in self.records:
            h.update((r.to_line() + "\n").encode())
        return h.hexdigest()

    def manifest(self, digest: str | None = None) -> dict[str, Any]:
        """The manifest written beside the records."""
        return {"version": INDEX_VERSION, "name": self.name, "source": self.source,
                "box_convention": BOX_CONVENTION, "count": len(self), "splits": self.splits(),
                "digest": digest or self.digest(), "meta": self.meta}

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``manifest.json`` and ``records.jsonl`` atomically into `directory`.

        The records stream to the temp file a chunk at a time, hashed as they go: memory
        holds no second copy of the index as text.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        h, target = hashlib.sha256(), d / "records.jsonl"
        with replacing(target) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for start in range(0, len(self.records), 10_000):
                    chunk = "".join(r.to_line() + "\n"
                                    for r in self.records[start:start + 10_000])
                    h.update(chunk.encode())
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        _atomic_write(d / "manifest.json", json.dumps(self.manifest(h.hexdigest()), indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DatasetIndex:
        """Read an index written by :meth:`save` or by hand; malformed lines and unsafe paths fail."""
        d = Path(directory)
        mpath, rpath = d / "manifest.json", d / "records.jsonl"
        if not mpath.is_file() or not rpath.is_file():
            raise VgkitError(f"{d}: not a vgkit index (needs manifest.json and records.jsonl)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VgkitError(f"{mpath}: not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("name"), str):
            raise VgkitError(f"{mpath}: not a vgkit manifest (needs an object with a 'name')")
        if manifest.get("box_convention") != BOX_CONVENTION:
            raise VgkitError(f"{mpath}: box convention {manifest.get('box_convention')!r}, "
                             f"expected {BOX_CONVENTION!r}")
        try:
            with rpath.open(encoding="utf-8") as f:
                records = [_parse_line(line, f"{rpath}: line {n}")
                           for n, line in enumerate(f, 1) if line.strip()]
        except UnicodeDecodeError as e:
            raise VgkitError(f"{rpath}: not UTF-8 text ({e.reason})") from None
        return cls(records, name=manifest["name"], source=manifest.get("source", ""),
                   meta=manifest.get("meta", {}))


def _parse_line(line: str, where: str) -> Record:
    """One records.jsonl line as a Record: a one-line error for anything malformed."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise VgkitError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not _well_formed(d):
        _explain(d, where)
    if "tokens" not in d:  # hand-made indexes may leave tokenizing to vgkit
        d["tokens"] = tokenize(d["phrase"])
    d["image_path"] = safe_relpath(d["image_path"], where)
    return Record.from_json(d)


def _well_formed(d: Any) -> bool:
    # The fast path (180k lines a load): exact types, one chain of tests; _explain says why not.
    if type(d) is not dict or not _REQUIRED <= d.keys() <= _ALLOWED:
        return False
    box, tokens = d["box"], d.get("tokens", ())
    return (type(d["image_id"]) is str and type(d["image_path"]) is str
            and type(d["width"]) is int and type(d["height"]) is int
            and type(d["phrase"]) is str and type(d["split"]) is str
            and type(d.get("ref_id", "")) is str and type(d.get("sent_id", 0)) is int
            and type(d.get("extra", _NO_EXTRA)) is dict
            and type(box) is list and len(box) == 4 and type(box[0]) in _NUMBER
            and type(box[1]) in _NUMBER and type(box[2]) in _NUMBER and type(box[3]) in _NUMBER
            and type(tokens) in (list, tuple) and all(map(isinstance, tokens, _STRS)))


def _explain(d: Any, where: str) -> None:
    """Raise the one-line error for a record that is not :func:`_well_formed`."""
    if not isinstance(d, dict):
        raise VgkitError(f"{where}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in _FIELDS if k in _REQUIRED and k not in d]
    if missing:
        raise VgkitError(f"{where}: missing field {', '.join(map(repr, missing))}")
    unknown = sorted(d.keys() - _ALLOWED)
    if unknown:
        raise VgkitError(f"{where}: unknown field {', '.join(map(repr, unknown))}; "
                         f"fields: {', '.join(_FIELDS)}")
    for k, (t, name) in _FIELDS.items():
        v = d.get(k)
        if k not in d or (k == "box" and _is_box(v)) or (k == "tokens" and _is_tokens(v)):
            continue
        # bool is an int to isinstance: a width or sent_id of true is a mistake
        if t is None or not isinstance(v, t) or isinstance(v, bool):
            # NaN is a number here (json reads NaN/Infinity): check_index reports nan_box
            raise VgkitError(f"{where}: field {k!r} must be {name}, got {v!r}")


def _is_box(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 4
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))


def _is_tokens(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(t, str) for t in v)


# Each field's JSON type and how an error names it (None: checked by _is_box/_is_tokens).
_FIELDS: dict[str, tuple[type | None, str]] = {
    "image_id": (str, "a string"), "image_path": (str, "a string"), "width": (int, "an integer"),
    "height": (int, "an integer"), "box": (None, "4 numbers [x1, y1, x2, y2]"),
    "phrase": (str, "a string"), "tokens": (None, "a list of strings"), "split": (str, "a string"),
    "ref_id": (str, "a string"), "sent_id": (int, "an integer"), "extra": (dict, "an object")}
_REQUIRED = frozenset(("image_id", "image_path", "width", "height", "box", "phrase", "split"))
_ALLOWED = frozenset(_FIELDS)
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Record))
# one encoder for every line: json.dumps with options builds a new one a call
_LINE = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
_json_str = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept as is
_NO_EXTRA: dict[str, Any] = {}
_NUMBER = frozenset((int, float))
_STRS = itertools.repeat(str)


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
