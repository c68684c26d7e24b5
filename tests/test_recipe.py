"""Recipes: Table 1 values, files, extends, overrides, one-line errors."""

from __future__ import annotations

import pytest

from vgkit.errors import VgkitError
from vgkit.recipe import apply_override, load_recipe


def test_builtin_recipe_carries_table_1(registry):
    r = load_recipe("refit-attn-regression", registry=registry).resolved(registry)
    m = r["model"]
    assert m["backbone"]["name"] == "vgg16" and m["backbone"]["frozen"] is True
    assert (m["text_encoder"]["layers"], m["text_encoder"]["embedding_dim"]) == (1, 300)
    ia, ta = m["attention"]
    assert (ia["name"], ia["hidden"], ia["layers"], ia["activation"]) == ("image-attention", 750, 3, "relu")
    assert (ta["name"], ta["hidden"], ta["layers"]) == ("text-attention", 500, 1)
    assert (m["head"]["hidden"], m["head"]["layers"], m["head"]["output"]) == (450, 2, "relu")
    assert ia["dropout"] == ta["dropout"] == m["head"]["dropout"] == 0.6
    assert (r["loss"]["lambda1"], r["loss"]["lambda2"]) == (1e-4, 1e-5)
    o = r["optim"]
    assert (o["name"], o["lr"], o["beta1"], o["beta2"]) == ("adam", 0.001, 0.9, 0.999)
    assert r["train"]["batch_size"] == 20
    assert r["data"]["image_size"] == [224, 224]


def test_ablation_recipes_extend_the_full_one(registry):
    no_ta = load_recipe("refit-no-text-attention", registry=registry)
    assert [a.name for a in no_ta.model.attention] == ["image-attention"]
    assert no_ta.loss.options()["lambda2"] == 1e-5  # inherited
    no_att = load_recipe("refit-no-attention", registry=registry)
    assert no_att.model.attention == [] and no_att.loss.options()["area"] is False
    no_pen = load_recipe("refit-no-penalty", registry=registry)
    assert len(no_pen.model.attention) == 2 and no_pen.loss.options()["area"] is False


@pytest.mark.parametrize(("name", "embeddings"), [
    ("refit-glove-42b", "glove.42B.300d.txt"), ("refit-glove-6b", "glove.6B.300d.txt"),
    ("refit-glove-random", "random")])
def test_table_4_recipes_change_only_the_embeddings(registry, name, embeddings):
    full = load_recipe("refit-attn-regression", registry=registry).resolved(registry)
    r = load_recipe(name, registry=registry).resolved(registry)
    assert r["data"]["embeddings"] == embeddings and "Table 4" in r["reference"]
    for key in ("name", "description", "reference", "reported"):  # reported: each its own
        r.pop(key), full.pop(key)
    r["data"]["embeddings"] = full["data"]["embeddings"]
    assert r == full


@pytest.mark.parametrize(("override", "path", "value"), [
    ("model.head.hidden=500", ("model", "head", "hidden"), 500),
    ("loss.lambda1=1e-3", ("loss", "lambda1"), 1e-3),
    ("model.attention.0.hidden=700", ("model", "attention", 0, "hidden"), 700),
    ("model.attention.text-attention.layers=2", ("model", "attention", 1, "layers"), 2),
    ("model.backbone.weights=/tmp/x y.pth", ("model", "backbone", "weights"), "/tmp/x y.pth"),
    ("data.image_size=[448, 448]", ("data", "image_size"), (448, 448)),
])
def test_set_overrides(registry, override, path, value):
    r = load_recipe("refit-attn-regression", [override], registry=registry).model_dump()
    node = r
    for p in path:
        node = node[p]
    assert node == value


def test_misspelt_key_in_a_file_is_one_line_naming_the_closest(registry, tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('extends = "refit-attn-regression"\nname = "mine"\n[model.head]\nname = "box-regression"\nhiden = 400\n')
    with pytest.raises(VgkitError) as info:
        load_recipe(str(f), registry=registry)
    msg = str(info.value)
    assert "\n" not in msg and str(f) in msg
    assert "model.head.hiden" in msg and msg.index("hidden") < msg.index("layers")


def test_misspelt_top_level_and_section_keys(registry, tmp_path):
    for text, bad in [("[trian]\nepochs = 3\n", "trian"), ("[optim]\nlearning_rate = 1\n", "optim.learning_rate")]:
        f = tmp_path / "r.toml"
        f.write_text('extends = "refit-attn-regression"\n' + text)
        with pytest.raises(VgkitError, match=bad):
            load_recipe(str(f), registry=registry)


def test_unknown_component_lists_choices(registry):
    with pytest.raises(VgkitError) as info:
        load_recipe("refit-attn-regression", ["model.head.name=box-regresion"], registry=registry)
    assert "model.head.name" in str(info.value) and "box-regression" in str(info.value)


def test_bad_value_type_names_key_and_value(registry):
    with pytest.raises(VgkitError) as info:
        load_recipe("refit-attn-regression", ["train.batch_size=many"], registry=registry)
    assert "train.batch_size" in str(info.value) and "many" in str(info.value)


def test_yaml_recipe(registry, tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("extends: refit-no-penalty\nname: y\ntrain:\n  epochs: 2\n")
    r = load_recipe(str(f), registry=registry)
    assert r.train.epochs == 2 and r.loss.options()["area"] is False


def test_override_syntax_errors():
    with pytest.raises(VgkitError, match="KEY=VALUE"):
        apply_override({}, "model.head.hidden")
    with pytest.raises(VgkitError, match="list has 2 items"):
        apply_override({"a": [{}, {}]}, "a.5.x=1")


def test_extends_cycle_is_an_error(registry, tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(f'extends = "{b}"\n')
    b.write_text(f'extends = "{a}"\n')
    with pytest.raises(VgkitError, match="extends itself"):
        load_recipe(str(a), registry=registry)


def test_extends_replaces_a_component_table_that_names_another_component(registry, tmp_path):
    f = tmp_path / "r.toml"
    f.write_text('extends = "refit-attn-regression"\nname = "r"\n'
                 '[model.backbone]\nname = "timm:resnet18"\nstride = 32\n')
    r = load_recipe(str(f), registry=registry)
    assert r.model.backbone.options() == {"stride": 32}  # not vgg16's frozen=... merged in
    f.write_text('extends = "refit-attn-regression"\nname = "r"\n[model.head]\nhidden = 10\n')
    head = load_recipe(str(f), registry=registry).model.head
    assert (head.name, head.options()["hidden"], head.options()["layers"]) == ("box-regression", 10, 2)
