"""SimREC's, SeqTR's and MDETR's json forms give the refer form's records, on fixtures written here."""

from __future__ import annotations

import json

import pytest
from refcoco_forms import ANNS, COUNTS, IMAGES, REFS, coco_file, write_images, write_refer
from refcoco_json_forms import (
    mdetr_data,
    seqtr_data,
    simrec_data,
    write_mdetr,
    write_seqtr,
    write_simrec,
)

from vgkit.data.refcoco import detect_format, load_flickr30k, load_refcoco
from vgkit.data.validate import UnsafePathError, check_index
from vgkit.errors import VgkitError


def key(r, ref_id=True):
    """Everything a record holds; without ref_id where a form has another id or none."""
    return (r.image_id, r.image_path, r.width, r.height, r.box, r.phrase, r.tokens, r.split,
            *((r.ref_id,) if ref_id else ()), r.sent_id)


@pytest.fixture
def refer(tmp_path):
    """The refer form's records of the fixture, the reference every json form must give."""
    return load_refcoco(write_images(write_refer(tmp_path / "refer")), format="refer")


def test_mdetr_gives_the_refer_records(tmp_path, refer):
    root = write_images(write_mdetr(tmp_path))
    ix = load_refcoco(root, format="mdetr")
    assert (ix.source, ix.meta["format"]) == ("mdetr", "mdetr") and ix.splits() == COUNTS
    # image entries carry the COCO image id and the annotation its ann id: every field equal
    assert [key(r) for r in ix] == [key(r) for r in refer]
    assert ix.meta["notes"] == refer.meta["notes"] and check_index(ix).ok


def test_simrec_gives_the_refer_records(tmp_path, refer):
    root = write_images(write_simrec(tmp_path))
    ix = load_refcoco(root, format="simrec")
    assert ix.splits() == COUNTS and ix.meta["problems"]["counts"] == {}
    # train items hold a ref's sentences, the others one each: sent_id counts them alike
    assert [key(r, False) for r in ix] == [key(r, False) for r in refer]  # sizes: JPEG headers
    # mask_id is refer's ref_id (the position in refs(unc).p), not the annotation id
    ref_ids = [str(i) for i, (_, s, raws) in enumerate(REFS) if s in ("train", "val")
               for _ in raws]
    assert [r.ref_id for r in ix if r.split == "trainval"] == ref_ids
    assert any("does not say which split_by" in n for n in ix.meta["notes"])


def test_simrec_without_images_has_no_sizes(tmp_path):
    ix = load_refcoco(write_simrec(tmp_path), format="simrec")
    assert {(r.width, r.height) for r in ix} == {(0, 0)}
    assert any("size unknown" in n for n in ix.meta["notes"])


def test_seqtr_gives_the_refer_records(tmp_path, refer):
    ix = load_refcoco(write_seqtr(tmp_path), format="seqtr")  # sizes from the items
    assert [key(r, False) for r in ix] == [key(r, False) for r in refer]
    assert {r.ref_id for r in ix} == {""}  # the form names no region
    assert any("1 val sentences repeat an earlier one of the same image and box" in n
               for n in ix.meta["notes"])


def test_auto_and_json_find_each_form(tmp_path):
    for fmt, write in (("simrec", write_simrec), ("seqtr", write_seqtr),
                       ("mdetr", write_mdetr)):
        root = write(tmp_path / fmt)
        assert detect_format(root) == fmt
        assert load_refcoco(root, format="json").source == fmt
        assert load_refcoco(root).source == fmt
    # refer and pth come first when a root holds several forms
    both = write_simrec(write_refer(tmp_path / "both"))
    assert detect_format(both) == "refer"
    with pytest.raises(VgkitError, match=r"no refcoco \(unc\) json form found.*anns/refcoco"
                                         r"\.json \(SimREC\) or refcoco-unc/instances\.json"):
        load_refcoco(write_refer(tmp_path / "none"), format="json")
    with pytest.raises(VgkitError, match=r"no refcoco \(unc\) annotations found.*MDETR"):
        load_refcoco(tmp_path / "none" / "refcoco")


