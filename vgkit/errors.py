"""User-facing errors: one line that names the bad file, key or value."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VgkitError(Exception):
    """An error caused by user input; the CLI prints it as one line, no traceback."""


class UnknownNameError(VgkitError, KeyError):
    """A name (component, recipe key, dataset) that is not one of the valid choices."""

    def __init__(self, what: str, name: str, choices: Iterable[str]) -> None:
        self.what, self.name, self.choices = what, name, sorted(choices)
        super().__init__(str(self))

    def __str__(self) -> str:  # KeyError would repr() the message
        return f"unknown {self.what} {self.name!r}; valid: {choices_hint(self.name, self.choices)}"


def choices_hint(name: str, choices: Iterable[str]) -> str:
    """List `choices` with the closest matches to `name` first."""
    choices = sorted(set(choices))
    if not choices:
        return "(none registered)"
    close = difflib.get_close_matches(name, choices, n=len(choices), cutoff=0.0)
    ranked = sorted(choices, key=lambda c: close.index(c) if c in close else len(close))
    return ", ".join(ranked)
