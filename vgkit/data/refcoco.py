"""RefCOCO, RefCOCO+, RefCOCOg and RefCLEF (``refer``, one-stage ``pth`` and json forms), Flickr30k.

``refer`` (lichengunc/refer): ``<ds>/refs(<split_by>).p`` (a Python 2 pickle, read
with :mod:`vgkit.data.safe_pickle`) + ``<ds>/instances.json`` (COCO style). A ref's
``file_name`` carries an annotation-id suffix and is not a file: the image is
``instances.json``'s ``file_name`` for the ref's ``image_id``, under
``images/mscoco/images/train2014`` (RefCLEF: ``images/saiapr_tc-12``). One record
per sentence, its ``sent`` text; box the annotation's COCO ``[x, y, w, h]`` read
as continuous, ``(x, y, x + w, y + h)``. ``ref_id`` is the annotation id (RefCLEF:
the crop id ``<image>_<n>`` of the ref's ``file_name`` when it has one), ``sent_id``
the sentence's position in the ref.

``pth`` (one-stage grounding, ReSC, TransVG, CLIP-VG): ``data/<name>/<name>_<split>.pth``
with ``name`` ``unc`` (refcoco), ``unc+`` (refcoco+), ``gref`` / ``gref_umd``
(refcocog google / umd) and ``flickr``. COCO-based items are
``(image_file, "<ann_id>.pth", [x, y, w, h] floats, sent, ...)``: the same box and
text as the refer form; Flickr30k's are ``(image_file, [x1, y1, x2, y2], phrase)``,
the box taken as continuous xyxy as given. Images: the file name under
``images/mscoco/images/train2014`` (COCO) or ``Flickr30k/flickr30k_images``
(``image_dir`` overrides). The files hold no image sizes: they come from the image
header, else 0. ``sent_id`` counts an ann's (Flickr: an image's) items in the file.

The json forms of SimREC, SeqTR and MDETR are read by :mod:`vgkit.data.json_forms`.

``trainval`` is train followed by val where no file or split holds it. Sentences
that repeat another of the same ref (Flickr: image and box) in a split are kept,
counted and named in ``meta["notes"]``; other problems as in
:mod:`vgkit.data.annotations` (``meta["problems"]``). Every image path a file
supplies goes through :func:`vgkit.data.validate.safe_relpath`, naming file and record.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from vgkit.data.annotations import (
    HeaderSizes,
    Problems,
    default_splits,
    field,
    load_pth_file,
    make_record,
    plan_splits,
    read_json,
    stem,
    xywh_to_xyxy,
)
from vgkit.data.index import DatasetIndex, Record
from vgkit.data.json_forms import JSON_FORMATS, find_json_form, json_looked_for, load_json_form
from vgkit.data.safe_pickle import safe_load
from vgkit.data.validate import safe_relpath
from vgkit.errors import UnknownNameError, VgkitError

__all__ = ["CLEF_IMAGES", "COCO_IMAGES", "DATASETS", "FLICKR_IMAGES", "FORMATS", "PUBLISHED",
           "detect_format", "load_flickr30k", "load_refcoco"]

FORMATS = ("refer", "pth", *JSON_FORMATS)  # also the order "auto" tries them in
COCO_IMAGES = "images/mscoco/images/train2014"
CLEF_IMAGES = "images/saiapr_tc-12"
FLICKR_IMAGES = "Flickr30k/flickr30k_images"
_CROP_ID = re.compile(r"^\d+_\d+$")
_TRAILING_ID = re.compile(r"(\d+)$")


class _Spec(NamedTuple):
    split_bys: tuple[str, ...]  # the first is the default
    pth: dict[str, str]  # split_by -> one-stage file name
    images: str  # default image folder, relative to the root


DATASETS: dict[str, _Spec] = {
    "refcoco": _Spec(("unc", "google"), {"unc": "unc"}, COCO_IMAGES),
    "refcoco+": _Spec(("unc",), {"unc": "unc+"}, COCO_IMAGES),
    "refcocog": _Spec(("umd", "google"), {"umd": "gref_umd", "google": "gref"}, COCO_IMAGES),
    # ReferIt's one-stage files (referit_<split>.pth, inclusive boxes) are the `referit` dataset.
    "refclef": _Spec(("unc", "berkeley"), {}, CLEF_IMAGES),
    "flickr30k": _Spec(("",), {"": "flickr"}, FLICKR_IMAGES),
}

# Expressions per split as published (docs/data.md gives the sources); the refer and
# pth forms of the COCO sets hold the same expressions.
PUBLISHED: dict[tuple[str, str], dict[str, int]] = {
    ("refcoco", "unc"): {"train": 120_624, "val": 10_834, "testA": 5_657, "testB": 5_095},
    ("refcoco+", "unc"): {"train": 120_191, "val": 10_758, "testA": 5_726, "testB": 4_889},
    ("refcocog", "umd"): {"train": 80_512, "val": 4_896, "test": 9_602},
    ("refcocog", "google"): {"train": 85_474, "val": 9_536},
    ("flickr30k", ""): {"train": 427_193, "val": 14_433, "test": 14_481},
}


def _spec(dataset: str, split_by: str | None) -> tuple[_Spec, str]:
    if dataset not in DATASETS:
        raise UnknownNameError("dataset", dataset, DATASETS)
    spec = DATASETS[dataset]
    sb = spec.split_bys[0] if split_by is None else split_by
    if sb not in spec.split_bys:
        raise VgkitError(f"{dataset} has no split_by {sb!r}; choose one of "
                         f"{', '.join(spec.split_bys)}")
    return spec, sb


def _bases(root: Path) -> list[Path]:
    return [root, root / "annotations", root / "data"]


def _refer_dir(root: Path, dataset: str, split_by: str) -> Path | None:
    return next((b / dataset for b in _bases(root)
                 if (b / dataset / f"refs({split_by}).p").is_file()
                 and (b / dataset / "instances.json").is_file()), None)


def _pth_dir(root: Path, name: str) -> Path | None:
    dirs = [d for b in _bases(root) for d in (b / name, b)]
    return next((d for d in dirs if _pth_splits(d, name)), None)


def _pth_splits(d: Path, name: str) -> list[str]:
    # "gref_umd_train.pth" also matches "gref_*.pth": a split name has no underscore.
    splits = (f.stem[len(name) + 1:] for f in d.glob(f"{_glob_escape(name)}_*.pth"))
    return [s for s in splits if s and "_" not in s]


def _glob_escape(name: str) -> str:
    """`name` with glob's special characters quoted ("unc+" is fine, "[x]" is not)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def detect_format(root: str | os.PathLike[str], dataset: str = "refcoco",
                  split_by: str | None = None) -> str:
    """Which form `root` holds `dataset` in: the first of FORMATS whose files it has."""
    spec, sb = _spec(dataset, split_by)
    r = Path(root)
    if dataset != "flickr30k" and _refer_dir(r, dataset, sb):
        return "refer"
    if sb in spec.pth and _pth_dir(r, spec.pth[sb]):
        return "pth"
    json_form = find_json_form(r, dataset, sb)
    if json_form:
        return json_form
    looked = ([f"{dataset}/refs({sb}).p + {dataset}/instances.json"] if dataset != "flickr30k"
              else []) + ([f"{spec.pth[sb]}/{spec.pth[sb]}_<split>.pth"] if sb in spec.pth else [])
    looked += json_looked_for(dataset, sb).values()
    raise VgkitError(f"{r}: no {dataset} ({sb or 'pth'}) annotations found; looked in {r}, "
                     f"annotations/ and data/ for " + " or ".join(looked))


