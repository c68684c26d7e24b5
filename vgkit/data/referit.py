"""ReferIt (ReferItGame, the "berkeley" split) in any of its three forms.

The official links are dead and the split circulates in three forms; all three
load into the same :class:`~vgkit.data.index.Record` objects.

``hu`` (text_objseg): ``referit_query_{split}.json`` (crop id ``<image>_<n>`` ->
phrases), ``referit_bbox.json`` (crop id -> ``[x_min, y_min, x_max, y_max]``,
max *inclusive*), ``referit_imsize.json``; images ``<root>/images/<image>.jpg``.
Box: ``(x_min, y_min, x_max + 1, y_max + 1)``.

``refer`` (the ``refer`` API): ``refclef/refs(berkeley).p`` (a Python 2 pickle,
read with :mod:`vgkit.data.safe_pickle`) and ``refclef/instances.json``
(COCO style); images ``images/saiapr_tc-12/<file_name>`` beside ``refclef/``.
Box: COCO ``[x, y, w, h]`` read as continuous, ``(x, y, x + w, y + h)``; a
refclef ``w`` counts pixels (``x_max - x_min + 1`` of Hu's inclusive box), so
this equals the ``hu`` box. The crop id comes from the ref's ``file_name``
(``<image>_<n>.jpg``) or the annotation's ``mask_name``; ``sent_id`` is the
position in the ref's ``sentences`` (refer's own ``sent_id`` is a global counter).
The berkeley refs carry train/val/test; ``trainval`` is train followed by val.

``pth`` (one-stage / ReSC / TransVG): ``referit_{split}.pth``, a list of
``(image_file, mask_file, [x1, y1, x2, y2], phrase, attributes)``, box inclusive
like Hu's: ``(x1, y1, x2 + 1, y2 + 1)``. ``ref_id`` is the stem of ``mask_file``
(``<image>_<n>.mat``) and ``sent_id`` the phrase's occurrence index for that crop
in the file (the files keep Hu's order). They have no image sizes: those come from
a ``referit_imsize.json`` nearby, else the image header, else 0 (noted in meta).
These files omit images 19579, 17975 (train) and 19575 (test).

Files are looked for in ``root``, ``root/annotations`` and ``root/data``. Data
problems are counted per expression in ``index.meta["problems"]``: expressions
with degenerate or missing boxes or empty phrases are skipped, boxes reaching
outside the image are clipped, undecodable text is kept with U+FFFD;
``strict=True`` turns the first problem into a :class:`VgkitError`. An image path
an annotation supplies (a crop id, a ``file_name``, a pth ``image_file``) that is
absolute or has a ``..`` component is refused at load time, naming file and record
(:func:`vgkit.data.validate.safe_relpath`).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from vgkit.data.annotations import (
    Problems,
    field,
    load_pth_file,
    make_record,
    plan_splits,
    read_json,
    stem,
    xywh_to_xyxy,
)
from vgkit.data.index import DatasetIndex, Record
from vgkit.data.safe_pickle import safe_load
from vgkit.data.validate import image_file, safe_relpath
from vgkit.errors import UnknownNameError, VgkitError

__all__ = ["DEFAULT_SPLITS", "FORMATS", "PTH_SKIPPED_IMAGES", "REFS_FILE", "detect_format",
           "load_referit"]

FORMATS = ("hu", "refer", "pth")  # also the order "auto" tries them in
DEFAULT_SPLITS = ("train", "val", "trainval", "test")
PTH_SKIPPED_IMAGES = {"train": ("19579", "17975"), "test": ("19575",)}
REFS_FILE = "refs(berkeley).p"
_CROP_ID = re.compile(r"^(\d+)_(\d+)$")
_LOOKS_FOR = {"hu": "referit_bbox.json + referit_query_<split>.json",
              "refer": f"refclef/{REFS_FILE} + refclef/instances.json",
              "pth": "referit_<split>.pth"}


def _bases(root: Path) -> list[Path]:
    return [root, root / "annotations", root / "data"]


def _first(dirs: Iterable[Path], has: Callable[[Path], bool]) -> Path | None:
    return next((d for d in dirs if has(d)), None)


_FINDERS: dict[str, Callable[[Path], Path | None]] = {
    "hu": lambda r: _first(_bases(r), lambda b: (b / "referit_bbox.json").is_file()
                           and any(b.glob("referit_query_*.json"))),
    "refer": lambda r: _first([*(b / "refclef" for b in _bases(r)), r],
                              lambda d: (d / REFS_FILE).is_file()
                              and (d / "instances.json").is_file()),
    "pth": lambda r: _first(_bases(r), lambda b: any(b.glob("referit_*.pth"))),
}


def _find(fmt: str, root: Path) -> Path:
    found = _FINDERS[fmt](root)
    if found is None:
        raise VgkitError(f"{root}: no {fmt}-form ReferIt files ({_LOOKS_FOR[fmt]} in {root}, "
                         f"annotations/ or data/)")
    return found


def detect_format(root: str | os.PathLike[str]) -> str:
    """Which ReferIt form `root` holds: "hu", "refer" or "pth" (first match in that order)."""
    r = Path(root)
    if not r.is_dir():
        raise VgkitError(f"ReferIt root {r} is not a directory")
    for fmt in FORMATS:
        if _FINDERS[fmt](r) is not None:
            return fmt
    raise VgkitError(f"{r}: no ReferIt annotations found; looked in {r}, annotations/ and "
                     f"data/ for " + ", ".join(f"{k} ({v})" for k, v in _LOOKS_FOR.items()))


class _Sizes:
    """Image sizes from referit_imsize.json, else the image header, else (0, 0)."""

    def __init__(self, root: Path, json_dirs: Iterable[Path]) -> None:
        self.root = root
        path = next((d / "referit_imsize.json" for d in json_dirs
                     if (d / "referit_imsize.json").is_file()), None)
        self.table: dict[str, Any] = read_json(path) if path else {}
        self.source = str(path) if path else "image headers"
        self.cache: dict[str, tuple[int, int]] = {}
        self.unknown: set[str] = set()

    def get(self, image_id: str, image_path: str) -> tuple[int, int]:
        if image_id not in self.cache:
            self.cache[image_id] = self._lookup(image_id, image_path)
        return self.cache[image_id]

    def _lookup(self, image_id: str, image_path: str) -> tuple[int, int]:
        wh = self.table.get(f"{image_id}.jpg") or self.table.get(image_id)
        if wh:
            return int(wh[0]), int(wh[1])
        try:
            from PIL import Image

            with Image.open(image_file(self.root, image_path)) as im:  # reads the header only
                return im.size
        except (OSError, ValueError):
            self.unknown.add(image_id)
            return 0, 0

    def notes(self) -> list[str]:
        if not self.unknown:
            return []
        return [f"size unknown (0x0, boxes not checked against it) for {len(self.unknown)} "
                f"images: not in {self.source} and image not readable, "
                f"e.g. {', '.join(sorted(self.unknown)[:3])}"]


def _inclusive(b: Any) -> Any:
    """An inclusive-max pixel box as continuous coordinates (max + 1)."""
    try:
        x0, y0, x1, y1 = (float(v) for v in b)
    except (TypeError, ValueError):
        return b  # _make_record reports it
    return [x0, y0, x1 + 1, y1 + 1]


def _load_hu(root: Path, splits: Sequence[str], p: Problems) -> tuple[list[Record], list[str]]:
    base = _find("hu", root)
    boxes = read_json(base / "referit_bbox.json")
    sizes = _Sizes(root, [base, *_bases(root)])
    avail = [f.stem.removeprefix("referit_query_") for f in base.glob("referit_query_*.json")]
    records: list[Record] = []
    paths: dict[str, str] = {}  # image id -> its checked path (an image has many crops)
    for split, sources in plan_splits(splits, avail, str(base)).items():
        for src in sources:
            fname = f"referit_query_{src}.json"
            where = str(base / fname)
            for crop_id, phrases in read_json(base / fname).items():
                image_id = crop_id.rsplit("_", 1)[0]
                image_path = paths.get(image_id)
                if image_path is None:
                    # The crop id names the image file: "../../etc/passwd_1" must not open it.
                    image_path = paths[image_id] = "images/" + safe_relpath(
                        f"{image_id}.jpg", f"{where}: crop {crop_id!r}")
                box = boxes.get(crop_id)
                box = None if box is None else _inclusive(box)
                size = sizes.get(image_id, image_path)
                for i, phrase in enumerate(phrases if isinstance(phrases, list) else [phrases]):
                    rec = make_record(p, fname, image_id=image_id, image_path=image_path,
                                       size=size, box=box, phrase=phrase, split=split,
                                       ref_id=crop_id, sent_id=i)
                    if rec is not None:
                        records.append(rec)
    return records, sizes.notes()


def _refer_crop_id(ref: dict[Any, Any], ann: dict[str, Any]) -> str | None:
    for name in (field(ref, "file_name"), ann.get("mask_name")):
        if isinstance(name, str) and _CROP_ID.match(stem(name)):
            return stem(name)
    return None


def _load_refer(root: Path, splits: Sequence[str], p: Problems) -> tuple[list[Record], list[str]]:
    rdir = _find("refer", root)
    # Python 2 str arrive as bytes and are decoded as UTF-8 by _field, so that a bad
    # byte is reported for its phrase rather than silently read as latin-1.
    refs = safe_load(rdir / REFS_FILE, encoding="bytes")
    inst = read_json(rdir / "instances.json")
    if not isinstance(refs, list) or not isinstance(inst, dict):
        raise VgkitError(f"{rdir}: {REFS_FILE} must hold a list and instances.json an object")
    images = {str(im["id"]): im for im in inst.get("images", [])}
    anns = {str(a["id"]): a for a in inst.get("annotations", [])}
    image_dir = Path(os.path.relpath(rdir.parent / "images" / "saiapr_tc-12", root)).as_posix()
    if image_dir.split("/")[0] == "..":  # refs directly in root: images beside root, outside it
        raise VgkitError(f"{rdir}: the refer form keeps images in {rdir.parent}/images/"
                         f"saiapr_tc-12, outside the root; pass --root {rdir.parent}")
    sizes = _Sizes(root, [rdir, *_bases(root)])
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ref in refs:
        by_split[str(field(ref, "split"))].append(ref)
    fallback = 0
    records: list[Record] = []
    for split, sources in plan_splits(splits, by_split, str(rdir / REFS_FILE)).items():
        for src in sources:
            for ref in by_split[src]:
                image_id = str(field(ref, "image_id"))
                ann = anns.get(str(field(ref, "ann_id")), {})
                im = images.get(image_id, {})
                image_path = f"{image_dir}/" + safe_relpath(
                    im.get("file_name") or f"{image_id}.jpg",
                    f"{rdir / 'instances.json'}: image {image_id}")
                crop_id = _refer_crop_id(ref, ann)
                if crop_id is None:
                    fallback += 1
                    crop_id = f"{image_id}_{field(ref, 'ann_id')}"
                size = ((int(im["width"]), int(im["height"])) if im.get("width")
                        else sizes.get(image_id, image_path))
                bbox = ann.get("bbox")
                box = None if bbox is None else xywh_to_xyxy(bbox)
                for i, sent in enumerate(field(ref, "sentences") or []):
                    phrase = sent if not isinstance(sent, dict) else (
                        field(sent, "raw") if field(sent, "raw") is not None
                        else field(sent, "sent"))
                    rec = make_record(p, REFS_FILE, image_id=image_id, image_path=image_path,
                                       size=size, box=box, phrase=phrase, split=split,
                                       ref_id=crop_id, sent_id=i)
                    if rec is not None:
                        records.append(rec)
    notes = [f"{fallback} refs name no crop (<image>_<n>) in file_name or mask_name: their "
             f"ref_id is <image>_<ann_id>"] if fallback else []
    return records, notes + sizes.notes()


def _load_pth(root: Path, splits: Sequence[str], p: Problems) -> tuple[list[Record], list[str]]:
    base = _find("pth", root)
    sizes = _Sizes(root, [base, *_bases(root)])
    avail = [f.stem.removeprefix("referit_") for f in base.glob("referit_*.pth")]
    records: list[Record] = []
    for split, sources in plan_splits(splits, avail, str(base)).items():
        for src in sources:
            path = base / f"referit_{src}.pth"
            items = load_pth_file(path)
            if not isinstance(items, list):
                raise VgkitError(f"{path}: expected a list of tuples, got {type(items).__name__}")
            seen: Counter[str] = Counter()
            for k, item in enumerate(items):
                if not isinstance(item, (list, tuple)) or len(item) < 4:
                    raise VgkitError(f"{path}: item {k} is not (image_file, mask_file, box, "
                                     f"phrase, ...): {item!r}")
                image_name, mask_file, box, phrase = (str(item[0]), str(item[1]), item[2], item[3])
                image_id, mask_stem = stem(image_name), stem(mask_file)
                ref_id = mask_stem if _CROP_ID.match(mask_stem) else f"{image_id}_{mask_stem}"
                sent_id = seen[ref_id]
                seen[ref_id] += 1
                image_path = "images/" + safe_relpath(image_name, f"{path}: item {k}")
                rec = make_record(p, path.name, image_id=image_id, image_path=image_path,
                                   size=sizes.get(image_id, image_path), box=_inclusive(box),
                                   phrase=phrase, split=split, ref_id=ref_id, sent_id=sent_id)
                if rec is not None:
                    records.append(rec)
    return records, sizes.notes()


_LOADERS = {"hu": _load_hu, "refer": _load_refer, "pth": _load_pth}


def load_referit(root: str | os.PathLike[str], format: str = "auto",
                 splits: Sequence[str] = DEFAULT_SPLITS, *, strict: bool = False) -> DatasetIndex:
    """Load ReferIt from `root` in form "hu", "refer" or "pth" ("auto": detect) as one index."""
    r = Path(root)
    if not r.is_dir():
        raise VgkitError(f"ReferIt root {r} is not a directory")
    fmt = detect_format(r) if format == "auto" else format
    if fmt not in _LOADERS:
        raise UnknownNameError("ReferIt format", fmt, [*FORMATS, "auto"])
    if isinstance(splits, str):
        splits = (splits,)
    problems = Problems(strict)
    records, notes = _LOADERS[fmt](r, list(splits), problems)
    meta: dict[str, Any] = {"format": fmt, "root": str(r.resolve()),
                            "problems": problems.as_meta(), "notes": notes}
    return DatasetIndex(records, name="referit", source=fmt, meta=meta)
