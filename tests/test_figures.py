"""Tests of aeanomaly.figures: every figure builds on its own Agg canvas, draws what it says (checked
on the rendered pixels where colour matters, on the artists otherwise) and rejects bad input with a
ConfigError.

The worked tuning example: 4 normals scoring 0.1, 0.2, 0.3, 0.6 and 4 abnormals scoring 0.4, 0.5,
0.7, 0.8 (interleaved). A scan is abnormal when ``score > threshold``.
"""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aeanomaly import figures
from aeanomaly.calibrate import Calibrator
from aeanomaly.errors import ConfigError
from aeanomaly.tuning import ThresholdTuner, operating_point, roc_pr_curves

DPI = 50
Y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
S = np.array([0.1, 0.4, 0.2, 0.5, 0.3, 0.7, 0.6, 0.8])


# ------------------------------------------------------------------------------------------ helpers
def _render(fig: Figure) -> np.ndarray:
    """The figure drawn by its own canvas, RGB floats in [0, 1], shape (height, width, 3)."""
    assert isinstance(fig.canvas, FigureCanvasAgg)  # built with the Agg canvas, not by pyplot
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255.0


def _pixel(fig, ax, row: float, col: float) -> tuple[int, int]:
    """Rendered (row, col) of the data point (row, col) of an imshow axes."""
    x, y = ax.transData.transform((col, row))
    height = fig.canvas.get_width_height()[1]
    return int(round(height - y)), int(round(x))


def _axes_crop(rgb: np.ndarray, fig, ax) -> np.ndarray:
    bb = ax.get_window_extent()
    h = fig.canvas.get_width_height()[1]
    return rgb[int(h - bb.y1) + 1:int(h - bb.y0) - 1, int(bb.x0) + 1:int(bb.x1) - 1]


def _is_gray(px, tol=0.03) -> bool:
    return float(np.ptp(px)) <= tol


def _yellow(rgb):
    return (rgb[..., 0] > 0.6) & (rgb[..., 1] > 0.5) & (rgb[..., 2] < 0.4)


def _red(rgb):
    return (rgb[..., 0] > 0.55) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)


def _green(rgb):
    return (rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.4) & (rgb[..., 2] < 0.4)


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.fixture
def slice_case():
    """A 48×56 'CT' slice (smooth gray), a residual disc (radius 5 at row 14, col 16) and its label 7."""
    yy, xx = np.mgrid[:48, :56]
    image = 0.3 + 0.4 * (xx / 55.0)
    heat = np.where((yy - 14) ** 2 + (xx - 16) ** 2 <= 25, 1.0, 0.0)
    labels = np.where(heat > 0, 7, 0).astype(np.int32)
    return image, heat, labels


def _fake_result(name: str, score: float, seed: int, z: int = 4, n: int = 16):
    rng = np.random.default_rng(seed)
    lab = np.zeros((z, n, n), np.int32)
    lab[:, 5:9, 5:9] = 1
    return SimpleNamespace(source=f"/data/{name}.nii.gz", scan_score=score, p_value=0.5, label="normal",
                           slice_scores=np.array([0.1, 0.4, np.nan, 0.3][:z]), top_slice=1, lesions=[{}],
                           image=rng.random((z, n, n)), heatmap=rng.random((z, n, n)), lesion_labels=lab,
                           prepared=SimpleNamespace(spacing=(5.0, 2.0, 1.0)))


# ------------------------------------------------------------------------------------ slice overlay
def test_overlay_colours_the_lesion_only_in_the_right_panel(slice_case):
    image, heat, labels = slice_case
    before = (image.copy(), heat.copy(), labels.copy())
    fig = figures.overlay_figure(image, heat, labels, threshold=0.1, title="s", dpi=DPI)
    rgb = _render(fig)
    ax_ct, ax_ov = fig.axes[:2]
    assert ax_ct.get_title() == "CT" and ax_ov.get_title() == "CT + residual + lesions"
    assert fig.get_suptitle() == "s"
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20
    lesion_ov, lesion_ct = _pixel(fig, ax_ov, 14, 16), _pixel(fig, ax_ct, 14, 16)
    assert not _is_gray(rgb[lesion_ov], tol=0.15), rgb[lesion_ov]  # heatmap colour over the lesion
    assert _is_gray(rgb[lesion_ct]), rgb[lesion_ct]  # the CT-only panel stays gray
    far_ov, far_ct = _pixel(fig, ax_ov, 40, 45), _pixel(fig, ax_ct, 40, 45)
    np.testing.assert_allclose(rgb[far_ov], rgb[far_ct], atol=0.02)  # zero residual is transparent
    assert "residual" in [a.get_ylabel() for a in fig.axes]  # the colorbar
    for a, b in zip(before, (image, heat, labels)):
        np.testing.assert_array_equal(a, b)  # inputs untouched


