import hashlib
import json

import keras
import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.model.autoencoder import build_autoencoder, inference_model
from aeanomaly.model.layers import conv_block, fold_batchnorm, foldable_pairs, norm_layer, up_block

# Layer graph of models built by the release before the shared layers (digest of class, name, inputs and
# the shape-defining settings of every layer), recorded with that code. The builder must still make
# exactly these graphs, so bundles written by that release rebuild, load and score identically.
OLD_RELEASE = [
    (dict(size=32, depth=2, base_filters=4, latent_dim=8), "67d5c8f20b288223"),
    (dict(size=32, depth=2, base_filters=4, latent="dense", latent_dim=8, skip=False, channels=3), "6547334abfeb0b6b"),
    (dict(size=32, depth=2, base_filters=4, norm="batch"), "57838f0ce17fd464"),
    (dict(size=32, depth=2, base_filters=4, norm="none"), "589e0e0005138ad4"),
    (dict(size=128), "4be803716aa8807b"),
]
KEYS = ("filters", "kernel_size", "strides", "padding", "use_bias", "groups", "units", "negative_slope", "activation",
        "momentum", "epsilon", "axis", "target_shape", "batch_shape", "interpolation", "size")


def _inbound(lc):
    out = []

    def walk(o):
        if isinstance(o, dict):
            if o.get("class_name") == "__keras_tensor__":
                out.append(o["config"]["keras_history"][0])
                return
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(lc.get("inbound_nodes", []))
    return out


def _digest(model) -> str:
    rows = [[lc["class_name"], lc["config"]["name"], _inbound(lc), {k: lc["config"][k] for k in KEYS if k in lc["config"]}]
            for lc in model.get_config()["layers"]]
    rows = json.loads(json.dumps(rows, default=list))
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("kw,digest", OLD_RELEASE)
def test_builder_makes_the_old_release_graphs(kw, digest):
    assert _digest(build_autoencoder(**kw)) == digest


def _randomise_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.2, n))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0, 0.2, n))


@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_fold_batchnorm_is_exact_and_removes_every_bn(upsample):
    m = build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8, norm="batch", upsample=upsample)
    _randomise_bn(m)
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in m.layers)
    assert len(foldable_pairs(m)) == n_bn > 0
    f = fold_batchnorm(m)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in f.layers)
    assert [layer.name for layer in f.layers] == [layer.name for layer in m.layers]
    x = np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(f(x, training=False)), np.asarray(m(x, training=False)), atol=2e-6)
    # inference_model folds too; the original model is untouched (training still normalises)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in inference_model(m).layers)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in m.layers) == n_bn


def test_fold_is_a_no_op_without_batchnorm():
    m = build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8)  # GroupNormalization
    assert foldable_pairs(m) == [] and fold_batchnorm(m) is m and inference_model(m) is m


def test_fold_skips_a_bn_whose_conv_has_other_consumers():
    inp = keras.Input((8, 8, 2))
    c = keras.layers.Conv2D(3, 3, padding="same", name="c")(inp)
    b = keras.layers.BatchNormalization(name="b")(c)
    m = keras.Model(inp, keras.layers.Add()([b, c]))
    assert foldable_pairs(m) == []


def test_bfloat16_inference_of_a_batchnorm_model_is_folded_and_close():
    m = build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8, norm="batch")
    _randomise_bn(m, 2)
    b = inference_model(m, "bfloat16")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in b.layers)
    assert b.layers[1].compute_dtype == "bfloat16"
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    d = np.abs(np.asarray(b(x, training=False)).astype(np.float32) - np.asarray(m(x, training=False)))
    assert d.max() < 0.05


def test_norm_layer_kinds_and_errors():
    assert isinstance(norm_layer("group", 4, "n"), keras.layers.GroupNormalization)
    assert norm_layer("group", 4, "n").groups == 4 and norm_layer("group", 32, "n").groups == 8
    bn = norm_layer("batch", 4, "n")
    assert isinstance(bn, keras.layers.BatchNormalization) and bn.momentum == 0.99
    assert norm_layer("batch", 4, "n", momentum=0.9).momentum == 0.9
    assert isinstance(norm_layer("none", 4, "n"), keras.layers.Identity)
    with pytest.raises(ConfigError, match="norm must be 'group', 'batch' or 'none', got 'layer'"):
        norm_layer("layer", 4, "n")


def test_blocks_name_their_layers_stably():
    inp = keras.Input((16, 16, 1))
    x = conv_block(inp, 4, "group", "enc0", stride=2)
    x = up_block(x, 4, "none", "dec0", skip=inp, upsample="nearest")
    y = conv_block(inp, 4, "batch", "head", activation="relu")
    m = keras.Model(inp, [x, y])
    names = {layer.name: type(layer).__name__ for layer in m.layers}
    assert names["enc0_conv1"] == "Conv2D" and m.get_layer("enc0_conv1").strides == (2, 2)
    assert m.get_layer("enc0_conv2").strides == (1, 1) and names["enc0_norm2"] == "GroupNormalization"
    assert names["enc0_act1"] == "LeakyReLU" and names["head_act2"] == "ReLU"
    assert names["dec0_up"] == "UpSampling2D" and names["dec0_upconv"] == "Conv2D" and names["dec0_skip"] == "Concatenate"
    assert m.get_layer("dec0_conv").use_bias and not m.get_layer("enc0_conv1").use_bias
    assert x.shape[1:] == (16, 16, 4)
    with pytest.raises(ConfigError, match="upsample"):
        up_block(x, 4, "none", "d", upsample="bicubic")
    with pytest.raises(ConfigError, match="activation"):
        conv_block(inp, 4, "none", "c", activation="gelu")


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """``model.keras`` files of the release's architecture settings (and the new options), written
    with the model-saving code of this release, with their outputs on fixed slices."""
    d = tmp_path_factory.mktemp("bundles")
    x = np.random.default_rng(5).random((2, 32, 32, 3), dtype=np.float32)
    out = {}
    for kw in (dict(), dict(norm="batch"), dict(norm="none", upsample="nearest")):
        keras.utils.set_random_seed(0)
        m = build_autoencoder(size=32, channels=3, depth=2, base_filters=4, latent_dim=8, **kw)
        _randomise_bn(m, 3)
        path = d / f"{'-'.join(map(str, kw.values())) or 'default'}.keras"
        m.save(path)
        out[path] = np.asarray(m(x, training=False))
    return x, out


def test_saved_models_load_safely_and_score_identically(saved_models):
    x, out = saved_models
    for path, want in out.items():
        m = keras.models.load_model(path, safe_mode=True)
        np.testing.assert_array_equal(np.asarray(m(x, training=False)), want)
        np.testing.assert_allclose(np.asarray(inference_model(m)(x, training=False)), want, atol=2e-6)
