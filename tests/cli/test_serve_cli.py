"""``vgkit serve``: the real command in a subprocess answering HTTP, and its one-line errors."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import warnings

import httpx
import pytest
from PIL import Image

import vgkit
from vgkit.cli import app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_predict_like_the_library(tiny_run, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "vgkit", "serve", "--checkpoint",
                             str(tiny_run.run), "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                info = httpx.get(f"{url}/api/info", timeout=5).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "vgkit serve did not answer in 120 s"
                time.sleep(0.5)
        assert info["recipe"] == "synthetic-attn-regression" and info["device"] == "cpu"
        image = Image.new("RGB", (100, 70), (40, 90, 200))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        r = httpx.post(f"{url}/predict", data={"phrase": "the blue one"},
                       files={"image": ("blue.png", buf.getvalue(), "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = vgkit.load(tiny_run.run, device="cpu").predict(image, "the blue one")
        assert r.json()["box"] == pytest.approx(list(want.box), abs=1e-4)
        bad = httpx.post(f"{url}/predict", data={"phrase": "the blue one"},
                         files={"image": ("x.png", b"garbage", "image/png")}, timeout=60)
        assert bad.status_code == 400 and "cannot decode image 'x.png'" in bad.json()["detail"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"at http://127.0.0.1:{port}/" in out
    assert "Traceback" not in out


def test_serve_errors_are_one_line(runner, tmp_path, tiny_run):
    res = runner.invoke(app, ["serve", "--checkpoint", str(tmp_path / "no-run")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "no-run" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(app, ["serve", "--checkpoint", str(tiny_run.run), "--max-upload-mb", "0"])
    assert res.exit_code == 2 and "--max-upload-mb 0: give a positive" in res.output
    res = runner.invoke(app, ["serve", "--checkpoint", str(tiny_run.run), "--which", "worst"])
    assert res.exit_code == 2 and "worst" in res.output
