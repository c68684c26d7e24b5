"""One writer per folder: a second feature extraction, training run or dataset fails at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from vgkit.data.features import FeatureCache, cache_spec, extract_features, image_table
from vgkit.data.images import ImageTransform, read_image
from vgkit.data.synth import generate, load_synthetic
from vgkit.fsutil import HOLDER_FILE, FolderLockedError, folder_lock

TRAIN = ["data.image_size=[64, 64]", "train.epochs=1", "train.batch_size=4", "train.workers=0",
         "model.attention.0.hidden=16", "model.attention.1.hidden=8", "model.head.hidden=16",
         "model.text_encoder.hidden=8", "model.text_encoder.embedding_dim=8"]


class GatedTiny(nn.Module):
    """A tiny frozen backbone that, on its first batch, says so and waits for a 'go' file."""

    channels, stride, frozen = 4, 16, True

    def __init__(self, gate: str | Path | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 16, stride=16)
        self.requires_grad_(False)
        self.gate, self.calls = (Path(gate) if gate else None), 0

    def identity(self) -> dict:
        return {"model": "gated-tiny", "weights_sha256": "fixed"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.gate is not None and self.calls == 1:
            (self.gate / "started").touch()
            deadline = time.time() + 120
            while not (self.gate / "go").exists() and time.time() < deadline:
                time.sleep(0.05)
        return torch.relu(self.conv(x))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    generate(root, 20, seed=3, image_size=(96, 80), progress=False)
    return root


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _vgkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgkit", *args], capture_output=True,
                          text=True, timeout=300)


def _error_line(stderr: str) -> str:
    """The one 'error:' line of a failed command (warnings may precede it; no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and stderr.strip().endswith(lines[0]), stderr
    return lines[0]


def _holder(directory: Path, what: str = "test holder") -> subprocess.Popen:
    """A process that holds `directory`'s lock until killed."""
    p = _python(f"import time; from vgkit.fsutil import folder_lock\n"
                f"lock = folder_lock({str(directory)!r}, {what!r}).acquire()\n"
                f"print('held', flush=True); time.sleep(300)")
    assert p.stdout.readline().strip() == "held", p.stdout.read()
    return p


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_second_features_extract_fails_at_once_and_the_first_cache_is_complete(synth, tmp_path):
    out, gate = tmp_path / "cache", tmp_path / "gate"
    gate.mkdir()
    first = _python(
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_locks import GatedTiny\n"
        "from vgkit.data.images import ImageTransform\n"
        "from vgkit.data.synth import load_synthetic\n"
        "from vgkit.data.features import extract_features\n"
        f"extract_features(GatedTiny({str(gate)!r}), ImageTransform((64, 64)), "
        f"load_synthetic({str(synth)!r}), {str(synth)!r}, {str(out)!r}, batch_size=4, "
        "workers=0, progress=False)\nprint('first done')")
    try:
        _wait_for(gate / "started", first)  # the first is mid-extraction, holding the folder
        t0 = time.time()
        second = _vgkit("features", "extract", "--root", str(synth), "--backbone", "vgg16",
                        "--image-size", "64",
                        "--workers", "0", "--out", str(out))  # another backbone, same folder
        assert second.returncode == 2, second.stdout + second.stderr
        err = _error_line(second.stderr)
        assert str(out) in err and f"PID {first.pid}" in err, err
        assert "vgkit features extract" in err, err
        assert time.time() - t0 < 120  # at once: it did not wait for the gated first writer
        assert not (out / "manifest.json").exists()
    finally:
        (gate / "go").touch()
    assert first.wait(timeout=120) == 0, first.stdout.read()
    index, tf = load_synthetic(synth), ImageTransform((64, 64))
    cache = FeatureCache.open(out, expected=cache_spec(GatedTiny(), tf, index))
    with torch.no_grad():
        want = {i: GatedTiny()(tf(read_image(synth / p))[None])[0] for i, p in image_table(index)}
    got = cache.get(cache.rows(list(want))).float()
    assert torch.allclose(got, torch.stack(list(want.values())), rtol=2e-3, atol=2e-3)


def test_second_train_into_one_out_fails_at_once_and_a_killed_holder_never_blocks(synth, tmp_path):
    run = tmp_path / "run"
    args = ["train", "-r", "synthetic-attn-regression", "--root", str(synth), "--out", str(run),
            "--quiet", "--device", "cpu"]
    for s in TRAIN:
        args += ["--set", s]
    holder = _holder(run, "vgkit train")
    try:
        second = _vgkit(*args)
        assert second.returncode == 2, second.stdout + second.stderr
        err = _error_line(second.stderr)
        assert f"{run} is being written by another vgkit process (PID {holder.pid}" in err, err
        assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died holding the lock (its PID file is still there): it must not block
    assert json.loads((run / HOLDER_FILE).read_text())["pid"] == holder.pid
    done = _vgkit(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run / "checkpoints" / "last.safetensors").is_file()
    assert not (run / HOLDER_FILE).exists()  # released at the end of the run
    again = _vgkit(*args)  # the existing refusal still stands
    assert again.returncode == 2 and "already holds a run; add --resume" in again.stderr


def test_a_sigkilled_holder_never_blocks(tmp_path):
    d = tmp_path / "folder"
    holder = _holder(d)
    with pytest.raises(FolderLockedError, match=rf"PID {holder.pid}, test holder, since 20"):
        folder_lock(d, "me").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with folder_lock(d, "me"):
        info = json.loads((d / HOLDER_FILE).read_text())
        assert info["pid"] == os.getpid() and info["what"] == "me"
        with folder_lock(d, "nested"):  # re-entrant within one process (CLI + Trainer)
            pass
        assert (d / HOLDER_FILE).exists()
    assert not (d / HOLDER_FILE).exists()


def test_locked_folders_refuse_extraction_and_dataset_generation(synth, tmp_path):
    out, data = tmp_path / "cache", tmp_path / "data"
    holders = [_holder(out), _holder(data)]
    try:
        with pytest.raises(FolderLockedError, match=f"PID {holders[0].pid}"):
            extract_features(GatedTiny(), ImageTransform((64, 64)), load_synthetic(synth), synth,
                             out, workers=0, progress=False)
        assert not (out / "plan.json").exists()
        with pytest.raises(FolderLockedError, match=f"PID {holders[1].pid}"):
            generate(data, 3, image_size=(64, 64), progress=False)
        assert not (data / "manifest.json").exists()
    finally:
        for h in holders:
            h.send_signal(signal.SIGKILL)
            h.wait()
