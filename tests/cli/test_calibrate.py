"""aeanomaly/cli/calibrate.py: `aeanomaly calibrate` refits the calibration atomically; `--fpr` still works."""

import json
import shutil

import numpy as np


def test_calibrate_updates_bundle_atomically(cli, one_error_line, fitted_bundle, phantom_test, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    r = cli("calibrate", b, "--normal-dir", phantom_test / "normal", "--target-fpr", "0.3", "--method", "gamma",
            "--quiet")
    assert r.exit_code == 0, r.output
    cal = json.loads((b / "calibration.json").read_text())
    assert cal["target_fpr"] == 0.3 and cal["scan"]["method"] == "gamma" and len(cal["calibration_scans"]) == 6
    one_error_line(cli("calibrate", b, "--normal-dir", tmp_path / "nowhere"), "nowhere")
    one_error_line(cli("calibrate", b, "--normal-dir", phantom_test / "normal", "--target-fpr", "2"),
                   "--target-fpr must be in (0, 1)")
    one_error_line(cli("calibrate", tmp_path / "nob", "--normal-dir", phantom_test / "normal"), "nob")
    assert json.loads((b / "calibration.json").read_text()) == cal


def test_old_fpr_spelling(cli, fitted_bundle, phantom_test, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    r = cli("calibrate", b, "--normal-dir", phantom_test / "normal", "--fpr", "0.25", "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == "warning: --fpr is deprecated; use --target-fpr"
    assert json.loads((b / "calibration.json").read_text())["target_fpr"] == 0.25


def test_calibrate_in_bfloat16_is_used_for_scoring(cli, fitted_bundle, phantom_test, tmp_path):
    from aeanomaly.detector import AnomalyDetector

    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    scan = sorted((phantom_test / "abnormal").glob("*.nii.gz"))[0]
    ref = AnomalyDetector.load(b).score_scan(scan)
    r = cli("calibrate", b, "--normal-dir", phantom_test / "normal", "--precision", "bfloat16", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((b / "calibration.json").read_text())["precision"] == "bfloat16"
    assert "inference bfloat16" in cli("info", b).output
    det = AnomalyDetector.load(b)
    assert det.precision_ == "bfloat16"
    got = det.score_scan(scan)
    diff = np.abs(got.reconstruction - ref.reconstruction)
    assert 0 < diff.max() < 0.1 and diff.mean() < 0.01
    # the raw scores (before the region-size reference, which recalibration on other normals refits)
    raw = det.analyse(scan, normalise=False).scan_score
    raw_ref = AnomalyDetector.load(fitted_bundle).analyse(scan, normalise=False).scan_score
    assert np.isfinite(got.scan_score) and abs(raw - raw_ref) < 0.05
    assert cli("calibrate", b, "--normal-dir", phantom_test / "normal", "--precision", "float16").exit_code == 2
