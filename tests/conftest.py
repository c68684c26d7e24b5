"""Shared fixtures: a process-wide registry, the real ReferIt annotations, and a tiny trained run
(20 synthetic scenes, VGG16 at 64x64, 1 epoch) shared by the engine and CLI tests."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vgkit.data.synth import generate
from vgkit.engine.train import Trainer
from vgkit.plugins import get_registry
from vgkit.recipe import load_recipe
from vgkit.registry import Registry


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The registry filled from installed entry points (the reference set at least)."""
    return get_registry()


@pytest.fixture(autouse=True)
def _quiet_random_weights():
    """Random-init backbones warn by design; tests that care check the warning themselves."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        yield


@pytest.fixture(scope="module")
def real_dir() -> Path:
    """The real ReferIt annotations (hu form); skips, saying why, where they are not given."""
    d = os.environ.get("VGKIT_REFERIT_ANNOTATIONS")
    if not d:
        pytest.skip("set VGKIT_REFERIT_ANNOTATIONS to the hu-form ReferIt annotation directory")
    return Path(d)


OVERRIDES = ("train.epochs=1", "data.image_size=[64, 64]")


@dataclass(frozen=True)
class TinyRun:
    """Where the tiny dataset and its trained run live."""

    root: Path  # synthetic dataset (96 x 80 images)
    run: Path  # run directory: checkpoints/, backbone.safetensors, metrics.jsonl


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, registry) -> TinyRun:
    """Train the synthetic recipe for one epoch in-process (a few seconds on CPU)."""
    base = tmp_path_factory.mktemp("engine")
    root, run = base / "syn", base / "run"
    generate(root, 20, seed=0, image_size=(96, 80), progress=False)
    recipe = load_recipe("synthetic-attn-regression", [f"data.root={root}", *OVERRIDES],
                         registry=registry)
    with warnings.catch_warnings():  # random VGG16 weights, by design
        warnings.simplefilter("ignore")
        Trainer(recipe, registry, run, device="cpu", progress=False).fit()
    return TinyRun(root, run)


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    """Invokes the vgkit app in-process."""
    return CliRunner()


@pytest.fixture(scope="session")
def evaluated(tiny_run, runner, tmp_path_factory):
    """`vgkit eval` once on the tiny run, with predictions and a gallery: (result, gallery dir)."""
    from vgkit.cli import app

    gallery = tmp_path_factory.mktemp("gallery")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = runner.invoke(app, ["eval", "--checkpoint", str(tiny_run.run), "--device", "cpu",
                                  "--gallery", str(gallery), "--gallery-n", "6"])
    assert res.exit_code == 0, res.output
    return res, gallery


@pytest.fixture(scope="session")
def ev(tiny_run):
    """The tiny run's model, data and test-split predictions, in-process (cached features)."""
    from vgkit.engine.run import evaluate_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_checkpoint(tiny_run.run, device="cpu", progress=False)