def test_other_datasets_and_split_bys(tmp_path):
    root = write_seqtr(tmp_path, "refcocog-google", {"train": seqtr_data()["train"]})
    ix = load_refcoco(root, "refcocog", "seqtr", "google")
    assert ix.splits() == {"train": 3} and ix.meta["split_by"] == "google"
    write_simrec(tmp_path, "refclef", {"testC": [{"iid": 25, "bbox": [1, 2, 3, 4],
                                                  "refs": ["rock"], "mask_id": 9}]})
    (r,) = load_refcoco(tmp_path, "refclef", "simrec").records
    # SimREC and SeqTR keep ReferIt's images flat: <id>.jpg, not refer's nested file_name
    assert (r.image_path, r.ref_id, r.split) == ("images/saiapr_tc-12/25.jpg", "9", "testC")
    with pytest.raises(VgkitError, match=r"MDETR's files hold .* not refcocog \(google\)"):
        load_refcoco(tmp_path, "refcocog", "mdetr", "google")
    with pytest.raises(VgkitError, match=r"SeqTR has no refcoco \(google\) annotations"):
        load_refcoco(tmp_path, "refcoco", "seqtr", "google")
    with pytest.raises(VgkitError, match=r"SimREC's json form is read for .* not flickr30k"):
        load_flickr30k(tmp_path, format="simrec")
    with pytest.raises(VgkitError, match=r"no anns/refcoco\+\.json \(SimREC\)"):
        load_refcoco(tmp_path, "refcoco+", "simrec")
    with pytest.raises(VgkitError, match="no refcoco split 'test'; available: testA"):
        load_refcoco(write_simrec(tmp_path / "s"), format="simrec", splits=["test"])


def test_mdetr_pretraining_file_keeps_its_set(tmp_path):
    d = tmp_path / "mdetr_annotations"
    d.mkdir()
    coco, plus = mdetr_data("val"), mdetr_data("val", "refcoco+", 50, 50)
    both = {**coco, "images": coco["images"] + plus["images"],
            "annotations": coco["annotations"] + plus["annotations"]}
    (d / "final_refexp_val.json").write_text(json.dumps(both))
    ix = load_refcoco(tmp_path, format="mdetr")
    assert ix.splits() == {"val": 2}
    assert "2 entries of other sets left out (refcoco+ 2)" in ix.meta["notes"]
    assert load_refcoco(tmp_path, "refcoco+", "mdetr").splits() == {"val": 2}


def test_seqtr_flickr30k_equals_pth(tmp_path):
    import torch

    items = [(1000, [1, 2, 30, 40], "a man"), (1000, [1, 2, 30, 40], "a man"),
             (1000, [0, 0, 5, 5], "a dog"), (2000, [3, 3, 9, 9], "sea")]
    (tmp_path / "data" / "flickr").mkdir(parents=True)
    torch.save([(f"{i}.jpg", b, s) for i, b, s in items],  # xyxy
               tmp_path / "data/flickr/flickr_val.pth")
    xywh = [{"image_id": i, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "expressions": [s]}
            for i, b, s in items]
    write_seqtr(tmp_path / "s", "flickr30k", {"val": xywh})
    pth, seqtr = load_flickr30k(tmp_path), load_flickr30k(tmp_path / "s")
    assert (pth.source, seqtr.source) == ("pth", "seqtr")
    assert [key(r) for r in seqtr] == [key(r) for r in pth]
    assert seqtr.records[1].sent_id == 1  # counted per image, as the pth form counts
    from vgkit.data import builtin
    from vgkit.registry import Registry

    reg = Registry()
    builtin.vgkit_register(reg)
    both = write_seqtr(tmp_path, "flickr30k", {"val": xywh})  # pth first, unless asked
    assert reg.build("dataset", "flickr30k", {}, root=both).source == "pth"
    assert reg.build("dataset", "flickr30k", {"format": "seqtr"}, root=both).source == "seqtr"


def _expect(match, load, exc=VgkitError):
    with pytest.raises(exc, match=match) as e:
        load()
    assert "\n" not in str(e.value)  # one line


@pytest.mark.parametrize("bad", ["/etc/passwd", "../../etc/passwd.jpg", "C:\\x.jpg"])
def test_hostile_mdetr_file_name(tmp_path, bad):
    write_mdetr(tmp_path)
    p = tmp_path / "mdetr_annotations" / "finetune_refcoco_val.json"
    data = json.loads(p.read_text())
    data["images"][1]["file_name"] = bad
    p.write_text(json.dumps(data))
    _expect(r"finetune_refcoco_val\.json: images\[1\] \(image 2\): image path .* "
            r"relative to the dataset root", lambda: load_refcoco(tmp_path, format="mdetr"),
            UnsafePathError)


