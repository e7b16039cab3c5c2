"""Training machinery of the supervised head: paired augmentation, batches, losses, the fit loop, overlap
metrics, region-mask cleaning and the logistic stacking fusion with the autoencoder.

Everything here is pure numpy/scipy (plus Keras for the loop); inputs are never modified.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops
from scipy import ndimage

from ..errors import ConfigError, NotFittedError

#: Default augmentation of labelled training slices (never applied at validation). ``flip`` is the
#: probability of a left-right flip, ``rotate_deg`` the rotation range in degrees, ``scale`` the
#: isotropic zoom range, ``elastic`` the peak elastic displacement as a fraction of the slice size
#: and ``elastic_sigma`` the smoothness of the displacement field as a fraction of the slice size.
AUGMENT_DEFAULTS = dict(flip=0.5, rotate_deg=10.0, scale=0.1, elastic=0.02, elastic_sigma=0.08)


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    *,
    flip: float = AUGMENT_DEFAULTS["flip"],
    rotate_deg: float = AUGMENT_DEFAULTS["rotate_deg"],
    scale: float = AUGMENT_DEFAULTS["scale"],
    elastic: float = AUGMENT_DEFAULTS["elastic"],
    elastic_sigma: float = AUGMENT_DEFAULTS["elastic_sigma"],
) -> tuple[np.ndarray, np.ndarray | None]:
    """One random flip + rotation + zoom + elastic deformation, applied identically to an image and
    its label mask.

    One sampling grid is built (affine part about the slice centre, plus a smooth random
    displacement field: uniform noise smoothed by a Gaussian and scaled to ``elastic × size`` pixels
    at its peak) and both arrays are resampled on it with
    :func:`scipy.ndimage.map_coordinates`: linear for the image, nearest (``order=0``) for the mask,
    so labels stay labels. Borders are extended with the nearest pixel.

    Parameters
    ----------
    image : np.ndarray
        ``(h, w)`` or ``(h, w, channels)`` float in [0, 1].
    mask : np.ndarray or None
        ``(h, w)`` integer or bool labels, or None (classifier input).
    rng : np.random.Generator

    Returns
    -------
    image, mask
        New arrays of the input shapes and dtypes (``mask`` None when given None).
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    if mask is not None and np.shape(mask) != (h, w):
        raise ValueError(f"mask shape {np.shape(mask)} differs from the image's {(h, w)}")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ang = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
    s = 1.0 + rng.uniform(-scale, scale)
    mat = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / s
    if rng.random() < flip:
        mat = mat @ np.diag([1.0, -1.0])
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64) - cy, np.arange(w, dtype=np.float64) - cx, indexing="ij")
    src_y = mat[0, 0] * yy + mat[0, 1] * xx + cy
    src_x = mat[1, 0] * yy + mat[1, 1] * xx + cx
    if elastic > 0:
        sigma = max(1.0, elastic_sigma * max(h, w))
        for src in (src_y, src_x):
            field = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, (h, w)), sigma, mode="reflect")
            src += field * (elastic * max(h, w) / max(float(np.abs(field).max()), 1e-12))
    coords = np.stack([src_y, src_x])
    if img.ndim == 2:
        out = ndimage.map_coordinates(img, coords, order=1, mode="nearest").astype(img.dtype, copy=False)
    else:
        out = np.empty_like(img)
        for c in range(img.shape[2]):
            out[..., c] = ndimage.map_coordinates(img[..., c], coords, order=1, mode="nearest")
    if mask is None:
        return out, None
    m = np.asarray(mask)
    src_mask = m.astype(np.int32) if m.dtype == bool else m
    out_mask = ndimage.map_coordinates(src_mask, coords, order=0, mode="nearest").astype(m.dtype, copy=False)
    return out, out_mask


def targets_for(y: np.ndarray, kind: str, n_classes: int) -> np.ndarray:
    """Keras training targets from integer labels: ``(n, h, w, 1)`` float32 {0, 1} for a one-class
    U-Net, ``(n, h, w)`` int32 class maps for several classes, ``(n,)`` int32 class ids for the CNN."""
    y = np.asarray(y)
    if kind == "unet" and n_classes == 1:
        return (y > 0).astype(np.float32)[..., None]
    return y.astype(np.int32)


