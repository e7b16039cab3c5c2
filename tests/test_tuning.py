"""Threshold tuning (aeanomaly.tuning, pure compute) on tiny hand-computed score sets.

Its figures are tested in tests/test_figures.py; saving the operating point into a bundle in
tests/test_bundle.py (aeanomaly.bundle.save_operating_point).

The worked example used throughout: 4 normals scoring 0.1, 0.2, 0.3, 0.6 and 4 abnormals scoring
0.4, 0.5, 0.7, 0.8 (interleaved in input order). A scan is abnormal when ``score > threshold``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from aeanomaly.calibrate import Calibrator
from aeanomaly.errors import ConfigError
from aeanomaly.tuning import (
    OperatingPoint,
    ThresholdTable,
    ThresholdTuner,
    calibrated_threshold,
    candidate_thresholds,
    choose_threshold,
    labels_as_bool,
    operating_point,
    padded_range,
    roc_pr_curves,
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


def test_tuner_refuses_names_of_another_length():
    with pytest.raises(ConfigError, match="3 names given for 4 scores"):
        ThresholdTuner([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], names=["a", "b", "c"])
    assert ThresholdTuner([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], names=list("abcd")).names_ == list("abcd")


def test_padded_range():
    assert padded_range([0.0, 1.0], None, [np.nan], 2.0) == pytest.approx((-0.1, 2.1))  # 5 % of the span 2
    assert padded_range([3.0], pad=0.1) == pytest.approx((2.7, 3.3))  # one value: 10 % of it
    assert padded_range(0.0) == pytest.approx((-5e-8, 5e-8))
    with pytest.raises(ConfigError, match="no finite score"):
        padded_range(None, [np.inf, np.nan])


def _imported_modules(module) -> set[str]:
    """Top-level names and package-relative modules imported anywhere in ``module``'s source."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


def test_tuning_is_pure_compute():
    """tuning imports neither the detector, the bundle, the CLI, nor files or plotting: only errors."""
    import aeanomaly.tuning

    imported = _imported_modules(aeanomaly.tuning)
    assert {m for m in imported if m.startswith(".")} == {".errors"}, imported
    assert not {m for m in imported if m.split(".")[0] in ("matplotlib", "os", "pathlib", "aeanomaly")}, imported
