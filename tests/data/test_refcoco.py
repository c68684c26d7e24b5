"""RefCOCO family (refer and one-stage pth forms) and Flickr30k, on fixtures the tests write."""

from __future__ import annotations

import os
import pickle

import pytest
from refcoco_forms import (
    ANNS,
    COCO_DIR,
    COUNTS,
    IMAGES,
    REFS,
    coco_file,
    pth_items,
    write_images,
    write_pth,
    write_refer,
)

from vgkit.data.index import DatasetIndex
from vgkit.data.refcoco import PUBLISHED, detect_format, load_flickr30k, load_refcoco
from vgkit.data.referit import load_referit
from vgkit.data.validate import UnsafePathError, check_index
from vgkit.errors import VgkitError


def key(r):
    """Everything a record holds (extra is empty here)."""
    return (r.image_id, r.image_path, r.width, r.height, r.box, r.phrase, r.tokens, r.split,
            r.ref_id, r.sent_id)


def test_refer_records_from_py2_pickle(tmp_path):
    root = write_refer(tmp_path)
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes(), encoding="bytes")
    assert refs[0][b"split"] == b"train" and refs[0][b"sentences"][0][b"raw"] == b"The red car"
    assert detect_format(root) == "refer"
    ix = load_refcoco(root)
    assert (ix.name, ix.source, ix.meta["split_by"]) == ("refcoco", "refer", "unc")
    assert ix.splits() == COUNTS and ix.meta["problems"]["counts"] == {}
    r = next(r for r in ix if r.ref_id == "1241" and r.sent_id == 0 and r.split == "train")
    # image from instances.json (the ref's file_name ..._1241.jpg is no file), box xywh
    assert r.image_path == f"{COCO_DIR}/COCO_train2014_000000581857.jpg"
    assert (r.image_id, r.width, r.height) == ("581857", 40, 30)
    assert r.box == (10.5, 2.25, 30.5, 18.0)
    assert r.phrase == "the red car"  # refer's "sent", the text the pth form holds
    assert [x.split for x in ix][:5] == ["train"] * 3 + ["val"] * 2  # published order
    assert ix.meta["published"] == PUBLISHED[("refcoco", "unc")]
    assert check_index(ix).ok


def test_refer_and_pth_give_the_same_records(tmp_path):
    root = write_images(write_pth(write_refer(tmp_path)))
    refer = load_refcoco(root, format="refer")
    pth = load_refcoco(root, format="pth")
    legacy = load_refcoco(write_pth(tmp_path / "legacy", legacy=True), format="pth")
    assert pth.source == "pth" and pth.meta["notes"] == refer.meta["notes"]
    assert [key(r) for r in refer] == [key(r) for r in pth]  # sizes from the JPEG headers
    # Without the images the pth form has no sizes: the same records but 0x0, noted.
    assert [key(r)[:2] + key(r)[4:] for r in legacy] == [key(r)[:2] + key(r)[4:] for r in refer]
    assert {(r.width, r.height) for r in legacy} == {(0, 0)}
    assert "size unknown" in legacy.meta["notes"][0]


def test_box_conventions_differ_by_form(tmp_path):
    import torch

    # The same four numbers in three one-stage files: COCO-based items are xywh,
    # Flickr30k's continuous xyxy as given, ReferIt's xyxy with an inclusive max.
    b = [10, 20, 30, 40]
    (tmp_path / "data" / "unc").mkdir(parents=True)
    torch.save([(coco_file(2), "5.pth", b, "a", [])], tmp_path / "data/unc/unc_val.pth")
    (tmp_path / "data" / "flickr").mkdir()
    torch.save([("1.jpg", b, "a")], tmp_path / "data/flickr/flickr_val.pth")
    torch.save([("1.jpg", "1_1.mat", b, "a", [])], tmp_path / "referit_val.pth")
    coco = load_refcoco(tmp_path, format="pth", splits=["val"]).records[0].box
    flickr = load_flickr30k(tmp_path, ["val"]).records[0].box
    referit = load_referit(tmp_path, "pth", ["val"]).records[0].box
    assert (coco, flickr, referit) == ((10, 20, 40, 60), (10, 20, 30, 40), (10, 20, 31, 41))


