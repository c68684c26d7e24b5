"""A full disk: one line naming the path, and what is left is resumable or removed, never half-valid.

Most cases inject ENOSPC (they always run); the ``real_fs`` cases fill a real
1 MiB tmpfs, which needs root and mount(2) and skips, saying so, elsewhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from safetensors import SafetensorError
from torch import nn
from typer.testing import CliRunner

from vgkit.cli.common import user_errors
from vgkit.data.features import DONE, FeatureCache, cache_spec, extract_features, image_table
from vgkit.data.images import ImageTransform, read_image
from vgkit.data.synth import generate, load_synthetic
from vgkit.engine import checkpoint as ckpt
from vgkit.errors import VgkitError
from vgkit.fsutil import DiskFullError

TF = ImageTransform((64, 64))
FULL = "No space left on device"


class Tiny(nn.Module):
    """A small deterministic frozen backbone; can crash after some batches or fill a disk."""

    channels, stride, frozen = 16, 4, True

    def __init__(self, fail_after: int | None = None, fill: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        self.requires_grad_(False)
        self.calls, self.fail_after, self.fill = 0, fail_after, fill

    def identity(self) -> dict:
        return {"model": "tiny16", "weights_sha256": "fixed"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        if self.fill and self.calls == 1:
            _fill(Path(self.fill))
        return torch.relu(self.conv(x))


def _fill(path: Path) -> None:
    """Write `path` until its filesystem is full."""
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    generate(root, 12, seed=4, image_size=(96, 64), progress=False)
    return root


@pytest.fixture
def real_fs(tmp_path):
    """A fresh 1 MiB tmpfs, or a skip saying why it cannot be mounted here."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8); the injected cases cover it")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); the injected cases cover it")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, FULL)


def _expected(root: Path) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {i: Tiny()(TF(read_image(root / p))[None])[0]
                for i, p in image_table(load_synthetic(root))}


def _assert_cache_right(out: Path, root: Path) -> None:
    index = load_synthetic(root)
    cache = FeatureCache.open(out, expected=cache_spec(Tiny(), TF, index))
    want = _expected(root)
    got = cache.get(cache.rows(list(want))).float()
    assert torch.allclose(got, torch.stack(list(want.values())), rtol=2e-3, atol=2e-3)


def _extract(root: Path, out: Path, backbone: nn.Module | None = None) -> Path:
    return extract_features(backbone or Tiny(), TF, load_synthetic(root), root, out,
                            batch_size=3, workers=0, progress=False)


