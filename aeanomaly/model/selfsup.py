"""Self-supervised anomaly training on normal slices: synthetic anomalies and a discriminative
segmentation network on top of a reconstruction model (model kind :data:`MODEL_KIND` = ``"dae+seg"``).

The recipe is DRAEM's (Zavrtanik et al., ICCV 2021) with the anomaly families of FPI (Tan et al. 2020)
and NSA (Schlüter et al., ECCV 2022): normal slices are corrupted on the fly, the (frozen) denoising
autoencoder reconstructs the corrupted slice, and a small U-Net sees ``[image, reconstruction]`` and
learns to segment what was corrupted. At scoring time its per-pixel probability is the heatmap (or a
fusion with the residual chosen on a tune split). Training sees normal scans only.

Synthetic anomaly families (:data:`FAMILIES`), all on windowed slices in [0, 1], ``(n, h, w, c)``:

* ``patch_blend`` — a region of another normal slice blended in under a smooth random shape with a
  gradient alpha (DRAEM / FPI style).
* ``poisson_patch`` — a shifted patch of another normal slice pasted seamlessly: its gradients are
  kept and its low frequencies follow the host at the shape's boundary (a membrane approximation of
  Poisson image editing, as NSA).
* ``foreign_interp`` — foreign-patch interpolation (FPI): a rectangle interpolated with the same
  rectangle of another slice by one factor α.
* ``intensity_shape`` — a brightness shift (up or down) inside a random smooth shape.
* ``texture_shape`` — the texture inside a random smooth shape replaced: blurred away, or coarse noise
  added.
* ``smooth_blob`` — a random smooth anisotropic Gaussian-profile blob of random intensity.

None of these is the benchmark's lesion generator (:mod:`aeanomaly.datasets.lesions`); the benchmark
reports held-out lesion kinds separately. Each generator returns ``(corrupted, target)``: ``target`` is
float32 ``(n, h, w)`` in [0, 1] — the blending weight on the centre channel where the image changed by at
least :data:`MIN_CHANGE`, and 0 elsewhere; outside a family's support the image is unchanged bit for bit.

Pure compute: numpy, scipy and Keras; no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..config import SEG_MIN_STEPS_PER_EPOCH

#: The model kind of a detector whose heatmap is this network's probability.
MODEL_KIND = "dae+seg"
#: Synthetic anomaly families, in the order :func:`corrupt` draws them.
FAMILIES = ("patch_blend", "poisson_patch", "foreign_interp", "intensity_shape", "texture_shape", "smooth_blob")
#: A pixel is part of the target only where the centre channel changed at least this much.
MIN_CHANGE = 0.01
#: Default shape radius range as a fraction of the slice side (≈ 2–12 mm on a 350 mm field of view).
RADIUS_FRACTION = (0.02, 0.12)


# ------------------------------------------------------------------------------------------------
# random shapes
# ------------------------------------------------------------------------------------------------

def _as_nhwc(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected slices (n, h, w) or (n, h, w, c), got shape {x.shape}")
    return x


def _centre(rng: np.random.Generator, region: np.ndarray | None, h: int, w: int) -> tuple[int, int]:
    if region is not None and region.any():
        ys, xs = np.nonzero(region)
        k = int(rng.integers(len(ys)))
        return int(ys[k]), int(xs[k])
    return int(rng.integers(h)), int(rng.integers(w))


def smooth_shape(rng: np.random.Generator, h: int, w: int, centre: tuple[int, int],
                 radius_fraction: tuple[float, float] = RADIUS_FRACTION, edge_px: float = 1.0) -> np.ndarray:
    """A random smooth, irregular shape as a soft mask in [0, 1].

    An ellipse of random axes and angle whose boundary is deformed by low-resolution noise (thresholded
    after upsampling), then softened by a Gaussian of ``edge_px``.

    Parameters
    ----------
    rng : np.random.Generator
    h, w : int
        Slice shape in pixels.
    centre : (int, int)
        Centre ``(y, x)`` in pixels.
    radius_fraction : (float, float)
        Range of the mean radius as a fraction of ``min(h, w)``.
    edge_px : float
        Softness of the boundary (Gaussian σ in pixels).

    Returns
    -------
    np.ndarray
        float32 ``(h, w)`` in [0, 1], with at least one pixel ≥ 0.5.
    """
    r = max(1.0, float(rng.uniform(*radius_fraction)) * min(h, w))
    a, b = r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4)
    th = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dx * np.cos(th) + dy * np.sin(th)) / a
    v = (-dx * np.sin(th) + dy * np.cos(th)) / b
    d = np.sqrt(u * u + v * v)
    coarse = rng.standard_normal((8, 8)).astype(np.float32)
    noise = ndi.zoom(coarse, (h / 8, w / 8), order=1)[:h, :w]
    noise = np.pad(noise, ((0, h - noise.shape[0]), (0, w - noise.shape[1])), mode="edge")
    hard = (d + 0.25 * noise) < 1.0
    hard[centre[0], centre[1]] = True
    soft = ndi.gaussian_filter(hard.astype(np.float32), edge_px) if edge_px > 0 else hard.astype(np.float32)
    soft = np.clip(soft / max(float(soft.max()), 1e-6), 0.0, 1.0)
    return soft.astype(np.float32)


def _channel_weights(rng: np.random.Generator, c: int) -> np.ndarray:
    """Per-channel strength: 1 on the centre slice, 0.3–1 on its neighbours (an anomaly tapers in z)."""
    wgt = rng.uniform(0.3, 1.0, c).astype(np.float32)
    wgt[c // 2] = 1.0
    return wgt


def _finish(x: np.ndarray, new: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip, keep the host bit for bit where ``alpha == 0``, and build the target on the centre channel."""
    new = np.clip(new, 0.0, 1.0).astype(np.float32)
    support = alpha > 0
    new = np.where(support, new, x)
    c = x.shape[-1] // 2
    changed = np.abs(new[..., c] - x[..., c]) >= MIN_CHANGE
    target = np.where(changed, np.clip(alpha[..., c], 0.0, 1.0), 0.0).astype(np.float32)
    return new, target


