"""The one normalized index every dataset produces: one record per expression.

Boxes are stored as ``[x1, y1, x2, y2]`` in *continuous* original-image pixel
coordinates: a box covering pixel columns 10..19 inclusive is ``x1=10, x2=20``,
so ``w = x2 - x1``. The hu form's inclusive boxes convert as ``x2 = x_max + 1``.

On disk an index is a directory with ``manifest.json`` (name, source, box
convention, counts per split, digest) and ``records.jsonl`` (one JSON object a
line, the fields of :class:`Record`).

In memory :class:`DatasetIndex` holds no object per record: its records are columns
(:class:`_Columns`): numpy arrays for the sizes, sent ids and boxes, int32 codes into
tables of distinct strings for image ids, paths, splits and ref ids, the phrases in one
UTF-8 buffer and the tokens as ids into one table (each with offsets), ``extra`` by row
where a record has one. A :class:`Record` is built when one is read (``index.records``,
iteration); :meth:`DatasetIndex.column` reads one field of every record without any.
``load`` parses each line straight into the columns; ``save`` and ``digest`` write each
line from them, the same bytes as :meth:`Record.to_line` (tested against it). A record
the columns cannot hold exactly (ints in a box, a size beyond int64 or not an int, a
list for a tuple, ...) is kept whole, so that nothing changes on the way through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import operator
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from vgkit.data.validate import safe_relpath
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text, replacing
from vgkit.text import tokenize

BOX_CONVENTION = "xyxy-continuous-pixels"
_T = TypeVar("_T")
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


class _Builder:
    """Columns being filled (compact ``array`` buffers, no object per record).

    A categorical value's code is its position in ``code_of`` (a dict keeps insertion
    order; a new value gets the next code). A record whose values the columns cannot hold
    exactly (a size that is not an int or beyond int64, a box that is not a tuple of 4
    floats, a string field that is not a str, ...) is kept whole in ``kept``.
    """

    def __init__(self) -> None:
        self.n = 0
        self.codes = tuple(array("i") for _ in CATEGORICAL)
        self.code_of = tuple(_Codes() for _ in CATEGORICAL)
        self.other: dict[tuple[int, int], Any] = {}  # (field, code) -> a kept record's non-str
        self.width, self.height, self.sent_id = array("q"), array("q"), array("q")
        self.box: array[float] = array("d")
        self.phrases, self.phrase_end = bytearray(), array("q", [0])
        self.token_ids, self.token_end = array("i"), array("q", [0])
        self.token_code = _Codes()
        self.extra: dict[int, dict[str, Any]] = {}
        self.kept: dict[int, Record] = {}

    def add(self, image_id: str, image_path: str, width: int, height: int,
            box: tuple[float, ...], phrase: str, tokens: Iterable[str], split: str, ref_id: str,
            sent_id: int, extra: dict[str, Any]) -> None:
        """One regular record: str strings, ints within int64, 4 floats, str tokens."""
        (a0, a1, a2, a3), (d0, d1, d2, d3) = self.codes, self.code_of
        a0.append(d0.setdefault(image_id, len(d0)))
        a1.append(d1.setdefault(image_path, len(d1)))
        a2.append(d2.setdefault(split, len(d2)))
        a3.append(d3.setdefault(ref_id, len(d3)))
        self.width.append(width)
        self.height.append(height)
        self.sent_id.append(sent_id)
        self.box.extend(box)
        self.phrases += phrase.encode("utf-8", "surrogatepass")
        self.phrase_end.append(len(self.phrases))
        code = self.token_code
        self.token_ids.extend([code.setdefault(t, len(code)) for t in tokens])
        self.token_end.append(len(self.token_ids))
        if extra:
            self.extra[self.n] = extra
        self.n += 1

    def keep(self, r: Record) -> None:
        """A record the columns cannot hold exactly: kept whole; its string codes still exact."""
        for k, name in enumerate(CATEGORICAL):
            codes, code_of, v = self.codes[k], self.code_of[k], getattr(r, name)
            if type(v) is str:
                codes.append(code_of.setdefault(v, len(code_of)))
            else:  # an entry of its own (it may be unhashable, or equal a str: 1 == True)
                codes.append(code_of.setdefault(object(), len(code_of)))
                self.other[k, codes[-1]] = v
        # its sizes and box where the columns hold them exactly (see DatasetIndex.column)
        for col, v in ((self.width, r.width), (self.height, r.height), (self.sent_id, r.sent_id)):
            col.append(v if type(v) is int and _INT64_MIN <= v <= _INT64_MAX else 0)
        try:
            box = [float(v) for v in r.box if type(v) in _NUMBER]
        except (TypeError, OverflowError):
            box = []
        self.box.extend(box if len(box) == 4 else (math.nan,) * 4)
        self.phrase_end.append(len(self.phrases))
        self.token_end.append(len(self.token_ids))
        self.kept[self.n] = r
        self.n += 1

    def add_record(self, r: Record) -> None:
        """`r` into the columns, or kept whole when they cannot hold it exactly."""
        b, t = r.box, r.tokens
        if (type(r.image_id) is str and type(r.image_path) is str and type(r.split) is str
                and type(r.ref_id) is str and type(r.phrase) is str
                and type(r.width) is type(r.height) is type(r.sent_id) is int
                and _INT64_MIN <= r.width <= _INT64_MAX and _INT64_MIN <= r.height <= _INT64_MAX
                and _INT64_MIN <= r.sent_id <= _INT64_MAX
                and type(b) is tuple and len(b) == 4 and type(b[0]) is type(b[1]) is float
                and type(b[2]) is type(b[3]) is float and type(r.extra) is dict
                and type(t) is tuple and all(map(isinstance, t, _STRS))):
            self.add(r.image_id, r.image_path, r.width, r.height, b, r.phrase, t, r.split,
                     r.ref_id, r.sent_id, r.extra)
        else:
            self.keep(r)

    def add_records(self, recs: list[Record]) -> None:
        """Records into the columns a field at a time; one by one (add_record) when one of
        them is not regular: most indexes are all regular, and this is several times faster."""
        if not recs:
            return
        # a list per field (no tuple per record: surviving containers make the gc run)
        cols = {name: list(map(operator.attrgetter(name), recs)) for name in _FIELD_NAMES}
        boxes, tokens, ints = cols["box"], cols["tokens"], [cols[k] for k in INTEGER]
        if not (all(_types(cols[k]) == {str} for k in (*CATEGORICAL, "phrase"))
                and all(_types(v) == {int} for v in ints)
                and all(min(v) >= _INT64_MIN and max(v) <= _INT64_MAX for v in ints)
                and _types(boxes) == {tuple} and set(map(len, boxes)) == {4}
                and _types(itertools.chain.from_iterable(boxes)) == {float}
                and _types(tokens) == {tuple}
                and _types(itertools.chain.from_iterable(tokens)) <= {str}
                and _types(cols["extra"]) == {dict}):
            for r in recs:
                self.add_record(r)
            return
        # numpy converts whole lists in C; frombytes appends its bytes to the array
        for k, name in enumerate(CATEGORICAL):
            self.codes[k].frombytes(np.fromiter(map(self.code_of[k].__getitem__, cols[name]),
                                                dtype=np.int32, count=len(recs)).tobytes())
        for col, v in zip((self.width, self.height, self.sent_id), ints, strict=True):
            col.frombytes(np.array(v, dtype=np.int64).tobytes())
        self.box.frombytes(np.array(boxes, dtype=np.float64).tobytes())
        encoded = [p.encode("utf-8", "surrogatepass") for p in cols["phrase"]]
        self.phrase_end.extend(itertools.accumulate(map(len, encoded), initial=len(self.phrases)))
        self.phrase_end.pop(-len(encoded) - 1)  # the initial value, already there
        self.phrases += b"".join(encoded)
        code = self.token_code
        self.token_ids.frombytes(np.fromiter(map(code.__getitem__, itertools.chain.from_iterable(
            tokens)), dtype=np.int32).tobytes())
        self.token_end.extend(itertools.accumulate(map(len, tokens), initial=self.token_end[-1]))
        self.token_end.pop(-len(tokens) - 1)
        self.extra.update((self.n + k, e) for k, e in enumerate(cols["extra"]) if e)
        self.n += len(recs)

    def finish(self) -> _Columns:
        """The frozen columns (numpy arrays, read-only)."""
        values = [list(d) for d in self.code_of]
        for (k, c), v in self.other.items():
            values[k][c] = v
        return _Columns(
            n=self.n,
            codes={k: _frozen(np.frombuffer(c, dtype=np.int32))
                   for k, c in zip(CATEGORICAL, self.codes, strict=True)},
            values=dict(zip(CATEGORICAL, values, strict=True)),
            ints={k: _narrow(np.frombuffer(v, dtype=np.int64))
                  for k, v in zip(INTEGER, (self.width, self.height, self.sent_id), strict=True)},
            box=_frozen(np.frombuffer(self.box, dtype=np.float64).reshape(-1, 4)),
            phrases=bytes(self.phrases),
            phrase_end=_frozen(np.frombuffer(self.phrase_end, dtype=np.int64)),
            token_ids=_frozen(np.frombuffer(self.token_ids, dtype=np.int32)),
            token_end=_frozen(np.frombuffer(self.token_end, dtype=np.int64)),
            token_table=list(self.token_code), extra=self.extra, kept=self.kept)


class _Codes(dict[Any, int]):
    """Value -> code, a new value getting the next code when first looked up."""

    def __missing__(self, value: Any) -> int:
        code = self[value] = len(self)
        return code


def _types(values: Iterable[Any]) -> set[type]:
    return set(map(type, values))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _narrow(a: np.ndarray) -> np.ndarray:
    """int32 when every value fits (sizes and sent ids do), else the int64 array."""
    if not len(a) or (a.min() >= -(2**31) and a.max() < 2**31):
        return _frozen(a.astype(np.int32))
    return _frozen(a)


@dataclass(frozen=True, eq=False)
class _Columns:
    """An index's records as columns: ``n`` rows.

    ``codes[k]`` (int32) index ``values[k]`` for the categorical fields; ``ints[k]`` hold
    width, height and sent_id; ``box`` is float64 [n, 4]; phrase i is the UTF-8 (surrogates
    passed) bytes ``phrases[phrase_end[i]:phrase_end[i + 1]]``; the tokens of row i are
    ``token_table[token_ids[token_end[i]:token_end[i + 1]]]``; ``extra`` and ``kept`` are
    sparse (row -> extra dict, row -> the Record kept whole).
    """

    n: int
    codes: dict[str, np.ndarray]
    values: dict[str, list[Any]]
    ints: dict[str, np.ndarray]
    box: np.ndarray
    phrases: bytes
    phrase_end: np.ndarray
    token_ids: np.ndarray
    token_end: np.ndarray
    token_table: list[str]
    extra: dict[int, dict[str, Any]]
    kept: dict[int, Record]

    def records(self, start: int, stop: int) -> list[Record]:
        """Rows start..stop-1 as Records, built from the columns."""
        ids, paths, splits, refs = (map(self.values[k].__getitem__, self.codes[k][start:stop].tolist())
                                    for k in CATEGORICAL)
        widths, heights, sent_ids = (self.ints[k][start:stop].tolist() for k in INTEGER)
        phrases, tokens = self._phrases(start, stop), self._tokens(start, stop, self.token_table)
        extras = ([self.extra.get(k) or {} for k in range(start, stop)] if self.extra
                  else ({} for _ in range(start, stop)))
        out = [Record(i, p, w, h, b, ph, tuple(tk), sp, r, sid, e)
               for i, p, w, h, b, ph, tk, sp, r, sid, e in zip(
                   ids, paths, widths, heights, _box_tuples(self.box[start:stop]), phrases,
                   tokens, splits, refs, sent_ids, extras, strict=True)]
        for k in self._rows(self.kept, start, stop):
            out[k - start] = self.kept[k]
        return out

    def fields(self, names: Sequence[str], start: int, stop: int) -> Iterator[tuple[Any, ...]]:
        """Rows start..stop-1 as tuples of the fields `names`: what their Records would hold."""
        cols: list[Iterable[Any]] = []
        for name in names:
            if name in CATEGORICAL:
                cols.append(map(self.values[name].__getitem__,
                                self.codes[name][start:stop].tolist()))
            elif name in INTEGER:
                cols.append(self.ints[name][start:stop].tolist())
            elif name == "box":
                cols.append(_box_tuples(self.box[start:stop]))
            elif name == "phrase":
                cols.append(self._phrases(start, stop))
            elif name == "tokens":
                cols.append(map(tuple, self._tokens(start, stop, self.token_table)))
            elif name == "extra":
                cols.append([self.extra.get(k) or {} for k in range(start, stop)])
            else:
                raise VgkitError(f"no field {name!r}; fields: {', '.join(_FIELD_NAMES)}")
        rows: Iterator[tuple[Any, ...]] = (
            zip(*cols, strict=True) if cols else (() for _ in range(start, stop)))
        kept = self._rows(self.kept, start, stop)
        if not kept:
            return rows
        return (tuple(getattr(self.kept[start + k], name) for name in names)
                if start + k in self.kept else row for k, row in enumerate(rows))

    def lines(self, start: int, stop: int, enc: dict[str, list[str]]) -> str:
        """The records.jsonl text of rows start..stop-1: each line what ``Record.to_line`` writes.

        Written from the columns with every distinct string JSON-encoded once; a row with
        ``extra``, a non-finite box number, or kept whole goes through ``Record.to_line``.
        `enc` is :meth:`encoded`.
        """
        if start >= stop:
            return ""
        ids, paths, splits, refs = (map(enc[k].__getitem__, self.codes[k][start:stop].tolist())
                                    for k in CATEGORICAL)
        widths, heights, sent_ids = (self.ints[k][start:stop].tolist() for k in INTEGER)
        box = self.box[start:stop]
        phrases = map(_json_str, self._phrases(start, stop))
        tokens = map(", ".join, self._tokens(start, stop, enc["tokens"]))
        out = [f'{{"box": [{b[0]!r}, {b[1]!r}, {b[2]!r}, {b[3]!r}], "height": {h}, '
               f'"image_id": {i}, "image_path": {p}, "phrase": {ph}, "ref_id": {r}, '
               f'"sent_id": {sid}, "split": {sp}, "tokens": [{tk}], "width": {w}}}'
               for b, h, i, p, ph, r, sid, sp, tk, w in zip(
                   _box_tuples(box), heights, ids, paths, phrases, refs, sent_ids, splits, tokens,
                   widths, strict=True)]
        slow = set((np.flatnonzero(~np.isfinite(box).all(axis=1)) + start).tolist())
        slow.update(self._rows(self.extra, start, stop), self._rows(self.kept, start, stop))
        if len(slow) > 64:  # building the chunk's Records at once is cheaper
            recs = self.records(start, stop)
            for k in slow:
                out[k - start] = recs[k - start].to_line()
        else:
            for k in slow:
                out[k - start] = self.records(k, k + 1)[0].to_line()
        out.append("")
        return "\n".join(out)

    def _phrases(self, start: int, stop: int) -> list[str]:
        pe, buf = self.phrase_end[start:stop + 1].tolist(), self.phrases
        return [buf[a:b].decode("utf-8", "surrogatepass") for a, b in itertools.pairwise(pe)]

    def _tokens(self, start: int, stop: int, table: list[str]) -> Iterator[list[str]]:
        """Each row's tokens (as `table` holds them: the strings, or their JSON literals).

        An iterator: each row's list is gone once used (lists that survive a while make
        the cyclic gc run, and so do the tuples of _box_tuples)."""
        te = self.token_end[start:stop + 1].tolist()
        flat = [table[c] for c in self.token_ids[te[0]:te[-1]].tolist()]
        t0 = te[0]
        return (flat[a - t0:b - t0] for a, b in itertools.pairwise(te))

    @staticmethod
    def _rows(sparse: dict[int, Any], start: int, stop: int) -> list[int]:
        """The rows of `sparse` within start..stop-1."""
        if not sparse:
            return []
        if len(sparse) < stop - start:
            return [k for k in sparse if start <= k < stop]
        return [k for k in range(start, stop) if k in sparse]

    def encoded(self) -> dict[str, list[str]]:
        """Every distinct string of the categorical fields and tokens as a JSON literal."""
        out = {k: [_json_str(v) if type(v) is str else "" for v in self.values[k]]
               for k in CATEGORICAL}
        out["tokens"] = [_json_str(t) for t in self.token_table]
        return out

    def take(self, rows: np.ndarray) -> _Columns:
        """The rows at positions `rows` (ascending), as columns of their own."""
        phrases, phrase_end = _gather(np.frombuffer(self.phrases, dtype=np.uint8),
                                      self.phrase_end, rows)
        token_ids, token_end = _gather(self.token_ids, self.token_end, rows)
        return _Columns(
            n=len(rows), codes={k: _frozen(c[rows]) for k, c in self.codes.items()},
            values=self.values, ints={k: _frozen(v[rows]) for k, v in self.ints.items()},
            box=_frozen(self.box[rows]), phrases=phrases.tobytes(), phrase_end=phrase_end,
            token_ids=token_ids, token_end=token_end, token_table=self.token_table,
            extra=_sparse_take(self.extra, rows), kept=_sparse_take(self.kept, rows))


def _sparse_take(sparse: dict[int, _T], rows: np.ndarray) -> dict[int, _T]:
    """The entries of `sparse` (row -> value) at `rows` (ascending), keyed by new position."""
    if not sparse:
        return {}
    keys = np.fromiter(sparse, dtype=np.int64, count=len(sparse))
    pos = np.searchsorted(rows, keys)
    hit = pos < len(rows)
    hit[hit] = rows[pos[hit]] == keys[hit]
    return {p: sparse[k] for k, p in zip(keys[hit].tolist(), pos[hit].tolist(), strict=True)}


def _box_tuples(box: np.ndarray) -> Iterator[tuple[float, ...]]:
    """The rows of a float64 [n, 4] array as tuples of 4 Python floats, one at a time."""
    return zip(*box.T.tolist(), strict=True)


def _gather(flat: np.ndarray, end: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ragged rows `rows` of (flat, end): their values packed, and their new ends."""
    starts, lengths = end[rows], end[rows + 1] - end[rows]
    new_end = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_end[1:])
    pick = np.arange(new_end[-1], dtype=np.int64) + np.repeat(starts - new_end[:-1], lengths)
    return _frozen(flat[pick]), _frozen(new_end)


