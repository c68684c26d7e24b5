"""What the conformance checks build from: stubs for the parts not under test, tiny
inputs, and the small composed model a component is checked inside."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vgkit.errors import VgkitError
from vgkit.interfaces import (
    Backbone,
    BoxFormat,
    FeatureSpec,
    GroundingState,
    Head,
    TextEncoder,
    TextInputs,
)
from vgkit.model import GroundingModel
from vgkit.registry import Registry

KINDS = ("backbone", "text_encoder", "attention", "head", "loss")
SIZE = (64, 64)  # network input: every stride-16/32 backbone gives a non-empty grid
PHRASES = ["the red circle", "a small blue square left of the big green triangle"]
BOX = torch.tensor([[8.0, 12.0, 40.0, 52.0], [30.0, 4.0, 60.0, 28.0]])  # xyxy pixels

# what the checks build from: set by check_component for the duration of one check
@dataclass
class _State:
    registry: Registry | None = None
    options: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


state = _State()


def _check(ok: Any, message: str) -> None:
    """An assertion that ``python -O`` cannot remove."""
    if not ok:
        raise AssertionError(message)


def registry() -> Registry:
    """The registry the running check builds from."""
    if state.registry is None:
        from vgkit.plugins import get_registry

        return get_registry()
    return state.registry


def build(kind: str, name: str, options: dict[str, Any] | None = None, **context: Any) -> Any:
    """Build a component quietly (random-weight warnings are expected here)."""
    options = {**state.options.get((kind, name), {}), **(options or {})}
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