def _donor(rng: np.random.Generator, donors: np.ndarray, i: int, n_self: int) -> np.ndarray:
    """A donor slice other than slice ``i`` of the batch (any one when there is no other)."""
    if len(donors) == 1:
        return donors[0]
    k = int(rng.integers(len(donors)))
    if len(donors) == n_self and k == i:
        k = (k + 1) % len(donors)
    return donors[k]


def _check_donors(x: np.ndarray, donors: np.ndarray | None) -> np.ndarray:
    donors = x if donors is None else _as_nhwc(donors)
    if donors.shape[1:] != x.shape[1:]:
        raise ValueError(f"donor slices have shape {donors.shape[1:]}, the slices {x.shape[1:]}")
    return donors


def _regions(region, x):
    if region is None:
        return [None] * len(x)
    region = np.asarray(region, bool)
    if region.shape != x.shape[:3]:
        raise ValueError(f"region has shape {region.shape}, expected {x.shape[:3]}")
    return list(region)


# ------------------------------------------------------------------------------------------------
# anomaly families
# ------------------------------------------------------------------------------------------------

def _per_slice(x: np.ndarray, region, corrupt_slice) -> tuple[np.ndarray, np.ndarray]:
    """The frame of every family: ``corrupt_slice(x, i, region_i) -> (new_i, alpha_i)`` for each slice
    of ``x`` as ``(n, h, w, c)``, then the target from the alphas (:func:`_finish`)."""
    x = _as_nhwc(x)
    alpha = np.zeros_like(x)
    new = x.copy()
    for i, reg in enumerate(_regions(region, x)):
        new[i], alpha[i] = corrupt_slice(x, i, reg)
    return _finish(x, new, alpha)


