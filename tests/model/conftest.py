"""Shared fixtures of the model tests."""

import numpy as np
import pytest

S = 32


@pytest.fixture(scope="session")
def organs():
    """A function ``organs(n, seed=0) -> (x, y)``: slices with two 'organs', a bright disk (label 1, upper
    left) and a grey square (label 2), ``x`` float32 ``(n, 32, 32, 1)``, ``y`` int64 ``(n, 32, 32)``."""
    return _organs


def _organs(n: int, seed: int = 0):
    """Slices with two 'organs': a bright disk (label 1, upper left) and a grey square (label 2)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    x = np.zeros((n, S, S, 1), np.float32)
    y = np.zeros((n, S, S), np.int64)
    for i in range(n):
        cy, cx, r = rng.uniform(9, 14), rng.uniform(8, 13), rng.uniform(4, 6)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        qy, qx, h = rng.uniform(17, 22), rng.uniform(17, 22), rng.uniform(3, 5)
        sq = (np.abs(yy - qy) < h) & (np.abs(xx - qx) < h)
        img = 0.2 + rng.normal(0, 0.03, (S, S))
        img[disk], img[sq] = 0.8, 0.5
        x[i, ..., 0] = np.clip(img, 0, 1)
        y[i][disk], y[i][sq] = 1, 2
    return x, y
