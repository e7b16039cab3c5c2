"""Residual maps and slice / scan scores (pure functions). Higher is always more anomalous."""

from __future__ import annotations

import numpy as np
from .errors import ConfigError

SLICE_SCORES = ("mae", "p99", "p999", "topk")
SCAN_AGGREGATIONS = ("max", "top3", "top5", "mean")
RESIDUAL_SIGNS = ("abs", "positive", "negative")


def residual_map(x: np.ndarray, x_hat: np.ndarray, sign: str = "abs") -> np.ndarray:
    """Residual between input and reconstruction on the [0, 1] scale.

    Parameters
    ----------
    x, x_hat : np.ndarray
        Same shape, e.g. ``(z, size, size)``.
    sign : {"abs", "positive", "negative"}
        ``abs`` = ``|x - x̂|``; ``positive`` keeps only where the input is brighter than its
        reconstruction (nodules in a lung window), ``negative`` only where it is darker.

    Returns
    -------
    np.ndarray
        float32, same shape, ≥ 0.
    """
    if sign not in RESIDUAL_SIGNS:
        raise ConfigError(f"residual sign must be one of {RESIDUAL_SIGNS}, got {sign!r}")
    d = np.asarray(x, dtype=np.float32) - np.asarray(x_hat, dtype=np.float32)
    if sign == "abs":
        return np.abs(d)
    if sign == "positive":
        return np.maximum(d, 0.0)
    return np.maximum(-d, 0.0)


def slice_scores(residual: np.ndarray, mask: np.ndarray, method: str = "mae", topk_fraction: float = 0.01) -> np.ndarray:
    """One score per slice from ``(z, y, x)`` residuals restricted to ``mask``.

    Methods
    -------
    mae
        Mean absolute error in the mask (the seed papers' score).
    p99, p999
        99th / 99.9th percentile of the residual in the mask: catches small lesions.
    topk
        Mean of the highest ``topk_fraction`` of residuals in the mask.

    Slices whose mask is empty get NaN.
    """
    if method not in SLICE_SCORES:
        raise ConfigError(f"slice score must be one of {SLICE_SCORES}, got {method!r}")
    r = np.asarray(residual, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    out = np.full(r.shape[0], np.nan, dtype=np.float64)
    for k in range(r.shape[0]):
        v = r[k][m[k]]
        if v.size == 0:
            continue
        if method == "mae":
            out[k] = float(v.mean())
        elif method == "p99":
            out[k] = float(np.quantile(v, 0.99))
        elif method == "p999":
            out[k] = float(np.quantile(v, 0.999))
        else:
            n = max(1, int(round(topk_fraction * v.size)))
            out[k] = float(np.partition(v, v.size - n)[v.size - n :].mean())
    return out


def scan_score(slice_values: np.ndarray, method: str = "max") -> float:
    """Aggregate finite slice scores into one scan score (``max``, ``top3``, ``top5``, ``mean``).

    NaN slices (not scored) are ignored; a scan with no scored slice gets NaN.
    """
    if method not in SCAN_AGGREGATIONS:
        raise ConfigError(f"scan aggregation must be one of {SCAN_AGGREGATIONS}, got {method!r}")
    v = np.asarray(slice_values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    if method == "max":
        return float(v.max())
    if method == "mean":
        return float(v.mean())
    k = min(v.size, 3 if method == "top3" else 5)
    return float(np.sort(v)[-k:].mean())