def test_overlay_hides_residuals_below_threshold(slice_case):
    image, heat, _ = slice_case
    fig = figures.overlay_figure(image, heat * 0.5, threshold=0.6, dpi=DPI)
    rgb = _render(fig)
    assert fig.axes[1].get_title() == "CT + residual"
    ov, ct = _pixel(fig, fig.axes[1], 14, 16), _pixel(fig, fig.axes[0], 14, 16)
    np.testing.assert_allclose(rgb[ov], rgb[ct], atol=0.02)  # below threshold: CT shows through


def test_overlay_draws_contours_and_lesion_ids(slice_case):
    image, _, labels = slice_case
    fig = figures.overlay_figure(image, lesion_labels=labels, dpi=DPI)
    rgb = _render(fig)
    ax = fig.axes[1]
    assert len(fig.axes) == 2  # no heatmap: no colorbar
    assert [t.get_text() for t in ax.texts] == ["7"]
    r, c = _pixel(fig, ax, 14, 21)  # on the right edge of the disc
    patch = rgb[r - 2:r + 3, c - 2:c + 3]
    assert ((patch[..., 0] < 0.4) & (patch[..., 1] > 0.6) & (patch[..., 2] > 0.6)).any()  # cyan outline
    assert _is_gray(rgb[_pixel(fig, ax, 14, 16)])  # inside the outline: no fill without a heatmap


def test_lesion_touching_the_border_gets_a_closed_outline():
    labels = np.zeros((20, 20), int)
    labels[0:5, 0:5] = 3
    fig = figures.overlay_figure(np.full((20, 20), 0.5), lesion_labels=labels, dpi=DPI)
    line = fig.axes[1].lines[0]
    xy = np.c_[line.get_xdata(), line.get_ydata()]
    np.testing.assert_allclose(xy[0], xy[-1])  # closed
    assert xy.min() < 0  # it runs round the border pixels
    assert [t.get_text() for t in fig.axes[1].texts] == ["3"]


def test_overlay_pixel_aspect_stretches_rows(slice_case):
    fig = figures.overlay_figure(slice_case[0], pixel_aspect=2.0, dpi=DPI)
    _render(fig)
    (x0, y0), (x1, y1) = fig.axes[1].transData.transform([(0, 0), (1, 1)])
    assert abs(y0 - y1) == pytest.approx(2 * abs(x1 - x0), rel=1e-6)  # a row is twice a column


def test_draw_slice_returns_the_heatmap_layer_and_shows_nan_as_black(slice_case):
    image, heat, _ = slice_case
    ax = Figure().subplots()  # the drawers work on any Axes
    assert figures.draw_slice(ax, image) is None
    img = image.copy()
    img[0, 0] = np.nan
    layer = figures.draw_slice(ax, img, heat, vmax=2.0)
    assert layer.norm.vmin == 0.0 and layer.norm.vmax == 2.0
    assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0
    assert ax.images[1].get_array().mask[0, 0]  # masked in the second CT layer: the "bad" colour, black


@pytest.mark.parametrize("call, match", [
    (lambda im, hm: figures.overlay_figure(im, hm[:, :50]),
     r"heatmap shape \(48, 50\) differs from the image's \(48, 56\)"),
    (lambda im, hm: figures.overlay_figure(np.zeros((2, 3, 4))), "image must be a non-empty 2-D array"),
    (lambda im, hm: figures.overlay_figure(np.zeros((0, 3))), "image must be a non-empty 2-D array"),
    (lambda im, hm: figures.overlay_figure(im, lesion_labels=np.zeros((3, 3))), "lesion_labels shape"),
    (lambda im, hm: figures.overlay_figure(im, pixel_aspect=0), "pixel_aspect must be a positive number"),
    (lambda im, hm: figures.overlay_figure(im, pixel_aspect=float("nan")), "pixel_aspect must be a positive"),
    (lambda im, hm: figures.overlay_figure(im, hm, vmax="big"), "vmax must be a number"),
    (lambda im, hm: figures.overlay_figure(im, dpi=0), "dpi must be a positive whole number"),
    (lambda im, hm: figures.overlay_figure(im, dpi=2.5), "dpi must be a positive whole number"),
])
def test_overlay_rejects_bad_input(slice_case, call, match):
    image, heat, _ = slice_case
    with pytest.raises(ConfigError, match=match):
        call(image, heat)


