"""Symmetric ConvNet/DeConvNet autoencoder (Keras 3 functional model).

Two flavours share one builder:

* ``skip=False`` — the classic bottleneck autoencoder of the seed papers: encoder of stride-2 conv
  blocks, a spatial (1×1 conv) or dense latent, a mirrored decoder of transposed convolutions.
* ``skip=True`` — the same symmetric network with encoder→decoder skip connections at full
  resolution. It is meant to be trained as a *coarse-noise denoising* autoencoder
  (Kascenas et al., MIDL 2022): low-resolution noise is added to the input and the clean slice is the
  target, so the network learns to remove blob-like deviations instead of copying its input.

The output is a sigmoid on the [0, 1] input scale and reconstructs the centre slice (1 channel) of a
``channels``-slice (2.5-D) input.
"""

from __future__ import annotations

from functools import lru_cache

import keras
from keras import layers

from ..errors import ConfigError
from .layers import NORMS, UPSAMPLES, check_choice, conv_block, fold_batchnorm, up_block


def build_autoencoder(
    size: int = 128,
    channels: int = 1,
    depth: int = 4,
    base_filters: int = 16,
    latent: str = "spatial",
    latent_dim: int = 64,
    skip: bool = True,
    norm: str = "group",
    name: str = "aeanomaly_autoencoder",
    upsample: str = "transpose",
) -> keras.Model:
    """Build the autoencoder.

    Parameters
    ----------
    size : int
        Input height = width in pixels (32–512), divisible by ``2**depth``.
    channels : int
        Input channels: 1, or an odd k for 2.5-D (k neighbouring slices). The output has 1 channel.
    depth : int
        Number of stride-2 levels; filters double per level from ``base_filters``.
    latent : {"spatial", "dense"}
        Bottleneck kind: a 1×1 conv to ``latent_dim`` channels at ``size / 2**depth`` resolution, or a
        dense vector of ``latent_dim`` units.
    skip : bool
        Encoder→decoder skip connections (use with coarse-noise denoising training).
    norm : {"group", "batch", "none"}
        Normalisation after every conv. ``group`` (GroupNormalization, the default of earlier
        releases) is memory bound and runs at full resolution: it costs more than half the inference
        time on a CPU. ``batch`` is folded into the convolutions at inference
        (:func:`inference_model`), so it costs nothing there; ``none`` adds a bias to each conv.
    upsample : {"transpose", "nearest"}
        Decoder upsampling: a stride-2 transposed conv (earlier releases), or nearest-neighbour
        upsampling followed by a 3×3 conv.

    Returns
    -------
    keras.Model
        ``(batch, size, size, channels)`` → ``(batch, size, size, 1)`` in [0, 1].
    """
    if not 32 <= size <= 512:
        raise ConfigError(f"size must be within 32–512 pixels, got {size}")
    if depth < 1 or size % (2**depth):
        raise ConfigError(f"size {size} must be divisible by 2**depth = {2 ** max(depth, 0)}")
    if latent not in ("spatial", "dense"):
        raise ConfigError(f"latent must be 'spatial' or 'dense', got {latent!r}")
    if channels < 1 or channels % 2 == 0:
        raise ConfigError(f"channels must be an odd number ≥ 1, got {channels}")
    check_choice("norm", norm, NORMS)
    check_choice("upsample", upsample, UPSAMPLES)
    inp = keras.Input((size, size, channels), name="slices")
    x = inp
    skips = []
    filters = [base_filters * 2**i for i in range(depth)]
    x = conv_block(x, base_filters, norm, "stem")
    for i, f in enumerate(filters):
        skips.append(x)
        x = conv_block(x, f * 2 if i == depth - 1 else f, norm, f"enc{i}", stride=2)
    low = size // 2**depth
    top_f = filters[-1] * 2
    if latent == "spatial":
        x = layers.Conv2D(latent_dim, 1, name="latent")(x)
        x = layers.LeakyReLU(0.2, name="latent_act")(x)
        x = layers.Conv2D(top_f, 1, name="latent_out")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(latent_dim, name="latent")(x)
        x = layers.LeakyReLU(0.2, name="latent_act")(x)
        x = layers.Dense(low * low * top_f, name="latent_out")(x)
        x = layers.Reshape((low, low, top_f), name="unflatten")(x)
    x = layers.LeakyReLU(0.2, name="bottleneck_act")(x)
    for i in reversed(range(depth)):
        x = up_block(x, filters[i], norm, f"dec{i}", skip=skips[i] if skip else None, upsample=upsample)
    out = layers.Conv2D(1, 1, activation="sigmoid", name="reconstruction")(x)
    return keras.Model(inp, out, name=name)