def _temporaries(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*.tmp*"))


def test_space_check_says_needed_and_free_and_creates_nothing(synth, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("vgkit.fsutil.shutil.disk_usage", lambda p: usage(10**9, 10**9, 10_240))
    out = tmp_path / "cache"
    with pytest.raises(DiskFullError) as err:
        _extract(synth, out)
    msg = str(err.value)  # 12 maps of 16 x 16 x 16 fp16 = 96 KiB, plus headers
    assert msg.startswith(f"{out}: the feature cache needs 10") and "\n" not in msg
    assert msg.endswith("KiB but its filesystem has 10 KiB free; free some space or choose "
                        "another folder")
    assert sorted(p.name for p in out.iterdir()) == [".vgkit.lock"]


def test_enospc_reserving_a_new_cache_leaves_nothing_then_extracts(synth, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    with pytest.raises(DiskFullError, match=rf"^no space left on device writing {out}/features\.npy "
                                            r"\([\d.]+ \w+ free on its filesystem\)$"):
        _extract(synth, out)
    assert sorted(p.name for p in out.iterdir()) == [".vgkit.lock"]  # no plan over bad arrays
    monkeypatch.undo()
    _extract(synth, out)
    _assert_cache_right(out, synth)
    st = (out / "features.npy").stat()
    assert st.st_blocks * 512 >= st.st_size  # every block allocated: a memmap write cannot SIGBUS


def test_enospc_on_resume_keeps_the_extraction_resumable(synth, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _extract(synth, out, Tiny(fail_after=2))
    plan, done = (out / "plan.json").read_text(), np.load(out / "done.npy")
    # a cache begun by an older vgkit has holes: resuming reserves its blocks first
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    resumed = Tiny()
    with pytest.raises(DiskFullError, match=f"writing {out}/features.npy"):
        _extract(synth, out, resumed)
    assert resumed.calls == 0 and not (out / "manifest.json").exists()
    assert (out / "plan.json").read_text() == plan
    assert np.array_equal(np.load(out / "done.npy"), done)
    monkeypatch.undo()
    _extract(synth, out, resumed)
    assert resumed.calls == 2  # 12 images, 6 done before the crash, 2 batches of 3 left
    _assert_cache_right(out, synth)


def test_enospc_writing_the_manifest_leaves_a_resumable_cache(synth, tmp_path, monkeypatch):
    out = tmp_path / "cache"

    class HalfThenFull:
        """A file whose write stores half of the text, then finds the disk full."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, FULL)

    def half_then_full(file, mode="r", *args, **kwargs):  # the atomic writer's open()
        f = open(file, mode, *args, **kwargs)  # noqa: SIM115 (closed by the writer)
        return HalfThenFull(f) if Path(file).name.startswith(".manifest.json.tmp") else f

    monkeypatch.setattr("vgkit.fsutil.open", half_then_full, raising=False)
    with pytest.raises(DiskFullError, match=f"^no space left on device writing {out}/manifest.json"):
        _extract(synth, out)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() and _temporaries(out) == []
    with pytest.raises(VgkitError, match="unfinished extraction"):
        FeatureCache.open(out)
    resumed = Tiny()
    _extract(synth, out, resumed)
    assert resumed.calls == 0  # every map was stored; only the manifest was missing
    _assert_cache_right(out, synth)


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, FULL),
    SafetensorError(f"Error while serializing: I/O error: {FULL} (os error 28)"),  # what it raises
])
def test_enospc_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoints" / "last.safetensors"
    ckpt.atomic_save({"model.w": torch.ones(3)}, {"epoch": 1}, path)

    def partial_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise failure

    monkeypatch.setattr(ckpt, "save_file", partial_then_fail)
    with pytest.raises(DiskFullError) as err:
        ckpt.atomic_save({"model.w": torch.zeros(3)}, {"epoch": 2}, path)
    assert str(err.value).startswith(f"no space left on device writing {path} (")
    assert _temporaries(tmp_path) == []
    tensors, meta = ckpt.load(path)
    assert meta == {"epoch": 1} and torch.equal(tensors["model.w"], torch.ones(3))


def test_other_write_errors_are_one_line_too(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "save_file", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EIO, "Input/output error")))
    path = tmp_path / "x.safetensors"
    with pytest.raises(VgkitError, match=rf"^cannot write {path}: Input/output error$"):
        ckpt.atomic_save({"w": torch.ones(1)}, {}, path)


def test_the_cli_prints_any_enospc_as_one_line(tmp_path):
    app = typer.Typer()
    target = tmp_path / "somewhere" / "file.bin"

    @app.command()
    @user_errors
    def write(kind: str) -> None:
        if kind == "full":
            raise OSError(errno.ENOSPC, FULL, str(target))
        raise OSError(errno.EACCES, "Permission denied", str(target))

    res = CliRunner().invoke(app, ["full"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: no space left on device writing {target} ("), res.output
    res = CliRunner().invoke(app, ["other"])  # not a full disk: untouched
    assert isinstance(res.exception, PermissionError)


# ------------------------------------------------------------ a real, small filesystem
def test_real_full_disk_mid_extraction_is_no_sigbus_and_resumes(synth, real_fs):
    out, filler = real_fs / "cache", real_fs / "filler"
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_disk_full import Tiny, _extract
from pathlib import Path
from vgkit.errors import VgkitError
try:
    _extract(Path({str(synth)!r}), Path({str(out)!r}), Tiny(fill={str(filler)!r}))
except VgkitError as exc:
    print("error:", exc)
    sys.exit(3)
"""
    # the backbone fills the disk on its first batch: every map is then written into a full
    # filesystem (a SIGBUS, exit -7, without reserved blocks) and the manifest cannot be
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert res.stdout.startswith(f"error: no space left on device writing {out}/manifest.json ("), \
        res.stdout
    assert not (out / "manifest.json").exists() and _temporaries(out) == []
    assert (np.load(out / "done.npy") == DONE).all()
    filler.unlink()
    resumed = Tiny()
    _extract(synth, out, resumed)
    assert resumed.calls == 0
    _assert_cache_right(out, synth)


def test_real_cache_too_big_is_refused_before_writing(synth, real_fs):
    out = real_fs / "cache"
    (real_fs / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # leaves < 96 KiB
    with pytest.raises(DiskFullError, match=r"needs 10\d KiB but its filesystem has \d+ KiB free"):
        _extract(synth, out)
    assert sorted(p.name for p in out.iterdir()) == [".vgkit.lock"]


def test_real_full_disk_saving_a_checkpoint_keeps_the_previous_one(real_fs):
    path = real_fs / "run" / "checkpoints" / "last.safetensors"
    ckpt.atomic_save({"model.w": torch.ones(1000)}, {"epoch": 1}, path)
    with pytest.raises(DiskFullError, match=f"^no space left on device writing {path} "):
        ckpt.atomic_save({"model.w": torch.zeros(400_000)}, {"epoch": 2}, path)  # 1.6 MB > 1 MiB
    assert _temporaries(real_fs) == []
    tensors, meta = ckpt.load(path)
    assert meta == {"epoch": 1} and torch.equal(tensors["model.w"], torch.ones(1000))
