"""vgkit.data.convert: load form A, write form B, load B: the same records."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import pytest
from refcoco_forms import COUNTS, pth_items, write_images, write_pth, write_refer

from vgkit.data.convert import convert_index
from vgkit.data.index import DatasetIndex, Record
from vgkit.data.refcoco import load_flickr30k, load_refcoco
from vgkit.data.referit import load_referit
from vgkit.data.safe_pickle import safe_load
from vgkit.errors import UnknownNameError, VgkitError
from vgkit.fsutil import FolderLockedError

SPLITS = ("train", "val", "testA", "testB")


def key(r, sizes=True):
    return (r.image_id, r.image_path, *((r.width, r.height) if sizes else ()), r.box, r.phrase,
            r.tokens, r.split, r.ref_id, r.sent_id)


@pytest.fixture
def refer_root(tmp_path):
    return write_images(write_refer(tmp_path / "src"))


def test_refer_to_pth_writes_what_transvg_reads(tmp_path, refer_root):
    import torch

    refer = load_refcoco(refer_root, format="refer")
    done = convert_index(refer, "pth", tmp_path / "out" / "data")
    assert [p.name for p in done.files] == [f"unc_{s}.pth" for s in SPLITS]
    assert done.counts == {k: v for k, v in COUNTS.items() if k != "trainval"}
    # the files one-stage grounding's builder wrote, item for item; weights-only loadable
    for split in SPLITS:
        path = tmp_path / "out" / "data" / "unc" / f"unc_{split}.pth"
        assert torch.load(path, weights_only=True) == pth_items(split)
    notes = " ".join(done.notes)
    assert "relative to 'images/mscoco/images/train2014'" in notes
    assert "no image sizes" in notes and "trainval (5 expressions) not written" in notes
    back = load_refcoco(write_images(tmp_path / "out"), format="pth")
    assert [key(r) for r in back] == [key(r) for r in refer]


def test_refer_to_refer_and_coco_round_trip(tmp_path, refer_root):
    refer = load_refcoco(refer_root, format="refer")
    done = convert_index(refer, "refer", tmp_path / "r")
    assert [p.name for p in done.files] == ["refs(unc).p", "instances.json"]
    refs = safe_load(tmp_path / "r" / "refcoco" / "refs(unc).p")  # builtins only
    assert refs[0]["ann_id"] == 1241 and refs[0]["image_id"] == 581857
    assert refs[0]["file_name"] == "COCO_train2014_000000581857_1241.jpg"
    assert [s["sent"] for s in refs[0]["sentences"]] == ["the red car", "car on the left"]
    again = load_refcoco(tmp_path / "r", format="refer")
    assert [key(r) for r in again] == [key(r) for r in refer]
    assert not any("made" in n for n in done.notes)  # every id was kept

    done = convert_index(refer, "coco", tmp_path / "c")
    assert sorted(p.name for p in done.files) == sorted(f"finetune_refcoco_{s}.json"
                                                        for s in SPLITS)
    coco = load_refcoco(tmp_path / "c", format="mdetr")
    assert [key(r) for r in coco] == [key(r) for r in refer]
    assert any("tokens_positive spans the whole caption" in n for n in done.notes)


def test_pth_to_refer_round_trip(tmp_path):
    root = write_images(write_pth(tmp_path / "src"))
    pth = load_refcoco(root, format="pth")
    convert_index(pth, "refer", tmp_path / "r")
    back = load_refcoco(write_images(tmp_path / "r"), format="refer")
    assert [key(r) for r in back] == [key(r) for r in pth]


def test_flickr30k_pth_round_trip(tmp_path):
    import torch

    d = tmp_path / "src" / "data" / "flickr"
    d.mkdir(parents=True)
    items = [("1000.jpg", [1.0, 2.0, 30.0, 40.0], "a man"), ("1000.jpg", [1.0, 2.0, 30.0, 40.0],
             "a man"), ("1000.jpg", [0.0, 0.0, 5.0, 5.0], "a dog")]
    torch.save(items, d / "flickr_train.pth")
    torch.save([("2000.jpg", [0.0, 0.0, 9.0, 9.0], "sea")], d / "flickr_test.pth")
    ix = load_flickr30k(tmp_path / "src")
    done = convert_index(ix, "pth", tmp_path / "out")
    assert torch.load(tmp_path / "out/flickr/flickr_train.pth", weights_only=True) == items
    assert not any("region ids" in n for n in done.notes)  # the layout names no region
    back = load_flickr30k(tmp_path / "out")
    assert [key(r) for r in back] == [key(r) for r in ix]


def test_prepared_index_to_pth(tmp_path, refer_root):
    refer = load_refcoco(refer_root, format="refer")
    refer.save(tmp_path / "prepared")
    prepared = DatasetIndex.load(tmp_path / "prepared")
    convert_index(prepared, "pth", tmp_path / "out")  # name and image folder from the manifest
    back = load_refcoco(write_images(tmp_path / "out"), format="pth")
    assert [key(r) for r in back] == [key(r) for r in refer]


def own_index():
    """A hand-made index: no ref ids, image ids that are no numbers, no sizes."""
    def rec(img, box, phrase, split, sent_id=0):
        return Record(image_id=img, image_path=f"photos/{img}.jpg", width=0, height=0,
                      box=box, phrase=phrase, tokens=tuple(phrase.split()), split=split,
                      sent_id=sent_id)
    return DatasetIndex([rec("cat", (1.0, 2.0, 11.0, 22.0), "the cat", "train"),
                         rec("cat", (1.0, 2.0, 11.0, 22.0), "a cat", "train", 1),
                         rec("cat", (5.0, 5.0, 6.0, 6.0), "the eye", "train"),
                         rec("dog", (0.0, 0.0, 4.0, 4.0), "dog", "val", 3)], name="pets")


def test_own_data_to_pth_and_refer(tmp_path):
    import torch

    done = convert_index(own_index(), "pth", tmp_path / "data")
    items = torch.load(tmp_path / "data/pets/pets_train.pth", weights_only=True)
    assert items[0] == ("cat.jpg", "cat_1.pth", [1.0, 2.0, 10.0, 20.0], "the cat", [])
    assert [i[1] for i in items] == ["cat_1.pth", "cat_1.pth", "cat_2.pth"]
    notes = " ".join(done.notes)
    assert "relative to 'photos'" in notes
    assert "4 expressions have no ref_id: 3 region ids <image>_<n> made" in notes
    assert "1 sent_ids read back as the sentence's position" in notes  # dog's sent_id 3

    done = convert_index(own_index(), "refer", tmp_path / "r", split_by="mine")
    refs = pickle.loads((tmp_path / "r/pets/refs(mine).p").read_bytes())
    assert [(r["ref_id"], r["image_id"], r["split"], len(r["sentences"])) for r in refs] == [
        (0, 1, "train", 2), (1, 1, "train", 1), (2, 2, "val", 1)]
    notes = " ".join(done.notes)
    assert "2 image ids and 3 annotation ids made" in notes
    assert "2 images have no size in the index: written as 0" in notes


def test_referit_layout(tmp_path):
    def rec(crop, box, phrase, sent_id):
        return Record(image_id=crop.split("_")[0], image_path=f"images/{crop.split('_')[0]}.jpg",
                      width=50, height=50, box=box, phrase=phrase, tokens=(phrase,),
                      split="test", ref_id=crop, sent_id=sent_id)
    ix = DatasetIndex([rec("3_2", (10.0, 20.0, 31.0, 41.0), "rock", 0),
                       rec("3_2", (10.0, 20.0, 31.0, 41.0), "stone", 1)], name="referit",
                      meta={"image_dir": "images"})
    import torch

    convert_index(ix, "pth", tmp_path)
    # one-stage ReferIt boxes are inclusive: [10, 20, 30, 40] is the box to x2 = 31
    assert torch.load(tmp_path / "referit/referit_test.pth", weights_only=True)[0] == (
        "3.jpg", "3_2.mat", [10.0, 20.0, 30.0, 40.0], "rock", [])
    back = load_referit(tmp_path / "referit", "pth", ["test"])
    assert [key(r, False) for r in back] == [key(r, False) for r in ix]
    # TransVG reads referit_trainval.pth itself (it joins train and val for the others)
    tv = DatasetIndex([dataclasses.replace(r, split=s) for s in ("train", "val", "trainval")
                       for r in ix.records[:1]], name="referit")
    done = convert_index(tv, "pth", tmp_path / "tv")
    assert sorted(p.name for p in done.files) == ["referit_train.pth", "referit_trainval.pth",
                                                  "referit_val.pth"]
    assert len(convert_index(tv, "pth", tmp_path / "u", name="unc").files) == 2


def test_real_referit_val_through_pth(tmp_path, real_dir):
    hu = load_referit(real_dir, "hu", ["val"])
    done = convert_index(hu, "pth", tmp_path)
    assert done.counts == {"val": len(hu)}
    (tmp_path / "referit" / "referit_imsize.json").symlink_to(real_dir / "referit_imsize.json")
    back = load_referit(tmp_path / "referit", "pth", ["val"])
    assert [key(r) for r in back] == [key(r) for r in hu]


def test_overwrite_needs_force(tmp_path, refer_root):
    refer = load_refcoco(refer_root, format="refer")
    convert_index(refer, "coco", tmp_path)
    first = (tmp_path / "finetune_refcoco_val.json").read_text()
    with pytest.raises(VgkitError, match=r"finetune_refcoco_\w+\.json exists \(and 3 more\); "
                                         r"pass --force"):
        convert_index(refer, "coco", tmp_path, name="refcoco")
    convert_index(refer.split("val"), "coco", tmp_path, force=True)
    assert (tmp_path / "finetune_refcoco_val.json").read_text() != first  # ids restart at 0
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary left


def test_bad_requests_are_one_line(tmp_path, refer_root):
    refer = load_refcoco(refer_root, format="refer")
    out = tmp_path / "out"
    with pytest.raises(UnknownNameError, match="conversion target 'tsv'"):
        convert_index(refer, "tsv", out)
    with pytest.raises(VgkitError, match=r"name '\.\./x' cannot name the files"):
        convert_index(refer, "pth", out, name="../x")
    with pytest.raises(VgkitError, match=r"record 0 \(train, image 581857\): image "
                                         r"'images/mscoco.*' is not under the image folder 'x'"):
        convert_index(refer, "pth", out, image_dir="x")
    with pytest.raises(VgkitError, match="image_dir option: image path '/abs'"):
        convert_index(refer, "pth", out, image_dir="/abs")
    with pytest.raises(VgkitError, match="no valid expressions to write"):
        convert_index(DatasetIndex([], name="refcoco"), "pth", out)
    assert not out.exists()


def test_invalid_records_left_out_and_counted(tmp_path):
    ix = own_index()
    bad = ix.records[0]
    ix = DatasetIndex([*ix.records, dataclasses.replace(bad, box=(5.0, 5.0, 5.0, 9.0), sent_id=7)],
                      name=ix.name, source=ix.source, meta=ix.meta)
    done = convert_index(ix, "coco", tmp_path)
    assert "left out 1 invalid of 5 records: degenerate_box 1" in done.notes
    assert done.counts == {"train": 3, "val": 1}


def test_second_writer_is_refused(tmp_path, refer_root):
    refer = load_refcoco(refer_root, format="refer")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from vgkit.fsutil import folder_lock\n"
         f"with folder_lock({str(tmp_path)!r}, 'test holder'):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match="being written by another vgkit process"):
            convert_index(refer, "pth", tmp_path)
    finally:
        holder.communicate("")
    assert not (tmp_path / "unc").exists()