#: Arithmetic of inference: float32, or bfloat16 layers with float32 weights.
PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a :class:`ConfigError`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool | None:
    """Whether this x86 CPU has the bfloat16 instructions oneDNN computes bfloat16 layers with
    (AVX512-BF16 or AMX-BF16), from the ``flags`` of ``/proc/cpuinfo`` (or the ``cpuinfo`` text given).
    None where that cannot be told (no ``/proc/cpuinfo``, or a CPU that lists no x86 flags).

    Without them bfloat16 inference is emulated or impossible: measured on this project's AMD machine
    with oneDNN limited to AVX-512 without BF16 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``) it ran at 0.40× the
    float32 speed, and limited to AVX2 TensorFlow could not build the bfloat16 convolution at all."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = value.split()
            return "avx512_bf16" in flags or "amx_bf16" in flags
    return None


@lru_cache(maxsize=1)
def native_bfloat16() -> bool | None:
    """Whether this machine computes bfloat16 inference natively: a GPU TensorFlow sees with compute
    capability 8.0 or later (Ampere on), else :func:`cpu_has_bfloat16`. False for an older GPU; None
    where it cannot be told (then bfloat16 is used as asked)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        caps = [tf.config.experimental.get_device_details(g).get("compute_capability") for g in gpus]
        return any(c is not None and tuple(c) >= (8, 0) for c in caps)
    return cpu_has_bfloat16()


def resolve_precision(precision: str) -> str:
    """``auto`` → bfloat16 where :func:`native_bfloat16` says yes, else float32 (also where it cannot
    tell); ``float32`` and ``bfloat16`` as given."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return check_precision(precision)


def inference_model(model: "keras.Model", precision: str = "float32") -> "keras.Model":
    """The model to run inference with (``model(x, training=False)`` semantics).

    BatchNormalization layers that follow a conv are first folded into it
    (:func:`aeanomaly.model.layers.fold_batchnorm`; identical up to float rounding, ~1e-6). Then for
    ``float32`` that model (``model`` itself when there was nothing to fold, e.g. GroupNormalization);
    for ``bfloat16`` a clone whose layers compute in bfloat16 (Keras ``mixed_bfloat16`` policy: the
    variables stay float32 and hold the weights). The clone's outputs are bfloat16; cast them back
    to float32."""
    check_precision(precision)
    model = fold_batchnorm(model)
    if precision == "float32":
        return model
    return with_dtype_policy(model, "mixed_bfloat16")


def with_dtype_policy(model: "keras.Model", policy: str) -> "keras.Model":
    """A clone of ``model`` whose layers use the Keras dtype ``policy`` (e.g. ``mixed_bfloat16``,
    ``mixed_float16``), holding ``model``'s weights."""

    def clone(layer):
        cfg = layer.get_config()
        cfg["dtype"] = policy
        return type(layer).from_config(cfg)

    out = keras.models.clone_model(model, clone_function=clone)
    out.set_weights(model.get_weights())
    return out


def reconstruction_loss(kind: str = "mae", ssim_weight: float = 0.5):
    """Training loss on [0, 1] images: ``mae`` (L1, default), ``mse``, or ``mae_ssim``
    (``(1 - w)·L1 + w·(1 - SSIM)``)."""
    if kind == "mae":
        return "mean_absolute_error"
    if kind == "mse":
        return "mean_squared_error"
    if kind == "mae_ssim":
        return MaeSsimLoss(ssim_weight=ssim_weight)
    raise ConfigError(f"loss must be 'mae', 'mse' or 'mae_ssim', got {kind!r}")


@keras.saving.register_keras_serializable(package="aeanomaly")
class MaeSsimLoss(keras.losses.Loss):
    """``(1 - w)·L1 + w·(1 - SSIM)`` on images in [0, 1]."""

    def __init__(self, ssim_weight: float = 0.5, name: str = "mae_ssim", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ssim_weight = float(ssim_weight)

    def call(self, y_true, y_pred):
        import tensorflow as tf

        l1 = keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=(1, 2, 3))
        ssim = tf.image.ssim(y_true, y_pred, max_val=1.0, filter_size=7)
        return (1.0 - self.ssim_weight) * l1 + self.ssim_weight * (1.0 - ssim)

    def get_config(self):
        return {**super().get_config(), "ssim_weight": self.ssim_weight}
