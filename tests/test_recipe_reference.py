"""The recipe reference page is generated from the models, and says what they enforce."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from typer.testing import CliRunner

from vgkit.cli import app
from vgkit.plugins import get_host
from vgkit.recipe_reference import SECTIONS, model_table, reference_markdown, undocumented

PAGE = Path(__file__).resolve().parent.parent / "docs" / "recipes-reference.md"


def test_the_docs_page_is_what_the_models_generate():
    host = get_host()
    own = [p.name for p in host.plugins if p.distribution == "vgkit"]
    assert own, "vgkit's own plugins are not installed"
    want = reference_markdown(host.registry, own)
    got = PAGE.read_text(encoding="utf-8")
    assert got == want, ("docs/recipes-reference.md is stale: run "
                         "`python -m vgkit.recipe_reference` and commit it")


def test_every_recipe_key_has_a_description_and_a_row():
    assert undocumented() == []
    page = PAGE.read_text(encoding="utf-8")
    for _, model in SECTIONS:
        for key in model.model_fields:
            assert f"| `{key}` |" in page, key
    # the keys the old hand-written page left out
    for key in ("test_split", "workers", "eval_batch_size", "dataset"):
        assert f"| `{key}` |" in page


def test_rows_show_type_default_range_and_description():
    class Opts(BaseModel):
        size: int = Field(3, gt=0, le=8, description="how big")
        mode: Literal["a", "b"] = "a"
        path: str | None = None
        must: float = Field(description="no default")

    rows = model_table(Opts)[2:]
    assert rows[0] == "| `size` | int | `3` | > 0, <= 8 | how big |"
    assert rows[1] == '| `mode` | "a" \\| "b" | `"a"` | - | - |'
    assert rows[2] == "| `path` | str \\| none | none | - | - |"
    assert rows[3] == "| `must` | float | required | - | no default |"
    assert undocumented([Opts]) == ["Opts.mode", "Opts.path"]


def test_the_cli_prints_the_reference_with_every_installed_component():
    res = CliRunner().invoke(app, ["recipes", "reference"], env={**os.environ, "COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert "## [train]" in res.output and "| `eval_batch_size` | int | `64` | >= 1 |" in res.output
    for comp in get_host().registry.components("head"):
        assert f"#### `{comp.name}` ({comp.plugin})" in res.output


class _Commented(BaseModel):
    hidden: int = Field(8, gt=0)  # size of the hidden layer
    rate: float = Field(0.5, description="the Field's own words win")  # not this comment
    plain: bool = True


def test_a_fields_trailing_comment_describes_it_when_its_field_says_nothing():
    rows = model_table(_Commented)[2:]
    assert rows[0].endswith("| size of the hidden layer |")
    assert rows[1].endswith("| the Field's own words win |")
    assert rows[2].endswith("| - |")
