import numpy as np
import pytest

from aeanomaly.arrays import as_volume, check_spacing, mask_like
from aeanomaly.errors import ConfigError


def test_as_volume_makes_a_slice_a_volume_and_refuses_empty_or_non_finite():
    v = as_volume(np.ones((4, 5), np.float64), "heatmap")
    assert v.shape == (1, 4, 5) and v.dtype == np.float32
    assert as_volume(np.ones((2, 4, 5)), "heatmap", np.float64).dtype == np.float64
    with pytest.raises(ConfigError, match="heatmap must be a non-empty"):
        as_volume(np.ones(3), "heatmap")
    with pytest.raises(ConfigError, match="heatmap must be a non-empty"):
        as_volume(np.ones((0, 4, 5)), "heatmap")
    with pytest.raises(ConfigError, match="residual holds NaN"):
        as_volume(np.array([[np.nan, 0.0]]), "residual")


def test_check_spacing_wants_three_positive_sizes():
    assert check_spacing([2.5, 0.7, 0.7]) == (2.5, 0.7, 0.7)
    for bad in ((1.0, 1.0), (1.0, 0.0, 1.0), (1.0, np.inf, 1.0)):
        with pytest.raises(ConfigError, match="spacing"):
            check_spacing(bad)


def test_mask_like_defaults_to_everything_and_checks_the_shape():
    ref = np.zeros((2, 3, 4), np.float32)
    assert mask_like(None, ref).all() and mask_like(None, ref).shape == ref.shape
    m = mask_like(np.eye(3, 4), ref[:1])
    assert m.dtype == bool and m.shape == (1, 3, 4) and m[0, 1, 1] and not m[0, 0, 1]
    with pytest.raises(ConfigError, match="region shape"):
        mask_like(np.ones((3, 3), bool), ref, "region")
