"""The frozen-feature cache: exact round trip, resume, refusal of stale or unfinished caches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from vgkit.cli import app
from vgkit.data.features import FeatureCache, cache_spec, extract_features, image_table
from vgkit.data.images import ImageTransform, read_image
from vgkit.data.index import DatasetIndex
from vgkit.data.synth import generate
from vgkit.errors import VgkitError

runner = CliRunner()


class TinyFrozen(nn.Module):
    """A deterministic frozen backbone small enough to run many times."""

    channels, stride, frozen = 4, 16, True

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 16, stride=16)
        self.requires_grad_(False)
        self.calls, self.fail_after = 0, fail_after

    def identity(self) -> dict:
        return {"model": "tiny", "weights_sha256": "fixed"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        return torch.relu(self.conv(x))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, 12, seed=5, image_size=(96, 64), progress=False)
    return root


def _expected(backbone, transform, root, index):
    with torch.no_grad():
        return {i: backbone(transform(read_image(root / p))[None])[0] for i, p in image_table(index)}


def test_cli_synth_then_extract_reads_back_the_backbones_output(tmp_path):
    from vgkit_endo2017.backbones import BackboneOptions, build_vgg16

    from vgkit.data.synth import load_synthetic

    root = tmp_path / "syn"
    assert runner.invoke(app, ["data", "synth", "--out", str(root), "--n-images", "10",
                               "--width", "80", "--height", "64"]).exit_code == 0
    torch.manual_seed(1)
    weights = tmp_path / "vgg16-random.pth"  # weights saved from a random-init model
    body = build_vgg16(BackboneOptions()).body
    torch.save({k.replace("features_", "features."): v.contiguous()
                for k, v in body.state_dict().items()}, weights)
    out = tmp_path / "cache"
    res = runner.invoke(app, ["features", "extract", "--root", str(root), "--backbone", "vgg16",
                              "--image-size", "64",
                              "--workers", "0", "--batch-size", "4", "--out", str(out),
                              "--weights", str(weights)])
    assert res.exit_code == 0, res.output
    assert "cache complete" in res.output
    cache = FeatureCache.open(out)
    assert cache.features.shape == (10, 512, 4, 4)
    backbone = build_vgg16(BackboneOptions(weights=str(weights)))
    want = _expected(backbone, ImageTransform((64, 64)), root, load_synthetic(root))
    ref = torch.stack(list(want.values()))
    got = cache.get(cache.rows(list(want))).float()
    assert torch.allclose(got, ref, rtol=1e-2, atol=1e-3 * ref.abs().max().item())
    assert cache.manifest["spec"]["backbone"]["weights_sha256"] == backbone.identity()["weights_sha256"]


def test_round_trip_equals_the_backbone_within_fp16(synth):
    from vgkit.data.synth import load_synthetic

    index = load_synthetic(synth)
    bb, tf = TinyFrozen(), ImageTransform((64, 64))
    path = extract_features(bb, tf, index, synth, synth / "c1", batch_size=5, workers=0,
                            progress=False)
    cache = FeatureCache.open(path, expected=cache_spec(bb, tf, index))
    want = _expected(TinyFrozen(), tf, synth, index)
    got = cache.get(cache.rows(list(want)))
    assert got.dtype == torch.float16
    assert torch.allclose(got.float(), torch.stack(list(want.values())), rtol=2e-3, atol=2e-3)


def test_vgg16_cache_matches_vgg16_itself(synth):
    from vgkit_endo2017.backbones import BackboneOptions, build_vgg16

    from vgkit.data.synth import load_synthetic

    index = load_synthetic(synth)
    bb, tf = build_vgg16(BackboneOptions()), ImageTransform((64, 64))
    path = extract_features(bb, tf, index, synth, synth / "vgg", batch_size=6, workers=0,
                            progress=False)
    cache = FeatureCache.open(path)
    want = _expected(bb, tf, synth, index)
    got = cache.get(cache.rows(list(want))).float()
    ref = torch.stack(list(want.values()))
    assert torch.allclose(got, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def test_interrupted_extraction_never_looks_complete_and_resumes(synth):
    from vgkit.data.synth import load_synthetic

    index = load_synthetic(synth)
    tf = ImageTransform((64, 64))
    out = synth / "c2"
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(TinyFrozen(fail_after=2), tf, index, synth, out, batch_size=3,
                         workers=0, progress=False)
    assert not (out / "manifest.json").exists()
    with pytest.raises(VgkitError, match="unfinished extraction"):
        FeatureCache.open(out)
    resumed = TinyFrozen()
    extract_features(resumed, tf, index, synth, out, batch_size=3, workers=0, progress=False)
    assert resumed.calls == 2  # 12 images, 6 done before the crash, 2 batches of 3 left
    cache = FeatureCache.open(out)
    want = _expected(TinyFrozen(), tf, synth, index)
    assert torch.allclose(cache.get(cache.rows(list(want))).float(),
                          torch.stack(list(want.values())), rtol=2e-3, atol=2e-3)


def test_stale_cache_is_refused_saying_what_differs(synth):
    from vgkit.data.synth import load_synthetic

    index = load_synthetic(synth)
    bb, tf = TinyFrozen(), ImageTransform((64, 64))
    path = extract_features(bb, tf, index, synth, synth / "c3", workers=0, progress=False)
    other = cache_spec(bb, ImageTransform((64, 64), "letterbox"), index)
    with pytest.raises(VgkitError, match=r"transform\.mode: cache has 'stretch', expected 'letterbox'"):
        FeatureCache.open(path, expected=other)
    last_image = index.records[-1].image_id
    fewer = DatasetIndex([r for r in index if r.image_id != last_image], name=index.name)
    with pytest.raises(VgkitError, match="images_sha256"):
        FeatureCache.open(path, expected=cache_spec(bb, tf, fewer))
    renamed = DatasetIndex([replace(r, phrase=r.phrase + " x") for r in index], name=index.name)
    with pytest.raises(VgkitError, match="dataset_sha256"):  # same images, other annotations
        FeatureCache.open(path, expected=cache_spec(bb, tf, renamed))


def test_bad_images_are_counted_stored_as_zeros_and_listed(tmp_path, synth):
    import shutil

    from vgkit.data.synth import load_synthetic

    root = tmp_path / "copy"
    shutil.copytree(synth, root, ignore=shutil.ignore_patterns("c*", "vgg"))
    index = load_synthetic(root)
    first, second = image_table(index)[:2]
    (root / first[1]).write_bytes(b"\xff\xd8 not really a jpeg")
    (root / second[1]).unlink()
    path = extract_features(TinyFrozen(), ImageTransform((64, 64)), index, root, root / "cc",
                            workers=0, progress=False)
    cache = FeatureCache.open(path)
    assert cache.bad == {first[0], second[0]}
    assert cache.get(cache.rows([first[0]])).abs().sum() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_each_extract_a_shard_and_one_manifest_covers_all(synth, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_features import TinyFrozen
from vgkit.data.images import ImageTransform
from vgkit.data.synth import load_synthetic
from vgkit.distributed import init_distributed
from vgkit.data.features import extract_features
info = init_distributed()
bb = TinyFrozen()
extract_features(bb, ImageTransform((64, 64)), load_synthetic({str(synth)!r}), {str(synth)!r},
                 {str(tmp_path / 'dist')!r}, batch_size=2, workers=0, dist_info=info, progress=False)
print("calls", info.rank, bb.calls)
""")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all("calls" in o and o.strip().endswith(" 3") for o in outs), outs  # 6 images each
    manifest = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert len(manifest["image_ids"]) == 12 and manifest["complete"]
    from vgkit.data.synth import load_synthetic

    index = load_synthetic(synth)
    cache = FeatureCache.open(tmp_path / "dist")
    want = _expected(TinyFrozen(), ImageTransform((64, 64)), synth, index)
    assert torch.allclose(cache.get(cache.rows(list(want))).float(),
                          torch.stack(list(want.values())), rtol=2e-3, atol=2e-3)
