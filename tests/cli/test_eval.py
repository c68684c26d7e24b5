"""``vgkit eval``, ``bench`` and ``predict`` on the tiny trained run."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from tests.reference_math import continuous_iou
from vgkit.api import Grounder
from vgkit.cli import app
from vgkit.data.images import read_image
from vgkit.engine.bundle import DataBundle
from vgkit.engine.evaluate import predict
from vgkit.recipe import load_recipe


def _test_records(root):
    lines = (root / "records.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "test"]


def _invoke(runner, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, [str(a) for a in args])


def test_eval_prints_accuracy_and_writes_checkable_predictions(evaluated, tiny_run):
    res, _ = evaluated
    out = " ".join(res.output.split())
    assert "Acc@0.5" in out and "mean IoU" in out and "box convention continuous" in out
    for title in ("by phrase length", "by GT box area", "by expression type"):
        assert title in out
    lines = [json.loads(x) for x in
             (tiny_run.run / "predictions-test.jsonl").read_text().splitlines()]
    assert len(lines) == len(_test_records(tiny_run.root))
    for row in lines:
        assert row["iou"] == pytest.approx(continuous_iou(row["pred"], row["gt"]), abs=1e-5)
        assert row["correct"] == (row["iou"] >= 0.5)
    summary = json.loads((tiny_run.run / "eval-test.json").read_text())
    acc = sum(r["correct"] for r in lines) / len(lines)
    assert summary["n"] == len(lines) and summary["acc@0.5"] == pytest.approx(acc)
    assert f"{100 * acc:.2f}%" in out
    for key in ("by_length", "by_size", "by_type"):
        assert sum(r["n"] for r in summary[key]) == len(lines)
    base = summary["baselines"]  # the phrase-blind baselines are printed and saved beside it
    assert 0.0 <= base["constant_box"] <= 1.0 and 0.0 < base["phrase_blind"] <= 1.0
    assert "perfect detector, random object" in out


def test_eval_gallery_links_its_pngs(evaluated):
    _, gallery = evaluated
    html = (gallery / "index.html").read_text()
    pngs = sorted(p.name for p in gallery.glob("*.png"))
    assert pngs and all(f'href="{n}"' in html for n in pngs)
    assert "<h2>correct" in html and "<h2>wrong" in html


def test_eval_user_errors_are_one_line(runner, tiny_run, tmp_path):
    res = _invoke(runner, "eval", "--checkpoint", tmp_path / "nothing", "--device", "cpu")
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    assert "Traceback" not in res.output
    res = _invoke(runner, "eval", "--checkpoint", tiny_run.run, "--iou-convention", "hu")
    assert res.exit_code == 2 and "--iou-convention 'hu'" in res.output


def test_predict_box_matches_the_model_on_the_same_image(runner, tiny_run, evaluated, ev, tmp_path,
                                                         registry):
    rec = _test_records(tiny_run.root)[0]
    image = tiny_run.root / rec["image_path"]
    png = tmp_path / "fig.png"
    res = _invoke(runner, "predict", "--checkpoint", tiny_run.run, image, rec["phrase"],
                  "--out", png, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert png.is_file() and png.stat().st_size > 1000
    printed = [float(v) for v in re.search(r"x1 y1 x2 y2:\s+(\S+) (\S+) (\S+) (\S+)",
                                           res.output).groups()]

    # a bundle without the feature cache: batches carry images and the backbone runs on them
    model, bundle = ev.model, DataBundle(ev.recipe, registry, vocab=ev.bundle.vocab, progress=False)
    pred = Grounder(model, ev.recipe, tiny_run.run, "best", torch.device("cpu")).predict(
        read_image(image), rec["phrase"])
    box = torch.tensor(pred.box)
    assert printed == pytest.approx(box.tolist(), abs=0.051)
    assert pred.word_attention is not None and len(pred.word_attention) == len(rec["tokens"])
    # eval's path without the feature cache: the backbone on the image, batched with others
    exprs = bundle.split("test")
    i = next(k for k, r in enumerate(exprs.records)
             if r.image_id == rec["image_id"] and r.phrase == rec["phrase"])
    direct = predict(model, bundle, exprs, device=torch.device("cpu")).boxes[i]
    assert torch.allclose(box, direct, atol=1e-3)
    # eval's cached path reads fp16 maps: the same box up to their rounding (~1e-5 px here)
    line = next(json.loads(x) for x in
                (tiny_run.run / "predictions-test.jsonl").read_text().splitlines()
                if json.loads(x)["image_id"] == rec["image_id"]
                and json.loads(x)["phrase"] == rec["phrase"])
    assert box.tolist() == pytest.approx(line["pred"], abs=1e-2)


def test_bench_prints_published_rows_and_writes_the_checkpoint_row(runner, tiny_run, tmp_path):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    res = _invoke(runner, "bench", "--checkpoint", tiny_run.run, "--dataset", "referit",
                  "--root", tiny_run.root, "--markdown", md, "--json", js, "--device", "cpu")
    assert res.exit_code == 2  # the tiny run's root holds no ReferIt
    res = _invoke(runner, "bench", "--checkpoint", tiny_run.run, "--dataset", "synthetic",
                  "--markdown", md, "--json", js, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "no recipe declares a published number for synthetic" in res.output
    data = json.loads(js.read_text())
    (row,) = data["runs"]
    assert row["recipe"] == "synthetic-attn-regression" and row["dataset"] == "synthetic"
    assert row["refs_per_s"] > 0 and row["peak_memory_bytes"] > 0 and row["device"] == "cpu"
    lines = [json.loads(x) for x in
             (tiny_run.run / "predictions-test.jsonl").read_text().splitlines()]
    assert row["acc@0.5"] == pytest.approx(sum(r["correct"] for r in lines) / len(lines))
    assert row["n"] == len(lines)
    assert row["reported_acc@0.5"] is None  # no recipe reports synthetic numbers
    assert data["published"] == []  # ... nor any other published number on synthetic data
    assert row["split"] == "test" and data["split"] is None  # the recipe's data.test_split
    assert "| synthetic-attn-regression | synthetic | test |" in md.read_text()
    assert "each recipe's data.test_split" in md.read_text()


def test_bench_refuses_an_unknown_dataset(runner, tmp_path):
    res = _invoke(runner, "bench", "--dataset", "refcoco[x]", "--json", tmp_path / "b.json")
    assert res.exit_code == 2
    assert "unknown dataset 'refcoco[x]'; valid:" in " ".join(res.output.split())
    assert not (tmp_path / "b.json").exists()


def test_bench_without_checkpoints_prints_what_the_recipes_declare(runner, tmp_path):
    res = _invoke(runner, "bench", "--dataset", "referit", "--json", tmp_path / "b.json")
    assert res.exit_code == 0, res.output
    for text in ("Comprehension", "31.85%", "SCRC", "17.93%", "37.26%", "29.43%", "35.70%",
                 "69.30%"):  # the last: the full TransVG's, declared by transvg-lite
        assert text in res.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["runs"] == []
    # Tables 2-4 of Endo et al. (the full model once) and TransVG's ReferIt test number,
    # after TransVG's val number: without --split every split, in the order papers print them
    assert [p["split"] for p in data["published"]] == ["val"] + ["test"] * 12
    assert "71.60%" in res.output
    assert {p["dataset"] for p in data["published"]} == {"referit"}


def test_each_paper_recipe_declares_its_own_number_and_variants_do_not_inherit(registry):
    own = {name: [r.value for r in load_recipe(name, registry=registry).own_reported(
        "referit", "test")] for name in ("refit-attn-regression", "refit-no-text-attention",
                                          "refit-no-attention", "refit-no-penalty",
                                          "refit-glove-42b", "refit-glove-6b", "refit-glove-random",
                                          "synthetic-attn-regression", "referit-blind")}
    assert own == {"refit-attn-regression": [37.26], "refit-no-text-attention": [35.55],
                   "refit-no-attention": [29.43], "refit-no-penalty": [35.41],
                   "refit-glove-42b": [36.60], "refit-glove-6b": [36.85],
                   "refit-glove-random": [35.70], "synthetic-attn-regression": [],
                   "referit-blind": []}
