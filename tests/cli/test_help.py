"""``--help`` prints every option's and command's help text literally.

Typer renders help through rich, which reads ``[...]`` as markup and drops what it
takes for a tag: ``[default: ROOT/vgkit-index]`` vanished and ``[[search]]`` became
``[]``. Help strings escape their brackets (``\\[default: ...]``); this walks every
command and checks that each help text, escapes removed, is in its ``--help``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer

from vgkit.cli import app


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _flat(text: str) -> str:
    """Panel borders and line breaks gone, runs of spaces as one."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _intended(help_text: str) -> str:
    """The text the author meant: rich's escapes undone."""
    return _flat(help_text.replace("\\[", "["))


def test_walk_finds_every_command():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"train", "search", "eval", "data prepare", "data convert", "weights inspect"} <= names


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "vgkit" for p, _ in COMMANDS])
def test_help_prints_every_help_text_literally(runner, path, cmd):
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    shown = _flat(res.output)
    texts = [p.help for p in cmd.params if getattr(p, "help", None)]
    if cmd.help:
        texts.append(cmd.help.split("\n\n")[0])  # the first paragraph is always shown
    for text in texts:
        assert _intended(text) in shown, f"{' '.join(path)}: {text!r} not in its --help"
