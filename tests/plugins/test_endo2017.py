"""The paper's equations (§3.1-3.6), checked against independent computations."""

from __future__ import annotations

import warnings

import pytest
import torch
from vgkit_endo2017.attention import (
    ImageAttention,
    ImageAttentionOptions,
    TextAttention,
    TextAttentionOptions,
)
from vgkit_endo2017.backbones import BackboneOptions, RandomWeightsWarning, build_vgg16
from vgkit_endo2017.head import BoxRegression, BoxRegressionOptions
from vgkit_endo2017.loss import IouSeArea, IouSeAreaOptions, box_area_cells, box_cell_coverage
from vgkit_endo2017.text import BLSTMEncoder, BLSTMOptions

from vgkit.errors import VgkitError
from vgkit.interfaces import FeatureSpec, GroundingState
from vgkit.model import build_model, compute_loss
from vgkit.recipe import load_recipe

SPEC = FeatureSpec(channels=8, grid=(4, 4), word_dim=6, visual_dim=8, text_dim=6, input_size=(64, 64))
PHRASES = ["the red circle on the left", "man", "sky above the tree"]


def _state(B=3, L=5, spec=SPEC, mask=None, alpha=None):
    g = torch.Generator().manual_seed(0)
    V = torch.randn(B, spec.regions, spec.channels, generator=g)
    v_l = torch.randn(B, L, spec.word_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool) if mask is None else mask
    v_T = v_l.mean(1)
    return GroundingState(V=V, grid=spec.grid, v_l=v_l, word_mask=mask, v_T=v_T,
                          visual=V.mean(1), text=v_T, alpha_I=alpha)