class _Records(Sequence[Record]):
    """``index.records``: a read-only sequence of :class:`Record`, each built when asked for."""

    def __init__(self, cols: _Columns) -> None:
        self._cols = cols

    def __len__(self) -> int:
        return self._cols.n

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...

    def __getitem__(self, i: int | slice) -> Record | list[Record]:
        n = self._cols.n
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step == 1:
                return self._cols.records(start, max(start, stop))
            return [self[k] for k in range(start, stop, step)]
        k = operator.index(i)
        if not -n <= k < n:
            raise IndexError(f"record index {i} out of range for {n} records")
        k %= n
        return self._cols.records(k, k + 1)[0]

    def __iter__(self) -> Iterator[Record]:
        for start in range(0, self._cols.n, _CHUNK):
            yield from self._cols.records(start, min(start + _CHUNK, self._cols.n))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, _Records)):
            return len(self) == len(other) and all(map(operator.eq, self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self._cols.n:,} records>"


class DatasetIndex:
    """An ordered collection of :class:`Record` with a manifest, held as columns.

    ``records`` is a read-only sequence whose Records are built when read; use
    :meth:`column` for one field of every record.
    """

    def __init__(self, records: Iterable[Record], *, name: str, source: str = "",
                 meta: dict[str, Any] | None = None) -> None:
        b, it = _Builder(), iter(records)
        while chunk := list(itertools.islice(it, _CHUNK)):
            b.add_records(chunk)
        self._init(b.finish(), name, source, meta)

    def _init(self, cols: _Columns, name: str, source: str, meta: dict[str, Any] | None) -> None:
        self._cols = cols
        self.name, self.source = name, source
        self.meta = dict(meta or {})

    @classmethod
    def _of(cls, cols: _Columns, name: str, source: str,
            meta: dict[str, Any] | None) -> DatasetIndex:
        index = cls.__new__(cls)
        index._init(cols, name, source, meta)
        return index

    @property
    def records(self) -> _Records:
        """The records, in order: a read-only sequence (len, indexes, slices, iteration)."""
        return _Records(self._cols)

    def __len__(self) -> int:
        return self._cols.n

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def column(self, name: str) -> Any:
        """One field of every record, without building Records.

        ``image_id``, ``image_path``, ``split``, ``ref_id``, ``phrase``: a list of str;
        ``tokens``: a list of tuples; ``width``, ``height``, ``sent_id``: a read-only int
        array; ``box``: a read-only float64 array [n, 4]. A record kept whole whose value
        the array cannot hold (a box of None, a size that is not an int) is an error.
        """
        c = self._cols
        if name in CATEGORICAL:
            return list(map(c.values[name].__getitem__, c.codes[name].tolist()))
        if name in ("phrase", "tokens"):  # decoded from the columns, no Record built
            return [v for (v,) in self.values(name)]
        if name not in INTEGER and name != "box":
            raise VgkitError(f"no column {name!r}; columns: "
                             f"{', '.join(n for n in _FIELD_NAMES if n != 'extra')}")
        col = c.ints[name] if name in INTEGER else c.box
        for k, r in c.kept.items():
            v = getattr(r, name)
            if not _same_numbers(v if name == "box" else (v,), col[k].tolist()
                                 if name == "box" else [col[k].item()]):
                raise VgkitError(f"dataset {self.name!r}: record {k} has {name} {v!r}, which "
                                 f"a {col.dtype} column cannot hold; read index.records")
        return col

    def values(self, *names: str) -> Iterator[tuple[Any, ...]]:
        """For each record in order, the tuple of its fields `names`, without building Records.

        ``for path, box in index.values("image_path", "box")``: the values are those of
        the Records (tuples for box and tokens), a kept record's included.
        """
        c = self._cols
        for start in range(0, c.n, _CHUNK):
            yield from c.fields(names, start, min(start + _CHUNK, c.n))

    def splits(self) -> dict[str, int]:
        """Number of records per split."""
        c = self._cols
        counts = np.bincount(c.codes["split"], minlength=len(c.values["split"])).tolist()
        totals: Counter[Any] = Counter()
        for v, n in zip(c.values["split"], counts, strict=True):
            if n:
                totals[v] += n
        return dict(sorted(totals.items()))

    def split_rows(self, name: str) -> np.ndarray:
        """The positions of split `name`'s records, ascending (an error when it has none)."""
        c = self._cols
        wanted = [k for k, v in enumerate(c.values["split"]) if v == name]
        rows = np.flatnonzero(np.isin(c.codes["split"], wanted)) if wanted else np.zeros(0, int)
        if not len(rows):
            raise VgkitError(f"dataset {self.name!r} has no split {name!r}; splits: "
                             f"{', '.join(self.splits()) or '(empty)'}")
        return rows

    def split(self, name: str) -> DatasetIndex:
        """The records of one split (an error listing the splits when it has none)."""
        return DatasetIndex._of(self._cols.take(self.split_rows(name)), self.name, self.source,
                                self.meta)

    def _lines(self) -> Iterator[str]:
        """The records.jsonl text, a chunk of lines at a time."""
        enc = self._cols.encoded()
        for start in range(0, self._cols.n, _CHUNK):
            yield self._cols.lines(start, min(start + _CHUNK, self._cols.n), enc)

    def digest(self) -> str:
        """A sha256 over the records' content (order included): identifies the data."""
        h = hashlib.sha256()
        for chunk in self._lines():
            h.update(chunk.encode())
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
                for chunk in self._lines():
                    h.update(chunk.encode())
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        _atomic_write(d / "manifest.json", json.dumps(self.manifest(h.hexdigest()), indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DatasetIndex:
        """Read an index written by :meth:`save` or by hand; malformed lines and unsafe paths fail.

        Each line goes straight into the columns: no Record is built.
        """
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
        b, safe = _Builder(), dict[str, str]()
        try:
            with rpath.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        _add_line(b, line, rpath, n, safe)
        except UnicodeDecodeError as e:
            raise VgkitError(f"{rpath}: not UTF-8 text ({e.reason})") from None
        return cls._of(b.finish(), manifest["name"], manifest.get("source", ""),
                       manifest.get("meta", {}))


def _add_line(b: _Builder, line: str, rpath: Path, n: int, safe: dict[str, str]) -> None:
    """One records.jsonl line into `b`: a one-line error naming file and line if malformed.

    `safe` caches :func:`safe_relpath` by image path (a pure function; paths repeat).
    """
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise VgkitError(f"{rpath}: line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not _well_formed(d):
        _explain(d, f"{rpath}: line {n}")
    # hand-made indexes may leave tokenizing to vgkit
    tokens = d["tokens"] if "tokens" in d else tokenize(d["phrase"])
    raw = d["image_path"]
    path = safe.get(raw)
    if path is None:
        path = safe[raw] = safe_relpath(raw, f"{rpath}: line {n}")
    box = tuple(map(float, d["box"]))
    w, h, sent_id = d["width"], d["height"], d.get("sent_id", 0)
    if (_INT64_MIN <= w <= _INT64_MAX and _INT64_MIN <= h <= _INT64_MAX
            and _INT64_MIN <= sent_id <= _INT64_MAX):
        b.add(d["image_id"], path, w, h, box, d["phrase"], tokens, d["split"],
              d.get("ref_id", ""), sent_id, d.get("extra") or {})
    else:  # an int beyond int64: the record is kept whole
        d["image_path"], d["tokens"] = path, tokens
        b.keep(Record.from_json(d))


def _same_numbers(a: Any, b: list[Any]) -> bool:
    """Whether `a` holds exactly the numbers `b` (NaN matching NaN), as numbers, not bools."""
    try:
        return len(a) == len(b) and all(
            type(x) in _NUMBER and (x == y or (x != x and y != y)) for x, y in zip(a, b, strict=True))
    except TypeError:
        return False


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
# the columns: categorical (int32 codes into a table of distinct values), integer, and the
# rest (box, phrase, tokens, extra) held as described by _Columns
CATEGORICAL = ("image_id", "image_path", "split", "ref_id")
INTEGER = ("width", "height", "sent_id")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CHUNK = 10_000  # rows built (as Records or as lines) at a time


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
