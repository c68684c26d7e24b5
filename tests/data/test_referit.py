"""ReferIt in its three forms: synthetic edge cases, then the real split (env var)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
from referit_forms import (
    TINY_BOXES,
    TINY_QUERIES,
    TINY_SIZES,
    build_pth,
    build_refer,
    py2_dumps,
    write_hu,
    write_tiny_hu,
)

from vgkit.data.index import DatasetIndex
from vgkit.data.referit import PTH_SKIPPED_IMAGES, REFS_FILE, detect_format, load_referit
from vgkit.data.validate import check_index
from vgkit.errors import VgkitError

SPLIT_COUNTS = {"train": 54_134, "val": 5_842, "trainval": 59_976, "test": 60_105}


def key(r):
    """What the three forms must agree on."""
    return (r.image_id, r.ref_id, r.sent_id, r.box, r.phrase, r.split, r.width, r.height)


# --- synthetic, no real data needed -------------------------------------------------------

def test_tiny_hu_records(tmp_path):
    ix = load_referit(write_tiny_hu(tmp_path))
    assert ix.name == "referit" and ix.source == "hu" and ix.meta["problems"]["counts"] == {}
    assert ix.splits() == {"test": 3, "train": 4, "trainval": 5, "val": 1}
    r = next(r for r in ix if r.ref_id == "1_1" and r.sent_id == 1 and r.split == "train")
    assert (r.image_id, r.image_path, r.width, r.height) == ("1", "images/1.jpg", 100, 80)
    assert r.box == (10.0, 20.0, 30.0, 60.0)  # inclusive max + 1
    assert r.phrase == "car." and r.tokens == ("car",)
    one_px = next(r for r in ix if r.ref_id == "2_1")
    assert one_px.box == (5.0, 5.0, 6.0, 6.0)  # a single pixel is a valid 1x1 box
    tv = {(r.ref_id, r.sent_id) for r in ix if r.split == "trainval"}
    assert tv == {(r.ref_id, r.sent_id) for r in ix if r.split in ("train", "val")}


def test_tiny_three_forms_agree(tmp_path):
    hu = load_referit(write_tiny_hu(tmp_path / "hu"))
    refer = load_referit(build_refer(tmp_path / "hu", tmp_path / "refer"))
    refs = pickle.loads((tmp_path / "refer" / "refclef" / REFS_FILE).read_bytes(), encoding="bytes")
    assert b"ref_id" in refs[0] and refs[0][b"split"] == "train"  # py2 str keys, unicode text
    py2 = load_referit(build_refer(tmp_path / "hu", tmp_path / "refer2", py2_str=True))
    assert {key(r) for r in py2} == {key(r) for r in refer}
    pth = load_referit(build_pth(tmp_path / "hu", tmp_path / "pth"))
    assert refer.source == "refer" and pth.source == "pth"
    assert {key(r) for r in hu} == {key(r) for r in refer} == {key(r) for r in pth}
    img = next(r for r in refer if r.image_id == "4")
    assert img.image_path == "images/saiapr_tc-12/00/images/4.jpg"


def test_detect_format_and_subdirs(tmp_path):
    write_tiny_hu(tmp_path / "hu" / "annotations")
    assert detect_format(tmp_path / "hu") == "hu"
    build_refer(tmp_path / "hu" / "annotations", tmp_path / "refer" / "data")
    assert detect_format(tmp_path / "refer") == "refer"
    build_pth(tmp_path / "hu" / "annotations", tmp_path / "pth")
    assert detect_format(tmp_path / "pth") == "pth"
    (tmp_path / "empty").mkdir()
    with pytest.raises(VgkitError, match=r"referit_bbox\.json.*refs\(berkeley\)\.p.*\.pth"):
        detect_format(tmp_path / "empty")
    with pytest.raises(VgkitError, match="unknown ReferIt format 'coco'"):
        load_referit(tmp_path / "hu", format="coco")
    with pytest.raises(VgkitError, match="no refer-form"):
        load_referit(tmp_path / "hu", format="refer")
    with pytest.raises(VgkitError, match="no ReferIt split 'testA'"):
        load_referit(tmp_path / "hu", splits=("testA",))
    assert load_referit(tmp_path / "hu", splits="val").splits() == {"val": 1}


def _bad_layout(root: Path) -> Path:
    queries = {"train": {"1_1": ["ok phrase", "   "], "1_2": ["degenerate"],
                         "1_3": ["sticks out"], "1_4": ["far away"], "1_5": ["no box"]},
               "test": {"2_1": ["fine", "."]}}
    boxes = {"1_1": [0, 0, 9, 9], "1_2": [30, 10, 20, 40], "1_3": [90, 70, 120, 99],
             "1_4": [200, 200, 210, 210], "2_1": [0, 0, 1, 1]}
    write_hu(root, queries, boxes, {"1": [100, 80], "2": [10, 10]})
    # An undecodable byte in a phrase (latin-1 "é" written into a UTF-8 file).
    q = root / "referit_query_test.json"
    q.write_bytes(q.read_bytes().replace(b'"fine"', b'"caf\xe9"'))
    return root


def test_problems_counted_clipped_and_skipped(tmp_path):
    ix = load_referit(_bad_layout(tmp_path), splits=("train", "test"))
    counts = ix.meta["problems"]["counts"]
    assert counts == {"box_clipped": 1, "box_outside_image": 1, "degenerate_box": 1,
                      "empty_phrase": 2, "missing_box": 1, "non_utf8": 1}
    assert all(len(v) >= 1 for v in ix.meta["problems"]["examples"].values())
    assert sorted((r.ref_id, r.sent_id) for r in ix) == [("1_1", 0), ("1_3", 0), ("2_1", 0)]
    clipped = next(r for r in ix if r.ref_id == "1_3")
    assert clipped.box == (90.0, 70.0, 100.0, 80.0)
    bad_text = next(r for r in ix if r.ref_id == "2_1")
    assert bad_text.phrase == "caf\ufffd"
    for r in ix:
        assert 0 <= r.box[0] < r.box[2] <= r.width and 0 <= r.box[1] < r.box[3] <= r.height


@pytest.mark.parametrize(("drop", "kind"), [
    ((), "empty_phrase"),  # the first problem met in train
    (("1_1",), "degenerate_box"), (("1_1", "1_2"), "box_clipped"),
    (("1_1", "1_2", "1_3"), "box_outside_image"), (("1_1", "1_2", "1_3", "1_4"), "missing_box"),
])
def test_strict_mode(tmp_path, drop, kind):
    root = _bad_layout(tmp_path)
    q = root / "referit_query_train.json"
    data = {k: v for k, v in json.loads(q.read_text()).items() if k not in drop}
    q.write_text(json.dumps(data))
    with pytest.raises(VgkitError, match=f"{kind}.*strict"):
        load_referit(root, splits=("train",), strict=True)


def test_strict_non_utf8(tmp_path):
    with pytest.raises(VgkitError, match="non_utf8"):
        load_referit(_bad_layout(tmp_path), splits=("test",), strict=True)


def test_refer_non_utf8_and_malicious(tmp_path):
    root = build_refer(write_tiny_hu(tmp_path / "hu"), tmp_path / "refer")
    refs_path = root / "refclef" / REFS_FILE
    refs = pickle.loads(refs_path.read_bytes(), encoding="bytes")
    refs[0][b"sentences"][0][b"raw"] = b"caf\xe9"  # latin-1 bytes in a py2 str
    refs_path.write_bytes(py2_dumps(refs))
    ix = load_referit(root)
    # Counted per expression and split: the train phrase is in trainval too.
    assert ix.meta["problems"]["counts"] == {"non_utf8": 2}
    assert any(r.phrase == "caf\ufffd" for r in ix)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    refs_path.write_bytes(pickle.dumps([{"ref_id": 0, "sentences": [Evil()]}], protocol=2))
    with pytest.raises(VgkitError, match="refused to unpickle"):
        load_referit(root)
    assert not marker.exists()


def test_pth_weights_only_and_sizes(tmp_path):
    import torch
    from PIL import Image

    hu = write_tiny_hu(tmp_path / "hu")
    root = build_pth(hu, tmp_path / "pth", with_imsize=False)
    # The files are plain enough for torch's own weights-only loader.
    items = torch.load(root / "referit_train.pth", weights_only=True)
    assert items[0] == ("1.jpg", "1_1.mat", [10, 20, 29, 59], "the red car", [])
    (root / "images").mkdir()
    Image.new("RGB", tuple(TINY_SIZES["1"])).save(root / "images" / "1.jpg")
    ix = load_referit(root)
    sizes = {r.image_id: (r.width, r.height) for r in ix}
    assert sizes["1"] == (100, 80)  # read from the image header
    assert sizes["2"] == (0, 0) and "size unknown" in ix.meta["notes"][0]
    shutil.copy(hu / "referit_imsize.json", root / "referit_imsize.json")
    assert {(r.width, r.height) for r in load_referit(root) if r.image_id == "2"} == {(50, 50)}


def test_pth_malicious_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save([("1.jpg", "1_1.mat", [0, 0, 1, 1], Evil(), [])], tmp_path / "referit_train.pth")
    with pytest.raises(VgkitError, match="weights-only"):
        load_referit(tmp_path, splits=("train",))
    assert not marker.exists()


def test_tiny_boxes_and_queries_are_consistent():
    assert set(TINY_BOXES) == {c for q in TINY_QUERIES.values() for c in q}


# --- the real annotations ---------------------------------------------------------------



@pytest.fixture(scope="module")
def real_hu(real_dir) -> DatasetIndex:
    return load_referit(real_dir)


@pytest.fixture(scope="module")
def real_forms(real_dir, tmp_path_factory) -> dict[str, DatasetIndex]:
    tmp = tmp_path_factory.mktemp("referit-forms")
    return {"refer": load_referit(build_refer(real_dir, tmp / "refer")),
            "pth": load_referit(build_pth(real_dir, tmp / "pth"))}


def test_real_counts(real_dir, real_hu):
    assert detect_format(real_dir) == "hu"
    assert real_hu.splits() == SPLIT_COUNTS
    assert real_hu.meta["problems"]["counts"] == {} and real_hu.meta["notes"] == []


def test_real_boxes_inside_images(real_hu):
    for r in real_hu:
        assert r.width > 0 and r.height > 0, r
        assert 0 <= r.box[0] < r.box[2] <= r.width and 0 <= r.box[1] < r.box[3] <= r.height, r


def test_real_forms_agree(real_hu, real_forms):
    hu = {key(r) for r in real_hu}
    refer, pth = real_forms["refer"], real_forms["pth"]
    assert refer.splits() == SPLIT_COUNTS
    assert {key(r) for r in refer} == hu
    skipped = {s: set(PTH_SKIPPED_IMAGES.get(s, ())) for s in SPLIT_COUNTS}
    skipped["trainval"] = skipped["train"] | skipped["val"]
    expected = {k for k in hu if k[0] not in skipped[k[5]]}
    assert {key(r) for r in pth} == expected
    assert len(hu) - len(expected) == 16  # 7 + 7 (train, trainval) + 2 (test)
    for ix in (refer, pth):
        assert ix.meta["problems"]["counts"] == {} and ix.meta["notes"] == []


def test_real_forms_validate_clean(real_hu, real_forms):
    # 3,903 phrases repeat another player's phrase for the same region (another sent_id):
    # real annotations, so check_index must keep them and the standard counts stand.
    for ix in (real_hu, *real_forms.values()):
        t = time.perf_counter()
        check = check_index(ix)
        assert check.ok, check.summary()
        assert time.perf_counter() - t < 10  # ~1 s on one idle core; the CI machine is shared
    assert check_index(real_hu).valid(real_hu).splits() == SPLIT_COUNTS


def test_pth_with_tensor_boxes_uses_torch_loader(tmp_path):
    import torch

    # Tensors need torch's weights-only loader (the fast plain-data path refuses them).
    torch.save([("5.jpg", "5_1.mat", torch.tensor([1, 2, 3, 4]), "a cat", [])],
               tmp_path / "referit_test.pth")
    (tmp_path / "referit_imsize.json").write_text(json.dumps({"5.jpg": [10, 10]}))
    (r,) = load_referit(tmp_path, splits=("test",)).records
    assert (r.ref_id, r.sent_id, r.box, r.width) == ("5_1", 0, (1.0, 2.0, 4.0, 5.0), 10)
