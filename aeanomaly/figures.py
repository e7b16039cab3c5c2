"""Every figure of aeanomaly, drawn once: returned as a :class:`matplotlib.figure.Figure`, never saved.

Each figure is built on its own Figure with the Agg canvas attached (never pyplot): no global state,
nothing opens a window, the global backend is left alone and figures can be drawn from threads. In
Jupyter ``display(fig)`` shows one inline; :mod:`aeanomaly.report` writes them as PNG files. The
``draw_*`` and ``plot_*`` functions draw into a given Axes, so that figures can be composed.

Conventions: images are windowed CT slices in [0, 1], ``(rows, cols)``, anterior at the top (drawn
with ``origin="upper"``); ``pixel_aspect`` is row spacing / column spacing (mm / mm), so anatomy is
not stretched. Scores are scan scores (higher = more anomalous; a scan is abnormal when
``score > threshold``, as in :mod:`aeanomaly.tuning`). Bad input raises
:class:`~aeanomaly.errors.ConfigError` with one line naming the reason.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .errors import ConfigError
from .tuning import Curves, OperatingPoint, ThresholdTuner, labels_as_bool, operating_point, padded_range

__all__ = [
    "EVAL_COLOURS",
    "OUTCOME_COLOURS",
    "CONTOUR_COLOUR",
    "draw_slice",
    "draw_lesion_contours",
    "plot_score_distribution",
    "plot_roc",
    "plot_pr",
    "plot_confusion",
    "overlay_figure",
    "eval_overlay_figure",
    "training_curves_figure",
    "score_distribution_figure",
    "roc_pr_figure",
    "confusion_figure",
    "tuning_figure",
    "scan_figure",
    "examples_figure",
]

#: RGB of the evaluation classes of pixels (true positive, false positive, false negative).
EVAL_COLOURS = {"TP": (1.0, 0.85, 0.0), "FP": (0.0, 0.8, 0.0), "FN": (0.9, 0.0, 0.0)}
#: Title colours of the four outcomes of a labelled scan.
OUTCOME_COLOURS = {"TP": "tab:green", "TN": "tab:blue", "FP": "tab:orange", "FN": "tab:red"}
#: Colour of lesion outlines and their ids.
CONTOUR_COLOUR = "#00e5ff"

#: A marked operating point: an :class:`~aeanomaly.tuning.OperatingPoint`, or a mapping with
#: ``fpr``/``tpr`` and/or ``recall``/``precision``.
PointLike = OperatingPoint | Mapping[str, float]


# ----------------------------------------------------------------------------------------- helpers
def _figure(figsize: tuple[float, float], dpi: int) -> Figure:
    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or dpi <= 0:
        raise ConfigError(f"dpi must be a positive whole number, got {dpi!r}")
    fig = Figure(figsize=figsize, dpi=int(dpi), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _fmt(v, spec: str = ".2f") -> str:
    """``v`` formatted with ``spec``, or ``"n/a"`` when missing or not finite."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return format(x, spec) if math.isfinite(x) else "n/a"


def _short(source, n: int = 40) -> str:
    name = str(source).replace("\\", "/").rsplit("/", 1)[-1]
    return name if len(name) <= n else "…" + name[-n + 1:]


