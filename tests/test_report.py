"""Tests of aeanomaly.report (PNG figures) and aeanomaly.report_html (the HTML report)."""

from __future__ import annotations

import base64
import html
import re
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from sklearn.metrics import average_precision_score, roc_auc_score

from aeanomaly import report
from aeanomaly.errors import AeAnomalyError, ConfigError
from aeanomaly.report_html import DISCLAIMER, format_float, format_p_value

DPI = 50


# ------------------------------------------------------------------------------------------ helpers
def _read_rgb(path: Path) -> np.ndarray:
    img = iio.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
    return img[..., :3].astype(float) / 255.0


def _n_colours(rgb: np.ndarray) -> int:
    return len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0))


def _pixel(fig, ax, row: float, col: float) -> tuple[int, int]:
    """PNG (row, col) of the data point (row, col) of an imshow axes, after the figure is drawn."""
    x, y = ax.transData.transform((col, row))
    height = fig.canvas.get_width_height()[1]
    return int(round(height - y)), int(round(x))


def _drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig


def _axes_crop(rgb: np.ndarray, fig, ax) -> np.ndarray:
    """The PNG pixels inside an axes' bounding box (legends outside it are left out)."""
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


@pytest.fixture
def slice_case():
    """A 48×56 'CT' slice (smooth gray), a residual blob and its lesion label (id 7)."""
    yy, xx = np.mgrid[:48, :56]
    image = 0.3 + 0.4 * (xx / 55.0)
    heat = np.where((yy - 14) ** 2 + (xx - 16) ** 2 <= 25, 1.0, 0.0)
    labels = np.where(heat > 0, 7, 0).astype(np.int32)
    return image, heat, labels


# ------------------------------------------------------------------------------------------ overlay
def test_save_overlay_colours_the_lesion_only_in_the_right_panel(tmp_path, slice_case):
    image, heat, labels = slice_case
    before = (image.copy(), heat.copy(), labels.copy())
    out = report.save_overlay(tmp_path / "ov.png", image, heat, labels, threshold=0.1, title="s", dpi=DPI)
    assert out == tmp_path / "ov.png"
    rgb = _read_rgb(out)
    fig = _drawn(report._overlay_figure(image, heat, labels, threshold=0.1, title="s", dpi=DPI))
    assert rgb.shape[:2] == fig.canvas.get_width_height()[::-1]
    assert _n_colours(rgb) > 20
    ax_ct, ax_ov = fig.axes[:2]
    lesion_ov, lesion_ct = _pixel(fig, ax_ov, 14, 16), _pixel(fig, ax_ct, 14, 16)
    assert not _is_gray(rgb[lesion_ov], tol=0.15), rgb[lesion_ov]  # heatmap colour over the lesion
    assert _is_gray(rgb[lesion_ct]), rgb[lesion_ct]  # the CT-only panel stays gray
    far_ov, far_ct = _pixel(fig, ax_ov, 40, 45), _pixel(fig, ax_ct, 40, 45)
    np.testing.assert_allclose(rgb[far_ov], rgb[far_ct], atol=0.02)  # zero residual is transparent
    assert "residual" in [a.get_ylabel() for a in fig.axes]  # the colorbar
    for a, b in zip(before, (image, heat, labels)):
        np.testing.assert_array_equal(a, b)  # inputs untouched


def test_save_overlay_hides_residuals_below_threshold(tmp_path, slice_case):
    image, heat, _ = slice_case
    out = report.save_overlay(tmp_path / "ov.png", image, heat * 0.5, threshold=0.6, dpi=DPI)
    rgb = _read_rgb(out)
    fig = _drawn(report._overlay_figure(image, heat * 0.5, threshold=0.6, dpi=DPI))
    ov, ct = _pixel(fig, fig.axes[1], 14, 16), _pixel(fig, fig.axes[0], 14, 16)
    np.testing.assert_allclose(rgb[ov], rgb[ct], atol=0.02)  # below threshold: CT shows through


