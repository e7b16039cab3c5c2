"""Shared fixtures. Real CT lives in ../shared/data (env AEANOMALY_SHARED_DATA); tests skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("AEANOMALY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real CT folder; skips the test with a clear reason when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real CT not available: {root} is absent (set AEANOMALY_SHARED_DATA)")
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
