"""vgkit.layers: Dropout (nn.Dropout's keep rate, scaling and gradient, from a cheaper mask) and
Linear (nn.Linear's numbers, its big CPU products run as oneDNN 1x1 convolutions)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vgkit.layers as layers
from vgkit.errors import VgkitError
from vgkit.layers import Dropout, Linear

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
    assert Linear in kinds and nn.Linear not in kinds  # every product may take oneDNN


@pytest.fixture
def conv_calls(monkeypatch):
    """How many times F.conv2d ran (the oneDNN route) since the test began."""
    calls = []
    real = torch.nn.functional.conv2d

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", counting)
    return calls


def _pair(bias, seed=0):
    torch.manual_seed(seed)
    ours = Linear(300, 200, bias=bias)
    theirs = nn.Linear(300, 200, bias=bias)
    theirs.load_state_dict(ours.state_dict())  # the same parameters and state dict keys
    return ours, theirs


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(256, 300), (4, 196, 300), (2, 3, 64, 300)])
def test_linear_is_nn_linear_to_rounding_forward_and_backward(conv_calls, bias, shape):
    ours, theirs = _pair(bias)
    x = torch.randn(*shape, dtype=torch.float64).float()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert conv_calls, "the oneDNN route was not taken"
    assert ya.shape == yb.shape == (*shape[:-1], 200) and ya.is_contiguous()
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    tol = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(ya, yb, **tol)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    for pa, pb in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-3)


def test_linear_takes_strided_inputs(conv_calls):
    ours, theirs = _pair(True)
    x = torch.randn(196, 5, 300).transpose(0, 1)  # not contiguous
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    assert conv_calls


def test_linear_is_bitwise_repeatable(conv_calls):
    # resume after kill -9 compares bits: the same inputs give the same outputs and gradients
    ours, _ = _pair(True)
    x, g = torch.randn(1000, 300), torch.randn(1000, 200)
    runs = []
    for _ in range(2):
        ours.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        y = ours(xi)
        y.backward(g)
        runs.append([y, xi.grad, ours.weight.grad, ours.bias.grad])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_linear_small_products_and_other_dtypes_stay_on_f_linear(conv_calls):
    ours, theirs = _pair(True)
    x = torch.randn(layers.ONEDNN_MIN_ROWS - 1, 300)
    assert torch.equal(ours(x), theirs(x))  # the very same kernel: equal bits
    x64 = torch.randn(500, 300, dtype=torch.float64)
    ours64, theirs64 = ours.double(), theirs.double()
    assert torch.equal(ours64(x64), theirs64(x64))
    assert not conv_calls


@pytest.mark.parametrize(("k", "n"), [(0, 32), (32, 0)])
def test_linear_with_an_empty_side_is_f_linear(conv_calls, k, n):
    # a blind model's head reads a visual input of width 0
    layer = Linear(k, n)
    x = torch.randn(300, k)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not conv_calls


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_linear_traces_as_a_linear(conv_calls):
    # ONNX export traces the model: the graph keeps the Gemm, not a 1x1 convolution
    ours, _ = _pair(True)
    graph = str(torch.jit.trace(ours, torch.randn(512, 300), check_trace=False).graph)
    assert "aten::linear" in graph and "conv" not in graph
    assert not conv_calls


def test_vgkit_cpu_gemm_blas_keeps_f_linear_and_a_bad_value_is_named(conv_calls, monkeypatch):
    ours, theirs = _pair(True)
    x = torch.randn(512, 300)
    monkeypatch.setenv("VGKIT_CPU_GEMM", "blas")
    layers._cpu_gemm.cache_clear()
    try:
        assert torch.equal(ours(x), theirs(x)) and not conv_calls
        monkeypatch.setenv("VGKIT_CPU_GEMM", "mkl dnn")
        layers._cpu_gemm.cache_clear()
        with pytest.raises(VgkitError, match="VGKIT_CPU_GEMM must be 'onednn' or 'blas', got 'mkl dnn'"):
            ours(x)
    finally:
        monkeypatch.delenv("VGKIT_CPU_GEMM")
        layers._cpu_gemm.cache_clear()
    ours(x)
    assert conv_calls
