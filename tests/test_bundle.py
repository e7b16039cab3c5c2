"""aeanomaly.bundle: the bundle directory, its head and its operating point (all persistence)."""

import datetime as dt
import json
import shutil

import numpy as np
import pytest

from aeanomaly import bundle
from aeanomaly.detector import AnomalyDetector
from aeanomaly.errors import AeAnomalyError, BundleError, ConfigError
from aeanomaly.tuning import operating_point


@pytest.fixture
def copy(fitted_bundle, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(fitted_bundle, b)
    return b


def test_files_and_load_parts(copy):
    for f in ("bundle.json", "model.keras", "calibration.json", "calibration.png", "history.csv", "training.png"):
        assert (copy / f).is_file(), f
    parts = bundle.load_parts(copy)
    assert parts["info"]["format_version"] == bundle.FORMAT_VERSION and parts["head"] is None
    assert parts["calibration"].to_dict() == json.loads((copy / "calibration.json").read_text())
    assert parts["history"]["loss"]


def test_save_refuses_to_overwrite_and_leaves_no_temporary(copy, tmp_path):
    det = AnomalyDetector.load(copy)
    with pytest.raises(BundleError, match="already exists"):
        det.save(copy)
    not_a_bundle = tmp_path / "other"
    not_a_bundle.mkdir()
    (not_a_bundle / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle"):
        det.save(not_a_bundle, overwrite=True)
    assert (not_a_bundle / "keep.txt").read_text() == "mine"
    det.save(copy, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_refuses_unknown_format_broken_and_corrupt_bundles(copy, tmp_path):
    info = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(BundleError, match="unknown bundle format_version 99"):
        AnomalyDetector.load(copy)
    (copy / "bundle.json").write_text(json.dumps(info))
    data = (copy / "model.keras").read_bytes()
    (copy / "model.keras").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(BundleError, match="model.keras is corrupt or truncated"):
        AnomalyDetector.load(copy)
    (copy / "model.keras").unlink()
    with pytest.raises(BundleError, match="missing model.keras"):
        AnomalyDetector.load(copy)
    with pytest.raises(BundleError, match="not a bundle"):
        AnomalyDetector.load(tmp_path / "nothing")
    (copy / "model.keras").write_bytes(data)
    (copy / "calibration.json").write_text("{\"scan\": {}}")
    with pytest.raises(BundleError, match="calibration.json"):
        AnomalyDetector.load(copy)


def test_save_head_swaps_in_a_head_atomically(copy):
    from aeanomaly.model.heads import SupervisedHead

    det = AnomalyDetector.load(copy)
    head = SupervisedHead(kind="cnn", size=det.size, channels=det.channels, depth=2, base_filters=4)
    head.model_ = head.build_model()  # an untrained model is stored the same way
    head.fit_fusion([0.01, 0.5, 0.02, 0.7], [0.8, 0.3, 0.6, 0.2], [1, 0, 1, 0])
    cal = det.calibration_dict()
    cal["log"].append({"what": "test"})
    bundle.save_head(copy, head, calibration=cal)
    loaded = AnomalyDetector.load(copy)
    assert loaded.head_.kind == "cnn" and loaded.calibration_log_[-1] == {"what": "test"}
    x = np.random.default_rng(0).random((2, det.size, det.size, det.channels)).astype(np.float32)
    np.testing.assert_allclose(loaded.head_.abnormal_proba(x), head.abnormal_proba(x), atol=1e-6)
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]


def test_save_operating_point_writes_calibration_json(fitted_bundle, copy):
    original = (fitted_bundle / "calibration.json").read_text()
    det = AnomalyDetector.load(copy)
    before = float(det.calibrator_.threshold_)
    normals = np.asarray(det.calibrator_.scores_, float)
    threshold = float(np.mean(normals[:2])) if normals[0] != normals[1] else float(normals[0]) * 0.5
    assert threshold != before
    y = [0, 0, 1, 1]
    s = [threshold - 1.0, threshold + 1.0, threshold - 0.5, threshold + 2.0]
    evidence = operating_point(y, s, threshold)

    t0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    entry = bundle.save_operating_point(copy, threshold=threshold, reason="  screening: sensitivity >= 0.5 ",
                                        evidence=evidence, detector=det)
    t1 = dt.datetime.now(dt.timezone.utc)
    assert entry["what"] == "set_threshold" and entry["threshold"] == threshold
    assert entry["reason"] == "screening: sensitivity >= 0.5"
    assert t0 <= dt.datetime.fromisoformat(entry["when"]) <= t1
    calib = json.loads((copy / "calibration.json").read_text())
    assert calib["scan"]["threshold"] == threshold and calib["scan"]["manual"] is True
    assert calib["log"][-1] == json.loads(json.dumps(entry))
    assert calib["log"][-1]["evidence"]["tp"] == 1 and calib["log"][-1]["evidence"]["fp"] == 1
    assert det.calibrator_.threshold_ == threshold                       # the given detector, in place
    fresh = AnomalyDetector.load(copy)
    assert fresh.calibrator_.threshold_ == threshold                     # what `aeanomaly score` uses
    assert fresh.calibrator_.predict([threshold]).tolist() == [False]   # strictly greater flags
    assert (fitted_bundle / "calibration.json").read_text() == original  # the shared bundle is untouched

    # by target FPR, from the path alone (no model loaded): refitted on the stored normal scores
    entry = bundle.save_operating_point(copy, target_fpr=0.5, reason="triage")
    expected = float(fresh.calibrator_.with_target_fpr(0.5).threshold_)
    calib = json.loads((copy / "calibration.json").read_text())
    assert entry["target_fpr"] == 0.5 and calib["target_fpr"] == 0.5
    assert calib["log"][-1]["threshold"] == expected == calib["scan"]["threshold"]
    assert [e["reason"] for e in calib["log"][-2:]] == ["screening: sensitivity >= 0.5", "triage"]
    assert AnomalyDetector.load(copy).target_fpr_ == 0.5

    entry = bundle.save_operating_point(copy, threshold=np.inf, reason="off", detector=fresh)
    assert entry["threshold"] is None and json.loads((copy / "calibration.json").read_text())["scan"]["threshold"] is None
    assert AnomalyDetector.load(copy).calibrator_.threshold_ == np.inf


def test_save_operating_point_rejects_bad_requests(copy, tmp_path):
    original = (copy / "calibration.json").read_text()
    det = AnomalyDetector.load(copy)
    before = det.calibrator_.threshold_
    with pytest.raises(ConfigError, match="reason must not be empty"):
        bundle.save_operating_point(copy, threshold=0.1, reason="  ", detector=det)
    with pytest.raises(ConfigError, match="give exactly one of threshold or target_fpr"):
        bundle.save_operating_point(copy, reason="x", detector=det)
    with pytest.raises(ConfigError, match="threshold must be a finite number"):
        bundle.save_operating_point(copy, threshold=float("nan"), reason="x", detector=det)
    with pytest.raises(AeAnomalyError, match="nobundle"):  # fails before the detector is changed
        bundle.save_operating_point(tmp_path / "nobundle", threshold=0.1, reason="x", detector=det)
    assert det.calibrator_.threshold_ == before and (copy / "calibration.json").read_text() == original
    assert not (tmp_path / "nobundle").exists()


def test_update_calibration_rewrites_json_and_figure(copy, phantom_test):
    from aeanomaly.io import find_scans

    det = AnomalyDetector.load(copy).recalibrate(find_scans(phantom_test / "normal"), method="gamma")
    png_before = (copy / "calibration.png").read_bytes()
    bundle.update_calibration(copy, det)
    calib = json.loads((copy / "calibration.json").read_text())
    assert calib["scan"]["method"] == "gamma" and calib["log"][-1]["what"] == "recalibrate"
    assert (copy / "calibration.png").read_bytes() != png_before
