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


def test_calibrate_changes_scoring_settings_on_the_bundles_own_scans(cli, fitted_bundle, phantom_test, tmp_path):
    """`--slice-norm none --sigma-mm 4` on a bundle fitted with area and 6 mm: bundle.json and calibration.json
    are rewritten together, on the bundle's own calibration scans, and scoring follows the new settings."""
    from aeanomaly.detector import AnomalyDetector

    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    before = json.loads((b / "calibration.json").read_text())
    assert json.loads((b / "bundle.json").read_text())["params"]["slice_norm"] == "area"
    r = cli("calibrate", b, "--slice-norm", "none", "--sigma-mm", "4")
    assert r.exit_code == 0, r.output
    assert "slice_norm area → none" in r.output and "sigma_mm 6.0 → 4.0" in r.output
    params = json.loads((b / "bundle.json").read_text())["params"]
    assert params["slice_norm"] == "none" and params["sigma_mm"] == 4.0 and params["blob_gate"] == 0.0
    cal = json.loads((b / "calibration.json").read_text())
    assert cal["calibration_scans"] == before["calibration_scans"]
    assert cal["log"][-1]["slice_norm"] == "none" and "slice_norm area → none" in cal["log"][-1]["what"]
    assert cal["scan"]["threshold"] != before["scan"]["threshold"]
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in fitted_bundle.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary or old copy left beside it

    det = AnomalyDetector.load(b)
    assert det.sigma_mm == 4.0 and det.calibration_.reference is None
    scan = sorted((phantom_test / "abnormal").glob("*.nii.gz"))[0]
    got = det.analyse(scan)
    np.testing.assert_array_equal(got.slice_scores, det.analyse(scan, normalise=False).slice_scores)
    old = AnomalyDetector.load(fitted_bundle)
    assert not np.allclose(got.heatmap, old.analyse(scan).heatmap)  # σ 4 mm, not 6
    # the same in Python: set_params + recalibrate on the same scans gives the same calibration
    old.set_params(slice_norm="none", sigma_mm=4.0).recalibrate(before["calibration_scans"])
    assert old.calibration_.scan.threshold_ == det.calibration_.scan.threshold_

    # the same settings again: nothing to do, nothing rewritten
    stamp = (b / "bundle.json").stat().st_mtime_ns
    r = cli("calibrate", b, "--slice-norm", "none", "--quiet")
    assert r.exit_code == 0 and r.output.strip() == "" and (b / "bundle.json").stat().st_mtime_ns == stamp


def test_scoring_changes_are_checked_before_any_work(cli, one_error_line, fitted_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    files = {p.name: p.read_bytes() for p in b.iterdir() if p.is_file()}
    r = cli("calibrate", b, "--seg-weight", "0.5")
    one_error_line(r, "--seg-weight 0.5", "--model dae+seg")
    assert "tensorflow" not in r.output.lower()
    r = cli("calibrate", b)
    one_error_line(r, "--normal-dir", "--slice-norm", "--blob-gate")
    assert cli("calibrate", b, "--sigma-mm", "-1").exit_code == 2
    cal = json.loads((b / "calibration.json").read_text())
    cal["calibration_scans"] = [str(tmp_path / "gone.nii.gz"), *cal["calibration_scans"][1:]]
    (b / "calibration.json").write_text(json.dumps(cal))
    files["calibration.json"] = (b / "calibration.json").read_bytes()
    one_error_line(cli("calibrate", b, "--blob-gate", "1"), "1 of its", "gone.nii.gz", "--normal-dir")
    assert {p.name: p.read_bytes() for p in b.iterdir() if p.is_file()} == files
