"""``vgkit eval --splits ... --protocol ...``: one table, one JSON, each split's predictions."""

from __future__ import annotations

import json
import warnings

import pytest

from tests.reference_math import continuous_iou
from vgkit.cli import app
from vgkit.engine.report import percent


def _invoke(runner, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, [str(a) for a in args])


def _failed(res, text: str) -> bool:
    """A user error: exit status 2 and one ``error:`` line containing `text` literally."""
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    return res.exit_code == 2 and len(lines) == 1 and text in " ".join(res.output.split())


@pytest.fixture
def run(tiny_run, tmp_path):
    """The tiny run's files linked into a fresh folder: what eval writes lands here."""
    d = tmp_path / "run"
    d.mkdir()
    for f in tiny_run.run.iterdir():
        if not f.name.startswith(("eval-", "predictions-")):
            (d / f.name).symlink_to(f)
    return d



def test_splits_all_protocol_all_prints_one_table_and_writes_every_number(runner, run, tiny_run):
    res = _invoke(runner, "eval", "--checkpoint", run, "--splits", "all", "--protocol", "all",
                  "--device", "cpu")
    assert res.exit_code == 0, res.output
    data = json.loads((run / "eval-splits-val+test.json").read_text())
    assert data["splits"] == ["val", "test"] and data["dataset"] == "synthetic"
    assert list(data["protocols"]) == ["iou>=0.5", "iou>0.5", "giou>=0.5", "inclusive"]
    header = next(line for line in res.output.splitlines() if line.startswith("┃ split"))
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "split", "n", "scored", "iou>=0.5", "iou>0.5", "giou>=0.5", "inclusive", "mean IoU"]
    records = map(json.loads, (tiny_run.root / "records.jsonl").read_text().splitlines())
    images = {r["image_id"] for r in records if r["split"] in ("val", "test")}
    assert f"2 splits, one pass over {len(images)} images" in res.output
    for split in ("val", "test"):
        r = data["results"][split]
        assert r["scored"] == r["n"] and r["unscored"] == {}
        lines = [json.loads(x) for x in
                 (run / f"predictions-{split}.jsonl").read_text().splitlines()]
        assert data["predictions"][split] == str(run / f"predictions-{split}.jsonl")
        assert len(lines) == r["n"]
        v = [continuous_iou(x["pred"], x["gt"]) for x in lines]  # recomputed independently
        assert r["protocols"]["iou>=0.5"]["correct"] == sum(x >= 0.5 for x in v)
        assert r["protocols"]["iou>0.5"]["correct"] == sum(x > 0.5 for x in v)
        assert r["miou"] == pytest.approx(sum(v) / len(v), abs=1e-4)
        for p in data["protocols"]:
            assert r["protocols"][p]["acc"] == pytest.approx(r["protocols"][p]["correct"] / r["n"])
        row = next(line for line in res.output.splitlines() if line.strip("│┃ ").startswith(split))
        cells = [c.strip() for c in row.strip("│┃ ").split("│")]
        assert cells == [split, f"{r['n']:,}", f"{r['scored']:,}",
                         *(percent(r["protocols"][p]["acc"]) for p in data["protocols"]),
                         f"{r['miou']:.3f}"]
    assert not (run / "eval-test.json").exists()  # the one-split file is not overwritten


def test_one_split_with_protocols_adds_them_to_its_numbers(runner, run):
    res = _invoke(runner, "eval", "--checkpoint", run, "--split", "val", "--protocol",
                  "giou>=0.5,iou>0.5", "--device", "cpu")
    assert res.exit_code == 0, res.output
    data = json.loads((run / "eval-val.json").read_text())
    assert list(data["protocols"]) == ["giou>=0.5", "iou>0.5"]
    assert data["protocols"]["iou>0.5"]["acc"] <= data["acc@0.5"]
    assert "val under each protocol" in res.output
    plain = _invoke(runner, "eval", "--checkpoint", run, "--split", "val", "--device", "cpu")
    assert "protocols" not in json.loads((run / "eval-val.json").read_text())
    assert "under each protocol" not in plain.output


def test_eval_splits_errors_are_one_line(runner, run):
    assert _failed(_invoke(runner, "eval", "--checkpoint", run, "--split", "test", "--splits",
                           "val"), "--split test and --splits val")
    assert _failed(_invoke(runner, "eval", "--checkpoint", run, "--splits", "val,testA",
                           "--device", "cpu"),
                   "dataset 'synthetic' has no split 'testA'; splits: test, train, val")
    assert _failed(_invoke(runner, "eval", "--checkpoint", run, "--splits", "all", "--protocol",
                           "hu"), "unknown protocol 'hu'; choose one of iou>=0.5, iou>0.5, "
                                  "giou>=0.5, inclusive, or all")
    assert _failed(_invoke(runner, "eval", "--checkpoint", run, "--splits", "all", "--gallery",
                           run / "g"), "--gallery takes one split")
    assert _failed(_invoke(runner, "eval", "--checkpoint", run, "--splits", "all",
                           "--iou-convention", "inclusive"), "--protocol inclusive")
    assert not list(run.glob("eval-*.json"))


@pytest.mark.parametrize(("split", "numbers"), [
    ("val", ("80.50%", "82.45%", "88.47%", "81.23%", "83.72%", "87.00%")),
    ("testA", ("83.20%", "85.91%", "90.75%", "85.00%", "86.51%", "90.15%")),
    ("testB", ("75.20%", "81.74%", "84.10%", "76.08%", "81.24%", "83.59%")),
])
def test_bench_prints_the_refcoco_rows_the_recipes_declare(runner, tmp_path, split, numbers):
    out = tmp_path / "b.json"
    res = _invoke(runner, "bench", "--dataset", "refcoco", "--split", split, "--json", out)
    assert res.exit_code == 0, res.output
    for text in (*numbers, "SimREC (scratch)", "SeqTR* detection"):
        assert text in " ".join(res.output.split())
    rows = json.loads(out.read_text())["published"]
    assert len(rows) == 6 and {r["dataset"] for r in rows} == {"refcoco"}
    assert sorted(f"{100 * r['acc@0.5']:.2f}%" for r in rows) == sorted(numbers)


def test_bench_without_split_prints_every_split_in_report_order(runner, tmp_path):
    out = tmp_path / "b.json"
    res = _invoke(runner, "bench", "--dataset", "refcoco", "--json", out)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["split"] is None
    assert [r["split"] for r in data["published"]] == ["val"] * 6 + ["testA"] * 6 + ["testB"] * 6
    assert "every split" in " ".join(res.output.split())


def test_bench_on_a_split_nobody_declares_says_which_splits_are(runner, tmp_path):
    out = tmp_path / "b.json"
    res = _invoke(runner, "bench", "--dataset", "refcoco", "--split", "test", "--json", out)
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["published"] == []
    assert ("no number is declared for the test split of refcoco; the recipes declare val, "
            "testA, testB (--split val)") in " ".join(res.output.split())
