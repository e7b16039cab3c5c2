import numpy as np
import pytest
from scipy import ndimage

from aeanomaly.model.data import Augment, SliceDataset, SliceStore, coarse_noise


def _store(tmp_path, n_scans=3, per=5, size=32):
    st = SliceStore(tmp_path / "s", size, 1)
    rng = np.random.default_rng(0)
    data = []
    for s in range(n_scans):
        arr = rng.random((per, size, size, 1)).astype(np.float32)
        st.append(arr, s)
        data.append(arr)
    st.finish()
    return st, np.concatenate(data)


def test_store_round_trip_and_reopen(tmp_path):
    st, data = _store(tmp_path)
    assert len(st) == 15 and st.scan_ids[:6] == [0] * 5 + [1]
    again = SliceStore.open(tmp_path / "s")
    got = again.read(np.array([0, 7, 14]))
    np.testing.assert_allclose(got, data[[0, 7, 14]], atol=1e-3)  # float16 storage
    assert SliceStore.exists(tmp_path / "s") and not SliceStore.exists(tmp_path / "t")


def test_dataset_targets_are_clean_and_shuffling_is_reproducible(tmp_path):
    st, data = _store(tmp_path)
    ds = SliceDataset(st, np.arange(15), 4, shuffle=True, seed=1, noise_std=0.2)
    x, y = ds[0]
    assert x.shape == (4, 32, 32, 1) and y.shape == (4, 32, 32, 1)
    assert np.abs(x - y).mean() > 0.05  # input is noisy, target clean
    ds2 = SliceDataset(st, np.arange(15), 4, shuffle=True, seed=1, noise_std=0.2)
    np.testing.assert_array_equal(ds2[0][1], y)
    ds.on_epoch_end()
    assert not np.array_equal(ds[0][1], y)  # a new order in the next epoch
    resumed = SliceDataset(st, np.arange(15), 4, shuffle=True, seed=1, noise_std=0.2, start_epoch=1)
    np.testing.assert_array_equal(resumed[0][1], ds[0][1])


def test_coarse_noise_is_smooth():
    n = coarse_noise((2, 64, 64, 3), 8, 0.2, np.random.default_rng(0))
    assert n.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(n[..., 0], n[..., 2])
    assert 0.1 < n.std() < 0.25
    # neighbouring pixels are strongly correlated (coarse), unlike white noise
    assert np.corrcoef(n[:, :, :-1, 0].ravel(), n[:, :, 1:, 0].ravel())[0, 1] > 0.9


def test_augment_keeps_range_and_changes_image():
    rng = np.random.default_rng(0)
    x = np.zeros((2, 32, 32, 1), np.float32)
    x[:, 8:24, 10:20] = 0.8
    out = Augment(flip=1.0).apply(x, rng)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, x)
    assert out.sum() > 0.5 * x.sum()


def test_validation_batches_are_the_same_every_epoch_and_after_resume(tmp_path):
    st, _ = _store(tmp_path)
    val = SliceDataset(st, np.arange(15), 4, shuffle=False, seed=1, noise_std=0.2, same_each_epoch=True)
    first = val[1][0].copy()
    val.on_epoch_end()
    val.on_epoch_end()
    np.testing.assert_array_equal(val[1][0], first)  # same noisy inputs: val losses compare across epochs
    resumed = SliceDataset(st, np.arange(15), 4, shuffle=False, seed=1, noise_std=0.2, start_epoch=7,
                           same_each_epoch=True)
    np.testing.assert_array_equal(resumed[1][0], first)
    train = SliceDataset(st, np.arange(15), 4, shuffle=False, seed=1, noise_std=0.2)
    a = train[1][0].copy()
    train.on_epoch_end()
    assert not np.array_equal(train[1][0], a)  # training noise is fresh every epoch


