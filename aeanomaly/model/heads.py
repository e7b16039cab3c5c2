"""The optional supervised head of a bundle: a U-Net (organ / region segmentation) or a CNN slice
classifier, trained on the same model grid as the autoencoder.

* ``kind="unet"`` — restricts the autoencoder's residuals to the predicted organ region
  (:meth:`SupervisedHead.region_mask`) and names the organ a lesion lies in
  (:meth:`SupervisedHead.organ_at`).
* ``kind="cnn"`` — a normal-vs-abnormal (or several classes) slice classifier whose probability is
  fused with the autoencoder p-value (:class:`FusionModel`).

Stored in the bundle as ``head.keras`` (loaded with ``safe_mode=True``) and ``head.json``.
"""

from __future__ import annotations

import datetime as _dt
import math

import keras
import numpy as np
from keras import layers

from .. import __version__
from ..errors import ConfigError, NotFittedError
from ..masks import clean_region_mask
from .layers import conv_block
from .head_train import (  # noqa: F401  (re-exported: the public API of the head lives here)
    AUGMENT_DEFAULTS, CCEDiceLoss, DiceBCELoss, FusionModel, augment_pair,
    train_model,
)

HEAD_FORMAT_VERSION = 1
HEAD_FILES = ("head.keras", "head.json")


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _check_input(size: int, channels: int, depth: int) -> None:
    if not 32 <= size <= 512:
        raise ConfigError(f"size must be within 32–512 pixels, got {size}")
    if depth < 1 or size % (2**depth):
        raise ConfigError(f"size {size} must be divisible by 2**depth = {2 ** max(depth, 0)}")
    if channels < 1 or channels % 2 == 0:
        raise ConfigError(f"channels must be an odd number ≥ 1, got {channels}")


def build_unet(size: int, channels: int = 1, n_classes: int = 1, depth: int = 3, base_filters: int = 16,
               norm: str = "group", learning_rate: float = 1e-3, jit_compile: bool | str = "auto") -> keras.Model:
    """A compiled 2-D U-Net (Adam).

    Parameters
    ----------
    size : int
        Input height = width in pixels (32–512), divisible by ``2**depth``.
    channels : int
        Input channels (1, or an odd k for 2.5-D input, as the autoencoder's).
    n_classes : int
        Organ classes. 1: sigmoid output ``(b, size, size, 1)``, loss Dice + BCE. More: softmax over
        ``n_classes + 1`` channels (0 = background), loss categorical CE + mean per-class soft Dice.
    depth : int
        Number of 2× poolings; filters double per level from ``base_filters``.
    jit_compile : bool or "auto"
        XLA compilation of the train step (Keras' ``compile`` argument): faster epochs, slower start.

    Returns
    -------
    keras.Model
        ``(b, size, size, channels)`` → probabilities as above.
    """
    _check_input(size, channels, depth)
    if n_classes < 1:
        raise ConfigError(f"a U-Net needs at least 1 class, got {n_classes}")
    inp = keras.Input((size, size, channels), name="slices")
    x = conv_block(inp, base_filters, norm, "enc0", activation="relu")
    skips = [x]
    for i in range(1, depth + 1):
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = conv_block(x, base_filters * 2**i, norm, f"enc{i}" if i < depth else "bottleneck", activation="relu")
        skips.append(x)
    for i in reversed(range(depth)):
        f = base_filters * 2**i
        x = layers.Conv2DTranspose(f, 2, strides=2, name=f"up{i}")(x)
        x = layers.Concatenate(name=f"skip{i}")([x, skips[i]])
        x = conv_block(x, f, norm, f"dec{i}", activation="relu")
    if n_classes == 1:
        out = layers.Conv2D(1, 1, activation="sigmoid", name="region")(x)
        loss = DiceBCELoss()
    else:
        out = layers.Conv2D(n_classes + 1, 1, activation="softmax", name="labels")(x)
        loss = CCEDiceLoss(n_classes)
    model = keras.Model(inp, out, name="aeanomaly_unet")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, jit_compile=jit_compile)
    return model


def build_cnn_classifier(size: int, channels: int = 1, n_classes: int = 2, depth: int = 4, base_filters: int = 16,
                         norm: str = "group", dropout: float = 0.3, learning_rate: float = 1e-3,
                         jit_compile: bool | str = "auto") -> keras.Model:
    """A compiled slice classifier: ``depth`` conv blocks with 2× pooling, global average pooling,
    dropout and a softmax over ``n_classes`` (sparse categorical cross-entropy, Adam, accuracy).

    Returns
    -------
    keras.Model
        ``(b, size, size, channels)`` → ``(b, n_classes)`` probabilities.
    """
    _check_input(size, channels, depth)
    if n_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {n_classes}")
    inp = keras.Input((size, size, channels), name="slices")
    x = inp
    for i in range(depth):
        x = conv_block(x, base_filters * 2**i, norm, f"conv{i}", activation="relu")
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(n_classes, activation="softmax", name="classes")(x)
    model = keras.Model(inp, out, name="aeanomaly_cnn")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=jit_compile)
    return model


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------

