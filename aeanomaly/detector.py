"""AnomalyDetector: a thin sklearn-style composition of the stages, shared by the CLI, notebooks and
benchmarks.

>>> det = AnomalyDetector(window="lung", size=128, epochs=20).fit(normal_paths)   # doctest: +SKIP
>>> result = det.score_scan("new_scan.nii.gz")                                    # doctest: +SKIP
>>> result.label, result.p_value, result.lesions                                  # doctest: +SKIP
>>> det.save("bundle/")                                                           # doctest: +SKIP

The flow of one scan: :func:`aeanomaly.io.load_scan` → :func:`aeanomaly.preprocess.prepare_volume`
→ the autoencoder (:meth:`AnomalyDetector.reconstruct`) → :func:`aeanomaly.masks.scoring_region` →
:func:`aeanomaly.scoring.analyse` → :class:`aeanomaly.calibrate.Calibration` (p-values, labels) →
:func:`aeanomaly.localize.find_lesions` → :func:`aeanomaly.hybrid.head_outputs`.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from . import bundle as _bundle
from .calibrate import (CHOICES as CALIB_METHODS, PRECISIONS, Calibration, benjamini_hochberg, check_residual_scale,
                        pixel_threshold)
from .config import BFLOAT16_HARDWARE, FIT_DEFAULTS, TRAIN_DEFAULTS, TrainConfig
from .errors import AeAnomalyError, ConfigError, NotFittedError
from .fitting import build_store, normal_stats
from .hybrid import head_outputs, organ_label_map
from .io import Scan, load_scan
from .io.writers import int16_quantiser
from .localize import Lesion, find_lesions
from .masks import LUNG_THRESHOLD_HU, resolved_roi, scoring_region
from .preprocess import (GridSpec, HUWindow, PreparedScan, from_model_grid, from_model_grid_each,
                         model_to_input_yx, prepare_volume)
from .scoring import Analysis, ScoringParams, analyse, resolved_sign, scan_score, slice_scores
from .splits import split_scans

#: Scoring parameters and their defaults (the benchmarks choose them; see README "Benchmarks").
SCORING_DEFAULTS = ScoringParams().to_dict()
#: What the heatmap is: the autoencoder's residual, or a self-supervised segmenter's anomaly probability.
MODEL_KINDS = ("dae", "dae+seg")
#: At most this many normal training slices train the dae+seg segmenter (memory stays bounded).
SEG_MAX_SLICES = 4000
#: Radii of the synthetic anomalies as fractions of the grid (the real-CT benchmark's setting).
SEG_RADIUS_FRACTION = (0.008, 0.06)
#: The smallest residual scale of a fused heatmap (normals whose residual heatmap is zero almost everywhere).
MIN_RESIDUAL_SCALE = 1e-6
#: Pixels per inference batch when none is given: the network's activations (which TensorFlow's
#: allocator keeps) grow with the batch, its speed on the CPU does not beyond about 1 M pixels
#: (at 256 px: 36 slices/s at a batch of 16 as at 32, with 340 MiB less peak memory).
INFER_BATCH_PIXELS = 16 * 256 * 256
#: What :meth:`AnomalyDetector.iter_scores` reports per scan instead of raising: an unreadable or
#: invalid scan (every error of this package), a file that vanished or cannot be read, too little memory.
SCAN_ERRORS: tuple[type[BaseException], ...] = (AeAnomalyError, OSError, MemoryError)


def heatmap_to_input_grid(heatmap: np.ndarray, grid: GridSpec, slope: float | None = None) -> np.ndarray:
    """A model-grid heatmap ``(z, size, size)`` resampled to the input slice grid of ``grid``: float32, or
    with ``slope`` the int16 counts ``round(v / slope)`` that ``score`` writes
    (:func:`aeanomaly.io.writers.int16_quantiser`), each slice quantised as soon as it is resampled,
    without a float32 slab (:func:`aeanomaly.preprocess.from_model_grid_each`)."""
    each = None if slope is None else int16_quantiser(slope)
    return from_model_grid_each(heatmap, grid, each=each, dtype=np.float32 if slope is None else np.int16)


@dataclass
class ScanResult:
    """What scoring one scan gives.

    Arrays are on the model grid ``(z, size, size)`` unless said otherwise; use
    :meth:`heatmap_in_input_grid` for the input's slice grid. ``note`` says why a scan was scored in
    another region than asked for, or why it could not be scored (then ``label`` is ``normal`` and
    ``scan_score`` / ``p_value`` are NaN).
    """

    source: str
    n_slices: int
    scan_score: float
    p_value: float
    label: str
    top_slice: int
    slice_scores: np.ndarray
    slice_p_values: np.ndarray
    slice_labels: np.ndarray
    lesions: list[Lesion]
    heatmap: np.ndarray
    lesion_labels: np.ndarray
    image: np.ndarray = field(repr=False)
    reconstruction: np.ndarray = field(repr=False)
    prepared: PreparedScan = field(repr=False)
    scan: Scan | None = field(default=None, repr=False)
    #: CNN head: scan probability of abnormal (max over slices) and the fused probability (None
    #: without a fitted fusion); ``(z,)`` per-slice probabilities (NaN where not scored). None without.
    head_proba: float | None = None
    fused_proba: float | None = None
    slice_head_proba: np.ndarray | None = field(default=None, repr=False)
    #: U-Net head: int16 ``(z, size, size)`` organ labels (0 outside the organ region). None without.
    organ_labels: np.ndarray | None = field(default=None, repr=False)
    note: str = ""

    def heatmap_in_input_grid(self, lo: int = 0, hi: int | None = None, slope: float | None = None) -> np.ndarray:
        """Heatmap ``(z, y, x)`` resampled to the input's internal slice grid (float32); slices
        ``lo:hi`` only when given (what a streamed heatmap write asks for). With ``slope``, int16 counts
        ``round(v / slope)`` instead (:func:`aeanomaly.io.writers.int16_quantiser`: what ``score``
        writes), each slice quantised as soon as it is resampled, without the float32 slab."""
        return heatmap_to_input_grid(self.heatmap[lo:hi], self.prepared.grid, slope)

    def lesion_labels_in_input_grid(self) -> np.ndarray:
        """Lesion label volume ``(z, y, x)`` on the input grid (nearest label by majority)."""
        g = self.prepared.grid
        out = np.zeros(self.scan.hu.shape if self.scan is not None else (self.n_slices, g.ny, g.nx), np.int32)
        best = np.zeros(out.shape, np.float32)
        for lab in np.unique(self.lesion_labels[self.lesion_labels > 0]):
            frac = from_model_grid((self.lesion_labels == lab).astype(np.float32), g)
            sel = (frac >= 0.5) & (frac > best)
            out[sel], best[sel] = lab, frac[sel]
        return out


class AnomalyDetector:
    """Autoencoder anomaly detector for CT, with sklearn conventions: the constructor stores the
    parameters, :meth:`fit` validates them and returns self, fitted attributes end in ``_`` and exist
    only after :meth:`fit` or :meth:`load`.

    Parameters
    ----------
    window : str
        HU window preset (``lung``, ``abdomen``, ``liver``, ``mediastinum``, ``bone``) or ``"W,L"``.
    size, channels, depth, base_filters, latent, latent_dim, skip, norm, loss, noise_std,
    noise_resolution, epochs, batch_size, learning_rate, patience, seed
        Model and training (see :class:`aeanomaly.config.TrainConfig`). ``noise_std > 0`` trains a
        coarse-noise denoising autoencoder; ``skip=False, noise_std=0`` is the classic bottleneck AE.
    augment : bool or dict
        Augmentation of the normal training slices (never at validation): True for the defaults of
        :class:`aeanomaly.model.data.Augment`, False for none, or a dict overriding some of them, e.g.
        ``{"flip": 0.0, "rotate_deg": 15}``.
    val_fraction, calib_fraction : float
        Fractions of the normal scans (or patients) held out for validation and calibration.
    target_fpr : float
        Scan-level false-positive rate the threshold is calibrated for.
    calib_method : str
        ``auto`` (split-conformal when there are enough calibration scans for ``target_fpr``, else a
        gamma fit, with a warning), ``empirical``, ``gamma``, ``lognormal`` or ``kde``.
    precision : {"auto", "float32", "bfloat16"}
        Arithmetic of inference (calibration and scoring; training is always float32). ``auto``:
        :meth:`fit` calibrates in bfloat16 where the machine computes it natively
        (:func:`aeanomaly.model.autoencoder.native_bfloat16`) and in float32 elsewhere; ``precision_``
        says which. Calibrate in the precision you score in (``aeanomaly calibrate --precision``).
    roi, slice_score, scan_aggregation, residual_sign, sigma_mm, sigma_z_mm, blob_gate, blob_gate_3d, erode_mm,
    opening_mm, pixel_quantile, min_lesion_mm2, min_lesion_mm3, min_body_fraction, slice_fdr, slice_norm, seg_weight
        Scoring and localisation: see :class:`aeanomaly.scoring.ScoringParams`.
    model_kind : {"dae", "dae+seg"}
        ``dae``: the heatmap is the smoothed reconstruction residual. ``dae+seg`` (self-supervised, DRAEM
        style; :mod:`aeanomaly.model.selfsup`): after the autoencoder, a small U-Net that sees each slice
        and its reconstruction is trained on normal slices with synthetic anomalies (blended patches of
        other normal slices, intensity and texture changes, foreign-patch interpolation, smooth blobs)
        to segment them; the heatmap is its per-pixel anomaly probability, or with ``seg_weight`` < 1 that
        probability fused with the residual heatmap.
    seg_epochs, seg_filters
        Training epochs and base filters of that segmentation network.

    Fitted attributes
    -----------------
    model_, window_, calibration_ (and its views calibrator_, slice_calibrator_, pixel_threshold_,
    normal_peaks_, target_fpr_, precision_, calibration_sources_, calibration_log_), head_, history_,
    train_state_, split_, skipped_; bundle_path_ after :meth:`load`.
    """

    def __init__(
        self, window: str = FIT_DEFAULTS["window"], size: int = TRAIN_DEFAULTS["size"],
        channels: int = TRAIN_DEFAULTS["channels"], depth: int = TRAIN_DEFAULTS["depth"],
        base_filters: int = TRAIN_DEFAULTS["base_filters"], latent: str = TRAIN_DEFAULTS["latent"],
        latent_dim: int = TRAIN_DEFAULTS["latent_dim"], skip: bool = TRAIN_DEFAULTS["skip"],
        norm: str = TRAIN_DEFAULTS["norm"], loss: str = TRAIN_DEFAULTS["loss"],
        noise_std: float = TRAIN_DEFAULTS["noise_std"], noise_resolution: int = TRAIN_DEFAULTS["noise_resolution"],
        epochs: int = TRAIN_DEFAULTS["epochs"], batch_size: int = TRAIN_DEFAULTS["batch_size"],
        learning_rate: float = TRAIN_DEFAULTS["learning_rate"], patience: int = TRAIN_DEFAULTS["patience"],
        augment: bool | dict = TRAIN_DEFAULTS["augment"], seed: int = TRAIN_DEFAULTS["seed"],
        val_fraction: float = FIT_DEFAULTS["val_fraction"], calib_fraction: float = FIT_DEFAULTS["calib_fraction"],
        target_fpr: float = FIT_DEFAULTS["target_fpr"], calib_method: str = FIT_DEFAULTS["calib_method"],
        precision: str = FIT_DEFAULTS["precision"], roi: str = SCORING_DEFAULTS["roi"],
        slice_score: str = SCORING_DEFAULTS["slice_score"], scan_aggregation: str = SCORING_DEFAULTS["scan_aggregation"],
        residual_sign: str = SCORING_DEFAULTS["residual_sign"], sigma_mm: float = SCORING_DEFAULTS["sigma_mm"],
        sigma_z_mm: float = SCORING_DEFAULTS["sigma_z_mm"], blob_gate: float = SCORING_DEFAULTS["blob_gate"],
        blob_gate_3d: float = SCORING_DEFAULTS["blob_gate_3d"],
        erode_mm: float = SCORING_DEFAULTS["erode_mm"], opening_mm: float = SCORING_DEFAULTS["opening_mm"],
        pixel_quantile: float = SCORING_DEFAULTS["pixel_quantile"],
        min_lesion_mm2: float = SCORING_DEFAULTS["min_lesion_mm2"],
        min_lesion_mm3: float | None = SCORING_DEFAULTS["min_lesion_mm3"],
        min_body_fraction: float = SCORING_DEFAULTS["min_body_fraction"],
        slice_fdr: float | None = SCORING_DEFAULTS["slice_fdr"], slice_norm: str = SCORING_DEFAULTS["slice_norm"],
        seg_weight: float = SCORING_DEFAULTS["seg_weight"],
        model_kind: str = FIT_DEFAULTS["model_kind"], seg_epochs: int = FIT_DEFAULTS["seg_epochs"],
        seg_filters: int = FIT_DEFAULTS["seg_filters"],
    ):
        self.window = window
        self.size = size
        self.channels = channels
        self.depth = depth
        self.base_filters = base_filters
        self.latent = latent
        self.latent_dim = latent_dim
        self.skip = skip
        self.norm = norm
        self.loss = loss
        self.noise_std = noise_std
        self.noise_resolution = noise_resolution
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.augment = augment
        self.seed = seed
        self.val_fraction = val_fraction
        self.calib_fraction = calib_fraction
        self.target_fpr = target_fpr
        self.calib_method = calib_method
        self.precision = precision
        self.roi = roi
        self.slice_score = slice_score
        self.scan_aggregation = scan_aggregation
        self.residual_sign = residual_sign
        self.sigma_mm = sigma_mm
        self.sigma_z_mm = sigma_z_mm
        self.blob_gate = blob_gate
        self.blob_gate_3d = blob_gate_3d
        self.erode_mm = erode_mm
        self.opening_mm = opening_mm
        self.pixel_quantile = pixel_quantile
        self.min_lesion_mm2 = min_lesion_mm2
        self.min_lesion_mm3 = min_lesion_mm3
        self.min_body_fraction = min_body_fraction
        self.slice_fdr = slice_fdr
        self.slice_norm = slice_norm
        self.seg_weight = seg_weight
        self.model_kind = model_kind
        self.seg_epochs = seg_epochs
        self.seg_filters = seg_filters

    # -- sklearn-style parameter access ---------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the constructor parameters."""
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = False) -> dict:
        """Constructor parameters (JSON-serialisable)."""
        return {n: getattr(self, n) for n in self.param_names()}

    def set_params(self, **params) -> "AnomalyDetector":
        """Set constructor parameters (scoring parameters take effect at the next scoring call)."""
        valid = self.param_names()
        for k, v in params.items():
            if k not in valid:
                raise ConfigError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def scoring_params(self) -> ScoringParams:
        """The scoring parameters as one validated :class:`~aeanomaly.scoring.ScoringParams`."""
        return ScoringParams(**{n: getattr(self, n) for n in ScoringParams.names()}).validated()

    def train_config(self):
        """The training settings as a validated :class:`aeanomaly.config.TrainConfig`."""
        from .model.data import Augment

        names = set(TrainConfig.__dataclass_fields__) - {"augment_params", "augment"}
        aug = self.augment
        params = asdict(Augment())
        if isinstance(aug, dict):
            unknown = sorted(set(aug) - {f.name for f in fields(Augment)})
            if unknown:
                raise ConfigError(f"unknown augmentation setting(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(f.name for f in fields(Augment))}")
            params.update({k: float(v) for k, v in aug.items()})
        elif not isinstance(aug, (bool, np.bool_)):
            raise ConfigError(f"augment must be True, False or a dict of Augment settings, got {aug!r}")
        return TrainConfig(**{n: getattr(self, n) for n in names if hasattr(self, n)},
                           augment=bool(aug) if not isinstance(aug, dict) else True, augment_params=params)

    def _validate_params(self) -> HUWindow:
        """Check every parameter before any work; returns the parsed window."""
        window = HUWindow.parse(self.window)
        for name in ("size", "channels", "depth", "base_filters", "latent_dim", "epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.channels % 2 == 0:
            raise ConfigError(f"channels must be odd (the centre slice is scored), got {self.channels}")
        for name in ("val_fraction", "calib_fraction"):
            v = getattr(self, name)
            if not 0.0 <= float(v) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {v!r}")
        if not 0.0 < float(self.target_fpr) < 1.0:
            raise ConfigError(f"target_fpr must be in (0, 1), got {self.target_fpr!r}")
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(f"calib_method must be one of {', '.join(CALIB_METHODS)}, got {self.calib_method!r}")
        if self.precision not in ("auto", *PRECISIONS):
            raise ConfigError(f"precision must be one of auto, {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.model_kind not in MODEL_KINDS:
            raise ConfigError(f"model_kind must be one of {', '.join(MODEL_KINDS)}, got {self.model_kind!r}")
        for name in ("seg_epochs", "seg_filters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        self.scoring_params()
        self.train_config()
        return window

    # -- fitted state ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_") or not hasattr(self, "calibration_"):
            raise NotFittedError("this AnomalyDetector is not fitted yet: call fit(paths) or AnomalyDetector.load(bundle)")

    @property
    def calibrator_(self):
        """Scan-level :class:`~aeanomaly.calibrate.Calibrator` in force."""
        return self.calibration_.scan

    @property
    def slice_calibrator_(self):
        """Slice-level :class:`~aeanomaly.calibrate.Calibrator` in force."""
        return self.calibration_.slice

    @property
    def pixel_threshold_(self) -> float:
        """Heatmap value above which a pixel belongs to a lesion candidate."""
        return self.calibration_.pixel_threshold

    @property
    def normal_peaks_(self) -> np.ndarray:
        """Per-slice heatmap maxima of the normal calibration slices (lesion severity reference)."""
        return self.calibration_.normal_peaks

    @property
    def target_fpr_(self) -> float:
        """The scan-level target FPR of the operating point in force."""
        return self.calibration_.target_fpr

    @property
    def precision_(self) -> str:
        """The inference arithmetic the calibration was computed in (and scoring uses)."""
        return self.calibration_.precision

    @property
    def calibration_sources_(self) -> list[str]:
        return self.calibration_.sources

    @property
    def calibration_log_(self) -> list[dict]:
        return self.calibration_.log

    # -- preprocessing and inference ------------------------------------------------------------
    def prepare(self, scan: Scan) -> PreparedScan:
        """The scan on the model grid (window, body mask, resize)."""
        return prepare_volume(
            scan.hu, scan.spacing, scan.affine, is_hu=scan.is_hu, window=HUWindow.parse(self.window), size=self.size,
            channels=self.channels, min_body_fraction=self.min_body_fraction,
        )

    def reconstruct(self, x: np.ndarray, batch_size: int | None = None, precision: str | None = None) -> np.ndarray:
        """Reconstruct ``(n, size, size, channels)`` slices in [0, 1]; returns ``(n, size, size)``.

        ``precision`` defaults to the calibrated one (``precision_``); ``batch_size`` to
        :data:`INFER_BATCH_PIXELS` pixels per batch (32 slices at 128 px, 16 at 256 px, 4 at 512 px).
        """
        if not hasattr(self, "model_"):
            raise NotFittedError("this AnomalyDetector is not fitted yet: call fit(paths) or AnomalyDetector.load(bundle)")
        fn = self._inference_function(self._runnable_precision(precision or self.precision_))
        bs = int(batch_size or max(1, min(32, INFER_BATCH_PIXELS // (int(self.size) ** 2))))
        out = np.empty(x.shape[:3], dtype=np.float32)
        for i in range(0, len(x), bs):
            out[i : i + bs] = np.asarray(fn(np.ascontiguousarray(x[i : i + bs], dtype=np.float32)))[..., 0]
        return out

    def _runnable_precision(self, precision: str) -> str:
        """``precision``, or float32 (with a warning, once per detector) where it is bfloat16 and this
        machine has no native bfloat16 (:func:`aeanomaly.model.autoencoder.native_bfloat16`): there it
        would run at 0.4× the float32 speed or not at all. Scores then differ from a bfloat16
        calibration's by about what ``benchmarks/precision.py`` measures (slice scores ≤ 0.002)."""
        if precision != "bfloat16":
            return precision
        from .model.autoencoder import native_bfloat16

        if native_bfloat16() is not False:
            return precision
        if not getattr(self, "_warned_bfloat16", False):
            import warnings

            warnings.warn("this bundle is calibrated in bfloat16, but this machine has no bfloat16 instructions "
                          f"({BFLOAT16_HARDWARE}): the network runs in "
                          "float32 instead, and scores may differ from the calibration's by about 0.002; "
                          "'aeanomaly calibrate BUNDLE --normal-dir DIR --precision float32' makes them match",
                          RuntimeWarning, stacklevel=3)
            self._warned_bfloat16 = True
        return "float32"

    def _fit_precision(self) -> str:
        """The arithmetic :meth:`fit` calibrates in: ``precision``, or for ``auto`` bfloat16 where this
        machine computes it natively and float32 elsewhere (also where that cannot be told)."""
        from .model.autoencoder import resolve_precision

        self._require_native(self.precision)  # bfloat16 asked for where there is none: refused
        return resolve_precision(self.precision)

    def _require_native(self, precision: str) -> None:
        """A :class:`ConfigError` when calibrating in bfloat16 on a machine without native bfloat16."""
        if precision != "bfloat16":
            return
        from .model.autoencoder import native_bfloat16

        if native_bfloat16() is False:
            raise ConfigError(f"precision bfloat16 needs bfloat16 instructions ({BFLOAT16_HARDWARE}), and this "
                              "machine has none: without them "
                              "bfloat16 runs slower than float32 or not at all; use --precision float32")

    def _inference_function(self, precision: str):
        """A compiled inference function of ``model_`` in ``precision``, cached per model and precision."""
        cache = getattr(self, "_inference_cache", None)
        if cache is None or cache[0] is not self.model_ or cache[1] != precision:
            import tensorflow as tf

            from .model.autoencoder import inference_model

            model = inference_model(self.model_, precision)
            fn = tf.function(lambda t: tf.cast(model(t, training=False), tf.float32), reduce_retracing=True,
                             autograph=False)
            self._inference_cache = cache = (self.model_, precision, fn)
        return cache[2]

    def analyse(self, scan: Scan | str | os.PathLike, *, precision: str | None = None, normalise: bool = True,
                heatmap: str = "auto", residual_scale: float | None = None) -> Analysis:
        """Heatmap and slice / scan scores of one scan on the model grid (no calibration needed, except for
        a fused heatmap): :meth:`prepare`, :meth:`reconstruct` and :meth:`analyse_prepared` (``normalise``,
        ``heatmap``, ``residual_scale``: see there)."""
        scan = scan if isinstance(scan, Scan) else load_scan(scan)
        return self._analyse(scan, self.prepare(scan), precision=precision, normalise=normalise, heatmap=heatmap,
                             residual_scale=residual_scale)

    def _analyse(self, scan: Scan, prep: PreparedScan, *, precision: str | None = None, normalise: bool = True,
                 heatmap: str = "auto", residual_scale: float | None = None) -> Analysis:
        keep = self._scored_slices(prep)
        recon = np.zeros(prep.x.shape[:3], np.float32)
        if keep.any():
            recon[keep] = self.reconstruct(prep.x[keep], precision=precision)
        return self.analyse_prepared(prep, recon, is_hu=scan.is_hu, normalise=normalise, heatmap=heatmap,
                                     residual_scale=residual_scale)

    def _scored_slices(self, prep: PreparedScan) -> np.ndarray:
        """Slices with enough body; when there are none, the slices with any body."""
        return prep.keep if prep.keep.any() else prep.body.reshape(len(prep.body), -1).any(axis=1)

    def analyse_prepared(self, prep: PreparedScan, reconstruction: np.ndarray, *, is_hu: bool = True,
                         normalise: bool = True, heatmap: str = "auto",
                         residual_scale: float | None = None) -> Analysis:
        """:func:`aeanomaly.scoring.analyse` of a prepared scan and a reconstruction of it, in the
        detector's scoring region (the lungs, the body, or a U-Net head's organs).

        A slice is scored when it has enough body (``min_body_fraction``); when no slice has, the slices
        with any body are. In the lung region, a scan where no lung is found is scored in the body
        region. ``Analysis.note`` says so. ``reconstruction`` may come from any model of the same
        grid (benchmarks use this for baselines).

        When the calibration holds a region-size reference (``slice_norm="area"``), the slice scores
        (and the scan score aggregated from them) are the normalised ones the calibrators take, unless
        ``normalise`` is False (the raw scores, which calibration itself starts from).

        ``heatmap``: ``auto``, the detector's own (a ``dae+seg`` segmenter's probability, fused with the
        residual when ``seg_weight`` < 1); ``residual``, the residual heatmap whatever the model kind, with
        raw slice scores where the detector's own heatmap is another (the calibration's reference belongs to
        that one). ``residual_scale``: the residual's scale in a fused heatmap (default: the calibration's,
        which :meth:`fit` and :meth:`recalibrate` fix).
        """
        if heatmap not in ("auto", "residual"):
            raise ConfigError(f"heatmap must be 'auto' or 'residual', got {heatmap!r}")
        check_residual_scale(residual_scale)
        params = self.scoring_params()
        window = HUWindow.parse(self.window)
        notes = []
        keep = self._scored_slices(prep)
        if not prep.keep.any():
            notes.append(f"no slice has {params.min_body_fraction:.0%} body: scored the slices with any body"
                         if keep.any() else "no body found in the image: not scored")
        image = prep.x[..., self.channels // 2]
        head = getattr(self, "head_", None)
        unet = head is not None and head.kind == "unet"
        roi = resolved_roi(params.roi, window.name)
        organs = organ_label_map(head, prep.x) if unet else None
        thr = float(window.apply(np.float32(LUNG_THRESHOLD_HU))) if is_hu else None
        region = scoring_region(image, prep.body, roi, thr, organs)
        if roi == "lung" and not unet and keep.any() and not (region & keep[:, None, None]).any():
            region, roi = prep.body.copy(), "body"
            notes.append("no lung region found: scored in the body region")
        sign = resolved_sign(params.residual_sign, roi, unet)
        reconstruction = np.asarray(reconstruction, np.float32)
        out = analyse(image, reconstruction, region, keep, prep.spacing, params, sign, note="; ".join(notes))
        cal = getattr(self, "calibration_", None)
        residual_is_own = getattr(self, "seg_model_", None) is None  # no segmenter: the residual is the heatmap
        if not residual_is_own and heatmap == "auto":
            scale = residual_scale if residual_scale is not None else getattr(cal, "residual_scale", None)
            out = self._with_anomaly_probability(out, prep, reconstruction, params, scale)
        if normalise and cal is not None and cal.reference is not None and (residual_is_own or heatmap == "auto"):
            out.slice_scores = cal.normalised(out.slice_scores, out.mask)
            out.scan_score = scan_score(out.slice_scores, params.scan_aggregation)
        out.prepared = prep
        out.organ_labels = organs
        return out

    def _with_anomaly_probability(self, out: Analysis, prep: PreparedScan, reconstruction: np.ndarray,
                                  params: ScoringParams, residual_scale: float | None) -> Analysis:
        """``out`` with the segmenter's anomaly probability as the heatmap (in the same mask), fused with
        ``out``'s residual heatmap at ``residual_scale`` when ``seg_weight`` < 1, and the slice and scan scores
        recomputed from it."""
        from .model.selfsup import anomaly_probability, fused_heatmap

        weight = float(params.seg_weight)
        if weight < 1.0 and residual_scale is None:
            raise ConfigError(f"seg_weight {weight:g} fuses the residual at the scale of the calibration normals, "
                              "and this calibration has none (fitted with seg_weight 1): recalibrate first")
        scored = out.mask.reshape(len(out.mask), -1).any(axis=1)
        prob = np.zeros(out.heatmap.shape, np.float32)
        if scored.any() and weight > 0.0:  # at weight 0 the probability counts for nothing: not computed
            prob[scored] = anomaly_probability(self.seg_model_, prep.x[scored], reconstruction[scored])
        if weight < 1.0:
            prob = fused_heatmap(prob, out.heatmap, weight, residual_scale)
        out.heatmap = np.where(out.mask, prob, np.float32(0.0))
        out.slice_scores = slice_scores(out.heatmap, out.mask, params.slice_score if params.slice_score != "mae" else "p99")
        out.scan_score = scan_score(out.slice_scores, params.scan_aggregation)
        return out

    def _fit_segmenter(self, x: np.ndarray, verbose: int) -> None:
        """Train the ``dae+seg`` segmenter on prepared normal training slices ``x`` (n, size, size, c); the
        synthetic anomalies go into the scoring region (an Otsu lung mask for the lung region: the slices
        are already windowed), or the body where a slice has none."""
        from .masks import body_mask
        from .model.selfsup import train_discriminator

        image = x[..., self.channels // 2]
        body = body_mask(image, is_hu=False)
        roi = resolved_roi(self.roi, self.window_.name)
        region = scoring_region(image, body, roi)
        empty = ~region.reshape(len(region), -1).any(axis=1)
        region[empty] = body[empty]  # slices without lung: anomalies anywhere in the body
        self.seg_model_, self.seg_history_ = train_discriminator(
            x, lambda b: self.reconstruct(b, precision="float32"), epochs=self.seg_epochs, batch_size=self.batch_size,
            seed=self.seed, size=self.size, region=region, base_filters=self.seg_filters,
            radius_fraction=SEG_RADIUS_FRACTION, verbose=1 if verbose else 0)

    # -- fit -------------------------------------------------------------------------------------
    def fit(
        self, paths: Iterable[str | os.PathLike], *, groups: list | None = None, work_dir: str | os.PathLike | None = None,
        resume: bool = False, strict: bool = False, verbose: int = 1, strategy=None,
    ) -> "AnomalyDetector":
        """Train on normal scans and calibrate on held-out normal scans.

        Parameters
        ----------
        paths : list of paths
            Normal scans (anything :func:`aeanomaly.io.load_scan` reads).
        groups : list, optional
            Patient id per scan, so that no patient is on two sides of the split.
        work_dir : path, optional
            Where the slice store, checkpoints and run state live; needed for ``resume``. A temporary
            folder (deleted afterwards) when None.
        resume : bool
            Continue an interrupted run from the last checkpoint in ``work_dir``.
        strict : bool
            Stop at the first unreadable scan instead of skipping it with a warning.
        strategy : tf.distribute.Strategy, optional
            Data-parallel training (:func:`aeanomaly.distributed.strategy.make_strategy`); the loss curve
            is the single-device one.
        """
        window = self._validate_params()
        precision = self._fit_precision()  # before hours of training, not at calibration
        paths = list(paths)
        split = split_scans(len(paths), self.val_fraction, self.calib_fraction, self.seed, groups)
        with _work_folder(work_dir, "aeanomaly-fit-") as work:
            model, state, skipped = self._train(paths, {"train": split.train, "val": split.val}, window, work,
                                                self.train_config(), strict=strict, resume=resume, verbose=verbose,
                                                strategy=strategy)
        self.model_ = model
        self.window_ = window
        self.head_ = None
        self.seg_model_ = self.seg_history_ = None
        if self.model_kind == "dae+seg":
            self._fit_segmenter(state.pop("train_slices"), verbose)
        self.history_ = state["history"]
        self.train_state_ = {k: state.get(k) for k in ("epoch", "best", "stopped_early", "resumed_from",
                                                       "n_train_slices", "n_val_slices")}
        self.split_ = {side: [str(paths[i]) for i in getattr(split, side)] for side in ("train", "val", "calib")}
        self.calibration_, cal_skipped = self._calibrated([paths[i] for i in split.calib], method=self.calib_method,
                                                          target_fpr=self.target_fpr, precision=precision,
                                                          strict=strict, verbose=verbose)
        self.skipped_ = skipped + cal_skipped
        return self

    def _calibrated(self, paths: list, *, method: str, target_fpr: float, precision: str, strict: bool,
                    verbose: int, note: str = "fit", log=()) -> tuple[Calibration, list[dict]]:
        """A :class:`Calibration` fitted on normal ``paths`` and the skipped ones; the detector is unchanged.

        A fused heatmap (a segmenter and ``seg_weight`` < 1) needs the residual's scale first: one pass
        over the same scans with the residual heatmap alone gives its pixel threshold, the scale of the
        pass that calibrates."""
        params = self.scoring_params()
        scale = None
        if getattr(self, "seg_model_", None) is not None and params.seg_weight < 1.0:
            residual, _ = normal_stats(lambda s: self.analyse(s, precision=precision, normalise=False,
                                                              heatmap="residual"),
                                       paths, strict=strict, verbose=verbose, desc="residual scale")
            # (no blob_gate_3d: the calibrating pass below warns about mixed depths, once)
            scale = max(pixel_threshold(residual.tails, residual.n_pixels, params.pixel_quantile), MIN_RESIDUAL_SCALE)
        stats, skipped = normal_stats(lambda s: self.analyse(s, precision=precision, normalise=False,
                                                             residual_scale=scale),
                                      paths, strict=strict, verbose=verbose, blob_gate_3d=self.blob_gate_3d)
        cal = Calibration.fit(stats, target_fpr=target_fpr, method=method, pixel_quantile=params.pixel_quantile,
                              precision=precision, note=note, log=log, slice_norm=params.slice_norm,
                              scan_aggregation=params.scan_aggregation, residual_scale=scale)
        return cal, skipped

    def fine_tune(self, paths: Iterable[str | os.PathLike], *, epochs: int = 5, learning_rate: float | None = None,
                  work_dir: str | os.PathLike | None = None, strict: bool = False, verbose: int = 1,
                  note: str = "fine-tune") -> "AnomalyDetector":
        """Continue training the autoencoder with more normal scans (e.g. scans reviewers confirmed normal),
        then recalibrate on the bundle's own calibration scans, which training never sees.

        Training data: the original training scans that still exist plus ``paths``; validation: the
        original validation scans that still exist. The run starts from the current weights, at
        ``learning_rate`` (default a tenth of the original). Recorded in ``train_state_["fine_tuned"]``
        with ``note``.
        """
        import keras

        self._check_fitted()
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
        added = [str(p) for p in paths]
        exists = lambda p: os.path.exists(os.fspath(p))  # noqa: E731
        before = self.split_.get("train", [])
        train = [p for p in before if exists(p)] + [p for p in added if p not in before]
        val = [p for p in self.split_.get("val", []) if exists(p) and p not in added]
        calib = [p for p in self.calibration_sources_ if exists(p) and p not in added]
        if not added:
            raise ConfigError("no scan to fine-tune on")
        if len(calib) < 2:
            raise ConfigError(f"fine-tuning recalibrates on the bundle's calibration scans, but only {len(calib)} of "
                              f"{len(self.calibration_sources_)} still exist; recalibrate afterwards with "
                              "`aeanomaly calibrate BUNDLE --normal-dir DIR` on normal scans not trained on")
        cfg = replace(self.train_config(), epochs=int(epochs), learning_rate=float(learning_rate or self.learning_rate / 10))
        weights = self.model_.get_weights()

        class StartFromBundle(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.model.set_weights(weights)

        ids = list(range(len(train) + len(val)))
        with _work_folder(work_dir, "aeanomaly-fine-tune-") as work:
            model, state, skipped = self._train(train + val, {"train": ids[: len(train)], "val": ids[len(train):]},
                                                self.window_, work, cfg, strict=strict, resume=False, verbose=verbose,
                                                callbacks=[StartFromBundle()])
        old = (self.model_, self.history_, dict(self.train_state_), self.split_)
        old_seg = (getattr(self, "seg_model_", None), getattr(self, "seg_history_", None))
        self.model_ = model
        self.history_ = state["history"]
        if self.model_kind == "dae+seg":  # the segmenter learns from the new reconstructions
            self._fit_segmenter(state.pop("train_slices"), verbose)
        self.split_ = {"train": [str(p) for p in train], "val": [str(p) for p in val],
                       "calib": self.split_.get("calib", list(self.calibration_sources_))}
        try:
            self.recalibrate(calib, strict=strict, verbose=verbose, note=f"{note}: recalibrated after fine-tuning")
        except BaseException:
            self.model_, self.history_, self.train_state_, self.split_ = old
            self.seg_model_, self.seg_history_ = old_seg
            raise
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        entry = {"when": when, "note": note, "added": added, "epochs": int(state["epoch"]),
                 "best": state.get("best"), "n_train_slices": state["n_train_slices"], "skipped": skipped}
        self.train_state_ = {**old[2], "fine_tuned": [*old[2].get("fine_tuned", []), entry]}
        return self

    def _train(self, paths: list, split: dict, window: HUWindow, work: Path, cfg: TrainConfig, *, strict: bool,
               resume: bool, verbose: int, callbacks: list | None = None, strategy=None):
        """Preprocess ``paths[i]`` for the ids of ``split["train"]`` and ``split["val"]`` into a slice store
        in ``work`` and train on it; returns the model, the run state (with the slice counts) and the
        skipped scans."""
        from .model.train import train_autoencoder

        spec = {"size": self.size, "channels": self.channels, "window": window.to_spec()}
        store, skipped = build_store(self.prepare, paths, sorted(split["train"] + split["val"]),
                                     {k: list(v) for k, v in split.items()}, spec, work, self.size, self.channels,
                                     strict=strict, resume=resume, verbose=verbose)
        try:
            train_idx = np.flatnonzero(np.isin(store.scan_ids, split["train"]))
            val_idx = np.flatnonzero(np.isin(store.scan_ids, split["val"]))
            if len(train_idx) == 0:
                raise ConfigError("no usable training slices: every training scan was unreadable or empty")
            model, state = train_autoencoder(cfg, store, train_idx, val_idx, work, resume=resume, verbose=verbose,
                                             callbacks=callbacks, strategy=strategy)
            if self.model_kind == "dae+seg":  # the segmenter trains on (at most SEG_MAX_SLICES of) the same slices
                pick = np.random.default_rng(self.seed).permutation(train_idx)[:SEG_MAX_SLICES]
                state["train_slices"] = store.read(np.sort(pick))
        finally:
            store.close()
        state.update(n_train_slices=int(len(train_idx)), n_val_slices=int(len(val_idx)))
        return model, state, skipped

    # -- operating point -------------------------------------------------------------------------
    def recalibrate(self, paths: Iterable[str | os.PathLike], *, method: str | None = None,
                    target_fpr: float | None = None, precision: str | None = None, strict: bool = False,
                    verbose: int = 0, note: str = "recalibrate") -> "AnomalyDetector":
        """Refit the calibrators and the pixel threshold on other normal scans, without retraining
        (optionally in another inference ``precision``, which scoring then uses). Changes the fitted
        state only; a failure leaves the detector as it was."""
        self._check_fitted()
        method = self.calib_method if method is None else method
        alpha = self.target_fpr_ if target_fpr is None else float(target_fpr)
        precision = self.precision_ if precision is None else precision
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self._require_native(precision)
        if method not in CALIB_METHODS:
            raise ConfigError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")
        if not 0.0 < alpha < 1.0:
            raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}")
        self.calibration_, self.skipped_ = self._calibrated(list(paths), method=method, target_fpr=alpha,
                                                            precision=precision, strict=strict, verbose=verbose,
                                                            note=note, log=self.calibration_.log)
        return self

    def set_threshold(self, threshold: float | None = None, *, target_fpr: float | None = None,
                      reason: str = "") -> "AnomalyDetector":
        """Choose the scan-level operating point: an explicit score threshold, or a new target FPR
        (refitted on the stored normal calibration scores). Recorded with when and why."""
        self._check_fitted()
        if (threshold is None) == (target_fpr is None):
            raise ConfigError("give exactly one of threshold or target_fpr")
        if target_fpr is not None:
            if not 0.0 < float(target_fpr) < 1.0:
                raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}")
            self.calibration_ = self.calibration_.with_target_fpr(float(target_fpr), reason)
        else:
            self.calibration_ = self.calibration_.with_threshold(float(threshold), reason)
        return self

    def set_head(self, head) -> "AnomalyDetector":
        """Attach a fitted :class:`aeanomaly.model.heads.SupervisedHead` (or None to drop it). A U-Net
        head changes the scoring region: recalibrate afterwards."""
        self._check_fitted()
        if head is not None and (head.size != self.size or head.channels != self.channels):
            raise ConfigError(f"the head's input ({head.size} px, {head.channels} channels) differs from the "
                              f"autoencoder's ({self.size} px, {self.channels} channels)")
        self.head_ = head
        return self

    # -- scoring ---------------------------------------------------------------------------------
    def score_scan(self, scan: Scan | str | os.PathLike) -> ScanResult:
        """Score one scan: label, p-value, slice scores, heatmap and lesions; with a supervised head also
        the lesions' organs (U-Net) or the classifier and fused probabilities (CNN)."""
        self._check_fitted()
        scan = scan if isinstance(scan, Scan) else load_scan(scan)
        return self._score_prepared(scan, self.prepare(scan))

    def _score_prepared(self, scan: Scan, prep: PreparedScan) -> ScanResult:
        a = self._analyse(scan, prep)
        params = self.scoring_params()
        prep, scores, s = a.prepared, a.slice_scores, a.scan_score
        cal = self.calibration_
        finite = np.isfinite(scores)
        sp = np.full(scores.shape, np.nan)
        sl = np.zeros(scores.shape, bool)
        if np.isfinite(s):
            p = float(np.asarray(cal.scan.p_value(s)).ravel()[0])
            label = "abnormal" if bool(np.asarray(cal.scan.predict(s)).ravel()[0]) else "normal"
            sp[finite] = cal.slice.p_value(scores[finite])
            sl[finite] = (cal.slice.predict(scores[finite]) if params.slice_fdr is None
                          else benjamini_hochberg(sp[finite], float(params.slice_fdr)))
        else:  # nothing to score (no body): normal, with the reason in the note
            p, label = float("nan"), "normal"
        lesions, labels = find_lesions(
            a.heatmap, cal.pixel_threshold, prep.spacing, prep.affine, min_size_mm2=params.min_lesion_mm2,
            min_volume_mm3=params.min_lesion_mm3, opening_px=int(round(params.opening_mm / prep.spacing[1])),
            normal_peaks=cal.normal_peaks,
        )
        lesions = [les.with_(centroid_zyx_input=(float(les.centroid_zyx[0]),
                                                 *model_to_input_yx(les.centroid_zyx[1], les.centroid_zyx[2], prep.grid)))
                   for les in lesions]
        extra = head_outputs(getattr(self, "head_", None), prep, p, lesions, labels, a.organ_labels)
        return ScanResult(
            source=scan.source, n_slices=scan.n_slices, scan_score=float(s), p_value=p, label=label,
            top_slice=int(np.nanargmax(scores)) if finite.any() else 0, slice_scores=scores, slice_p_values=sp,
            slice_labels=sl, heatmap=a.heatmap, lesion_labels=labels, image=a.image, reconstruction=a.reconstruction,
            prepared=prep, scan=scan, note=a.note, **extra,
        )

    def score(self, paths: Iterable[str | os.PathLike]) -> list[ScanResult]:
        """Score several scans (raises on the first unreadable one; :meth:`iter_scores` reports them instead)."""
        out = []
        for _, res in self.iter_scores(paths, errors=()):
            out.append(res)
        return out

    def iter_scores(self, paths: Iterable[str | os.PathLike], *, prefetch: bool = True,
                    errors: tuple[type[BaseException], ...] = SCAN_ERRORS):
        """Score scans one after the other, yielding ``(path, result)`` in the order given.

        ``result`` is the :class:`ScanResult`, or the exception (one of ``errors``: by default an
        unreadable or invalid scan, a missing file, too little memory) that stopped that scan; other
        exceptions, and all with ``errors=()``, are raised.

        With ``prefetch`` (the default) the next scan is read and prepared (:meth:`prepare`) in a
        background thread while this one is reconstructed and analysed, so that its file reading,
        decompression and masks overlap the network: at most two scans are in memory at once (the
        one being scored and the next). The results are the same as :meth:`score_scan`'s, scan by scan.

        A result is not held here once the next one is asked for; to keep one scan's arrays in memory,
        drop each before taking the next (``for path, res in det.iter_scores(paths)`` does; wrapping
        the iterator in ``enumerate``, ``zip`` or ``tqdm`` keeps the previous item until the next one
        arrives).
        """
        self._check_fitted()
        paths = list(paths)

        def read(path) -> tuple[Scan, PreparedScan]:
            scan = path if isinstance(path, Scan) else load_scan(path)
            return scan, self.prepare(scan)

        if not prefetch or len(paths) < 2:
            for path in paths:
                try:
                    res = self._score_prepared(*read(path))
                except errors as err:
                    res = err
                yield path, res
                del res  # not held while the next scan is scored
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="aeanomaly-prefetch")
        try:
            nxt = pool.submit(read, paths[0])
            for i, path in enumerate(paths):
                fut, nxt = nxt, None
                try:
                    scan, prep = fut.result()
                except errors as err:
                    scan = prep = None
                    res = err
                del fut
                if i + 1 < len(paths):
                    nxt = pool.submit(read, paths[i + 1])
                if scan is not None:
                    try:
                        res = self._score_prepared(scan, prep)
                    except errors as err:
                        res = err
                    del scan, prep
                yield path, res
                del res
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def decision_function(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Scan scores (higher = more anomalous), like sklearn's outlier detectors."""
        self._check_fitted()
        return np.array([self.analyse(p).scan_score for p in paths])

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the bundle directory atomically (see :mod:`aeanomaly.bundle`)."""
        self._check_fitted()
        return _bundle.save_bundle(path, self, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnomalyDetector":
        """Load a fitted detector from a bundle directory."""
        parts = _bundle.load_parts(path)
        info = parts["info"]
        try:  # bundles written before the norm / slice_norm / sigma_z_mm / blob_gate(_3d) / seg_weight options:
            # GroupNorm models, raw slice scores, no smoothing across slices, the residual as it is, a segmenter's
            # probability alone
            det = cls(**{"norm": "group", "slice_norm": "none", "sigma_z_mm": 0.0, "blob_gate": 0.0,
                         "blob_gate_3d": 0.0, "seg_weight": 1.0,
                         **info["params"]})
            window = HUWindow.parse(det.window)
        except (TypeError, ConfigError) as err:
            from .errors import BundleError

            raise BundleError(f"bundle.json has invalid parameters: {err}", path) from None
        det.model_ = parts["model"]
        det.window_ = window
        det.calibration_ = parts["calibration"]
        det.head_ = parts["head"]
        det.seg_model_, det.seg_history_ = parts["segmenter"]
        det.history_ = parts["history"]
        det.train_state_ = info.get("training", {})
        det.split_ = info.get("split", {})
        det.skipped_ = info.get("skipped", [])
        det.bundle_path_ = str(path)
        return det

    def calibration_dict(self) -> dict:
        """The content of calibration.json."""
        self._check_fitted()
        return self.calibration_.to_dict()


@contextlib.contextmanager
def _work_folder(work_dir, prefix: str):
    """``work_dir`` (created), or a temporary folder deleted afterwards when it is None."""
    tmp = None
    if work_dir is None:
        tmp = work_dir = tempfile.mkdtemp(prefix=prefix)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
