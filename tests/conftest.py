"""Shared fixtures: a process-wide registry, small random inputs, the real ReferIt annotations."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from vgkit.plugins import get_registry
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
