"""The ``vgkit`` command line (Typer + rich)."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import typer

import vgkit
from vgkit.cli.common import console, err_console, print_error, styled
from vgkit.errors import VgkitError

app = typer.Typer(help="vgkit: visual grounding toolkit (phrase -> box).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


def _mount() -> None:
    """Each command group lives in its own module; they only parse arguments and print."""
    from vgkit.cli import (
        data,
        eval,
        export,
        features,
        plugins,
        recipes,
        search,
        serve,
        train,
        weights,
    )

    app.command("plugins")(plugins.plugins)
    app.add_typer(recipes.app, name="recipes")
    app.command("train")(train.train)
    app.command("search")(search.search)
    app.command("eval")(eval.eval_cmd)
    app.command("bench")(eval.bench_cmd)
    app.command("predict")(eval.predict_cmd)
    app.command("serve")(serve.serve)
    app.command("export")(export.export)
    app.add_typer(data.app, name="data", help="Prepare, generate and summarise datasets.")
    app.add_typer(features.app, name="features")
    app.add_typer(weights.app, name="weights")


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


_mount()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except VgkitError as exc:  # raised outside a command (e.g. strict plugin loading)
        print_error(exc)
        sys.exit(2)