# ------------------------------------------------------------------------------------- eval overlay
def _eval(pred, true, **kw):
    fig = figures.eval_overlay_figure(np.full((40, 40), 0.5), pred, true, dpi=DPI, **kw)
    return _render(fig), fig, fig.axes[0]


def test_eval_overlay_true_positive_only_is_yellow_not_red():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    rgb, fig, ax = _eval(mask, mask, title="case")
    assert _yellow(rgb[_pixel(fig, ax, 15, 15)])
    assert _is_gray(rgb[_pixel(fig, ax, 30, 30)])
    crop = _axes_crop(rgb, fig, ax)
    assert _yellow(crop).sum() > 20 and not _red(crop).any() and not _green(crop).any()
    assert ax.get_title() == "case — Dice 1.000"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["TP (100 px)", "FP (0 px)", "FN (0 px)"]


def test_eval_overlay_places_fp_green_and_fn_red():
    pred = np.zeros((40, 40), bool)
    true = np.zeros((40, 40), bool)
    pred[5:12, 5:12] = True  # false positive
    true[25:35, 25:35] = True  # false negative
    rgb, fig, ax = _eval(pred, true)
    assert _green(rgb[_pixel(fig, ax, 8, 8)])
    assert _red(rgb[_pixel(fig, ax, 30, 30)])
    assert not _yellow(_axes_crop(rgb, fig, ax)).any()
    assert ax.get_title() == "Dice 0.000"


def test_eval_overlay_empty_masks_and_bad_input():
    empty = np.zeros((40, 40), bool)
    _, _, ax = _eval(empty, empty, pixel_aspect=1.5)
    assert ax.get_title() == "Dice n/a (both masks empty)"
    with pytest.raises(ConfigError, match=r"true_mask shape \(4, 4\) differs"):
        figures.eval_overlay_figure(np.zeros((40, 40)), empty, np.zeros((4, 4)))


# --------------------------------------------------------------------------------- training curves
def test_training_curves_panels_styles_and_log_scale():
    hist = {"loss": [1.0, 0.1, 0.02], "val_loss": [1.1, 0.2, 0.05], "mae": [0.5, 0.4, 0.35]}
    fig = figures.training_curves_figure(hist, dpi=DPI)
    ax_loss, ax_other = fig.axes
    assert fig.get_suptitle() == "training curves"
    assert ax_loss.get_yscale() == "log" and ax_other.get_yscale() == "linear"
    assert [ln.get_label() for ln in ax_loss.lines] == ["loss", "val_loss"]
    assert ax_loss.lines[1].get_linestyle() == "--"
    assert ax_loss.lines[0].get_color() == ax_loss.lines[1].get_color()  # val_ in its base key's colour
    np.testing.assert_array_equal(ax_loss.lines[0].get_xdata(), [1, 2, 3])
    assert ax_loss.get_ylabel() == "loss" and ax_other.get_ylabel() == "value"
    narrow = figures.training_curves_figure({"loss": [1.0, 0.5], "val_loss": [1.2, 0.6]})
    assert len(narrow.axes) == 1 and narrow.axes[0].get_yscale() == "linear"
    _render(fig)


@pytest.mark.parametrize("history, match", [
    ({"loss": []}, "training history is empty"),
    ({}, "training history is empty"),
    ([1.0, 0.5], "must be a mapping"),
    ({"loss": ["a", "b"]}, "values must be numbers"),
])
def test_training_curves_reject_bad_history(history, match):
    with pytest.raises(ConfigError, match=match):
        figures.training_curves_figure(history)


