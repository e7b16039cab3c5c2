"""PNG figures: slice overlays, evaluation overlays, training curves, score histograms, ROC/PR.

Every figure is drawn on a private :class:`matplotlib.figure.Figure` with the Agg canvas (never
pyplot), so nothing opens a window, the global backend is left alone and drawing is thread-safe.
Every ``save_*`` function writes its PNG atomically and returns the :class:`~pathlib.Path` written.
The self-contained HTML report lives in :mod:`aeanomaly.report_html` and is re-exported here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .errors import AeAnomalyError, ConfigError
from .io.writers import atomic_path
from .report_html import write_report

__all__ = [
    "save_overlay",
    "save_eval_overlay",
    "save_training_curves",
    "save_score_distribution",
    "save_roc_pr",
    "write_report",
]

PathLike = str | os.PathLike

#: RGB of the evaluation classes (true positive, false positive, false negative).
EVAL_COLOURS = {"TP": (1.0, 0.85, 0.0), "FP": (0.0, 0.8, 0.0), "FN": (0.9, 0.0, 0.0)}
CONTOUR_COLOUR = "#00e5ff"


# ----------------------------------------------------------------------------------------- helpers
def _save_figure(fig: Figure, path: PathLike, dpi: int) -> Path:
    """Render ``fig`` with Agg and write it as PNG to ``path`` atomically."""
    FigureCanvasAgg(fig)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    except OSError as err:
        raise AeAnomalyError(f"cannot write PNG ({err.strerror or err})", path=path) from err
    return Path(path)


def _as_2d(arr, name: str, path: PathLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or min(a.shape) == 0:
        raise ConfigError(f"{name} must be a non-empty 2-D array, got shape {a.shape}", path=path)
    if shape is not None and a.shape != shape:
        raise ConfigError(f"{name} shape {a.shape} differs from the image's {shape}", path=path)
    return a


def _panel_size(shape: tuple[int, int], pixel_aspect: float, width: float = 4.0) -> tuple[float, float]:
    """Width and height in inches of one image panel of a ``(rows, cols)`` slice."""
    ratio = shape[0] * pixel_aspect / shape[1]
    return width, float(np.clip(width * ratio, 1.5, 3 * width))


def _finite_1d(values, name: str, path: PathLike) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ConfigError(f"{name} holds no finite value", path=path)
    return a


# ----------------------------------------------------------------------------------------- overlay
def _overlay_figure(image, heatmap=None, lesion_labels=None, *, vmax=None, threshold=None, title="",
                    dpi=100, pixel_aspect=1.0, path: PathLike = "") -> Figure:
    img = _as_2d(image, "image", path).astype(float, copy=False)
    hm = None if heatmap is None else _as_2d(heatmap, "heatmap", path, img.shape).astype(float, copy=False)
    lab = None if lesion_labels is None else _as_2d(lesion_labels, "lesion_labels", path, img.shape)
    if not (np.isfinite(pixel_aspect) and pixel_aspect > 0):
        raise ConfigError(f"pixel_aspect must be a positive number, got {pixel_aspect}", path=path)

    w, h = _panel_size(img.shape, pixel_aspect)
    fig = Figure(figsize=(2 * w + 1.2, h + (0.9 if title else 0.5)), dpi=dpi, layout="constrained")
    ax_ct, ax_ov = fig.subplots(1, 2)
    gray = colormaps["gray"].with_extremes(bad="black")
    for ax in (ax_ct, ax_ov):
        ax.imshow(img, cmap=gray, vmin=0.0, vmax=1.0, origin="upper", aspect=pixel_aspect,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    ax_ct.set_title("CT")
    parts = ["CT"]

    if hm is not None:
        lo = 0.0 if threshold is None else float(threshold)
        hidden = ~np.isfinite(hm) | (hm <= 0) | (hm < lo)
        shown = np.ma.masked_array(hm, mask=hidden)
        hi = float(vmax) if vmax is not None else (float(shown.max()) if shown.count() else lo + 1.0)
        if not hi > lo:
            hi = lo + max(abs(lo), 1.0) * 1e-6
        cmap = colormaps["inferno"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
        im = ax_ov.imshow(shown, cmap=cmap, norm=Normalize(vmin=lo, vmax=hi, clip=True), alpha=0.65,
                          origin="upper", aspect=pixel_aspect, interpolation="nearest")
        fig.colorbar(im, ax=ax_ov, label="residual", shrink=0.9)
        parts.append("residual")

    if lab is not None:
        _draw_lesion_contours(ax_ov, lab)
        parts.append("lesions")
    ax_ov.set_title(" + ".join(parts))
    if title:
        fig.suptitle(title)
    return fig


def _draw_lesion_contours(ax, labels: np.ndarray) -> None:
    """Outline each labelled lesion and write its id beside the top-right of its outline."""
    from skimage.measure import find_contours

    ids = [int(i) for i in np.unique(labels) if i != 0]
    for lid in ids:
        # pad so that lesions touching the border still get closed outlines
        mask = np.pad(labels == lid, 1).astype(float)
        contours = [c - 1.0 for c in find_contours(mask, 0.5)]
        for c in contours:
            ax.plot(c[:, 1], c[:, 0], color=CONTOUR_COLOUR, linewidth=1.2)
        pts = np.concatenate(contours)
        ax.text(float(pts[:, 1].max()) + 1.0, float(pts[:, 0].min()) - 1.0, str(lid), color=CONTOUR_COLOUR,
                fontsize=8, fontweight="bold", ha="left", va="bottom", clip_on=True,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.6, edgecolor="none"))


def save_overlay(path: PathLike, image, heatmap=None, lesion_labels=None, *, vmax: float | None = None,
                 threshold: float | None = None, title: str = "", dpi: int = 100,
                 pixel_aspect: float = 1.0) -> Path:
    """Write a two-panel PNG: the CT slice alone | the slice with its residual heatmap and lesions.

    Parameters
    ----------
    path : str or PathLike
        Output PNG.
    image : array_like, shape (rows, cols)
        A windowed CT slice with values in [0, 1] (anterior at the top, shown with origin="upper").
    heatmap : array_like, shape (rows, cols), optional
        Residual map (≥ 0), drawn semi-transparent with "inferno"; transparent where ≤ 0, non-finite
        or below ``threshold``. A colorbar labelled "residual" goes with it.
    lesion_labels : array_like of int, shape (rows, cols), optional
        Lesion ids (0 = none); each lesion is outlined and its id written beside it.
    vmax : float, optional
        Top of the heatmap colour scale (default: the largest shown residual).
    threshold : float, optional
        Residuals below it are not shown; also the bottom of the colour scale (default 0).
    title : str
        Figure title.
    dpi : int
        Resolution of the PNG.
    pixel_aspect : float
        Row spacing / column spacing (mm / mm) of the slice, so that anatomy is not stretched.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        An array is not 2-D or its shape differs from the image's, or ``pixel_aspect`` is not > 0.
    """
    fig = _overlay_figure(image, heatmap, lesion_labels, vmax=vmax, threshold=threshold, title=title,
                          dpi=dpi, pixel_aspect=pixel_aspect, path=path)
    return _save_figure(fig, path, dpi)


# ------------------------------------------------------------------------------------ eval overlay
def _eval_figure(image, pred_mask, true_mask, title="", dpi=100, path: PathLike = "") -> Figure:
    img = _as_2d(image, "image", path).astype(float, copy=False)
    pred = _as_2d(pred_mask, "pred_mask", path, img.shape).astype(bool)
    true = _as_2d(true_mask, "true_mask", path, img.shape).astype(bool)
    classes = {"TP": pred & true, "FP": pred & ~true, "FN": ~pred & true}
    rgba = np.zeros(img.shape + (4,), dtype=float)
    for name, m in classes.items():
        rgba[m, :3] = EVAL_COLOURS[name]
        rgba[m, 3] = 0.6

    w, h = _panel_size(img.shape, 1.0)
    fig = Figure(figsize=(w + 1.8, h + 0.8), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, origin="upper", interpolation="nearest")
    ax.imshow(rgba, origin="upper", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    n = {k: int(m.sum()) for k, m in classes.items()}
    denom = 2 * n["TP"] + n["FP"] + n["FN"]
    dice = f"Dice {2 * n['TP'] / denom:.3f}" if denom else "Dice n/a (both masks empty)"
    ax.set_title(f"{title} — {dice}" if title else dice)
    handles = [Patch(facecolor=EVAL_COLOURS[k], alpha=0.6, label=f"{k} ({n[k]} px)") for k in classes]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return fig


def save_eval_overlay(path: PathLike, image, pred_mask, true_mask, title: str = "", dpi: int = 100) -> Path:
    """Write a PNG of a slice with predicted vs. true lesion masks: TP yellow, FP green, FN red.

    Parameters
    ----------
    path : str or PathLike
        Output PNG.
    image : array_like, shape (rows, cols)
        Windowed CT slice in [0, 1].
    pred_mask, true_mask : array_like of bool, shape (rows, cols)
        Predicted and reference lesion masks.
    title : str
        Prefix of the axes title (the Dice coefficient follows it).
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    Path
        ``path``.
    """
    return _save_figure(_eval_figure(image, pred_mask, true_mask, title=title, dpi=dpi, path=path), path, dpi)


# --------------------------------------------------------------------------------- training curves
def _wants_log(series: Sequence[np.ndarray]) -> bool:
    vals = np.concatenate([s[np.isfinite(s)] for s in series]) if series else np.array([])
    return bool(vals.size and vals.min() > 0 and vals.max() / vals.min() > 10.0)


def save_training_curves(path: PathLike, history: Mapping[str, Sequence[float]], dpi: int = 100) -> Path:
    """Write a PNG of training curves against epoch (1-based).

    Keys containing "loss" share the left panel (``val_*`` keys dashed, in their base key's colour);
    any other keys (metrics, learning rate) go to a right panel. A panel's y axis is logarithmic when
    its values are all positive and span more than a factor of 10.

    Parameters
    ----------
    path : str or PathLike
        Output PNG.
    history : mapping of str to sequence of float
        E.g. Keras' ``History.history``: ``{"loss": [...], "val_loss": [...]}``.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        ``history`` is empty or holds no value.
    """
    return _save_figure(_training_figure(history, dpi=dpi, path=path), path, dpi)


def _training_figure(history: Mapping[str, Sequence[float]], dpi: int = 100, path: PathLike = "") -> Figure:
    series = {str(k): np.asarray(v, dtype=float).ravel() for k, v in dict(history).items()}
    series = {k: v for k, v in series.items() if v.size}
    if not series:
        raise ConfigError("training history is empty", path=path)
    groups = [[k for k in series if "loss" in k], [k for k in series if "loss" not in k]]
    groups = [g for g in groups if g]
    fig = Figure(figsize=(5.0 * len(groups) + 0.5, 3.8), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    cycle = colormaps["tab10"].colors
    base_colour: dict[str, tuple] = {}
    for ax, keys in zip(axes, groups):
        for k in keys:
            base = k[4:] if k.startswith("val_") else k
            colour = base_colour.setdefault(base, cycle[len(base_colour) % len(cycle)])
            v = series[k]
            ax.plot(np.arange(1, v.size + 1), v, color=colour, linestyle="--" if k.startswith("val_") else "-",
                    marker="o" if v.size <= 30 else None, markersize=3, label=k)
        if _wants_log([series[k] for k in keys]):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if "loss" in keys[0] else "value")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training curves")
    return fig


# ------------------------------------------------------------------------------ score distribution
def save_score_distribution(path: PathLike, normal_scores, abnormal_scores=None, threshold: float | None = None,
                            density: Callable[[np.ndarray], np.ndarray] | None = None, dpi: int = 100,
                            title: str = "scan score distribution") -> Path:
    """Write a PNG histogram of scan scores with the decision threshold and a fitted density.

    Parameters
    ----------
    path : str or PathLike
        Output PNG.
    normal_scores : array_like, shape (n,)
        Scores of normal scans (e.g. the calibration set); non-finite values are left out.
    abnormal_scores : array_like, shape (m,), optional
        Scores of abnormal scans, drawn as a second histogram on the same bins.
    threshold : float, optional
        Decision threshold, drawn as a vertical line.
    density : callable, optional
        ``density(x) -> pdf`` on a 1-D grid ``x`` of scores, e.g. the calibrator's fitted normal
        distribution; drawn over the histograms, which are then normalised to unit area.
    dpi : int
        Resolution of the PNG.
    title : str
        Axes title (e.g. the calibrator and its goodness of fit).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        No finite normal score, or ``density`` returns something other than one finite value per x.
    """
    fig = _score_figure(normal_scores, abnormal_scores, threshold, density, dpi=dpi, path=path, title=title)
    return _save_figure(fig, path, dpi)


def _score_figure(normal_scores, abnormal_scores=None, threshold=None, density=None, dpi: int = 100,
                  path: PathLike = "", title: str = "scan score distribution") -> Figure:
    normal = _finite_1d(normal_scores, "normal_scores", path)
    abnormal = None if abnormal_scores is None else np.asarray(abnormal_scores, dtype=float).ravel()
    if abnormal is not None:
        abnormal = abnormal[np.isfinite(abnormal)]
    pooled = normal if abnormal is None or not abnormal.size else np.concatenate([normal, abnormal])
    lo, hi = float(pooled.min()), float(pooled.max())
    if threshold is not None and np.isfinite(threshold):
        lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    lo, hi = lo - pad, hi + pad
    bins = np.linspace(lo, hi, int(np.clip(2 * math.sqrt(pooled.size), 10, 60)) + 1)
    as_density = density is not None

    fig = Figure(figsize=(6.0, 3.8), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    ax.hist(normal, bins=bins, density=as_density, color="tab:blue", alpha=0.6, label=f"normal (n={normal.size})")
    if abnormal is not None and abnormal.size:
        ax.hist(abnormal, bins=bins, density=as_density, color="tab:red", alpha=0.5,
                label=f"abnormal (n={abnormal.size})")
    if density is not None:
        x = np.linspace(lo, hi, 256)
        pdf = np.asarray(density(x), dtype=float)
        if pdf.shape != x.shape or not np.all(np.isfinite(pdf)):
            raise ConfigError(f"density must return one finite value per score, got shape {pdf.shape}", path=path)
        ax.plot(x, pdf, color="black", linewidth=1.5, label="fitted normal density")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(float(threshold), color="tab:orange", linestyle="--", linewidth=2,
                   label=f"threshold = {float(threshold):.4g}")
    ax.set_xlabel("scan score (higher = more anomalous)")
    ax.set_ylabel("density" if as_density else "scans")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9 if len(title) > 50 else None)
    return fig


# ------------------------------------------------------------------------------------------ ROC/PR
def _operating_point(op, y: np.ndarray, s: np.ndarray, path: PathLike) -> dict[str, float]:
    """(fpr, tpr, recall, precision) of a score threshold, or of an explicit mapping."""
    if isinstance(op, Mapping):
        out = {k: float(op[k]) for k in ("fpr", "tpr", "recall", "precision") if k in op}
        if "tpr" in out and "recall" not in out:
            out["recall"] = out["tpr"]
        if "recall" in out and "tpr" not in out:
            out["tpr"] = out["recall"]
        if not out:
            raise ConfigError("operating_point mapping needs fpr/tpr and/or recall/precision", path=path)
        return out
    try:
        t = float(op)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"operating_point must be a score threshold or a mapping, got {op!r}", path=path) from err
    pred = s >= t
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
    out = {"fpr": fp / max(int(np.sum(~y)), 1), "tpr": tp / max(int(np.sum(y)), 1)}
    out["recall"] = out["tpr"]
    if tp + fp:
        out["precision"] = tp / (tp + fp)
    return out


def save_roc_pr(path: PathLike, y_true, scores, operating_point=None, dpi: int = 100) -> Path:
    """Write a two-panel PNG: ROC curve (AUROC in the title) | precision-recall curve (AUPRC).

    Parameters
    ----------
    path : str or PathLike
        Output PNG.
    y_true : array_like of {0, 1}, shape (n,)
        1 = abnormal.
    scores : array_like, shape (n,)
        Higher = more anomalous.
    operating_point : float or mapping, optional
        A score threshold (label abnormal when ``score >= threshold``), or an explicit mapping with
        ``fpr``/``tpr`` and/or ``recall``/``precision``; marked on both curves.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        Lengths differ, scores are not finite, or ``y_true`` does not hold both classes.
    """
    return _save_figure(_roc_pr_figure(y_true, scores, operating_point, dpi=dpi, path=path), path, dpi)


def _roc_pr_figure(y_true, scores, operating_point=None, dpi: int = 100, path: PathLike = "") -> Figure:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ConfigError(f"y_true has {y.size} values but scores has {s.size}", path=path)
    if not np.all(np.isfinite(s)):
        raise ConfigError("scores must all be finite", path=path)
    if not np.all(np.isin(y, (0, 1))):
        raise ConfigError("y_true must hold only 0 (normal) and 1 (abnormal)", path=path)
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ConfigError("y_true must hold both normal (0) and abnormal (1) scans", path=path)

    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    auroc, auprc = roc_auc_score(y, s), average_precision_score(y, s)
    fig = Figure(figsize=(9.0, 4.2), dpi=dpi, layout="constrained")
    ax_roc, ax_pr = fig.subplots(1, 2)
    ax_roc.plot(fpr, tpr, color="tab:blue", linewidth=2, label="ROC")
    ax_roc.plot([0, 1], [0, 1], color="gray", linestyle=":", label="chance")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC — AUROC {auroc:.3f}",
               xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax_pr.step(rec, prec, where="post", color="tab:purple", linewidth=2, label="PR")
    ax_pr.axhline(y.mean(), color="gray", linestyle=":", label=f"prevalence {y.mean():.2f}")
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"precision-recall — AUPRC {auprc:.3f}",
              xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    if operating_point is not None:
        op = _operating_point(operating_point, y, s, path)
        if "fpr" in op and "tpr" in op:
            ax_roc.plot(op["fpr"], op["tpr"], "o", color="tab:red", markersize=8,
                        label=f"operating point (FPR {op['fpr']:.2f}, TPR {op['tpr']:.2f})")
        if "recall" in op and "precision" in op:
            ax_pr.plot(op["recall"], op["precision"], "o", color="tab:red", markersize=8,
                       label=f"operating point (R {op['recall']:.2f}, P {op['precision']:.2f})")
    for ax in (ax_roc, ax_pr):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    return fig
