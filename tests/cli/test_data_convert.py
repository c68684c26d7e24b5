"""``vgkit data convert`` and the json ``--format``s of ``vgkit data prepare``."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vgkit.cli.data import app
from vgkit.data.index import DatasetIndex, Record

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, text):
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    return res.exit_code == 2 and len(lines) == 1 and text in " ".join(res.output.split())


def own_index(path):
    """A hand-made index of one's own photos (no ref ids, no sizes)."""
    recs = [Record(image_id=i, image_path=f"photos/{i}.jpg", width=0, height=0, box=b,
                   phrase=p, tokens=tuple(p.split()), split=s)
            for i, b, p, s in [("cat", (1.0, 2.0, 11.0, 22.0), "the cat", "train"),
                               ("dog", (0.0, 0.0, 4.0, 4.0), "a dog", "val")]]
    DatasetIndex(recs, name="pets").save(path)
    return path


def test_convert_index_to_transvg_files(tmp_path):
    import torch

    idx = own_index(tmp_path / "idx")
    res = invoke("convert", idx, "--to", "pth", "--name", "mydata", "--out", tmp_path / "data")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "wrote 2 files (pth form)" in out and "train 1, val 1 expressions" in out
    assert "mydata_train.pth" in out and "note: image files named relative to 'photos'" in out
    assert "no image sizes" in out and "region ids <image>_<n> made" in out
    items = torch.load(tmp_path / "data/mydata/mydata_val.pth", weights_only=True)
    assert items == [("dog.jpg", "dog_1.pth", [0.0, 0.0, 4.0, 4.0], "a dog", [])]
    res = invoke("convert", idx, "--to", "pth", "--name", "mydata", "--out", tmp_path / "data")
    assert one_line_error(res, "mydata_train.pth exists (and 1 more); pass --force")
    res = invoke("convert", idx, "--to", "pth", "--name", "mydata", "--out", tmp_path / "data",
                 "--force", "--splits", "val")
    assert res.exit_code == 0 and "wrote 1 files" in res.output
    assert one_line_error(invoke("convert", idx, "--to", "tsv", "--out", tmp_path),
                          "unknown conversion target 'tsv'")


def test_prepare_simrec_and_convert_to_refer_round_trip(tmp_path):
    root = tmp_path / "simrec"
    (root / "anns").mkdir(parents=True)
    items = {"train": [{"iid": 7, "bbox": [1, 2, 10, 20], "refs": ["left man", "man"],
                        "mask_id": 31, "cat_id": 0}],
             "val": [{"iid": 9, "bbox": [0, 0, 5, 5], "refs": ["sky"], "mask_id": 40,
                      "cat_id": 0}]}
    (root / "anns" / "refcoco.json").write_text(json.dumps(items))
    res = invoke("prepare", "refcoco", "--root", root, "--format", "simrec", "--out",
                 tmp_path / "a")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "refcoco (unc) (simrec form)" in out and "train │ 2 │ 1 │ 120,624" in out
    res = invoke("convert", root, "--dataset", "refcoco", "--format", "json", "--to", "refer",
                 "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert "refs(unc).p" in res.output and "trainval (3 expressions) not written" in res.output
    res = invoke("prepare", "refcoco", "--root", tmp_path / "r", "--format", "refer", "--out",
                 tmp_path / "b")
    assert res.exit_code == 0, res.output
    a, b = (DatasetIndex.load(tmp_path / x) for x in "ab")
    assert [r.to_json() for r in a] == [r.to_json() for r in b]
    assert [r.ref_id for r in b][:2] == ["31", "31"]  # SimREC's mask_id kept as the ann id


def test_prepare_json_errors_are_one_line(tmp_path):
    (tmp_path / "anns").mkdir()
    (tmp_path / "anns" / "refcoco.json").write_text(json.dumps(
        {"val": [{"iid": 1, "bbox": "1 2 3 4", "refs": ["x"]}]}))
    res = invoke("prepare", "refcoco", "--root", tmp_path, "--format", "simrec")
    assert one_line_error(res, "refcoco.json: val[0]: 'bbox' must be one box [x, y, w, h], "
                               "got '1 2 3 4'")
    res = invoke("prepare", "refcocog", "--root", tmp_path, "--format", "mdetr",
                 "--split-by", "google")
    assert one_line_error(res, "MDETR's files hold refcoco (unc), refcoco+ (unc) and refcocog "
                               "(umd) only")