def test_trainval_and_splits(tmp_path):
    root = write_pth(write_refer(tmp_path))
    for fmt in ("refer", "pth"):
        ix = load_refcoco(root, format=fmt, splits=["trainval", "testB"])
        tv = [(r.ref_id, r.sent_id) for r in ix if r.split == "trainval"]
        assert tv == [(str(a), i) for a, s, raws in REFS if s in ("train", "val")
                      for i in range(len(raws))]
        with pytest.raises(VgkitError, match="no refcoco split 'test'" if fmt == "refer"
                           else "no unc split 'test'"):
            load_refcoco(root, format=fmt, splits=["test"])
    # A trainval file of its own is read as it is.
    import torch

    torch.save(pth_items("train"), root / "data/unc/unc_trainval.pth")
    assert load_refcoco(root, format="pth", splits=["trainval"]).splits() == {"trainval": 3}


def test_split_by_and_datasets(tmp_path):
    write_refer(tmp_path, "refcocog", "google", refs=[(7, "train", ["a"]), (9, "val", ["b"])])
    write_refer(tmp_path, "refcocog", "umd", refs=[(7, "train", ["a"]), (9, "test", ["b"])])
    assert load_refcoco(tmp_path, "refcocog").splits() == {"train": 1, "test": 1}
    g = load_refcoco(tmp_path, "refcocog", split_by="google")
    assert g.splits() == {"train": 1, "val": 1, "trainval": 2}
    with pytest.raises(VgkitError, match="no split_by 'unc'; choose one of umd, google"):
        load_refcoco(tmp_path, "refcocog", split_by="unc")
    with pytest.raises(VgkitError, match=r"no refcocog \(google\) annotations.*gref/gref_<split>"):
        load_refcoco(tmp_path / "refcocog", "refcocog", split_by="google")
    write_pth(tmp_path, "gref_umd", ("train",))  # gref_umd_train.pth is no gref split
    write_pth(tmp_path, "gref", ("val",))
    assert load_refcoco(tmp_path, "refcocog", "pth", "google").splits() == {"val": 2}
    with pytest.raises(VgkitError, match="unknown dataset 'refcoco-"):
        load_refcoco(tmp_path, "refcoco-")


def test_refclef_crop_ids_and_no_pth(tmp_path):
    write_refer(tmp_path, "refclef", "unc", refs=[(9, "testC", ["rock"])],
                file_names={3: "00/images/3.jpg"})
    # refclef refs name the crop: "<image>_<n>.jpg"
    from refcoco_forms import _to_py2_str, py2_dumps

    p = tmp_path / "refclef" / "refs(unc).p"
    refs = pickle.loads(p.read_bytes(), encoding="bytes")
    refs[0][b"file_name"] = b"3_2.jpg"
    p.write_bytes(py2_dumps(_to_py2_str(refs)))
    (r,) = load_refcoco(tmp_path, "refclef").records
    assert (r.ref_id, r.split) == ("3_2", "testC")
    assert r.image_path == "images/saiapr_tc-12/00/images/3.jpg"
    with pytest.raises(VgkitError, match=r"no one-stage pth form.*referit"):
        load_refcoco(tmp_path, "refclef", "pth", "berkeley")


