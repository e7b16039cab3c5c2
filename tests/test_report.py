"""Tests of aeanomaly.report: the PNG writers (each writes its figure from aeanomaly.figures atomically,
names the file in its errors, leaves nothing half-written).

What the figures draw is tested in tests/test_figures.py; here, that the files are those figures. The HTML
report (aeanomaly.report_html) is tested in tests/test_report_html.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from matplotlib.artist import Artist
from matplotlib.figure import Figure

from aeanomaly import figures, report
from aeanomaly.errors import AeAnomalyError, ConfigError
from aeanomaly.tuning import operating_point, roc_pr_curves

DPI = 50
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ helpers
def _read_rgb(path: Path) -> np.ndarray:
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    img = iio.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
    return img[..., :3].astype(float) / 255.0


def _rendered(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255.0


def _same_picture(path: Path, fig: Figure) -> None:
    """The PNG at ``path`` is ``fig`` rendered (same size, same pixels)."""
    png, want = _read_rgb(path), _rendered(fig)
    assert png.shape == want.shape
    assert np.mean(np.abs(png - want)) < 1e-4


def _only(tmp_path: Path, *names: str) -> None:
    """``tmp_path`` holds exactly ``names``: no temporary file is left beside them."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


class _Broken(Artist):
    """An artist that fails while the figure is drawn, i.e. in the middle of writing the PNG."""

    def draw(self, renderer):
        raise RuntimeError("drawing failed")


@pytest.fixture
def slice_case():
    """A 48×56 gradient slice with a 6×8 residual block (lesion 2)."""
    image = np.tile(np.linspace(0.2, 0.8, 56), (48, 1))
    labels = np.zeros((48, 56), np.int32)
    labels[10:16, 20:28] = 2
    return image, (labels > 0) * 0.8, labels


# ----------------------------------------------------------------------------------- save_figure
def test_save_figure_writes_a_figure_or_what_a_callable_builds(tmp_path):
    fig = figures.training_curves_figure({"loss": [1.0, 0.5]}, dpi=DPI)
    out = report.save_figure(tmp_path / "sub" / "a.png", fig)
    assert out == tmp_path / "sub" / "a.png"  # the folder is made
    _same_picture(out, fig)
    big = report.save_figure(tmp_path / "b.png", lambda: figures.training_curves_figure({"loss": [1.0]}, dpi=DPI),
                             dpi=2 * DPI)
    assert iio.imread(big).shape[1] == 2 * _read_rgb(out).shape[1]
    with pytest.raises(ConfigError, match=r"c\.png: expected a matplotlib Figure, got str"):
        report.save_figure(tmp_path / "c.png", lambda: "not a figure")
    _only(tmp_path, "sub", "b.png")


def test_a_failure_while_writing_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    fig = figures.training_curves_figure({"loss": [1.0, 0.5]}, dpi=DPI)
    fig.add_artist(_Broken())
    with pytest.raises(RuntimeError, match="drawing failed"):
        report.save_figure(target, fig)
    assert target.read_bytes() == b"old"
    _only(tmp_path, "fig.png")


def test_an_unwritable_target_is_one_error_naming_it(tmp_path):
    target = tmp_path / "is_a_dir.png"
    target.mkdir()
    with pytest.raises(AeAnomalyError, match=r"is_a_dir\.png: cannot write PNG"):
        report.save_overlay(target, np.zeros((8, 8)), dpi=DPI)
    _only(tmp_path, "is_a_dir.png")
    assert list(target.iterdir()) == []


# ---------------------------------------------------------------------------------------- overlays
def test_save_overlay_writes_the_overlay_figure(tmp_path, slice_case):
    image, heat, labels = slice_case
    out = report.save_overlay(tmp_path / "ov.png", image, heat, labels, vmax=2.0, threshold=0.1, title="s",
                              dpi=DPI, pixel_aspect=1.5)
    assert out == tmp_path / "ov.png"
    _same_picture(out, figures.overlay_figure(image, heat, labels, vmax=2.0, threshold=0.1, title="s",
                                              pixel_aspect=1.5, dpi=DPI))
    _only(tmp_path, "ov.png")


def test_save_overlay_errors_name_the_file_and_write_nothing(tmp_path, slice_case):
    image, heat, _ = slice_case
    target = tmp_path / "bad.png"
    with pytest.raises(ConfigError, match=r"bad\.png: heatmap shape \(48, 50\) differs"):
        report.save_overlay(target, image, heat[:, :50])
    with pytest.raises(ConfigError, match=r"bad\.png: image must be a non-empty 2-D"):
        report.save_overlay(target, np.zeros((2, 3, 4)))
    with pytest.raises(ConfigError, match="bad.png: pixel_aspect"):
        report.save_overlay(target, image, pixel_aspect=0)
    assert list(tmp_path.iterdir()) == []