# ------------------------------------------------------------------------------ score distribution
def test_score_distribution_threshold_and_explicit_density(rng):
    normal, abnormal = rng.normal(0, 1, 60), rng.normal(4, 1, 15)

    def pdf(x):
        return np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi)

    fig = figures.score_distribution_figure(normal, abnormal, threshold=1.64, density=pdf, dpi=DPI, title="t")
    ax = fig.axes[0]
    assert ax.get_title() == "t" and ax.get_ylabel() == "density"
    assert [ln.get_label() for ln in ax.lines] == ["fitted normal density", "threshold 1.64"]
    dens = ax.lines[0]
    np.testing.assert_allclose(dens.get_ydata(), pdf(dens.get_xdata()))
    assert list(ax.lines[1].get_xdata()) == [1.64, 1.64]
    assert len(ax.containers) == 2
    bars = [bar for container in ax.containers for bar in container]
    assert sum(b.get_height() * b.get_width() for b in bars) == pytest.approx(2.0)  # two histograms of unit area
    assert "normal (n=60)" in _legend_texts(ax) and "abnormal (n=15)" in _legend_texts(ax)
    _render(fig)


def test_score_distribution_counts_without_density():
    fig = figures.score_distribution_figure([0.1, 0.2, 0.2, 0.9], dpi=DPI)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "scans" and ax.get_title() == "scan score distribution"
    assert sum(p.get_height() for p in ax.containers[0]) == 4
    assert ax.lines == [] or all(ln.get_label() != "fitted normal density" for ln in ax.lines)


def test_score_distribution_with_the_calibrator():
    cal = Calibrator("empirical", 0.1).fit(np.linspace(0.05, 0.5, 19))
    fig = figures.score_distribution_figure(S[Y == 0], S[Y == 1], threshold=0.45, calibrator=cal,
                                            calibrated_threshold=0.55)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    legend = _legend_texts(ax)
    for want in ("normal (n=4)", "abnormal (n=4)", "fitted normal density (empirical)",
                 "calibration normals (n=19)", "calibrated 0.55", "threshold 0.45"):
        assert want in legend, legend
    assert len(ax.containers) == 2  # two histograms
    rug = next(ln for ln in ax.lines if ln.get_label().startswith("calibration normals"))
    np.testing.assert_allclose(np.sort(rug.get_xdata()), np.linspace(0.05, 0.5, 19))
    vlines = [ln for ln in ax.lines if list(ln.get_xdata()) in ([0.45, 0.45], [0.55, 0.55])]
    assert len(vlines) == 2
    lo, hi = ax.get_xlim()
    assert lo < 0.05 and hi > 0.8
    _render(fig)


def test_score_distribution_takes_an_empty_class():
    fig = figures.score_distribution_figure([], [0.3, 0.5], threshold=0.4)  # an all-abnormal evaluation
    assert _legend_texts(fig.axes[0])[0] == "abnormal (n=2)"


@pytest.mark.parametrize("kw, match", [
    (dict(normal_scores=[np.nan]), "no finite score to plot"),
    (dict(normal_scores=[]), "no finite score to plot"),
    (dict(normal_scores=["a"]), "scores must be numbers"),
    (dict(normal_scores=[0.1, 0.2], density=lambda x: np.ones(3)), "density must return one finite value"),
    (dict(normal_scores=[0.1, 0.2], density=lambda x: x * np.nan), "density must return one finite value"),
    (dict(normal_scores=[0.1, 0.2], threshold="high"), "threshold must be a number"),
])
def test_score_distribution_rejects_bad_input(kw, match):
    with pytest.raises(ConfigError, match=match):
        figures.score_distribution_figure(**kw)


