"""Build the refer and pth forms of ReferIt from the hu-form files, for agreement tests.

The refs pickle is written the way Python 2's protocol-2 pickler writes it. By
default the dict keys are py2 ``str`` (``SHORT_BINSTRING``, bytes, as py2 source
literals are) and the text values py2 ``unicode`` (``BINUNICODE``, as py2's
``json.load`` returns); ``py2_str=True`` makes every text a py2 ``str`` holding
UTF-8 bytes (slower to write; for small inputs).
"""

from __future__ import annotations

import functools
import json
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

from vgkit.data.referit import PTH_SKIPPED_IMAGES, REFS_FILE
from vgkit.text import tokenize

HU_FILES = ("referit_bbox.json", "referit_imsize.json")


def read_hu(hu_dir: Path, split: str) -> tuple[dict[str, list[str]], dict[str, list[int]],
                                               dict[str, list[int]]]:
    """(queries of `split`, boxes, image sizes) from a hu-form directory."""
    return (_load_json(hu_dir / f"referit_query_{split}.json"),
            _load_json(hu_dir / "referit_bbox.json"), _load_json(hu_dir / "referit_imsize.json"))


def _load_json(path: Path) -> Any:
    # Cached by path, size and mtime: the builders read the same 3 MB box file 7 times.
    st = path.stat()
    return _load_json_cached(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _load_json_cached(path: Path, size: int, mtime_ns: int) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _encode(obj: Any, out: list[bytes]) -> None:
    # Opcode by opcode, as Python 2's cPickle writes protocol 2 (minus the memo, which
    # plain trees do not need); much faster than the pure-Python pickle._Pickler.
    if obj is None:
        out.append(pickle.NONE)
    elif obj is True or obj is False:
        out.append(pickle.NEWTRUE if obj else pickle.NEWFALSE)
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out.append(pickle.BININT1 + bytes([obj]))
        elif -(2**31) <= obj < 2**31:
            out.append(pickle.BININT + struct.pack("<i", obj))
        else:  # a py2 long
            raw = pickle.encode_long(obj)  # type: ignore[attr-defined]
            out.append(pickle.LONG1 + bytes([len(raw)]) + raw)
    elif isinstance(obj, float):
        out.append(pickle.BINFLOAT + struct.pack(">d", obj))
    elif isinstance(obj, bytes):  # a py2 str
        n = len(obj)
        out.append((pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                    else pickle.BINSTRING + struct.pack("<i", n)) + obj)
    elif isinstance(obj, str):  # a py2 unicode
        raw = obj.encode("utf-8", "surrogatepass")
        out.append(pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw)
    elif isinstance(obj, (list, dict)):
        out.append(pickle.EMPTY_LIST if isinstance(obj, list) else pickle.EMPTY_DICT)
        if obj:
            out.append(pickle.MARK)
            for item in (obj if isinstance(obj, list) else obj.items()):
                for part in (item,) if isinstance(obj, list) else item:
                    # Inline the commonest leaves: a call per token and key is most of the time.
                    if type(part) is bytes and len(part) < 256:
                        out.append(pickle.SHORT_BINSTRING + bytes((len(part),)) + part)
                    elif type(part) is int and 0 <= part < 256:
                        out.append(pickle.BININT1 + bytes((part,)))
                    else:
                        _encode(part, out)
            out.append(pickle.APPENDS if isinstance(obj, list) else pickle.SETITEMS)
    elif isinstance(obj, tuple):
        out.append(pickle.MARK)
        for item in obj:
            _encode(item, out)
        out.append(pickle.TUPLE)
    else:
        raise TypeError(f"py2_dumps: cannot write {type(obj).__name__}")


def py2_dumps(obj: Any) -> bytes:
    """Protocol-2 pickle of plain data as Python 2 writes it: bytes become py2 ``str``."""
    out = [pickle.PROTO + b"\x02"]
    _encode(obj, out)
    out.append(pickle.STOP)
    return b"".join(out)


_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "file_name", "category_id",
             "sent_ids", "sentences", "raw", "sent", "tokens", "sent_id")


