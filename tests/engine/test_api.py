"""The Python front door: ``vgkit.load(run).predict(...)`` and docs/python-api.md, run as written."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vgkit
from vgkit.engine.bundle import DataBundle
from vgkit.engine.evaluate import predict
from vgkit.engine.train import load_trained

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def grounder(tiny_run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vgkit.load(tiny_run.run, device="cpu")


def _test_record(root: Path):
    import json

    return next(r for r in map(json.loads, (root / "records.jsonl").read_text().splitlines())
                if r["split"] == "test")


def test_import_vgkit_is_light_and_names_resolve():
    import subprocess
    import sys

    code = ("import sys, vgkit; assert 'torch' not in sys.modules; "
            "assert callable(vgkit.load) and vgkit.Grounder and vgkit.Prediction")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vgkit.nope  # noqa: B018


def test_predict_matches_evaluation_on_the_same_image(grounder, tiny_run, registry):
    rec = _test_record(tiny_run.root)
    path = tiny_run.root / rec["image_path"]
    p = grounder.predict(path, rec["phrase"])
    assert isinstance(p, vgkit.Prediction) and p.image_size == (96, 80)
    # the same model through evaluation's path (images read, not cached) gives the same box
    model, recipe, vocab, _ = load_trained(tiny_run.run, registry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = DataBundle(recipe, registry, vocab=vocab, progress=False)
    exprs = bundle.split("test")
    i = next(k for k, r in enumerate(exprs.records)
             if r.image_id == rec["image_id"] and r.phrase == rec["phrase"])
    direct = predict(model, bundle, exprs, device=torch.device("cpu")).boxes[i]
    assert p.box == pytest.approx(direct.tolist(), abs=1e-3)
    assert p.attention.shape == model.spec.grid
    assert p.words is not None and len(p.words) == len(p.word_attention)
    assert p.word_attention.sum() == pytest.approx(1.0, abs=1e-4)


def test_every_input_form_and_batch_gives_the_same_boxes(grounder, tiny_run):
    rec = _test_record(tiny_run.root)
    path = tiny_run.root / rec["image_path"]
    image = Image.open(path)
    one = grounder.predict(str(path), rec["phrase"]).box
    for form in (path, image, np.asarray(image.convert("RGB"))):
        assert grounder.predict(form, rec["phrase"]).box == pytest.approx(one, abs=1e-4)
    pairs = grounder.predict([image, image, path], [rec["phrase"], "the blue square",
                                                    rec["phrase"]], batch_size=2)
    assert [q.phrase for q in pairs] == [rec["phrase"], "the blue square", rec["phrase"]]
    assert pairs[0].box == pytest.approx(one, abs=1e-4)
    assert pairs[2].box == pytest.approx(one, abs=1e-4)
    with pytest.raises(vgkit.VgkitError, match="2 images and 3 phrases"):
        grounder.predict([image, image], ["a", "b", "c"])
    with pytest.raises(vgkit.VgkitError, match="HxWx3 uint8"):
        grounder.predict(np.zeros((4, 4), np.uint8), "a")
    with pytest.raises(vgkit.VgkitError, match="has no words"):
        grounder.predict(image, "  ")


def test_evaluate_returns_what_vgkit_eval_prints(grounder, evaluated, tiny_run):
    import json

    numbers = grounder.evaluate("test")
    printed = json.loads((tiny_run.run / "eval-test.json").read_text())
    for key in ("acc@0.5", "miou", "n", "scored", "unscored", "by_length", "by_size"):
        assert numbers[key] == printed[key], key


def test_the_python_api_page_runs_as_written(tiny_run, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    (tmp_path / "runs").mkdir()
    (tmp_path / "data").mkdir()
    os.symlink(tiny_run.run, tmp_path / "runs" / "demo")
    os.symlink(tiny_run.root, tmp_path / "data" / "synthetic")
    rec = _test_record(tiny_run.root)
    Image.open(tiny_run.root / rec["image_path"]).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)
    assert (tmp_path / "prediction.png").is_file()
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "best.safetensors").is_file()
