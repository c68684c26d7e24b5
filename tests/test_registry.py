"""The registry: kinds, families, duplicates, closest-match errors."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from vgkit.errors import UnknownNameError
from vgkit.registry import DuplicateComponentError, Registry


class Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = 3


def test_add_get_build_passes_options_and_context():
    reg = Registry()
    with reg.scope("mine"):
        reg.add("head", "h", lambda opts, *, spec: (opts.size, spec), options=Opts)
    comp = reg.get("head", "h")
    assert comp.plugin == "mine"
    assert reg.build("head", "h", {"size": 5}, spec="S") == (5, "S")


def test_family_names_receive_the_variant():
    reg = Registry()
    reg.add("backbone", "timm:*", lambda opts, *, variant: variant, options=Opts)
    assert reg.build("backbone", "timm:resnet50") == "resnet50"
    with pytest.raises(UnknownNameError):
        reg.get("backbone", "torchvision:resnet50")


def test_duplicate_names_both_plugins():
    reg = Registry()
    with reg.scope("first"):
        reg.add("loss", "l", lambda o: o)
    with reg.scope("second"), pytest.raises(DuplicateComponentError) as info:
        reg.add("loss", "l", lambda o: o)
    assert "first" in str(info.value) and "second" in str(info.value)


def test_unknown_name_lists_closest_first():
    reg = Registry()
    for name in ("box-regression", "box-mlp", "zeta"):
        reg.add("head", name, lambda o: o)
    with pytest.raises(UnknownNameError) as info:
        reg.get("head", "box-regresion")
    message = str(info.value)
    assert message.index("box-regression") < message.index("zeta")
    assert "\n" not in message


def test_unknown_kind_is_an_error():
    with pytest.raises(UnknownNameError, match="component kind"):
        Registry().add("optimizer", "x", lambda o: o)


def test_remove_plugin_forgets_only_its_components():
    reg = Registry()
    with reg.scope("a"):
        reg.add("loss", "a1", lambda o: o)
    with reg.scope("b"):
        reg.add("loss", "b1", lambda o: o)
    reg.remove_plugin("a")
    assert reg.names("loss") == ["b1"]


def test_plugins_verbose_lists_each_component_with_its_description():
    from typer.testing import CliRunner

    from vgkit.cli import app

    res = CliRunner().invoke(app, ["plugins", "--verbose"])
    assert res.exit_code == 0, res.output
    rows = [" ".join(x.replace("│", " ").split()) for x in res.output.splitlines()]
    assert any(r.startswith("head box-regression endo2017 The paper's region prediction MLP")
               for r in rows), res.output
    assert any(r.startswith("dataset synthetic datasets The PIL-drawn scenes") for r in rows)
