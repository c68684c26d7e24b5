"""The one normalized index every dataset produces: one record per expression.

Boxes are stored as ``[x1, y1, x2, y2]`` in *continuous* original-image pixel
coordinates: a box covering pixel columns 10..19 inclusive is ``x1=10, x2=20``,
so ``w = x2 - x1``. Hu et al.'s inclusive boxes convert as ``x2 = x_max + 1``.

On disk an index is a directory with ``manifest.json`` (name, source, box
convention, counts per split, digest) and ``records.jsonl`` (one JSON object a
line, the fields of :class:`Record`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgkit.errors import VgkitError
from vgkit.fsutil import replacing

BOX_CONVENTION = "xyxy-continuous-pixels"
INDEX_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One referring expression: an image, a phrase and the box it refers to."""

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
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["box"], d["tokens"] = list(self.box), list(self.tokens)
        if not d["extra"]:
            del d["extra"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        """Build a record from :meth:`to_json` output."""
        d = dict(d)
        d["box"] = tuple(float(v) for v in d["box"])
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
            h.update((json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n").encode())
        return h.hexdigest()

    def manifest(self, digest: str | None = None) -> dict[str, Any]:
        """The manifest written beside the records."""
        return {"version": INDEX_VERSION, "name": self.name, "source": self.source,
                "box_convention": BOX_CONVENTION, "count": len(self), "splits": self.splits(),
                "digest": digest or self.digest(), "meta": self.meta}

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``manifest.json`` and ``records.jsonl`` atomically into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) for r in self.records]
        digest = hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()
        _atomic_write(d / "records.jsonl", "".join(line + "\n" for line in lines))
        _atomic_write(d / "manifest.json", json.dumps(self.manifest(digest), indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DatasetIndex:
        """Read an index written by :meth:`save`."""
        d = Path(directory)
        mpath, rpath = d / "manifest.json", d / "records.jsonl"
        if not mpath.is_file() or not rpath.is_file():
            raise VgkitError(f"{d}: not a vgkit index (needs manifest.json and records.jsonl)")
        manifest = json.loads(mpath.read_text())
        if manifest.get("box_convention") != BOX_CONVENTION:
            raise VgkitError(f"{mpath}: box convention {manifest.get('box_convention')!r}, "
                             f"expected {BOX_CONVENTION!r}")
        with rpath.open(encoding="utf-8") as f:
            records = [Record.from_json(json.loads(line)) for line in f if line.strip()]
        return cls(records, name=manifest["name"], source=manifest.get("source", ""),
                   meta=manifest.get("meta", {}))


def _atomic_write(path: Path, text: str) -> None:
    with replacing(path) as tmp:  # a failed write leaves no temporary and the old file
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
