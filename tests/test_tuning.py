"""Threshold tuning (aeanomaly.tuning) on tiny hand-computed score sets, its figures, and saving the
operating point into a bundle.

The worked example used throughout: 4 normals scoring 0.1, 0.2, 0.3, 0.6 and 4 abnormals scoring
0.4, 0.5, 0.7, 0.8 (interleaved in input order). A scan is abnormal when ``score > threshold``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from aeanomaly.calibrate import Calibrator  # noqa: E402
from aeanomaly.errors import AeAnomalyError, ConfigError  # noqa: E402
from aeanomaly.tuning import (  # noqa: E402
    OperatingPoint,
    ThresholdTable,
    ThresholdTuner,
    calibrated_threshold,
    candidate_thresholds,
    choose_threshold,
    labels_as_bool,
    operating_point,
    roc_pr_curves,
    save_operating_point,
    threshold_for_fpr,
    threshold_for_sensitivity,
    threshold_table,
)

#: normal, abnormal, normal, abnormal, ... (input order must not matter)
Y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
S = np.array([0.1, 0.4, 0.2, 0.5, 0.3, 0.7, 0.6, 0.8])
#: candidate thresholds of S, decreasing: above the max, the 7 midpoints, below the min
T = np.array([0.85, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25, 0.15, 0.05])
TP = np.array([0, 1, 2, 2, 3, 4, 4, 4, 4])
FP = np.array([0, 0, 0, 1, 1, 1, 2, 3, 4])


# ------------------------------------------------------------------------------------ labels / inputs
@pytest.mark.parametrize("labels", [
    [0, 1, 1, 0],
    [False, True, True, False],
    ["normal", "abnormal", "abnormal", "normal"],
    [" Normal", "ABNORMAL ", "1", "0"],
    np.array(["normal", "abnormal", "abnormal", "normal"], dtype=object),
    [0.0, 1.0, 1.0, 0.0],
])
def test_labels_as_bool_accepts_ints_bools_and_names(labels):
    out = labels_as_bool(labels)
    assert out.dtype == bool and out.tolist() == [False, True, True, False]


def test_labels_as_bool_copies_and_rejects_unknown_labels():
    y = np.array([True, False])
    out = labels_as_bool(y)
    out[0] = False
    assert y[0]  # never a view of the caller's array
    with pytest.raises(ConfigError, match=r"labels must be normal/abnormal or 0/1, got \['sick'\]"):
        labels_as_bool(["normal", "sick"])
    with pytest.raises(ConfigError, match=r"labels must be 0 \(normal\) and 1 \(abnormal\)"):
        labels_as_bool([0, 2])


def test_mismatched_lengths_raise_with_both_counts():
    for fn in (lambda: operating_point([0, 1, 1], [0.1, 0.2, 0.3, 0.4], 0.2),
               lambda: threshold_table([0, 1, 1], [0.1, 0.2, 0.3, 0.4]),
               lambda: threshold_for_fpr([0, 1, 1], [0.1, 0.2, 0.3, 0.4], 0.1),
               lambda: ThresholdTuner([0, 1, 1], [0.1, 0.2, 0.3, 0.4])):
        with pytest.raises(ConfigError, match="y_true has 3 labels but scores has 4 values"):
            fn()


def test_one_class_only_raises():
    for fn in (lambda: roc_pr_curves([0, 0, 0], [0.1, 0.2, 0.3]),
               lambda: ThresholdTuner([1, 1], [0.1, 0.2]),
               lambda: roc_pr_curves([0, 1], [0.1, np.nan])):  # the only abnormal has no finite score
        with pytest.raises(ConfigError, match="must hold both normal and abnormal scans"):
            fn()
    with pytest.raises(ConfigError, match="threshold_for_fpr needs at least one normal scan"):
        threshold_for_fpr([1, 1], [0.1, 0.2], 0.1)
    with pytest.raises(ConfigError, match="threshold_for_sensitivity needs at least one abnormal scan"):
        threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.5)


def test_non_finite_scores_are_left_out_with_their_labels_and_all_nan_raises():
    y = np.r_[Y, 1, 0]
    s = np.r_[S, np.nan, np.inf]
    op = operating_point(y, s, 0.35)
    assert (op.tp, op.fp, op.tn, op.fn) == (4, 1, 3, 0)
    np.testing.assert_allclose(threshold_table(y, s).threshold, T)
    assert threshold_for_fpr(y, s, 0.25) == pytest.approx(0.35)
    tuner = ThresholdTuner(y, s, names=[f"scan{i}" for i in range(10)])
    assert tuner.y_.size == tuner.scores_.size == 8 and tuner.names_ == [f"scan{i}" for i in range(8)]
    with pytest.raises(ConfigError, match="no finite score"):
        candidate_thresholds([np.nan, np.inf])
    with pytest.raises(ConfigError, match="no finite score"):
        threshold_table([0, 1], [np.nan, np.nan])


def test_inputs_are_not_mutated():
    y, s = Y.copy(), S.copy()
    threshold_table(y, s)
    roc_pr_curves(y, s)
    ThresholdTuner(y, s).outcomes(0.45)
    np.testing.assert_array_equal(y, Y)
    np.testing.assert_array_equal(s, S)


# ---------------------------------------------------------------------------------- operating points
def test_operating_point_by_hand():
    op = operating_point(Y, S, 0.35)   # flags 0.4 0.5 0.6 0.7 0.8
    assert isinstance(op, OperatingPoint)
    assert (op.tp, op.fp, op.tn, op.fn) == (4, 1, 3, 0)
    assert (op.n, op.n_normal, op.n_abnormal) == (8, 4, 4)
    assert op.sensitivity == 1.0 and op.specificity == 0.75 and op.fpr == 0.25
    assert op.precision == pytest.approx(0.8) and op.npv == 1.0 and op.accuracy == pytest.approx(7 / 8)
    assert op.f1 == pytest.approx(2 * 0.8 * 1.0 / 1.8)
    np.testing.assert_array_equal(op.confusion_matrix, [[3, 1], [0, 4]])  # rows truth, cols predicted

    op = operating_point(["normal" if v == 0 else "abnormal" for v in Y], S, 0.55)   # flags 0.6 0.7 0.8
    assert (op.tp, op.fp, op.tn, op.fn) == (2, 1, 3, 2)
    assert op.sensitivity == 0.5 and op.specificity == 0.75
    assert op.precision == pytest.approx(2 / 3) and op.f1 == pytest.approx(4 / 7)
    assert op.npv == pytest.approx(3 / 5)


def test_operating_point_is_strict_and_matches_sklearn():
    from sklearn.metrics import confusion_matrix

    op = operating_point(Y, S, 0.4)   # 0.4 itself is not flagged: score > threshold
    assert (op.tp, op.fn) == (3, 1)
    np.testing.assert_array_equal(op.confusion_matrix, confusion_matrix(Y, S > 0.4))


def test_undefined_rates_are_nan_and_none_in_dict():
    op = operating_point(Y, S, 0.85)   # nothing flagged
    assert (op.tp, op.fp, op.tn, op.fn) == (0, 0, 4, 4)
    assert np.isnan(op.precision) and np.isnan(op.f1) and op.sensitivity == 0.0
    d = op.to_dict()
    assert d["precision"] is None and d["f1"] is None and d["threshold"] == 0.85 and d["n"] == 8
    json.dumps(d)  # JSON-ready
    # precision and recall both 0: F1 is 0, not NaN
    op = operating_point([1, 0], [0.1, 0.9], 0.5)
    assert op.precision == 0.0 and op.sensitivity == 0.0 and op.f1 == 0.0
    assert "threshold 0.5: sensitivity 0.000" in str(op) and "(TP 0, FP 1, TN 0, FN 1)" in str(op)


def test_candidate_thresholds_are_midpoints_with_ends():
    np.testing.assert_allclose(candidate_thresholds(S), T)
    # ties collapse; k distinct scores give k + 1 thresholds
    np.testing.assert_allclose(candidate_thresholds([0.5, 0.2, 0.5]), [0.65, 0.35, 0.05])
    one = candidate_thresholds([2.0, 2.0])
    assert one.shape == (2,) and one[0] > 2.0 > one[1]


def test_threshold_table_by_hand():
    tab = threshold_table(Y, S)
    assert isinstance(tab, ThresholdTable) and len(tab) == 9
    np.testing.assert_allclose(tab.threshold, T)
    np.testing.assert_array_equal(tab.tp, TP)
    np.testing.assert_array_equal(tab.fp, FP)
    np.testing.assert_array_equal(tab.fn, 4 - TP)
    np.testing.assert_array_equal(tab.tn, 4 - FP)
    np.testing.assert_allclose(tab.sensitivity, TP / 4)
    np.testing.assert_allclose(tab.specificity, 1 - FP / 4)
    np.testing.assert_allclose(tab.fpr, FP / 4)
    assert np.isnan(tab.precision[0]) and np.isnan(tab.f1[0])
    np.testing.assert_allclose(tab.precision[1:], TP[1:] / (TP[1:] + FP[1:]))
    assert tab.f1[5] == pytest.approx(2 * 0.8 / 1.8)
    rows = tab.to_rows()
    assert len(rows) == 9 and rows[5]["tp"] == 4 and rows[5]["fp"] == 1 and rows[0]["precision"] is None


def test_threshold_table_rows_equal_operating_points():
    tab = threshold_table(Y, S)
    for i in range(len(tab)):
        assert tab.row(i) == operating_point(Y, S, tab.threshold[i])


def test_threshold_table_with_ties_across_classes():
    # a normal and an abnormal share 0.5: they are flagged together
    tab = threshold_table([0, 1, 1, 0], [0.5, 0.5, 0.9, 0.1])
    np.testing.assert_allclose(tab.threshold, [1.1, 0.7, 0.3, -0.1])
    np.testing.assert_array_equal(tab.tp, [0, 1, 2, 2])
    np.testing.assert_array_equal(tab.fp, [0, 0, 1, 2])


def test_roc_pr_curves_by_hand():
    from sklearn.metrics import average_precision_score, roc_auc_score

    c = roc_pr_curves(Y, S)
    np.testing.assert_allclose(c.fpr, FP / 4)
    np.testing.assert_allclose(c.tpr, TP / 4)
    np.testing.assert_array_equal(c.recall, c.tpr)
    np.testing.assert_allclose(c.thresholds, T)
    np.testing.assert_allclose(c.precision, [1, 1, 1, 2 / 3, 3 / 4, 4 / 5, 4 / 6, 4 / 7, 4 / 8])  # (0, 1) start
    assert c.auroc == pytest.approx(14 / 16) == roc_auc_score(Y, S)       # 14 of 16 pairs ranked right
    assert c.auprc == pytest.approx(0.25 * (1 + 1 + 3 / 4 + 4 / 5)) == average_precision_score(Y, S)
    assert c.prevalence == 0.5


# --------------------------------------------------------------------------------- choosing thresholds
@pytest.mark.parametrize("target, expected", [
    (0.0, 0.65),    # no FP: flag 0.7, 0.8 only
    (0.25, 0.35),   # one FP of 4 normals allowed (0.6): flag down to 0.4
    (0.3, 0.35),    # floor(0.3 * 4) = 1 FP
    (0.5, 0.25),
    (0.99, 0.15),
])
def test_threshold_for_fpr_by_hand(target, expected):
    t = threshold_for_fpr(Y, S, target)
    assert t == pytest.approx(expected)
    op = operating_point(Y, S, t)
    assert op.fpr <= target
    # it is the most sensitive such threshold: the next lower candidate breaks the constraint
    nxt = T[np.flatnonzero(np.isclose(T, t))[0] + 1]
    assert operating_point(Y, S, nxt).fpr > target
    assert choose_threshold(Y, S, target_fpr=target) == t


@pytest.mark.parametrize("target, expected", [
    (1.0, 0.35),    # all 4 abnormals: flag down to 0.4
    (0.75, 0.45),
    (0.6, 0.45),    # ceil(0.6 * 4) = 3 abnormals
    (0.5, 0.65),
    (0.0, 0.85),    # nothing needed: flag nothing
])
def test_threshold_for_sensitivity_by_hand(target, expected):
    t = threshold_for_sensitivity(Y, S, target)
    assert t == pytest.approx(expected)
    assert operating_point(Y, S, t).sensitivity >= target
    i = np.flatnonzero(np.isclose(T, t))[0]
    if i > 0:   # the most specific such threshold: the next higher candidate misses the target
        assert operating_point(Y, S, T[i - 1]).sensitivity < target
    assert choose_threshold(Y, S, min_sensitivity=target) == t


def test_thresholds_sit_in_gaps_between_scores():
    for t in [threshold_for_fpr(Y, S, a) for a in (0, 0.25, 0.5)] + \
             [threshold_for_sensitivity(Y, S, b) for b in (0.5, 0.75, 1)]:
        assert np.min(np.abs(S - t)) == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1])
def test_threshold_for_fpr_rejects_targets_outside_0_1(bad):
    with pytest.raises(ConfigError, match=r"target_fpr must be in \[0, 1\), got"):
        threshold_for_fpr(Y, S, bad)


@pytest.mark.parametrize("bad", [1.01, -0.1])
def test_threshold_for_sensitivity_rejects_targets_outside_0_1(bad):
    with pytest.raises(ConfigError, match=r"min_sensitivity must be in \[0, 1\], got"):
        threshold_for_sensitivity(Y, S, bad)


def test_choose_threshold_needs_exactly_one_target():
    with pytest.raises(ConfigError, match="give exactly one of target_fpr or min_sensitivity"):
        choose_threshold(Y, S)
    with pytest.raises(ConfigError, match="give exactly one of target_fpr or min_sensitivity"):
        choose_threshold(Y, S, target_fpr=0.1, min_sensitivity=0.9)


def _calibrator(method="empirical", target_fpr=0.1) -> Calibrator:
    return Calibrator(method, target_fpr).fit(np.arange(1.0, 20.0))   # normal scores 1 … 19


def test_calibrated_threshold_refits_without_touching_the_calibrator():
    cal = _calibrator()
    assert cal.threshold_ == 18.0                   # ⌈20 · 0.9⌉ = 18th smallest
    assert calibrated_threshold(cal, 0.05) == 19.0  # ⌈20 · 0.95⌉ = 19th
    assert calibrated_threshold(cal, 0.3) == 14.0   # ⌈20 · 0.7⌉ = 14th
    assert calibrated_threshold(cal, 0.01) == np.inf  # 19 normals cannot reach 1 %
    assert cal.threshold_ == 18.0 and cal.target_fpr == 0.1
    with pytest.raises(ConfigError, match=r"target_fpr must be in \(0, 1\)"):
        calibrated_threshold(cal, 1.0)


# ---------------------------------------------------------------------------------------- the tuner
def test_tuner_by_hand():
    cal = _calibrator()
    tuner = ThresholdTuner(Y, S, cal)
    np.testing.assert_allclose(np.sort(tuner.normal_scores), [0.1, 0.2, 0.3, 0.6])
    np.testing.assert_allclose(np.sort(tuner.abnormal_scores), [0.4, 0.5, 0.7, 0.8])
    assert tuner.calibrated == 18.0
    assert tuner.at(0.35) == operating_point(Y, S, 0.35)
    np.testing.assert_array_equal(tuner.table_.tp, TP)
    assert tuner.curves_.auroc == pytest.approx(0.875)
    assert tuner.threshold_for_fpr(0.25) == pytest.approx(0.35)
    assert tuner.threshold_for_sensitivity(0.75) == pytest.approx(0.45)
    assert tuner.threshold_for_target_fpr(0.05) == 19.0
    assert tuner.outcomes(0.45).tolist() == ["TN", "FN", "TN", "TP", "TN", "TP", "FP", "TP"]
    lo, hi = tuner.score_range()   # labelled 0.1 … 0.8 and calibration normals 1 … 19, padded 5 %
    assert lo == pytest.approx(0.1 - 0.05 * 18.9) and hi == pytest.approx(19 + 0.05 * 18.9)


def test_tuner_without_calibrator():
    tuner = ThresholdTuner(["normal", "abnormal"], [0.2, 0.7])
    assert tuner.calibrated is None and tuner.names_ is None
    with pytest.raises(ConfigError, match="this tuner has no calibrator"):
        tuner.threshold_for_target_fpr(0.1)
    lo, hi = tuner.score_range()
    assert lo == pytest.approx(0.2 - 0.025) and hi == pytest.approx(0.7 + 0.025)


# ------------------------------------------------------------------------------------------ figures
def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_score_distribution_figure():
    from aeanomaly.tuning_plots import score_distribution_figure

    cal = Calibrator("empirical", 0.1).fit(np.linspace(0.05, 0.5, 19))
    fig = score_distribution_figure(S[Y == 0], S[Y == 1], threshold=0.45, calibrator=cal,
                                    calibrated_threshold=0.55)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    legend = _legend_texts(ax)
    for want in ("normal (n=4)", "abnormal (n=4)", "fitted normal density (empirical)",
                 "calibration normals (n=19)", "calibrated 0.55", "threshold 0.45"):
        assert want in legend, legend
    assert len(ax.containers) == 2            # two histograms
    vlines = [ln for ln in ax.lines if list(ln.get_xdata()) in ([0.45, 0.45], [0.55, 0.55])]
    assert len(vlines) == 2
    lo, hi = ax.get_xlim()
    assert lo < 0.05 and hi > 0.8
    fig.canvas.draw()                          # renders on Agg
    with pytest.raises(ConfigError, match="no finite score to plot"):
        score_distribution_figure([np.nan])


def test_roc_pr_figure():
    from aeanomaly.tuning_plots import roc_pr_figure

    c = roc_pr_curves(Y, S)
    point, calibrated = operating_point(Y, S, 0.35), operating_point(Y, S, 0.65)
    fig = roc_pr_figure(c, point, calibrated)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    roc, pr = fig.axes
    assert roc.get_title() == "ROC, AUROC 0.875" and pr.get_title().startswith("precision-recall, AUPRC 0.88")
    np.testing.assert_allclose(roc.lines[0].get_xdata(), c.fpr)
    np.testing.assert_allclose(roc.lines[0].get_ydata(), c.tpr)
    marks = {ln.get_label(): (float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in roc.lines}
    assert marks["FPR 0.25, TPR 1.00"] == (0.25, 1.0) and marks["calibrated"] == (0.0, 0.5)
    pr_marks = {ln.get_label(): (float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in pr.lines}
    assert pr_marks["R 1.00, P 0.80"] == pytest.approx((1.0, 0.8))
    assert "prevalence 0.50" in _legend_texts(pr)
    fig.canvas.draw()


def test_tuning_figure():
    from aeanomaly.tuning_plots import tuning_figure

    tuner = ThresholdTuner(Y, S, Calibrator("empirical", 0.2).fit(np.linspace(0.05, 0.5, 19)))
    fig = tuning_figure(tuner, 0.35)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert fig.get_suptitle() == ("threshold 0.35: observed FPR 0.25 on 4 normals, "
                                        "sensitivity 1.00 on 4 abnormals")
    conf = fig.axes[1]
    assert sorted(t.get_text() for t in conf.texts) == sorted(["TN\n3", "FP\n1", "FN\n0", "TP\n4"])
    np.testing.assert_allclose(conf.images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    assert conf.get_title().startswith("sens 1.00  spec 0.75  prec 0.80")
    fig.canvas.draw()


def _fake_result(name: str, score: float, seed: int, z: int = 4, n: int = 16):
    rng = np.random.default_rng(seed)
    lab = np.zeros((z, n, n), np.int32)
    lab[:, 5:9, 5:9] = 1
    return SimpleNamespace(source=f"/data/{name}.nii.gz", scan_score=score, p_value=0.5, label="normal",
                           slice_scores=np.array([0.1, 0.4, np.nan, 0.3][:z]), top_slice=1, lesions=[{}],
                           image=rng.random((z, n, n)), heatmap=rng.random((z, n, n)), lesion_labels=lab,
                           prepared=SimpleNamespace(spacing=(5.0, 2.0, 1.0)))


def test_scan_and_examples_figures():
    from aeanomaly.tuning_plots import OUTCOME_COLOURS, examples_figure, scan_figure

    fig = scan_figure(_fake_result("a", 0.5, 0), n_slices=2, pixel_threshold=0.2)
    assert isinstance(fig, Figure) and len(fig.axes) == 4   # 2 slices × (CT, heatmap)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["slice 1  score 0.4", "slice 3  score 0.3"]
    assert len(fig.axes[2].images) == 2 and fig.axes[2].lines   # heatmap overlay and lesion contour
    assert "a.nii.gz: normal (score 0.5" in fig.get_suptitle()

    results = [_fake_result(f"s{i}", v, i) for i, v in enumerate([0.1, 0.44, 0.47, 0.9])]
    fig = examples_figure(results, [0, 1, 0, 1], threshold=0.45, max_examples=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    titles = [ax.get_title() for ax in fig.axes]   # nearest the threshold first: 0.44 (FN), 0.47 (FP)
    assert titles[0].startswith("FN  s1.nii.gz") and titles[1].startswith("FP  s2.nii.gz")
    assert matplotlib.colors.same_color(fig.axes[0].title.get_color(), OUTCOME_COLOURS["FN"])
    assert "(TP 1, FP 1, TN 1, FN 1)" in fig.get_suptitle()
    fig.canvas.draw()
    with pytest.raises(ConfigError, match="4 results but 3 labels"):
        examples_figure(results, [0, 1, 0], threshold=0.45)


# ------------------------------------------------------------------------- saving the operating point
def test_save_operating_point_writes_calibration_json(fitted_bundle, tmp_path):
    from aeanomaly.detector import AnomalyDetector

    original = (fitted_bundle / "calibration.json").read_text()
    b = tmp_path / "bundle"
    shutil.copytree(fitted_bundle, b)
    det = AnomalyDetector.load(b)
    before = float(det.calibrator_.threshold_)
    normals = np.asarray(det.calibrator_.scores_, float)
    threshold = float(np.mean(normals[:2])) if normals[0] != normals[1] else float(normals[0]) * 0.5
    assert threshold != before
    y = [0, 0, 1, 1]
    s = [threshold - 1.0, threshold + 1.0, threshold - 0.5, threshold + 2.0]
    evidence = operating_point(y, s, threshold)

    t0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    entry = save_operating_point(b, threshold=threshold, reason="  screening: sensitivity >= 0.5 ",
                                 evidence=evidence, detector=det)
    t1 = dt.datetime.now(dt.timezone.utc)
    assert entry["what"] == "set_threshold" and entry["threshold"] == threshold
    assert entry["reason"] == "screening: sensitivity >= 0.5"
    when = dt.datetime.fromisoformat(entry["when"])
    assert when.utcoffset() == dt.timedelta(0) and t0 <= when <= t1

    calib = json.loads((b / "calibration.json").read_text())
    assert calib["scan"]["threshold"] == threshold and calib["scan"]["manual"] is True
    assert calib["scan"]["reason"] == "screening: sensitivity >= 0.5"
    assert calib["log"][-1] == json.loads(json.dumps(entry))
    assert calib["log"][-1]["evidence"] == evidence.to_dict()
    assert calib["log"][-1]["evidence"]["tp"] == 1 and calib["log"][-1]["evidence"]["fp"] == 1
    assert det.calibrator_.threshold_ == threshold                       # the given detector, in place
    fresh = AnomalyDetector.load(b)
    assert fresh.calibrator_.threshold_ == threshold                     # what `aeanomaly score` uses
    assert fresh.calibrator_.predict([threshold]).tolist() == [False]   # strictly greater flags
    assert (fitted_bundle / "calibration.json").read_text() == original  # the shared bundle is untouched

    # by target FPR: refitted on the bundle's normal calibration scores, loaded from the path
    entry = save_operating_point(b, target_fpr=0.5, reason="triage")
    expected = calibrated_threshold(fresh.calibrator_, 0.5)
    calib = json.loads((b / "calibration.json").read_text())
    assert entry["target_fpr"] == 0.5 and calib["target_fpr"] == 0.5
    assert calib["log"][-1]["threshold"] == expected == calib["scan"]["threshold"]
    assert [e["reason"] for e in calib["log"][-2:]] == ["screening: sensitivity >= 0.5", "triage"]
    assert "evidence" not in calib["log"][-1]
    assert AnomalyDetector.load(b).calibrator_.threshold_ == expected

    # +inf flags nothing; stored as null and read back as inf
    entry = save_operating_point(b, threshold=np.inf, reason="off", detector=fresh)
    assert entry["threshold"] is None and json.loads((b / "calibration.json").read_text())["scan"]["threshold"] is None
    assert AnomalyDetector.load(b).calibrator_.threshold_ == np.inf


def test_save_operating_point_rejects_bad_requests(fitted_bundle, tmp_path):
    from aeanomaly.detector import AnomalyDetector

    b = tmp_path / "bundle"
    shutil.copytree(fitted_bundle, b)
    original = (b / "calibration.json").read_text()
    det = AnomalyDetector.load(b)
    before = det.calibrator_.threshold_
    with pytest.raises(ConfigError, match="reason must not be empty"):
        save_operating_point(b, threshold=0.1, reason="  ", detector=det)
    with pytest.raises(ConfigError, match="give exactly one of threshold or target_fpr"):
        save_operating_point(b, reason="x", detector=det)
    with pytest.raises(ConfigError, match="give exactly one of threshold or target_fpr"):
        save_operating_point(b, threshold=0.1, target_fpr=0.1, reason="x", detector=det)
    with pytest.raises(ConfigError, match="threshold must be a finite number"):
        save_operating_point(b, threshold=float("nan"), reason="x", detector=det)
    # a path that is no bundle fails before the given detector is changed
    with pytest.raises(AeAnomalyError, match="nobundle"):
        save_operating_point(tmp_path / "nobundle", threshold=0.1, reason="x", detector=det)
    with pytest.raises(AeAnomalyError, match="nobundle"):
        save_operating_point(tmp_path / "nobundle", threshold=0.1, reason="x")
    assert det.calibrator_.threshold_ == before
    assert (b / "calibration.json").read_text() == original
    assert not (tmp_path / "nobundle").exists()


def test_tuner_refuses_names_of_another_length():
    from aeanomaly.errors import ConfigError
    from aeanomaly.tuning import ThresholdTuner

    with pytest.raises(ConfigError, match="3 names given for 4 scores"):
        ThresholdTuner([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], names=["a", "b", "c"])
    assert ThresholdTuner([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], names=list("abcd")).names_ == list("abcd")