def _load_refer(root: Path, dataset: str, split_by: str, splits: Sequence[str] | None,
                p: Problems, images: str) -> tuple[list[Record], list[str]]:
    rdir = _refer_dir(root, dataset, split_by)
    if rdir is None:
        raise VgkitError(f"{root}: no refer-form {dataset} files ({dataset}/refs({split_by}).p "
                         f"+ {dataset}/instances.json in {root}, annotations/ or data/)")
    refs_name = f"refs({split_by}).p"
    refs = safe_load(rdir / refs_name, encoding="bytes")  # py2 str stay bytes, decoded as UTF-8
    inst = read_json(rdir / "instances.json")
    if not isinstance(refs, list) or not isinstance(inst, dict):
        raise VgkitError(f"{rdir}: {refs_name} must hold a list and instances.json an object")
    image_info = {str(im.get("id")): im for im in inst.get("images", []) if isinstance(im, dict)}
    anns = {str(a.get("id")): a for a in inst.get("annotations", []) if isinstance(a, dict)}
    by_split: dict[str, list[Any]] = defaultdict(list)
    for ref in refs:
        by_split[str(field(ref, "split"))].append(ref)
    where = f"{dataset}/{refs_name}"
    plan = plan_splits(splits or default_splits(list(by_split)), by_split, str(rdir / refs_name),
                       dataset)
    records: list[Record] = []
    for split, sources in plan.items():
        for ref in (ref for src in sources for ref in by_split[src]):
            image_id, ann_id = str(field(ref, "image_id")), str(field(ref, "ann_id"))
            sentences = field(ref, "sentences") or []
            im = image_info.get(image_id)
            if im is None:  # the ref's own file_name is no file: without the image, skip
                for i in range(len(sentences)):
                    p.add("image_not_in_instances", f"{where}: ann {ann_id}#{i} image {image_id}")
                continue
            image_path = f"{images}/" + safe_relpath(
                im.get("file_name"), f"{rdir / 'instances.json'}: image {image_id}")
            size = (int(im.get("width") or 0), int(im.get("height") or 0))
            ann = anns.get(ann_id)
            box = xywh_to_xyxy(ann["bbox"]) if ann and ann.get("bbox") is not None else None
            ref_id = ann_id
            if dataset == "refclef" and _CROP_ID.match(stem(str(field(ref, "file_name")))):
                ref_id = stem(str(field(ref, "file_name")))
            for i, sent in enumerate(sentences):
                phrase = sent
                if isinstance(sent, dict):
                    phrase = field(sent, "sent")
                    phrase = field(sent, "raw") if phrase is None else phrase
                rec = make_record(p, where, image_id=image_id, image_path=image_path, size=size,
                                  box=box, phrase=phrase, split=split, ref_id=ref_id, sent_id=i)
                if rec is not None:
                    records.append(rec)
    return records, []


