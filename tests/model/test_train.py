import json

import keras
import numpy as np
import pytest

from aeanomaly.model.data import Augment, SliceDataset, SliceStore
from aeanomaly.model.train import CHECKPOINT, STATE, TrainConfig, load_state, train_autoencoder

TINY = dict(size=32, depth=2, base_filters=4, latent_dim=8, batch_size=8, noise_std=0.2, noise_resolution=8)


@pytest.fixture()
def store(tmp_path):
    st = SliceStore(tmp_path / "store", 32, 1)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for s in range(4):
        blob = np.exp(-((yy - 16 - rng.normal(0, 3)) ** 2 + (xx - 16) ** 2) / 60.0)
        st.append((blob[None, ..., None] * rng.uniform(0.5, 1.0, (10, 1, 1, 1))).astype(np.float32), s)
    st.finish()
    yield st
    st.close()


def test_tf_data_pipeline_trains_like_the_indexed_dataset(store):
    """Same seed → same batches (``ds[i]`` epoch after epoch) → the same loss trajectory as feeding
    those batches precomputed."""
    import tensorflow as tf

    kw = dict(shuffle=True, seed=3, augment=Augment(), noise_std=0.2, noise_resolution=8)
    ref = SliceDataset(store, np.arange(32), 8, **kw)
    xs, ys = [], []
    for _ in range(3):
        for i in range(len(ref)):
            x, y = ref[i]
            xs.append(x)
            ys.append(y)
        ref.on_epoch_end()
    histories = []
    for use_tf in (False, True):
        keras.utils.set_random_seed(0)
        m = TrainConfig(**TINY).build()
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mean_absolute_error")
        ds = SliceDataset(store, np.arange(32), 8, **kw)
        data = ds.as_tf_dataset(epochs=3) if use_tf else tf.data.Dataset.from_tensor_slices((np.stack(xs), np.stack(ys)))
        h = m.fit(data, steps_per_epoch=len(ds), epochs=3, verbose=0, shuffle=False)
        histories.append(h.history["loss"])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-5)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_after_an_interruption_continues_the_same_run(store, tmp_path):
    cfg = TrainConfig(**TINY, epochs=4, patience=10)
    tr, va = np.arange(32), np.arange(32, 40)
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full_dir.mkdir()
    cut_dir.mkdir()
    _, full = train_autoencoder(cfg, store, tr, va, full_dir, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(cfg, store, tr, va, cut_dir, verbose=0, callbacks=[_Interrupt(2)])
    assert load_state(cut_dir)["epoch"] == 2 and (cut_dir / CHECKPOINT).is_file()
    model, resumed = train_autoencoder(cfg, store, tr, va, cut_dir, resume=True, verbose=0)
    assert resumed["resumed_from"] == 2 and resumed["epoch"] == 4
    np.testing.assert_allclose(resumed["history"]["val_loss"], full["history"]["val_loss"], rtol=2e-3)
    np.testing.assert_allclose(resumed["history"]["loss"], full["history"]["loss"], rtol=2e-3)
    assert model.output.shape[1:] == (32, 32, 1)
    # a finished run resumes to a no-op
    _, again = train_autoencoder(cfg, store, tr, va, cut_dir, resume=True, verbose=0)
    assert again["epoch"] == 4 and len(again["history"]["loss"]) == 4


def test_run_state_records_epoch_timings_and_checkpoint_cost(store, tmp_path):
    cfg = TrainConfig(**TINY, epochs=2)
    _, state = train_autoencoder(cfg, store, np.arange(32), np.arange(32, 40), tmp_path, verbose=0)
    timing = state["timing"]
    assert [t["epoch"] for t in timing] == [1, 2]
    for t in timing:
        assert t["train_slices"] == 32 and t["train_slices_per_s"] > 0
        assert 0 < t["checkpoint_s"] < t["epoch_s"] and t["train_s"] <= t["epoch_s"]
    assert json.loads((tmp_path / STATE).read_text())["timing"] == timing


@pytest.mark.slow
def test_progress_bar_shows_rate_and_eta_and_verbose_0_is_silent(store, tmp_path, capfd):
    cfg = TrainConfig(**TINY, epochs=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train_autoencoder(cfg, store, np.arange(32), np.arange(32, 40), tmp_path / "a", verbose=1)
    out = capfd.readouterr()
    text = out.out + out.err
    assert "epoch 1/2" in text and "slices/s" in text and "ETA" in text and "val_loss=" in text
    train_autoencoder(cfg, store, np.arange(32), np.arange(32, 40), tmp_path / "b", verbose=0)
    out = capfd.readouterr()
    assert "epoch" not in out.out and "slice" not in out.err


def test_batchnorm_statistics_are_the_mean_of_clean_batch_statistics():
    from aeanomaly.model.autoencoder import build_autoencoder
    from aeanomaly.model.train import recompute_batchnorm_statistics

    model = build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8, norm="batch")
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    probe = keras.Model(model.input, bn.input)
    rng = np.random.default_rng(0)
    batches = [rng.random((4, 32, 32, 1), dtype=np.float32) * (k + 1) for k in range(3)]
    before = [w.copy() for w in model.get_weights()]
    momentum = bn.momentum
    assert recompute_batchnorm_statistics(model, iter(batches)) == 3
    feats = [np.asarray(probe(b)) for b in batches]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([f.mean(axis=(0, 1, 2)) for f in feats], axis=0),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([f.var(axis=(0, 1, 2)) for f in feats], axis=0),
                               rtol=1e-3, atol=1e-6)
    assert bn.momentum == momentum  # restored
    trainable = {id(w) for w in model.trainable_weights}
    for w, old in zip(model.weights, before):
        if id(w) in trainable:
            np.testing.assert_array_equal(w.numpy(), old)  # no weight is trained
    gn = build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8, norm="group")
    assert recompute_batchnorm_statistics(gn, iter(batches)) == 0  # nothing to do without BatchNorm
