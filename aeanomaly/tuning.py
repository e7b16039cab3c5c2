"""Threshold tuning on labelled scan scores (pure compute: no file, no figure, no detector).

A scan is labelled abnormal when ``scan_score > threshold`` (strictly), exactly as
:meth:`aeanomaly.calibrate.Calibrator.predict` and ``aeanomaly score`` do. Scores are the detector's
scan scores (unitless, higher = more anomalous); ``y_true`` is 1 / True / ``"abnormal"`` for abnormal
scans. Scans with a non-finite score are left out, with their labels.

Candidate thresholds are *midpoints* between neighbouring distinct scores (plus one just above the
largest and one just below the smallest score), so every chosen threshold sits in a gap between
scans: the confusion matrix does not hinge on float rounding, and re-scoring the same scans (in a
notebook, then with ``aeanomaly score``) gives the same labels.

>>> y = [0, 0, 0, 1, 1]
>>> s = [0.1, 0.2, 0.4, 0.3, 0.5]
>>> op = operating_point(y, s, 0.25)
>>> (op.tp, op.fp, op.tn, op.fn), op.sensitivity, op.specificity
((2, 1, 2, 0), 1.0, 0.6666666666666666)
>>> threshold_for_fpr(y, s, 0.0)          # no false positive, as sensitive as possible
0.45
>>> threshold_for_sensitivity(y, s, 1.0)  # every abnormal found, as specific as possible
0.25

Typical notebook flow (see ``notebooks/02_threshold_tuning.ipynb``); the figures of these objects
are in :mod:`aeanomaly.figures`, and the chosen point is written into a bundle by
:func:`aeanomaly.bundle.save_operating_point`::

    det = AnomalyDetector.load("bundle")
    scores = det.decision_function(paths)                 # (n,) scan scores
    tuner = ThresholdTuner(y, scores, det.calibrator_)
    op = tuner.at(tuner.threshold_for_sensitivity(0.9))   # OperatingPoint
    save_operating_point("bundle", threshold=op.threshold, reason="screening: sensitivity >= 0.9",
                         evidence=op, detector=det)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ConfigError

__all__ = [
    "OperatingPoint",
    "ThresholdTable",
    "Curves",
    "ThresholdTuner",
    "labels_as_bool",
    "operating_point",
    "candidate_thresholds",
    "threshold_table",
    "roc_pr_curves",
    "threshold_for_fpr",
    "threshold_for_sensitivity",
    "choose_threshold",
    "calibrated_threshold",
    "padded_range",
]


def _rate(num, den) -> float | np.ndarray:
    """``num / den``, NaN where ``den`` is 0: a float for scalar counts, an array for arrays."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def _f1(precision, recall) -> float | np.ndarray:
    """Harmonic mean, 0 where both are 0, NaN where either is NaN (floats or arrays, like :func:`_rate`)."""
    p, r = np.asarray(precision, dtype=float), np.asarray(recall, dtype=float)
    total = p + r
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, 2 * p * r / np.where(total > 0, total, 1.0), 0.0)
    out = np.where(np.isnan(p) | np.isnan(r), np.nan, out)
    return float(out) if out.ndim == 0 else out


