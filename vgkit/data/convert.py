"""Write a loaded index in another form: one-stage ``pth``, ``refer`` or COCO-style json.

``pth`` (the files TransVG-style code reads): ``<out>/<name>/<name>_<split>.pth``, a list
written with ``torch.save`` of plain tuples, readable with ``torch.load(weights_only=True)``.
Like those readers, the item layout follows the name: ``flickr`` items are
``(image_file, [x1, y1, x2, y2], phrase)``, ``referit`` items
``(image_file, "<region>.mat", [x1, y1, x2 - 1, y2 - 1], phrase, [])`` (inclusive boxes),
every other name the COCO-based ``(image_file, "<region>.pth", [x, y, w, h], phrase, [])``.

``refer``: ``<out>/<name>/refs(<split_by>).p`` (a protocol-2 pickle of builtins only, as
the restricted unpickler reads) + ``<out>/<name>/instances.json``.

``coco``: ``<out>/finetune_<name>_<split>.json`` as MDETR's ``refexp_coco_format.py``
writes them: an ``images`` entry per expression (``caption``, ``original_id``) and its
``annotations`` entry (``bbox`` [x, y, w, h], ``original_id`` the region).

Image files are named relative to one image folder (the index's ``image_dir``, else the
folder all its images share). What a form cannot hold is said in the returned notes.
"""

from __future__ import annotations

import json
import os
import pickle
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgkit.data.index import DatasetIndex, Record
from vgkit.data.prepare import LOADERS
from vgkit.data.refcoco import DATASETS
from vgkit.data.validate import check_index, safe_relpath
from vgkit.errors import UnknownNameError, VgkitError
from vgkit.fsutil import atomic_write_text, folder_lock, replacing

__all__ = ["TARGETS", "Converted", "convert_index", "convert_source"]

TARGETS = ("pth", "refer", "coco")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+.-]*$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,17})$")


@dataclass
class Converted:
    """What :func:`convert_index` wrote: the files, expressions per split, and notes."""

    files: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def convert_index(index: DatasetIndex, to: str, out: str | os.PathLike[str], *,
                  name: str | None = None, split_by: str | None = None,
                  image_dir: str | None = None, force: bool = False) -> Converted:
    """Write `index` in form `to` (pth, refer, coco) under `out`; existing files need `force`."""
    if to not in TARGETS:
        raise UnknownNameError("conversion target", to, TARGETS)
    done = Converted()
    name = _name(name or _default_name(index, to, split_by))
    # TransVG reads referit_trainval.pth as a file of its own; the other sets' trainval
    # it joins from train and val, as the refer and MDETR readers do.
    records = _records(index, done.notes, keep_trainval=to == "pth" and name == "referit")
    folder = _image_folder(records, image_dir, index.meta)
    files = [_image_file(r, folder, i) for i, r in enumerate(records)]
    flickr = to == "pth" and name == "flickr"  # its items name no region
    regions = _regions(records, done.notes, flickr)
    _renumbered(records, [r.image_id for r in records] if flickr else regions, done.notes)
    out_dir = Path(out)
    if to == "pth":
        writes = _pth_writes(records, files, regions, name, out_dir, done.notes)
    elif to == "refer":
        writes = _refer_writes(records, files, regions, name,
                               split_by or _default_split_by(index) or "unc", out_dir, done.notes)
    else:
        writes = _coco_writes(records, files, regions, name, out_dir, done.notes)
    _refuse_existing([p for p, _ in writes], force)
    with folder_lock(out_dir, "vgkit data convert"):
        for path, write in writes:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
            done.files.append(path)
    done.counts = dict(Counter(r.split for r in records))
    done.notes.insert(0, f"image files named relative to {folder or 'the dataset root'!r}")
    return done