def test_save_overlay_draws_contours_and_lesion_ids(tmp_path, slice_case):
    image, _, labels = slice_case
    out = report.save_overlay(tmp_path / "ov.png", image, lesion_labels=labels, dpi=DPI)
    rgb = _read_rgb(out)
    fig = _drawn(report._overlay_figure(image, lesion_labels=labels, dpi=DPI))
    ax = fig.axes[1]
    assert [t.get_text() for t in ax.texts] == ["7"]
    r, c = _pixel(fig, ax, 14, 21)  # on the right edge of the disc (radius 5)
    patch = rgb[r - 2:r + 3, c - 2:c + 3]
    cyan = (patch[..., 0] < 0.4) & (patch[..., 1] > 0.6) & (patch[..., 2] > 0.6)
    assert cyan.any()
    assert _is_gray(rgb[_pixel(fig, ax, 14, 16)])  # inside the outline: no fill without a heatmap


def test_save_overlay_pixel_aspect_stretches_rows(slice_case):
    image = slice_case[0]
    fig = _drawn(report._overlay_figure(image, pixel_aspect=2.0, dpi=DPI))
    ax = fig.axes[1]
    (x0, y0), (x1, y1) = ax.transData.transform([(0, 0), (1, 1)])
    assert abs(y0 - y1) == pytest.approx(2 * abs(x1 - x0), rel=1e-6)  # a row is twice a column


def test_save_overlay_rejects_mismatched_shapes_and_writes_nothing(tmp_path, slice_case):
    image, heat, _ = slice_case
    target = tmp_path / "bad.png"
    with pytest.raises(ConfigError, match=r"bad\.png: heatmap shape \(48, 50\) differs"):
        report.save_overlay(target, image, heat[:, :50])
    with pytest.raises(ConfigError, match="2-D"):
        report.save_overlay(target, np.zeros((2, 3, 4)))
    with pytest.raises(ConfigError, match="pixel_aspect"):
        report.save_overlay(target, image, pixel_aspect=0)
    assert list(tmp_path.iterdir()) == []


def test_figures_can_be_drawn_from_threads(tmp_path, slice_case):
    image, heat, labels = slice_case
    errors: list[BaseException] = []

    def work(i):
        try:
            report.save_overlay(tmp_path / f"t{i}.png", image, heat * (i + 1), labels, dpi=DPI)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t0.png", "t1.png", "t2.png"]


# ------------------------------------------------------------------------------------- eval overlay
def _eval_case(tmp_path, pred, true, name):
    image = np.full((40, 40), 0.5)
    out = report.save_eval_overlay(tmp_path / name, image, pred, true, dpi=DPI)
    fig = _drawn(report._eval_figure(image, pred, true, dpi=DPI))
    rgb = _read_rgb(out)
    return rgb, fig, fig.axes[0]


def test_eval_overlay_true_positive_only_is_yellow_not_red(tmp_path):
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    rgb, fig, ax = _eval_case(tmp_path, mask, mask, "tp.png")
    assert _yellow(rgb[_pixel(fig, ax, 15, 15)])
    assert _is_gray(rgb[_pixel(fig, ax, 30, 30)])
    crop = _axes_crop(rgb, fig, ax)
    assert _yellow(crop).sum() > 20 and not _red(crop).any() and not _green(crop).any()
    assert "Dice 1.000" in ax.get_title()


def test_eval_overlay_places_fp_green_and_fn_red(tmp_path):
    pred = np.zeros((40, 40), bool)
    true = np.zeros((40, 40), bool)
    pred[5:12, 5:12] = True  # false positive
    true[25:35, 25:35] = True  # false negative
    rgb, fig, ax = _eval_case(tmp_path, pred, true, "fpfn.png")
    assert _green(rgb[_pixel(fig, ax, 8, 8)])
    assert _red(rgb[_pixel(fig, ax, 30, 30)])
    assert not _yellow(_axes_crop(rgb, fig, ax)).any()
    assert "Dice 0.000" in ax.get_title()


# ------------------------------------------------------------------------------------ other figures
def test_training_curves_png_and_log_scale(tmp_path):
    hist = {"loss": [1.0, 0.1, 0.02], "val_loss": [1.1, 0.2, 0.05], "mae": [0.5, 0.4, 0.35]}
    out = report.save_training_curves(tmp_path / "tc.png", hist, dpi=DPI)
    assert _n_colours(_read_rgb(out)) > 10
    fig = report._training_figure(hist)
    ax_loss, ax_other = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_other.get_yscale() == "linear"
    assert [ln.get_label() for ln in ax_loss.lines] == ["loss", "val_loss"]
    assert ax_loss.lines[1].get_linestyle() == "--"
    np.testing.assert_array_equal(ax_loss.lines[0].get_xdata(), [1, 2, 3])
    narrow = report._training_figure({"loss": [1.0, 0.5], "val_loss": [1.2, 0.6]})
    assert len(narrow.axes) == 1 and narrow.axes[0].get_yscale() == "linear"
    with pytest.raises(ConfigError, match="empty"):
        report.save_training_curves(tmp_path / "none.png", {"loss": []})
    assert not (tmp_path / "none.png").exists()


