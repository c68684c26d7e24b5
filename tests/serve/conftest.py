"""The tiny trained run as a Grounder, shared by the app and browser tests."""

from __future__ import annotations

import warnings

import pytest

import vgkit


@pytest.fixture(scope="module")
def grounder(tiny_run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vgkit.load(tiny_run.run, device="cpu")
