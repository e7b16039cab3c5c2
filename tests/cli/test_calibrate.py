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


def test_calibrate_in_bfloat16_is_used_for_scoring(cli, fitted_bundle, phantom_test, tmp_path, monkeypatch):
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.model import autoencoder

    monkeypatch.setattr(autoencoder, "native_bfloat16", lambda: None)  # any CPU this suite runs on: as asked

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


def test_bfloat16_without_native_support_is_refused_and_old_bundles_score_in_float32(
        cli, one_error_line, fitted_bundle, phantom_test, tmp_path, monkeypatch):
    """Where the machine has no bfloat16 instructions (there TensorFlow runs it at 0.4x float32 or cannot
    build the convolution), calibrating in bfloat16 is one clear error, and a bundle already calibrated in
    bfloat16 scores in float32 with one warning."""
    import pytest

    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.io import load_scan
    from aeanomaly.model import autoencoder

    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    monkeypatch.setattr(autoencoder, "native_bfloat16", lambda: None)
    assert cli("calibrate", b, "--normal-dir", phantom_test / "normal", "--precision", "bfloat16",
               "--quiet").exit_code == 0
    cal = (b / "calibration.json").read_text()
    monkeypatch.setattr(autoencoder, "native_bfloat16", lambda: False)
    one_error_line(cli("calibrate", b, "--normal-dir", phantom_test / "normal", "--precision", "bfloat16"),
                   "bfloat16 instructions")
    assert (b / "calibration.json").read_text() == cal  # nothing half-written
    det = AnomalyDetector.load(b)
    assert det.precision_ == "bfloat16"
    x = det.prepare(load_scan(sorted((phantom_test / "abnormal").glob("*.nii.gz"))[0])).x
    with pytest.warns(RuntimeWarning, match="runs in float32 instead") as rec:
        got = det.reconstruct(x)
        again = det.reconstruct(x)
    assert len([w for w in rec if "runs in float32" in str(w.message)]) == 1  # once per detector
    np.testing.assert_array_equal(got, det.reconstruct(x, precision="float32"))
    np.testing.assert_array_equal(got, again)
