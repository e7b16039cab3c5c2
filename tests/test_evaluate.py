"""Metrics of `aeanomaly evaluate` against values computed by hand on tiny cases."""

import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.evaluate import classification_metrics, detection_rate_by_size, dice, iou, lesion_detection, pixel_metrics


def test_classification_metrics_by_hand():
    # 4 normals, 3 abnormals. Scores rank: n1 .1, n2 .2, a1 .3, n3 .4, a2 .6, n4 .7, a3 .9
    y = [0, 0, 1, 0, 1, 0, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.9]
    pred = [v > 0.5 for v in s]  # threshold 0.5 → positives: .6 (a2), .7 (n4), .9 (a3)
    m = classification_metrics(y, s, pred)
    assert m["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 2}
    assert (m["n"], m["n_abnormal"], m["n_normal"]) == (7, 3, 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["observed_fpr"] == pytest.approx(1 / 4)
    # AUROC = P(abnormal > normal) over 12 pairs: a1 beats 2, a2 beats 3, a3 beats 4 → 9/12
    assert m["auroc"] == pytest.approx(9 / 12)
    # AP: descending a3 n4 a2 n3 a1 … → positives at ranks 1, 3, 5 → (1/1 + 2/3 + 3/5) / 3
    assert m["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_classification_metrics_edge_cases():
    m = classification_metrics([0, 0, 0], [0.1, np.nan, 0.3], [0, 0, 1])
    assert m["n"] == 2  # the NaN score is dropped with its label
    assert m["auroc"] is None and m["auprc"] is None  # one class only
    assert m["sensitivity"] is None and m["precision"] == 0.0 and m["f1"] is None
    assert m["specificity"] == 0.5


def test_pixel_metrics_by_hand():
    body = np.ones((1, 4, 4), bool)
    truth = np.zeros((1, 4, 4), np.uint8)
    truth[0, 0, :2] = 1  # 2 lesion pixels
    heat = np.zeros((1, 4, 4), np.float32)
    heat[0, 0, 0], heat[0, 0, 1], heat[0, 3, 3] = 0.9, 0.5, 0.7  # one lesion pixel ranks below a normal one
    pred = heat > 0.6  # predicted: (0,0) TP and (3,3) FP; (0,1) FN
    m = pixel_metrics([heat], [truth], [body], [pred])
    assert m["dice"] == pytest.approx(2 * 1 / (2 + 2))
    assert m["iou"] == pytest.approx(1 / 3)
    # 2 positives × 14 negatives = 28 pairs; (0,0) beats all 14; (0,1)=0.5 beats the 13 zeros only
    assert m["pixel_auroc"] == pytest.approx(27 / 28)
    assert m["dice_mean_per_abnormal_scan"] == pytest.approx(0.5)
    # pixels outside the body mask do not count
    body2 = body.copy()
    body2[0, 3, 3] = False
    assert pixel_metrics([heat], [truth], [body2], [pred])["pixel_auroc"] == pytest.approx(1.0)


def test_lesion_detection_and_rate_by_size():
    truth = np.zeros((2, 20, 20), np.uint8)
    truth[0, 1:3, 1:3] = 1  # 4 px → area 4 mm² at 1 mm → diameter 2·sqrt(4/π) ≈ 2.26 mm
    truth[:, 10:18, 10:18] = 1  # 64 px per slice → diameter ≈ 9.03 mm
    pred = np.zeros_like(truth)
    pred[1, 12, 12] = 1  # touches only the large lesion
    rec = lesion_detection(truth, pred, (3.0, 1.0, 1.0))
    assert sorted((round(r["diameter_mm"], 2), r["detected"]) for r in rec) == [(2.26, False), (9.03, True)]
    rows = detection_rate_by_size(rec)
    by_bin = {(r["min_mm"], r["max_mm"]): r for r in rows if not r.get("all")}
    assert by_bin[(0.0, 5.0)]["n"] == 1 and by_bin[(0.0, 5.0)]["rate"] == 0.0
    assert by_bin[(5.0, 10.0)]["n"] == 1 and by_bin[(5.0, 10.0)]["rate"] == 1.0
    assert by_bin[(10.0, 20.0)]["rate"] is None
    assert rows[-1]["all"] and rows[-1]["rate"] == 0.5


# -- the evaluation API --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(fitted_bundle):
    from aeanomaly.detector import AnomalyDetector

    return AnomalyDetector.load(fitted_bundle)


def test_evaluation_api_scores_labelled_scans(loaded, phantom_test, tmp_path):
    from aeanomaly.evaluate import EVAL_COLUMNS, Evaluation
    from aeanomaly.io.labels import gather_labeled

    ev = Evaluation(loaded)
    items = gather_labeled(labels_csv=phantom_test / "labels.csv")
    bad = tmp_path / "junk.nii.gz"
    bad.write_bytes(b"junk")
    done = [ev.add(it.scan, it.label, it.mask) for it in items] + [ev.add(bad, 0)]
    assert [d.ok for d in done] == [True] * 12 + [False]
    assert done[-1].result is None and "junk.nii.gz" in done[-1].error and ev.n_errors == 1
    abnormal = [d for d in done if d.ok and d.label == 1]
    assert len(abnormal) == 6 and all(d.truth is not None and d.truth.any() for d in abnormal)
    assert all(d.result.scan_score == d.result.scan_score for d in abnormal)  # finite ScanResults
    assert len(ev.rows) == 13 and set(ev.rows[0]) <= set(EVAL_COLUMNS)
    m = ev.metrics()
    assert m["n_scans"] == 13 and m["n_errors"] == 1 and m["target_fpr"] == loaded.target_fpr_
    assert m["scan"]["n"] == 12 and m["scan"]["n_abnormal"] == 6
    assert m["pixel"]["pixel_auroc"] is not None and m["slice"]["n"] > 0
    assert m["lesion_detection_by_size"][-1]["n"] >= 6
    assert "head" not in m


def test_evaluation_with_nothing_scored_names_the_first_failure(loaded, tmp_path):
    from aeanomaly.errors import EmptyInputError
    from aeanomaly.evaluate import Evaluation

    ev = Evaluation(loaded)
    with pytest.raises(EmptyInputError, match="no scan was evaluated"):
        ev.metrics()
    ev.add(tmp_path / "missing.nii.gz", 1)
    with pytest.raises(EmptyInputError, match=r"missing.nii.gz.*none of the 1 scans could be scored"):
        ev.metrics()


def test_error_overlay_slices():
    from aeanomaly.evaluate import error_overlay_slices

    t = np.zeros((4, 8, 8), bool)
    p = np.zeros((4, 8, 8), bool)
    t[1, :2, :2] = True  # 4 px
    p[2, :3, :3] = True  # 9 px
    p[1, 0, 0] = True
    assert error_overlay_slices(t, p, 5) == [2, 1]
    assert error_overlay_slices(t, p, 1) == [2]
    assert error_overlay_slices(np.zeros_like(t), np.zeros_like(p), 3) == []


def test_dice_and_iou_hand_computed():
    pred = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    pred[0, :4] = True  # 4 px
    truth[0, 1:4] = True
    truth[1, :3] = True  # 6 px, overlap 3
    assert dice(pred, truth) == pytest.approx(2 * 3 / (4 + 6))
    assert iou(pred, truth) == pytest.approx(3 / 7)
    empty = np.zeros((4, 4), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(pred, empty) == 0.0 and iou(empty, truth) == 0.0
    assert dice(truth.astype(np.uint8) * 3, truth) == 1.0  # nonzero counts as True
    with pytest.raises(ConfigError, match="shape"):
        dice(pred, np.zeros((4, 5), bool))
