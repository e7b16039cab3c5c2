"""The command line: exit codes, one-line errors, files written, nothing half-written."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from aeanomaly import __version__
from aeanomaly.cli import main

TINY_ARGS = ["--size", "64", "--depth", "3", "--base-filters", "8", "--latent", "16", "--epochs", "2",
             "--calib-fraction", "0.4", "--target-fpr", "0.2", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output
    r = run("--help")
    for cmd in ("fit", "score", "calibrate", "info", "evaluate", "make-phantoms"):
        assert cmd in r.output


def test_make_phantoms_writes_loadable_set(tmp_path):
    from aeanomaly.io import load_scan

    out = tmp_path / "ph"
    r = run("make-phantoms", "--out", out, "--normal", 2, "--abnormal", 1, "--slices", 4, "--matrix", 64, "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert [row["label"] for row in rows].count("abnormal") == 1
    ab = [row for row in rows if row["label"] == "abnormal"][0]
    scan = load_scan(out / ab["scan"])
    img = nib.load(out / ab["scan"])
    np.testing.assert_allclose(scan.hu, np.asarray(img.dataobj).transpose(2, 1, 0), atol=0.5)
    np.testing.assert_allclose(scan.affine, img.affine)
    assert nib.load(out / ab["mask"]).shape == img.shape
    r = run("make-phantoms", "--out", out, "--normal", 1, "--abnormal", 0)
    assert r.exit_code == 2 and "error:" in r.output


def test_make_phantoms_lesion_options(tmp_path):
    out = tmp_path / "ph"
    r = run("make-phantoms", "--out", out, "--normal", 0, "--abnormal", 2, "--slices", 8, "--matrix", 64,
            "--lesion-mm", 20, 24, "--lesions-per-scan", 2, 2, "--kinds", "solid", "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "lesions.csv")))
    assert rows and {row["kind"] for row in rows} == {"solid"}
    assert all(20 <= float(row["diameter_mm"]) <= 24 for row in rows)
    for i, bad in enumerate((["--kinds", "tumour"], ["--lesion-mm", 10, 5], ["--lesions-per-scan", 3, 1])):
        target = tmp_path / f"bad{i}"
        r = run("make-phantoms", "--out", target, "--normal", 0, "--abnormal", 1, "--slices", 4, "--matrix", 64, *bad)
        assert r.exit_code == 2 and "error:" in r.output, (bad, r.output)
        assert not target.exists()


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory, phantom_train):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    mixed = root / "mixed"
    shutil.copytree(phantom_train / "normal", mixed)
    (mixed / "broken.nii.gz").write_bytes((mixed / "phantom_0000.nii.gz").read_bytes()[:300])
    few = root / "few"
    few.mkdir()
    for p in sorted((phantom_train / "normal").iterdir())[:2]:
        shutil.copy(p, few / p.name)
    return root


def test_fit_bad_inputs_exit_2_with_one_line(bad_dirs, fitted_bundle, tmp_path):
    # (arguments, the path the line must name or None, the reason text it must give)
    cases = [
        (["--normal-dir", bad_dirs / "empty"], bad_dirs / "empty", ["no scans found", "NIfTI"]),
        (["--normal-dir", bad_dirs / "nope"], bad_dirs / "nope", ["does not exist"]),
        (["--normal-dir", bad_dirs / "few"], bad_dirs / "few",
         ["too few scans for the train / validation / calibration splits", "2 scans, need at least"]),
        (["--normal-dir", bad_dirs / "mixed", "--strict"], bad_dirs / "mixed" / "broken.nii.gz",
         ["corrupt or truncated NIfTI"]),
        (["--normal-dir", bad_dirs / "few", "--window", "abc"], None,
         ["window 'abc' is neither a preset", "'W,L' in HU"]),
    ]
    for args, path, reasons in cases:
        out = tmp_path / "bundle"
        r = run("fit", *args, "--out", out, *TINY_ARGS)
        assert r.exit_code == 2, (args, r.output)
        assert r.stdout.strip() == "", (args, r.stdout)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        if path is not None:
            assert lines[0].startswith(f"error: {path}: "), (args, lines[0])
        for reason in reasons:
            assert reason in lines[0], (args, reason, lines[0])
        assert not out.exists() and not (tmp_path / "bundle.partial").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]
    before = sorted(p.name for p in fitted_bundle.iterdir())
    r = run("fit", "--normal-dir", bad_dirs / "few", "--out", fitted_bundle, *TINY_ARGS)
    assert r.exit_code == 2 and r.stdout.strip() == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(fitted_bundle) in lines[0] and "already exists" in lines[0], r.stderr
    assert sorted(p.name for p in fitted_bundle.iterdir()) == before
    assert not fitted_bundle.with_name(fitted_bundle.name + ".partial").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


@pytest.mark.slow
def test_fit_skips_corrupt_scan_and_writes_bundle(bad_dirs, tmp_path):
    out = tmp_path / "b"
    r = run("fit", "--normal-dir", bad_dirs / "mixed", "--out", out, *TINY_ARGS)
    assert r.exit_code == 0, r.output
    assert "broken.nii.gz" in r.output  # the warning names the skipped file
    info = json.loads((out / "bundle.json").read_text())
    assert info["format_version"] == 1 and any("broken" in s["scan"] for s in info["skipped"])
    for f in ("model.keras", "calibration.json", "history.csv", "training.png"):
        assert (out / f).is_file()
    assert not (tmp_path / "b.partial").exists()
    r = run("info", out)
    assert r.exit_code == 0 and "calibration" in r.output and "format        1" in r.output


@pytest.fixture(scope="module")
def scored(fitted_bundle, phantom_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "res"
    garbage = tmp_path_factory.mktemp("garbage") / "junk.nii.gz"
    garbage.write_bytes(b"not a nifti at all")
    r = run("score", fitted_bundle, phantom_test / "normal", phantom_test / "abnormal", garbage, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_score_writes_tables_heatmaps_overlays_report(scored, phantom_test):
    rows = list(csv.DictReader(open(scored / "scores.csv")))
    assert len(rows) == 13
    assert list(rows[0]) == ["scan", "n_slices", "scan_score", "p_value", "label", "top_slice", "n_lesions", "error",
                             "head_proba", "fused_proba"]
    assert all(r["head_proba"] == "" and r["fused_proba"] == "" for r in rows)  # no supervised head
    bad = [r for r in rows if r["label"] == "error"]
    assert len(bad) == 1 and "junk.nii.gz" in bad[0]["error"]
    good = [r for r in rows if r["label"] != "error"]
    assert all(0 < float(r["p_value"]) <= 1 for r in good)
    slices = list(csv.DictReader(open(scored / "slices.csv")))
    assert len(slices) >= 12 and list(slices[0]) == ["scan", "slice", "score", "p_value", "label", "head_proba"]
    lesions = list(csv.DictReader(open(scored / "lesions.csv")))
    assert lesions and "centroid_r_mm" in lesions[0] and "severity" in lesions[0]
    # the heatmap overlays the input scan: same shape and affine
    src = nib.load(phantom_test / "abnormal" / "phantom_0006.nii.gz")
    hm = nib.load(scored / "heatmaps" / "phantom_0006_heatmap.nii.gz")
    assert hm.shape == src.shape
    np.testing.assert_allclose(hm.affine, src.affine)
    assert len(list((scored / "overlays").glob("*.png"))) >= 12
    html = (scored / "report.html").read_text()
    assert "phantom_0006" in html and html.count("data:image/png;base64,") >= 12


def test_score_exit_codes(fitted_bundle, phantom_test, scored, tmp_path):
    r = run("score", fitted_bundle, phantom_test / "abnormal", "--out", scored, "--quiet")
    assert r.exit_code == 2 and "not empty" in r.output
    r = run("score", tmp_path / "nobundle", phantom_test / "abnormal", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "nobundle" in r.output and not (tmp_path / "o").exists()
    r = run("score", fitted_bundle, tmp_path / "missing.nii.gz", "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "missing.nii.gz" in r.output
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"xx")
    r = run("score", fitted_bundle, junk, "--out", tmp_path / "o3", "--strict")
    assert r.exit_code == 2 and "junk.nii" in r.output and not (tmp_path / "o3").exists()
    r = run("score", fitted_bundle, phantom_test / "abnormal", "--out", tmp_path / "o4", "--fpr", "0.99",
            "--fail-on-anomaly", "--quiet", "--heatmaps", "none", "--overlays", "0", "--no-report")
    assert r.exit_code == 1
    assert not (tmp_path / "o4" / "heatmaps").exists() and not (tmp_path / "o4" / "report.html").exists()


def test_calibrate_updates_bundle_atomically(fitted_bundle, phantom_test, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    r = run("calibrate", b, "--normal-dir", phantom_test / "normal", "--fpr", "0.3", "--method", "gamma", "--quiet")
    assert r.exit_code == 0, r.output
    cal = json.loads((b / "calibration.json").read_text())
    assert cal["target_fpr"] == 0.3 and cal["scan"]["method"] == "gamma" and len(cal["calibration_scans"]) == 6
    r = run("calibrate", b, "--normal-dir", tmp_path / "nowhere")
    assert r.exit_code == 2 and "nowhere" in r.output
    assert json.loads((b / "calibration.json").read_text()) == cal


def test_evaluate_writes_metrics(fitted_bundle, phantom_test, tmp_path):
    out = tmp_path / "ev"
    r = run("evaluate", fitted_bundle, "--labels", phantom_test / "labels.csv", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["scan"]["n_abnormal"] == 6 and m["scan"]["n_normal"] == 6
    assert m["scan"]["auroc"] > 0.5 and m["pixel"]["pixel_auroc"] > 0.5
    assert (out / "roc_pr.png").is_file() and list((out / "overlays").glob("*.png"))
    assert m["lesion_detection_by_size"][-1]["n"] >= 6


def test_evaluate_never_pairs_normal_folder_scans_with_masks(fitted_bundle, phantom_test, tmp_path):
    """Normal and abnormal folders (or labels.csv rows) reusing file names: the normal scan stays normal."""
    import shutil

    ab = sorted((phantom_test / "abnormal").glob("*.nii.gz"))[:2]
    nd, ad, md = tmp_path / "n", tmp_path / "a", tmp_path / "m"
    for d in (nd, ad, md):
        d.mkdir()
    for i, (n, a) in enumerate(zip(sorted((phantom_test / "normal").glob("*.nii.gz"))[:2], ab)):
        shutil.copy(n, nd / f"scan_{i}.nii.gz")
        shutil.copy(a, ad / f"scan_{i}.nii.gz")
        shutil.copy(phantom_test / "masks" / a.name.replace(".nii.gz", "_mask.nii.gz"), md / f"scan_{i}_mask.nii.gz")
    out = tmp_path / "ev"
    r = run("evaluate", fitted_bundle, "--normal", nd, "--abnormal", ad, "--masks", md, "--out", out,
            "--overlays", 0, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["scan"]["n_normal"] == 2 and m["scan"]["n_abnormal"] == 2
    rows = list(csv.DictReader(open(out / "scans.csv")))
    assert sorted((Path(r["scan"]).parent.name, r["label"]) for r in rows) == [("a", "1"), ("a", "1"), ("n", "0"), ("n", "0")]
    (tmp_path / "labels.csv").write_text("scan,label\n" + "".join(f"{d}/scan_{i}.nii.gz,{lab}\n" for d, lab in
                                                                  (("n", "normal"), ("a", "abnormal")) for i in range(2)))
    r = run("evaluate", fitted_bundle, "--labels", tmp_path / "labels.csv", "--masks", md, "--out", tmp_path / "ev2",
            "--overlays", 0, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert m["scan"]["n_normal"] == 2 and m["scan"]["n_abnormal"] == 2 and m["pixel"]["pixel_auroc"] is not None


@pytest.mark.slow
def test_killed_fit_resumes_from_checkpoint(phantom_train, tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "aeanomaly.cli", "fit", "--normal-dir", str(phantom_train / "normal"),
           "--out", str(out), *TINY_ARGS[:-1]]
    cmd[cmd.index("--epochs") + 1] = "6"
    state = tmp_path / "b.partial" / "state.json"
    proc = subprocess.Popen(cmd + ["--quiet"], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.time() + 240
    while time.time() < deadline and not (state.is_file() and json.loads(state.read_text())["epoch"] >= 2):
        time.sleep(0.2)
        assert proc.poll() is None, "fit ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and state.is_file()
    done = json.loads(state.read_text())["epoch"]
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resumed from epoch {done}" in r.stdout
    hist = list(csv.DictReader(open(out / "history.csv")))
    assert len(hist) == 6 and not (tmp_path / "b.partial").exists()


def test_calibrate_in_bfloat16_is_used_for_scoring(fitted_bundle, phantom_test, tmp_path):
    from aeanomaly.detector import AnomalyDetector

    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    scan = sorted((phantom_test / "abnormal").glob("*.nii.gz"))[0]
    ref = AnomalyDetector.load(b).score_scan(scan)
    r = run("calibrate", b, "--normal-dir", phantom_test / "normal", "--precision", "bfloat16", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((b / "calibration.json").read_text())["precision"] == "bfloat16"
    assert "inference bfloat16" in run("info", b).output
    det = AnomalyDetector.load(b)
    assert det.precision == "bfloat16"
    got = det.score_scan(scan)
    diff = np.abs(got.reconstruction - ref.reconstruction)
    assert 0 < diff.max() < 0.1 and diff.mean() < 0.01
    assert np.isfinite(got.scan_score) and abs(got.scan_score - ref.scan_score) < 0.05
    det.set_params(precision="float32")  # switching back rebuilds the inference function
    np.testing.assert_allclose(det.score_scan(scan).reconstruction, ref.reconstruction, atol=1e-5)
    r = run("calibrate", b, "--normal-dir", phantom_test / "normal", "--precision", "float16")
    assert r.exit_code == 2


def test_recalibrate_failure_keeps_precision_and_bad_precision_is_refused_early(fitted_bundle, phantom_train, tmp_path):
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.errors import AeAnomalyError, ConfigError

    det = AnomalyDetector.load(fitted_bundle)
    before, fpr = det.calibrator_.threshold_, det.target_fpr
    with pytest.raises(AeAnomalyError), pytest.warns(UserWarning, match="skipped unreadable scan"):
        det.recalibrate([tmp_path / "missing.nii.gz"], precision="bfloat16", target_fpr=0.01)
    assert det.precision == "float32" and det.target_fpr == fpr and det.calibrator_.threshold_ == before
    with pytest.raises(ConfigError, match="precision"):
        det.recalibrate([tmp_path / "missing.nii.gz"], precision="float16")
    with pytest.raises(ConfigError, match="precision"):
        AnomalyDetector(precision="float16").fit(sorted((phantom_train / "normal").glob("*.nii.gz")))