def test_score_distribution_threshold_and_density(tmp_path, rng):
    normal, abnormal = rng.normal(0, 1, 60), rng.normal(4, 1, 15)

    def pdf(x):
        return np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi)

    out = report.save_score_distribution(tmp_path / "sd.png", normal, abnormal, threshold=1.64, density=pdf, dpi=DPI)
    assert _n_colours(_read_rgb(out)) > 10
    ax = report._score_figure(normal, abnormal, 1.64, pdf).axes[0]
    labels = [ln.get_label() for ln in ax.lines]
    assert labels == ["fitted normal density", "threshold = 1.64"]
    dens = ax.lines[0]
    np.testing.assert_allclose(dens.get_ydata(), pdf(dens.get_xdata()))
    assert list(ax.lines[1].get_xdata()) == [1.64, 1.64]
    heights = np.array([p.get_height() for p in ax.patches])
    widths = np.array([p.get_width() for p in ax.patches])
    assert (heights * widths).sum() == pytest.approx(2.0)  # two histograms of unit area
    with pytest.raises(ConfigError, match="density must return one finite value"):
        report.save_score_distribution(tmp_path / "x.png", normal, density=lambda x: np.ones(3))
    with pytest.raises(ConfigError, match="normal_scores holds no finite value"):
        report.save_score_distribution(tmp_path / "x.png", [np.nan])
    assert not (tmp_path / "x.png").exists()


def test_roc_pr_titles_and_operating_point(tmp_path, rng):
    y = np.r_[np.zeros(40, int), np.ones(10, int)]
    s = np.r_[rng.normal(0, 1, 40), rng.normal(1.5, 1, 10)]
    out = report.save_roc_pr(tmp_path / "roc.png", y, s, operating_point=1.0, dpi=DPI)
    assert _n_colours(_read_rgb(out)) > 10
    ax_roc, ax_pr = report._roc_pr_figure(y, s, operating_point=1.0).axes
    assert f"AUROC {roc_auc_score(y, s):.3f}" in ax_roc.get_title()
    assert f"AUPRC {average_precision_score(y, s):.3f}" in ax_pr.get_title()
    pred = s >= 1.0
    fpr, tpr = pred[y == 0].mean(), pred[y == 1].mean()
    marker = ax_roc.lines[-1]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx((fpr, tpr))
    prec = pred[y == 1].sum() / pred.sum()
    pr_marker = ax_pr.lines[-1]
    assert (pr_marker.get_xdata()[0], pr_marker.get_ydata()[0]) == pytest.approx((tpr, prec))
    explicit = report._roc_pr_figure(y, s, operating_point={"fpr": 0.1, "tpr": 0.7}).axes[0].lines[-1]
    assert (explicit.get_xdata()[0], explicit.get_ydata()[0]) == (0.1, 0.7)
    with pytest.raises(ConfigError, match="both normal"):
        report.save_roc_pr(tmp_path / "one.png", np.zeros(5), np.arange(5.0))
    with pytest.raises(ConfigError, match="y_true has 3 values but scores has 2"):
        report.save_roc_pr(tmp_path / "one.png", [0, 1, 0], [0.1, 0.2])
    assert not (tmp_path / "one.png").exists()


# -------------------------------------------------------------------------------------- HTML report
def _png(tmp_path, name, colour):
    img = np.zeros((8, 8, 3), np.uint8)
    img[:] = colour
    p = tmp_path / name
    iio.imwrite(p, img)
    return p


