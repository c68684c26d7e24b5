"""docs/tutorial.md, followed literally: its files written, its commands run, its output checked.

A fenced block whose first line is ``# file: PATH`` is written to PATH under a
temporary folder. In a ``console`` block each ``$ command`` runs there in a
shell, and the lines below it must appear in its output, in order (whitespace
runs count as one space; ``...`` stands for anything). ``pip install`` goes to
a temporary ``--target`` that every later command has on PYTHONPATH, exactly as
tests/test_third_party.py installs the example plugins.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FILE = re.compile(r"^#\s*file:\s*(\S+)\s*$")
FAILS = re.compile(r"#\s*fails: exit status (\d+)\s*$")


@dataclass
class Command:
    """One ``$`` line of a console block and the output lines shown under it."""

    line: str
    expected: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        """The exit status the page promises (0 unless marked ``# fails: exit status N``)."""
        m = FAILS.search(self.line)
        return int(m.group(1)) if m else 0


def parse(markdown: str) -> list[tuple[str, Path | list[Command], str]]:
    """The page's steps in order: ("file", path, text) or ("run", commands, "")."""
    steps: list[tuple[str, Path | list[Command], str]] = []
    for lang, body in FENCE.findall(markdown):
        first, _, rest = body.partition("\n")
        if m := FILE.match(first):
            steps.append(("file", Path(m.group(1)), rest))
        elif lang == "console":
            commands: list[Command] = []
            for line in body.splitlines():
                if line.startswith("$ "):
                    commands.append(Command(line[2:].strip()))
                elif commands and line.strip():
                    commands[-1].expected.append(line)
            steps.append(("run", commands, ""))
    return steps


def _norm(text: str) -> str:
    return " ".join(text.split())


def assert_shown(expected: list[str], output: str, what: str) -> None:
    """Every expected line matches an output line, in order; ``...`` matches anything."""
    lines = [_norm(x) for x in output.splitlines()]
    at = 0
    for want in expected:
        parts = [_norm(p) for p in want.split("...") if p.strip()]
        if not parts:
            continue
        hit = next((i for i in range(at, len(lines)) if _in_order(parts, lines[i])), None)
        assert hit is not None, f"{what}: expected {want.strip()!r} in the output:\n{output}"
        at = hit  # the next expected line may match the same output line


def _in_order(parts: list[str], line: str) -> bool:
    pos = 0
    for part in parts:
        pos = line.find(part, pos)
        if pos < 0:
            return False
        pos += len(part)
    return True


def shell_command(line: str, site: Path) -> str:
    """The command to run for a tutorial line: ``pip install`` goes to `site`, not the venv."""
    if line.startswith("pip install "):
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
               "--no-index", "--disable-pip-version-check", "--target", str(site)]
        return " ".join(map(shlex.quote, pip)) + line.removeprefix("pip install")
    return line


def follow(markdown: str, workdir: Path) -> list[str]:
    """Do what the page says in `workdir`; return the commands run (asserts on any mismatch)."""
    site = workdir / "_site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VGKIT_")}
    # this venv's vgkit and pip first; wide plain output, so tables neither wrap nor colour
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(site), COLUMNS="400", NO_COLOR="1", TERM="dumb")
    ran = []
    for kind, what, text in parse(markdown):
        if kind == "file":
            assert isinstance(what, Path) and not what.is_absolute()
            (workdir / what).parent.mkdir(parents=True, exist_ok=True)
            (workdir / what).write_text(text, encoding="utf-8")
            continue
        assert isinstance(what, list)
        for cmd in what:
            done = subprocess.run(shell_command(cmd.line, site), shell=True, cwd=workdir,
                                  env=env, capture_output=True, text=True, timeout=900)
            output = done.stdout + done.stderr
            assert done.returncode == cmd.status, (
                f"$ {cmd.line}: exit status {done.returncode}, the page says {cmd.status}:\n{output}")
            assert_shown(cmd.expected, output, f"$ {cmd.line}")
            ran.append(cmd.line)
    return ran


def test_the_tutorial_works_as_written(tmp_path: Path):
    ran = follow(TUTORIAL.read_text(encoding="utf-8"), tmp_path)
    # the page really went from nothing to a trained, evaluated run of the plugin's recipe
    assert ran[0].startswith("mkdir") and any(c.startswith("pip install") for c in ran)
    assert any(c.startswith("vgkit train") for c in ran) and any(
        c.startswith("vgkit eval") for c in ran)
    # and the plugin's own test ran vgkit.testing's conformance check on the loss (1 passed)
    assert ran[-1].startswith("python -m pytest") and (
        tmp_path / "vgkit-smoothl1" / "tests" / "test_conformance.py").is_file()
    assert (tmp_path / "_site" / "vgkit_smoothl1" / "__init__.py").is_file()
    assert (tmp_path / "runs" / "smoothl1" / "checkpoints" / "best.safetensors").is_file()


# ---------------------------------------------------------------- the follower has teeth

PAGE = """
```python
# file: pkg/hello.txt
hello tutorial
```

```console
$ cat pkg/hello.txt
hello ... tutorial
$ python -c "import sys; sys.exit(3)"   # fails: exit status 3
```
"""


def test_the_follower_writes_files_runs_commands_and_checks_output(tmp_path: Path):
    assert follow(PAGE, tmp_path) == ["cat pkg/hello.txt",
                                      'python -c "import sys; sys.exit(3)"   # fails: exit status 3']
    assert (tmp_path / "pkg" / "hello.txt").read_text() == "hello tutorial\n"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("hello ... tutorial", "goodbye", "expected 'goodbye'"),
    ("exit status 3", "exit status 4", "exit status 3, the page says 4"),
    ("hello tutorial\n```", "hello\n```", "expected 'hello ... tutorial'"),
])
def test_the_follower_fails_when_the_page_is_wrong(tmp_path: Path, old: str, new: str,
                                                   message: str):
    with pytest.raises(AssertionError, match=re.escape(message)):
        follow(PAGE.replace(old, new), tmp_path)


def test_the_page_has_what_the_follower_needs():
    steps = parse(TUTORIAL.read_text(encoding="utf-8"))
    files = {str(p) for kind, p, _ in steps if kind == "file"}
    assert files == {"vgkit-smoothl1/pyproject.toml", "vgkit-smoothl1/vgkit_smoothl1/__init__.py",
                     "vgkit-smoothl1/vgkit_smoothl1/recipes/transvg-smoothl1.toml"}
    commands = [c for kind, cs, _ in steps if kind == "run" for c in cs]  # type: ignore[union-attr]
    assert all(c.expected for c in commands if c.line.startswith("vgkit "))
