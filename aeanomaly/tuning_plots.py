"""Figures for threshold tuning and quick looks in Jupyter (returned, never saved or shown).

Every function returns a :class:`matplotlib.figure.Figure` drawn without pyplot (no global state,
nothing opens a window); in Jupyter ``display(fig)`` shows it inline, and ``fig.savefig(path)``
writes it. The ``plot_*`` functions draw into a given Axes so that figures can be composed.

Scores are scan scores (higher = more anomalous; a scan is abnormal when ``score > threshold``);
images are windowed CT slices in [0, 1] on the model grid ``(size, size)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .errors import ConfigError
from .tuning import Curves, OperatingPoint, ThresholdTuner, labels_as_bool, operating_point

__all__ = [
    "plot_score_distribution",
    "plot_roc",
    "plot_pr",
    "plot_confusion",
    "score_distribution_figure",
    "roc_pr_figure",
    "tuning_figure",
    "scan_figure",
    "examples_figure",
    "OUTCOME_COLOURS",
]

#: Title colours of the four outcomes of a labelled scan.
OUTCOME_COLOURS = {"TP": "tab:green", "TN": "tab:blue", "FP": "tab:orange", "FN": "tab:red"}
_LESION_COLOUR = "#00e5ff"


def _figure(figsize, dpi: int) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.2f}"


# ------------------------------------------------------------------------------------ axes plotters
def plot_score_distribution(ax, normal_scores, abnormal_scores=None, *, threshold: float | None = None,
                            calibrator=None, calibrated_threshold: float | None = None) -> None:
    """Histograms of normal and abnormal scan scores (as densities), the calibrator's fitted density of
    normal scores with a rug of its calibration scores, and the threshold(s) as vertical lines."""
    normal = np.asarray(normal_scores, float).ravel()
    normal = normal[np.isfinite(normal)]
    abnormal = np.zeros(0) if abnormal_scores is None else np.asarray(abnormal_scores, float).ravel()
    abnormal = abnormal[np.isfinite(abnormal)]
    calib = np.zeros(0) if calibrator is None else np.asarray(calibrator.scores_, float)
    pooled = np.concatenate([normal, abnormal, calib])
    if pooled.size == 0:
        raise ConfigError("no finite score to plot")
    extra = np.array([v for v in (threshold, calibrated_threshold) if v is not None and np.isfinite(v)], float)
    lo, hi = float(np.min(np.r_[pooled, extra])), float(np.max(np.r_[pooled, extra]))
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1e-6) * 0.1
    lo, hi = lo - pad, hi + pad
    bins = np.linspace(lo, hi, int(np.clip(2 * np.sqrt(max(normal.size + abnormal.size, 1)), 8, 40)) + 1)
    if normal.size:
        ax.hist(normal, bins=bins, density=True, color="tab:blue", alpha=0.55, label=f"normal (n={normal.size})")
    if abnormal.size:
        ax.hist(abnormal, bins=bins, density=True, color="tab:red", alpha=0.45, label=f"abnormal (n={abnormal.size})")
    if calibrator is not None:
        x = np.linspace(lo, hi, 256)
        pdf = np.nan_to_num(np.asarray(calibrator.density(x), float), nan=0.0, posinf=0.0)
        ax.plot(x, pdf, color="black", linewidth=1.5, label=f"fitted normal density ({calibrator.method})")
        ax.plot(calib, np.zeros_like(calib), "|", color="black", markersize=12, label=f"calibration normals (n={calib.size})")
    if calibrated_threshold is not None and np.isfinite(calibrated_threshold):
        ax.axvline(float(calibrated_threshold), color="gray", linestyle=":", linewidth=1.5,
                   label=f"calibrated {calibrated_threshold:.4g}")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(float(threshold), color="tab:orange", linestyle="--", linewidth=2, label=f"threshold {threshold:.4g}")
        ax.axvspan(float(threshold), hi, color="tab:orange", alpha=0.07)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("scan score (higher = more anomalous)")
    ax.set_ylabel("density")
    ax.set_title("score distributions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def plot_roc(ax, curves: Curves, point: OperatingPoint | None = None, calibrated: OperatingPoint | None = None) -> None:
    """ROC curve (AUROC in the title) with the operating point(s) marked."""
    ax.plot(curves.fpr, curves.tpr, color="tab:blue", linewidth=2, drawstyle="default", label="ROC")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    if calibrated is not None:
        ax.plot(calibrated.fpr, calibrated.sensitivity, "s", color="gray", markersize=7, label="calibrated")
    if point is not None:
        ax.plot(point.fpr, point.sensitivity, "o", color="tab:red", markersize=9,
                label=f"FPR {_fmt(point.fpr)}, TPR {_fmt(point.sensitivity)}")
    ax.set(xlabel="false positive rate", ylabel="sensitivity (TPR)", title=f"ROC, AUROC {curves.auroc:.3f}",
           xlim=(-0.03, 1.03), ylim=(-0.03, 1.03))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_pr(ax, curves: Curves, point: OperatingPoint | None = None, calibrated: OperatingPoint | None = None) -> None:
    """Precision-recall curve (AUPRC in the title) with the operating point(s) marked."""
    ax.plot(curves.recall, curves.precision, color="tab:purple", linewidth=2, label="PR")
    ax.axhline(curves.prevalence, color="gray", linestyle=":", linewidth=1, label=f"prevalence {curves.prevalence:.2f}")
    if calibrated is not None and np.isfinite(calibrated.precision):
        ax.plot(calibrated.sensitivity, calibrated.precision, "s", color="gray", markersize=7, label="calibrated")
    if point is not None and np.isfinite(point.precision):
        ax.plot(point.sensitivity, point.precision, "o", color="tab:red", markersize=9,
                label=f"R {_fmt(point.sensitivity)}, P {_fmt(point.precision)}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=f"precision-recall, AUPRC {curves.auprc:.3f}",
           xlim=(-0.03, 1.03), ylim=(-0.03, 1.03))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def plot_confusion(ax, point: OperatingPoint) -> None:
    """The 2×2 confusion matrix (rows = truth, columns = predicted) with counts and row fractions."""
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


# ----------------------------------------------------------------------------------------- figures
def score_distribution_figure(normal_scores, abnormal_scores=None, *, threshold: float | None = None,
                              calibrator=None, calibrated_threshold: float | None = None, dpi: int = 100) -> Figure:
    """One-panel figure of :func:`plot_score_distribution`."""
    fig = _figure((6.5, 3.8), dpi)
    plot_score_distribution(fig.subplots(), normal_scores, abnormal_scores, threshold=threshold,
                            calibrator=calibrator, calibrated_threshold=calibrated_threshold)
    return fig


def roc_pr_figure(curves: Curves, point: OperatingPoint | None = None, calibrated: OperatingPoint | None = None,
                  dpi: int = 100) -> Figure:
    """Two panels: ROC | precision-recall, each with the operating point(s)."""
    fig = _figure((9.0, 4.0), dpi)
    ax_roc, ax_pr = fig.subplots(1, 2)
    plot_roc(ax_roc, curves, point, calibrated)
    plot_pr(ax_pr, curves, point, calibrated)
    return fig


def tuning_figure(tuner: ThresholdTuner, threshold: float, dpi: int = 90) -> Figure:
    """Dashboard of one threshold: score distributions | ROC | PR | confusion matrix.

    Parameters
    ----------
    tuner : ThresholdTuner
        Labelled scores (and, optionally, the calibrator, whose threshold is shown in gray).
    threshold : float
        The scan-score threshold to show.
    """
    point = tuner.at(threshold)
    cal_t = tuner.calibrated
    calibrated = tuner.at(cal_t) if cal_t is not None and np.isfinite(cal_t) else None
    fig = _figure((13.0, 7.2), dpi)
    axes = fig.subplots(2, 2)
    plot_score_distribution(axes[0, 0], tuner.normal_scores, tuner.abnormal_scores, threshold=threshold,
                            calibrator=tuner.calibrator, calibrated_threshold=cal_t)
    plot_confusion(axes[0, 1], point)
    plot_roc(axes[1, 0], tuner.curves_, point, calibrated)
    plot_pr(axes[1, 1], tuner.curves_, point, calibrated)
    fig.suptitle(f"threshold {threshold:.5g}: observed FPR {_fmt(point.fpr)} on {point.n_normal} normals, "
                 f"sensitivity {_fmt(point.sensitivity)} on {point.n_abnormal} abnormals")
    return fig


def _draw_slice(ax, image, heatmap=None, lesion_labels=None, *, vmax=None, pixel_threshold=None,
                pixel_aspect: float = 1.0) -> None:
    ax.imshow(np.asarray(image, float), cmap="gray", vmin=0.0, vmax=1.0, aspect=pixel_aspect, interpolation="nearest")
    if heatmap is not None:
        hm = np.asarray(heatmap, float)
        lo = 0.0 if pixel_threshold is None else float(pixel_threshold)
        shown = np.ma.masked_array(hm, mask=~np.isfinite(hm) | (hm <= 0) | (hm < lo))
        hi = float(vmax) if vmax is not None else (float(shown.max()) if shown.count() else lo + 1.0)
        cmap = colormaps["inferno"].with_extremes(bad=(0, 0, 0, 0))
        ax.imshow(shown, cmap=cmap, norm=Normalize(lo, max(hi, lo + 1e-9)), alpha=0.65, aspect=pixel_aspect,
                  interpolation="nearest")
    if lesion_labels is not None and np.any(lesion_labels):
        from skimage.measure import find_contours

        lab = np.asarray(lesion_labels)
        for lid in np.unique(lab[lab > 0]):
            for c in find_contours(np.pad(lab == lid, 1).astype(float), 0.5):
                ax.plot(c[:, 1] - 1, c[:, 0] - 1, color=_LESION_COLOUR, linewidth=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def _aspect(result) -> float:
    sp = getattr(getattr(result, "prepared", None), "spacing", None)
    return float(sp[1] / sp[2]) if sp is not None else 1.0


def scan_figure(result, slices: Sequence[int] | None = None, n_slices: int = 3, pixel_threshold: float | None = None,
                dpi: int = 90) -> Figure:
    """The top-scoring slices of one scored scan: CT on top, residual heatmap and lesions below.

    Parameters
    ----------
    result : ScanResult
        From :meth:`AnomalyDetector.score_scan` (its ``image``, ``heatmap``, ``lesion_labels`` and
        ``slice_scores`` on the model grid ``(z, size, size)``).
    slices : sequence of int, optional
        Slice indices to show (default: the ``n_slices`` highest slice scores, in slice order).
    pixel_threshold : float, optional
        Heatmap values below it are not drawn (e.g. ``det.pixel_threshold_``).
    """
    scores = np.nan_to_num(np.asarray(result.slice_scores, float), nan=-np.inf)
    if slices is None:
        order = [int(i) for i in np.argsort(scores)[::-1][:n_slices] if np.isfinite(scores[i])]
        slices = sorted(order) or [int(result.top_slice)]
    slices = [int(k) for k in slices]
    vmax = max(float(np.nanmax(result.heatmap)), 1e-6)
    aspect = _aspect(result)
    fig = _figure((2.6 * len(slices) + 0.4, 5.6), dpi)
    axes = np.asarray(fig.subplots(2, len(slices), squeeze=False))
    for j, k in enumerate(slices):
        _draw_slice(axes[0, j], result.image[k], pixel_aspect=aspect)
        axes[0, j].set_title(f"slice {k}  score {result.slice_scores[k]:.3g}", fontsize=8)
        _draw_slice(axes[1, j], result.image[k], result.heatmap[k], result.lesion_labels[k], vmax=vmax,
                    pixel_threshold=pixel_threshold, pixel_aspect=aspect)
    fig.suptitle(f"{_short(result.source)}: {result.label} (score {result.scan_score:.4g}, p {result.p_value:.3g}, "
                 f"{len(result.lesions)} lesions)", fontsize=10)
    return fig


def _short(source: str, n: int = 40) -> str:
    name = str(source).replace("\\", "/").rsplit("/", 1)[-1]
    return name if len(name) <= n else "…" + name[-n + 1:]


def examples_figure(results: Sequence, y_true, threshold: float, max_examples: int = 6,
                    pixel_threshold: float | None = None, dpi: int = 80) -> Figure:
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
        Number of panels.
    """
    y = labels_as_bool(y_true)
    if len(results) != y.size:
        raise ConfigError(f"{len(results)} results but {y.size} labels")
    s = np.array([r.scan_score for r in results], float)
    order = [i for i in np.argsort(np.abs(s - float(threshold))) if np.isfinite(s[i])][:max_examples]
    n = max(len(order), 1)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = _figure((3.2 * cols, 3.4 * rows), dpi)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(order):]:
        ax.set_axis_off()
    for ax, i in zip(axes, order):
        r = results[i]
        k = int(r.top_slice)
        _draw_slice(ax, r.image[k], r.heatmap[k], r.lesion_labels[k], vmax=max(float(np.nanmax(r.heatmap)), 1e-6),
                    pixel_threshold=pixel_threshold, pixel_aspect=_aspect(r))
        pred = s[i] > float(threshold)
        outcome = ("T" if pred == y[i] else "F") + ("P" if pred else "N")
        ax.set_title(f"{outcome}  {_short(r.source, 22)}\nscore {s[i]:.4g}, slice {k}", fontsize=8,
                     color=OUTCOME_COLOURS[outcome])
    point = operating_point(y, s, threshold)
    fig.suptitle(f"scans nearest the threshold {threshold:.4g} (TP {point.tp}, FP {point.fp}, TN {point.tn}, "
                 f"FN {point.fn})", fontsize=10)
    return fig