def _scans(tmp_path):
    a, b = _png(tmp_path, "a.png", (255, 0, 0)), _png(tmp_path, "b.png", (0, 255, 0))
    lesion = {"id": 1, "slice_start": 10, "slice_end": 14, "centroid_ras_mm": (-12.5, 30.25, 101.0),
              "area_mm2": 52.3, "volume_mm3": 12345.6, "max_residual": 0.31, "p_value": 2.5e-6,
              "severity": "high", "organ": "liver"}
    return [
        {"scan": "low.nii.gz", "scan_score": 0.1, "p_value": 0.42, "label": "normal", "error": "",
         "n_slices": 30, "top_slice": 3, "overlays": [], "lesions": []},
        {"scan": "broken.dcm", "scan_score": None, "p_value": None, "label": "error",
         "error": "broken.dcm: not CT (no HU rescale)", "n_slices": 0, "top_slice": None, "overlays": [],
         "lesions": []},
        {"scan": "<script>alert(1)</script>.nii", "scan_score": 0.9, "p_value": 2.5e-5, "label": "abnormal",
         "error": "", "n_slices": 40, "top_slice": 12, "overlays": [a, b], "lesions": [lesion]},
        {"scan": "mid & co.nii", "scan_score": 0.5, "p_value": 0.004, "label": "abnormal", "error": "",
         "n_slices": 20, "top_slice": 7, "overlays": [str(a)], "lesions": []},
    ]


def test_write_report_is_self_contained_sorted_and_escaped(tmp_path):
    summary = {"bundle": "chest-v1", "calibration_method": "empirical", "target_fpr": 0.05,
               "threshold": np.float32(0.4321), "n_normal": np.int64(25), "created": "2024-01-02T03:04:05", "version": "0.1.0"}
    out = report.write_report(tmp_path / "r" / "report.html", _scans(tmp_path), title="My <run>", summary=summary)
    assert out == tmp_path / "r" / "report.html"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;.nii" in text
    assert "mid &amp; co.nii" in text and "My &lt;run&gt;" in text
    names = ["&lt;script&gt;alert(1)&lt;/script&gt;.nii", "mid &amp; co.nii", "low.nii.gz", "broken.dcm"]
    first = [text.index(n) for n in names]
    assert first == sorted(first)  # score descending, the failed scan last
    assert text.count("data:image/png;base64,") == 3
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert base64.b64decode(embedded[0]) == (tmp_path / "a.png").read_bytes()
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    assert html.escape(DISCLAIMER) in text
    assert "not a diagnostic device" in text
    for anchor in ("scan-1", "scan-2", "scan-3", "scan-4"):
        assert f'href="#{anchor}"' in text and f'id="{anchor}"' in text
    assert "2.50e-05" in text and "2.50e-06" in text and "0.004" in text  # p-values
    assert "12,346" in text and "-12.5, 30.2, 101.0" in text and "liver" in text  # lesion row
    assert "not CT (no HU rescale)" in text
    for value in ("chest-v1", "empirical", "0.05", "0.4321", "25", "2024-01-02T03:04:05", "target FPR"):
        assert value in text


def test_write_report_missing_overlay_fails_cleanly(tmp_path):
    scans = _scans(tmp_path)
    scans[3]["overlays"] = [tmp_path / "gone.png"]
    target = tmp_path / "report.html"
    with pytest.raises(AeAnomalyError, match=r"gone\.png: overlay PNG not found \(for scan mid & co\.nii\)"):
        report.write_report(target, scans)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no report, no temp file


def test_write_report_rejects_non_png_and_nameless_scans(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    scans = [{"scan": "x.nii", "scan_score": 1.0, "label": "normal", "overlays": [fake]}]
    with pytest.raises(AeAnomalyError, match=r"fake\.png: overlay is not a PNG file"):
        report.write_report(tmp_path / "r.html", scans)
    with pytest.raises(ConfigError, match=r"r\.html: scan entry #0 has no 'scan' name"):
        report.write_report(tmp_path / "r.html", [{"scan_score": 1.0}])
    assert not (tmp_path / "r.html").exists()


def test_write_report_replaces_an_old_report_only_on_success(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(AeAnomalyError):
        report.write_report(target, [{"scan": "a", "overlays": [tmp_path / "missing.png"]}])
    assert target.read_text() == "old"
    report.write_report(target, [{"scan": "a", "scan_score": 1.0, "label": "normal"}])
    assert "a</a>" in target.read_text()


def test_number_formatting():
    assert format_p_value(2.5e-5) == "2.50e-05"
    assert format_p_value(0.0123) == "0.012"
    assert format_p_value(None) == "—" and format_p_value(float("nan")) == "—"
    assert format_float(12345.6) == "12,346"
    assert format_float(0.31) == "0.31" and format_float(3.14159) == "3.142"
    assert format_float(0.00012) == "1.20e-04" and format_float(0) == "0"
    assert format_float(None) == "—" and format_float(float("inf")) == "—" and format_float(np.float32("nan")) == "—"
