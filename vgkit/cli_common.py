"""What every CLI module shares: consoles and the one-line error decorator."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from vgkit.errors import VgkitError
from vgkit.fsutil import disk_full_errors

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)


def user_errors(fn: F) -> F:
    """Print a VgkitError (or a full disk) as one line and exit with status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with disk_full_errors():  # ENOSPC from anywhere: one line naming the path
                return fn(*args, **kwargs)
        except VgkitError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