def _scipy_augment(aug: Augment, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The per-sample scipy augmentation of the previous release (reference)."""
    out = np.empty_like(batch)
    n, h, w, _ = batch.shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    for i in range(n):
        img = batch[i]
        if rng.random() < aug.flip:
            img = img[:, ::-1]
        ang = np.deg2rad(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
        s = 1.0 + rng.uniform(-aug.scale, aug.scale)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / s
        shift = rng.uniform(-aug.shift, aug.shift, size=2) * np.array([h, w])
        offset = centre - rot @ (centre + shift)
        for c in range(img.shape[-1]):
            out[i, :, :, c] = ndimage.affine_transform(img[:, :, c], rot, offset=offset, order=1, mode="constant")
        gain = 1.0 + rng.uniform(-aug.gain, aug.gain)
        out[i] = np.clip(out[i] * gain + rng.uniform(-aug.offset, aug.offset), 0.0, 1.0)
    return out


@pytest.mark.parametrize("aug", [Augment(), Augment(flip=1.0, rotate_deg=20.0, scale=0.15), Augment(flip=0.0)])
def test_in_graph_augmentation_matches_the_scipy_reference(aug):
    # a body surrounded by air (as CT slices are): the two agree everywhere (they differ only in how
    # they sample within one pixel outside the image)
    yy, xx = np.mgrid[:64, :64]
    body = (yy - 32) ** 2 + (xx - 30) ** 2 < 20**2
    x = np.stack([(np.sin(yy / 5.0 + k) * np.cos(xx / 7.0) * 0.4 + 0.5) * body for k in range(6)])
    x = np.stack([x, 0.5 * x, x[:, ::-1]], axis=-1).astype(np.float32)
    want = _scipy_augment(aug, x, np.random.default_rng(3))
    got = aug.apply(x, np.random.default_rng(3))
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_coarse_noise_matches_the_einsum_definition():
    rng = np.random.default_rng(4)
    got = coarse_noise((3, 32, 48, 1), 8, 0.2, rng)
    from aeanomaly.model.data import noise_matrices

    low = np.random.default_rng(4).normal(0.0, 0.2, size=(3, 8, 8)).astype(np.float32)
    ry, rx = noise_matrices(8, 32, 48)
    np.testing.assert_allclose(got[..., 0], np.einsum("ij,njk,lk->nil", ry, low, rx), atol=1e-6)


@pytest.mark.parametrize("augment,noise", [(Augment(), 0.2), (None, 0.0), (None, 0.3)])
def test_tf_dataset_gives_the_indexed_batches_epoch_after_epoch(tmp_path, augment, noise):
    st, _ = _store(tmp_path, per=6)
    ds = SliceDataset(st, np.arange(18), 5, shuffle=True, seed=2, augment=augment, noise_std=noise, start_epoch=3)
    assert list(ds.batch_sizes()) == [5, 5, 5, 3]
    got = [(np.asarray(x), np.asarray(y)) for x, y in ds.as_tf_dataset(epochs=2, prefetch=3)]
    assert len(got) == 8 and ds.epoch == 3  # the pipeline does not move the dataset's epoch
    for e in range(2):
        for i in range(len(ds)):
            x, y = ds[i]
            np.testing.assert_allclose(got[e * 4 + i][0], x, atol=1e-6)
            np.testing.assert_allclose(got[e * 4 + i][1], y, atol=1e-6)
        ds.on_epoch_end()
    if noise:
        assert not np.allclose(got[0][0], got[0][1])


def test_tf_validation_dataset_repeats_identically(tmp_path):
    st, _ = _store(tmp_path)
    val = SliceDataset(st, np.arange(15), 4, shuffle=False, seed=1, noise_std=0.2, same_each_epoch=True)
    tfds = val.as_tf_dataset()
    a = [np.asarray(x) for x, _ in tfds]
    b = [np.asarray(x) for x, _ in tfds]
    assert len(a) == 4
    for u, v, i in zip(a, b, range(4)):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_allclose(u, val[i][0], atol=1e-6)
