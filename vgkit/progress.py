"""Progress of long work, in a terminal and out of one.

In a terminal it is a rich bar. Under CI, Slurm or ``nohup ... > log`` a bar shows
nothing until the work ends, so there a plain line with the count, the rate and
the time left is printed every ``$VGKIT_PROGRESS_SECONDS`` seconds (default 10),
and once at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

DEFAULT_SECONDS = 10.0


class Advance(Protocol):
    """``advance(n, **fields)``: `n` more units done; fields such as ``loss=0.3`` are shown."""

    def __call__(self, n: int = 1, **fields: float) -> None: ...


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("VGKIT_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fields(fields: dict[str, float]) -> str:
    return "".join(f", {k} {v:.4g}" for k, v in fields.items())


@contextmanager
def progress_bar(description: str, total: int, unit: str, *, done: int = 0, enabled: bool = True,
             stream: Any = None) -> Iterator[Advance]:
    """Report progress of `total` units (`done` already finished) while the block runs."""
    out = stream or sys.stderr
    if not enabled:
        yield lambda n=1, **fields: None
        return
    console = Console(file=out, markup=False, highlight=False)
    if console.is_terminal:
        cols = (TextColumn(description, markup=False), BarColumn(),
                TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
                TextColumn("{task.fields[shown]}", markup=False), TimeRemainingColumn())
        with Progress(*cols, console=console) as bar:
            task = bar.add_task(description, total=total, completed=done, shown="")

            def advance_bar(n: int = 1, **fields: float) -> None:
                bar.update(task, advance=n, shown=_fields(fields).lstrip(", "))

            yield advance_bar
        return
    state: dict[str, Any] = {"count": done, "started": time.monotonic(), "last": time.monotonic(),
             "fields": {}}

    def line() -> None:
        count, elapsed = state["count"], time.monotonic() - state["started"]
        rate = (count - done) / elapsed if elapsed > 0 else 0.0
        left = f", {_duration((total - count) / rate)} left" if rate > 0 and count < total else ""
        share = f" ({count / total:.0%})" if total else ""
        print(f"{description}: {count:,}/{total:,} {unit}{share}, {rate:.1f} {unit}/s"
              f"{_fields(state['fields'])}{left}", file=out, flush=True)

    def advance_lines(n: int = 1, **fields: float) -> None:
        state["count"] += n
        state["fields"] = fields
        now = time.monotonic()
        if now - state["last"] >= _interval():
            state["last"] = now
            line()

    yield advance_lines
    line()
