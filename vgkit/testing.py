"""Conformance checks for components and datasets, for any plugin's own test suite.

``check_component(kind, name)`` builds a registered component and checks that it
honours its kind's contract (:mod:`vgkit.interfaces`): shapes, dtypes,
finiteness, determinism under a seed, padding invariance for text encoders, the
frozen-backbone rules, ``out_spec`` honesty for attention, ``init_output_bias``
for heads, and gradient flow through a tiny composed model whose other parts are
stubs. ``check_dataset(name, root)`` builds a dataset and checks its index.
A failed check raises ``AssertionError`` naming what is wrong; a loss that cannot
be built on any attention chain raises ``unittest.SkipTest`` (pytest skips it)::

    from vgkit.testing import check_component

    def test_my_attention_conforms():
        check_component("attention", "my-attention")

vgkit's own ``tests/test_conformance.py`` runs these over every registered component.
"""

from __future__ import annotations

import functools
import json
import unittest
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vgkit.boxes import FORMATS, from_xyxy, to_xyxy
from vgkit.errors import VgkitError
from vgkit.interfaces import (
    Backbone,
    BoxFormat,
    FeatureSpec,
    GroundingState,
    Head,
    LossOutput,
    TextEncoder,
    TextInputs,
)
from vgkit.model import GroundingModel, compute_loss
from vgkit.registry import Registry

__all__ = ["KINDS", "check_component", "check_dataset"]

KINDS = ("backbone", "text_encoder", "attention", "head", "loss")
SIZE = (64, 64)  # network input: every stride-16/32 backbone gives a non-empty grid
PHRASES = ["the red circle", "a small blue square left of the big green triangle"]
BOX = torch.tensor([[8.0, 12.0, 40.0, 52.0], [30.0, 4.0, 60.0, 28.0]])  # xyxy pixels

# what the checks build from: set by check_component for the duration of one check
_registry: Registry | None = None
_options: dict[tuple[str, str], dict[str, Any]] = {}


def _check(ok: Any, message: str) -> None:
    """An assertion that ``python -O`` cannot remove."""
    if not ok:
        raise AssertionError(message)


def registry() -> Registry:
    """The registry the running check builds from."""
    if _registry is None:
        from vgkit.plugins import get_registry

        return get_registry()
    return _registry