def patch_blend(x: np.ndarray, rng: np.random.Generator, donors: np.ndarray | None = None,
                region: np.ndarray | None = None, radius_fraction=RADIUS_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Blend a region of another normal slice in under a smooth shape with a gradient alpha.

    Parameters
    ----------
    x : np.ndarray
        float32 ``(n, h, w)`` or ``(n, h, w, c)`` windowed slices in [0, 1] (not modified).
    rng : np.random.Generator
    donors : np.ndarray, optional
        Normal slices to take patches from (default: the other slices of ``x``).
    region : np.ndarray, optional
        bool ``(n, h, w)``: where shape centres may lie (e.g. the body or lungs).
    radius_fraction : (float, float)
        Shape radius range as a fraction of the slice side.

    Returns
    -------
    corrupted : np.ndarray
        float32, the shape of ``x`` as ``(n, h, w, c)``.
    target : np.ndarray
        float32 ``(n, h, w)`` in [0, 1].
    """
    donors = _check_donors(_as_nhwc(x), donors)

    def blended(x, i, reg):
        n, h, w, c = x.shape
        shape = smooth_shape(rng, h, w, _centre(rng, reg, h, w), radius_fraction, edge_px=rng.uniform(1.0, 3.0))
        a = shape[..., None] * rng.uniform(0.4, 1.0) * _channel_weights(rng, c)
        d = _donor(rng, donors, i, n)
        shift = rng.integers(-h // 4, h // 4 + 1), rng.integers(-w // 4, w // 4 + 1)
        d = np.roll(d, shift, axis=(0, 1))
        return (1 - a) * x[i] + a * d, a

    return _per_slice(x, region, blended)


def poisson_patch(x: np.ndarray, rng: np.random.Generator, donors: np.ndarray | None = None,
                  region: np.ndarray | None = None, radius_fraction=RADIUS_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Paste a shifted patch of another slice seamlessly (Poisson-style blending, as NSA).

    Inside the shape the result is ``donor + m``, where the membrane ``m`` interpolates the host-minus-donor
    difference from the shape's boundary inwards (normalised Gaussian interpolation of the boundary
    values): the donor's gradients, the host's level at the seam. Parameters and returns as
    :func:`patch_blend`.
    """
    donors = _check_donors(_as_nhwc(x), donors)

    def pasted(x, i, reg):
        n, h, w, c = x.shape
        shape = smooth_shape(rng, h, w, _centre(rng, reg, h, w), radius_fraction, edge_px=0.0) > 0.5
        ring = ndi.binary_dilation(shape, iterations=1) & ~shape
        d = _donor(rng, donors, i, n)
        shift = rng.integers(-h // 3, h // 3 + 1), rng.integers(-w // 3, w // 3 + 1)
        d = np.roll(d, shift, axis=(0, 1))
        if rng.random() < 0.5:
            d = d[:, ::-1]
        size = max(1.0, float(np.sqrt(shape.sum())) / 2)
        diff = (x[i] - d) * ring[..., None]
        num = ndi.gaussian_filter(diff, (size, size, 0))
        den = ndi.gaussian_filter(ring.astype(np.float32), size)[..., None]
        membrane = num / np.maximum(den, 1e-6)
        wgt = _channel_weights(rng, c)
        new = np.where(shape[..., None], (1 - wgt) * x[i] + wgt * (d + membrane), x[i])
        return new, shape[..., None].astype(np.float32) * wgt

    return _per_slice(x, region, pasted)


def foreign_interp(x: np.ndarray, rng: np.random.Generator, donors: np.ndarray | None = None,
                   region: np.ndarray | None = None, radius_fraction=RADIUS_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Foreign-patch interpolation (FPI): a rectangle interpolated with the same rectangle of another
    slice by one factor α ~ U(0.2, 1). Parameters and returns as :func:`patch_blend`."""
    donors = _check_donors(_as_nhwc(x), donors)

    def interpolated(x, i, reg):
        n, h, w, c = x.shape
        cy, cx = _centre(rng, reg, h, w)
        ry = max(1, int(rng.uniform(*radius_fraction) * h))
        rx = max(1, int(rng.uniform(*radius_fraction) * w))
        box = np.zeros((h, w), np.float32)
        box[max(0, cy - ry):cy + ry + 1, max(0, cx - rx):cx + rx + 1] = 1.0
        a = box[..., None] * rng.uniform(0.2, 1.0) * _channel_weights(rng, c)
        d = _donor(rng, donors, i, n)
        return (1 - a) * x[i] + a * d, a

    return _per_slice(x, region, interpolated)


def _in_shape(rng: np.random.Generator, radius_fraction, edge_px, other_fn):
    """A per-slice corruption for :func:`_per_slice`: ``other_fn(x, i)`` (the slice's ``(h, w, c)``
    replacement) blended into ``x[i]`` inside a smooth random shape, weighted per channel; ``edge_px()``
    draws the shape's edge softness. The draws come in this order per slice (shape, then ``other_fn``)."""
    def blended(x, i, reg):
        _, h, w, c = x.shape
        shape = smooth_shape(rng, h, w, _centre(rng, reg, h, w), radius_fraction, edge_px=edge_px())
        a = shape[..., None] * _channel_weights(rng, c)
        return (1 - a) * x[i] + a * other_fn(x, i), a

    return blended


def intensity_shape(x: np.ndarray, rng: np.random.Generator, donors: np.ndarray | None = None,
                    region: np.ndarray | None = None, radius_fraction=RADIUS_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Shift the brightness by ±0.05…0.5 inside a smooth random shape (``donors`` unused).
    Parameters and returns as :func:`patch_blend`."""
    def shifted(x, i):
        return x[i] + rng.uniform(0.05, 0.5) * (1 if rng.random() < 0.7 else -1)

    return _per_slice(x, region, _in_shape(rng, radius_fraction, lambda: rng.uniform(0.5, 2.5), shifted))


def texture_shape(x: np.ndarray, rng: np.random.Generator, donors: np.ndarray | None = None,
                  region: np.ndarray | None = None, radius_fraction=RADIUS_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Change the texture inside a smooth random shape: blur it away, or add coarse noise
    (``donors`` unused). Parameters and returns as :func:`patch_blend`."""
    def retextured(x, i):
        _, h, w, _ = x.shape
        if rng.random() < 0.5:
            return ndi.gaussian_filter(x[i], (rng.uniform(1.5, 4.0),) * 2 + (0,))
        s = max(2, int(rng.integers(2, 6)))
        coarse = rng.standard_normal((h // s + 1, w // s + 1)).astype(np.float32)
        noise = np.repeat(np.repeat(coarse, s, 0), s, 1)[:h, :w]
        return x[i] + rng.uniform(0.05, 0.25) * ndi.gaussian_filter(noise, 0.7)[..., None]

    return _per_slice(x, region, _in_shape(rng, radius_fraction, lambda: 1.0, retextured))


def smooth_blob(x: np.ndarray, rng: np.random.Generator, donors: np.ndarray | None = None,
                region: np.ndarray | None = None, radius_fraction=RADIUS_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """A smooth anisotropic Gaussian-profile blob of random intensity in [0, 1], truncated at 2.5 σ
    (``donors`` unused). Parameters and returns as :func:`patch_blend`."""
    def blob(x, i, reg):
        _, h, w, c = x.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = _centre(rng, reg, h, w)
        sy = max(0.7, rng.uniform(*radius_fraction) * h / 2)
        sx = max(0.7, rng.uniform(*radius_fraction) * w / 2)
        th = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(th) + dy * np.sin(th)) / sx
        v = (-dx * np.sin(th) + dy * np.cos(th)) / sy
        q = u * u + v * v
        prof = np.where(q < 6.25, np.exp(-0.5 * q), 0.0).astype(np.float32) * rng.uniform(0.5, 1.0)
        a = prof[..., None] * _channel_weights(rng, c)
        value = rng.uniform(0.0, 1.0)
        return x[i] + a * (value - x[i]), a

    return _per_slice(x, region, blob)


GENERATORS: dict[str, Callable] = {
    "patch_blend": patch_blend, "poisson_patch": poisson_patch, "foreign_interp": foreign_interp,
    "intensity_shape": intensity_shape, "texture_shape": texture_shape, "smooth_blob": smooth_blob,
}


def corrupt(x: np.ndarray, rng: np.random.Generator | int, *, donors: np.ndarray | None = None,
            region: np.ndarray | None = None, families: Sequence[str] = FAMILIES, anomaly_fraction: float = 0.7,
            radius_fraction=RADIUS_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a random ``anomaly_fraction`` of the slices, each with one family drawn uniformly.

    Parameters
    ----------
    x : np.ndarray
        float32 ``(n, h, w)`` or ``(n, h, w, c)`` normal slices in [0, 1] (not modified).
    rng : np.random.Generator or int
        Random source (an int is a seed: the same seed gives the same corruption).
    donors, region, radius_fraction
        As :func:`patch_blend`.
    families : sequence of str
        Families to draw from (:data:`FAMILIES`).
    anomaly_fraction : float
        Probability that a slice is corrupted (the others stay normal, with an all-zero target).

    Returns
    -------
    corrupted : np.ndarray
        float32 ``(n, h, w, c)``.
    target : np.ndarray
        float32 ``(n, h, w)`` in [0, 1].
    """
    from ..errors import ConfigError

    rng = np.random.default_rng(rng)
    bad = [f for f in families if f not in GENERATORS]
    if bad or not len(families):
        raise ConfigError(f"unknown anomaly family(ies) {bad or '(none given)'}; known: {', '.join(FAMILIES)}")
    if not 0.0 <= float(anomaly_fraction) <= 1.0:
        raise ConfigError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction!r}")
    x = _as_nhwc(x)
    donors = _check_donors(x, donors)
    regions = _regions(region, x)
    out, target = x.copy(), np.zeros(x.shape[:3], np.float32)
    hit = rng.random(len(x)) < anomaly_fraction
    fam = rng.integers(len(families), size=len(x))
    for i in np.flatnonzero(hit):
        reg = None if regions[i] is None else regions[i][None]
        # a donor pool without slice i itself (a slice blended with itself changes nothing)
        pool = donors if donors is not x or len(x) == 1 else np.delete(donors, i, axis=0)
        out[i:i + 1], target[i:i + 1] = GENERATORS[families[fam[i]]](x[i:i + 1], rng, pool, reg, radius_fraction)
    return out, target


# ------------------------------------------------------------------------------------------------
# the discriminative segmentation network
# ------------------------------------------------------------------------------------------------

def build_segmenter(size: int, in_channels: int, *, base_filters: int = 16, depth: int = 3, norm: str = "batch",
                    output_prior: float = 0.01):
    """A small U-Net: ``[image channels, reconstruction channels]`` → per-pixel anomaly probability.

    Parameters
    ----------
    size : int
        Slice side in pixels (divisible by ``2**depth``).
    in_channels : int
        Input channels: the image's plus the reconstruction's (``channels + 1`` for the package's
        autoencoder, which reconstructs the centre slice).
    base_filters, depth, norm
        Width, number of down-sampling levels and normalisation (:func:`aeanomaly.model.layers.norm_layer`).
    output_prior : float
        The anomaly probability the untrained network outputs everywhere (its output bias is the logit
        of it); anomalous pixels are rare, so a small prior lets training start where the data is.

    Returns
    -------
    keras.Model
        Input ``(size, size, in_channels)`` float32, output ``(size, size, 1)`` sigmoid, named ``seg``.
    """
    import keras
    from keras import layers

    from ..errors import ConfigError
    from .layers import conv_block, up_block

    if size % (2 ** depth):
        raise ConfigError(f"size {size} must be divisible by 2**depth = {2 ** depth}")
    prior = float(output_prior)
    if not 0.0 < prior < 1.0:
        raise ConfigError(f"output_prior must be in (0, 1), got {output_prior!r}")
    inp = keras.Input((size, size, in_channels), name="image_and_reconstruction")
    x = conv_block(inp, base_filters, norm, "seg_enc0", activation="relu")
    skips = [x]
    for d in range(1, depth + 1):
        x = conv_block(x, base_filters * 2 ** min(d, 3), norm, f"seg_enc{d}", stride=2, activation="relu")
        skips.append(x)
    for d in range(depth - 1, -1, -1):
        x = up_block(x, base_filters * 2 ** min(d, 3), norm, f"seg_dec{d}", skip=skips[d], activation="relu")
    # the output bias starts at the logit of a small anomaly prior (as RetinaNet's focal-loss head): from
    # 0.5 everywhere, Adam needs thousands of steps just to move the bias down to the rare-pixel regime,
    # and until then the Dice term sees a flat map and gives no useful gradient
    out = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="seg_proba",
                        bias_initializer=keras.initializers.Constant(np.log(prior / (1 - prior))))(x)
    return keras.Model(inp, out, name="seg")


def focal_dice_loss(gamma: float = 2.0, dice_weight: float = 1.0):
    """Focal binary cross-entropy (γ = ``gamma``; γ = 0 is BCE) plus ``dice_weight`` × soft Dice loss
    over each batch (a Keras loss function ``(y_true, y_pred) -> scalar``)."""
    from keras import ops

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        p = ops.clip(ops.cast(y_pred, "float32"), 1e-6, 1 - 1e-6)
        bce = -(y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p))
        pt = y_true * p + (1 - y_true) * (1 - p)
        focal = ops.mean(ops.power(1 - pt, gamma) * bce)
        inter = ops.sum(y_true * p)
        dice = 1 - (2 * inter + 1.0) / (ops.sum(y_true) + ops.sum(p) + 1.0)
        return focal + dice_weight * dice

    return loss


def segmenter_input(image: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """``(n, h, w, c + k)`` float32: the image channels then the reconstruction channels."""
    image = _as_nhwc(image)
    recon = _as_nhwc(recon)
    if recon.shape[:3] != image.shape[:3]:
        raise ValueError(f"reconstruction shape {recon.shape[:3]} differs from the image's {image.shape[:3]}")
    return np.concatenate([image, recon], axis=-1)


def train_discriminator(
    x_normal: np.ndarray, reconstruct_fn: Callable[[np.ndarray], np.ndarray], *, epochs: int = 10,
    batch_size: int = 16, seed: int = 0, size: int | None = None, steps_per_epoch: int | None = None,
    region: np.ndarray | None = None, families: Sequence[str] = FAMILIES, anomaly_fraction: float = 0.7,
    radius_fraction=RADIUS_FRACTION, base_filters: int = 16, depth: int = 3, norm: str = "batch",
    learning_rate: float = 1e-3, focal_gamma: float = 2.0, dice_weight: float = 1.0, verbose: int = 0,
):
    """Train the segmentation network on normal slices corrupted on the fly.

    Each step draws ``batch_size`` normal slices, corrupts them (:func:`corrupt`, donors from the whole
    training set), reconstructs the corrupted slices with ``reconstruct_fn`` (the frozen autoencoder)
    and fits ``[corrupted, reconstruction] → target`` with focal BCE + soft Dice.

    Parameters
    ----------
    x_normal : np.ndarray
        float32 ``(n, size, size)`` or ``(n, size, size, channels)`` normal slices in [0, 1] (prepared
        on the model grid).
    reconstruct_fn : callable
        ``(b, size, size, channels) -> (b, size, size)`` (or ``(b, size, size, k)``) reconstruction,
        e.g. ``AnomalyDetector.reconstruct``.
    epochs, batch_size, seed : int
        Training length, batch and random seed (corruption, shuffling and weights).
    size : int, optional
        Expected slice side (checked against ``x_normal`` when given).
    steps_per_epoch : int, optional
        Steps per epoch (default ``max(ceil(n / batch_size), SEG_MIN_STEPS_PER_EPOCH)``: the anomalies are
        drawn afresh every step, so a small training set does not bound how long training is useful).
    region : np.ndarray, optional
        bool ``(n, size, size)``: where anomalies are centred (e.g. the body); default anywhere.
    families, anomaly_fraction, radius_fraction
        As :func:`corrupt`.
    base_filters, depth, norm
        As :func:`build_segmenter`.
    learning_rate, focal_gamma, dice_weight : float
        Adam learning rate; the loss (:func:`focal_dice_loss`).
    verbose : int
        1 prints one line per epoch.

    Returns
    -------
    model : keras.Model
        The trained :func:`build_segmenter` network.
    history : dict
        ``{"loss": [per-epoch mean], "epochs": int, "families": [...], "in_channels": int, ...}``.
    """
    import keras

    from ..errors import ConfigError
    from .train import BN_STAT_BATCHES, recompute_batchnorm_statistics

    x = _as_nhwc(x_normal)
    n, h, w, c = x.shape
    if n < 1:
        raise ConfigError("train_discriminator needs at least one normal slice")
    if h != w or (size is not None and h != size):
        raise ConfigError(f"slices must be square of side {size or h}, got {h}×{w}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if region is not None:
        region = np.asarray(region, bool)
        if region.shape != (n, h, w):
            raise ConfigError(f"region has shape {region.shape}, expected {(n, h, w)}")
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(int(seed))
    probe = _as_nhwc(np.asarray(reconstruct_fn(x[:1]), np.float32))
    model = build_segmenter(h, c + probe.shape[-1], base_filters=base_filters, depth=depth, norm=norm)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=focal_dice_loss(focal_gamma, dice_weight))
    steps = int(steps_per_epoch or max(int(np.ceil(n / batch_size)), SEG_MIN_STEPS_PER_EPOCH))

    def draw():
        idx = rng.integers(n, size=batch_size)  # with replacement: any n works
        xb, tb = corrupt(x[idx], rng, donors=x, region=None if region is None else region[idx],
                         families=families, anomaly_fraction=anomaly_fraction, radius_fraction=radius_fraction)
        return segmenter_input(xb, np.asarray(reconstruct_fn(xb), np.float32)), tb[..., None]

    history = {"loss": []}
    for epoch in range(int(epochs)):
        losses = [float(model.train_on_batch(*draw())) for _ in range(steps)]
        history["loss"].append(float(np.mean(losses)))
        if verbose:
            print(f"seg epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}", flush=True)
    # BatchNorm's moving averages after a few hundred steps still hold much of their initial 0 and 1:
    # set them to the mean batch statistics of freshly corrupted batches, as the autoencoder's are
    bn_batches = recompute_batchnorm_statistics(model, (draw()[0] for _ in range(min(BN_STAT_BATCHES, steps * epochs))))
    history.update(epochs=int(epochs), steps_per_epoch=steps, families=list(families), in_channels=int(c + probe.shape[-1]),
                   anomaly_fraction=float(anomaly_fraction), focal_gamma=float(focal_gamma),
                   dice_weight=float(dice_weight), base_filters=int(base_filters), depth=int(depth), norm=norm,
                   bn_stat_batches=int(bn_batches))
    return model, history


def anomaly_probability(model, image: np.ndarray, recon: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Per-pixel anomaly probability of slices and their reconstructions.

    Parameters
    ----------
    model : keras.Model
        A :func:`train_discriminator` network.
    image : np.ndarray
        float32 ``(n, h, w)`` or ``(n, h, w, c)`` slices in [0, 1].
    recon : np.ndarray
        float32 ``(n, h, w)`` or ``(n, h, w, k)`` their reconstructions.
    batch_size : int
        Inference batch.

    Returns
    -------
    np.ndarray
        float32 ``(n, h, w)`` in [0, 1].
    """
    inp = segmenter_input(image, recon)
    want = model.input_shape[-1]
    if inp.shape[-1] != want:
        raise ValueError(f"the segmenter expects {want} input channels, got {inp.shape[-1]}")
    out = np.empty(inp.shape[:3], np.float32)
    for i in range(0, len(inp), batch_size):
        out[i:i + batch_size] = np.asarray(model(inp[i:i + batch_size], training=False), np.float32)[..., 0]
    return out


def fused_heatmap(probability: np.ndarray, residual: np.ndarray, weight: float, residual_scale: float) -> np.ndarray:
    """``weight`` × probability + (1 − ``weight``) × ``clip(residual / residual_scale, 0, 1)``.

    ``weight = 1`` is the probability alone. ``residual_scale`` must be fixed on normal calibration
    scans (e.g. the residual heatmap's pixel threshold), never per scan, so that scores stay comparable
    between scans; the choice of ``weight`` belongs to a tune split. Arrays ``(n, h, w)``; float32 out.
    """
    p = np.asarray(probability, np.float32)
    r = np.asarray(residual, np.float32)
    if p.shape != r.shape:
        raise ValueError(f"probability {p.shape} and residual {r.shape} differ in shape")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    if not (np.isfinite(residual_scale) and residual_scale > 0):
        raise ValueError(f"residual_scale must be a positive number, got {residual_scale!r}")
    return (weight * p + (1 - weight) * np.clip(r / residual_scale, 0, 1)).astype(np.float32)