def _load_pth(root: Path, name: str, splits: Sequence[str] | None, p: Problems, images: str,
              flickr: bool) -> tuple[list[Record], list[str]]:
    base = _pth_dir(root, name)
    if base is None:
        raise VgkitError(f"{root}: no {name}_<split>.pth in {root}, annotations/ or data/ "
                         f"(or their {name}/ folders)")
    avail = _pth_splits(base, name)
    sizes = HeaderSizes(root)
    shape = "(image_file, box, phrase)" if flickr else "(image_file, mask_file, box, phrase, ...)"
    records: list[Record] = []
    for split, sources in plan_splits(splits or default_splits(avail), avail, str(base),
                                      name).items():
        for src in sources:
            path = base / f"{name}_{src}.pth"
            items = load_pth_file(path)
            if not isinstance(items, list):
                raise VgkitError(f"{path}: expected a list of tuples, got {type(items).__name__}")
            seen: Counter[str] = Counter()
            for k, item in enumerate(items):
                if not isinstance(item, (list, tuple)) or len(item) < (3 if flickr else 4):
                    raise VgkitError(f"{path}: item {k} is not {shape}: {item!r:.200}")
                image_name = item[0]
                image_path = f"{images}/" + safe_relpath(image_name, f"{path}: item {k}")
                image_id = stem(image_path)
                if flickr:
                    box, phrase, ref_id, key = item[1], item[2], "", image_id
                else:
                    box, phrase = xywh_to_xyxy(item[2]), item[3]
                    m = _TRAILING_ID.search(image_id)  # COCO_train2014_000000581857 -> 581857
                    image_id = str(int(m.group(1))) if m else image_id
                    ref_id = key = stem(str(item[1]))  # "<ann_id>.pth"
                sent_id = seen[key]
                seen[key] += 1
                rec = make_record(p, path.name, image_id=image_id, image_path=image_path,
                                  size=sizes.get(image_path), box=box, phrase=phrase,
                                  split=split, ref_id=ref_id, sent_id=sent_id)
                if rec is not None:
                    records.append(rec)
    return records, sizes.notes()


