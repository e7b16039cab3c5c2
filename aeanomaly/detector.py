"""AnomalyDetector: the Python API that the CLI and the notebooks share.

>>> det = AnomalyDetector(window="lung", size=128, epochs=20).fit(normal_paths)   # doctest: +SKIP
>>> result = det.score_scan("new_scan.nii.gz")                                    # doctest: +SKIP
>>> result.label, result.p_value, result.lesions                                  # doctest: +SKIP
>>> det.save("bundle/")                                                           # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from . import __version__, bundle as _bundle
from .calibrate import Calibrator, benjamini_hochberg
from .errors import AeAnomalyError, ConfigError, NotFittedError, ScanError
from .hybrid import head_outputs, organ_labels_for
from .io import Scan, load_scan
from .localize import find_lesions, residual_heatmap
from .model.autoencoder import check_precision
from .model.train import TrainConfig
from .preprocess import (HUWindow, PreparedScan, erode_mask, from_model_grid, lung_region, model_to_input_yx,
                         prepare_volume)
from .parallel import map_slices
from .scoring import residual_map, scan_score, slice_scores
from .splits import Split, split_scans

#: Scoring parameters (the benchmark chooses the defaults; see README "Benchmarks").
SCORING_DEFAULTS = dict(
    roi="auto", slice_score="p99", scan_aggregation="top3", residual_sign="auto", sigma_mm=6.0, erode_mm=6.0,
    opening_mm=2.0, pixel_quantile=0.999, min_lesion_mm2=12.0, min_lesion_mm3=None, min_body_fraction=0.05,
    slice_fdr=None,
)


@dataclass
class ScanResult:
    """What scoring one scan gives.

    Arrays are on the model grid ``(z, size, size)`` unless said otherwise; use
    :meth:`heatmap_in_input_grid` for the input's slice grid.
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
    lesions: list[dict]
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

    def heatmap_in_input_grid(self) -> np.ndarray:
        """Heatmap ``(z, y, x)`` resampled to the input's internal slice grid (float32)."""
        return map_slices(lambda h: from_model_grid(h, self.prepared.grid), self.heatmap)

    def lesion_labels_in_input_grid(self) -> np.ndarray:
        """Lesion label volume ``(z, y, x)`` on the input grid (nearest label by majority)."""
        out = np.zeros(self.scan.hu.shape if self.scan is not None else (self.n_slices, self.prepared.grid.ny, self.prepared.grid.nx), np.int32)
        best = np.zeros(out.shape, np.float32)
        for lab in np.unique(self.lesion_labels[self.lesion_labels > 0]):
            frac = from_model_grid((self.lesion_labels == lab).astype(np.float32), self.prepared.grid)
            sel = (frac >= 0.5) & (frac > best)
            out[sel], best[sel] = lab, frac[sel]
        return out


