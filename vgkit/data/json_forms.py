"""The json forms of the RefCOCO family and Flickr30k that other code bases pass around.

``simrec`` (luogen1996/SimREC: written by ``data/data_process.py``, read by
``simrec/datasets/dataset.py``): ``anns/<ds>.json``, an object split -> list of items
``{"iid", "bbox": [x, y, w, h], "refs": [sent, ...], "mask_id", "cat_id"}``. ``train``
items are refs with all their sentences, the other splits one item per sentence;
``mask_id`` is refer's ``ref_id`` (not the annotation id). No image sizes.

``seqtr`` (seanzhuh/SeqTR, also SimVG: read by ``seqtr/datasets/base.py`` and
``seqtr/datasets/pipelines/loading.py``): ``annotations/<name>/instances.json``, an
object split -> list of ``{"image_id", "bbox": [x, y, w, h], "expressions": [...],
"width", "height", ...}``. No region id: sentences are counted per image and box.

Both name an image by its id: ``COCO_train2014_%012d.jpg`` (RefCOCO family) or
``%d.jpg`` (RefCLEF, Flickr30k), under the dataset's image folder.

``mdetr`` (ashkamath/mdetr: written by ``scripts/fine-tuning/refexp_coco_format.py``
and ``scripts/pre-training/refexp_combined_*.py``, read by ``datasets/refexp.py``):
``finetune_<ds>_<split>.json``, else ``final_refexp_<split>.json`` (all three sets,
told apart by ``dataset_name``), COCO style: one ``images`` entry per sentence
(``file_name``, ``width``, ``height``, ``original_id`` the COCO image id, ``caption``)
and one ``annotations`` entry for it (``bbox`` [x, y, w, h], ``original_id`` the
annotation id, so ``ref_id`` is refer's).

A malformed file or entry is one :class:`VgkitError` naming the file and the entry;
data problems (bad boxes, empty phrases) are counted as for every form
(:func:`vgkit.data.annotations.make_record`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

from vgkit.data.annotations import (
    HeaderSizes,
    Problems,
    default_splits,
    make_record,
    plan_splits,
    read_json,
    xywh_to_xyxy,
)
from vgkit.data.index import Record
from vgkit.data.validate import safe_relpath
from vgkit.errors import VgkitError

__all__ = ["JSON_FORMATS", "SEQTR_NAMES", "find_json_form", "json_looked_for", "load_json_form"]

JSON_FORMATS = ("simrec", "seqtr", "mdetr")  # also the order "json" tries them in
# (dataset, split_by) -> SeqTR's annotation folder
SEQTR_NAMES = {("refcoco", "unc"): "refcoco-unc", ("refcoco+", "unc"): "refcocoplus-unc",
               ("refcocog", "umd"): "refcocog-umd", ("refcocog", "google"): "refcocog-google",
               ("refclef", "berkeley"): "referitgame-berkeley", ("flickr30k", ""): "flickr30k"}
_MDETR_SETS = {("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")}
_SIMREC_SETS = ("refcoco", "refcoco+", "refcocog", "refclef")
_COCO_SETS = ("refcoco", "refcoco+", "refcocog")
# the keys of an item: image id, its sentences, the region id (None: the form has none)
_KEYS = {"simrec": ("iid", "refs", "mask_id"), "seqtr": ("image_id", "expressions", None)}


def _bases(root: Path) -> list[Path]:
    return [root, root / "annotations", root / "data"]


def _first_file(root: Path, rels: Sequence[str]) -> Path | None:
    return next((b / r for b in _bases(root) for r in rels if (b / r).is_file()), None)


def _simrec_file(root: Path, dataset: str) -> Path | None:
    return _first_file(root, [f"anns/{dataset}.json", f"anns/{dataset}/{dataset}.json"])


def _seqtr_file(root: Path, dataset: str, split_by: str) -> Path | None:
    name = SEQTR_NAMES.get((dataset, split_by))
    if name is None:
        return None
    return _first_file(root, [f"{name}/instances.json", f"annotations/{name}/instances.json"])


def _mdetr_files(root: Path, dataset: str) -> dict[str, Path]:
    """split -> file: ``finetune_<ds>_<split>.json`` if any, else ``final_refexp_<split>.json``."""
    dirs = [d for b in _bases(root) for d in (b, b / "mdetr_annotations") if d.is_dir()]
    for prefix in (f"finetune_{dataset}_", "final_refexp_"):
        for d in dirs:
            found = {f.name[len(prefix):-5]: f for f in sorted(d.iterdir())
                     if f.name.startswith(prefix) and f.name.endswith(".json")}
            found = {s: f for s, f in found.items() if s and "_" not in s and f.is_file()}
            if found:
                return found
    return {}


def _check_applies(fmt: str, dataset: str, split_by: str) -> None:
    if fmt == "simrec" and dataset not in _SIMREC_SETS:
        raise VgkitError(f"SimREC's json form is read for {', '.join(_SIMREC_SETS)}, not "
                         f"{dataset} (its flickr.json is a download without the script that "
                         "wrote it)")
    if fmt == "seqtr" and (dataset, split_by) not in SEQTR_NAMES:
        raise VgkitError(f"SeqTR has no {dataset} ({split_by}) annotations; it has "
                         + ", ".join(f"{d} ({s})" if s else d for d, s in SEQTR_NAMES))
    if fmt == "mdetr" and (dataset, split_by) not in _MDETR_SETS:
        raise VgkitError(f"MDETR's files hold refcoco (unc), refcoco+ (unc) and refcocog (umd) "
                         f"only, not {dataset} ({split_by})")


def _applies(fmt: str, dataset: str, split_by: str) -> bool:
    try:
        _check_applies(fmt, dataset, split_by)
    except VgkitError:
        return False
    return True


def find_json_form(root: Path, dataset: str, split_by: str) -> str | None:
    """The first json form (simrec, seqtr, mdetr) whose files `root` holds, or None."""
    for fmt in JSON_FORMATS:
        if not _applies(fmt, dataset, split_by):
            continue
        if fmt == "simrec" and _simrec_file(root, dataset):
            return fmt
        if fmt == "seqtr" and _seqtr_file(root, dataset, split_by):
            return fmt
        if fmt == "mdetr" and _mdetr_files(root, dataset):
            return fmt
    return None


def json_looked_for(dataset: str, split_by: str) -> dict[str, str]:
    """json form -> the file it is looked for as, for the forms that hold `dataset`."""
    files = {"simrec": f"anns/{dataset}.json (SimREC)",
             "seqtr": f"{SEQTR_NAMES.get((dataset, split_by))}/instances.json (SeqTR)",
             "mdetr": f"finetune_{dataset}_<split>.json (MDETR)"}
    return {f: files[f] for f in JSON_FORMATS if _applies(f, dataset, split_by)}


def _get(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise VgkitError(f"{where}: missing key {key!r}")
    return d[key]


def _object(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise VgkitError(f"{where}: expected an object, got {type(v).__name__} {v!r:.60}")
    return v


def _box(d: dict[str, Any], where: str) -> Any:
    """The entry's ``bbox`` [x, y, w, h] as continuous xyxy (its numbers checked later)."""
    b = _get(d, "bbox", where)
    if not isinstance(b, list) or len(b) != 4 or any(isinstance(v, (list, dict)) for v in b):
        raise VgkitError(f"{where}: 'bbox' must be one box [x, y, w, h], got {b!r:.80}")
    return xywh_to_xyxy(b)