def ref_iou(a, b):
    """IoU of two (x, y, w, h) boxes, written out by hand."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# ---------------------------------------------------------------- 3.2 text model

def test_blstm_v_T_is_the_mean_of_real_words_and_padding_changes_nothing():
    torch.manual_seed(0)
    enc = BLSTMEncoder(BLSTMOptions(embedding_dim=16, hidden=12, vocab_size=50), None, None).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    mask = ids != 0
    v_l, v_T = enc(ids, mask)
    assert torch.allclose(v_T[0], v_l[0, :3].mean(0), atol=1e-6)
    assert torch.all(v_l[~mask] == 0)
    longer = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)
    v_l2, v_T2 = enc(longer, longer != 0)
    assert torch.allclose(v_T, v_T2, atol=1e-6) and torch.allclose(v_l, v_l2[:, :5], atol=1e-6)
    alone, _ = enc(ids[1:, :2], mask[1:, :2])  # no padding at all
    assert torch.allclose(alone[0], v_l[1, :2], atol=1e-6)


def test_blstm_merge_is_tanh_of_both_directions():
    torch.manual_seed(0)
    enc = BLSTMEncoder(BLSTMOptions(embedding_dim=4, hidden=3, vocab_size=20), None, None).eval()
    ids = torch.tensor([[4, 5, 6]])
    out, _ = enc.lstm(enc.W_e(ids))
    fwd, bwd = out.chunk(2, -1)
    expected = torch.tanh(fwd @ enc.W_fwd.weight.T + bwd @ enc.W_bwd.weight.T + enc.W_bwd.bias)
    v_l, _ = enc(ids, ids != 0)
    assert torch.allclose(v_l, expected, atol=1e-6)


def test_blstm_takes_the_data_layers_embedding_matrix():
    from vgkit.text import Vocabulary

    vocab = Vocabulary(["red", "circle"])
    W = torch.randn(len(vocab), 5)
    enc = BLSTMEncoder(BLSTMOptions(embedding_dim=5), vocab, W)
    assert torch.equal(enc.W_e.weight.detach(), W)
    with pytest.raises(VgkitError, match="embeddings are"):
        BLSTMEncoder(BLSTMOptions(embedding_dim=7), vocab, W)
    inputs = enc.tokenize(["Red circle.", "blue"])
    assert inputs.ids.tolist() == [[vocab.stoi["red"], vocab.stoi["circle"]], [vocab.unk_id, 0]]
    assert inputs.mask.tolist() == [[True, True], [True, False]]


# ---------------------------------------------------------------- 3.3 / 3.4 attention

def test_image_attention_is_relu_of_an_mlp_per_region():
    torch.manual_seed(0)
    att = ImageAttention(ImageAttentionOptions(hidden=10, layers=1, dropout=0), SPEC).eval()
    s = _state()
    V, v_T = s.V.clone(), s.v_T.clone()
    out = att(s)
    h = torch.tanh(V @ att.W_vr.weight.T + (v_T @ att.W_vt.weight.T + att.W_vt.bias)[:, None])
    expected = torch.relu(h @ att.W_vh.weight.T + att.W_vh.bias).squeeze(-1)
    assert torch.allclose(out.alpha_I, expected, atol=1e-6)
    assert out.visual is out.alpha_I and out.alpha_I.shape == (3, SPEC.regions)
    assert att.out_spec.visual_dim == SPEC.regions and "alpha_I" in att.out_spec.provided


def test_relu_not_softmax_on_image_attention_softmax_on_text_attention():
    torch.manual_seed(1)
    att = ImageAttention(ImageAttentionOptions(hidden=10, dropout=0), SPEC).eval()
    with torch.no_grad():
        att.W_vh.bias.fill_(0.05)  # make sure some regions are active
    alpha = att(_state()).alpha_I
    assert (alpha >= 0).all()
    assert not torch.allclose(alpha.sum(-1), torch.ones(3))  # relu does not normalise
    soft = ImageAttention(ImageAttentionOptions(hidden=10, dropout=0, activation="softmax"), SPEC).eval()
    assert torch.allclose(soft(_state()).alpha_I.sum(-1), torch.ones(3), atol=1e-6)
    soft_n = ImageAttention(ImageAttentionOptions(hidden=10, dropout=0, activation="softmax-n"), SPEC).eval()
    soft_n.load_state_dict(soft.state_dict())
    # softmax is shift-invariant, so b_vh would only collect rounding noise: it is frozen
    assert att.W_vh.bias.requires_grad and not soft.W_vh.bias.requires_grad
    assert not soft_n.W_vh.bias.requires_grad
    assert torch.allclose(soft_n(_state()).alpha_I, soft(_state()).alpha_I * SPEC.regions, atol=1e-6)
    spec = att.out_spec
    ta = TextAttention(TextAttentionOptions(hidden=7, dropout=0), spec).eval()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    s = att(_state(mask=mask))
    out = ta(s)
    assert torch.allclose(out.alpha_T.sum(-1), torch.ones(3), atol=1e-6)
    assert (out.alpha_T[~mask] == 0).all()
    assert torch.allclose(out.text, (out.alpha_T[..., None] * out.v_l).sum(1), atol=1e-6)


def test_text_attention_is_driven_by_the_image_attention_map():
    torch.manual_seed(0)
    ia = ImageAttention(ImageAttentionOptions(hidden=10, dropout=0), SPEC).eval()
    ta = TextAttention(TextAttentionOptions(hidden=7, dropout=0), ia.out_spec).eval()
    s1 = ia(_state())
    a1 = ta(s1).alpha_T.clone()
    s2 = ia(_state())
    s2.alpha_I = s2.alpha_I + torch.linspace(0, 3, SPEC.regions)  # a different map
    assert not torch.allclose(a1, ta(s2).alpha_T)


def test_text_attention_without_image_attention_is_a_clear_error():
    with pytest.raises(VgkitError, match="image-attention before it"):
        TextAttention(TextAttentionOptions(), SPEC)


def test_padded_words_never_change_any_output(registry):
    recipe = load_recipe("refit-attn-regression", ["data.image_size=[64, 64]"], registry=registry)
    torch.manual_seed(0)
    model, _ = build_model(recipe, registry)
    model.eval()
    feats = torch.randn(3, 512, 4, 4)
    text = model.tokenize(PHRASES)
    pad = torch.zeros(3, 6, dtype=torch.long)
    padded = type(text)(torch.cat([text.ids, pad], 1), torch.cat([text.mask, pad.bool()], 1))
    a, b = model(text, features=feats), model(padded, features=feats)
    assert torch.allclose(a.g, b.g, atol=1e-5)
    assert torch.allclose(a.state.alpha_I, b.state.alpha_I, atol=1e-6)
    assert torch.allclose(a.state.alpha_T, b.state.alpha_T[:, : text.ids.shape[1]], atol=1e-6)


def test_shared_images_compute_W_vr_V_once_per_image_with_the_same_outputs(registry):
    recipe = load_recipe("refit-attn-regression", ["data.image_size=[64, 64]"], registry=registry)
    torch.manual_seed(0)
    model, _ = build_model(recipe, registry)
    model.eval()
    feats = torch.randn(2, 512, 4, 4)  # two images, three phrases: 0, 1 on image 0, 2 on 1
    image_index = torch.tensor([0, 0, 1])
    text = model.tokenize(PHRASES)
    rows = []
    hook = model.attention[0].W_vr.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    shared = model(text, features=feats, image_index=image_index)
    copied = model(text, features=feats[image_index])
    hook.remove()
    assert rows == [2, 3]  # W_vr ran over the 2 images, then over 3 copies of them
    assert torch.allclose(shared.g, copied.g, atol=1e-5)
    assert torch.allclose(shared.state.alpha_I, copied.state.alpha_I, atol=1e-6)
    model.train()  # training keeps the per-expression V, so gradients sum as they always did
    rows.clear()
    hook = model.attention[0].W_vr.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    model(text, features=feats, image_index=image_index)
    hook.remove()
    assert rows == [3]


# ---------------------------------------------------------------- 3.5 head

def test_box_regression_is_relu_of_an_mlp_over_alpha_and_v_T_prime():
    torch.manual_seed(0)
    spec = SPEC.with_(visual_dim=SPEC.regions)
    head = BoxRegression(BoxRegressionOptions(hidden=9, layers=1, dropout=0), spec).eval()
    s = _state()
    s.visual = torch.randn(3, SPEC.regions)
    h_p = torch.tanh(s.visual @ head.W_pv.weight.T + head.W_pv.bias + s.text @ head.W_pt.weight.T)
    expected = torch.relu(h_p @ head.W_p.weight.T + head.W_p.bias)
    assert torch.allclose(head(s), expected, atol=1e-6)
    assert head.box_format == "xywh-pixels"
    head.init_output_bias(torch.tensor([10.0, 20.0, 30.0, 40.0]))
    assert torch.allclose(head(s), torch.tensor([10.0, 20.0, 30.0, 40.0]).expand(3, 4), atol=0.5)


# ---------------------------------------------------------------- 3.6 loss

def test_L_IoU_matches_a_hand_written_iou_and_L_SE_is_half_squared_error():
    loss = IouSeArea(IouSeAreaOptions(area=False), SPEC)
    t = torch.tensor([[10.0, 10.0, 20.0, 30.0], [0.0, 0.0, 64.0, 64.0], [5.0, 5.0, 4.0, 4.0]])
    g = torch.tensor([[15.0, 12.0, 20.0, 20.0], [16.0, 16.0, 16.0, 16.0], [40.0, 40.0, 3.0, 3.0]])
    out = loss(g, t, _state(), (64, 64))
    ious = [ref_iou(a.tolist(), b.tolist()) for a, b in zip(t, g, strict=True)]
    assert out.terms["L_IoU"].item() == pytest.approx(1 - sum(ious) / 3, abs=1e-6)
    se = sum(0.5 * sum((x - y) ** 2 for x, y in zip(a.tolist(), b.tolist(), strict=True))
             for a, b in zip(t, g, strict=True)) / 3
    assert out.terms["L_SE"].item() == pytest.approx(1e-4 * se, rel=1e-6)
    assert out.total.item() == pytest.approx(1 - sum(ious) / 3 + 1e-4 * se, rel=1e-6)


def test_S_box_is_the_area_in_feature_map_cells():
    t = torch.tensor([[0.0, 0.0, 112.0, 112.0], [0.0, 0.0, 224.0, 224.0], [3.0, 3.0, 16.0, 32.0]])
    assert box_area_cells(t, (14, 14), (224, 224)).tolist() == [49.0, 196.0, 2.0]


def test_area_penalty_is_half_squared_difference_of_S_box_and_S_att():
    loss = IouSeArea(IouSeAreaOptions(lambda2=1.0, iou=False, se=False),
                     SPEC.with_(provided=frozenset({"alpha_I"})))
    s = _state(B=1)
    s.alpha_I = torch.full((1, 16), 0.5)  # S_att = 8
    t = torch.tensor([[0.0, 0.0, 32.0, 32.0]])  # a quarter of 64x64 = 4 of 16 cells
    out = loss(t, t, s, (64, 64))
    assert out.total.item() == pytest.approx(0.5 * (4 - 8) ** 2)


@pytest.mark.parametrize("off", ["iou", "se", "area"])
def test_a_switched_off_term_contributes_exactly_zero(off):
    spec = SPEC.with_(provided=frozenset({"alpha_I"}))
    loss = IouSeArea(IouSeAreaOptions(**{off: False}, lambda1=0.5, lambda2=0.5), spec)
    s = _state()
    s.alpha_I = torch.rand(3, 16, requires_grad=True)
    g = torch.rand(3, 4, requires_grad=True) * 30
    t = torch.tensor([[1.0, 2, 30, 40], [5, 5, 10, 10], [0, 0, 64, 64]])
    out = loss(g, t, s, (64, 64))
    name = {"iou": "L_IoU", "se": "L_SE", "area": "L_S"}[off]
    assert out.terms[name].item() == 0.0
    assert out.total.item() == pytest.approx(sum(v.item() for v in out.terms.values()), rel=1e-6)
    if off == "area":
        out.total.backward()
        assert s.alpha_I.grad is None  # nothing flows into the map without L_S


def test_area_penalty_without_an_attention_map_is_a_clear_error():
    with pytest.raises(VgkitError, match="needs an image attention"):
        IouSeArea(IouSeAreaOptions(), SPEC)



def test_box_cell_coverage_is_each_cells_covered_share_row_major():
    t = torch.tensor([[16.0, 0.0, 32.0, 8.0]])  # 64x64 input, 4x4 cells of 16 px
    c = box_cell_coverage(t, (4, 4), (64, 64)).view(4, 4)
    assert c[0].tolist() == [0.0, 0.5, 0.5, 0.0]  # half the height of cells 1 and 2 of row 0
    assert c[1:].sum().item() == 0.0
    boxes = torch.tensor([[3.0, 5.0, 40.0, 21.0], [0.0, 0.0, 64.0, 64.0]])
    assert box_cell_coverage(boxes, (4, 4), (64, 64)).sum(-1).tolist() == pytest.approx(
        box_area_cells(boxes, (4, 4), (64, 64)).tolist())


def test_L_A_is_lower_when_the_attention_sits_on_the_box_and_pulls_it_there():
    spec = SPEC.with_(provided=frozenset({"alpha_I"}))
    loss = IouSeArea(IouSeAreaOptions(iou=False, se=False, area=False, lambda_att=2.0), spec)
    t = torch.tensor([[0.0, 0.0, 16.0, 16.0]])  # exactly cell 0
    on, off = torch.zeros(1, 16), torch.zeros(1, 16)
    on[0, 0], off[0, 15] = 1.0, 1.0
    l_on, l_off = (loss(t, t, _state(B=1, alpha=a), (64, 64)).total.item() for a in (on, off))
    assert l_on == pytest.approx(0.0, abs=1e-4) and l_off > 10
    alpha = torch.full((1, 16), 1 / 16, requires_grad=True)
    out = loss(t, t, _state(B=1, alpha=alpha), (64, 64))
    assert out.terms["L_A"].item() == pytest.approx(2.0 * torch.log(torch.tensor(16.0)).item(), rel=1e-4)
    out.total.backward()
    assert alpha.grad[0, 0] < 0 and (alpha.grad[0, 1:] > 0).all()  # more mass on the box


def test_L_A_without_an_attention_map_is_a_clear_error():
    with pytest.raises(VgkitError, match="lambda_att"):
        IouSeArea(IouSeAreaOptions(area=False, lambda_att=1.0), SPEC)


# ---------------------------------------------------------------- composition

@pytest.mark.parametrize("name", ["refit-attn-regression", "refit-no-text-attention",
                                  "refit-no-attention", "refit-no-penalty",
                                  "synthetic-attn-regression", "synthetic-no-text-attention",
                                  "synthetic-no-attention", "synthetic-no-attention-loss"])
def test_reference_and_ablation_recipes_run_forward_and_backward(registry, name):
    recipe = load_recipe(name, registry=registry)
    torch.manual_seed(0)
    model, loss = build_model(recipe, registry)
    model.train()
    images = torch.randn(2, 3, 224, 224)
    out = model(model.tokenize(PHRASES[:2]), images=images)
    assert out.g.shape == (2, 4) and out.boxes.shape == (2, 4)
    target = torch.tensor([[10.0, 20.0, 110.0, 120.0], [0.0, 0.0, 224.0, 224.0]])
    res = compute_loss(loss, out, target, model.head.box_format, (224, 224))
    assert torch.isfinite(res.total)
    res.total.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable if p is not model.text_encoder.W_e.weight)
    assert all(p.grad is None for p in model.backbone.parameters())
    n_att = len(recipe.model.attention)
    assert (out.state.alpha_I is None) == (n_att == 0)
    assert (out.state.alpha_T is None) == (n_att < 2)
    assert ("L_A" in res.terms) == (recipe.loss.options().get("lambda_att", 0) > 0)


def test_features_and_image_index_give_the_same_result_as_images(registry):
    recipe = load_recipe("refit-attn-regression", ["data.image_size=[64, 64]"], registry=registry)
    torch.manual_seed(0)
    model, _ = build_model(recipe, registry)
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    text = model.tokenize(PHRASES)
    index = torch.tensor([0, 1, 0])
    direct = model(text, images=images[index])
    shared = model(text, features=model.encode_image(images), image_index=index)
    assert torch.allclose(direct.g, shared.g, atol=1e-4)
    with pytest.raises(VgkitError, match="model expects"):
        model(text, features=torch.randn(3, 512, 5, 5))


# ---------------------------------------------------------------- 3.1 backbone

def test_vgg16_is_conv5_3_relu_frozen_and_warns_without_weights():
    with pytest.warns(RandomWeightsWarning):
        bb = build_vgg16(BackboneOptions())
    assert (bb.channels, bb.stride, bb.frozen) == (512, 16, True)
    assert not any(p.requires_grad for p in bb.parameters())
    out = bb(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 512, 14, 14) and (out >= 0).all()  # after the ReLU
    bb.train()
    assert not bb.body.training


@pytest.mark.parametrize("layout", ["torchvision-pth", "timm-safetensors", "features-only-pth"])
def test_vgg16_loads_local_weights_in_either_layout(tmp_path, layout):
    from safetensors.torch import save_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = build_vgg16(BackboneOptions())
    torch.manual_seed(3)
    convs = {k.replace("features_", "features.", 1): torch.randn(v.shape)
             for k, v in ref.body.state_dict().items()}
    if layout == "torchvision-pth":
        state = {**convs, "classifier.0.weight": torch.zeros(2, 2)}
        torch.save(state, tmp_path / "vgg16.pth")
        path = tmp_path / "vgg16.pth"
    elif layout == "timm-safetensors":
        path = tmp_path / "vgg16.safetensors"
        save_file({**convs, "head.fc.weight": torch.zeros(2, 2)}, str(path))
    else:
        path = tmp_path / "convs.pth"
        torch.save({"state_dict": convs}, path)
    bb = build_vgg16(BackboneOptions(weights=str(path)))
    assert torch.equal(bb.body.state_dict()["features_28.weight"], convs["features.28.weight"])
    assert bb.identity()["weights_sha256"] != ref.identity()["weights_sha256"]
    same = build_vgg16(BackboneOptions(weights=str(path)))  # same values: same cache key
    assert same.identity() == bb.identity()


def test_vgg16_weights_errors_name_the_file(tmp_path):
    with pytest.raises(VgkitError, match="not found"):
        build_vgg16(BackboneOptions(weights=str(tmp_path / "missing.pth")))
    bad = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(VgkitError, match=r"other\.pth.*missing"):
        build_vgg16(BackboneOptions(weights=str(bad)))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"not a pickle at all")
    with pytest.raises(VgkitError, match=r"evil\.pth"):
        build_vgg16(BackboneOptions(weights=str(evil)))