def _repeats(records: Sequence[Record]) -> list[str]:
    """Notes naming sentences that repeat another of the same ref (or image and box)."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
    for r in records:
        key = (r.split, r.image_id, r.ref_id, r.box, r.phrase)
        if key in seen:
            counts[r.split] += 1
            if len(examples[r.split]) < 3:
                examples[r.split].append(f"{r.ref_id or r.image_id}#{r.sent_id} {r.phrase!r}")
        seen.add(key)
    return [f"{n:,} {split} sentences repeat an earlier one of the same "
            f"{'ref' if any(r.ref_id for r in records) else 'image and box'} (kept), e.g. "
            f"{', '.join(examples[split])}" for split, n in counts.items()]


def _resolve_format(r: Path, dataset: str, spec: _Spec, sb: str, format: str) -> str:
    """The form to read: `format`, or the first found for "auto" / "json"; checked it applies."""
    if format == "json":
        fmt = find_json_form(r, dataset, sb)
        if fmt is None:
            looked = json_looked_for(dataset, sb).values()
            raise VgkitError(f"{r}: no {dataset} ({sb or 'json'}) json form found; looked in "
                             f"{r}, annotations/ and data/ for " + (" or ".join(looked) or
                                                                   "nothing: none holds it"))
    else:
        fmt = detect_format(r, dataset, sb) if format == "auto" else format
    if fmt not in FORMATS:
        raise UnknownNameError(f"{dataset} format", fmt, [*FORMATS, "json", "auto"])
    if fmt == "pth" and sb not in spec.pth:
        raise VgkitError(f"{dataset} ({sb}) has no one-stage pth form"
                         + ("; ReferIt's referit_<split>.pth is the `referit` dataset"
                            if dataset == "refclef" else ""))
    if fmt == "refer" and dataset == "flickr30k":
        raise VgkitError("flickr30k has no refer form: read its one-stage pth form "
                         "(--format pth) or SeqTR's json (--format seqtr)")
    return fmt


def _source_box(fmt: str, dataset: str) -> str:
    if fmt == "refer":
        return "COCO [x, y, w, h] (instances.json) -> (x, y, x + w, y + h)"
    if fmt == "pth":
        return ("[x1, y1, x2, y2] as given" if dataset == "flickr30k"
                else "COCO [x, y, w, h] floats -> (x, y, x + w, y + h)")
    return f"[x, y, w, h] ({fmt} json) -> (x, y, x + w, y + h)"


def load_refcoco(root: str | os.PathLike[str], dataset: str = "refcoco", format: str = "auto",
                 split_by: str | None = None, splits: Sequence[str] | None = None, *,
                 strict: bool = False, image_dir: str | None = None) -> DatasetIndex:
    """Load refcoco, refcoco+, refcocog, refclef or flickr30k from `root` as one index.

    `format`: refer, pth, simrec, seqtr, mdetr; "json" the first json form found, "auto"
    the first form found. `splits` None: every split the form holds, plus trainval
    (train + val) where missing.
    """
    spec, sb = _spec(dataset, split_by)
    r = Path(root)
    if not r.is_dir():
        raise VgkitError(f"{dataset} root {r} is not a directory")
    fmt = _resolve_format(r, dataset, spec, sb, format)
    images = (safe_relpath(image_dir, "image_dir option") if image_dir else spec.images)
    if isinstance(splits, str):
        splits = (splits,)
    p = Problems(strict, dataset)
    if fmt == "refer":
        records, notes = _load_refer(r, dataset, sb, splits, p, images)
    elif fmt == "pth":
        records, notes = _load_pth(r, spec.pth[sb], splits, p, images, dataset == "flickr30k")
    else:
        records, notes = load_json_form(fmt, r, dataset, sb, splits, p, images)
    meta: dict[str, Any] = {"format": fmt, "split_by": sb, "root": str(r.resolve()),
                            "image_dir": images, "source_box": _source_box(fmt, dataset),
                            "published": PUBLISHED.get((dataset, sb), {}),
                            "problems": p.as_meta(), "notes": notes + _repeats(records)}
    return DatasetIndex(records, name=dataset, source=fmt, meta=meta)


def load_flickr30k(root: str | os.PathLike[str], splits: Sequence[str] | None = None, *,
                   strict: bool = False, image_dir: str | None = None,
                   format: str = "auto") -> DatasetIndex:
    """Flickr30k Entities as one index: the one-stage pth form (``flickr_<split>.pth``) or
    SeqTR's json (``flickr30k/instances.json``); "auto" takes the first found in that order."""
    return load_refcoco(root, "flickr30k", format, None, splits, strict=strict,
                        image_dir=image_dir)
