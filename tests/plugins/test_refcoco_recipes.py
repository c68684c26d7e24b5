"""The RefCOCO-family recipes: each validates and builds, and bench's published rows read what they declare."""

from __future__ import annotations

import warnings

import pytest

from vgkit.engine.bench import published
from vgkit.model import build_model
from vgkit.recipe import load_recipe

PAPER = {"refcoco-attn-regression": "refcoco", "refcoco+-attn-regression": "refcoco+",
         "refcocog-attn-regression": "refcocog"}
MODERN = {"transvg-lite-refcoco": "refcoco", "transvg-lite-refcoco+": "refcoco+",
          "transvg-lite-refcocog": "refcocog"}


@pytest.mark.parametrize(("name", "dataset"), [*PAPER.items(), *MODERN.items()])
def test_recipe_validates_resolves_and_builds(registry, name, dataset):
    r = load_recipe(name, registry=registry)
    assert r.name == name and r.data.dataset.name == dataset
    resolved = r.resolved(registry)
    split_by = resolved["data"]["dataset"]["split_by"]
    assert split_by == ("umd" if dataset == "refcocog" else None)  # None: the dataset's first, unc
    assert resolved["data"]["vocab"] == ""  # built from the dataset's own training split
    with warnings.catch_warnings():  # random VGG16 weights: nothing to load here
        warnings.simplefilter("ignore")
        model, _ = build_model(r, registry, backbone_options={"weights": None})
    assert model.backbone.frozen  # VGG16 frozen, as the paper (and transvg-lite) has it


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_are_the_full_model_on_another_dataset(registry, name):
    full = load_recipe("refit-attn-regression", registry=registry).resolved(registry)
    r = load_recipe(name, registry=registry)
    mine = r.resolved(registry)
    assert mine["model"] == full["model"] and mine["loss"] == full["loss"]
    assert mine["optim"] == full["optim"] and mine["train"] == full["train"]
    assert mine["data"]["embeddings"] == full["data"]["embeddings"]
    assert mine["model"]["backbone"]["name"] == "vgg16" and mine["model"]["backbone"]["frozen"]
    assert r.reported == []  # the paper reports ReferIt only


def test_modern_recipes_declare_transvg_as_their_own_and_others_beside_it(registry):
    r = load_recipe("transvg-lite-refcoco", registry=registry)
    assert [x.value for x in r.own_reported("refcoco")] == [80.5, 83.2, 75.2]
    assert [x.value for x in r.own_reported("refcocog")] == []
    g = load_recipe("transvg-lite-refcocog", registry=registry)
    assert {x.split: x.value for x in g.own_reported("refcocog")} == {"val": 67.9, "test": 67.4}
    methods = {x.method for x in r.reported if x.method}
    assert methods == {"SimREC (scratch)", "SimREC (0.2M pre-training)", "SeqTR detection",
                       "SeqTR* detection", "SeqTR detection, pre-trained + fine-tuned"}
    for x in r.reported:
        assert "github.com" in x.source or "README of djiajunustc/TransVG" in x.source


@pytest.mark.parametrize(("dataset", "split", "expected"), [
    ("refcoco", "val", {"TransVG": 80.5, "SimREC (scratch)": 82.45,
                        "SimREC (0.2M pre-training)": 88.47, "SeqTR detection": 81.23,
                        "SeqTR* detection": 83.72,
                        "SeqTR detection, pre-trained + fine-tuned": 87.00}),
    ("refcoco", "testB", {"TransVG": 75.2, "SimREC (scratch)": 81.74,
                          "SimREC (0.2M pre-training)": 84.10, "SeqTR detection": 76.08,
                          "SeqTR* detection": 81.24,
                          "SeqTR detection, pre-trained + fine-tuned": 83.59}),
    ("refcoco+", "testA", {"TransVG": 70.5, "SimREC (scratch)": 76.75,
                           "SimREC (0.2M pre-training)": 82.68, "SeqTR detection": 75.37,
                           "SeqTR* detection": 76.26,
                           "SeqTR detection, pre-trained + fine-tuned": 84.51}),
    ("refcocog", "test", {"TransVG": 67.4, "SimREC (scratch)": 72.86,
                          "SimREC (0.2M pre-training)": 79.56, "SeqTR detection": 71.58,
                          "SeqTR* detection": 74.21,
                          "SeqTR detection, pre-trained + fine-tuned": 83.37}),
])
def test_published_rows_for_a_dataset_and_split(registry, dataset, split, expected):
    rows = published(registry, dataset=dataset, split=split)
    assert {r["dataset"] for r in rows} == {dataset} and {r["split"] for r in rows} == {split}
    got = {(r["method"] or "TransVG"): round(100 * r["acc@0.5"], 2) for r in rows}
    assert got == expected  # each number once, though transvg-lite declares TransVG's too


def test_eval_defaults_to_the_recipes_test_split(registry):
    # unc has no "test": the RefCOCO/RefCOCO+ recipes name testA for `vgkit eval` without --split
    from vgkit.data.refcoco import PUBLISHED

    for name, ds in (("refcoco-attn-regression", "refcoco"), ("transvg-lite-refcoco+", "refcoco+"),
                     ("refcocog-attn-regression", "refcocog")):
        split = load_recipe(name, registry=registry).data.test_split
        assert split in PUBLISHED[(ds, "umd" if ds == "refcocog" else "unc")], (name, split)
