"""`aeanomaly fine-tune`: argument errors are one line and exit 2 before TensorFlow loads; a fine-tune on
a normal folder rewrites the bundle with the run recorded and the detector recalibrated. (Fine-tuning from
review feedback is tested in tests/review/test_feedback.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys


#: Runs `aeanomaly ARGS` in a fresh interpreter; prints the exit code, stderr, and whether TF got imported.
_PROBE = """
import json, sys
from click.testing import CliRunner
from aeanomaly.cli import main
r = CliRunner().invoke(main, sys.argv[1:])
print(json.dumps({"code": r.exit_code, "stderr": r.stderr, "tf": "tensorflow" in sys.modules}))
"""


def _run_fresh(*args) -> dict:
    res = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _one_line(out: dict, *texts: str) -> str:
    lines = [ln for ln in out["stderr"].splitlines() if ln.strip()]
    assert out["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    for t in texts:
        assert t in lines[0], (t, lines[0])
    assert not out["tf"], "TensorFlow was imported before the arguments were checked"
    return lines[0]


def test_argument_errors_exit_2_with_one_line_before_tensorflow(tmp_path):
    bundle = tmp_path / "nothing"
    _one_line(_run_fresh("fine-tune", bundle), "give --from-feedback DB", "--normal-dir DIR")
    _one_line(_run_fresh("fine-tune", bundle, "--normal-dir", tmp_path, "--learning-rate", "0"),
              "--learning-rate must be > 0, got 0.0")
    _one_line(_run_fresh("fine-tune", bundle, "--normal-dir", tmp_path, "--learning-rate", "nan"),
              "--learning-rate must be > 0")
    _one_line(_run_fresh("fine-tune", bundle, "--normal-dir", tmp_path), str(bundle), "not a bundle directory")


def test_click_usage_errors_exit_2(cli):
    r = cli("fine-tune", "b", "--normal-dir", "d", "--epochs", "0")
    assert r.exit_code == 2 and "--epochs" in r.stderr
    r = cli("fine-tune", "b", "--learning-rate", "fast")
    assert r.exit_code == 2 and "--learning-rate" in r.stderr
    assert "Fine-tune BUNDLE's autoencoder" in cli("fine-tune", "--help").output


def test_feedback_without_confirmed_normals_is_refused_before_training(fitted_bundle, tmp_path, one_error_line, cli):
    from aeanomaly.review.db import FeedbackDB

    FeedbackDB(tmp_path / "r.sqlite").close()  # an empty review database
    bundle = tmp_path / "b"
    shutil.copytree(fitted_bundle, bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    r = cli("fine-tune", bundle, "--from-feedback", tmp_path / "r.sqlite", "--quiet")
    one_error_line(r, "no scan in the review database is confirmed normal", "r.sqlite")
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before  # untouched


def test_fine_tune_on_a_normal_folder_records_the_run_and_recalibrates(fitted_bundle, phantom_test, tmp_path, cli):
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.io import find_scans

    bundle = tmp_path / "bundle"
    shutil.copytree(fitted_bundle, bundle)
    old = AnomalyDetector.load(bundle)
    normals = [str(p) for p in find_scans(phantom_test / "normal")]
    r = cli("fine-tune", bundle, "--normal-dir", phantom_test / "normal", "--epochs", "1", "--learning-rate", "1e-4")
    assert r.exit_code == 0, r.output
    assert f"fine-tuned {bundle} on {len(normals)} more normal scans (1 epochs)" in r.output
    assert "recalibrated on" in r.output and "threshold" in r.output
    new = AnomalyDetector.load(bundle)
    (entry,) = new.train_state_["fine_tuned"]
    assert entry["note"] == "fine-tune" and entry["epochs"] == 1 and sorted(entry["added"]) == sorted(normals)
    assert entry["skipped"] == []
    assert len(new.calibration_log_) == len(old.calibration_log_) + 1
    assert new.calibration_log_[-1]["what"] == "fine-tune: recalibrated after fine-tuning"
    assert sorted(new.calibration_sources_) == sorted(old.calibration_sources_)  # its own calibration scans
    assert not set(normals) & set(new.calibration_sources_)
    assert any(not (a == b).all() for a, b in zip(old.model_.get_weights(), new.model_.get_weights()))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # rewritten atomically
