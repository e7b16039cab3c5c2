import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.scoring import residual_map, scan_score, slice_scores


def test_residual_signs():
    x = np.array([0.5, 0.2, 0.9], np.float32)
    xh = np.array([0.4, 0.4, 0.9], np.float32)
    np.testing.assert_allclose(residual_map(x, xh), [0.1, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(residual_map(x, xh, "positive"), [0.1, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(residual_map(x, xh, "negative"), [0.0, 0.2, 0.0], atol=1e-6)
    with pytest.raises(ConfigError):
        residual_map(x, xh, "up")


def test_slice_scores_methods():
    r = np.zeros((3, 10, 10), np.float32)
    r[0] = 0.1
    r[1, :5] = 1.0
    mask = np.ones_like(r, bool)
    mask[2] = False
    mae = slice_scores(r, mask, "mae")
    np.testing.assert_allclose(mae[:2], [0.1, 0.5], atol=1e-6)
    assert np.isnan(mae[2])
    r2 = np.zeros((1, 10, 10), np.float32)
    r2[0, 0, 0] = 1.0  # one hot pixel: small lesion; MAE barely moves, top-k sees it
    m2 = np.ones_like(r2, bool)
    assert slice_scores(r2, m2, "topk", topk_fraction=0.01)[0] == pytest.approx(1.0)
    assert slice_scores(r2, m2, "mae")[0] == pytest.approx(0.01)
    assert slice_scores(r2, m2, "p999")[0] > slice_scores(r2, m2, "p99")[0]
    with pytest.raises(ConfigError):
        slice_scores(r, mask, "median")


def test_scan_aggregation():
    s = np.array([0.1, np.nan, 0.5, 0.3, 0.2])
    assert scan_score(s, "max") == 0.5
    assert scan_score(s, "top3") == pytest.approx((0.5 + 0.3 + 0.2) / 3)
    assert scan_score(s, "mean") == pytest.approx(0.275)
    assert np.isnan(scan_score(np.array([np.nan]), "max"))
    with pytest.raises(ConfigError):
        scan_score(s, "median")
