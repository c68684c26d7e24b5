"""What every CLI module shares: consoles and the one-line error decorator.

Every console prints literally: rich markup is off, so user data and messages
such as ``box must be [x1, y1, x2, y2]`` keep their square brackets; styling is
applied with :class:`rich.text.Text`, never by markup in a string. Help texts are
the exception typer imposes: it reads them as markup, so a help string writes a
literal bracket as ``\\[`` (``\\[default: ...]``); tests/cli/test_help.py checks
every one. When output is not a terminal (a pipe, a log file) lines are never cut
at 80 columns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.text import Text

from vgkit.errors import VgkitError
from vgkit.fsutil import disk_full_errors

F = TypeVar("F", bound=Callable[..., Any])
_UNCUT = 1_000_000  # columns when the output is not a terminal: nothing is folded or cut


class LiteralConsole(Console):
    """A rich Console without markup, as wide as its longest line when not a terminal."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("highlight", False)
        super().__init__(**kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size; unbounded width for a pipe or a file."""
        dims = super().size
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(_UNCUT, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = LiteralConsole()
err_console = LiteralConsole(stderr=True)


def styled(label: str, style: str, rest: str = "") -> Text:
    """`label` in `style` followed by `rest`, both printed literally."""
    return Text.assemble((label, style), rest)


def print_error(message: object) -> None:
    """The one-line ``error: ...`` on stderr, the message printed literally."""
    err_console.print(styled("error:", "bold red", f" {message}"), soft_wrap=True)


def user_errors(fn: F) -> F:
    """Print a VgkitError (or a full disk) as one line and exit with status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with disk_full_errors():  # ENOSPC from anywhere: one line naming the path
                return fn(*args, **kwargs)
        except VgkitError as exc:
            print_error(exc)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
