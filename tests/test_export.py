"""``vgkit.export``: ONNX files that onnxruntime runs to PyTorch's boxes, for the reference
recipe (the tiny run) and for transvg-lite (trained here, tiny), and the CLI around them."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import vgkit
from vgkit.cli import app
from vgkit.data.synth import generate
from vgkit.engine.train import Trainer
from vgkit.errors import VgkitError
from vgkit.export import PARITY_PX, OnnxGrounder, export_onnx, text_ids
from vgkit.recipe import load_recipe


def _load(run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vgkit.load(run, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_run, tmp_path_factory):
    g = _load(tiny_run.run)
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return g, export_onnx(g, out)


def _exported_transvg(tmp_path_factory, registry, name: str, seed: int, *overrides: str):
    """transvg-lite trained one epoch on 12 synthetic scenes, loaded and exported."""
    base = tmp_path_factory.mktemp(name)
    root, run = base / "syn", base / "run"
    generate(root, 12, seed=seed, image_size=(96, 80), progress=False)
    recipe = load_recipe("transvg-lite", [f"data.root={root}", "data.image_size=[64, 64]",
                                          "train.epochs=1", "train.batch_size=8", *overrides],
                         registry=registry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(recipe, registry, run, device="cpu", progress=False).fit()
    g = _load(run)
    return g, export_onnx(g, base / "out" / f"{name}.onnx")


@pytest.fixture(scope="module")
def transvg(tmp_path_factory, registry):
    return _exported_transvg(tmp_path_factory, registry, "transvg", 1)


@pytest.fixture(scope="module")
def transvg_bert(tmp_path_factory, registry):
    """transvg-lite with a Hugging Face encoder (a tiny BERT): its own subword tokenizer."""
    from tiny_hf import tiny_bert_dir

    encoder = f'model.text_encoder={{name = "hf", path = "{tiny_bert_dir()}", max_tokens = 8}}'
    return _exported_transvg(tmp_path_factory, registry, "bert", 2, encoder)


def scene(seed: int, size=(110, 70)) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    a[10:40, 15:60] = (200, 20, 20)
    return Image.fromarray(a)


def test_reference_export_matches_pytorch(reference):
    g, r = reference
    assert r.samples >= 4 and r.passed
    assert r.box_px <= PARITY_PX and r.heads_box_px <= PARITY_PX
    assert r.attention is not None and r.attention < 1e-4
    assert r.word_attention is not None and r.word_attention < 1e-4
    meta = json.loads(r.meta.read_text())
    assert meta["outputs"] == ["boxes", "alpha_I", "alpha_T"]
    assert meta["preprocess"]["size"] == [64, 64] and meta["preprocess"]["mode"] == "stretch"
    assert meta["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["text"]["vocab"] == g.model.text_encoder.vocab.itos
    assert meta["features"] == {"channels": 512, "grid": [4, 4]}


def test_batch_and_phrase_length_are_free(reference):
    _, r = reference
    for path, first in ((r.model, "images"), (r.heads, "features")):
        inputs = {i.name: i.shape for i in ort.InferenceSession(str(path)).get_inputs()}
        assert list(inputs) == [first, "ids", "mask"]
        assert inputs[first][0] == "batch" and inputs["ids"] == ["batch", "words"]


def test_onnx_grounder_predicts_what_the_grounder_predicts(reference):
    g, r = reference
    onnx = OnnxGrounder(r.model)
    pictures = [scene(0), scene(1, (60, 90)), scene(2)]
    phrases = ["the red box", "a thing on the far left of the picture near the top", "blue"]
    got = onnx.predict(pictures, phrases)
    want = g.predict(pictures, phrases)
    for a, b in zip(got, want, strict=True):
        assert a.box == pytest.approx(b.box, abs=PARITY_PX)
        assert a.words == b.words and a.image_size == b.image_size
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-4)
        np.testing.assert_allclose(a.word_attention, b.word_attention, atol=1e-4)
    feats = g.model.encode_image(torch.stack([g.transform(p) for p in pictures])).detach()
    heads = onnx.predict(pictures, phrases, features=feats.numpy())
    for a, b in zip(heads, want, strict=True):
        assert a.box == pytest.approx(b.box, abs=PARITY_PX)
    fig = onnx.figure(pictures[0], phrases[0])
    assert fig.size == g.figure(pictures[0], phrases[0]).size


def test_transvg_lite_export_matches_pytorch(transvg):
    g, r = transvg
    assert r.passed and r.samples >= 4, r
    assert r.attention is None and r.word_attention is None  # it has no attention maps
    assert json.loads(r.meta.read_text())["outputs"] == ["boxes"]
    one = OnnxGrounder(r.model).predict(scene(5), "the red box on the left")
    assert one.box == pytest.approx(g.predict(scene(5), "the red box on the left").box,
                                    abs=PARITY_PX)
    assert one.attention is None and one.words is None


def test_a_hugging_face_tokenizer_is_exported_beside_the_model(transvg_bert):
    g, r = transvg_bert
    assert r.passed and r.samples >= 4, r
    assert r.tokenizer == r.model.with_suffix(".tokenizer.json") and r.tokenizer.is_file()
    text = json.loads(r.meta.read_text())["text"]
    assert text["kind"] == "huggingface" and text["file"] == r.tokenizer.name
    assert text["max_tokens"] == 8 and text["pad_id"] == 0
    for path in (r.model, r.heads):  # every phrase is padded to max_tokens
        inputs = {i.name: i.shape for i in ort.InferenceSession(str(path)).get_inputs()}
        assert inputs["ids"] == ["batch", 8] and inputs["mask"] == ["batch", 8]
    onnx = OnnxGrounder(r.model)
    pictures = [scene(0), scene(1, (60, 90)), scene(2)]
    # a word the tiny vocabulary lacks ([UNK]), one long phrase (truncated to 8), one word
    phrases = ["the zebra", "the big red square on the left above the small green tree", "sky"]
    got, want = onnx.predict(pictures, phrases), g.predict(pictures, phrases)
    for a, b in zip(got, want, strict=True):
        assert a.box == pytest.approx(b.box, abs=PARITY_PX)
    ids, mask = text_ids(onnx.meta, phrases, onnx.tokenizer)
    own = g.model.tokenize(phrases)
    assert ids.shape == (3, 8) and np.array_equal(ids[:, : own.ids.shape[1]], own.ids.numpy())
    assert mask.sum(1).tolist() == own.mask.sum(1).tolist() == [4, 8, 3]


def test_a_missing_or_damaged_tokenizer_file_is_one_clear_error(transvg_bert, tmp_path):
    _, r = transvg_bert
    for f in (r.model, r.meta):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    model = tmp_path / r.model.name
    with pytest.raises(VgkitError, match=r"missing .*bert\.tokenizer\.json: vgkit export writes"):
        OnnxGrounder(model)
    (tmp_path / r.tokenizer.name).write_text('{"version": "1.0", "model": [')
    with pytest.raises(VgkitError, match="the tokenizers package cannot read it"):
        OnnxGrounder(model)
    (tmp_path / r.tokenizer.name).write_bytes(r.tokenizer.read_bytes())
    meta = json.loads(r.meta.read_text())
    del meta["text"]["max_tokens"]
    (tmp_path / r.meta.name).write_text(json.dumps(meta))
    with pytest.raises(VgkitError, match="not a tokenizer this model can use"):
        OnnxGrounder(model)


def test_a_tokenizer_the_json_cannot_describe_is_refused(tiny_run, tmp_path, monkeypatch):
    g = _load(tiny_run.run)
    monkeypatch.delattr(g.model.text_encoder, "max_words")
    with pytest.raises(VgkitError, match="text encoder 'blstm' has its own tokenizer"):
        export_onnx(g, tmp_path / "m.onnx")
    monkeypatch.undo()
    own = g.model.text_encoder.tokenize

    def shifted(phrases):
        t = own(phrases)
        return type(t)(t.ids.roll(1, dims=1), t.mask)

    monkeypatch.setattr(g.model.text_encoder, "tokenize", shifted)
    with pytest.raises(VgkitError, match="tokenizes differently"):
        export_onnx(g, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_then_predict_with_onnx(runner, tiny_run, tmp_path):
    out = tmp_path / "cli" / "model.onnx"
    res = runner.invoke(app, ["export", "--checkpoint", str(tiny_run.run), "--format", "onnx",
                              "--out", str(out), "--samples", "4"])
    assert res.exit_code == 0, res.output
    assert "parity ok" in res.output and "model.heads.onnx" in res.output
    px = float(re.search(r"whole model: (\S+) px", res.output).group(1))
    assert px <= PARITY_PX
    image = tmp_path / "scene.png"
    scene(9).save(image)
    res = runner.invoke(app, ["predict", "--onnx", str(out), str(image), "the red box",
                              "--out", str(tmp_path / "fig.png")])
    assert res.exit_code == 0, res.output
    printed = [float(v) for v in res.output.split("x1 y1 x2 y2:")[1].split()[:4]]
    want = _load(tiny_run.run).predict(image, "the red box").box
    assert printed == pytest.approx(list(want), abs=0.051)
    assert (tmp_path / "fig.png").is_file() and "onnxruntime" in res.output


@pytest.mark.parametrize("args, says", [
    (["export", "--checkpoint", "RUN", "--format", "tflite", "--out", "m.onnx"],
     "--format 'tflite': choose onnx"),
    (["export", "--checkpoint", "RUN", "--out", "m.pt"], "--out m.pt: name the model file"),
    (["predict", "IMG", "the red box"], "give --checkpoint RUN or --onnx MODEL.onnx"),
    (["predict", "IMG", "the red box", "--checkpoint", "RUN", "--onnx", "m.onnx"],
     "one of the two"),
    (["predict", "IMG", "the red box", "--onnx", "nothing-here.onnx"],
     "missing nothing-here.onnx"),
])
def test_cli_errors_are_one_line(runner, tiny_run, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    scene(3).save(tmp_path / "img.png")
    subst = {"RUN": str(tiny_run.run), "IMG": str(tmp_path / "img.png")}
    res = runner.invoke(app, [subst.get(a, a) for a in args])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and says in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