class _ConfusionRates:
    """The rates of confusion counts ``tp``, ``fp``, ``tn``, ``fn`` (positive = abnormal), for one
    operating point (floats) or a table of them (arrays) alike; NaN where a denominator is 0."""

    @property
    def sensitivity(self) -> float | np.ndarray:
        """TP / (TP + FN), also the true-positive rate and recall; NaN without abnormal scans."""
        return _rate(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float | np.ndarray:
        """TN / (TN + FP); NaN without normal scans."""
        return _rate(self.tn, self.tn + self.fp)

    @property
    def fpr(self) -> float | np.ndarray:
        """Observed false-positive rate FP / (FP + TN) = 1 − specificity."""
        return _rate(self.fp, self.tn + self.fp)

    @property
    def precision(self) -> float | np.ndarray:
        """TP / (TP + FP) (positive predictive value); NaN when nothing is flagged."""
        return _rate(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float | np.ndarray:
        """TN / (TN + FN) (negative predictive value)."""
        return _rate(self.tn, self.tn + self.fn)

    @property
    def f1(self) -> float | np.ndarray:
        """Harmonic mean of precision and sensitivity (0 when both are 0, NaN when undefined)."""
        return _f1(self.precision, self.sensitivity)

    @property
    def accuracy(self) -> float | np.ndarray:
        """(TP + TN) / all."""
        return _rate(self.tp + self.tn, self.tp + self.fp + self.tn + self.fn)


@dataclass(frozen=True)
class OperatingPoint(_ConfusionRates):
    """The confusion matrix and rates of one threshold on labelled scans.

    Attributes
    ----------
    threshold : float
        Scan-score threshold; a scan is abnormal when ``score > threshold``.
    tp, fp, tn, fn : int
        True/false positives and negatives (positive = abnormal).

    Rates (``sensitivity``, ``specificity``, ``fpr``, ``precision``, ``npv``, ``f1``, ``accuracy``)
    are floats, NaN where the denominator is empty (e.g. ``precision`` when nothing is flagged).
    """

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        """Number of labelled scans."""
        return self.tp + self.fp + self.tn + self.fn

    @property
    def n_abnormal(self) -> int:
        return self.tp + self.fn

    @property
    def n_normal(self) -> int:
        return self.tn + self.fp

    @property
    def confusion_matrix(self) -> np.ndarray:
        """int ``(2, 2)`` in sklearn's layout: rows = truth (normal, abnormal), columns = predicted."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=int)

    def to_dict(self) -> dict:
        """JSON-ready summary (NaN rates become None)."""
        def num(v: float):
            return None if not np.isfinite(v) else float(v)

        return {
            "threshold": num(self.threshold), "n": self.n, "n_normal": self.n_normal,
            "n_abnormal": self.n_abnormal, "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
            "sensitivity": num(self.sensitivity), "specificity": num(self.specificity), "fpr": num(self.fpr),
            "precision": num(self.precision), "npv": num(self.npv), "f1": num(self.f1),
            "accuracy": num(self.accuracy),
        }

    def __str__(self) -> str:
        return (f"threshold {self.threshold:.6g}: sensitivity {self.sensitivity:.3f}, specificity "
                f"{self.specificity:.3f}, precision {self.precision:.3f}, F1 {self.f1:.3f} "
                f"(TP {self.tp}, FP {self.fp}, TN {self.tn}, FN {self.fn})")


# ------------------------------------------------------------------------------------------ inputs
def labels_as_bool(y_true) -> np.ndarray:
    """Labels as a bool ``(n,)`` array (True = abnormal) from 0/1, bools or ``"normal"``/``"abnormal"``."""
    y = np.asarray(y_true).ravel()
    if y.dtype.kind in "US":
        low = np.char.lower(np.char.strip(y.astype(str)))
        bad = ~np.isin(low, ("normal", "abnormal", "0", "1"))
        if bad.any():
            raise ConfigError(f"labels must be normal/abnormal or 0/1, got {sorted(set(y[bad].tolist()))[:5]}")
        return np.isin(low, ("abnormal", "1"))
    if y.dtype.kind == "O":
        return labels_as_bool(y.astype(str))
    if y.dtype == bool:
        return y.copy()
    if not np.all(np.isin(y, (0, 1))):
        raise ConfigError("labels must be 0 (normal) and 1 (abnormal)")
    return y.astype(bool)


def _labelled(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """(y bool (n,), s float (n,)) with non-finite scores dropped; copies, never views of the input."""
    y = labels_as_bool(y_true)
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ConfigError(f"y_true has {y.size} labels but scores has {s.size} values")
    ok = np.isfinite(s)
    return y[ok], s[ok].copy()


def padded_range(*values, pad: float = 0.05) -> tuple[float, float]:
    """(low, high) covering every finite value given, widened by ``pad`` of the span at each end.

    Parameters
    ----------
    *values : array_like or float or None
        Scores, thresholds ...; None and non-finite values are left out.
    pad : float
        Fraction of the span added below and above (of ``|high|`` when all values are equal).

    Raises
    ------
    ConfigError
        No finite value was given.
    """
    parts = [np.asarray(v, dtype=float).ravel() for v in values if v is not None]
    v = np.concatenate(parts) if parts else np.zeros(0)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ConfigError("no finite score")
    lo, hi = float(v.min()), float(v.max())
    margin = pad * (hi - lo) if hi > lo else max(abs(hi), 1e-6) * pad
    return lo - margin, hi + margin


def _both_classes(y: np.ndarray) -> None:
    if y.all() or not y.any():
        raise ConfigError("the labelled set must hold both normal and abnormal scans")


# --------------------------------------------------------------------------------------- compute
def operating_point(y_true, scores, threshold: float) -> OperatingPoint:
    """Confusion matrix of ``scores > threshold`` against ``y_true``.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        1 / True / ``"abnormal"`` = abnormal.
    scores : array_like of float, shape (n,)
        Scan scores (higher = more anomalous); non-finite ones are left out.
    threshold : float
        Scan-score threshold.
    """
    y, s = _labelled(y_true, scores)
    pred = s > float(threshold)
    return OperatingPoint(float(threshold), int(np.sum(pred & y)), int(np.sum(pred & ~y)),
                          int(np.sum(~pred & ~y)), int(np.sum(~pred & y)))


def candidate_thresholds(scores) -> np.ndarray:
    """Every distinct operating point of ``scores``, as thresholds in decreasing order.

    With distinct sorted scores ``u_1 > … > u_k`` these are ``u_1 + g_1/2``, the midpoints
    ``(u_i + u_{i+1}) / 2`` and ``u_k − g_k/2`` (``g`` the neighbouring gap), i.e. ``k + 1`` values:
    the first flags nothing, the last flags every scan. Returns float ``(k + 1,)``.
    """
    s = np.asarray(scores, dtype=float).ravel()
    u = np.unique(s[np.isfinite(s)])[::-1]
    if u.size == 0:
        raise ConfigError("no finite score")
    if u.size == 1:
        pad = max(abs(float(u[0])) * 1e-6, 1e-12)
        return np.array([u[0] + pad, u[0] - pad])
    mids = (u[:-1] + u[1:]) / 2.0
    return np.concatenate([[u[0] + (u[0] - u[1]) / 2.0], mids, [u[-1] - (u[-2] - u[-1]) / 2.0]])


@dataclass(frozen=True)
class ThresholdTable(_ConfusionRates):
    """Every distinct operating point of a labelled score set, by decreasing threshold.

    All arrays have shape ``(k + 1,)`` for ``k`` distinct scores (see :func:`candidate_thresholds`);
    ``tp``/``fp`` grow and ``fn``/``tn`` shrink along the rows. The rates (``sensitivity``,
    ``specificity``, ``fpr``, ``precision``, ``npv``, ``f1``, ``accuracy``) are arrays of the same
    shape, NaN where undefined.
    """

    threshold: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray

    def __len__(self) -> int:
        return int(self.threshold.size)

    def row(self, i: int) -> OperatingPoint:
        """Row ``i`` as an :class:`OperatingPoint`."""
        return OperatingPoint(float(self.threshold[i]), int(self.tp[i]), int(self.fp[i]), int(self.tn[i]),
                              int(self.fn[i]))

    def to_rows(self) -> list[dict]:
        """One :meth:`OperatingPoint.to_dict` per row (e.g. for a CSV or a DataFrame)."""
        return [self.row(i).to_dict() for i in range(len(self))]


def threshold_table(y_true, scores) -> ThresholdTable:
    """Confusion counts at every candidate threshold of ``scores`` (see :func:`candidate_thresholds`).

    Parameters
    ----------
    y_true : array_like, shape (n,)
        1 / True / ``"abnormal"`` = abnormal.
    scores : array_like of float, shape (n,)
        Scan scores; non-finite ones are left out.
    """
    y, s = _labelled(y_true, scores)
    t = candidate_thresholds(s)
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    tp = pos.size - np.searchsorted(pos, t, side="right")  # number of abnormal scores > t
    fp = neg.size - np.searchsorted(neg, t, side="right")
    return ThresholdTable(t, tp.astype(int), fp.astype(int), (neg.size - fp).astype(int), (pos.size - tp).astype(int))


@dataclass(frozen=True)
class Curves:
    """ROC and precision-recall curves of labelled scores, with their areas.

    ``fpr``, ``tpr``, ``precision``, ``thresholds`` have shape ``(k + 1,)`` (rows of
    :func:`threshold_table`, threshold decreasing); ``recall`` is ``tpr``. Where nothing is flagged
    the precision is set to 1 (as in scikit-learn), so the PR curve starts at (0, 1). ``prevalence``
    is the fraction of abnormal scans (the PR curve of a random ranking).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    thresholds: np.ndarray
    auroc: float
    auprc: float
    prevalence: float

    @property
    def recall(self) -> np.ndarray:
        return self.tpr


def roc_pr_curves(y_true, scores) -> Curves:
    """ROC and PR curves over :func:`candidate_thresholds`, with AUROC and AUPRC (average precision).

    Raises :class:`~aeanomaly.errors.ConfigError` unless both classes are present.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = _labelled(y_true, scores)
    _both_classes(y)
    tab = threshold_table(y, s)
    prec = np.where(np.isnan(tab.precision), 1.0, tab.precision)
    return Curves(tab.fpr, tab.sensitivity, prec, tab.threshold, float(roc_auc_score(y, s)),
                  float(average_precision_score(y, s)), float(y.mean()))


def threshold_for_fpr(y_true, scores, target_fpr: float) -> float:
    """The most sensitive threshold whose *observed* FPR on the labelled normals is ≤ ``target_fpr``.

    Only the normal scans matter for the constraint; among thresholds meeting it the lowest (most
    sensitive) is returned, placed midway in the gap to the next higher score. Compare
    :func:`calibrated_threshold`, which sets the FPR on the bundle's held-out normal scores instead.

    Parameters
    ----------
    y_true, scores : array_like, shape (n,)
        Labels and scan scores; at least one normal scan.
    target_fpr : float
        Maximum false-positive rate in [0, 1).
    """
    if not 0.0 <= float(target_fpr) < 1.0:
        raise ConfigError(f"target_fpr must be in [0, 1), got {target_fpr!r}")
    y, s = _labelled(y_true, scores)
    if y.all():
        raise ConfigError("threshold_for_fpr needs at least one normal scan")
    tab = threshold_table(y, s)
    ok = np.flatnonzero(tab.fp <= math.floor(float(target_fpr) * (tab.fp[0] + tab.tn[0]) + 1e-9))
    return float(tab.threshold[ok[-1]])


def threshold_for_sensitivity(y_true, scores, min_sensitivity: float) -> float:
    """The most specific threshold whose sensitivity on the labelled abnormals is ≥ ``min_sensitivity``.

    Among thresholds meeting the constraint the highest (fewest false positives) is returned, placed
    midway in the gap to the next lower score.

    Parameters
    ----------
    y_true, scores : array_like, shape (n,)
        Labels and scan scores; at least one abnormal scan.
    min_sensitivity : float
        In [0, 1].
    """
    if not 0.0 <= float(min_sensitivity) <= 1.0:
        raise ConfigError(f"min_sensitivity must be in [0, 1], got {min_sensitivity!r}")
    y, s = _labelled(y_true, scores)
    if not y.any():
        raise ConfigError("threshold_for_sensitivity needs at least one abnormal scan")
    tab = threshold_table(y, s)
    need = math.ceil(float(min_sensitivity) * int(y.sum()) - 1e-9)
    return float(tab.threshold[np.flatnonzero(tab.tp >= need)[0]])


def choose_threshold(y_true, scores, *, target_fpr: float | None = None,
                     min_sensitivity: float | None = None) -> float:
    """:func:`threshold_for_fpr` or :func:`threshold_for_sensitivity`: give exactly one of the two."""
    if (target_fpr is None) == (min_sensitivity is None):
        raise ConfigError("give exactly one of target_fpr or min_sensitivity")
    if target_fpr is not None:
        return threshold_for_fpr(y_true, scores, target_fpr)
    return threshold_for_sensitivity(y_true, scores, min_sensitivity)


def calibrated_threshold(calibrator, target_fpr: float) -> float:
    """Threshold of a fitted :class:`~aeanomaly.calibrate.Calibrator` refitted at ``target_fpr`` on its
    own normal scores (what ``AnomalyDetector.set_threshold(target_fpr=…)`` would use); ``+inf`` when
    the empirical method cannot reach that rate with its number of normals."""
    return float(calibrator.with_target_fpr(float(target_fpr)).threshold_)


# ----------------------------------------------------------------------------------------- tuner
class ThresholdTuner:
    """Labelled scan scores and the detector's calibrator, for interactive threshold tuning.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        1 / True / ``"abnormal"`` = abnormal.
    scores : array_like of float, shape (n,)
        Scan scores of the same scans (``AnomalyDetector.decision_function`` or ``ScanResult.scan_score``).
    calibrator : Calibrator, optional
        The detector's fitted scan calibrator (``det.calibrator_``), for target-FPR thresholds.
    names : sequence of str, optional
        One name per scan (for tables).

    Attributes
    ----------
    y_, scores_ : np.ndarray, shape (m,)
        The labelled scans with a finite score (bool, float).
    table_ : ThresholdTable
    curves_ : Curves
    """

    def __init__(self, y_true, scores, calibrator=None, names: Sequence[str] | None = None):
        self.y_, self.scores_ = _labelled(y_true, scores)
        _both_classes(self.y_)
        s = np.asarray(scores, dtype=float).ravel()
        keep = np.isfinite(s)
        if names is not None and len(names) != s.size:
            raise ConfigError(f"{len(names)} names given for {s.size} scores")
        self.names_ = [str(n) for n, k in zip(names, keep) if k] if names is not None else None
        self.calibrator = calibrator
        self.table_ = threshold_table(self.y_, self.scores_)
        self.curves_ = roc_pr_curves(self.y_, self.scores_)

    @property
    def normal_scores(self) -> np.ndarray:
        return self.scores_[~self.y_]

    @property
    def abnormal_scores(self) -> np.ndarray:
        return self.scores_[self.y_]

    @property
    def calibrated(self) -> float | None:
        """The calibrator's current threshold (``threshold_``), or None without a calibrator."""
        return None if self.calibrator is None else float(self.calibrator.threshold_)

    def at(self, threshold: float) -> OperatingPoint:
        """The operating point of ``threshold`` on the labelled scans."""
        return operating_point(self.y_, self.scores_, threshold)

    def threshold_for_target_fpr(self, target_fpr: float) -> float:
        """The calibrator's threshold for ``target_fpr`` (see :func:`calibrated_threshold`)."""
        if self.calibrator is None:
            raise ConfigError("this tuner has no calibrator; pass det.calibrator_")
        return calibrated_threshold(self.calibrator, target_fpr)

    def threshold_for_fpr(self, target_fpr: float) -> float:
        """See :func:`threshold_for_fpr` (observed FPR on the labelled normals)."""
        return threshold_for_fpr(self.y_, self.scores_, target_fpr)

    def threshold_for_sensitivity(self, min_sensitivity: float) -> float:
        """See :func:`threshold_for_sensitivity`."""
        return threshold_for_sensitivity(self.y_, self.scores_, min_sensitivity)

    def outcomes(self, threshold: float) -> np.ndarray:
        """``"TP"``, ``"FP"``, ``"TN"`` or ``"FN"`` per labelled scan, str ``(m,)``."""
        pred = self.scores_ > float(threshold)
        out = np.where(pred, np.where(self.y_, "TP", "FP"), np.where(self.y_, "FN", "TN"))
        return out.astype("<U2")

    def score_range(self) -> tuple[float, float]:
        """(low, high) covering the labelled scores, the calibration normals and the calibrated threshold."""
        cal = self.calibrator
        return padded_range(self.scores_, None if cal is None else cal.scores_,
                            None if cal is None else cal.threshold_)
