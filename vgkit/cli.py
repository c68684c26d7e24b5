"""The ``vgkit`` command line (Typer + rich)."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import typer
import yaml
from rich.syntax import Syntax
from rich.table import Table

import vgkit
from vgkit.cli_common import console, err_console, print_error, styled, user_errors
from vgkit.errors import VgkitError

app = typer.Typer(help="vgkit: visual grounding toolkit (phrase -> box).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
recipes_app = typer.Typer(help="List and show recipes.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")


def _mount() -> None:
    from vgkit import cli_data, cli_eval, cli_features, cli_search, cli_train, cli_weights

    app.command("train")(cli_train.train)
    app.command("search")(cli_search.search)
    app.command("eval")(cli_eval.eval_cmd)
    app.command("bench")(cli_eval.bench_cmd)
    app.command("predict")(cli_eval.predict_cmd)
    app.add_typer(cli_data.app, name="data", help="Prepare, generate and summarise datasets.")
    app.add_typer(cli_features.app, name="features")
    app.add_typer(cli_weights.app, name="weights")


def _show_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
    err_console.print(styled("warning:", "yellow", f" {message}"), soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"vgkit {vgkit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    warnings.showwarning = _show_warning


@app.command()
@user_errors
def plugins(verbose: bool = typer.Option(False, "--verbose", "-v",
                                         help="Also list every component with its description.")
            ) -> None:
    """List installed plugins: distribution, version, what each registered, load errors."""
    from vgkit.plugins import get_host

    host = get_host()
    table = Table(title="vgkit plugins", show_lines=True)
    for col in ("plugin", "distribution", "version", "status", "registered"):
        table.add_column(col)
    for p in host.plugins:
        by_kind: dict[str, list[str]] = {}
        for kind, name in p.registered:
            by_kind.setdefault(kind, []).append(name)
        what = "\n".join(f"{k}: {', '.join(v)}" for k, v in by_kind.items())
        status = {"ok": styled("ok", "green"), "disabled": styled("disabled", "dim")}.get(
            p.status, styled("error", "red", f"\n{p.error}"))
        table.add_row(p.name, p.distribution, p.version, status, what or "-")
    console.print(table)
    if not host.plugins:
        console.print("no plugins installed (entry-point group 'vgkit.plugins')")
    if verbose:
        comps = Table(title="components")
        for col in ("kind", "name", "plugin", "description"):
            comps.add_column(col)
        for c in host.registry.components():
            comps.add_row(c.kind, c.name, c.plugin, c.doc or "-")
        console.print(comps)


@recipes_app.callback()
@user_errors
def recipes(ctx: typer.Context) -> None:
    """List the registered recipes (``vgkit recipes show NAME`` prints one)."""
    if ctx.invoked_subcommand is not None:
        return
    from vgkit.plugins import get_registry

    table = Table(title="recipes")
    for col in ("name", "plugin", "description"):
        table.add_column(col)
    registry = get_registry()
    for comp in registry.components("recipe"):
        data = registry.build("recipe", comp.name)
        table.add_row(comp.name, comp.plugin, str(data.get("description", "")))
    console.print(table)


@recipes_app.command("show")
@user_errors
def recipes_show(
    name: str = typer.Argument(..., help="A recipe name or a TOML/YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a value: key=value (repeatable)."),
) -> None:
    """Print a recipe with every option resolved, and the model's parameter count."""
    from vgkit.model import build_model, count_parameters
    from vgkit.plugins import get_registry
    from vgkit.recipe import load_recipe

    registry = get_registry()
    recipe = load_recipe(name, set_, registry=registry)
    # never folded: yaml would break long strings at 80 columns
    text = yaml.safe_dump(recipe.resolved(registry), sort_keys=False, width=float("inf"))
    if console.is_terminal:
        console.print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    else:  # a pipe or a file gets the YAML itself: never folded, cropped or padded
        console.print(text, end="", soft_wrap=True)
    with warnings.catch_warnings():  # counting parameters needs no pretrained weights
        warnings.simplefilter("ignore")
        bb = registry.get("backbone", recipe.model.backbone.name)
        no_weights = {"weights": None} if "weights" in bb.options.model_fields else {}
        model, _ = build_model(recipe, registry, backbone_options=no_weights)
    table = Table(title=f"parameters of {recipe.name}")
    for col in ("component", "trainable", "frozen"):
        table.add_column(col)
    (table.columns[1].justify, table.columns[2].justify) = ("right", "right")
    parts = [("backbone", model.backbone), ("text_encoder", model.text_encoder)]
    parts += [(f"attention.{i}", a) for i, a in enumerate(model.attention)] + [("head", model.head)]
    for label, module in parts:
        t, f = count_parameters(module)
        table.add_row(label, f"{t:,}", f"{f:,}")
    t, f = count_parameters(model)
    table.add_row("total", f"{t:,}", f"{f:,}", style="bold")
    console.print(table)
    vocab = len(model.text_encoder.vocab) if hasattr(model.text_encoder, "vocab") else None
    if vocab:
        console.print(f"(text encoder counted with a vocabulary of {vocab:,} tokens)")


_mount()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except VgkitError as exc:  # raised outside a command (e.g. strict plugin loading)
        print_error(exc)
        sys.exit(2)
