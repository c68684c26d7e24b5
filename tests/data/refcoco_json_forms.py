"""Write the refcoco_forms fixture in the json forms other code bases pass around.

Each writer follows the code that writes or reads the form:
SimREC's ``data/data_process.py`` (``prepare_dataset``), SeqTR's
``seqtr/datasets/pipelines/loading.py`` (the keys it reads; the script that wrote
SeqTR's files is not published) and MDETR's ``scripts/fine-tuning/refexp_coco_format.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refcoco_forms import ANNS, IMAGES, REFS, coco_file

SPLITS = ("train", "val", "testA", "testB")


def _refs(split: str) -> list[tuple[int, int, list[str]]]:
    """(refer ref_id, ann id, sentences as refer's "sent") of `split`, in refer's order."""
    return [(ref_id, a, [r.lower() for r in raws])
            for ref_id, (a, s, raws) in enumerate(REFS) if s == split]


def simrec_data() -> dict[str, list[dict[str, Any]]]:
    """data_process.py's json: train items are refs, the other splits one item per sentence."""
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        items = []
        for ref_id, a, sents in _refs(split):
            base = {"iid": ANNS[a][0], "bbox": list(ANNS[a][1]), "cat_id": 0, "mask_id": ref_id}
            groups = [sents] if split == "train" else [[s] for s in sents]
            items += [{**base, "refs": g} for g in groups]
        out[split] = items
    return out


def write_simrec(root: Path, dataset: str = "refcoco", data: Any = None) -> Path:
    """``root/anns/<dataset>.json`` (SimREC's ``--output_dir``)."""
    (root / "anns").mkdir(parents=True, exist_ok=True)
    (root / "anns" / f"{dataset}.json").write_text(json.dumps(
        simrec_data() if data is None else data))
    return root


def seqtr_data() -> dict[str, list[dict[str, Any]]]:
    """SeqTR's instances.json: train items hold a ref's expressions, the others one each."""
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        items = []
        for _, a, sents in _refs(split):
            iid = ANNS[a][0]
            w, h = IMAGES[iid]
            base = {"image_id": iid, "bbox": list(ANNS[a][1]), "width": w, "height": h,
                    "category_id": 1}
            groups = [sents] if split == "train" else [[s] for s in sents]
            items += [{**base, "expressions": g} for g in groups]
        out[split] = items
    return out


def write_seqtr(root: Path, name: str = "refcoco-unc", data: Any = None) -> Path:
    """``root/annotations/<name>/instances.json``."""
    d = root / "annotations" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "instances.json").write_text(json.dumps(seqtr_data() if data is None else data))
    return root


def mdetr_data(split: str, dataset: str = "refcoco", next_img_id: int = 0,
               next_id: int = 0) -> dict[str, Any]:
    """refexp_coco_format.py's ``convert``: one image entry and one annotation per sentence."""
    images, annotations = [], []
    for _, a, sents in _refs(split):
        iid, bbox = ANNS[a]
        w, h = IMAGES[iid]
        ref_file = coco_file(iid)[:-4] + f"_{a}.jpg"  # refer's ref file_name
        for sent in sents:
            images.append({"file_name": "_".join(ref_file.split("_")[:-1]) + ".jpg",
                           "height": h, "width": w, "id": next_img_id, "original_id": iid,
                           "caption": sent, "dataset_name": dataset, "tokens_negative": []})
            annotations.append({"area": bbox[2] * bbox[3], "iscrowd": 0,
                                "image_id": next_img_id, "category_id": 1, "id": next_id,
                                "bbox": list(bbox), "original_id": a, "tokens_positive": []})
            next_img_id += 1
            next_id += 1
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "thing"}]}


def write_mdetr(root: Path, dataset: str = "refcoco") -> Path:
    """``root/mdetr_annotations/finetune_<dataset>_<split>.json`` for every split."""
    d = root / "mdetr_annotations"
    d.mkdir(parents=True, exist_ok=True)
    for k, split in enumerate(SPLITS):
        (d / f"finetune_{dataset}_{split}.json").write_text(json.dumps(
            mdetr_data(split, dataset, 100 * k, 100 * k)))
    return root
