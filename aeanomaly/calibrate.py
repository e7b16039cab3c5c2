"""Threshold calibration on scores of normal scans the model never saw in training.

``Calibrator(method, target_fpr).fit(normal_scores)`` gives ``threshold_``, ``p_value(s)`` and
``predict(s)``. Higher scores are more anomalous.

* ``empirical`` is split-conformal: with ``n`` normal scores and ``α = target_fpr`` the threshold is the
  ``k = ⌈(n + 1)(1 − α)⌉``-th smallest normal score and ``p(s) = (1 + #{normal ≥ s}) / (n + 1)``. A
  new normal scan exchangeable with the calibration ones is flagged with probability at most α.
  When ``k > n`` (fewer than ``1/α − 1`` normals) no finite threshold reaches α: ``threshold_`` is
  ``+inf``, ``achievable_`` is False and a warning says how many normals are needed.
* ``auto`` chooses itself: ``empirical`` when there are enough normal scores for the target FPR
  (``n ≥ ⌈1/α − 1⌉``), else ``gamma`` with a warning that says how many normal scans the guarantee needs.
* ``gamma`` / ``lognormal`` fit a parametric distribution (scipy.stats), ``kde`` a Gaussian kernel
  density; ``threshold_`` is its (1 − α) quantile and ``p_value`` its survival function. They smooth the
  tail when n is small, at the price of a distributional assumption (see ``gof_``).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
from scipy import stats

from .errors import ConfigError, NotFittedError
from .scoring import SLICE_NORMS, ScoringParams, scan_score

METHODS = ("empirical", "gamma", "lognormal", "kde")
#: What a :class:`Calibrator` may be asked for (``auto`` chooses one of :data:`METHODS` in ``fit``).
CHOICES = ("auto", *METHODS)
#: Inference arithmetics a calibration may be computed in.
PRECISIONS = ("float32", "bfloat16")
#: Per calibration scan, the fraction of highest heatmap values kept to find the pixel threshold.
TAIL_FRACTION = 0.02


def conformal_minimum(alpha: float) -> int:
    """Fewest normal scores with which split-conformal calibration reaches FPR ``alpha``: ⌈1/α − 1⌉."""
    return int(math.ceil(1.0 / float(alpha) - 1.0 - 1e-9))


def choose_method(n: int, alpha: float) -> str:
    """``empirical`` (split-conformal) with at least :func:`conformal_minimum` scores, else ``gamma``."""
    return "empirical" if n >= conformal_minimum(alpha) else "gamma"


def conformal_threshold(scores, alpha: float) -> float:
    """The ⌈(n + 1)(1 − α)⌉-th smallest score (1-based), or +inf when that exceeds n."""
    s = np.sort(np.asarray(scores, dtype=float))
    k = math.ceil((len(s) + 1) * (1.0 - alpha) - 1e-12)
    return float(s[k - 1]) if k <= len(s) else float("inf")


def benjamini_hochberg(p_values, q: float = 0.05) -> np.ndarray:
    """Benjamini–Hochberg step-up procedure: rejections (bool) in input order at FDR ``q``."""
    p = np.asarray(p_values, dtype=float)
    n = p.size
    if n == 0:
        return np.zeros(0, bool)
    order = np.argsort(p, kind="stable")
    passed = p[order] <= q * np.arange(1, n + 1) / n
    out = np.zeros(n, bool)
    if passed.any():
        out[order[: np.flatnonzero(passed).max() + 1]] = True
    return out


class Calibrator:
    """Scan- or slice-level threshold calibrator (sklearn conventions).

    Parameters
    ----------
    method : {"auto", "empirical", "gamma", "lognormal", "kde"}
        ``auto`` chooses in :meth:`fit` (see :func:`choose_method`); the choice is ``method_``.
    target_fpr : float
        α in (0, 1): the false-positive rate the threshold is set for.
    """

    def __init__(self, method: str = "empirical", target_fpr: float = 0.05):
        self.method = method
        self.target_fpr = target_fpr

    # -- fitting -----------------------------------------------------------------------------
    def check_params(self) -> None:
        """ConfigError unless ``method`` and ``target_fpr`` are valid."""
        if self.method not in CHOICES:
            raise ConfigError(f"calibration method must be one of {', '.join(CHOICES)}, got {self.method!r}")
        if not (isinstance(self.target_fpr, (int, float)) and 0.0 < float(self.target_fpr) < 1.0):
            raise ConfigError(f"target_fpr must be in (0, 1), got {self.target_fpr!r}")

    def fit(self, normal_scores) -> "Calibrator":
        """Fit on scores of normal scans (1-D, finite, at least 2)."""
        self.check_params()
        s = np.asarray(normal_scores, dtype=float).ravel()
        if not np.all(np.isfinite(s)):
            raise ConfigError(f"normal scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
        if s.size < 2:
            raise ConfigError(f"calibration needs at least 2 normal scores, got {s.size}")
        self.scores_ = np.sort(s)
        self.n_ = int(s.size)
        self.method_ = self.method if self.method != "auto" else choose_method(self.n_, float(self.target_fpr))
        if self.method == "auto" and self.method_ != "empirical":
            warnings.warn(
                f"{self.n_} normal calibration scores are too few for the conformal guarantee at a "
                f"false-positive rate of {self.target_fpr}: a {self.method_} fit is used instead, whose FPR "
                f"is only as good as its distributional assumption. Calibrate on at least "
                f"{conformal_minimum(float(self.target_fpr))} normal scans for the guarantee.",
                UserWarning, stacklevel=2,
            )
        self.params_ = self._fit_params()
        self.manual_ = False
        self.reason_ = ""
        self.threshold_ = self._fitted_threshold()
        self.achievable_ = bool(np.isfinite(self.threshold_))
        if not self.achievable_:
            need = math.ceil(1.0 / self.target_fpr - 1.0 - 1e-12)
            warnings.warn(
                f"{self.n_} normal scores cannot reach a false-positive rate of {self.target_fpr} with the "
                f"empirical (conformal) method: nothing will be flagged. Use at least {need} normal scans, "
                "or a parametric method (gamma, lognormal, kde).",
                UserWarning, stacklevel=2,
            )
        self.gof_ = self._goodness_of_fit()
        return self

    def _shift(self) -> float:
        """Location so that shifted scores are positive (gamma / lognormal need s > loc)."""
        lo, hi = float(self.scores_[0]), float(self.scores_[-1])
        return 0.0 if lo > 0 else lo - 1e-3 * max(hi - lo, 1e-12)

    def _fit_params(self) -> dict:
        s = self.scores_
        if self.method_ == "empirical":
            return {}
        if self.method_ == "kde":
            return {"bandwidth": float(stats.gaussian_kde(s).factor)}
        loc = self._shift()
        if np.ptp(s) == 0:
            raise ConfigError(f"all {s.size} normal scores are equal; a {self.method_} fit needs spread")
        if self.method_ == "gamma":
            a, _, scale = stats.gamma.fit(s, floc=loc)
            return {"a": float(a), "loc": float(loc), "scale": float(scale)}
        shape, _, scale = stats.lognorm.fit(s, floc=loc)
        return {"s": float(shape), "loc": float(loc), "scale": float(scale)}

    def _dist(self):
        p = self.params_
        if self.method_ == "gamma":
            return stats.gamma(p["a"], loc=p["loc"], scale=p["scale"])
        if self.method_ == "lognormal":
            return stats.lognorm(p["s"], loc=p["loc"], scale=p["scale"])
        return None

    def _kde(self):
        return stats.gaussian_kde(self.scores_, bw_method=self.params_["bandwidth"])

    def _fitted_threshold(self) -> float:
        a = float(self.target_fpr)
        if self.method_ == "empirical":
            return conformal_threshold(self.scores_, a)
        if self.method_ == "kde":
            kde = self._kde()
            sd = float(np.sqrt(kde.covariance[0, 0]))
            lo, hi = self.scores_[0] - 10 * sd, self.scores_[-1] + 10 * sd
            for _ in range(80):  # bisection on the survival function
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if self._sf(np.array([mid]))[0] > a else (lo, mid)
            return float(hi)
        return float(self._dist().isf(a))

    def _sf(self, s: np.ndarray) -> np.ndarray:
        if self.method_ == "kde":
            kde = self._kde()
            sd = float(np.sqrt(kde.covariance[0, 0]))
            return np.array([float(stats.norm.sf(v, loc=self.scores_, scale=sd).mean()) for v in s])
        return self._dist().sf(s)

    def _goodness_of_fit(self) -> dict:
        gof = {"in_sample_fpr": float(np.mean(self.scores_ > self.threshold_))}
        if self.method_ in ("gamma", "lognormal"):
            ks = stats.kstest(self.scores_, self._dist().cdf)
            gof.update(ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue))
        return gof

    # -- use -----------------------------------------------------------------------------------
    def _check(self) -> None:
        if not hasattr(self, "scores_"):
            raise NotFittedError("this Calibrator is not fitted yet: call fit(normal_scores) first")

    def p_value(self, scores) -> np.ndarray:
        """p-values (float, same shape as ``scores``): small = unlike the normal scores."""
        self._check()
        s = np.asarray(scores, dtype=float)
        flat = s.ravel()
        if self.method_ == "empirical":
            ge = self.n_ - np.searchsorted(self.scores_, flat, side="left")
            p = (1.0 + ge) / (self.n_ + 1.0)
        else:
            p = np.clip(self._sf(flat), 0.0, 1.0)
        return p.reshape(s.shape)

    def predict(self, scores) -> np.ndarray:
        """True where a score is flagged anomalous (``score > threshold_``)."""
        self._check()
        return np.asarray(scores, dtype=float) > self.threshold_

    def density(self, x) -> np.ndarray:
        """Fitted density of normal scores at ``x`` (for plots). For ``empirical`` a Gaussian KDE of
        the normal scores, since the conformal method itself assumes no density."""
        self._check()
        x = np.asarray(x, dtype=float)
        if self.method_ in ("gamma", "lognormal"):
            return self._dist().pdf(x)
        if np.ptp(self.scores_) == 0:
            return np.zeros_like(x)
        return stats.gaussian_kde(self.scores_)(x.ravel()).reshape(x.shape)

    def fpr_upper_bound(self, confidence: float = 0.9) -> float:
        """The false-positive rate this threshold stays under with probability ``confidence`` over the
        draw of the calibration normals (distribution-free: exchangeable, continuous scores).

        The conformal guarantee, FPR ≤ α, holds *on average* over calibration sets; one set's threshold
        can be luckier or unluckier. When the threshold is at or above the k-th smallest of n normal
        scores, the FPR of that order statistic is Beta(n + 1 − k, k) distributed (Vovk 2012,
        "training-conditional" validity), and the threshold's own FPR is no larger; this is that Beta
        quantile. With 27 normals at α = 0.05 (the threshold is their maximum) it is 0.082 at 90 %;
        with 200, 0.070. 1.0 when the threshold is below every normal score, 0.0 when it is infinite."""
        self._check()
        if not 0.0 < float(confidence) < 1.0:
            raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
        if self.threshold_ == np.inf:
            return 0.0
        k = int(np.sum(self.scores_ <= self.threshold_))
        if k == 0:
            return 1.0
        return float(stats.beta.ppf(float(confidence), self.n_ + 1 - k, k))

    def observed_fpr(self, normal_scores) -> float:
        """Fraction of the given normal scores flagged at the current threshold."""
        return float(np.mean(self.predict(np.asarray(normal_scores, dtype=float))))

    def fpr_check(self, normal_scores, alpha: float = 0.05) -> dict:
        """Whether new normal scans are flagged as often as the calibration normals allow.

        With ``k`` of the ``n`` calibration scores at or below the threshold, a normal scan exchangeable
        with them scores above the ``k``-th smallest calibration score with a probability that is
        Beta(n + 1 − k, k) distributed over the draw of the calibration set (the argument of
        :meth:`fpr_upper_bound`), so the number of ``m`` new normals above the threshold is at most
        beta-binomial(m, n + 1 − k, k). ``p_excess`` is that distribution's tail at the observed count:
        distribution-free (exchangeable, continuous scores), whatever the method, and it counts both
        the new normals' and the calibration set's sampling spread. A small ``p_excess`` says these
        normals score higher than the calibration normals did (another scanner, protocol or population):
        the observed false-positive rate will exceed the target; recalibrate on normals like them.

        Returns ``{"n_normal", "n_flagged", "observed_fpr", "ci95"`` (Clopper–Pearson interval of the
        observed rate), ``"target_fpr", "p_excess", "p_shift"`` (one-sided Mann–Whitney U test that these
        normals' scores are higher than the calibration normals', over all scores, not only the
        threshold), ``"excess"`` (``p_excess < alpha``), ``"shifted"`` (``p_shift < alpha``)``}``; the rates
        and p-values are None without a finite score. The rank test sees a shift of the whole distribution
        with fewer normals than the count at the threshold needs; each flag alone is wrong in at most a
        fraction ``alpha`` of checks of exchangeable normals.
        """
        self._check()
        s = np.asarray(normal_scores, dtype=float).ravel()
        s = s[np.isfinite(s)]
        m = int(s.size)
        x = int(np.sum(self.predict(s))) if m else 0
        out = {"n_normal": m, "n_flagged": x, "observed_fpr": None, "ci95": None,
               "target_fpr": float(self.target_fpr), "p_excess": None, "p_shift": None, "excess": False,
               "shifted": False}
        if m == 0:
            return out
        ci = stats.binomtest(x, m).proportion_ci(confidence_level=0.95, method="exact")
        k = int(np.sum(self.scores_ <= self.threshold_))
        if x == 0 or k == 0:  # nothing flagged, or a threshold below every calibration score flags all
            p_excess = 1.0
        else:
            p_excess = float(stats.betabinom.sf(x - 1, m, self.n_ + 1 - k, k))
        p_shift = float(stats.mannwhitneyu(s, self.scores_, alternative="greater").pvalue)
        out.update(observed_fpr=x / m, ci95=[float(ci.low), float(ci.high)], p_excess=p_excess, p_shift=p_shift,
                   excess=bool(p_excess < float(alpha)), shifted=bool(p_shift < float(alpha)))
        return out

    def set_threshold(self, threshold: float, reason: str = "") -> "Calibrator":
        """Use a manual operating point; p-values stay those of the fitted distribution."""
        self._check()
        if not np.isfinite(threshold) and threshold != np.inf:
            raise ConfigError(f"threshold must be a number, got {threshold!r}")
        self.threshold_ = float(threshold)
        self.manual_ = True
        self.reason_ = str(reason)
        self.gof_ = {**self.gof_, "in_sample_fpr": float(np.mean(self.scores_ > self.threshold_))}
        return self

    def with_target_fpr(self, alpha: float) -> "Calibrator":
        """A copy refitted on the same normal scores at another target FPR."""
        self._check()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return Calibrator(self.method_, alpha).fit(self.scores_)

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-serialisable state; an infinite threshold is stored as ``null``."""
        self._check()
        return {
            "method": self.method_, "target_fpr": float(self.target_fpr),
            "threshold": float(self.threshold_) if np.isfinite(self.threshold_) else None,
            "scores": [float(v) for v in self.scores_], "params": self.params_, "gof": self.gof_,
            "achievable": self.achievable_, "manual": self.manual_, "reason": self.reason_,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibrator":
        cal = cls(d["method"], d["target_fpr"])
        cal.check_params()
        if cal.method == "auto":
            raise ConfigError("a stored calibrator must name the method it was fitted with, not 'auto'")
        cal.scores_ = np.sort(np.asarray(d["scores"], dtype=float))
        cal.n_ = int(cal.scores_.size)
        cal.method_ = cal.method
        cal.params_ = dict(d.get("params", {}))
        cal.threshold_ = float("inf") if d.get("threshold") is None else float(d["threshold"])
        cal.achievable_ = bool(d.get("achievable", np.isfinite(cal.threshold_)))
        cal.manual_ = bool(d.get("manual", False))
        cal.reason_ = str(d.get("reason", ""))
        cal.gof_ = dict(d.get("gof", {}))
        return cal

    def __repr__(self) -> str:
        fitted = (f", method_={self.method_!r}, threshold_={self.threshold_:.5g}, n_={self.n_}"
                  if hasattr(self, "scores_") else "")
        return f"Calibrator(method={self.method!r}, target_fpr={self.target_fpr}{fitted})"

    def __copy__(self):
        return copy.deepcopy(self)


# ---------------------------------------------------------------------------------------------
# The pixel (lesion) threshold, and everything a detector's calibration holds
# ---------------------------------------------------------------------------------------------


def heatmap_tail(values: np.ndarray, fraction: float = TAIL_FRACTION) -> np.ndarray:
    """The highest ``⌈fraction · n⌉`` (at least one) of a normal scan's heatmap values in its mask.

    Parameters
    ----------
    values : np.ndarray
        1-D heatmap values of one normal scan (inside its scoring mask).
    fraction : float
        In (0, 1]; must exceed ``1 − pixel_quantile`` of :func:`pixel_threshold`.
    """
    v = np.asarray(values, dtype=np.float32).ravel()
    if v.size == 0:
        return v
    k = max(1, int(np.ceil(float(fraction) * v.size)))
    return np.partition(v, v.size - k)[v.size - k:]


def pixel_threshold(tails, n_pixels: int, quantile: float) -> float:
    """The pixel threshold: the ``quantile`` of all normal heatmap pixels, as the ``m``-th largest
    value with ``m = ⌈(1 − quantile) · n_pixels⌉``.

    Parameters
    ----------
    tails : sequence of np.ndarray
        Per normal scan, :func:`heatmap_tail` of its heatmap values; memory stays at
        ``TAIL_FRACTION`` of the pixels however many scans there are.
    n_pixels : int
        How many heatmap values the tails were taken from.
    quantile : float
        In (0, 1), e.g. 0.999: a 0.1 % pixel false-positive rate on normal tissue.

    Notes
    -----
    Exact when no scan holds more than its kept fraction of the ``m`` highest pixels of all scans
    (always so when ``1 − quantile`` ≤ ``TAIL_FRACTION`` and the highest pixels are spread over the
    scans); otherwise a lower bound of the exact value's rank, i.e. a slightly lower threshold.
    """
    if not 0.0 < float(quantile) < 1.0:
        raise ConfigError(f"pixel quantile must be in (0, 1), got {quantile}")
    parts = [np.asarray(t, np.float32).ravel() for t in tails]
    tail = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if tail.size == 0 or n_pixels < 1:
        raise ConfigError("no normal heatmap values inside the scoring region to learn a pixel threshold from")
    if not np.isfinite(tail).all():
        raise ConfigError("a normal heatmap holds NaN or infinite values")
    m = max(1, int(np.ceil((1.0 - float(quantile)) * int(n_pixels))))
    tail = np.sort(tail)[::-1]
    return float(tail[min(m, tail.size) - 1])


def check_residual_scale(value) -> None:
    """A fused heatmap's residual scale must be a positive finite number, or None (nothing fused)."""
    if value is not None and not (np.isfinite(value) and value > 0):
        raise ConfigError(f"residual_scale must be a positive number or None, got {value!r}")


class RegionSizeReference:
    """What normal slices score at each size of their scoring region, so that a slice is compared with
    normal slices of its own kind: ``(score − median(area)) / scale(area)``.

    In the lung window the region is the lungs, small at the apex and base, where partial-volume edges
    raise every residual, and large in mid-lung; a raw slice score therefore ranks slices partly by
    where they lie. ``fit`` takes normal slices' scores and region areas (pixels), splits them into
    ``n_bins`` quantile bins of log area (fewer when there are under ``min_per_bin`` slices a bin), and
    keeps each bin's median score and scale (1.4826 × the median absolute deviation); ``transform``
    interpolates both linearly in log area (constant beyond the outer bins' centres). NaN scores and
    empty regions give NaN.

    With ``pooled_spread`` every bin takes one scale, that of all slices' deviations from their own bin's
    median (interpolated as ``transform`` does): the location still follows the region size, the spread
    does not rest on the few slices of one bin (``slice_norm="location"``).
    """

    def __init__(self, n_bins: int = 4, min_per_bin: int = 6, pooled_spread: bool = False):
        self.n_bins = n_bins
        self.min_per_bin = min_per_bin
        self.pooled_spread = pooled_spread

    def fit(self, scores, areas) -> "RegionSizeReference":
        s, a = np.asarray(scores, float).ravel(), np.asarray(areas, float).ravel()
        if s.shape != a.shape:
            raise ConfigError(f"scores and areas differ in length ({s.size} vs {a.size})")
        ok = np.isfinite(s) & (a > 0)
        if ok.sum() < 2:
            raise ConfigError("the region-size reference needs at least 2 scored normal slices")
        s, la = s[ok], np.log(a[ok])
        nb = int(max(1, min(int(self.n_bins), s.size // max(int(self.min_per_bin), 1))))
        edges = np.quantile(la, np.linspace(0.0, 1.0, nb + 1))
        which = np.clip(np.searchsorted(edges, la, side="right") - 1, 0, nb - 1)
        spread = max(float(np.median(np.abs(s - np.median(s)))) * 1.4826, 1e-9)
        cen, med, scale = [], [], []
        for b in range(nb):
            v = s[which == b]
            if v.size == 0:
                continue
            m = float(np.median(v))
            cen.append(float(np.median(la[which == b])))
            med.append(m)
            scale.append(max(float(np.median(np.abs(v - m))) * 1.4826, 1e-3 * spread))
        self.log_area_, self.median_, self.scale_ = np.array(cen), np.array(med), np.array(scale)
        if self.pooled_spread:
            dev = s - np.interp(la, self.log_area_, self.median_)
            pooled = max(float(np.median(np.abs(dev - np.median(dev)))) * 1.4826, 1e-3 * spread)
            self.scale_ = np.full(len(cen), pooled)
        self.n_slices_ = int(s.size)
        return self

    def transform(self, scores, areas) -> np.ndarray:
        if not hasattr(self, "median_"):
            raise NotFittedError("RegionSizeReference is not fitted")
        s, a = np.asarray(scores, float), np.asarray(areas, float)
        la = np.log(np.where(a > 0, a, np.nan))
        med = np.interp(la, self.log_area_, self.median_)
        scale = np.interp(la, self.log_area_, self.scale_)
        return np.where(np.isfinite(la), (s - med) / scale, np.nan)

    def to_dict(self) -> dict:
        return {"n_bins": int(self.n_bins), "min_per_bin": int(self.min_per_bin), "n_slices": self.n_slices_,
                "pooled_spread": bool(self.pooled_spread),
                "log_area": self.log_area_.tolist(), "median": self.median_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "RegionSizeReference":
        ref = cls(int(d["n_bins"]), int(d["min_per_bin"]), bool(d.get("pooled_spread", False)))
        ref.log_area_, ref.median_, ref.scale_ = (np.asarray(d[k], float) for k in ("log_area", "median", "scale"))
        if not (ref.log_area_.size == ref.median_.size == ref.scale_.size > 0) or (ref.scale_ <= 0).any():
            raise ConfigError("the region-size reference is malformed")
        ref.n_slices_ = int(d.get("n_slices", 0))
        return ref


def region_areas(mask: np.ndarray) -> np.ndarray:
    """Pixels of the scoring mask per slice, ``(z,)`` float."""
    m = np.asarray(mask, bool)
    return m.reshape(len(m), -1).sum(axis=1).astype(float)


class NormalStats:
    """What calibration needs from normal scans, gathered one scan at a time (memory stays bounded).

    ``add`` takes one scored normal scan; the attributes are the scan scores, the finite slice scores,
    the heatmap tails and pixel count (for :func:`pixel_threshold`), the per-slice heatmap peaks (the
    reference of lesion severity), the sources, and per scan its slice scores with the scoring region's
    area per slice (for :class:`RegionSizeReference`).
    """

    def __init__(self):
        self.scan_scores: list[float] = []
        self.slice_scores: list[float] = []
        self.tails: list[np.ndarray] = []
        self.n_pixels = 0
        self.peaks: list[float] = []
        self.sources: list[str] = []
        self.per_scan: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, source: str, scan_score: float, slice_scores: np.ndarray, heatmap: np.ndarray,
            mask: np.ndarray) -> None:
        """One normal scan: its scan score, ``(z,)`` slice scores, ``(z, y, x)`` heatmap and bool mask."""
        sl = np.asarray(slice_scores, float)
        heat, m = np.asarray(heatmap), np.asarray(mask, bool)
        vals = heat[m]
        self.scan_scores.append(float(scan_score))
        self.slice_scores.extend(sl[np.isfinite(sl)].tolist())
        self.n_pixels += int(vals.size)
        self.tails.append(heatmap_tail(vals))
        scored = m.reshape(len(m), -1).any(axis=1)
        self.peaks.extend(heat.reshape(len(heat), -1).max(axis=1)[scored].astype(float).tolist())
        self.sources.append(str(source))
        self.per_scan.append((sl.copy(), region_areas(m)))

    def __len__(self) -> int:
        return len(self.scan_scores)


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _finite_or_none(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


class Calibration:
    """A fitted detector's operating point: scan- and slice-level calibrators, the pixel threshold,
    the normal slice peaks, the calibration scans, the inference precision, a log of every change, and
    (``slice_norm="area"``) the :class:`RegionSizeReference` that slice scores are normalised with
    before the calibrators see them (``reference``; None: raw slice scores), and for a heatmap that fuses
    a segmenter's probability with the residual, the residual's scale on the same normals
    (``residual_scale``: the residual heatmap's pixel threshold; None where nothing is fused).

    Build with :meth:`fit` (from :class:`NormalStats`) or :meth:`from_dict` (calibration.json); change
    with :meth:`with_target_fpr` / :meth:`with_threshold`, which return new objects.
    """

    def __init__(self, scan: Calibrator, slice: Calibrator, pixel_threshold: float, pixel_quantile: float,
                 normal_peaks, sources, precision: str = "float32", log=(), reference=None,
                 residual_scale: float | None = None):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        check_residual_scale(residual_scale)
        self.scan = scan
        self.slice = slice
        self.pixel_threshold = float(pixel_threshold)
        self.pixel_quantile = float(pixel_quantile)
        self.normal_peaks = np.sort(np.asarray(normal_peaks, float))
        self.sources = [str(s) for s in sources]
        self.precision = precision
        self.log = [dict(e) for e in log]
        self.reference = reference
        self.residual_scale = None if residual_scale is None else float(residual_scale)

    def normalised(self, slice_scores, mask) -> np.ndarray:
        """Slice scores as the calibrators take them: through the region-size reference when there is
        one (``mask`` is the scoring mask ``(z, y, x)``), else unchanged."""
        s = np.asarray(slice_scores, float)
        return s if self.reference is None else self.reference.transform(s, region_areas(mask))

    @property
    def target_fpr(self) -> float:
        return float(self.scan.target_fpr)

    @classmethod
    def fit(cls, stats: NormalStats, *, target_fpr: float, method: str = "auto", pixel_quantile: float = 0.999,
            precision: str = "float32", note: str = "fit", log=(), slice_norm: str = "none",
            scan_aggregation: str = ScoringParams.scan_aggregation,
            residual_scale: float | None = None) -> "Calibration":
        """Fit on the statistics of held-out normal scans (at least 2 scorable ones). With
        ``slice_norm="area"`` (``"location"``: with one pooled spread) a :class:`RegionSizeReference` is
        fitted on their slices first and the scan scores are aggregated again (``scan_aggregation``, the
        scoring default unless given: it must be the detector's) from the normalised slice scores. ``residual_scale``: the one ``stats`` were scored
        with, kept (see the class)."""
        if slice_norm not in SLICE_NORMS:
            raise ConfigError(f"slice_norm must be one of {', '.join(SLICE_NORMS)}, got {slice_norm!r}")
        scores = np.asarray(stats.scan_scores, float)
        slice_values = np.asarray(stats.slice_scores, float)
        reference = None
        if slice_norm in ("area", "location"):
            reference = RegionSizeReference(pooled_spread=slice_norm == "location").fit(
                np.concatenate([v for v, _ in stats.per_scan]), np.concatenate([a for _, a in stats.per_scan]))
            per = [reference.transform(v, a) for v, a in stats.per_scan]
            scores = np.array([scan_score(v, scan_aggregation) for v in per])
            slice_values = np.concatenate(per)
            slice_values = slice_values[np.isfinite(slice_values)]
        if np.isfinite(scores).sum() < 2:
            raise ConfigError("calibration needs at least 2 scorable held-out normal scans")
        scan = Calibrator(method, target_fpr).fit(scores)
        with warnings.catch_warnings():  # thousands of slices: the slice-level warning says nothing new
            warnings.simplefilter("ignore", UserWarning)
            sl = Calibrator(method, target_fpr).fit(slice_values)
        thr = pixel_threshold(stats.tails, stats.n_pixels, pixel_quantile)
        entry = {"when": _now(), "what": note, "method": scan.method_, "target_fpr": float(target_fpr),
                 "threshold": _finite_or_none(scan.threshold_), "n_scans": int(len(scores)), "slice_norm": slice_norm}
        return cls(scan, sl, thr, pixel_quantile, stats.peaks, stats.sources, precision, [*log, entry], reference,
                   residual_scale)

    def with_target_fpr(self, alpha: float, reason: str = "") -> "Calibration":
        """Refitted on the same normal scores at another target FPR."""
        new = Calibration(self.scan.with_target_fpr(alpha), self.slice.with_target_fpr(alpha), self.pixel_threshold,
                          self.pixel_quantile, self.normal_peaks, self.sources, self.precision, self.log,
                          self.reference, self.residual_scale)
        new.log.append({"when": _now(), "what": "set_threshold", "reason": reason, "target_fpr": float(alpha),
                        "threshold": _finite_or_none(new.scan.threshold_)})
        return new

    def with_threshold(self, threshold: float, reason: str = "") -> "Calibration":
        """A manual scan-level threshold (p-values stay those of the fitted distribution)."""
        scan = copy.deepcopy(self.scan).set_threshold(float(threshold), reason=reason)
        new = Calibration(scan, self.slice, self.pixel_threshold, self.pixel_quantile, self.normal_peaks,
                          self.sources, self.precision, self.log, self.reference, self.residual_scale)
        new.log.append({"when": _now(), "what": "set_threshold", "reason": reason, "target_fpr": self.target_fpr,
                        "threshold": _finite_or_none(scan.threshold_)})
        return new

    def to_dict(self) -> dict:
        """The content of calibration.json."""
        return {
            "target_fpr": self.target_fpr,
            "precision": self.precision,  # the inference arithmetic the scores were computed in
            "scan": self.scan.to_dict(),
            "slice": self.slice.to_dict(),
            "pixel_threshold": self.pixel_threshold,
            "pixel_quantile": self.pixel_quantile,
            "normal_peaks": [float(v) for v in self.normal_peaks],
            "calibration_scans": self.sources,
            "log": self.log,
            "slice_reference": None if self.reference is None else self.reference.to_dict(),
            "residual_scale": self.residual_scale,
        }

    @classmethod
    def from_dict(cls, d: dict, pixel_quantile: float = 0.999) -> "Calibration":
        """From calibration.json (``pixel_quantile`` when an old file lacks it)."""
        try:
            return cls(Calibrator.from_dict(d["scan"]), Calibrator.from_dict(d["slice"]), float(d["pixel_threshold"]),
                       float(d.get("pixel_quantile", pixel_quantile)), d["normal_peaks"],
                       d.get("calibration_scans", []), str(d.get("precision", "float32")), d.get("log", []),
                       None if d.get("slice_reference") is None else RegionSizeReference.from_dict(d["slice_reference"]),
                       None if d.get("residual_scale") is None else float(d["residual_scale"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"calibration is incomplete or malformed: {type(err).__name__} {err}") from None