# ------------------------------------------------------------------------------------------ ROC/PR
def test_roc_pr_figure_curves_titles_and_points():
    c = roc_pr_curves(Y, S)
    point, calibrated = operating_point(Y, S, 0.35), operating_point(Y, S, 0.65)
    fig = figures.roc_pr_figure(c, point, calibrated, dpi=DPI)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    roc, pr = fig.axes
    assert roc.get_title() == "ROC, AUROC 0.875" and pr.get_title() == f"precision-recall, AUPRC {c.auprc:.3f}"
    np.testing.assert_allclose(roc.lines[0].get_xdata(), c.fpr)
    np.testing.assert_allclose(roc.lines[0].get_ydata(), c.tpr)
    marks = {ln.get_label(): (float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in roc.lines}
    assert marks["FPR 0.25, TPR 1.00"] == (0.25, 1.0) and marks["calibrated"] == (0.0, 0.5)
    pr_marks = {ln.get_label(): (float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in pr.lines}
    assert pr_marks["R 1.00, P 0.80"] == pytest.approx((1.0, 0.8))
    assert "prevalence 0.50" in _legend_texts(pr)
    _render(fig)


def test_pr_steps_enclose_the_auprc():
    c = roc_pr_curves(Y, S)
    pr = figures.roc_pr_figure(c).axes[1]
    line = pr.lines[0]
    assert line.get_drawstyle() == "steps-pre"
    r, p = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert float(np.sum(np.diff(r) * p[1:])) == pytest.approx(c.auprc)  # the area under the drawn steps


def test_roc_pr_figure_takes_a_mapping_point():
    c = roc_pr_curves(Y, S)
    roc, pr = figures.roc_pr_figure(c, {"fpr": 0.1, "tpr": 0.7}).axes
    assert (roc.lines[-1].get_xdata()[0], roc.lines[-1].get_ydata()[0]) == (0.1, 0.7)
    assert len(pr.lines) == 2  # the curve and the prevalence; no precision: no PR mark
    roc, pr = figures.roc_pr_figure(c, {"recall": 0.5, "precision": 0.9}).axes
    assert (pr.lines[-1].get_xdata()[0], pr.lines[-1].get_ydata()[0]) == (0.5, 0.9)
    assert len(roc.lines) == 2  # no fpr: no ROC mark


@pytest.mark.parametrize("args, match", [
    (("curves",), "curves must be aeanomaly.tuning.Curves"),
    ((None, 0.5), "curves must be aeanomaly.tuning.Curves"),
])
def test_roc_pr_figure_rejects_other_curves(args, match):
    with pytest.raises(ConfigError, match=match):
        figures.roc_pr_figure(*args)


@pytest.mark.parametrize("point, match", [
    (0.5, "point must be an OperatingPoint or a mapping"),
    ({"threshold": 0.5}, "point mapping needs fpr/tpr and/or recall/precision"),
    ({"fpr": "x", "tpr": 0.5}, "point values must be numbers"),
])
def test_roc_pr_figure_rejects_bad_points(point, match):
    with pytest.raises(ConfigError, match=match):
        figures.roc_pr_figure(roc_pr_curves(Y, S), point)


# ------------------------------------------------------------------------- confusion and tuning
def test_confusion_figure():
    fig = figures.confusion_figure(operating_point(Y, S, 0.35), dpi=DPI)
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["TN\n3", "FP\n1", "FN\n0", "TP\n4"])
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "truth"
    assert ax.get_title() == "sens 1.00  spec 0.75  prec 0.80  F1 0.89" and fig.get_suptitle() == "threshold 0.35"
    nothing = figures.confusion_figure(operating_point(Y, S, 0.85))  # precision undefined
    assert "prec n/a  F1 n/a" in nothing.axes[0].get_title()
    with pytest.raises(ConfigError, match="point must be an aeanomaly.tuning.OperatingPoint"):
        figures.confusion_figure({"tp": 1})
    _render(fig)


def test_tuning_figure():
    tuner = ThresholdTuner(Y, S, Calibrator("empirical", 0.2).fit(np.linspace(0.05, 0.5, 19)))
    fig = figures.tuning_figure(tuner, 0.35)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert fig.get_suptitle() == "threshold 0.35: observed FPR 0.25 on 4 normals, sensitivity 1.00 on 4 abnormals"
    dist, conf, roc, pr = fig.axes
    assert dist.get_title() == "score distributions"
    assert sorted(t.get_text() for t in conf.texts) == sorted(["TN\n3", "FP\n1", "FN\n0", "TP\n4"])
    np.testing.assert_allclose(conf.images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    assert conf.get_title().startswith("sens 1.00  spec 0.75  prec 0.80")
    assert roc.get_title().startswith("ROC") and pr.get_title().startswith("precision-recall")
    assert "calibrated" in [ln.get_label() for ln in roc.lines]  # the calibrator's own threshold
    _render(fig)
    with pytest.raises(ConfigError, match="tuner must be an aeanomaly.tuning.ThresholdTuner"):
        figures.tuning_figure((Y, S), 0.35)
    with pytest.raises(ConfigError, match="threshold must be a number"):
        figures.tuning_figure(tuner, float("nan"))


# ------------------------------------------------------------------------------- scored scans
def test_scan_figure():
    fig = figures.scan_figure(_fake_result("a", 0.5, 0), n_slices=2, pixel_threshold=0.2)
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # 2 slices × (CT, heatmap)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["slice 1  score 0.4", "slice 3  score 0.3"]
    assert len(fig.axes[0].images) == 1 and not fig.axes[0].lines  # CT only on top
    assert len(fig.axes[2].images) == 2 and fig.axes[2].lines  # heatmap overlay and lesion contour
    assert fig.axes[2].images[1].norm.vmin == pytest.approx(0.2)  # the pixel threshold hides residuals
    assert fig.get_suptitle() == "a.nii.gz: normal (score 0.5, p 0.5, 1 lesions)"
    _render(fig)
    (x0, y0), (x1, y1) = fig.axes[0].transData.transform([(0, 0), (1, 1)])
    assert abs(y0 - y1) == pytest.approx(2 * abs(x1 - x0), rel=1e-6)  # spacing (5, 2, 1): rows twice columns
    chosen = figures.scan_figure(_fake_result("a", 0.5, 0), slices=[0])
    assert chosen.axes[0].get_title() == "slice 0  score 0.1"


def test_scan_figure_falls_back_to_the_top_slice_and_rejects_bad_input():
    r = _fake_result("b", 0.5, 1)
    r.slice_scores = np.full(4, np.nan)
    assert figures.scan_figure(r).axes[0].get_title() == "slice 1  score n/a"
    with pytest.raises(ConfigError, match=r"slices must be indices in \[0, 4\), got \[4\]"):
        figures.scan_figure(_fake_result("a", 0.5, 0), slices=[4])
    with pytest.raises(ConfigError, match="n_slices must be a whole number"):
        figures.scan_figure(_fake_result("a", 0.5, 0), n_slices=0)
    bad = _fake_result("a", 0.5, 0)
    bad.heatmap = bad.heatmap[:, :8]
    with pytest.raises(ConfigError, match="heatmap shape"):
        figures.scan_figure(bad)
    bad.image = np.zeros((16, 16))
    with pytest.raises(ConfigError, match=r"image of shape \(z, rows, cols\)"):
        figures.scan_figure(bad)


def test_examples_figure():
    results = [_fake_result(f"s{i}", v, i) for i, v in enumerate([0.1, 0.44, 0.47, 0.9])]
    fig = figures.examples_figure(results, [0, 1, 0, 1], threshold=0.45, max_examples=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    titles = [ax.get_title() for ax in fig.axes]  # nearest the threshold first: 0.44 (FN), 0.47 (FP)
    assert titles[0].startswith("FN  s1.nii.gz") and titles[1].startswith("FP  s2.nii.gz")
    assert matplotlib.colors.same_color(fig.axes[0].title.get_color(), figures.OUTCOME_COLOURS["FN"])
    assert fig.get_suptitle() == "scans nearest the threshold 0.45 (TP 1, FP 1, TN 1, FN 1)"
    _render(fig)
    grid = figures.examples_figure(results, [0, 1, 0, 1], threshold=0.45, max_examples=4)
    assert len(grid.axes) == 6 and sum(ax.axison for ax in grid.axes) == 4  # 2×3, two panels switched off
    with pytest.raises(ConfigError, match="4 results but 3 labels"):
        figures.examples_figure(results, [0, 1, 0], threshold=0.45)
    with pytest.raises(ConfigError, match="max_examples must be a whole number"):
        figures.examples_figure(results, [0, 1, 0, 1], threshold=0.45, max_examples=0)
    with pytest.raises(ConfigError, match="threshold must be a number"):
        figures.examples_figure(results, [0, 1, 0, 1], threshold=None)


def test_figures_import_no_detector_bundle_cli_or_pyplot():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(figures.__file__).read_text(encoding="utf-8"))
    imported = {("." * n.level + (n.module or "")) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith(".")} == {".errors", ".tuning"}, imported
    assert "matplotlib.pyplot" not in imported and not any(m.startswith("aeanomaly") for m in imported)