@pytest.mark.parametrize(("fmt", "edit", "match"), [
    ("simrec", lambda d: d["train"][1].update(bbox="0,0,50,50"),
     r"refcoco\.json: train\[1\]: 'bbox' must be one box \[x, y, w, h\], got '0,0,50,50'"),
    ("simrec", lambda d: d["val"][0].update(bbox=[[0, 0, 5, 5]]),
     r"val\[0\]: 'bbox' must be one box"),
    ("simrec", lambda d: d["val"][0].update(iid="../../etc/passwd"),
     r"val\[0\]: 'iid' must be an integer image id, got '\.\./\.\./etc/passwd'"),
    ("simrec", lambda d: d["testA"][0].pop("refs"), r"testA\[0\]: missing key 'refs'"),
    ("seqtr", lambda d: d["testB"][0].pop("image_id"),
     r"instances\.json: testB\[0\]: missing key 'image_id'"),
    ("seqtr", lambda d: d["train"][0].update(expressions="the red car"),
     r"train\[0\]: 'expressions' must be a list of sentences"),
    ("seqtr", lambda d: d["train"].append(7), r"train\[2\]: expected an object, got int 7"),
    ("seqtr", lambda d: d.update(val={"a": 1}), "expected an object split -> list of items"),
])
def test_malformed_split_lists(tmp_path, fmt, edit, match):
    data = simrec_data() if fmt == "simrec" else seqtr_data()
    edit(data)
    root = (write_simrec if fmt == "simrec" else write_seqtr)(tmp_path, data=data)
    _expect(match, lambda: load_refcoco(root, format=fmt))


def test_malformed_mdetr_and_json(tmp_path):
    write_mdetr(tmp_path)
    p = tmp_path / "mdetr_annotations" / "finetune_refcoco_testA.json"
    data = json.loads(p.read_text())
    data["annotations"].append({**data["annotations"][0], "id": 999})
    p.write_text(json.dumps(data))
    _expect(r"testA\.json: images\[0\]: 2 annotations for one caption",
            lambda: load_refcoco(tmp_path, format="mdetr"))
    data["annotations"] = [{"bbox": [0, 0, 1, 1]}]
    p.write_text(json.dumps(data))
    _expect(r"testA\.json: annotations\[0\]: missing key 'image_id'",
            lambda: load_refcoco(tmp_path, format="mdetr"))
    p.write_text(json.dumps([data]))
    _expect("expected a COCO-style object", lambda: load_refcoco(tmp_path, format="mdetr"))
    p.write_text("{\"images\": [")
    _expect(r"testA\.json: invalid JSON", lambda: load_refcoco(tmp_path, format="mdetr"))


def test_data_problems_are_counted(tmp_path):
    data = seqtr_data()
    data["train"][0]["bbox"] = [5, 5, 0, 3]  # no area: both sentences skipped
    data["val"][0]["expressions"] = ["  "]
    ix = load_refcoco(write_seqtr(tmp_path, data=data), format="seqtr",
                      splits=["train", "val", "testA", "testB"])  # trainval would count again
    assert ix.meta["problems"]["counts"] == {"degenerate_box": 2, "empty_phrase": 1}
    assert ix.splits()["train"] == COUNTS["train"] - 2
    with pytest.raises(VgkitError, match=r"data problem \(degenerate_box\).*strict"):
        load_refcoco(tmp_path, format="seqtr", strict=True)
    data = mdetr_data("val")
    data["annotations"] = data["annotations"][1:]  # a caption without its box
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "finetune_refcoco_val.json").write_text(json.dumps(data))
    ix = load_refcoco(tmp_path / "m", format="mdetr")
    assert ix.meta["problems"]["counts"] == {"missing_box": 1} and len(ix) == 1


def test_fixture_matches_refer():
    # the writers follow refer's data: every sentence once per form
    assert sum(len(i["refs"]) for v in simrec_data().values() for i in v) == sum(
        len(raws) for _, _, raws in REFS)
    assert {i["image_id"] for v in seqtr_data().values() for i in v} <= set(IMAGES)
    assert mdetr_data("train")["images"][0]["file_name"] == coco_file(ANNS[1241][0])