class HeadDataset(keras.utils.PyDataset):
    """Shuffled, augmented batches of ``(x, target)`` from in-memory labelled slices.

    Parameters
    ----------
    x : np.ndarray
        ``(n, size, size, channels)`` float32 in [0, 1].
    y : np.ndarray
        ``(n, size, size)`` int labels (U-Net) or ``(n,)`` class ids (CNN).
    augment : dict or None
        Keyword arguments of :func:`augment_pair`; None turns augmentation off.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, kind: str, n_classes: int,
                 seed: int, augment: dict | None = None, shuffle: bool = True):
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.kind, self.n_classes = kind, int(n_classes)
        self.seed = int(seed)
        self.augment = augment
        self.shuffle = shuffle
        self.epoch = 0
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        n = len(self.x)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self) -> int:
        return int(math.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, idx: int):
        sel = np.sort(self._order[idx * self.batch_size : (idx + 1) * self.batch_size])
        xb = np.array(self.x[sel], dtype=np.float32)
        yb = np.array(self.y[sel])
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, idx, 7])
            dense = self.kind == "unet"
            for i in range(len(sel)):
                xb[i], m = augment_pair(xb[i], yb[i] if dense else None, rng, **self.augment)
                if dense:
                    yb[i] = m
        return xb, targets_for(yb, self.kind, self.n_classes)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._make_order()


def train_model(model: keras.Model, x: np.ndarray, y: np.ndarray, *, kind: str, n_classes: int,
                val: tuple[np.ndarray, np.ndarray] | None, epochs: int, batch_size: int, patience: int,
                seed: int, augment: dict | None, verbose: int = 0) -> dict:
    """Fit a compiled head; early stopping on the validation loss (training loss without ``val``)
    restores the best weights. Returns the history as ``{metric: [float per epoch]}``."""
    ds = HeadDataset(x, y, batch_size, kind=kind, n_classes=n_classes, seed=seed, augment=augment)
    val_data = None
    if val is not None and len(val[0]):
        val_data = (np.asarray(val[0], np.float32), targets_for(val[1], kind, n_classes))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss" if val_data else "loss", patience=int(patience),
                                         restore_best_weights=True)
    hist = model.fit(ds, validation_data=val_data, epochs=int(epochs), verbose=verbose, callbacks=[stop])
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="aeanomaly")
class DiceBCELoss(keras.losses.Loss):
    """One class: binary cross-entropy + (1 − soft Dice) per slice; ``y_pred`` is a sigmoid
    ``(b, h, w, 1)``, ``y_true`` {0, 1} of the same shape."""

    def __init__(self, smooth: float = 1.0, name: str = "dice_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), ops.shape(y_pred))
        p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        bce = -ops.mean(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p), axis=(1, 2, 3))
        inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
        denom = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
        return bce + 1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="aeanomaly")
class CCEDiceLoss(keras.losses.Loss):
    """Several classes: categorical cross-entropy + (1 − mean soft Dice over the organ classes
    ``1..n_classes``) per slice; ``y_pred`` is a softmax ``(b, h, w, n_classes + 1)`` (index 0 =
    background), ``y_true`` integer labels ``(b, h, w)``."""

    def __init__(self, n_classes: int, smooth: float = 1.0, name: str = "cce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:3]), "int32")
        onehot = ops.one_hot(labels, self.n_classes + 1, dtype=y_pred.dtype)
        p = ops.clip(y_pred, 1e-7, 1.0)
        cce = -ops.mean(ops.sum(onehot * ops.log(p), axis=-1), axis=(1, 2))
        inter = ops.sum(onehot * y_pred, axis=(1, 2))
        denom = ops.sum(onehot, axis=(1, 2)) + ops.sum(y_pred, axis=(1, 2))
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        return cce + 1.0 - ops.mean(dice[:, 1:], axis=-1)

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes, "smooth": self.smooth}


# --------------------------------------------------------------------------------------------
# Logistic stacking of the autoencoder p-value and the classifier probability
# --------------------------------------------------------------------------------------------


def fusion_features(p_values: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(n, 2)`` features ``[-log10(p), logit(prob)]`` (p clipped to [1e-12, 1], prob to
    [1e-6, 1 - 1e-6])."""
    p = np.clip(np.asarray(p_values, dtype=float).ravel(), 1e-12, 1.0)
    q = np.clip(np.asarray(probs, dtype=float).ravel(), 1e-6, 1.0 - 1e-6)
    if p.shape != q.shape:
        raise ConfigError(f"{p.size} p-values but {q.size} classifier probabilities")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ConfigError("p-values and probabilities must be finite")
    return np.column_stack([-np.log10(p), np.log(q) - np.log1p(-q)])


class FusionModel:
    """Logistic stacking: P(abnormal) from the autoencoder's scan p-value and the classifier's
    probability, fitted on labelled validation scans (sklearn ``LogisticRegression``).

    Only ``coef_`` (2,) and ``intercept_`` are kept, stored as JSON (:meth:`to_dict`), never pickled.
    """

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, p_values: np.ndarray, probs: np.ndarray, y: np.ndarray) -> "FusionModel":
        """Fit on ``(n,)`` autoencoder p-values, ``(n,)`` classifier probabilities and ``(n,)``
        labels (1 = abnormal); both labels must occur."""
        from sklearn.linear_model import LogisticRegression

        feats = fusion_features(p_values, probs)
        y = np.asarray(y).ravel().astype(int)
        if len(y) != len(feats):
            raise ConfigError(f"{len(y)} labels for {len(feats)} scans")
        if set(np.unique(y)) != {0, 1}:
            raise ConfigError("fusion needs labelled scans of both classes (normal and abnormal)")
        lr = LogisticRegression(C=float(self.C)).fit(feats, y)
        self.coef_ = np.asarray(lr.coef_[0], dtype=float)
        self.intercept_ = float(lr.intercept_[0])
        self.n_fit_ = int(len(y))
        return self

    def _check(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError("this FusionModel is not fitted yet: call fit(p_values, probs, y)")

    def decision_function(self, p_values: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Log-odds of abnormal, ``(n,)`` (higher = more anomalous)."""
        self._check()
        return fusion_features(p_values, probs) @ self.coef_ + self.intercept_

    def predict_proba(self, p_values: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Fused probability of abnormal, ``(n,)`` in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(p_values, probs)))

    def to_dict(self) -> dict:
        self._check()
        return {"method": "logistic_stacking", "features": ["-log10(p_value)", "logit(classifier_prob)"],
                "C": float(self.C), "coef": [float(c) for c in self.coef_], "intercept": self.intercept_,
                "n_fit": self.n_fit_}

    @classmethod
    def from_dict(cls, d: dict) -> "FusionModel":
        try:
            m = cls(C=float(d.get("C", 1.0)))
            m.coef_ = np.asarray(d["coef"], dtype=float).reshape(2)
            m.intercept_ = float(d["intercept"])
            m.n_fit_ = int(d.get("n_fit", 0))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"invalid fusion parameters: {err}") from None
        return m
