"""Write tiny RefCOCO-family datasets in the refer and one-stage pth forms, as published.

refer (lichengunc/refer): ``<ds>/refs(<split_by>).p`` written as Python 2's protocol-2
pickler does (every text a py2 ``str``: bytes) + ``<ds>/instances.json``. pth (DMS /
one-stage grounding's ``process_coco``): ``data/<name>/<name>_<split>.pth`` holding
``(image_file, "<ann_id>.pth", ann bbox [x, y, w, h], sentence["sent"], [])``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from referit_forms import _to_py2_str, py2_dumps

COCO_DIR = "images/mscoco/images/train2014"
IMAGES = {581857: (40, 30), 2: (50, 50), 3: (64, 48)}  # image id -> (width, height)
ANNS = {1241: (581857, [10.5, 2.25, 20.0, 15.75]), 7: (2, [0.0, 0.0, 50.0, 50.0]),
        8: (2, [5.0, 5.0, 10.0, 10.0]), 9: (3, [1.0, 2.0, 3.0, 4.0])}  # ann id -> (image, xywh)
# (ann id, split, sentences (raw)); "sent" is the raw text lowercased, as refer's files have it
REFS = [(1241, "train", ["The red car", "car on the left"]), (7, "train", ["sky"]),
        (8, "val", ["small box", "small box"]), (9, "testA", ["Man"]), (9, "testB", ["man?"])]
COUNTS = {"train": 3, "val": 2, "trainval": 5, "testA": 1, "testB": 1}


def coco_file(image_id: int) -> str:
    """COCO's train2014 file name of an image id."""
    return f"COCO_train2014_{image_id:012d}.jpg"


def write_refer(root: Path, dataset: str = "refcoco", split_by: str = "unc",
                refs: list[tuple[int, str, list[str]]] | None = None,
                file_names: dict[int, str] | None = None) -> Path:
    """``root/<dataset>/refs(<split_by>).p`` (py2 byte strings) + ``instances.json``."""
    out: list[dict[str, Any]] = []
    sent_id = 0
    for ref_id, (ann_id, split, raws) in enumerate(REFS if refs is None else refs):
        sents = []
        for raw in raws:
            sents.append({"raw": raw, "sent": raw.lower(), "tokens": raw.lower().split(),
                          "sent_id": sent_id})
            sent_id += 1
        image_id = ANNS[ann_id][0]
        out.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                    # the ref's file_name: the image's plus an annotation-id suffix, no file
                    "file_name": coco_file(image_id)[:-4] + f"_{ann_id}.jpg",
                    "category_id": 1, "sent_ids": [s["sent_id"] for s in sents],
                    "sentences": sents})
    d = root / dataset
    d.mkdir(parents=True, exist_ok=True)
    (d / f"refs({split_by}).p").write_bytes(py2_dumps(_to_py2_str(out)))
    names = file_names or {}
    (d / "instances.json").write_text(json.dumps({
        "images": [{"id": i, "width": w, "height": h, "file_name": names.get(i, coco_file(i))}
                   for i, (w, h) in IMAGES.items()],
        "annotations": [{"id": a, "image_id": i, "bbox": b, "category_id": 1, "iscrowd": 0,
                         "area": b[2] * b[3]} for a, (i, b) in ANNS.items()],
        "categories": [{"id": 1, "name": "thing"}]}))
    return root


def pth_items(split: str, refs: list[tuple[int, str, list[str]]] | None = None) -> list[tuple]:
    """The one-stage tuples of `split`, as DMS / one-stage grounding wrote them."""
    return [(coco_file(ANNS[a][0]), f"{a}.pth", list(ANNS[a][1]), raw.lower(), [])
            for a, s, raws in (REFS if refs is None else refs) if s == split for raw in raws]


def write_pth(root: Path, name: str = "unc", splits: tuple[str, ...] = ("train", "val", "testA",
              "testB"), *, legacy: bool = False) -> Path:
    """``root/data/<name>/<name>_<split>.pth`` in torch's zip (default) or legacy format."""
    import torch

    d = root / "data" / name
    d.mkdir(parents=True, exist_ok=True)
    for split in splits:
        torch.save(pth_items(split), d / f"{name}_{split}.pth",
                   _use_new_zipfile_serialization=not legacy)
    return root


def write_images(root: Path, folder: str = COCO_DIR) -> Path:
    """Tiny JPEGs of the fixture's sizes under `folder`."""
    from PIL import Image

    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    for i, wh in IMAGES.items():
        Image.new("RGB", wh, (i % 255, 80, 160)).save(d / coco_file(i))
    return root
