"""The CUDA branch's mixed precision, exercised on the CPU: the model runs under bf16
autocast as Trainer.fit runs it on a GPU, and the loss (IoU, squared error, the area and
attention terms, L1 and GIoU) is computed in fp32, finite and close to the fp32 loss."""

from __future__ import annotations

import pytest
import torch

from vgkit.model import build_model, compute_loss
from vgkit.recipe import load_recipe

SMALL = {
    "refit-attn-regression": ["model.text_encoder.vocab_size=50", "model.text_encoder.hidden=32",
                              "model.text_encoder.embedding_dim=16",
                              "model.attention.0.hidden=32", "model.attention.1.hidden=16",
                              "model.head.hidden=24", "loss.lambda_att=1"],
    "transvg-lite": ["model.text_encoder.vocab_size=50", "model.attention.0.d_model=32",
                     "model.attention.0.heads=2", "model.attention.0.ffn=64"],
}


@pytest.mark.parametrize("name", list(SMALL))
def test_bf16_autocast_forward_gives_an_fp32_loss_close_to_fp32(registry, name):
    recipe = load_recipe(name, SMALL[name], registry=registry)
    torch.manual_seed(0)
    model, loss = build_model(recipe, registry, backbone_options={"weights": None})
    model.eval()  # no dropout: the two passes must see the same network
    spec = model.spec
    text = model.tokenize(["the red circle on the left", "a small blue square"])
    features = torch.randn(1, spec.channels, *spec.grid)
    index = torch.tensor([0, 0])
    H, W = spec.input_size
    target = torch.tensor([[10.0, 20.0, 0.5 * W, 0.6 * H], [0.3 * W, 0.1 * H, 0.9 * W, 0.7 * H]])

    ref = compute_loss(loss, model(text, features=features, image_index=index), target,
                       model.head.box_format, spec.input_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(text, features=features, image_index=index)
    # autocast really ran the heads in bf16 (the box may leave in fp32 through an fp32 scale)
    assert torch.bfloat16 in {out.g.dtype, out.state.visual.dtype}
    res = compute_loss(loss, out, target, model.head.box_format, spec.input_size)

    assert res.total.dtype == torch.float32 and torch.isfinite(res.total)
    assert set(res.terms) == set(ref.terms)
    for k, v in res.terms.items():
        assert v.dtype == torch.float32, k
        assert torch.isfinite(v), k
        assert v.item() == pytest.approx(ref.terms[k].item(), rel=0.05, abs=1e-3), k
    res.total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
