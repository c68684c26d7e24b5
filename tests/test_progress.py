"""Progress where there is no terminal: plain lines with count, rate and time left."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from vgkit.progress import progress_bar


def test_lines_every_interval_and_once_at_the_end(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("VGKIT_PROGRESS_SECONDS", "0")
    with progress_bar("extracting", 4, "images", stream=out) as advance:
        for _ in range(4):
            advance(1, loss=0.25)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # one per advance (interval 0), and the final one
    assert re.fullmatch(r"extracting: 1/4 images \(25%\), [\d.]+ images/s, loss 0\.25, "
                        r"\d+m\d\ds left", lines[0]), lines[0]
    assert lines[-1].startswith("extracting: 4/4 images (100%)") and "left" not in lines[-1]


def test_a_long_interval_prints_only_the_final_line(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("VGKIT_PROGRESS_SECONDS", "3600")
    with progress_bar("train", 100, "steps", done=40, stream=out) as advance:
        for _ in range(60):
            advance()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert out.getvalue().startswith("train: 100/100 steps (100%)")


def test_disabled_prints_nothing():
    out = io.StringIO()
    with progress_bar("x", 3, "steps", enabled=False, stream=out) as advance:
        advance(3)
    assert out.getvalue() == ""


def test_a_command_in_a_pipe_reports_as_it_goes(tmp_path):
    env = {**os.environ, "VGKIT_PROGRESS_SECONDS": "0"}
    res = subprocess.run([sys.executable, "-m", "vgkit", "data", "synth", "--out",
                          str(tmp_path / "syn"), "--n-images", "12"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("drawing synthetic scenes:")]
    assert len(lines) >= 12 and lines[-1].startswith("drawing synthetic scenes: 12/12 images")