def _texts(d: dict[str, Any], key: str, where: str) -> list[str]:
    v = _get(d, key, where)
    if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
        raise VgkitError(f"{where}: {key!r} must be a list of sentences, got {v!r:.80}")
    return v


def _image_name(dataset: str, iid: Any, where: str, key: str) -> str:
    # Both code bases format the id with %d: anything but an integer fails there too.
    if not isinstance(iid, int) or isinstance(iid, bool) or iid < 0:
        raise VgkitError(f"{where}: {key!r} must be an integer image id, got {iid!r:.60}")
    return f"COCO_train2014_{iid:012d}.jpg" if dataset in _COCO_SETS else f"{iid}.jpg"


def _size(d: dict[str, Any]) -> tuple[int, int] | None:
    w, h = d.get("width"), d.get("height")
    return (w, h) if _positive(w) and _positive(h) else None


def _positive(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _split_lists(data: Any, path: Path) -> dict[str, list[Any]]:
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        what = type(data).__name__ if not isinstance(data, dict) else "an object with non-lists"
        raise VgkitError(f"{path}: expected an object split -> list of items, got {what}")
    return data


def _load_split_lists(path: Path, fmt: str, dataset: str, splits: Sequence[str] | None,
                      p: Problems, images: str, sizes: HeaderSizes) -> list[Record]:
    """SimREC's and SeqTR's files: split -> items, each an image id, a box and sentences."""
    by_split = _split_lists(read_json(path), path)
    image_key, text_key, ref_key = _KEYS[fmt]
    records: list[Record] = []
    for split, sources in plan_splits(splits or default_splits(by_split), by_split, str(path),
                                      dataset).items():
        for src in sources:
            seen: Counter[Any] = Counter()  # sentences so far per region, as refer numbers them
            for k, item in enumerate(by_split[src]):
                where = f"{path}: {src}[{k}]"
                item = _object(item, where)
                iid = _get(item, image_key, where)
                image_path = f"{images}/" + safe_relpath(
                    _image_name(dataset, iid, where, image_key), where)
                box, texts = _box(item, where), _texts(item, text_key, where)
                ref_id = str(item[ref_key]) if ref_key and item.get(ref_key) is not None else ""
                key = ref_id or (iid if dataset == "flickr30k" else (iid, repr(box)))
                size = _size(item) or sizes.get(image_path)
                for phrase in texts:
                    rec = make_record(p, f"{path.name} {src}", image_id=str(iid),
                                      image_path=image_path, size=size, box=box, phrase=phrase,
                                      split=split, ref_id=ref_id, sent_id=seen[key])
                    seen[key] += 1
                    if rec is not None:
                        records.append(rec)
    return records


def _coco_entries(path: Path) -> tuple[list[Any], dict[str, list[dict[str, Any]]]]:
    """A COCO-style file's images and its annotations by image entry id."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):
        raise VgkitError(f"{path}: expected a COCO-style object with 'images' and "
                         "'annotations' lists")
    anns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for k, a in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        anns[str(_get(_object(a, where), "image_id", where))].append(a)
    return data["images"], anns


def _load_mdetr_file(path: Path, dataset: str, split: str, p: Problems, images: str,
                     sizes: HeaderSizes, others: Counter[str]) -> list[Record]:
    entries, anns = _coco_entries(path)
    seen: Counter[str] = Counter()
    records: list[Record] = []
    for k, im in enumerate(entries):
        where = f"{path}: images[{k}]"
        im = _object(im, where)
        if im.get("dataset_name", dataset) != dataset:
            others[str(im.get("dataset_name"))] += 1
            continue
        entry_id = _get(im, "id", where)
        image_id = str(im.get("original_id", entry_id))
        image_path = f"{images}/" + safe_relpath(_get(im, "file_name", where),
                                                 f"{where} (image {image_id})")
        found = anns.get(str(entry_id), [])
        if len(found) > 1:
            raise VgkitError(f"{where}: {len(found)} annotations for one caption; a referring "
                             "expression has one box (MDETR's phrase-grounding files are not "
                             "read)")
        box, ref_id = None, ""
        if found:
            box = _box(found[0], f"{where}: its annotation")
            ref_id = str(found[0].get("original_id", found[0].get("id", "")))
        key = ref_id or image_id
        rec = make_record(p, path.name, image_id=image_id, image_path=image_path,
                          size=_size(im) or sizes.get(image_path), box=box,
                          phrase=_get(im, "caption", where), split=split, ref_id=ref_id,
                          sent_id=seen[key])
        seen[key] += 1
        if rec is not None:
            records.append(rec)
    return records


def _load_mdetr(root: Path, dataset: str, splits: Sequence[str] | None, p: Problems,
                images: str, sizes: HeaderSizes) -> tuple[list[Record], list[str]]:
    files = _mdetr_files(root, dataset)
    if not files:
        raise VgkitError(f"{root}: no finetune_{dataset}_<split>.json or "
                         "final_refexp_<split>.json (MDETR) in it, annotations/ or data/ (or "
                         "their mdetr_annotations/)")
    where = str(next(iter(files.values())).parent)
    records: list[Record] = []
    others: Counter[str] = Counter()
    for split, sources in plan_splits(splits or default_splits(files), files, where,
                                      dataset).items():
        for src in sources:
            records += _load_mdetr_file(files[src], dataset, split, p, images, sizes, others)
    notes = [f"{sum(others.values()):,} entries of other sets left out ("
             + ", ".join(f"{k} {n:,}" for k, n in sorted(others.items())) + ")"] if others else []
    return records, notes


def load_json_form(fmt: str, root: Path, dataset: str, split_by: str,
                   splits: Sequence[str] | None, p: Problems,
                   images: str) -> tuple[list[Record], list[str]]:
    """Records and notes of `dataset` in the json form `fmt` (simrec, seqtr or mdetr)."""
    _check_applies(fmt, dataset, split_by)
    sizes = HeaderSizes(root)
    notes: list[str] = []
    if fmt == "mdetr":
        records, notes = _load_mdetr(root, dataset, splits, p, images, sizes)
        return records, notes + sizes.notes()
    path = (_simrec_file(root, dataset) if fmt == "simrec"
            else _seqtr_file(root, dataset, split_by))
    if path is None:
        raise VgkitError(f"{root}: no {json_looked_for(dataset, split_by)[fmt]} in it, "
                         "annotations/ or data/")
    records = _load_split_lists(path, fmt, dataset, splits, p, images, sizes)
    if fmt == "simrec":
        notes.append(f"{path.name} does not say which split_by it holds: read as {split_by}")
    return records, notes + sizes.notes()
