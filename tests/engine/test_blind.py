"""The text-only recipe ``referit-blind``: trains and evaluates without ever opening an image."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from vgkit.cli import app
from vgkit.data.synth import generate
from vgkit.model import build_model
from vgkit.recipe import load_recipe

SMALL = ["model.text_encoder.hidden=16", "model.text_encoder.embedding_dim=16",
         "model.head.hidden=32", "train.epochs=1", "train.batch_size=8", "train.workers=0"]


def _no_images(monkeypatch) -> None:
    """Make any attempt to open an image (PIL) or a feature cache fail the test."""
    import PIL.Image

    import vgkit.engine.bundle as engine_data

    def refuse(*_a, **_k):
        raise AssertionError("a blind model opened an image or a feature cache")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    monkeypatch.setattr(engine_data.DataBundle, "attach_cache", refuse)


def _invoke(runner, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, [str(a) for a in args])


def test_blind_model_needs_no_image(registry):
    recipe = load_recipe("referit-blind", SMALL, registry=registry)
    model, _ = build_model(recipe, registry)
    assert model.blind and model.backbone.channels == 0 and not model.attention
    text = model.tokenize(["the sky", "left guy"])
    out = model(text)  # neither images nor features
    assert out.boxes.shape == (2, 4) and torch.isfinite(out.boxes).all()
    # given images anyway (vgkit predict), the result is the same
    torch.testing.assert_close(model.eval()(text, images=torch.randn(2, 3, 224, 224)).boxes,
                               model(text).boxes)


def test_blind_pipeline_without_images(runner, tmp_path, monkeypatch):
    root = tmp_path / "syn"
    generate(root, 16, seed=3, image_size=(96, 80), progress=False)
    shutil.rmtree(root / "images")  # annotations only
    _no_images(monkeypatch)
    run = tmp_path / "run"
    sets = [a for s in [*SMALL, 'data.vocab=""'] for a in ("--set", s)]
    res = _invoke(runner, "train", "--recipe", "referit-blind", "--dataset", "synthetic",
                  "--root", root, "--out", run, "--device", "cpu", "--quiet", *sets)
    assert res.exit_code == 0, res.output
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert not (run / "backbone.safetensors").exists()
    res = _invoke(runner, "eval", "--checkpoint", run, "--device", "cpu", "--errors")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "whole image" in out and "best constant box" in out and "n/a" in out
    summary = json.loads((run / "eval-test.json").read_text())
    assert summary["n"] > 0 and 0.0 <= summary["acc@0.5"] <= 1.0
    assert summary["baselines"]["constant_box_fit_on"] == "train"
    err = {b["bucket"]: b["n"] for b in summary["errors"]["buckets"]}
    assert err["image attention"] is None and err["incoherent box"] is None
    assert err["wrong size"] + err["wrong place"] == summary["errors"]["failures"]
    assert not (root / "images").exists() and not list(root.glob("features*"))


def _slice(real: Path, out: Path, crops: int) -> None:
    """The first `crops` regions of each split, in hu form, with their boxes and image sizes."""
    out.mkdir()
    boxes = json.loads((real / "referit_bbox.json").read_text())
    sizes = json.loads((real / "referit_imsize.json").read_text())
    keep_boxes, keep_sizes = {}, {}
    for split in ("train", "val", "test"):
        queries = json.loads((real / f"referit_query_{split}.json").read_text())
        part = dict(list(queries.items())[:crops])
        (out / f"referit_query_{split}.json").write_text(json.dumps(part))
        for crop in part:
            keep_boxes[crop] = boxes[crop]
            image = crop.rsplit("_", 1)[0] + ".jpg"
            keep_sizes[image] = sizes[image]
    (out / "referit_bbox.json").write_text(json.dumps(keep_boxes))
    (out / "referit_imsize.json").write_text(json.dumps(keep_sizes))
    shutil.copy(real / "vocabulary_referit.txt", out / "vocabulary_referit.txt")


def test_blind_on_a_slice_of_the_real_referit_annotations(real_dir, runner, tmp_path, monkeypatch):
    root = tmp_path / "referit"
    _slice(real_dir, root, crops=60)
    _no_images(monkeypatch)
    run = tmp_path / "run"
    sets = [a for s in SMALL for a in ("--set", s)]
    res = _invoke(runner, "train", "--recipe", "referit-blind", "--root", root, "--out", run,
                  "--device", "cpu", "--quiet", *sets)
    assert res.exit_code == 0, res.output
    res = _invoke(runner, "eval", "--checkpoint", run, "--device", "cpu", "--split", "test")
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "eval-test.json").read_text())
    queries = json.loads((root / "referit_query_test.json").read_text())
    assert summary["n"] == sum(len(v) for v in queries.values())
    assert summary["baselines"]["whole_image"] >= 0.0


def test_blind_with_a_frozen_hf_encoder_comes_back_from_its_run(registry, tmp_path, monkeypatch):
    """A frozen text encoder's weights go to backbone.safetensors, though the backbone is `none`."""
    from tiny_hf import tiny_bert_dir

    from vgkit.engine.evaluate import predict
    from vgkit.engine.train import Trainer, load_trained

    root, run = tmp_path / "syn", tmp_path / "run"
    generate(root, 12, seed=0, image_size=(96, 80), progress=False)
    shutil.rmtree(root / "images")
    _no_images(monkeypatch)
    encoder = f'model.text_encoder={{name = "hf", path = "{tiny_bert_dir()}", frozen = true}}'
    recipe = load_recipe("referit-blind", ["data.dataset=synthetic", f"data.root={root}",
                                           'data.vocab=""', *SMALL[2:], encoder],
                         registry=registry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(recipe, registry, run, device="cpu", progress=False)
        trainer.fit()
        trainer.close()
        model, _, _, _ = load_trained(run, registry, which="best")
    assert (run / "backbone.safetensors").is_file()
    test = trainer.data.split("test")
    torch.testing.assert_close(predict(model, trainer.data, test).boxes,
                               predict(trainer.model, trainer.data, test).boxes)
