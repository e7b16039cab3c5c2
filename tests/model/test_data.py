import numpy as np

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