def convert_source(source: str | os.PathLike[str], to: str, out: str | os.PathLike[str], *,
                   dataset: str | None = None, format: str = "auto",
                   split_by: str | None = None, splits: Sequence[str] | None = None,
                   image_dir: str | None = None, name: str | None = None,
                   force: bool = False) -> Converted:
    """Load `source` (an index directory, or with `dataset` a raw root) and convert it."""
    src = Path(source)
    if dataset is None:
        index = DatasetIndex.load(src)
        if splits:
            index = DatasetIndex([r for s in splits for r in index.split(s).records],
                                 name=index.name, source=index.source, meta=index.meta)
        return convert_index(index, to, out, name=name, split_by=split_by,
                             image_dir=image_dir, force=force)
    if dataset not in LOADERS:
        raise UnknownNameError("dataset", dataset, LOADERS)
    if not src.is_dir():
        raise VgkitError(f"{dataset} root {src} is not a directory")
    index = LOADERS[dataset](src, format, list(splits) if splits else None, False, split_by,
                             image_dir)
    done = convert_index(index, to, out, name=name, split_by=split_by, force=force)
    read = index.meta.get("problems", {}).get("counts", {})
    if read:
        done.notes.append(f"skipped or clipped while reading {index.source} form: "
                          + ", ".join(f"{k} {v:,}" for k, v in read.items()))
    return done


def _records(index: DatasetIndex, notes: list[str], keep_trainval: bool) -> list[Record]:
    """The valid records to write; trainval left out where train and val hold it."""
    check = check_index(index)
    if not check.ok:
        notes.append(f"left out {check.summary()}")
    records = list(check.valid(index).records)  # read several times below
    if not records:
        raise VgkitError(f"{index.name}: no valid expressions to write"
                         + (f" ({check.summary()})" if not check.ok else ""))
    splits = {r.split for r in records}
    if {"train", "val", "trainval"} <= splits and not keep_trainval:
        n = sum(r.split == "trainval" for r in records)
        records = [r for r in records if r.split != "trainval"]
        notes.append(f"trainval ({n:,} expressions) not written: it is train + val, which "
                     "the readers join")
    if any(r.extra for r in records):
        notes.append(f"extra fields of {sum(bool(r.extra) for r in records):,} records not "
                     "written (no form holds them)")
    return records


def _image_folder(records: Sequence[Record], image_dir: str | None,
                  meta: dict[str, Any]) -> str:
    if image_dir is not None:
        return "" if image_dir in ("", ".") else safe_relpath(image_dir, "image_dir option")
    given = meta.get("image_dir")
    if isinstance(given, str) and all(r.image_path.startswith(given + "/") for r in records):
        return given
    dirs = {posixpath.dirname(r.image_path) for r in records}
    return posixpath.commonpath(list(dirs)) if dirs else ""


def _image_file(r: Record, folder: str, i: int) -> str:
    if not folder:
        return r.image_path
    if not r.image_path.startswith(folder + "/"):
        raise VgkitError(f"record {i} ({r.split}, image {r.image_id}): image {r.image_path!r} "
                         f"is not under the image folder {folder!r}; choose another --image-dir")
    return r.image_path[len(folder) + 1:]


def _regions(records: Sequence[Record], notes: list[str], flickr: bool) -> list[str]:
    """Each record's region id: its ref_id, else ``<image>_<n>`` per image and box."""
    made: dict[tuple[str, tuple[float, ...]], str] = {}
    per_image: Counter[str] = Counter()
    out = []
    for r in records:
        if r.ref_id:
            out.append(r.ref_id)
            continue
        k = (r.image_id, r.box)
        if k not in made:
            per_image[r.image_id] += 1
            made[k] = f"{r.image_id}_{per_image[r.image_id]}"
        out.append(made[k])
    if made and not flickr:
        notes.append(f"{sum(not r.ref_id for r in records):,} expressions have no ref_id: "
                     f"{len(made):,} region ids <image>_<n> made, one per image and box")
    if flickr and any(r.ref_id for r in records):
        notes.append("the flickr layout holds no ref_id: readers count sentences per image")
    return out


def _default_name(index: DatasetIndex, to: str, split_by: str | None) -> str:
    spec = DATASETS.get(index.name)
    if to == "pth" and spec is not None:
        sb = split_by or _default_split_by(index)
        if sb in spec.pth:
            return spec.pth[sb]
    return index.name