_KINDS = ("unet", "cnn")


class SupervisedHead:
    """U-Net or CNN head on the autoencoder's model grid, sklearn-style.

    Parameters
    ----------
    kind : {"unet", "cnn"}
    classes : sequence of str, optional
        U-Net: organ names; label ``k`` in the masks is ``classes[k - 1]`` (0 = background); default
        ``("region",)``. CNN: class names, the normal class named ``"normal"`` (else the first);
        default ``("normal", "abnormal")``.
    size, channels, window
        The autoencoder's input spec (model grid in pixels, slices per input, window spec).
    label_values : sequence, optional
        Per class, the value (or list of values) it had in the source label maps (recorded in head.json).
    flip : float, optional
        Probability of a left-right flip in augmentation; default 0.5, but 0 for a U-Net with several
        organs (flips swap left and right organs, e.g. liver and spleen).
    augment : bool
        Rotation, flip, zoom and elastic deformation of training slices (never at validation).
    jit_compile : bool or "auto"
        XLA compilation of the train step: faster epochs after a slower start (False for tiny runs).
    """

    def __init__(self, kind: str = "unet", classes=None, size: int = 128, channels: int = 1, window: str = "lung",
                 label_values=None, depth: int | None = None, base_filters: int = 16, norm: str = "group",
                 epochs: int = 30, batch_size: int = 16, learning_rate: float = 1e-3, patience: int = 8,
                 augment: bool = True, flip: float | None = None, jit_compile: bool | str = "auto", seed: int = 0,
                 verbose: int = 0):
        params = dict(locals())
        params.pop("self")
        for k, v in params.items():
            setattr(self, k, v)

    def get_params(self) -> dict:
        """Constructor parameters (JSON-serialisable)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return _finite({n: getattr(self, n) for n in names})

    # -- derived settings ------------------------------------------------------------------------
    @property
    def classes_(self) -> tuple[str, ...]:
        """Class names (defaults resolved)."""
        if self.kind not in _KINDS:
            raise ConfigError(f"kind must be 'unet' or 'cnn', got {self.kind!r}")
        if self.classes is None:
            return ("region",) if self.kind == "unet" else ("normal", "abnormal")
        names = tuple(str(c) for c in self.classes)
        if not names or len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"classes must be distinct non-empty names, got {list(names)}")
        if self.kind == "cnn" and len(names) < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {list(names)}")
        return names

    @property
    def normal_index_(self) -> int:
        """Index of the normal class of a CNN head."""
        names = self.classes_
        return names.index("normal") if "normal" in names else 0

    def _augment_params(self) -> dict | None:
        if not self.augment:
            return None
        flip = self.flip if self.flip is not None else (0.0 if self.kind == "unet" and len(self.classes_) > 1 else 0.5)
        return {**AUGMENT_DEFAULTS, "flip": float(flip)}

    def build_model(self) -> keras.Model:
        """The untrained Keras model these settings describe (compiled)."""
        common = dict(size=self.size, channels=self.channels, base_filters=self.base_filters, norm=self.norm,
                      learning_rate=self.learning_rate, jit_compile=self.jit_compile)
        if self.kind == "unet":
            return build_unet(n_classes=len(self.classes_), depth=self.depth or 3, **common)
        return build_cnn_classifier(n_classes=len(self.classes_), depth=self.depth or 4, **common)

    # -- fit -------------------------------------------------------------------------------------
    def _check_xy(self, x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if x.ndim != 4 or x.shape[1:] != (self.size, self.size, self.channels):
            raise ConfigError(f"{what} x must be (n, {self.size}, {self.size}, {self.channels}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ConfigError(f"{what} x holds NaN or infinite values")
        want = x.shape[:3] if self.kind == "unet" else x.shape[:1]
        if y.shape != want:
            raise ConfigError(f"{what} y must have shape {want} for a {self.kind} head, got {y.shape}")
        hi = len(self.classes_) if self.kind == "unet" else len(self.classes_) - 1
        if y.size and (y.min() < 0 or y.max() > hi or not np.issubdtype(y.dtype, np.integer)):
            raise ConfigError(f"{what} y must hold integer labels in 0..{hi} for classes {list(self.classes_)}")
        return x, y

    def fit(self, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None = None) -> "SupervisedHead":
        """Train the head.

        Parameters
        ----------
        x : np.ndarray
            ``(n, size, size, channels)`` float32 slices in [0, 1] (from ``AnomalyDetector.prepare``).
        y : np.ndarray
            U-Net: ``(n, size, size)`` int labels 0..len(classes); CNN: ``(n,)`` int class ids.
        val : (x, y), optional
            Held-out slices (of other scans) for early stopping and the reported metrics.
        """
        self.classes_  # validates kind and classes first
        x, y = self._check_xy(x, y, "training")
        if len(x) == 0:
            raise ConfigError("no training slices")
        if val is not None:
            val = self._check_xy(*val, "validation")
        keras.utils.set_random_seed(int(self.seed))
        model = self.build_model()
        self.history_ = train_model(
            model, x, y, kind=self.kind, n_classes=len(self.classes_), val=val, epochs=self.epochs,
            batch_size=self.batch_size, patience=self.patience, seed=self.seed, augment=self._augment_params(),
            verbose=self.verbose,
        )
        self.model_ = model
        self.n_train_ = int(len(x))
        self.n_val_ = int(len(val[0])) if val is not None else 0
        self.val_dice_, self.val_iou_, self.val_accuracy_ = {}, {}, None
        if val is not None and len(val[0]):
            self.val_dice_, self.val_iou_, self.val_accuracy_ = self._val_metrics(*val)
        return self

    def _val_metrics(self, x, y):
        if self.kind == "unet":
            from ..evaluate import dice_iou

            dice, iou = dice_iou(self.predict_labels(x), y, len(self.classes_))
            fin = lambda v: None if not np.isfinite(v) else float(v)  # noqa: E731
            return ({c: fin(d) for c, d in zip(self.classes_, dice)},
                    {c: fin(i) for c, i in zip(self.classes_, iou)}, None)
        pred = np.argmax(self.predict_proba(x), axis=1)
        return {}, {}, float(np.mean(pred == y))

    # -- inference -------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this SupervisedHead is not fitted yet: call fit(x, y) or load_head(bundle)")

    def _require(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise ConfigError(f"{what} needs a {kind} head; this head is a {self.kind}")

    def predict_proba(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities: U-Net ``(n, size, size, len(classes) + 1)`` (0 = background);
        CNN ``(n, len(classes))``."""
        self._check_fitted()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (self.size, self.size, self.channels):
            raise ConfigError(f"x must be (n, {self.size}, {self.size}, {self.channels}), got {x.shape}")
        if len(x) == 0:
            n_out = len(self.classes_) + (1 if self.kind == "unet" else 0)
            return np.zeros((0, *x.shape[1:3], n_out) if self.kind == "unet" else (0, n_out), np.float32)
        out = np.asarray(self.model_.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)
        if self.kind == "unet" and out.shape[-1] == 1:
            out = np.concatenate([1.0 - out, out], axis=-1)
        return out

    def predict_labels(self, x: np.ndarray) -> np.ndarray:
        """U-Net: ``(n, size, size)`` int labels, 0 = background, ``k`` = ``classes[k - 1]``."""
        self._require("unet", "predict_labels")
        return np.argmax(self.predict_proba(x), axis=-1).astype(np.int16)

    def region_mask(self, x: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
        """U-Net: bool ``(n, size, size)``, the union of all organ classes, cleaned per slice (only
        components larger than ``min_fraction`` of the slice, holes filled). This is the region the
        autoencoder's residuals are restricted to."""
        return clean_region_mask(self.predict_labels(x) > 0, min_fraction)

    def organ_at(self, labels: np.ndarray, zyx) -> str:
        """Name of the class at voxel ``zyx`` (rounded) of a ``(z, y, x)`` label map from
        :meth:`predict_labels`; ``"background"`` for 0."""
        lab = np.asarray(labels)
        idx = tuple(int(round(float(v))) for v in zyx)
        if len(idx) != lab.ndim or any(not 0 <= i < s for i, s in zip(idx, lab.shape)):
            raise ConfigError(f"position {tuple(zyx)} is outside the label map of shape {lab.shape}")
        return self._name(int(lab[idx]))

    def organ_of(self, labels: np.ndarray, mask: np.ndarray) -> str:
        """Name of the most frequent class under a bool ``mask`` (a lesion) of the label map's shape."""
        lab, m = np.asarray(labels), np.asarray(mask, dtype=bool)
        if lab.shape != m.shape:
            raise ConfigError(f"mask shape {m.shape} differs from the label map's {lab.shape}")
        if not m.any():
            return "background"
        return self._name(int(np.argmax(np.bincount(lab[m].astype(np.int64).ravel()))))

    def _name(self, k: int) -> str:
        names = self.classes_
        return "background" if k == 0 else (names[k - 1] if k <= len(names) else f"label{k}")

    def abnormal_proba(self, x: np.ndarray) -> np.ndarray:
        """CNN: ``(n,)`` probability that each slice belongs to any non-normal class."""
        self._require("cnn", "abnormal_proba")
        return 1.0 - self.predict_proba(x)[:, self.normal_index_]

    def scan_abnormal_proba(self, x: np.ndarray, keep: np.ndarray | None = None) -> float:
        """CNN: probability that a scan is abnormal, the maximum of :meth:`abnormal_proba` over its
        slices ``x`` (``(z, size, size, channels)``) where ``keep`` (``(z,)`` bool) is True; NaN if none."""
        x = np.asarray(x)
        if keep is not None:
            x = x[np.asarray(keep, dtype=bool)]
        return float(np.max(self.abnormal_proba(x))) if len(x) else math.nan

    # -- fusion with the autoencoder -------------------------------------------------------------
    def fit_fusion(self, p_values, probs, y) -> "SupervisedHead":
        """Fit the logistic stacking of autoencoder scan p-values and :meth:`scan_abnormal_proba`
        on labelled scans (``y`` 1 = abnormal); stored in head.json."""
        self._require("cnn", "fusion")
        self.fusion_ = FusionModel().fit(p_values, probs, y)
        return self

    def fused_proba(self, p_values, probs) -> np.ndarray:
        """Fused probability of abnormal, ``(n,)``; NotFittedError without a fitted fusion."""
        if getattr(self, "fusion_", None) is None:
            raise NotFittedError("this head has no fitted fusion: fit-head --kind cnn with labelled validation scans")
        return self.fusion_.predict_proba(p_values, probs)

    # -- persistence -----------------------------------------------------------------------------
    def metrics(self) -> dict:
        """Held-out metrics of the fit (what head.json records)."""
        self._check_fitted()
        out = {"n_train_slices": getattr(self, "n_train_", None), "n_val_slices": getattr(self, "n_val_", None)}
        if self.kind == "unet":
            out.update(val_dice=getattr(self, "val_dice_", {}), val_iou=getattr(self, "val_iou_", {}))
        else:
            out.update(val_accuracy=getattr(self, "val_accuracy_", None))
        return out

    def to_dict(self) -> dict:
        """The content of head.json (JSON-safe: non-finite floats are None)."""
        fusion = getattr(self, "fusion_", None)
        return _finite({
            "format_version": HEAD_FORMAT_VERSION, "aeanomaly_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "kind": self.kind, "classes": list(self.classes_),
            "label_values": _finite(self.label_values),
            "size": int(self.size), "channels": int(self.channels), "window": str(self.window),
            "params": self.get_params(), "metrics": self.metrics(), "history": getattr(self, "history_", {}),
            "fusion": None if fusion is None else fusion.to_dict(), "training_data": getattr(self, "train_info_", {}),
        })

    @classmethod
    def from_dict(cls, info: dict, model) -> "SupervisedHead":
        """A fitted head from the content of head.json (:meth:`to_dict`) and its Keras ``model``.

        Raises ConfigError when the parameters are invalid or the model's input does not match them.
        """
        if info.get("format_version") != HEAD_FORMAT_VERSION:
            raise ConfigError(f"unknown head format_version {info.get('format_version')!r} (this aeanomaly "
                              f"{__version__} reads version {HEAD_FORMAT_VERSION})")
        try:
            head = cls(**info["params"])
            head.classes_
        except (KeyError, TypeError) as err:
            raise ConfigError(f"head.json has invalid parameters: {err}") from None
        if tuple(model.input_shape[1:]) != (head.size, head.size, head.channels):
            raise ConfigError(f"head.keras expects input {model.input_shape[1:]}, head.json says "
                              f"({head.size}, {head.size}, {head.channels})")
        head.model_ = model
        m = info.get("metrics") or {}
        head.history_ = info.get("history") or {}
        head.n_train_, head.n_val_ = m.get("n_train_slices"), m.get("n_val_slices")
        head.val_dice_, head.val_iou_ = m.get("val_dice") or {}, m.get("val_iou") or {}
        head.val_accuracy_ = m.get("val_accuracy")
        head.train_info_ = info.get("training_data") or {}
        if info.get("fusion"):
            head.fusion_ = FusionModel.from_dict(info["fusion"])
        return head


def _finite(o):
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [_finite(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
