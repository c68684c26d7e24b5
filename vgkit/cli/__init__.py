"""The ``vgkit`` command line (Typer + rich)."""

from __future__ import annotations

import sys
import warnings
from importlib import import_module
from typing import Any

import typer

import vgkit
from vgkit.cli.common import console, err_console, print_error, styled
from vgkit.errors import VgkitError

_app = typer.Typer(help="vgkit: visual grounding toolkit (phrase -> box).", no_args_is_help=True,
                   pretty_exceptions_enable=False, add_completion=False)

# Each command (group) lives in its own module, which only parses arguments and prints:
# name, module under vgkit.cli, attribute, whether it is a group, the group's help.
_COMMANDS: list[tuple[str, str, str, bool, str | None]] = [
    ("plugins", "plugins", "plugins", False, None),
    ("recipes", "recipes", "app", True, None),
    ("train", "train", "train", False, None),
    ("search", "search", "search", False, None),
    ("eval", "eval", "eval_cmd", False, None),
    ("bench", "eval", "bench_cmd", False, None),
    ("predict", "eval", "predict_cmd", False, None),
    ("serve", "serve", "serve", False, None),
    ("export", "export", "export", False, None),
    ("data", "data", "app", True, "Prepare, generate and summarise datasets."),
    ("features", "features", "app", True, None),
    ("weights", "weights", "app", True, None),
]
_mounted: set[str] = set()


def _mount(only: str | None = None) -> typer.Typer:
    """Add the commands to the app: all of them, or just `only` (so `vgkit data` needs no torch)."""
    for name, module, attr, group, group_help in _COMMANDS:
        if name in _mounted or (only is not None and name != only):
            continue
        obj = getattr(import_module(f"vgkit.cli.{module}"), attr)
        if group and group_help:
            _app.add_typer(obj, name=name, help=group_help)
        elif group:
            _app.add_typer(obj, name=name)
        else:
            _app.command(name)(obj)
        _mounted.add(name)
    return _app


def __getattr__(name: str) -> Any:
    """``vgkit.cli.app``: the app with every command mounted."""
    if name == "app":
        return _mount()
    raise AttributeError(f"module 'vgkit.cli' has no attribute {name!r}")


def _show_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
    err_console.print(styled("warning:", "yellow", f" {message}"), soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"vgkit {vgkit.__version__}")
        raise typer.Exit()


@_app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    warnings.showwarning = _show_warning


def main() -> None:
    """Console-script entry point: mounts only the command named, when one is."""
    first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    try:
        _mount(first if first in {c[0] for c in _COMMANDS} else None)()
    except VgkitError as exc:  # raised outside a command (e.g. strict plugin loading)
        print_error(exc)
        sys.exit(2)