class AnomalyDetector:
    """Autoencoder anomaly detector for CT, with sklearn conventions.

    Parameters
    ----------
    window : str
        HU window preset (``lung``, ``abdomen``, ``liver``, ``mediastinum``, ``bone``) or ``"W,L"``.
    size, channels, depth, base_filters, latent, latent_dim, skip, norm, loss, noise_std,
    noise_resolution, epochs, batch_size, learning_rate, patience, seed
        Model and training (see :class:`aeanomaly.model.train.TrainConfig`). ``noise_std > 0`` trains a
        coarse-noise denoising autoencoder; ``skip=False, noise_std=0`` is the classic bottleneck AE.
    augment : bool or dict
        Augmentation of the normal training slices (never at validation): True for the defaults of
        :class:`aeanomaly.model.data.Augment` (flip probability, rotation in degrees, scale, shift as
        a fraction of the size, intensity gain / offset), False for none, or a dict overriding some
        of them, e.g. ``{"flip": 0.0, "rotate_deg": 15}``.
    val_fraction, calib_fraction : float
        Fractions of the normal scans (or patients) held out for validation and calibration.
    target_fpr : float
        Scan-level false-positive rate the threshold is calibrated for.
    calib_method : str
        ``auto`` (split-conformal when there are enough calibration scans for ``target_fpr``, else a
        gamma fit), ``empirical``, ``gamma``, ``lognormal`` or ``kde``.
    precision : {"float32", "bfloat16"}
        Arithmetic of inference (calibration and scoring; training is always float32). ``bfloat16``
        computes the layers in bfloat16 with the float32 weights (Keras ``mixed_bfloat16``): faster on
        CPUs with AVX512-BF16 or AMX (see the speed benchmark), reconstructions differ by about 0.002
        on average. Calibrate in the precision you score in (``aeanomaly calibrate --precision``).
    roi : {"auto", "body", "lung"}
        Where residuals count: the body, or the lungs (an unsupervised lung mask: dark pixels inside
        the body, closed and hole-filled). ``auto`` = lungs for the lung window, else the body. A
        supervised U-Net head, when the bundle has one, replaces this region.
    residual_sign : {"auto", "abs", "positive", "negative"}
        ``auto`` keeps positive residuals (tissue brighter than its reconstruction: nodules, ground
        glass) in the lung region and absolute residuals elsewhere (hypo- and hyperdense lesions).
    slice_score, scan_aggregation, sigma_mm, erode_mm, opening_mm, pixel_quantile, min_lesion_mm2,
    min_lesion_mm3, min_body_fraction
        Scoring and localisation (see :mod:`aeanomaly.scoring` and :mod:`aeanomaly.localize`):
        in-plane smoothing σ, erosion of the region and opening radius of lesion masks, all in mm;
        lesions smaller than ``min_lesion_mm2`` in their largest cross-section, or (when set) than
        ``min_lesion_mm3`` in volume, are dropped.
    slice_fdr : float, optional
        Slice labels by Benjamini–Hochberg across the scan's slices at this false-discovery rate,
        instead of each slice against the slice-level threshold (which, over hundreds of slices,
        flags some normal slices in most scans). None (default): per-slice threshold.
    """

    def __init__(
        self, window: str = "lung", size: int = 128, channels: int = 1, depth: int = 4, base_filters: int = 16,
        latent: str = "spatial", latent_dim: int = 64, skip: bool = True, norm: str = "group", loss: str = "mae",
        noise_std: float = 0.2, noise_resolution: int = 16, epochs: int = 30, batch_size: int = 16,
        learning_rate: float = 1e-3, patience: int = 8, augment: bool | dict = True, seed: int = 0,
        val_fraction: float = 0.15, calib_fraction: float = 0.3, target_fpr: float = 0.05, calib_method: str = "auto",
        precision: str = "float32", roi: str = SCORING_DEFAULTS["roi"],
        slice_score: str = SCORING_DEFAULTS["slice_score"], scan_aggregation: str = SCORING_DEFAULTS["scan_aggregation"],
        residual_sign: str = SCORING_DEFAULTS["residual_sign"], sigma_mm: float = SCORING_DEFAULTS["sigma_mm"],
        erode_mm: float = SCORING_DEFAULTS["erode_mm"], opening_mm: float = SCORING_DEFAULTS["opening_mm"],
        pixel_quantile: float = SCORING_DEFAULTS["pixel_quantile"],
        min_lesion_mm2: float = SCORING_DEFAULTS["min_lesion_mm2"],
        min_lesion_mm3: float | None = SCORING_DEFAULTS["min_lesion_mm3"],
        min_body_fraction: float = SCORING_DEFAULTS["min_body_fraction"],
        slice_fdr: float | None = SCORING_DEFAULTS["slice_fdr"],
    ):
        params = dict(locals())
        params.pop("self")
        for k, v in params.items():
            setattr(self, k, v)

    # -- sklearn-style parameter access ---------------------------------------------------------
    def get_params(self) -> dict:
        """Constructor parameters (JSON-serialisable)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params) -> "AnomalyDetector":
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ConfigError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    @property
    def window_(self) -> HUWindow:
        return HUWindow.parse(self.window)

    def _train_config(self) -> TrainConfig:
        from dataclasses import asdict as _asdict, fields

        from .model.data import Augment

        names = set(TrainConfig.__dataclass_fields__) - {"augment_params", "augment"}
        aug = self.augment
        params = _asdict(Augment())
        if isinstance(aug, dict):
            unknown = sorted(set(aug) - {f.name for f in fields(Augment)})
            if unknown:
                raise ConfigError(f"unknown augmentation setting(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(f.name for f in fields(Augment))}")
            params.update({k: float(v) for k, v in aug.items()})
        elif not isinstance(aug, (bool, np.bool_)):
            raise ConfigError(f"augment must be True, False or a dict of Augment settings, got {aug!r}")
        return TrainConfig(**{n: getattr(self, n) for n in names}, augment=bool(aug) if not isinstance(aug, dict)
                           else True, augment_params=params)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this AnomalyDetector is not fitted yet: call fit(paths) or AnomalyDetector.load(bundle)")

    # -- preprocessing and inference ------------------------------------------------------------
    def prepare(self, scan: Scan) -> PreparedScan:
        """The scan on the model grid (window, body mask, resize)."""
        return prepare_volume(
            scan.hu, scan.spacing, scan.affine, is_hu=scan.is_hu, window=self.window_, size=self.size,
            channels=self.channels, min_body_fraction=self.min_body_fraction,
        )

    def reconstruct(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Reconstruct ``(n, size, size, channels)`` slices in [0, 1]; returns ``(n, size, size)``."""
        self._check_fitted()
        bs = int(batch_size or max(self.batch_size, 32))
        out = np.empty(x.shape[:3], dtype=np.float32)
        for i in range(0, len(x), bs):
            out[i : i + bs] = np.asarray(self._infer(x[i : i + bs]))[..., 0]
        return out

    def _infer(self, batch: np.ndarray):
        key = getattr(self, "_infer_key", None)
        if getattr(self, "_infer_fn", None) is None or key is None or key[0] is not self.model_ or key[1] != self.precision:
            import tensorflow as tf

            from .model.autoencoder import inference_model

            model = inference_model(self.model_, self.precision)
            self._infer_fn = tf.function(lambda t: tf.cast(model(t, training=False), tf.float32),
                                         reduce_retracing=True, autograph=False)
            self._infer_key = (self.model_, self.precision)
        return self._infer_fn(np.ascontiguousarray(batch, dtype=np.float32))

    def _roi(self) -> str:
        return self.roi if self.roi != "auto" else ("lung" if self.window_.name == "lung" else "body")

    def _sign(self) -> str:
        if self.residual_sign != "auto":
            return self.residual_sign
        has_unet = getattr(getattr(self, "head_", None), "kind", None) == "unet"
        return "positive" if self._roi() == "lung" and not has_unet else "abs"

    def region(self, prep: PreparedScan, image: np.ndarray) -> np.ndarray:
        """The region where residuals count, bool ``(z, size, size)`` on the model grid."""
        head = getattr(self, "head_", None)
        if head is not None and head.kind == "unet":
            return (organ_labels_for(self, prep) > 0) & prep.body
        roi = self._roi()
        if roi == "body":
            return prep.body
        if roi == "lung":
            is_hu = getattr(self, "_is_hu", True)  # set by _analyse; HU unless the scan said otherwise
            thr = self.window_.apply(np.float32(-400.0)) if is_hu else None
            return map_slices(lambda im, b: lung_region(im, b, thr), image, prep.body)
        raise ConfigError(f"roi must be 'auto', 'body' or 'lung', got {self.roi!r}")

    def _analyse(self, scan: Scan):
        """Residual heatmap and slice scores of one scan on the model grid (no calibration needed)."""
        prep = self.prepare(scan)
        self._is_hu = scan.is_hu
        c = self.channels // 2
        image = prep.x[..., c]
        recon = np.zeros_like(image)
        if prep.keep.any():
            recon[prep.keep] = self.reconstruct(prep.x[prep.keep])
        resid = residual_map(image, recon, self._sign())
        erode_px = int(round(self.erode_mm / max(prep.spacing[1], 1e-6)))

        def chunk(r, region, keep):  # all per slice (no smoothing across z): z-chunks run in threads
            m = erode_mask(region, erode_px) & keep[:, None, None]
            h = residual_heatmap(r, mask=m, sigma_mm=self.sigma_mm, spacing=prep.spacing)
            return m, h, slice_scores(r if self.slice_score == "mae" else h, m, self.slice_score)

        mask, heat, scores = map_slices(chunk, resid, self.region(prep, image), prep.keep)
        return prep, image, recon, heat, mask, scores

    # -- fit -------------------------------------------------------------------------------------
    def fit(
        self, paths: Iterable[str | os.PathLike], *, groups: list | None = None, work_dir: str | os.PathLike | None = None,
        resume: bool = False, strict: bool = False, verbose: int = 1,
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
        """
        from .model.data import SliceStore
        from .model.train import train_autoencoder
        from .fitting import build_store, calibration_pass

        paths = [Path(p) for p in paths]
        self.window_  # validates the window early
        self._train_config()  # and the training / augmentation settings
        check_precision(self.precision)
        split = split_scans(len(paths), self.val_fraction, self.calib_fraction, self.seed, groups)
        tmp_dir = None
        if work_dir is None:
            tmp_dir = work_dir = tempfile.mkdtemp(prefix="aeanomaly-fit-")
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        try:
            store, skipped = build_store(self, paths, split, work, strict=strict, resume=resume, verbose=verbose)
            train_idx = np.flatnonzero(np.isin(store.scan_ids, split.train))
            val_idx = np.flatnonzero(np.isin(store.scan_ids, split.val))
            if len(train_idx) == 0:
                raise ConfigError("no usable training slices: every training scan was unreadable or empty")
            model, state = train_autoencoder(
                self._train_config(), store, train_idx, val_idx, work, resume=resume, verbose=verbose
            )
            store.close()
            self.model_ = model
            self._infer_fn = None
            self.history_ = state["history"]
            self.train_state_ = {k: state.get(k) for k in ("epoch", "best", "stopped_early", "resumed_from")}
            self.split_ = {side: [str(paths[i]) for i in getattr(split, side)] for side in ("train", "val", "calib")}
            cal = calibration_pass(self, [paths[i] for i in split.calib], strict=strict, verbose=verbose)
            skipped += cal.pop("skipped")
            self._set_calibration(**cal)
            self.skipped_ = skipped
        finally:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)
        return self

    def _calibrator_method(self, n: int) -> str:
        if self.calib_method != "auto":
            return self.calib_method
        return "empirical" if n >= int(np.ceil(1.0 / self.target_fpr - 1.0 - 1e-9)) else "gamma"

    def _set_calibration(self, scan_scores, slice_scores, pixel_tail, n_pixels, normal_peaks, sources, note="fit"):
        """Fit the scan- and slice-level calibrators and the pixel threshold on normal results."""
        scan_scores = np.asarray(scan_scores, float)
        if np.isfinite(scan_scores).sum() < 2:
            raise ConfigError("calibration needs at least 2 scorable held-out normal scans")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.calibrator_ = Calibrator(self._calibrator_method(len(scan_scores)), self.target_fpr).fit(scan_scores)
            sl = np.asarray(slice_scores, float)
            self.slice_calibrator_ = Calibrator(self._calibrator_method(len(sl)), self.target_fpr).fit(sl)
        tail = np.sort(np.asarray(pixel_tail, np.float32))[::-1]
        m = max(1, int(np.ceil((1.0 - self.pixel_quantile) * n_pixels)))
        self.pixel_threshold_ = float(tail[min(m, len(tail)) - 1])
        self.normal_peaks_ = np.sort(np.asarray(normal_peaks, float))
        self.calibration_sources_ = [str(s) for s in sources]
        self.calibration_log_ = getattr(self, "calibration_log_", []) + [
            {"when": _now(), "what": note, "method": self.calibrator_.method, "target_fpr": self.target_fpr,
             "threshold": _finite_or_none(self.calibrator_.threshold_), "n_scans": int(len(scan_scores))}
        ]

    # -- scoring ---------------------------------------------------------------------------------
    def score_scan(self, scan: Scan | str | os.PathLike) -> ScanResult:
        """Score one scan: label, p-value, slice scores, heatmap and lesions; with a supervised head also
        the lesions' organs (U-Net) or the classifier and fused probabilities (CNN)."""
        self._check_fitted()
        if not isinstance(scan, Scan):
            scan = load_scan(scan)
        prep, image, recon, heat, mask, scores = self._analyse(scan)
        s = scan_score(scores, self.scan_aggregation)
        if not np.isfinite(s):
            raise ScanError("no slice with enough body to score (is this CT in the bundle's window?)", scan.source)
        p = float(np.asarray(self.calibrator_.p_value(s)).ravel()[0])
        label = "abnormal" if bool(np.asarray(self.calibrator_.predict(s)).ravel()[0]) else "normal"
        finite = np.isfinite(scores)
        sp = np.full(scores.shape, np.nan)
        sl = np.zeros(scores.shape, bool)
        if finite.any():
            sp[finite] = self.slice_calibrator_.p_value(scores[finite])
            if self.slice_fdr is None:
                sl[finite] = self.slice_calibrator_.predict(scores[finite])
            else:
                if not 0 < float(self.slice_fdr) < 1:
                    raise ConfigError(f"slice_fdr must be in (0, 1), got {self.slice_fdr!r}")
                sl[finite] = benjamini_hochberg(sp[finite], float(self.slice_fdr))
        lesions, labels = find_lesions(
            heat, self.pixel_threshold_, prep.spacing, prep.affine, min_size_mm2=self.min_lesion_mm2,
            min_volume_mm3=self.min_lesion_mm3,
            opening_px=int(round(self.opening_mm / prep.spacing[1])), normal_peaks=self.normal_peaks_,
        )
        for les in lesions:  # the centroid on the scan's own slice grid too (model grid → input pixels)
            cz, cy, cx = les["centroid_zyx"]
            les["centroid_zyx_input"] = (float(cz), *model_to_input_yx(cy, cx, prep.grid))
        extra = head_outputs(self, prep, p, lesions, labels)
        self._organ_cache = None
        return ScanResult(
            source=scan.source, n_slices=scan.n_slices, scan_score=float(s), p_value=p, label=label,
            top_slice=int(np.nanargmax(scores)), slice_scores=scores, slice_p_values=sp, slice_labels=sl,
            heatmap=heat, lesion_labels=labels, image=image, reconstruction=recon, prepared=prep, scan=scan,
            **extra,
        )

    def score(self, paths: Iterable[str | os.PathLike]) -> list[ScanResult]:
        """Score several scans (raises on the first unreadable one; the CLI reports them instead)."""
        return [self.score_scan(p) for p in paths]

    def decision_function(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Scan scores (higher = more anomalous), like sklearn's outlier detectors."""
        return np.array([self._scan_score_only(p) for p in paths])

    def _scan_score_only(self, path) -> float:
        scan = path if isinstance(path, Scan) else load_scan(path)
        return scan_score(self._analyse(scan)[5], self.scan_aggregation)

    # -- operating point -------------------------------------------------------------------------
    def recalibrate(self, paths: Iterable[str | os.PathLike], *, method: str | None = None,
                    target_fpr: float | None = None, precision: str | None = None, strict: bool = False,
                    verbose: int = 0) -> "AnomalyDetector":
        """Refit the calibrators and the pixel threshold on other normal scans, without retraining
        (optionally in another inference ``precision``, which scoring then uses)."""
        from .fitting import calibration_pass

        self._check_fitted()
        old = {"precision": self.precision, "calib_method": self.calib_method, "target_fpr": self.target_fpr}
        if precision is not None:
            self.precision = check_precision(precision)
        if method is not None:
            self.calib_method = method
        if target_fpr is not None:
            self.target_fpr = float(target_fpr)
        try:
            cal = calibration_pass(self, [Path(p) for p in paths], strict=strict, verbose=verbose)
            skipped = cal.pop("skipped")
            self._set_calibration(**cal, note="recalibrate")
        except BaseException:
            self.set_params(**old)  # a failed recalibration leaves the detector as it was
            raise
        self.skipped_ = skipped
        return self

    def set_threshold(self, threshold: float | None = None, *, target_fpr: float | None = None, reason: str = "") -> "AnomalyDetector":
        """Choose the scan-level operating point: an explicit score threshold, or a new target FPR
        (refitted on the stored normal calibration scores). Recorded with when and why."""
        self._check_fitted()
        if (threshold is None) == (target_fpr is None):
            raise ConfigError("give exactly one of threshold or target_fpr")
        if target_fpr is not None:
            self.target_fpr = float(target_fpr)
            self.calibrator_ = self.calibrator_.with_target_fpr(self.target_fpr)
            self.slice_calibrator_ = self.slice_calibrator_.with_target_fpr(self.target_fpr)
        else:
            self.calibrator_.set_threshold(float(threshold), reason=reason)
        self.calibration_log_ = getattr(self, "calibration_log_", []) + [
            {"when": _now(), "what": "set_threshold", "reason": reason, "target_fpr": self.target_fpr,
             "threshold": _finite_or_none(self.calibrator_.threshold_)}
        ]
        return self

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the bundle directory atomically (see :mod:`aeanomaly.bundle`)."""
        self._check_fitted()
        return _bundle.save_bundle(path, self, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnomalyDetector":
        """Load a fitted detector from a bundle directory."""
        return _bundle.load_bundle(path, cls)

    def calibration_dict(self) -> dict:
        """The content of calibration.json."""
        self._check_fitted()
        return {
            "target_fpr": self.target_fpr,
            "precision": self.precision,  # the inference arithmetic the scores were computed in
            "scan": self.calibrator_.to_dict(),
            "slice": self.slice_calibrator_.to_dict(),
            "pixel_threshold": self.pixel_threshold_,
            "pixel_quantile": self.pixel_quantile,
            "normal_peaks": [float(v) for v in self.normal_peaks_],
            "calibration_scans": self.calibration_sources_,
            "log": self.calibration_log_,
        }

    def load_calibration_dict(self, d: dict) -> None:
        self.target_fpr = float(d["target_fpr"])
        self.precision = check_precision(str(d.get("precision", "float32")))
        self.calibrator_ = Calibrator.from_dict(d["scan"])
        self.slice_calibrator_ = Calibrator.from_dict(d["slice"])
        self.pixel_threshold_ = float(d["pixel_threshold"])
        self.normal_peaks_ = np.asarray(d["normal_peaks"], float)
        self.calibration_sources_ = list(d.get("calibration_scans", []))
        self.calibration_log_ = list(d.get("log", []))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _finite_or_none(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None
