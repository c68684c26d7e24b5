"""Fixtures shared by the data tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def real_dir() -> Path:
    """The real ReferIt annotations (hu form); skips, saying why, where they are not given."""
    d = os.environ.get("VGKIT_REFERIT_ANNOTATIONS")
    if not d:
        pytest.skip("set VGKIT_REFERIT_ANNOTATIONS to the hu-form ReferIt annotation directory")
    return Path(d)