def test_writers_can_run_in_threads(tmp_path, slice_case):
    """Figures are built on their own Agg canvas, so threads can build and write them at once."""
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
    _only(tmp_path, "t0.png", "t1.png", "t2.png")


def test_save_eval_overlay_writes_the_eval_figure(tmp_path):
    image = np.full((40, 40), 0.5)
    pred = np.zeros((40, 40), bool)
    pred[10:20, 10:20] = True
    out = report.save_eval_overlay(tmp_path / "ev.png", image, pred, pred, title="x", dpi=DPI)
    _same_picture(out, figures.eval_overlay_figure(image, pred, pred, title="x", dpi=DPI))
    with pytest.raises(ConfigError, match=r"no\.png: pred_mask shape"):
        report.save_eval_overlay(tmp_path / "no.png", image, pred[:5], pred)
    _only(tmp_path, "ev.png")


# ------------------------------------------------------------------------------------ other figures
def test_save_training_curves(tmp_path):
    hist = {"loss": [1.0, 0.1, 0.02], "val_loss": [1.1, 0.2, 0.05], "mae": [0.5, 0.4, 0.35]}
    out = report.save_training_curves(tmp_path / "tc.png", hist, dpi=DPI)
    _same_picture(out, figures.training_curves_figure(hist, dpi=DPI))
    with pytest.raises(ConfigError, match=r"none\.png: training history is empty"):
        report.save_training_curves(tmp_path / "none.png", {"loss": []})
    _only(tmp_path, "tc.png")


def test_save_score_distribution(tmp_path, rng):
    normal, abnormal = rng.normal(0, 1, 60), rng.normal(4, 1, 15)

    def pdf(x):
        return np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi)

    out = report.save_score_distribution(tmp_path / "sd.png", normal, abnormal, 1.64, pdf, dpi=DPI, title="fit")
    _same_picture(out, figures.score_distribution_figure(normal, abnormal, threshold=1.64, density=pdf,
                                                         title="fit", dpi=DPI))
    with pytest.raises(ConfigError, match=r"x\.png: density must return one finite value"):
        report.save_score_distribution(tmp_path / "x.png", normal, density=lambda x: np.ones(3))
    with pytest.raises(ConfigError, match=r"x\.png: no finite score to plot"):
        report.save_score_distribution(tmp_path / "x.png", [np.nan])
    _only(tmp_path, "sd.png")


def test_save_roc_pr_marks_a_threshold_as_the_product_labels(tmp_path):
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.2, 0.5, 0.3, 0.7, 0.6, 0.8])
    out = report.save_roc_pr(tmp_path / "roc.png", y, s, operating_point=0.4, dpi=DPI)
    point = operating_point(y, s, 0.4)  # score > 0.4: 0.4 itself is normal
    assert (point.tp, point.fp) == (3, 1)
    _same_picture(out, figures.roc_pr_figure(roc_pr_curves(y, s), point, dpi=DPI))
    mapped = report.save_roc_pr(tmp_path / "map.png", y, s, operating_point={"fpr": 0.1, "tpr": 0.7}, dpi=DPI)
    _same_picture(mapped, figures.roc_pr_figure(roc_pr_curves(y, s), {"fpr": 0.1, "tpr": 0.7}, dpi=DPI))
    report.save_roc_pr(tmp_path / "op.png", ["normal", "abnormal"], [0.1, 0.9], operating_point=point)
    _only(tmp_path, "roc.png", "map.png", "op.png")


@pytest.mark.parametrize("args, match", [
    ((np.zeros(5), np.arange(5.0)), r"one\.png: the labelled set must hold both normal and abnormal"),
    (([0, 1, 0], [0.1, 0.2]), r"one\.png: y_true has 3 labels but scores has 2 values"),
    (([0, 2], [0.1, 0.2]), r"one\.png: labels must be 0 \(normal\) and 1 \(abnormal\)"),
    (([0, 1], [0.1, 0.2], "high"), r"one\.png: operating_point must be a score threshold or a mapping"),
    (([0, 1], [0.1, 0.2], float("nan")), r"one\.png: operating_point threshold must not be NaN"),
    (([0, 1], [0.1, 0.2], {"x": 1}), r"one\.png: point mapping needs fpr/tpr"),
])
def test_save_roc_pr_rejects_bad_input(tmp_path, args, match):
    with pytest.raises(ConfigError, match=match):
        report.save_roc_pr(tmp_path / "one.png", *args)
    assert list(tmp_path.iterdir()) == []
