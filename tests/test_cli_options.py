"""`aeanomaly score --slice-fdr / --min-lesion-mm3` and `fit --augment`: applied, bad values refused with exit 2."""

import csv

import pytest
from click.testing import CliRunner

from aeanomaly.cli import main


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("args, reason", [(["--slice-fdr", "0"], "--slice-fdr must be in (0, 1)"),
                                          (["--slice-fdr", "1.2"], "--slice-fdr must be in (0, 1)"),
                                          (["--min-lesion-mm3", "-5"], "--min-lesion-mm3 must be ≥ 0")])
def test_bad_score_options_exit_2_and_write_nothing(fitted_bundle, phantom_test, tmp_path, args, reason):
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["score", str(fitted_bundle), str(phantom_test / "abnormal"), "--out", str(out),
                                  "--quiet", *args])
    assert r.exit_code == 2
    assert reason in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_huge_min_lesion_volume_leaves_no_lesions_and_fdr_labels_slices(fitted_bundle, phantom_test, tmp_path):
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["score", str(fitted_bundle), str(phantom_test / "abnormal"), "--out", str(out),
                                  "--quiet", "--no-report", "--overlays", "0", "--heatmaps", "none",
                                  "--min-lesion-mm3", "1e12", "--slice-fdr", "0.05"])
    assert r.exit_code == 0, r.output
    scores = _rows(out / "scores.csv")
    assert scores and all(row["n_lesions"] == "0" for row in scores)
    assert _rows(out / "lesions.csv") == []
    slices = _rows(out / "slices.csv")
    assert {row["label"] for row in slices} <= {"normal", "abnormal"}


def test_augment_settings_parse_validate_and_reach_training(tmp_path):
    from aeanomaly.cli import parse_augment
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.errors import ConfigError

    assert parse_augment(None) is True
    assert parse_augment("flip=0, rotate_deg=15") == {"flip": 0.0, "rotate_deg": 15.0}
    with pytest.raises(ConfigError, match="expected KEY=NUMBER"):
        parse_augment("flip")
    cfg = AnomalyDetector(augment={"flip": 0.0, "rotate_deg": 15})._train_config()
    assert cfg.augment and cfg.augment_params["flip"] == 0.0 and cfg.augment_params["rotate_deg"] == 15.0
    assert cfg.augment_params["scale"] == 0.08  # the other defaults stay
    assert AnomalyDetector(augment=False)._train_config().augment is False
    with pytest.raises(ConfigError, match="unknown augmentation setting.*bogus"):
        AnomalyDetector(augment={"bogus": 1})._train_config()


@pytest.mark.parametrize("spec, reason", [("flip", "expected KEY=NUMBER"), ("bogus=1", "unknown augmentation setting")])
def test_fit_refuses_bad_augment_with_exit_2(phantom_train, tmp_path, spec, reason):
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["fit", "--normal-dir", str(phantom_train / "normal"), "--out", str(out), "--size", "32",
                                  "--epochs", "1", "--quiet", "--augment", spec])
    assert r.exit_code == 2, r.output
    assert reason in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "b.partial").exists()


def test_fit_precision_bfloat16_calibrates_in_bfloat16(phantom_train, tmp_path):
    import json

    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["fit", "--normal-dir", str(phantom_train / "normal"), "--out", str(out), "--size", "32",
                                  "--depth", "2", "--base-filters", "4", "--latent", "8", "--epochs", "1",
                                  "--precision", "bfloat16", "--quiet"])
    assert r.exit_code == 0, r.output
    cal = json.loads((out / "calibration.json").read_text())
    params = json.loads((out / "bundle.json").read_text())["params"]
    assert cal["precision"] == params["precision"] == "bfloat16"
    assert cal["scan"]["threshold"] is not None