def test_problems_and_repeats_named(tmp_path):
    root = write_refer(tmp_path, refs=[*REFS, (7, "train", ["  "])])
    # an image missing from instances.json: the ref is skipped, counted per sentence
    inst = root / "refcoco" / "instances.json"
    inst.write_text(inst.read_text().replace('"id": 3,', '"id": 33,'))
    ix = load_refcoco(root)
    assert ix.meta["problems"]["counts"] == {"empty_phrase": 2, "image_not_in_instances": 2}
    assert "image 3" in ix.meta["problems"]["examples"]["image_not_in_instances"][0]
    notes = " ".join(ix.meta["notes"])
    assert "1 val sentences repeat" in notes and "8#1 'small box'" in notes
    with pytest.raises(VgkitError, match=r"refcoco data problem \(image_not_in_instances\)"):
        load_refcoco(root, splits=["testA"], strict=True)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "C:\\x.jpg"])
def test_hostile_paths_refused(tmp_path, bad):
    import torch

    root = write_refer(tmp_path, file_names={2: bad})
    with pytest.raises(UnsafePathError, match=r"instances\.json: image 2: image path"):
        load_refcoco(root)
    (tmp_path / "data" / "unc").mkdir(parents=True)
    torch.save([(bad, "7.pth", [0, 0, 1, 1], "x", [])], tmp_path / "data/unc/unc_val.pth")
    with pytest.raises(UnsafePathError, match=r"unc_val\.pth: item 0: image path"):
        load_refcoco(tmp_path, format="pth")
    (tmp_path / "data" / "flickr").mkdir()
    torch.save([(bad, [0, 0, 1, 1], "x")], tmp_path / "data/flickr/flickr_val.pth")
    with pytest.raises(UnsafePathError, match=r"flickr_val\.pth: item 0"):
        load_flickr30k(tmp_path)
    with pytest.raises(UnsafePathError, match="image_dir option"):
        load_refcoco(root, image_dir="../elsewhere")


def test_malicious_files_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    root = write_refer(tmp_path)
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(VgkitError, match="refused to unpickle"):
        load_refcoco(root)
    (tmp_path / "data" / "flickr").mkdir(parents=True)
    torch.save([("1.jpg", [0, 0, 1, 1], Evil())], tmp_path / "data/flickr/flickr_test.pth")
    with pytest.raises(VgkitError, match="weights-only"):
        load_flickr30k(tmp_path)
    assert not marker.exists()


def test_flickr30k(tmp_path):
    import torch

    d = tmp_path / "data" / "flickr"
    d.mkdir(parents=True)
    items = [("1000.jpg", [1, 2, 30, 40], "a man"), ("1000.jpg", [1, 2, 30, 40], "a man"),
             ("1000.jpg", [0, 0, 5, 5], "a dog")]
    torch.save(items, d / "flickr_train.pth", _use_new_zipfile_serialization=False)  # legacy
    torch.save([("2000.jpg", [0, 0, 9, 9], "sea")], d / "flickr_val.pth")
    ix = load_flickr30k(tmp_path)
    assert ix.splits() == {"train": 3, "val": 1, "trainval": 4} and ix.source == "pth"
    r = ix.records[1]
    assert (r.image_id, r.image_path, r.ref_id, r.sent_id, r.box) == (
        "1000", "Flickr30k/flickr30k_images/1000.jpg", "", 1, (1.0, 2.0, 30.0, 40.0))
    assert ix.meta["published"] == {"train": 427_193, "val": 14_433, "test": 14_481}
    assert any("1 train sentences repeat an earlier one of the same image and box" in n
               for n in ix.meta["notes"])
    assert check_index(ix).ok  # a repeat has its own sent_id: kept, not a duplicate record
    other = load_flickr30k(tmp_path, ["val"], image_dir="flickr/imgs")
    assert other.records[0].image_path == "flickr/imgs/2000.jpg"
    with pytest.raises(VgkitError, match="pth form only"):
        load_refcoco(tmp_path, "flickr30k", "refer")


def test_fixture_is_consistent():
    assert {ANNS[a][0] for a, _, _ in REFS} <= set(IMAGES)
    assert sum(len(raws) for _, _, raws in REFS) == sum(v for k, v in COUNTS.items()
                                                         if k != "trainval")