def _to_py2_str(obj: Any) -> Any:
    """Every str in `obj` as UTF-8 bytes (a py2 ``str``)."""
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, dict):
        return {_to_py2_str(k): _to_py2_str(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_py2_str(v) for v in obj]
    return obj


def _dumps_py2_keys(refs: list[dict[str, Any]]) -> bytes:
    # The C pickler memoizes each key string once, as BINUNICODE; rewriting those few
    # opcodes to SHORT_BINSTRING gives py2 str keys at C speed. Text holds no NUL byte,
    # so the pattern cannot start inside a phrase; a phrase that *is* "raw" becomes a
    # py2 str too, which loads the same.
    data = pickle.dumps(refs, protocol=2)
    for k in _REF_KEYS:
        raw = k.encode()
        data = data.replace(pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw,
                            pickle.SHORT_BINSTRING + bytes((len(raw),)) + raw)
    return data


def build_refer(hu_dir: Path, out_root: Path, *, py2_str: bool = False) -> Path:
    """Write ``refclef/refs(berkeley).p`` + ``refclef/instances.json`` under `out_root`."""
    images: dict[str, dict[str, Any]] = {}
    anns: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    sent_counter = 0
    for split in ("train", "val", "test"):
        queries, boxes, sizes = read_hu(hu_dir, split)
        for crop_id, phrases in queries.items():
            image = crop_id.rsplit("_", 1)[0]
            w, h = sizes[f"{image}.jpg"]
            images.setdefault(image, {"id": int(image), "width": w, "height": h,
                                      "file_name": f"{int(image) // 1000:02d}/images/{image}.jpg"})
            x0, y0, x1, y1 = boxes[crop_id]
            ann_id = len(anns) + 1
            # refclef w/h count pixels: Hu's inclusive max gives max - min + 1.
            anns.append({"id": ann_id, "image_id": int(image), "category_id": 1,
                         "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                         "area": (x1 - x0 + 1) * (y1 - y0 + 1)})
            sents = []
            for phrase in phrases:
                sents.append({"raw": phrase, "sent": phrase.lower(), "tokens": tokenize(phrase),
                              "sent_id": sent_counter})
                sent_counter += 1
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": int(image),
                         "split": split, "file_name": f"{crop_id}.jpg", "category_id": 1,
                         "sent_ids": [s["sent_id"] for s in sents], "sentences": sents})
    rdir = out_root / "refclef"
    rdir.mkdir(parents=True, exist_ok=True)
    data = py2_dumps(_to_py2_str(refs)) if py2_str else _dumps_py2_keys(refs)
    (rdir / REFS_FILE).write_bytes(data)
    (rdir / "instances.json").write_text(json.dumps({
        "images": list(images.values()), "annotations": anns,
        "categories": [{"id": 1, "name": "object"}]}))
    return out_root


def pth_items(hu_dir: Path, split: str) -> list[tuple[str, str, list[int], str, list[Any]]]:
    """The pth-form tuples of `split`, without the images the real files skip."""
    queries, boxes, _ = read_hu(hu_dir, split)
    skipped = {i for s in ("train", "val") for i in PTH_SKIPPED_IMAGES.get(s, ())} \
        if split in ("train", "val", "trainval") else set(PTH_SKIPPED_IMAGES.get(split, ()))
    items = []
    for crop_id, phrases in queries.items():
        image = crop_id.rsplit("_", 1)[0]
        if image in skipped:
            continue
        for phrase in phrases:
            items.append((f"{image}.jpg", f"{crop_id}.mat", list(boxes[crop_id]), phrase, []))
    return items


def build_pth(hu_dir: Path, out_root: Path, *, with_imsize: bool = True) -> Path:
    """Write ``referit_{split}.pth`` for the splits `hu_dir` has (and imsize json) under `out_root`."""
    import torch

    out_root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "trainval", "test"):
        if not (hu_dir / f"referit_query_{split}.json").is_file():
            continue
        torch.save(pth_items(hu_dir, split), out_root / f"referit_{split}.pth")
    if with_imsize:
        shutil.copy(hu_dir / "referit_imsize.json", out_root / "referit_imsize.json")
    return out_root


def write_hu(root: Path, queries: dict[str, dict[str, list[str]]], boxes: dict[str, list[int]],
             sizes: dict[str, list[int]]) -> Path:
    """Write a small hu-form layout (query files per split, bbox, imsize) into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for split, q in queries.items():
        (root / f"referit_query_{split}.json").write_text(json.dumps(q), encoding="utf-8")
    (root / "referit_bbox.json").write_text(json.dumps(boxes))
    (root / "referit_imsize.json").write_text(json.dumps({f"{k}.jpg": v for k, v in sizes.items()}))
    return root


# A tiny clean hu layout: two train images, one val, one test.
TINY_QUERIES = {
    "train": {"1_1": ["the red car", "car."], "1_2": ["sky"], "2_1": ["left man"]},
    "val": {"3_1": ["tree on the right"]},
    "test": {"4_1": ["water", "the lake"], "4_2": ["boat"]},
}
TINY_BOXES = {"1_1": [10, 20, 29, 59], "1_2": [0, 0, 99, 9], "2_1": [5, 5, 5, 5],
              "3_1": [0, 0, 63, 47], "4_1": [1, 2, 3, 4], "4_2": [10, 10, 19, 19]}
TINY_SIZES = {"1": [100, 80], "2": [50, 50], "3": [64, 48], "4": [40, 30]}


def write_tiny_hu(root: Path) -> Path:
    """The tiny clean hu layout (no trainval file: loaders derive it from train + val)."""
    return write_hu(root, TINY_QUERIES, TINY_BOXES, TINY_SIZES)
