"""Shared fixtures: a process-wide registry and small random inputs."""

from __future__ import annotations

import warnings

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