def test_cli_prepare_prints_counts(tmp_path):
    from typer.testing import CliRunner

    from vgkit.cli.data import app

    root = write_images(write_pth(write_refer(tmp_path / "r")))
    run = CliRunner().invoke
    for fmt in ("refer", "pth"):
        res = run(app, ["prepare", "refcoco", "--root", str(root), "--split-by", "unc",
                        "--format", fmt, "--out", str(tmp_path / fmt)])
        assert res.exit_code == 0, res.output
        out = " ".join(res.output.split())
        assert f"refcoco (unc) ({fmt} form)" in out and "published" in out
        # split, expressions, images, published
        assert "train │ 3 │ 2 │ 120,624" in out and "testB │ 1 │ 1 │ 5,095" in out
        assert "val │ 2 │ 1 │ 10,834" in out and "trainval │ 5 │ 2 │" in out
        assert "images: all 3 found" in out and "1 val sentences repeat" in out
    a, b = (DatasetIndex.load(tmp_path / f) for f in ("refer", "pth"))
    assert [key(r) for r in a] == [key(r) for r in b]
    res = run(app, ["prepare", "refcoco", "--root", str(root), "--split-by", "google",
                    "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "no refcoco (google) annotations" in " ".join(res.output.split())
    res = run(app, ["prepare", "referit", "--root", str(root), "--split-by", "unc"])
    assert res.exit_code == 2 and "do not apply" in res.output


def test_registered_datasets(tmp_path):
    from vgkit.data import builtin
    from vgkit.registry import Registry

    reg = Registry()
    builtin.vgkit_register(reg)
    root = write_pth(write_refer(tmp_path))
    ix = reg.build("dataset", "refcoco", {"format": "pth", "split_by": "unc"}, root=root)
    assert ix.name == "refcoco" and ix.source == "pth" and ix.splits() == COUNTS
    write_refer(tmp_path, "refcoco+")
    assert reg.build("dataset", "refcoco+", {}, root=tmp_path).source == "refer"
    ix.save(tmp_path / "prepared")  # a prepared index wins over the raw files
    again = reg.build("dataset", "refcocog", {"index": str(tmp_path / "prepared")}, root=tmp_path)
    assert len(again) == len(ix)
    with pytest.raises(VgkitError, match="does not exist"):
        reg.build("dataset", "flickr30k", {"image_dir": "imgs"}, root=tmp_path / "nope")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="splitby"):  # options are checked by name
        reg.build("dataset", "refcoco", {"splitby": "unc"}, root=root)


def test_flickr_numpy_boxes(tmp_path):
    import numpy as np
    import torch

    # process_flickr stored each box as a row of a numpy array; files of that era name
    # numpy.core.multiarray (numpy 1.x), today's numpy._core.
    d = tmp_path / "data" / "flickr"
    d.mkdir(parents=True)
    torch.save([("7.jpg", np.array([1.5, 2, 30, 40]), "a man")], d / "flickr_test.pth",
               _use_new_zipfile_serialization=False)
    raw = (d / "flickr_test.pth").read_bytes()
    assert b"numpy._core.multiarray" in raw
    (d / "flickr_val.pth").write_bytes(raw.replace(b"numpy._core.multiarray",
                                                   b"numpy.core.multiarray"))
    ix = load_flickr30k(tmp_path)
    assert [(r.split, r.box) for r in ix] == [("val", (1.5, 2.0, 30.0, 40.0)),
                                              ("test", (1.5, 2.0, 30.0, 40.0))]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    box = np.empty(4, dtype=object)
    box[:] = [0, 0, 1, Evil()]  # an object array: its items still go through the allowlist
    torch.save([("7.jpg", box, "x")], d / "flickr_test.pth")
    with pytest.raises(VgkitError, match=r"flickr_test\.pth: cannot load.*posix\.system"):
        load_flickr30k(tmp_path)
    assert not marker.exists()
