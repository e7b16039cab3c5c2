"""Writers of the figures and the report: PNG files of :mod:`aeanomaly.figures`, and the HTML report.

Each ``save_*`` function builds its figure with :mod:`aeanomaly.figures` (Agg canvas, never pyplot,
so it is safe from threads and leaves the global backend alone), writes it as PNG to a temporary
path beside the target and renames it into place: a failure leaves neither a half-written file nor
a temporary one, and an older file of that name stays as it was. Each returns the
:class:`~pathlib.Path` written. Bad input raises :class:`~aeanomaly.errors.ConfigError` naming the
target file and the reason; a write failure raises :class:`~aeanomaly.errors.AeAnomalyError`.

The self-contained HTML report is written by :func:`write_report` (from :mod:`aeanomaly.report_html`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from . import figures, tuning
from .errors import AeAnomalyError, ConfigError
from .io.writers import atomic_path
from .report_html import write_report

__all__ = [
    "save_figure",
    "save_overlay",
    "save_eval_overlay",
    "save_training_curves",
    "save_score_distribution",
    "save_roc_pr",
    "write_report",
]

PathLike = str | os.PathLike


def save_figure(path: PathLike, build: Callable[[], Figure] | Figure, dpi: int | None = None) -> Path:
    """Write a figure as PNG to ``path`` atomically.

    Parameters
    ----------
    path : str or PathLike
        Output PNG; its folder is created if needed.
    build : Figure or callable returning a Figure
        The figure, or a function that builds it (an :class:`~aeanomaly.errors.AeAnomalyError` it
        raises without a path gets ``path``, so the message names the file that was not written).
    dpi : int, optional
        Resolution of the PNG (default: the figure's).

    Returns
    -------
    Path
        ``path``, the figure written.

    Raises
    ------
    AeAnomalyError
        The figure cannot be built (its own error, now naming ``path``) or the file cannot be written.
    """
    try:
        fig = build() if callable(build) else build
    except AeAnomalyError as err:
        if err.path is None:
            raise type(err)(err.reason, path=path) from err
        raise
    if not isinstance(fig, Figure):
        raise ConfigError(f"expected a matplotlib Figure, got {type(fig).__name__}", path=path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            # zlib level 1 instead of Pillow's 6: a 512 × 512 overlay encodes in 0.16 s instead of 0.22 s
            # for a file about 10 % larger (three overlays per scored scan by default)
            fig.savefig(tmp, format="png", dpi=fig.dpi if dpi is None else dpi, facecolor="white",
                        pil_kwargs={"compress_level": 1})
    except OSError as err:
        raise AeAnomalyError(f"cannot write PNG ({err.strerror or err})", path=path) from err
    return Path(path)


def save_overlay(path: PathLike, image, heatmap=None, lesion_labels=None, *, vmax: float | None = None,
                 threshold: float | None = None, title: str = "", dpi: int = 100,
                 pixel_aspect: float = 1.0) -> Path:
    """Write :func:`aeanomaly.figures.overlay_figure` as a PNG: the CT slice alone | the slice with its
    residual heatmap (transparent below ``threshold``), colorbar and outlined, numbered lesions.

    Parameters
    ----------
    path : str or PathLike
        The PNG to write.
    image, heatmap, lesion_labels, vmax, threshold, title, pixel_aspect
        As in :func:`aeanomaly.figures.draw_slice`: a windowed slice in [0, 1] ``(rows, cols)``, its
        residuals and lesion ids of the same shape, the colour scale's top and bottom, the figure
        title and row / column spacing (so that anatomy is not stretched).
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    Path
        ``path``, the overlay written.

    Raises
    ------
    ConfigError
        An array is not 2-D or its shape differs from the image's, or ``pixel_aspect`` is not > 0.
    """
    return save_figure(path, lambda: figures.overlay_figure(
        image, heatmap, lesion_labels, vmax=vmax, threshold=threshold, title=title, pixel_aspect=pixel_aspect,
        dpi=dpi))


def save_eval_overlay(path: PathLike, image, pred_mask, true_mask, title: str = "", dpi: int = 100, *,
                      pixel_aspect: float = 1.0) -> Path:
    """Write :func:`aeanomaly.figures.eval_overlay_figure` as a PNG: a slice with predicted vs. true lesion
    masks, TP yellow, FP green, FN red, the Dice coefficient in the title.

    Parameters
    ----------
    path : str or PathLike
        The PNG to write.
    image, pred_mask, true_mask
        A windowed slice in [0, 1] ``(rows, cols)`` and two bool masks of that shape.
    title : str
        Prefix of the axes title.
    dpi : int
        Resolution of the PNG.
    pixel_aspect : float
        Row spacing / column spacing of the slice.

    Returns
    -------
    Path
        ``path``, the evaluation overlay written.

    Raises
    ------
    ConfigError
        An array is not 2-D or a mask's shape differs from the image's.
    """
    return save_figure(path, lambda: figures.eval_overlay_figure(
        image, pred_mask, true_mask, title=title, pixel_aspect=pixel_aspect, dpi=dpi))


def save_training_curves(path: PathLike, history: Mapping[str, Sequence[float]], dpi: int = 100) -> Path:
    """Write :func:`aeanomaly.figures.training_curves_figure` as a PNG (losses | other metrics by epoch).

    Parameters
    ----------
    path : str or PathLike
        The PNG to write.
    history : mapping of str to sequence of float
        E.g. Keras' ``History.history``: ``{"loss": [...], "val_loss": [...]}``.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    Path
        ``path``, the training curves written.

    Raises
    ------
    ConfigError
        ``history`` is empty or holds no value.
    """
    return save_figure(path, lambda: figures.training_curves_figure(history, dpi=dpi))


def save_score_distribution(path: PathLike, normal_scores, abnormal_scores=None, threshold: float | None = None,
                            density: Callable[[np.ndarray], np.ndarray] | None = None, dpi: int = 100,
                            title: str = "scan score distribution") -> Path:
    """Write :func:`aeanomaly.figures.score_distribution_figure` as a PNG: histograms of scan scores, the
    decision threshold and a fitted density of normal scores.

    Parameters
    ----------
    path : str or PathLike
        The PNG to write.
    normal_scores, abnormal_scores : array_like
        Scan scores of normal (e.g. the calibration set) and abnormal scans; non-finite ones are
        left out.
    threshold : float, optional
        Decision threshold (a vertical line).
    density : callable, optional
        ``density(x) -> pdf`` on a 1-D grid of scores (e.g. the calibrator's); the histograms are
        then normalised to unit area.
    dpi : int
        Resolution of the PNG.
    title : str
        Axes title (e.g. the calibrator and its goodness of fit).

    Returns
    -------
    Path
        ``path``, the distribution written.

    Raises
    ------
    ConfigError
        No finite score at all, or ``density`` returns something other than one finite value per x.
    """
    return save_figure(path, lambda: figures.score_distribution_figure(
        normal_scores, abnormal_scores, threshold=threshold, density=density, title=title, dpi=dpi))


def _roc_pr(y_true, scores, operating_point, dpi: int) -> Figure:
    curves = tuning.roc_pr_curves(y_true, scores)
    point = operating_point
    if point is not None and not isinstance(point, (Mapping, tuning.OperatingPoint)):
        try:
            t = float(point)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"operating_point must be a score threshold or a mapping, got {point!r}") from err
        if math.isnan(t):
            raise ConfigError("operating_point threshold must not be NaN")
        point = tuning.operating_point(y_true, scores, t)
    return figures.roc_pr_figure(curves, point, dpi=dpi)


def save_roc_pr(path: PathLike, y_true, scores, operating_point=None, dpi: int = 100) -> Path:
    """Write :func:`aeanomaly.figures.roc_pr_figure` as a PNG: ROC (AUROC) | precision-recall (AUPRC).

    Parameters
    ----------
    path : str or PathLike
        The PNG to write.
    y_true : array_like, shape (n,)
        1 / True / ``"abnormal"`` = abnormal.
    scores : array_like, shape (n,)
        Scan scores (higher = more anomalous); scans with a non-finite score are left out.
    operating_point : float, OperatingPoint or mapping, optional
        A score threshold (abnormal when ``score > threshold``, as everywhere in aeanomaly), an
        :class:`~aeanomaly.tuning.OperatingPoint`, or a mapping with ``fpr``/``tpr`` and/or
        ``recall``/``precision``; marked on both curves.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    Path
        ``path``, the ROC and PR curves written.

    Raises
    ------
    ConfigError
        Lengths differ, a label is not normal/abnormal, or the scans do not hold both classes.
    """
    return save_figure(path, lambda: _roc_pr(y_true, scores, operating_point, dpi))
