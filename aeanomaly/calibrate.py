"""Threshold calibration on scores of normal scans the model never saw in training.

``Calibrator(method, target_fpr).fit(normal_scores)`` gives ``threshold_``, ``p_value(s)`` and
``predict(s)``. Higher scores are more anomalous.

* ``empirical`` is split-conformal: with ``n`` normal scores and ``α = target_fpr`` the threshold is the
  ``k = ⌈(n + 1)(1 − α)⌉``-th smallest normal score and ``p(s) = (1 + #{normal ≥ s}) / (n + 1)``. A
  new normal scan exchangeable with the calibration ones is flagged with probability at most α.
  When ``k > n`` (fewer than ``1/α − 1`` normals) no finite threshold reaches α: ``threshold_`` is
  ``+inf``, ``achievable_`` is False and a warning says how many normals are needed.
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

METHODS = ("empirical", "gamma", "lognormal", "kde")


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
    method : {"empirical", "gamma", "lognormal", "kde"}
    target_fpr : float
        α in (0, 1): the false-positive rate the threshold is set for.
    """

    def __init__(self, method: str = "empirical", target_fpr: float = 0.05):
        self.method = method
        self.target_fpr = target_fpr

    # -- fitting -----------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not (isinstance(self.target_fpr, (int, float)) and 0.0 < float(self.target_fpr) < 1.0):
            raise ConfigError(f"target_fpr must be in (0, 1), got {self.target_fpr!r}")

    def fit(self, normal_scores) -> "Calibrator":
        """Fit on scores of normal scans (1-D, finite, at least 2)."""
        self._validate()
        s = np.asarray(normal_scores, dtype=float).ravel()
        if not np.all(np.isfinite(s)):
            raise ConfigError(f"normal scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
        if s.size < 2:
            raise ConfigError(f"calibration needs at least 2 normal scores, got {s.size}")
        self.scores_ = np.sort(s)
        self.n_ = int(s.size)
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
        if self.method == "empirical":
            return {}
        if self.method == "kde":
            return {"bandwidth": float(stats.gaussian_kde(s).factor)}
        loc = self._shift()
        if np.ptp(s) == 0:
            raise ConfigError(f"all {s.size} normal scores are equal; a {self.method} fit needs spread")
        if self.method == "gamma":
            a, _, scale = stats.gamma.fit(s, floc=loc)
            return {"a": float(a), "loc": float(loc), "scale": float(scale)}
        shape, _, scale = stats.lognorm.fit(s, floc=loc)
        return {"s": float(shape), "loc": float(loc), "scale": float(scale)}

    def _dist(self):
        p = self.params_
        if self.method == "gamma":
            return stats.gamma(p["a"], loc=p["loc"], scale=p["scale"])
        if self.method == "lognormal":
            return stats.lognorm(p["s"], loc=p["loc"], scale=p["scale"])
        return None

    def _kde(self):
        return stats.gaussian_kde(self.scores_, bw_method=self.params_["bandwidth"])

    def _fitted_threshold(self) -> float:
        a = float(self.target_fpr)
        if self.method == "empirical":
            return conformal_threshold(self.scores_, a)
        if self.method == "kde":
            kde = self._kde()
            sd = float(np.sqrt(kde.covariance[0, 0]))
            lo, hi = self.scores_[0] - 10 * sd, self.scores_[-1] + 10 * sd
            for _ in range(80):  # bisection on the survival function
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if self._sf(np.array([mid]))[0] > a else (lo, mid)
            return float(hi)
        return float(self._dist().isf(a))

    def _sf(self, s: np.ndarray) -> np.ndarray:
        if self.method == "kde":
            kde = self._kde()
            sd = float(np.sqrt(kde.covariance[0, 0]))
            return np.array([float(stats.norm.sf(v, loc=self.scores_, scale=sd).mean()) for v in s])
        return self._dist().sf(s)

    def _goodness_of_fit(self) -> dict:
        gof = {"in_sample_fpr": float(np.mean(self.scores_ > self.threshold_))}
        if self.method in ("gamma", "lognormal"):
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
        if self.method == "empirical":
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
        if self.method in ("gamma", "lognormal"):
            return self._dist().pdf(x)
        if np.ptp(self.scores_) == 0:
            return np.zeros_like(x)
        return stats.gaussian_kde(self.scores_)(x.ravel()).reshape(x.shape)

    def observed_fpr(self, normal_scores) -> float:
        """Fraction of the given normal scores flagged at the current threshold."""
        return float(np.mean(self.predict(np.asarray(normal_scores, dtype=float))))

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
            return Calibrator(self.method, alpha).fit(self.scores_)

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-serialisable state; an infinite threshold is stored as ``null``."""
        self._check()
        return {
            "method": self.method, "target_fpr": float(self.target_fpr),
            "threshold": float(self.threshold_) if np.isfinite(self.threshold_) else None,
            "scores": [float(v) for v in self.scores_], "params": self.params_, "gof": self.gof_,
            "achievable": self.achievable_, "manual": self.manual_, "reason": self.reason_,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibrator":
        cal = cls(d["method"], d["target_fpr"])
        cal._validate()
        cal.scores_ = np.sort(np.asarray(d["scores"], dtype=float))
        cal.n_ = int(cal.scores_.size)
        cal.params_ = dict(d.get("params", {}))
        cal.threshold_ = float("inf") if d.get("threshold") is None else float(d["threshold"])
        cal.achievable_ = bool(d.get("achievable", np.isfinite(cal.threshold_)))
        cal.manual_ = bool(d.get("manual", False))
        cal.reason_ = str(d.get("reason", ""))
        cal.gof_ = dict(d.get("gof", {}))
        return cal

    def __repr__(self) -> str:
        fitted = f", threshold_={self.threshold_:.5g}, n_={self.n_}" if hasattr(self, "scores_") else ""
        return f"Calibrator(method={self.method!r}, target_fpr={self.target_fpr}{fitted})"

    def __copy__(self):
        return copy.deepcopy(self)
