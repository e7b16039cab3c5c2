"""Self-supervised anomaly training: synthetic anomaly families and the segmentation network."""

import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.model import selfsup


def normal_slices(n=6, size=32, channels=1, seed=0):
    """Smooth 'anatomy' in [0, 1]: a bright disc body with two dark lungs and a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, channels), np.float32)
    for i in range(n):
        for c in range(channels):
            body = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.2).astype(np.float32) * 0.7
            lung = ((yy - 0.5) ** 2 / 0.06 + (xx - 0.32 - 0.02 * c) ** 2 / 0.015 < 1) | \
                   ((yy - 0.5) ** 2 / 0.06 + (xx - 0.68) ** 2 / 0.015 < 1)
            img = np.where(lung, 0.15, body) + 0.03 * rng.standard_normal((size, size))
            out[i, ..., c] = np.clip(img, 0, 1)
    return out


@pytest.mark.parametrize("family", selfsup.FAMILIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_targets_mark_where_the_image_changed_and_nowhere_else(family, channels):
    x = normal_slices(channels=channels)
    x_before = x.copy()
    new, target = selfsup.GENERATORS[family](x, np.random.default_rng(3))
    np.testing.assert_array_equal(x, x_before)  # input untouched
    assert new.shape == x.shape and target.shape == x.shape[:3]
    assert new.dtype == np.float32 and target.dtype == np.float32
    assert 0.0 <= new.min() and new.max() <= 1.0 and 0.0 <= target.min() and target.max() <= 1.0
    c = channels // 2
    diff = np.abs(new[..., c] - x[..., c])
    assert (diff[target > 0] >= selfsup.MIN_CHANGE).all()          # target only where it changed
    assert (target[diff >= selfsup.MIN_CHANGE] > 0).all()           # and wherever it changed
    assert (target > 0).sum() > 0
    # elsewhere the centre slice moved by less than MIN_CHANGE (soft edges), and most of it not at all
    assert diff[target == 0].max() < selfsup.MIN_CHANGE
    assert (diff[target == 0] == 0).mean() > 0.5


def test_corrupt_is_seeded_and_leaves_normals_untouched():
    x = normal_slices(n=10)
    a = selfsup.corrupt(x, 7, anomaly_fraction=0.5)
    b = selfsup.corrupt(x, 7, anomaly_fraction=0.5)
    c = selfsup.corrupt(x, 8, anomaly_fraction=0.5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    untouched = a[1].reshape(10, -1).max(1) == 0
    assert untouched.any() and (~untouched).any()
    np.testing.assert_array_equal(a[0][untouched], x[untouched])


def test_corrupt_centres_anomalies_in_the_region():
    x = normal_slices(n=8)
    region = np.zeros(x.shape[:3], bool)
    region[:, 4:10, 4:10] = True
    _, t = selfsup.corrupt(x, 1, region=region, anomaly_fraction=1.0, families=("smooth_blob",),
                           radius_fraction=(0.03, 0.05))
    ys, xs = np.nonzero(t.max(axis=0) > 0.5)
    assert ys.max() < 18 and xs.max() < 18


def test_bad_arguments_raise_clear_errors():
    x = normal_slices(n=2)
    with pytest.raises(ConfigError, match="unknown anomaly family"):
        selfsup.corrupt(x, 0, families=("nodules",))
    with pytest.raises(ConfigError, match="anomaly_fraction"):
        selfsup.corrupt(x, 0, anomaly_fraction=2)
    with pytest.raises(ValueError, match="expected slices"):
        selfsup.corrupt(np.zeros(5, np.float32), 0)


def test_fused_heatmap_weights():
    p = np.full((1, 4, 4), 0.5, np.float32)
    r = np.zeros((1, 4, 4), np.float32)
    r[0, 1, 1] = 0.2
    np.testing.assert_allclose(selfsup.fused_heatmap(p, r, 1.0, 0.1), p)
    f = selfsup.fused_heatmap(p, r, 0.0, 0.2)
    assert f[0, 1, 1] == pytest.approx(1.0) and f[0, 0, 0] == 0
    with pytest.raises(ValueError, match="residual_scale"):
        selfsup.fused_heatmap(p, r, 0.5, 0.0)


def test_untrained_segmenter_starts_at_the_anomaly_prior():
    # from p = 0.5 everywhere the Dice term saw a flat map and training stalled for thousands of steps
    # (the loss sat at ~1.0 on real CT); the output bias starts at the prior's logit instead
    x = normal_slices(n=4, size=32)
    for prior in (0.01, 0.001):
        model = selfsup.build_segmenter(32, 2, base_filters=4, depth=2, norm="none", output_prior=prior)
        for w in model.weights:  # only the bias decides the output when every other weight is zero
            if "seg_proba" not in w.path:
                w.assign(np.zeros(w.shape, w.dtype))
        p = selfsup.anomaly_probability(model, x, x[..., 0])
        np.testing.assert_allclose(p, prior, rtol=1e-4)
    fresh = selfsup.build_segmenter(32, 2, base_filters=4, depth=2, norm="batch")  # random weights
    assert selfsup.anomaly_probability(fresh, x, x[..., 0]).mean() < 0.05
    with pytest.raises(ConfigError, match="output_prior"):
        selfsup.build_segmenter(32, 2, output_prior=1.0)


def test_tiny_segmenter_learns_to_find_synthetic_anomalies(tmp_path):
    import keras

    x = normal_slices(n=24, size=32, seed=1)
    identity = lambda b: np.asarray(b)[..., 0] * 0 + normal_slices(1, 32, seed=5)[0, ..., 0]  # noqa: E731
    model, hist = selfsup.train_discriminator(
        x, identity, epochs=6, batch_size=8, seed=0, size=32, steps_per_epoch=12, base_filters=8, depth=2,
        families=("intensity_shape", "smooth_blob"), radius_fraction=(0.08, 0.15), learning_rate=3e-3)
    assert isinstance(model, keras.Model) and model.input_shape[-1] == 2
    assert len(hist["loss"]) == 6 and hist["loss"][-1] < hist["loss"][0]
    xt, tt = selfsup.corrupt(normal_slices(n=12, size=32, seed=9), 4, anomaly_fraction=1.0,
                             families=("intensity_shape", "smooth_blob"), radius_fraction=(0.08, 0.15))
    prob = selfsup.anomaly_probability(model, xt, identity(xt))
    assert prob.shape == (12, 32, 32) and prob.dtype == np.float32
    inside, outside = prob[tt > 0.5].mean(), prob[tt == 0].mean()
    assert inside > outside + 0.1, (inside, outside)
    # stock layers only: a .keras file loads in safe mode without custom objects, and predicts the same
    model.save(tmp_path / "seg.keras")
    back = keras.saving.load_model(tmp_path / "seg.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(selfsup.anomaly_probability(back, xt, identity(xt)), prob, atol=1e-5)
    with pytest.raises(ValueError, match="input channels"):
        selfsup.anomaly_probability(model, xt, np.stack([identity(xt)] * 2, -1))