def _as_2d(arr, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or min(a.shape) == 0:
        raise ConfigError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ConfigError(f"{name} shape {a.shape} differs from the image's {shape}")
    return a


def _aspect(pixel_aspect) -> float:
    try:
        a = float(pixel_aspect)
    except (TypeError, ValueError):
        a = float("nan")
    if not (math.isfinite(a) and a > 0):
        raise ConfigError(f"pixel_aspect must be a positive number, got {pixel_aspect!r}")
    return a


def _panel_size(shape: tuple[int, int], pixel_aspect: float, width: float = 4.0) -> tuple[float, float]:
    """Width and height in inches of one image panel of a ``(rows, cols)`` slice."""
    ratio = shape[0] * pixel_aspect / shape[1]
    return width, float(np.clip(width * ratio, 1.5, 3 * width))


def _finite_max(a, floor: float = 1e-6) -> float:
    v = np.asarray(a, dtype=float)
    v = v[np.isfinite(v)]
    return max(float(v.max()), floor) if v.size else floor


def _optional_number(value, name: str) -> float | None:
    """None, or ``value`` as a float (non-finite kept: it is simply not drawn)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a number, got {value!r}") from err


# ---------------------------------------------------------------------------------- slice drawing
def draw_lesion_contours(ax, labels) -> None:
    """Outline each labelled lesion of ``labels`` (int ``(rows, cols)``, 0 = none) and write its id
    beside the top-right of its outline."""
    from skimage.measure import find_contours

    lab = _as_2d(labels, "lesion_labels")
    for lid in (int(i) for i in np.unique(lab) if i != 0):
        # pad so that lesions touching the border still get closed outlines
        contours = [c - 1.0 for c in find_contours(np.pad(lab == lid, 1).astype(float), 0.5)]
        for c in contours:
            ax.plot(c[:, 1], c[:, 0], color=CONTOUR_COLOUR, linewidth=1.2)
        pts = np.concatenate(contours)
        ax.text(float(pts[:, 1].max()) + 1.0, float(pts[:, 0].min()) - 1.0, str(lid), color=CONTOUR_COLOUR,
                fontsize=8, fontweight="bold", ha="left", va="bottom", clip_on=True,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.6, edgecolor="none"))


def draw_slice(ax, image, heatmap=None, lesion_labels=None, *, vmax: float | None = None,
               threshold: float | None = None, pixel_aspect: float = 1.0):
    """Draw a CT slice, optionally with its residual heatmap over it and its lesions outlined.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw (ticks are removed).
    image : array_like, shape (rows, cols)
        Windowed CT slice in [0, 1]; non-finite pixels are black.
    heatmap : array_like, shape (rows, cols), optional
        Residual map (≥ 0), semi-transparent "inferno"; transparent where ≤ 0, non-finite or below
        ``threshold``.
    lesion_labels : array_like of int, shape (rows, cols), optional
        Lesion ids (0 = none), outlined with their id beside them.
    vmax : float, optional
        Top of the heatmap colour scale (default: the largest shown residual).
    threshold : float, optional
        Residuals below it are hidden; also the bottom of the colour scale (default 0).
    pixel_aspect : float
        Row spacing / column spacing.

    Returns
    -------
    matplotlib.image.AxesImage or None
        The heatmap layer (for a colorbar), None without a heatmap.

    Raises
    ------
    ConfigError
        An array is not 2-D or its shape differs from the image's, or ``pixel_aspect`` is not > 0.
    """
    img = _as_2d(image, "image").astype(float, copy=False)
    hm = None if heatmap is None else _as_2d(heatmap, "heatmap", img.shape).astype(float, copy=False)
    lab = None if lesion_labels is None else _as_2d(lesion_labels, "lesion_labels", img.shape)
    aspect = _aspect(pixel_aspect)
    lo = _optional_number(threshold, "threshold")
    lo = 0.0 if lo is None or not math.isfinite(lo) else lo
    top = _optional_number(vmax, "vmax")

    gray = colormaps["gray"].with_extremes(bad="black")
    ax.imshow(np.ma.masked_invalid(img), cmap=gray, vmin=0.0, vmax=1.0, origin="upper", aspect=aspect,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    layer = None
    if hm is not None:
        shown = np.ma.masked_array(hm, mask=~np.isfinite(hm) | (hm <= 0) | (hm < lo))
        hi = top if top is not None and math.isfinite(top) else (float(shown.max()) if shown.count() else lo + 1.0)
        if not hi > lo:
            hi = lo + max(abs(lo), 1.0) * 1e-6
        cmap = colormaps["inferno"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
        layer = ax.imshow(shown, cmap=cmap, norm=Normalize(vmin=lo, vmax=hi, clip=True), alpha=0.65,
                          origin="upper", aspect=aspect, interpolation="nearest")
    if lab is not None:
        draw_lesion_contours(ax, lab)
    return layer


def overlay_figure(image, heatmap=None, lesion_labels=None, *, vmax: float | None = None,
                   threshold: float | None = None, title: str = "", pixel_aspect: float = 1.0,
                   dpi: int = 100) -> Figure:
    """Two panels: the CT slice alone | the slice with its residual heatmap (and colorbar) and lesions.

    Parameters are those of :func:`draw_slice`, plus ``title`` (the figure title) and ``dpi``.
    The right panel is titled with what it shows (``"CT + residual + lesions"``).
    """
    img = _as_2d(image, "image")
    aspect = _aspect(pixel_aspect)
    w, h = _panel_size(img.shape, aspect)
    fig = _figure((2 * w + 1.2, h + (0.9 if title else 0.5)), dpi)
    ax_ct, ax_ov = fig.subplots(1, 2)
    draw_slice(ax_ct, img, pixel_aspect=aspect)
    ax_ct.set_title("CT")
    layer = draw_slice(ax_ov, img, heatmap, lesion_labels, vmax=vmax, threshold=threshold, pixel_aspect=aspect)
    if layer is not None:
        fig.colorbar(layer, ax=ax_ov, label="residual", shrink=0.9)
    parts = ["CT"] + (["residual"] if heatmap is not None else []) + (["lesions"] if lesion_labels is not None else [])
    ax_ov.set_title(" + ".join(parts))
    if title:
        fig.suptitle(str(title))
    return fig


def eval_overlay_figure(image, pred_mask, true_mask, *, title: str = "", pixel_aspect: float = 1.0,
                        dpi: int = 100) -> Figure:
    """A slice with predicted vs. reference lesion masks: TP yellow, FP green, FN red (see
    :data:`EVAL_COLOURS`); the Dice coefficient in the axes title, pixel counts in the legend.

    Parameters
    ----------
    image : array_like, shape (rows, cols)
        Windowed CT slice in [0, 1].
    pred_mask, true_mask : array_like of bool, shape (rows, cols)
        Predicted and reference lesion masks.
    title : str
        Prefix of the axes title (the Dice coefficient follows it).
    pixel_aspect : float
        Row spacing / column spacing.
    dpi : int
        Resolution.
    """
    img = _as_2d(image, "image").astype(float, copy=False)
    pred = _as_2d(pred_mask, "pred_mask", img.shape).astype(bool)
    true = _as_2d(true_mask, "true_mask", img.shape).astype(bool)
    aspect = _aspect(pixel_aspect)
    classes = {"TP": pred & true, "FP": pred & ~true, "FN": ~pred & true}
    rgba = np.zeros(img.shape + (4,), dtype=float)
    for name, m in classes.items():
        rgba[m, :3] = EVAL_COLOURS[name]
        rgba[m, 3] = 0.6

    w, h = _panel_size(img.shape, aspect)
    fig = _figure((w + 1.8, h + 0.8), dpi)
    ax = fig.subplots()
    draw_slice(ax, img, pixel_aspect=aspect)
    ax.imshow(rgba, origin="upper", aspect=aspect, interpolation="nearest")
    n = {k: int(m.sum()) for k, m in classes.items()}
    denom = 2 * n["TP"] + n["FP"] + n["FN"]
    dice = f"Dice {2 * n['TP'] / denom:.3f}" if denom else "Dice n/a (both masks empty)"
    ax.set_title(f"{title} — {dice}" if title else dice)
    handles = [Patch(facecolor=EVAL_COLOURS[k], alpha=0.6, label=f"{k} ({n[k]} px)") for k in classes]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------------- training curves
def _wants_log(series: Sequence[np.ndarray]) -> bool:
    vals = np.concatenate([s[np.isfinite(s)] for s in series]) if series else np.array([])
    return bool(vals.size and vals.min() > 0 and vals.max() / vals.min() > 10.0)


def training_curves_figure(history: Mapping[str, Sequence[float]], *, dpi: int = 100) -> Figure:
    """Training curves against epoch (1-based).

    Keys containing "loss" share the left panel (``val_*`` keys dashed, in their base key's colour);
    any other keys (metrics, learning rate) go to a right panel. A panel's y axis is logarithmic when
    its values are all positive and span more than a factor of 10.

    Parameters
    ----------
    history : mapping of str to sequence of float
        E.g. Keras' ``History.history``: ``{"loss": [...], "val_loss": [...]}``.
    dpi : int
        Resolution.

    Raises
    ------
    ConfigError
        ``history`` is not a mapping, is empty or holds no value.
    """
    if not isinstance(history, Mapping):
        raise ConfigError(f"training history must be a mapping of name to values, got {type(history).__name__}")
    try:
        series = {str(k): np.asarray(v, dtype=float).ravel() for k, v in history.items()}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"training history values must be numbers ({err})") from err
    series = {k: v for k, v in series.items() if v.size}
    if not series:
        raise ConfigError("training history is empty")
    groups = [g for g in ([k for k in series if "loss" in k], [k for k in series if "loss" not in k]) if g]
    fig = _figure((5.0 * len(groups) + 0.5, 3.8), dpi)
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
def _finite(values) -> np.ndarray:
    if values is None:
        return np.zeros(0)
    try:
        a = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"scores must be numbers ({err})") from err
    return a[np.isfinite(a)]


def plot_score_distribution(ax, normal_scores, abnormal_scores=None, *, threshold: float | None = None,
                            density: Callable[[np.ndarray], np.ndarray] | None = None, calibrator=None,
                            calibrated_threshold: float | None = None,
                            title: str = "scan score distribution") -> None:
    """Histograms of normal (blue) and abnormal (red) scan scores on shared bins, a fitted density of
    normal scores (black), a rug of the calibrator's normal scores, and the threshold(s).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    normal_scores, abnormal_scores : array_like, optional
        Scan scores; non-finite ones are left out. Either may be empty, not both.
    threshold : float, optional
        The decision threshold: an orange dashed line, the abnormal side shaded.
    density : callable, optional
        ``density(x) -> pdf`` on a 1-D grid of scores; must return one finite value per x.
        Default with a ``calibrator``: its ``density`` (non-finite values drawn as 0).
    calibrator : Calibrator, optional
        A fitted calibrator: its normal calibration scores (``scores_``) are drawn as a rug and its
        method named in the legend.
    calibrated_threshold : float, optional
        A second threshold (e.g. the calibrator's own), a gray dotted line.
    title : str
        Axes title.

    When a density is drawn the histograms are normalised to unit area, else they count scans.

    Raises
    ------
    ConfigError
        No finite score at all, or ``density`` returns something other than one finite value per x.
    """
    normal, abnormal = _finite(normal_scores), _finite(abnormal_scores)
    calib = None if calibrator is None else _finite(calibrator.scores_)
    thr = _optional_number(threshold, "threshold")
    cal_thr = _optional_number(calibrated_threshold, "calibrated_threshold")
    if normal.size + abnormal.size + (0 if calib is None else calib.size) == 0:
        raise ConfigError("no finite score to plot")
    lo, hi = padded_range(normal, abnormal, calib, thr, cal_thr)
    method = None if calibrator is None else getattr(calibrator, "method_", getattr(calibrator, "method", None))
    if density is None and calibrator is not None:
        def density(x):  # noqa: E306 - the calibrator's density, drawn as 0 where it is undefined
            return np.nan_to_num(np.asarray(calibrator.density(x), float), nan=0.0, posinf=0.0, neginf=0.0)
    as_density = density is not None

    bins = np.linspace(lo, hi, int(np.clip(2 * math.sqrt(max(normal.size + abnormal.size, 1)), 10, 60)) + 1)
    if normal.size:
        ax.hist(normal, bins=bins, density=as_density, color="tab:blue", alpha=0.6, label=f"normal (n={normal.size})")
    if abnormal.size:
        ax.hist(abnormal, bins=bins, density=as_density, color="tab:red", alpha=0.5,
                label=f"abnormal (n={abnormal.size})")
    if density is not None:
        x = np.linspace(lo, hi, 256)
        pdf = np.asarray(density(x), dtype=float)
        if pdf.shape != x.shape or not np.all(np.isfinite(pdf)):
            raise ConfigError(f"density must return one finite value per score, got shape {pdf.shape}")
        ax.plot(x, pdf, color="black", linewidth=1.5,
                label="fitted normal density" + (f" ({method})" if method else ""))
    if calib is not None:
        ax.plot(calib, np.zeros_like(calib), "|", color="black", markersize=12,
                label=f"calibration normals (n={calib.size})")
    if cal_thr is not None and math.isfinite(cal_thr):
        ax.axvline(cal_thr, color="gray", linestyle=":", linewidth=1.5, label=f"calibrated {cal_thr:.4g}")
    if thr is not None and math.isfinite(thr):
        ax.axvline(thr, color="tab:orange", linestyle="--", linewidth=2, label=f"threshold {thr:.4g}")
        ax.axvspan(thr, hi, color="tab:orange", alpha=0.07)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("scan score (higher = more anomalous)")
    ax.set_ylabel("density" if as_density else "scans")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(str(title), fontsize=9 if len(str(title)) > 50 else None)


def score_distribution_figure(normal_scores, abnormal_scores=None, *, threshold: float | None = None,
                              density: Callable[[np.ndarray], np.ndarray] | None = None, calibrator=None,
                              calibrated_threshold: float | None = None, title: str = "scan score distribution",
                              dpi: int = 100) -> Figure:
    """One-panel figure of :func:`plot_score_distribution` (same parameters, plus ``dpi``)."""
    fig = _figure((6.5, 3.8), dpi)
    plot_score_distribution(fig.subplots(), normal_scores, abnormal_scores, threshold=threshold, density=density,
                            calibrator=calibrator, calibrated_threshold=calibrated_threshold, title=title)
    return fig


# ------------------------------------------------------------------------------------------ ROC/PR
def _point(point: PointLike | None, name: str) -> dict[str, float] | None:
    """``{"fpr", "tpr", "precision"}`` of an operating point (NaN where unknown), or None."""
    if point is None:
        return None
    if isinstance(point, OperatingPoint):
        return {"fpr": point.fpr, "tpr": point.sensitivity, "precision": point.precision}
    if not isinstance(point, Mapping):
        raise ConfigError(f"{name} must be an OperatingPoint or a mapping with fpr/tpr and/or "
                          f"recall/precision, got {point!r}")

    if not any(k in point for k in ("fpr", "tpr", "recall", "precision")):
        raise ConfigError(f"{name} mapping needs fpr/tpr and/or recall/precision, got keys {sorted(map(str, point))}")

    def num(key: str) -> float:
        v = point.get(key)
        return float("nan") if v is None else float(v)

    try:
        out = {"fpr": num("fpr"), "tpr": num("tpr"), "precision": num("precision")}
        if math.isnan(out["tpr"]):
            out["tpr"] = num("recall")
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} values must be numbers, got {dict(point)!r}") from err
    return out


def _check_curves(curves) -> Curves:
    if not isinstance(curves, Curves):
        raise ConfigError(f"curves must be aeanomaly.tuning.Curves (from roc_pr_curves), got {type(curves).__name__}")
    return curves


def _mark_points(ax, point: PointLike | None, calibrated: PointLike | None, keys: tuple[str, str],
                 names: tuple[str, str]) -> None:
    """The operating point (red dot, labelled with its coordinates) and a calibrated one (gray square)
    at ``(p[keys[0]], p[keys[1]])``; a point with an unknown coordinate is left out."""
    for p, is_calibrated in ((_point(calibrated, "calibrated"), True), (_point(point, "point"), False)):
        if p is None or not (math.isfinite(p[keys[0]]) and math.isfinite(p[keys[1]])):
            continue
        x, y = p[keys[0]], p[keys[1]]
        if is_calibrated:
            ax.plot(x, y, "s", color="gray", markersize=7, label="calibrated")
        else:
            ax.plot(x, y, "o", color="tab:red", markersize=9, label=f"{names[0]} {_fmt(x)}, {names[1]} {_fmt(y)}")


def _unit_square(ax, *, xlabel: str, ylabel: str, title: str, legend_loc: str) -> None:
    """Labels, title, [0, 1]² limits, grid and legend of a ROC or PR panel."""
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(-0.03, 1.03), ylim=(-0.03, 1.03))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc)


def plot_roc(ax, curves: Curves, point: PointLike | None = None, calibrated: PointLike | None = None) -> None:
    """ROC curve (AUROC in the title), chance diagonal, the operating point (red) and a calibrated
    point (gray square) where given."""
    c = _check_curves(curves)
    ax.plot(c.fpr, c.tpr, color="tab:blue", linewidth=2, label="ROC")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1, label="chance")
    _mark_points(ax, point, calibrated, ("fpr", "tpr"), ("FPR", "TPR"))
    _unit_square(ax, xlabel="false positive rate", ylabel="sensitivity (TPR)", title=f"ROC, AUROC {c.auroc:.3f}",
                 legend_loc="lower right")


def plot_pr(ax, curves: Curves, point: PointLike | None = None, calibrated: PointLike | None = None) -> None:
    """Precision-recall curve drawn as the steps whose area is the AUPRC (average precision, in the
    title), the prevalence line, and the operating point(s)."""
    c = _check_curves(curves)
    # rows go by decreasing threshold, i.e. increasing recall: each precision holds up to its recall
    ax.plot(c.recall, c.precision, color="tab:purple", linewidth=2, drawstyle="steps-pre", label="PR")
    ax.axhline(c.prevalence, color="gray", linestyle=":", linewidth=1, label=f"prevalence {c.prevalence:.2f}")
    _mark_points(ax, point, calibrated, ("tpr", "precision"), ("R", "P"))
    _unit_square(ax, xlabel="recall (sensitivity)", ylabel="precision",
                 title=f"precision-recall, AUPRC {c.auprc:.3f}", legend_loc="lower left")


def roc_pr_figure(curves: Curves, point: PointLike | None = None, calibrated: PointLike | None = None, *,
                  dpi: int = 100) -> Figure:
    """Two panels: ROC | precision-recall (:func:`plot_roc`, :func:`plot_pr`).

    Parameters
    ----------
    curves : Curves
        From :func:`aeanomaly.tuning.roc_pr_curves`.
    point, calibrated : OperatingPoint or mapping, optional
        The operating point (red dot) and a reference one (gray square); a mapping gives ``fpr``/``tpr``
        and/or ``recall``/``precision`` directly.
    dpi : int
        Resolution.
    """
    _check_curves(curves)
    fig = _figure((9.0, 4.2), dpi)
    ax_roc, ax_pr = fig.subplots(1, 2)
    plot_roc(ax_roc, curves, point, calibrated)
    plot_pr(ax_pr, curves, point, calibrated)
    return fig


def plot_confusion(ax, point: OperatingPoint) -> None:
    """The 2×2 confusion matrix (rows = truth, columns = predicted) with counts, shaded by row
    fraction, titled with sensitivity, specificity, precision and F1."""
    if not isinstance(point, OperatingPoint):
        raise ConfigError(f"point must be an aeanomaly.tuning.OperatingPoint, got {type(point).__name__}")
    cm = point.confusion_matrix
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    names = (("TN", "FP"), ("FN", "TP"))
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{names[i][j]}\n{cm[i, j]}", ha="center", va="center", fontsize=12,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks([0, 1], ["normal", "abnormal"])
    ax.set_yticks([0, 1], ["normal", "abnormal"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(f"sens {_fmt(point.sensitivity)}  spec {_fmt(point.specificity)}  "
                 f"prec {_fmt(point.precision)}  F1 {_fmt(point.f1)}", fontsize=9)


def confusion_figure(point: OperatingPoint, *, dpi: int = 100) -> Figure:
    """One-panel figure of :func:`plot_confusion`, titled with the threshold."""
    fig = _figure((4.2, 3.8), dpi)
    plot_confusion(fig.subplots(), point)
    fig.suptitle(f"threshold {_fmt(point.threshold, '.5g')}")
    return fig


def tuning_figure(tuner: ThresholdTuner, threshold: float, *, dpi: int = 90) -> Figure:
    """Dashboard of one threshold: score distributions | confusion matrix / ROC | PR.

    Parameters
    ----------
    tuner : ThresholdTuner
        Labelled scores (and, optionally, the calibrator, whose threshold is shown in gray).
    threshold : float
        The scan-score threshold to show.
    dpi : int
        Resolution.
    """
    if not isinstance(tuner, ThresholdTuner):
        raise ConfigError(f"tuner must be an aeanomaly.tuning.ThresholdTuner, got {type(tuner).__name__}")
    t = _optional_number(threshold, "threshold")
    if t is None or math.isnan(t):
        raise ConfigError(f"threshold must be a number, got {threshold!r}")
    point = tuner.at(t)
    cal_t = tuner.calibrated
    calibrated = tuner.at(cal_t) if cal_t is not None and math.isfinite(cal_t) else None
    fig = _figure((13.0, 7.2), dpi)
    axes = fig.subplots(2, 2)
    plot_score_distribution(axes[0, 0], tuner.normal_scores, tuner.abnormal_scores, threshold=t,
                            calibrator=tuner.calibrator, calibrated_threshold=cal_t, title="score distributions")
    plot_confusion(axes[0, 1], point)
    plot_roc(axes[1, 0], tuner.curves_, point, calibrated)
    plot_pr(axes[1, 1], tuner.curves_, point, calibrated)
    fig.suptitle(f"threshold {t:.5g}: observed FPR {_fmt(point.fpr)} on {point.n_normal} normals, "
                 f"sensitivity {_fmt(point.sensitivity)} on {point.n_abnormal} abnormals")
    return fig


# -------------------------------------------------------------------------------- scored scans
def _volumes(result) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(image, heatmap, lesion_labels) of a scored scan, each ``(z, rows, cols)`` on the model grid."""
    image = np.asarray(getattr(result, "image", None))
    if image.ndim != 3 or image.shape[0] == 0:
        raise ConfigError(f"a scored scan needs an image of shape (z, rows, cols), got shape {image.shape}")
    out = [image]
    for name in ("heatmap", "lesion_labels"):
        a = getattr(result, name, None)
        if a is not None:
            a = np.asarray(a)
            if a.shape != image.shape:
                raise ConfigError(f"{name} shape {a.shape} differs from the image's {image.shape}")
        out.append(a)
    return out[0], out[1], out[2]


def _result_aspect(result) -> float:
    """Row / column spacing of a scored scan's model grid (1 when its spacing is unknown)."""
    sp = getattr(getattr(result, "prepared", None), "spacing", None)
    return 1.0 if sp is None else _aspect(float(sp[1]) / float(sp[2]))


def scan_figure(result, slices: Sequence[int] | None = None, n_slices: int = 3,
                pixel_threshold: float | None = None, *, dpi: int = 90) -> Figure:
    """Slices of one scored scan: the CT on top, the residual heatmap and lesions below.

    Parameters
    ----------
    result : ScanResult
        From :meth:`AnomalyDetector.score_scan` (its ``image``, ``heatmap``, ``lesion_labels`` and
        ``slice_scores`` on the model grid ``(z, size, size)``, ``prepared.spacing`` for the aspect).
    slices : sequence of int, optional
        Slice indices to show (default: the ``n_slices`` highest finite slice scores, in slice
        order; the top slice when none is finite).
    n_slices : int
        How many slices by default (≥ 1).
    pixel_threshold : float, optional
        Heatmap values below it are not drawn (e.g. ``det.pixel_threshold_``).
    dpi : int
        Resolution.

    Raises
    ------
    ConfigError
        A slice index is out of range, ``n_slices`` < 1, or the result's arrays do not match.
    """
    image, heatmap, labels = _volumes(result)
    z = image.shape[0]
    scores = np.asarray(result.slice_scores, float).ravel()
    if slices is None:
        if isinstance(n_slices, bool) or not isinstance(n_slices, (int, np.integer)) or n_slices < 1:
            raise ConfigError(f"n_slices must be a whole number ≥ 1, got {n_slices!r}")
        ranked = np.argsort(np.nan_to_num(scores, nan=-np.inf))[::-1][:n_slices]
        slices = sorted(int(i) for i in ranked if np.isfinite(scores[i])) or [int(result.top_slice)]
    slices = [int(k) for k in slices]
    bad = [k for k in slices if not 0 <= k < z]
    if bad or not slices:
        raise ConfigError(f"slices must be indices in [0, {z}), got {slices}")
    vmax = None if heatmap is None else _finite_max(heatmap)
    aspect = _result_aspect(result)
    fig = _figure((2.6 * len(slices) + 0.4, 5.6), dpi)
    axes = np.asarray(fig.subplots(2, len(slices), squeeze=False))
    for j, k in enumerate(slices):
        draw_slice(axes[0, j], image[k], pixel_aspect=aspect)
        axes[0, j].set_title(f"slice {k}  score {_fmt(scores[k], '.3g')}", fontsize=8)
        draw_slice(axes[1, j], image[k], None if heatmap is None else heatmap[k], None if labels is None else labels[k],
                   vmax=vmax, threshold=pixel_threshold, pixel_aspect=aspect)
    n_les = len(getattr(result, "lesions", None) or [])
    fig.suptitle(f"{_short(result.source)}: {result.label} (score {_fmt(result.scan_score, '.4g')}, "
                 f"p {_fmt(result.p_value, '.3g')}, {n_les} lesions)", fontsize=10)
    return fig


def examples_figure(results: Sequence, y_true, threshold: float, max_examples: int = 6,
                    pixel_threshold: float | None = None, *, dpi: int = 80) -> Figure:
    """Top slice with heatmap of the scans nearest the threshold, titled with their outcome.

    The borderline scans are the ones whose label changes as the threshold moves, so they are shown
    first: sorted by ``|scan_score − threshold|``. Titles are coloured by outcome (TP green, TN blue,
    FP orange, FN red; see :data:`OUTCOME_COLOURS`).

    Parameters
    ----------
    results : sequence of ScanResult
        Scored scans.
    y_true : array_like, shape (len(results),)
        Their labels (1 / True / ``"abnormal"`` = abnormal).
    threshold : float
        Scan-score threshold.
    max_examples : int
        Number of panels (≥ 1).
    pixel_threshold : float, optional
        Heatmap values below it are not drawn.
    dpi : int
        Resolution.

    Raises
    ------
    ConfigError
        The numbers of results and labels differ, or ``threshold``/``max_examples`` is not valid.
    """
    y = labels_as_bool(y_true)
    if len(results) != y.size:
        raise ConfigError(f"{len(results)} results but {y.size} labels")
    t = _optional_number(threshold, "threshold")
    if t is None or math.isnan(t):
        raise ConfigError(f"threshold must be a number, got {threshold!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) or max_examples < 1:
        raise ConfigError(f"max_examples must be a whole number ≥ 1, got {max_examples!r}")
    s = np.array([r.scan_score for r in results], float)
    order = [int(i) for i in np.argsort(np.abs(s - t)) if np.isfinite(s[i])][:max_examples]
    n = max(len(order), 1)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = _figure((3.2 * cols, 3.4 * rows), dpi)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(order):]:
        ax.set_axis_off()
    for ax, i in zip(axes, order):
        r = results[i]
        image, heatmap, labels = _volumes(r)
        k = int(r.top_slice)
        draw_slice(ax, image[k], None if heatmap is None else heatmap[k], None if labels is None else labels[k],
                   vmax=None if heatmap is None else _finite_max(heatmap), threshold=pixel_threshold,
                   pixel_aspect=_result_aspect(r))
        pred = s[i] > t
        outcome = ("T" if pred == y[i] else "F") + ("P" if pred else "N")
        ax.set_title(f"{outcome}  {_short(r.source, 22)}\nscore {s[i]:.4g}, slice {k}", fontsize=8,
                     color=OUTCOME_COLOURS[outcome])
    point = operating_point(y, s, t)
    fig.suptitle(f"scans nearest the threshold {t:.4g} (TP {point.tp}, FP {point.fp}, TN {point.tn}, "
                 f"FN {point.fn})", fontsize=10)
    return fig
