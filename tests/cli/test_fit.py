"""aeanomaly/cli/fit.py: `aeanomaly fit` — one-line errors before any work, skipped inputs reported,
the calibration-set shortfall warned about, resume, options and their deprecated spellings."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from aeanomaly.cli.fit import conformal_shortfall, parse_augment
from aeanomaly.errors import ConfigError


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


def test_fit_bad_inputs_exit_2_with_one_line(cli, tiny_args, one_error_line, bad_dirs, fitted_bundle, tmp_path):
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
        r = cli("fit", *args, "--out", out, *tiny_args)
        assert r.stdout.strip() == "", (args, r.stdout)
        one_error_line(r, *reasons, starts=path)
        assert not out.exists() and not (tmp_path / "bundle.partial").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]
    r = cli("fit", "--normal-dir", bad_dirs / "few", "--out", tmp_path / "bundle", "--target-fpr", "1.5")
    one_error_line(r, "--target-fpr must be in (0, 1), got 1.5")
    before = sorted(p.name for p in fitted_bundle.iterdir())
    r = cli("fit", "--normal-dir", bad_dirs / "few", "--out", fitted_bundle, *tiny_args)
    assert r.stdout.strip() == ""
    one_error_line(r, str(fitted_bundle), "already exists")
    assert sorted(p.name for p in fitted_bundle.iterdir()) == before
    assert not fitted_bundle.with_name(fitted_bundle.name + ".partial").exists()


def test_fit_on_read_only_output_fails_at_once(cli, tiny_args, one_error_line, phantom_train, tmp_path,
                                               read_only_fs):
    read_only_fs(tmp_path)
    t = time.time()
    r = cli("fit", "--normal-dir", phantom_train / "normal", "--out", tmp_path / "b", *tiny_args)
    one_error_line(r, "Read-only file system", starts=tmp_path / "b")
    assert time.time() - t < 5 and not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


@pytest.mark.parametrize("spec, reason", [("flip", "expected KEY=NUMBER"), ("bogus=1", "unknown augmentation setting")])
def test_fit_refuses_bad_augment_with_exit_2(cli, one_error_line, phantom_train, tmp_path, spec, reason):
    out = tmp_path / "b"
    r = cli("fit", "--normal-dir", phantom_train / "normal", "--out", out, "--size", "32", "--epochs", "1",
            "--quiet", "--augment", spec)
    one_error_line(r, reason)
    assert not out.exists() and not (tmp_path / "b.partial").exists()


def test_parse_augment():
    assert parse_augment(None) is True
    assert parse_augment("flip=0, rotate_deg=15") == {"flip": 0.0, "rotate_deg": 15.0}
    with pytest.raises(ConfigError, match="expected KEY=NUMBER"):
        parse_augment("flip")


def test_conformal_shortfall_is_ceil_one_over_alpha_minus_one():
    assert conformal_shortfall(2, 0.05) == 19 - 2
    assert conformal_shortfall(19, 0.05) == 0
    assert conformal_shortfall(3, 0.2) == 1  # needs 4
    assert conformal_shortfall(100, 0.01) == 0 and conformal_shortfall(98, 0.01) == 1


def test_fit_precision_bfloat16_old_spellings_and_calibration_warning(cli, phantom_train, tmp_path, monkeypatch):
    from aeanomaly.model import autoencoder

    monkeypatch.setattr(autoencoder, "native_bfloat16", lambda: None)  # any CPU this suite runs on: as asked
    out = tmp_path / "b"
    r = cli("fit", "--normal-dir", phantom_train / "normal", "--out", out, "--size", "32", "--depth", "2",
            "--base-filters", "4", "--latent", "8", "--epochs", "1", "--fpr", "0.05", "--precision", "bfloat16",
            "--noise-std", "0.3", "--noise-resolution", "8", "--sigma-mm", "4.5", "--sigma-z-mm", "2.5", "--blob-gate", "2",
            "--blob-gate-3d", "1", "--erode-mm", "3", "--quiet")
    assert r.exit_code == 0, r.output
    assert "warning: --latent is deprecated; use --latent-dim" in r.stderr
    assert "warning: --fpr is deprecated; use --target-fpr" in r.stderr
    cal = json.loads((out / "calibration.json").read_text())
    params = json.loads((out / "bundle.json").read_text())["params"]
    assert cal["precision"] == params["precision"] == "bfloat16"
    assert params["latent_dim"] == 8 and cal["target_fpr"] == 0.05
    assert params["noise_std"] == 0.3 and params["noise_resolution"] == 8 and params["sigma_mm"] == 4.5
    assert params["sigma_z_mm"] == 2.5 and params["blob_gate"] == 2.0 and params["blob_gate_3d"] == 1.0
    assert params["erode_mm"] == 3.0
    assert cal["scan"]["threshold"] is not None
    # 20 scans x 0.3 = 6 calibration scans: the conformal guarantee at 0.05 needs 19 — said even with --quiet
    warn = [ln for ln in r.stderr.splitlines() if "conformal guarantee" in ln]
    assert len(warn) == 1 and "at least 19 normal scans" in warn[0] and warn[0].startswith("warning: ")
    assert r.stdout.strip() == ""


@pytest.mark.slow
def test_fit_reports_skipped_inputs_and_slices_also_quiet(cli, tiny_args, bad_dirs, tmp_path):
    few_bad = tmp_path / "in"
    shutil.copytree(bad_dirs / "mixed", few_bad)
    (few_bad / "junk.nii").write_bytes(b"xx")
    (few_bad / "junk2.nii").write_bytes(b"yy")  # 3 of 23 unreadable: more than a tenth
    out = tmp_path / "b"
    r = cli("fit", "--normal-dir", few_bad, "--out", out, *tiny_args)  # --quiet
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == ""
    skipped = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: skipped")]
    assert len(skipped) == 3 and any("broken.nii.gz" in s for s in skipped) and any("junk.nii" in s for s in skipped)
    assert "trained on " in r.stderr and "validation slices); 3 of 23 inputs skipped" in r.stderr
    info = json.loads((out / "bundle.json").read_text())
    assert info["format_version"] == 1 and any("broken" in s["scan"] for s in info["skipped"])
    for f in ("model.keras", "calibration.json", "history.csv"):
        assert (out / f).is_file()
    assert not (tmp_path / "b.partial").exists()
    r = cli("info", out)
    assert r.exit_code == 0 and "calibration" in r.output and "format        1" in r.output


@pytest.mark.slow
def test_fit_not_quiet_prints_slices_and_one_warning_per_skipped(cli, tiny_args, bad_dirs, tmp_path):
    out = tmp_path / "b"
    args = [a for a in tiny_args if a != "--quiet"]
    r = cli("fit", "--normal-dir", bad_dirs / "mixed", "--out", out, *args)
    assert r.exit_code == 0, r.output
    assert sum("broken.nii.gz" in ln for ln in r.stderr.splitlines()) == 1  # once, not also as a Python warning
    assert "trained on " in r.stdout and "bundle written to" in r.stdout


@pytest.mark.slow
def test_killed_fit_resumes_from_checkpoint(phantom_train, tiny_args, tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "aeanomaly.cli", "fit", "--normal-dir", str(phantom_train / "normal"),
           "--out", str(out), *tiny_args[:-1]]
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


def test_fit_on_a_full_disk_leaves_no_bundle_and_no_work_folder(cli, one_error_line, phantom_train, tmp_path,
                                                                 disk_full):
    out = tmp_path / "b"
    r = cli("fit", "--normal-dir", phantom_train / "normal", "--out", out, "--size", "32", "--depth", "2",
            "--base-filters", "4", "--latent-dim", "8", "--epochs", "1", "--target-fpr", "0.2", "--quiet")
    one_error_line(r, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_fit_offers_the_slice_norm_default_of_scoring(cli):
    from aeanomaly.cli.fit import fit
    from aeanomaly.scoring import ScoringParams

    opt = next(o for o in fit.params if o.name == "slice_norm")
    assert opt.default == ScoringParams().slice_norm
    assert next(o for o in fit.params if o.name == "sigma_mm").default == ScoringParams().sigma_mm
    assert next(o for o in fit.params if o.name == "sigma_z_mm").default == ScoringParams().sigma_z_mm
    assert next(o for o in fit.params if o.name == "blob_gate").default == ScoringParams().blob_gate
    assert next(o for o in fit.params if o.name == "blob_gate_3d").default == ScoringParams().blob_gate_3d
    assert next(o for o in fit.params if o.name == "seg_weight").default == ScoringParams().seg_weight
    assert next(o for o in fit.params if o.name == "erode_mm").default == ScoringParams().erode_mm
    r = cli("fit", "--help")
    assert "--slice-norm [area|location|none]" in r.output


def test_seg_weight_is_refused_without_a_segmenter_before_any_work(cli, one_error_line, phantom_train, tmp_path):
    r = cli("fit", "--normal-dir", phantom_train / "normal", "--out", tmp_path / "b", "--seg-weight", "0.5")
    one_error_line(r, "--seg-weight 0.5", "--model dae+seg")
    assert "tensorflow" not in r.output.lower() and list(tmp_path.iterdir()) == []
    r = cli("fit", "--normal-dir", phantom_train / "normal", "--out", tmp_path / "b", "--model", "dae+seg",
            "--seg-weight", "1.5")
    assert r.exit_code == 2 and "--seg-weight" in r.output


def test_fit_offers_the_training_defaults_of_the_denoising_noise(cli):
    from aeanomaly.cli.fit import fit
    from aeanomaly.config import TRAIN_DEFAULTS

    for name in ("noise_std", "noise_resolution"):
        assert next(o for o in fit.params if o.name == name).default == TRAIN_DEFAULTS[name]
    r = cli("fit", "--normal-dir", ".", "--out", "x", "--noise-std", "-1")
    assert r.exit_code == 2 and "--noise-std" in r.output