def build(kind: str, name: str, options: dict[str, Any] | None = None, **context: Any) -> Any:
    """Build a component quietly (random-weight warnings are expected here)."""
    options = {**_options.get((kind, name), {}), **(options or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return registry().build(kind, name, options, **context)


def seeded(fn: Callable[[], Any], seed: int = 0) -> Any:
    """Run `fn` right after seeding torch."""
    torch.manual_seed(seed)
    return fn()


class StubBackbone(Backbone):
    """One stride-16 patchify conv."""

    channels, stride, frozen = 16, 16, False

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, self.channels, 16, stride=16)

    def forward(self, images: Tensor) -> Tensor:
        """Patchify."""
        return self.conv(images)

    def identity(self) -> dict[str, Any]:
        """A fixed identity."""
        return {"model": "stub"}

class StubText(TextEncoder):
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


class StubHead(Head):
    """Linear in both visual and text, so every upstream output matters."""

    box_format: BoxFormat = "xyxy-pixels"

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.visual = nn.Linear(spec.visual_dim, 4)
        self.text = nn.Linear(spec.text_dim, 4) if spec.text_dim else None

    def forward(self, state: GroundingState) -> Tensor:
        g = self.visual(state.visual)
        return g + self.text(state.text) if self.text is not None else g

    def init_output_bias(self, box: Tensor) -> None:
        pass


def compose(backbone: Backbone | None = None, text_encoder: TextEncoder | None = None,
            attention: tuple[str, ...] = (),
            head: str | None = None) -> tuple[GroundingModel, list[nn.Module]]:
    """A GroundingModel from real parts where given, stubs elsewhere; also the attention built."""
    backbone = backbone or StubBackbone()
    text_encoder = text_encoder or StubText()
    H, W = SIZE
    spec = FeatureSpec(channels=backbone.channels, grid=(H // backbone.stride, W // backbone.stride),
                       word_dim=text_encoder.dim, visual_dim=backbone.channels,
                       text_dim=text_encoder.dim, input_size=SIZE)
    modules: list[nn.Module] = []
    for name in attention:
        module = build("attention", name, spec=spec)
        modules.append(module)
        spec = module.out_spec
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
    _check(params, f"{what} has no trainable parameters")
    missing = [n for n, p in params.items() if p.grad is None]
    _check(not missing, f"{what}: no gradient reaches {missing}")
    grads = [p.grad for p in params.values() if p.grad is not None]
    _check(all(torch.isfinite(g).all() for g in grads), f"{what}: non-finite grad")
    _check(any(g.abs().sum() > 0 for g in grads), f"{what}: all gradients zero")


def assert_finite(t: Tensor | None, what: str) -> None:
    """Present, float32 and finite."""
    if t is None:
        raise AssertionError(f"{what} is None")
    _check(t.dtype == torch.float32, f"{what} is {t.dtype}")
    _check(torch.isfinite(t).all(), f"{what} has NaN or inf")


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
        _check(name in chain, f"attention {name!r} builds after no chain of modules: {exc}")
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
    _check(tuple(out.shape) == (2, bb.channels, h, w),
           f"V_map is {tuple(out.shape)}, expected {(2, bb.channels, h, w)} (channels, stride)")
    assert_finite(out, f"backbone {name} output")
    _check(torch.equal(out, out2), "two builds under one seed differ")
    ident = bb.identity()
    _check(isinstance(ident, dict) and json.dumps(ident, sort_keys=True),
           f"identity() must be a JSON-serialisable dict, got {ident!r}")
    _check(ident == again.identity(), "identity() is the feature-cache key: it must be stable")
    fields = registry().get("backbone", name).options.model_fields
    for frozen in ({bb.frozen, not bb.frozen} if "frozen" in fields else {bb.frozen}):
        module = bb if frozen == bb.frozen else seeded(
            functools.partial(build, "backbone", name, {"frozen": frozen}))
        _check(module.frozen is frozen, f"built with frozen={frozen}, .frozen is {module.frozen}")
        check_frozen(module, x) if frozen else check_trainable_backbone(module)


def check_frozen(bb: nn.Module, x: Tensor) -> None:
    _check(not any(p.requires_grad for p in bb.parameters()), "a frozen backbone has trainable params")
    buffers = {k: v.clone() for k, v in bb.state_dict().items()}
    bb.eval()
    with torch.no_grad():
        ref = bb(x)
    bb.train()
    out = bb(x)
    _check(torch.equal(out, ref), "a frozen backbone must behave as in eval mode after .train()")
    changed = [k for k, v in bb.state_dict().items() if not torch.equal(v, buffers[k])]
    _check(not changed, f"a frozen backbone's buffers moved in train mode: {changed[:3]}")


def check_trainable_backbone(bb: Backbone) -> None:
    model, _ = compose(backbone=bb.train())
    l1_to_box(model).backward()
    assert_grads(bb, "backbone")


def check_text_encoder(name: str) -> None:
    enc = seeded(lambda: build("text_encoder", name, vocab=None, embeddings=None)).eval()
    again = seeded(lambda: build("text_encoder", name, vocab=None, embeddings=None)).eval()
    text = enc.tokenize(PHRASES)
    _check(text.ids.dtype == torch.long and text.mask.dtype == torch.bool,
           f"tokenize() gave ids {text.ids.dtype} and mask {text.mask.dtype}: expected long and bool")
    _check(text.ids.shape == text.mask.shape and text.ids.shape[0] == len(PHRASES),
           f"tokenize() gave ids {tuple(text.ids.shape)} and mask {tuple(text.mask.shape)} "
           f"for {len(PHRASES)} phrases")
    with torch.no_grad():
        v_l, v_T = enc(text.ids, text.mask)
        v_T2 = again(text.ids, text.mask)[1]
    B, L = text.ids.shape
    _check(tuple(v_l.shape) == (B, L, enc.dim) and tuple(v_T.shape) == (B, enc.dim),
           f"v_l {tuple(v_l.shape)}, v_T {tuple(v_T.shape)}: expected {(B, L, enc.dim)}, {(B, enc.dim)}")
    assert_finite(v_l, "v_l")
    assert_finite(v_T, "v_T")
    _check(torch.equal(v_T, v_T2), "two builds under one seed differ")
    # padding: the short phrase alone (unpadded), batched with a long one, and padded further
    alone = enc.tokenize(PHRASES[:1])
    _check(text.mask[0].sum() == alone.mask[0].sum() < L, "the short phrase should be padded")
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
    _check(isinstance(spec, FeatureSpec), f"out_spec must be a FeatureSpec, got {spec!r}")
    _check(spec.provided >= before.provided, "out_spec dropped a field an earlier module provided")
    model.eval()
    again.eval()
    with torch.no_grad():  # not through the head: a wrong out_spec should fail here, by name
        state, state2 = attend(model), attend(again)
    _check(tuple(state.visual.shape) == (2, spec.visual_dim), f"state.visual is {tuple(state.visual.shape)}, out_spec.visual_dim is {spec.visual_dim}")
    assert_finite(state.visual, "state.visual")
    if spec.text_dim:
        _check(state.text is not None and tuple(state.text.shape) == (2, spec.text_dim),
               f"state.text must be [2, {spec.text_dim}] (out_spec.text_dim)")
        assert_finite(state.text, "state.text")
    else:
        _check(state.text is None, "out_spec.text_dim is 0: state.text must be None")
    for field in spec.provided:
        value = getattr(state, field, None)
        value = state.extras.get(field) if value is None else value
        _check(value is not None, f"out_spec.provided says {field!r} but the state lacks it")
        assert_finite(value, field)
    _check(torch.equal(state.visual, state2.visual), "two builds under one seed differ")
    model.train()
    l1_to_box(model).backward()
    assert_grads(module, f"attention {name}")


def check_head(name: str) -> None:
    for text_dim in (12, 0):  # with and without a text vector (attention can drop it)
        spec = base_spec().with_(text_dim=text_dim)
        make = functools.partial(build, "head", name, spec=spec)
        head, again = seeded(make), seeded(make)
        _check(head.box_format in FORMATS, f"box_format {head.box_format!r} is not one of {FORMATS}")
        state = GroundingState(V=torch.randn(2, 16, 16), grid=(4, 4), v_l=torch.randn(2, 3, 12),
                               word_mask=torch.ones(2, 3, dtype=torch.bool), v_T=torch.randn(2, 12),
                               visual=torch.randn(2, 16),
                               text=torch.randn(2, text_dim) if text_dim else None)
        head.eval()
        again.eval()
        with torch.no_grad():
            g = head(state)
            _check(tuple(g.shape) == (2, 4), f"the head gave {tuple(g.shape)}, expected (2, 4)")
            assert_finite(g, "head output")
            _check(torch.equal(g, again(state)), "two builds under one seed differ")
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
        raise unittest.SkipTest(f"loss {name} does not build on the richest attention "
                                f"chain: {exc}") from None
    _check(loss.box_format in FORMATS, f"box_format {loss.box_format!r} is not one of {FORMATS}")
    out = run(model)
    result = compute_loss(loss, out, BOX, model.head.box_format, SIZE)
    _check(isinstance(result, LossOutput), f"the loss returned {type(result).__name__}, not LossOutput")
    _check(result.total.dim() == 0, "the loss must be a scalar")
    assert_finite(result.total, "loss")
    for term, value in result.terms.items():
        _check(value.dim() == 0 and torch.isfinite(value), f"term {term} not a finite scalar")
    result.total.backward()
    assert_grads(model.head, f"stub head trained by loss {name}")
    again = compute_loss(loss, out, BOX, model.head.box_format, SIZE)
    _check(torch.equal(again.total, result.total), "same input, different loss")
    # pred == target: every IoU-type term vanishes
    target = from_xyxy(BOX, loss.box_format, SIZE)
    same = loss(target.clone(), target, out.state, SIZE)
    iou_terms = {k: float(v) for k, v in same.terms.items() if "iou" in k.lower()}
    _check(all(abs(v) < 1e-4 for v in iou_terms.values()), f"pred == target: {iou_terms}")
    if list(loss.parameters()):
        assert_grads(loss, f"loss {name}")


CHECKS: dict[str, Callable[[str], None]] = {
    "backbone": check_backbone, "text_encoder": check_text_encoder,
    "attention": check_attention, "head": check_head, "loss": check_loss}


@contextmanager
def _using(reg: Registry | None, options: dict[tuple[str, str], dict[str, Any]]) -> Iterator[None]:
    global _registry, _options
    saved = _registry, _options
    _registry, _options = reg, options
    try:
        yield
    finally:
        _registry, _options = saved


def check_component(kind: str, name: str, *, registry: Registry | None = None,
                    options: dict[str, Any] | None = None,
                    other_options: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
    """Check that component `name` of `kind` honours its contract; AssertionError if not.

    `options` are given to the component (e.g. a local model directory it cannot
    build without); `other_options` to other components the check builds, by
    (kind, name). `registry` defaults to the installed plugins'.
    """
    if kind not in CHECKS:
        raise VgkitError(f"check_component: kind {kind!r} has no conformance check; "
                         f"kinds: {', '.join(CHECKS)} (datasets: check_dataset)")
    opts = dict(other_options or {})
    if options:
        opts[(kind, name)] = options
    with _using(registry, opts):
        CHECKS[kind](name)


def check_dataset(name: str, root: str | Path, *, registry: Registry | None = None,
                  options: dict[str, Any] | None = None) -> None:
    """Check that dataset `name` builds at `root` into a valid index whose images exist."""
    from vgkit.data.index import DatasetIndex, Record
    from vgkit.data.validate import check_index, image_file

    reg = registry
    if reg is None:
        from vgkit.plugins import get_registry

        reg = get_registry()
    index = reg.build("dataset", name, options or {}, root=Path(root))
    _check(isinstance(index, DatasetIndex), f"dataset {name} built a {type(index).__name__}, "
                                            "not a DatasetIndex")
    _check(len(index) > 0, f"dataset {name} at {root} has no records")
    _check(all(isinstance(r, Record) for r in index), f"dataset {name}: not every item is a Record")
    report = check_index(index)  # also refuses an image path that leaves the root
    _check(report.ok, f"dataset {name}: invalid records: {report.summary()}")
    missing = [r.image_path for r in index if not image_file(Path(root), r.image_path).is_file()]
    _check(not missing, f"dataset {name}: {len(missing)} records name missing images, e.g. "
                        f"{missing[:3]}")
    again = reg.build("dataset", name, options or {}, root=Path(root))
    _check(again.digest() == index.digest(), f"dataset {name}: two builds give other records")
