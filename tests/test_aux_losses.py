"""Auxiliary loss terms: a plugin's component adds named terms; the engine sums and logs them.

The plugin here is the one a new user wrote from the docs: a two-pass image attention
whose first pass must be supervised too (its map should already cover the target).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from vgkit.data.synth import generate
from vgkit.engine.train import Trainer
from vgkit.errors import VgkitError
from vgkit.interfaces import Attention, FeatureSpec, GroundingState
from vgkit.model import build_model, compute_loss
from vgkit.plugins import PluginHost
from vgkit.recipe import load_recipe


class TwoPassOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = 1.0


class TwoPass(Attention):
    """alpha_1 from V and v_T; alpha_2 refines it; pass 1 gets its own loss term."""

    def __init__(self, opts: TwoPassOptions, spec: FeatureSpec) -> None:
        super().__init__()
        self.first = nn.Linear(spec.channels + spec.word_dim, 1)
        self.second = nn.Linear(spec.channels + 1, 1)
        self.weight = opts.weight
        self.out_spec = spec.with_(visual_dim=spec.regions, provided=spec.provided | {"alpha_I"})

    def forward(self, state: GroundingState) -> GroundingState:
        T = state.v_T.unsqueeze(1).expand(-1, state.V.shape[1], -1)
        a1 = torch.softmax(self.first(torch.cat([state.V, T], -1)).squeeze(-1), -1)
        a2 = torch.softmax(self.second(torch.cat([state.V, a1.unsqueeze(-1)], -1)).squeeze(-1), -1)
        if self.training:
            # the first pass's negative entropy: a term only pass 1 gets its gradient from
            state.add_loss("first_pass", self.weight * (a1 * a1.clamp_min(1e-9).log()).sum(-1).mean())
        state.alpha_I, state.visual = a2, a2
        return state


@pytest.fixture(scope="module")
def host() -> PluginHost:
    h = PluginHost()
    h.load_entry_points()
    h.registry.add("attention", "two-pass", TwoPass, options=TwoPassOptions)
    return h


def _recipe(host, root, *extra):
    return load_recipe("synthetic-attn-regression",
                       [f"data.root={root}", "data.image_size=[64, 64]", "train.epochs=1",
                        "train.log_every=1", 'model.attention=[{name = "two-pass"}]',
                        "model.feature_norm=none", *extra], registry=host.registry)


def test_a_components_term_joins_the_loss_with_its_gradient(host, tmp_path):
    recipe = _recipe(host, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss = build_model(recipe, host.registry)
    model.train()
    text = model.tokenize(["the red circle", "a blue square"])
    feats = torch.randn(2, model.spec.channels, *model.spec.grid)
    out = model(text, features=feats)
    target = torch.tensor([[4.0, 4.0, 30.0, 30.0], [10.0, 12.0, 50.0, 60.0]])
    res = compute_loss(loss, out, target, model.head.box_format, model.spec.input_size)
    assert "aux.first_pass" in res.terms
    base = sum(v for k, v in res.terms.items() if not k.startswith("aux."))
    assert res.total.item() == pytest.approx((base + res.terms["aux.first_pass"]).item(), rel=1e-6)
    # the first pass's own gradient: without the term, `first` learns only through pass 2
    two_pass = model.attention[0]
    res.terms["aux.first_pass"].backward()
    assert two_pass.first.weight.grad.abs().sum() > 0 and two_pass.second.weight.grad is None


def test_training_logs_each_term_by_name(host, tmp_path):
    root = tmp_path / "syn"
    generate(root, 12, seed=0, image_size=(96, 80), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Trainer(_recipe(host, root), host.registry, tmp_path / "run", device="cpu",
                     progress=False) as trainer:
            trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["event"] == "train"]
    assert train_rows and all("aux.first_pass" in r for r in train_rows)


def test_a_term_added_twice_or_not_scalar_is_an_error():
    s = GroundingState(V=torch.zeros(1, 4, 2), grid=(2, 2), v_l=torch.zeros(1, 1, 2),
                       word_mask=torch.ones(1, 1, dtype=torch.bool), v_T=torch.zeros(1, 2),
                       visual=torch.zeros(1, 2), text=None)
    s.add_loss("a", torch.tensor(1.0))
    with pytest.raises(VgkitError, match="added twice"):
        s.add_loss("a", torch.tensor(2.0))
    with pytest.raises(VgkitError, match="must be a scalar"):
        s.add_loss("b", torch.ones(3))
