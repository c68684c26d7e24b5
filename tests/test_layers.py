"""vgkit.layers.Dropout: nn.Dropout's keep rate, scaling and gradient, from a cheaper mask."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vgkit.layers import Dropout

N = 400_000


@pytest.mark.parametrize("p", [0.1, 0.5, 0.6])
def test_keep_rate_and_scaling_match_nn_dropout(p):
    torch.manual_seed(0)
    x = torch.ones(N)
    ours, theirs = Dropout(p)(x), nn.Dropout(p)(x)
    keep = 1 - p
    # kept units carry nn.Dropout's scale 1 / (1 - p) (ours: of 1 - p rounded to 2**-16,
    # so within 2e-5 of it), the rest are exact zeros
    for y in (ours, theirs):
        values = y.unique().tolist()
        assert len(values) == 2 and values[0] == 0.0
        assert values[1] == pytest.approx(1 / keep, rel=2e-5)
    assert ours.max().item() == pytest.approx(65536 / round(keep * 65536), rel=1e-6)
    # keep rates agree with 1 - p and with each other within 5 binomial standard deviations
    sd = math.sqrt(keep * p / N)
    rate, their_rate = (ours != 0).float().mean().item(), (theirs != 0).float().mean().item()
    assert abs(rate - keep) < 5 * sd
    assert abs(rate - their_rate) < 5 * math.sqrt(2) * sd
    # and so the expectation is x's
    assert abs(ours.mean().item() - 1.0) < 5 * sd / keep


def test_the_bits_are_uniform_16_bit_integers():
    # each 64-bit draw gives four 16-bit values; all four must be uniform (a generator that
    # left the top bit 0 would keep every unit of one lane in four at p < 0.5)
    torch.manual_seed(3)
    y = Dropout(0.5)(torch.ones(4 * 100_000)).view(-1, 4)
    rates = (y != 0).float().mean(0)
    assert torch.all((rates - 0.5).abs() < 5 * math.sqrt(0.25 / 100_000)), rates


def test_gradient_is_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = Dropout(0.6)(x)
    g = torch.randn_like(y)
    y.backward(g)
    mask = torch.where(y != 0, 65536 / round(0.4 * 65536), 0.0)  # x has no exact zeros
    assert torch.allclose(x.grad, g * mask)
    assert torch.allclose(y, x.detach() * mask)
    assert 0 < (y == 0).float().mean() < 1


def test_identity_in_eval_mode_and_at_p_zero():
    x = torch.randn(8, 16)
    drop = Dropout(0.6).eval()
    assert drop(x) is x
    assert Dropout(0.0).train()(x) is x


def test_masks_follow_torch_seed_and_differ_between_calls():
    x = torch.ones(10_000)
    drop = Dropout(0.5)
    torch.manual_seed(7)
    a, b = drop(x), drop(x)
    torch.manual_seed(7)
    assert torch.equal(drop(x), a)  # same seed, same mask: resume stays exact
    assert not torch.equal(a, b)  # a fresh mask each call


def test_dtype_and_shape_are_kept():
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    y = Dropout(0.3)(x)
    assert y.dtype == torch.float64 and y.shape == x.shape


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_out_of_range_probability_is_refused(p):
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(p)


def test_the_paper_model_uses_it():
    from vgkit.model import build_model
    from vgkit.plugins import get_registry
    from vgkit.recipe import load_recipe
    from vgkit.text import Vocabulary

    recipe = load_recipe("refit-attn-regression")
    model, _ = build_model(recipe, get_registry(), vocab=Vocabulary(["<pad>", "<unk>", "a"]))
    kinds = {type(m) for m in model.modules()}
    assert Dropout in kinds and nn.Dropout not in kinds
