import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.model.autoencoder import MaeSsimLoss, build_autoencoder, reconstruction_loss


@pytest.mark.parametrize("skip,latent,channels", [(True, "spatial", 1), (False, "dense", 3), (False, "spatial", 1)])
def test_builder_shapes_and_range(skip, latent, channels):
    m = build_autoencoder(size=32, channels=channels, depth=2, base_filters=4, latent=latent, latent_dim=8, skip=skip)
    x = np.random.default_rng(0).random((2, 32, 32, channels)).astype("float32")
    y = np.asarray(m(x, training=False))
    assert y.shape == (2, 32, 32, 1)
    assert y.min() >= 0.0 and y.max() <= 1.0
    names = [layer.name for layer in m.layers]
    assert any("skip" in n for n in names) == skip
    # symmetric: as many transposed-conv (decoder) levels as stride-2 (encoder) levels
    assert sum("_deconv" in n for n in names) == 2 and sum(n.startswith("enc") and n.endswith("conv1") for n in names) == 2


def test_dense_latent_is_a_real_bottleneck():
    m = build_autoencoder(size=32, depth=2, base_filters=4, latent="dense", latent_dim=5, skip=False)
    assert m.get_layer("latent").output.shape[-1] == 5


def test_fast_options_keep_shapes_and_parameter_counts():
    ref = build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8)
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    for kw in (dict(norm="batch"), dict(norm="none"), dict(norm="none", upsample="nearest")):
        m = build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8, **kw)
        y = np.asarray(m(x, training=False))
        assert y.shape == (2, 32, 32, 1) and 0 <= y.min() and y.max() <= 1
        names = [layer.name for layer in m.layers]
        up = kw.get("upsample", "transpose")
        assert sum("_deconv" in n for n in names) == (2 if up == "transpose" else 0)
        assert sum(n.endswith("_up") for n in names) == (2 if up == "nearest" else 0)
    # "none" trades the norms' scale/shift for conv biases: fewer parameters, never more
    assert build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8, norm="none").count_params() <= ref.count_params()


@pytest.mark.parametrize("kw", [dict(size=16), dict(size=48, depth=5), dict(latent="x"), dict(channels=2), dict(norm="layer"),
                                dict(upsample="bilinear")])
def test_builder_rejects_bad_parameters(kw):
    with pytest.raises(ConfigError):
        build_autoencoder(**{"size": 32, "depth": 2, "base_filters": 4, **kw})


def test_losses():
    assert reconstruction_loss("mae") == "mean_absolute_error"
    loss = reconstruction_loss("mae_ssim", ssim_weight=0.5)
    a = np.full((1, 32, 32, 1), 0.5, "float32")
    assert float(loss(a, a)) == pytest.approx(0.0, abs=1e-5)
    b = np.random.default_rng(0).random((1, 32, 32, 1)).astype("float32")
    assert float(loss(a, b)) > 0.2
    assert MaeSsimLoss.from_config(loss.get_config()).ssim_weight == 0.5
    with pytest.raises(ConfigError):
        reconstruction_loss("l3")


def test_inference_model_bfloat16_shares_weights_and_stays_close():
    from aeanomaly.model.autoencoder import inference_model

    m = build_autoencoder(size=32, depth=2, base_filters=4, latent_dim=8)
    assert inference_model(m, "float32") is m
    b = inference_model(m, "bfloat16")
    assert b is not m and b.layers[1].compute_dtype == "bfloat16" and b.layers[1].variable_dtype == "float32"
    for w1, w2 in zip(m.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    y32 = np.asarray(m(x, training=False))
    y16 = np.asarray(b(x, training=False)).astype(np.float32)
    diff = np.abs(y32 - y16)
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.01  # bfloat16 has an 8-bit mantissa
    with pytest.raises(ConfigError, match="precision"):
        inference_model(m, "float16")


def test_cpu_has_bfloat16_reads_the_x86_flags():
    from aeanomaly.model.autoencoder import cpu_has_bfloat16

    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {}\nbogomips\t: 4800\n"
    assert cpu_has_bfloat16(x86.format("avx512_bf16 avx512_vnni")) is True
    assert cpu_has_bfloat16(x86.format("amx_bf16 amx_tile")) is True
    assert cpu_has_bfloat16(x86.format("avx512_vnni")) is False  # e.g. Cascade Lake: emulated, 0.4x float32
    assert cpu_has_bfloat16("processor\t: 0\nFeatures\t: fp asimd bf16\n") is None  # not x86: cannot tell
    assert cpu_has_bfloat16("") is None


def test_auto_precision_is_bfloat16_only_where_the_machine_has_it(monkeypatch):
    from aeanomaly.errors import ConfigError
    from aeanomaly.model import autoencoder

    for native, want in ((True, "bfloat16"), (False, "float32"), (None, "float32")):
        monkeypatch.setattr(autoencoder, "native_bfloat16", lambda native=native: native)
        assert autoencoder.resolve_precision("auto") == want
        assert autoencoder.resolve_precision("float32") == "float32"
        assert autoencoder.resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(ConfigError, match="precision must be one of"):
        autoencoder.resolve_precision("int8")