def _default_split_by(index: DatasetIndex) -> str:
    sb = index.meta.get("split_by")
    if isinstance(sb, str) and sb:
        return sb
    spec = DATASETS.get(index.name)
    return spec.split_bys[0] if spec is not None else "unc"


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise VgkitError(f"name {name!r} cannot name the files: use letters, digits, _ + . -")
    return name


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise VgkitError(f"{existing[0]} exists{more}; pass --force to overwrite it or choose "
                         "another --out")


def _renumbered(records: Sequence[Record], regions: Sequence[str], notes: list[str]) -> None:
    """Note the sentence ids that read back otherwise: readers count a region's sentences."""
    seen: Counter[tuple[str, str]] = Counter()
    moved = 0
    for r, g in zip(records, regions, strict=True):
        moved += r.sent_id != seen[r.split, g]
        seen[r.split, g] += 1
    if moved:
        notes.append(f"{moved:,} sent_ids read back as the sentence's position in its region")


_Write = tuple[Path, Any]


def _by_split(records: Sequence[Record]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        out[r.split].append(i)
    return out


def _xywh(box: Sequence[float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _pth_item(layout: str, r: Record, file: str, region: str) -> tuple[Any, ...]:
    x1, y1, x2, y2 = r.box
    if layout == "flickr":
        return (file, [x1, y1, x2, y2], r.phrase)
    if layout == "referit":
        return (file, f"{region}.mat", [x1, y1, x2 - 1, y2 - 1], r.phrase, [])
    return (file, f"{region}.pth", _xywh(r.box), r.phrase, [])


def _pth_writes(records: Sequence[Record], files: Sequence[str], regions: Sequence[str],
                name: str, out: Path, notes: list[str]) -> list[_Write]:
    layout = name if name in ("flickr", "referit") else "coco"
    notes.append(f"{layout} layout: "
                 + {"flickr": "(image_file, [x1, y1, x2, y2], phrase)",
                    "referit": "(image_file, region.mat, inclusive [x1, y1, x2 - 1, y2 - 1], "
                               "phrase, [])",
                    "coco": "(image_file, region.pth, [x, y, w, h], phrase, [])"}[layout]
                 + "; the files hold no image sizes: readers take them from the images")
    writes = []
    for split, idx in _by_split(records).items():
        items = [_pth_item(layout, records[i], files[i], regions[i]) for i in idx]
        writes.append((out / name / f"{name}_{split}.pth", _torch_writer(items)))
    return writes


def _torch_writer(items: list[tuple[Any, ...]]) -> Any:
    def write(path: Path) -> None:
        import torch

        with replacing(path) as tmp:
            torch.save(items, tmp)
            os.replace(tmp, path)
    return write


def _bytes_writer(data: bytes) -> Any:
    def write(path: Path) -> None:
        with replacing(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    return write


def _text_writer(obj: Any) -> Any:
    return lambda path: atomic_write_text(path, json.dumps(obj, ensure_ascii=False))


class _Ids:
    """Integer ids for the refer and COCO forms: a decimal id kept, others made unique."""

    def __init__(self, keys: Iterable[tuple[Any, str]]) -> None:
        self.ids: dict[Any, int] = {}
        taken: set[int] = set()
        wanted = list(dict.fromkeys(keys))
        for k, given in wanted:  # decimal ids first, so a made one never takes theirs
            if _DECIMAL.match(given) and int(given) not in taken:
                self.ids[k] = int(given)
                taken.add(int(given))
        nxt = max(taken, default=0) + 1
        self.made = 0
        for k, _ in wanted:
            if k not in self.ids:
                self.ids[k], nxt, self.made = nxt, nxt + 1, self.made + 1

    def __getitem__(self, k: Any) -> int:
        return self.ids[k]


def _refer_writes(records: Sequence[Record], files: Sequence[str], regions: Sequence[str],
                  name: str, split_by: str, out: Path, notes: list[str]) -> list[_Write]:
    images = _Ids((r.image_path, r.image_id) for r in records)
    anns = _Ids(((g, r.image_path, r.box), g) for r, g in zip(records, regions, strict=True))
    refs: dict[tuple[str, Any], dict[str, Any]] = {}
    for k, (r, g, f) in enumerate(zip(records, regions, files, strict=True)):
        ann = anns[(g, r.image_path, r.box)]
        ref = refs.setdefault((r.split, ann), {
            "ref_id": len(refs), "ann_id": ann, "image_id": images[r.image_path],
            "split": r.split, "file_name": _ref_file_name(name, f, g, ann), "category_id": 1,
            "sent_ids": [], "sentences": []})
        ref["sent_ids"].append(k)
        ref["sentences"].append({"tokens": list(r.tokens), "raw": r.phrase, "sent": r.phrase,
                                 "sent_id": k})
    inst = _instances(records, files, images, anns, regions)
    if images.made or anns.made:
        notes.append(f"refer ids are integers: {images.made:,} image ids and {anns.made:,} "
                     "annotation ids made (the originals are not decimal or repeat)")
    _note_sizes(records, notes)
    notes.append("category 1 'object' for every annotation; no segmentation")
    d = out / name
    return [(d / f"refs({split_by}).p", _bytes_writer(pickle.dumps(list(refs.values()),
                                                                   protocol=2))),
            (d / "instances.json", _text_writer(inst))]


def _ref_file_name(name: str, file: str, region: str, ann: int) -> str:
    # refer names a ref's crop: the image's name plus the annotation id (refclef: the crop id)
    if name == "refclef" and re.match(r"^\d+_\d+$", region):
        return f"{region}.jpg"
    return f"{posixpath.splitext(file)[0]}_{ann}.jpg"


def _instances(records: Sequence[Record], files: Sequence[str], images: _Ids, anns: _Ids,
               regions: Sequence[str]) -> dict[str, Any]:
    ims: dict[int, dict[str, Any]] = {}
    ann_rows: dict[int, dict[str, Any]] = {}
    for r, f, g in zip(records, files, regions, strict=True):
        i = images[r.image_path]
        ims.setdefault(i, {"id": i, "file_name": f, "width": r.width, "height": r.height})
        a = anns[(g, r.image_path, r.box)]
        x, y, w, h = _xywh(r.box)
        ann_rows.setdefault(a, {"id": a, "image_id": i, "bbox": [x, y, w, h], "area": w * h,
                                "category_id": 1, "iscrowd": 0, "segmentation": []})
    return {"images": list(ims.values()), "annotations": list(ann_rows.values()),
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}


def _note_sizes(records: Sequence[Record], notes: list[str]) -> None:
    n = len({r.image_path for r in records if not (r.width > 0 and r.height > 0)})
    if n:
        notes.append(f"{n:,} images have no size in the index: written as 0")


def _coco_writes(records: Sequence[Record], files: Sequence[str], regions: Sequence[str],
                 name: str, out: Path, notes: list[str]) -> list[_Write]:
    writes, entry = [], 0
    for split, idx in _by_split(records).items():
        images, annotations = [], []
        for i in idx:
            r = records[i]
            images.append({"file_name": files[i], "height": r.height, "width": r.width,
                           "id": entry, "original_id": _json_id(r.image_id),
                           "caption": r.phrase, "dataset_name": name, "tokens_negative": []})
            x, y, w, h = _xywh(r.box)
            annotations.append({"area": w * h, "iscrowd": 0, "image_id": entry,
                                "category_id": 1, "id": entry, "bbox": [x, y, w, h],
                                "original_id": _json_id(regions[i]),
                                "tokens_positive": [[0, len(r.phrase)]]})
            entry += 1
        data = {"info": {}, "licenses": [], "images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}
        writes.append((out / f"finetune_{name}_{split}.json", _text_writer(data)))
    _note_sizes(records, notes)
    notes.append("tokens_positive spans the whole caption (MDETR's own files mark the root "
                 "noun phrase, found with spaCy)")
    return writes


def _json_id(v: str) -> int | str:
    return int(v) if _DECIMAL.match(v) else v
