"""``aeanomaly fit-head`` (aeanomaly/cli/head.py): the head lands in the bundle atomically; bad input exits 2
with one line; the old ``--normal`` / ``--abnormal`` spellings still work with a deprecation line."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from aeanomaly.cli.head import fit_head, parse_classes
from aeanomaly.errors import ConfigError

FAST = ["--depth", "2", "--base-filters", "4", "--epochs", "1", "--batch-size", "8", "--no-jit", "--quiet"]


def run(*args):
    return CliRunner().invoke(fit_head, [str(a) for a in args], catch_exceptions=False)


def volume(rng, lesion: bool):
    """(x, y, z) = (48, 48, 6) abdomen-like HU volume and its labels: liver 5 (bright, patient's
    right), spleen 1 (dark, patient's left); a lesion adds a 250 HU blob to two slices."""
    xx, yy = np.mgrid[:48, :48]
    hu = np.full((48, 48, 6), -1000.0)
    lab = np.zeros((48, 48, 6), np.uint8)
    body = ((xx - 24) / 21.0) ** 2 + ((yy - 24) / 17.0) ** 2 < 1
    liver = (xx - 15 - rng.uniform(-2, 2)) ** 2 + (yy - 22) ** 2 < rng.uniform(40, 64)
    spleen = (xx - 33 - rng.uniform(-2, 2)) ** 2 + (yy - 26) ** 2 < rng.uniform(16, 30)
    for z in range(6):
        sl = hu[..., z]
        sl[body] = 40 + rng.normal(0, 8, body.sum())
        sl[liver] = 160
        sl[spleen] = -80
        lab[..., z][liver], lab[..., z][spleen] = 5, 1
    if lesion:
        cx, cy = rng.uniform(18, 30, 2)
        blob = (xx - cx) ** 2 + (yy - cy) ** 2 < 12
        for z in (2, 3):
            hu[..., z][blob] = 250
    return hu.astype(np.int16), lab


def save(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 5.0, 1.0])), str(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """images/ + masks/ (organ labels), normal/ and abnormal/ folders, and a tiny fitted bundle."""
    from aeanomaly.detector import AnomalyDetector

    root = tmp_path_factory.mktemp("headdata")
    rng = np.random.default_rng(0)
    for i in range(6):
        hu, lab = volume(rng, lesion=False)
        save(root / "images" / f"case{i}.nii.gz", hu)
        save(root / "masks" / (f"case{i}_mask.nii.gz" if i % 2 else f"case{i}.nii.gz"), lab)
        save(root / "normal" / f"n{i}.nii.gz", hu)
    for i in range(3):
        save(root / "abnormal" / f"a{i}.nii.gz", volume(rng, lesion=True)[0])
    # a one-epoch autoencoder, calibrated on all six normal scans, is bundle enough for fit-head (and fast)
    normals = sorted((root / "normal").iterdir())
    det = AnomalyDetector(window="abdomen", size=32, depth=2, base_filters=4, latent_dim=8, epochs=1, batch_size=8,
                          target_fpr=0.2, augment=False)
    with pytest.warns(UserWarning, match="too few for the conformal guarantee"):  # 2 calibration scans in fit
        det.fit(normals, verbose=0)
    det.recalibrate(normals).save(root / "bundle")
    return root


def _one_error_line(r, text):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], r.output


def _snapshot(bundle: Path) -> dict:
    """Bundle files other than the head and the calibration (json + figure, which a U-Net head refits)."""
    return {p.name: p.read_bytes() for p in bundle.iterdir()
            if p.is_file() and not p.name.startswith("head.") and not p.name.startswith("calibration.")}


@pytest.mark.slow
def test_fit_head_unet_then_refuse_then_replace_with_cnn(data, tmp_path):
    import shutil

    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.model.heads import SupervisedHead

    bundle = tmp_path / "bundle"
    shutil.copytree(data / "bundle", bundle)
    before = _snapshot(bundle)
    r = CliRunner().invoke(fit_head, [str(a) for a in (
        bundle, "--kind", "unet", "--images", data / "images", "--masks", data / "masks",
        "--classes", "5:liver,1:spleen", "--val-fraction", "0.34", *FAST[:-1])], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "head unet (liver, spleen) written" in r.output and "held-out Dice liver" in r.output
    assert "4 train / 2 validation scans" in r.output
    info = json.loads((bundle / "head.json").read_text())
    assert info["kind"] == "unet" and info["classes"] == ["liver", "spleen"] and info["label_values"] == [[5], [1]]
    assert (info["size"], info["channels"], info["window"]) == (32, 1, "abdomen")
    assert len(info["training_data"]["val_scans"]) == 2 and info["training_data"]["unpaired_scans"] == 0
    assert _snapshot(bundle) == before  # the autoencoder, history ... are untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temp folder left beside it
    assert "calibration refitted on 6 normal scans" in r.output  # the region changed: p-values refitted
    assert "operating point target FPR 0.2" in r.output
    cal = json.loads((bundle / "calibration.json").read_text())
    assert cal["log"][-1]["what"] == "fit-head unet" and len(cal["calibration_scans"]) == 6
    det = AnomalyDetector.load(bundle)
    assert isinstance(det.head_, SupervisedHead) and det.head_.classes_ == ("liver", "spleen")
    from aeanomaly.io import load_scan

    prep = det.prepare(load_scan(data / "images" / "case0.nii.gz"))
    assert det.head_.region_mask(prep.x).shape == (6, 32, 32)

    head_json = (bundle / "head.json").read_bytes()
    r = run(bundle, "--kind", "unet", "--images", data / "images", "--masks", data / "masks", *FAST)
    _one_error_line(r, "already holds a head")
    assert (bundle / "head.json").read_bytes() == head_json

    r = run(bundle, "--kind", "cnn", "--normal", data / "normal", "--abnormal-dir", data / "abnormal",
            "--val-fraction", "0.5", "--overwrite", *FAST)
    assert r.exit_code == 0, r.output
    assert r.stderr.count("warning: --normal is deprecated; use --normal-dir") == 1
    info = json.loads((bundle / "head.json").read_text())
    assert info["kind"] == "cnn" and info["classes"] == ["normal", "abnormal"]
    assert info["fusion"] is not None and len(info["fusion"]["coef"]) == 2  # both classes among validation scans
    assert 0.0 <= info["metrics"]["val_accuracy"] <= 1.0
    assert _snapshot(bundle) == before
    # the U-Net region is gone, so the calibration is refitted on the plain region again
    assert json.loads((bundle / "calibration.json").read_text())["log"][-1]["what"] == "fit-head cnn"
    head = AnomalyDetector.load(bundle).head_
    p = head.abnormal_proba(prep.x)
    assert head.kind == "cnn" and p.shape == (6,) and ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p, head.predict_proba(prep.x)[:, 1], atol=1e-6)
    keep = np.array([True, False, True, False, False, False])
    assert head.scan_abnormal_proba(prep.x, keep) == pytest.approx(max(p[0], p[2]))
    assert np.isnan(head.scan_abnormal_proba(prep.x[:0]))
    fused = head.fused_proba([1e-4, 0.9], [0.5, 0.5])
    assert fused.shape == (2,) and ((fused > 0) & (fused < 1)).all()
    with pytest.raises(ConfigError, match="unet head"):
        head.predict_labels(prep.x)


def test_fit_head_bad_input_exits_2_with_one_line(data, tmp_path):
    bundle = data / "bundle"
    (tmp_path / "other").mkdir()
    save(tmp_path / "other" / "unrelated.nii.gz", np.zeros((48, 48, 6), np.uint8))
    bad_csv = tmp_path / "labels.csv"
    bad_csv.write_text("scan,label\nn0.nii.gz,tumour\n")
    cases = [
        ((bundle, "--kind", "unet", "--images", data / "images", "--masks", tmp_path / "other"), "no masks found"),
        ((bundle, "--kind", "unet", "--images", data / "images", "--masks", tmp_path / "none"), "does not exist"),
        ((bundle, "--kind", "cnn"), "--kind cnn needs --labels"),
        ((bundle, "--kind", "cnn", "--images", data / "normal"), "--kind cnn needs --labels"),
        ((bundle, "--kind", "cnn", "--images", data / "normal", "--labels", bad_csv), "'tumour' of n0.nii.gz"),
        ((bundle, "--kind", "unet", "--images", data / "images", "--labels", bad_csv), "takes --images and --masks"),
        ((bundle, "--kind", "unet", "--images", data / "images", "--masks", data / "masks", "--classes", "x:liver"),
         "not VALUE:NAME"),
        ((bundle, "--kind", "unet", "--images", data / "images", "--masks", data / "masks", "--classes", "7:kidney"),
         "none of the label values"),
        ((bundle, "--kind", "unet", "--images", data / "images", "--masks", data / "masks", "--val-fraction", "1.5"),
         "--val-fraction"),
        ((tmp_path, "--kind", "unet", "--images", data / "images", "--masks", data / "masks"), "missing bundle.json"),
    ]
    for args, text in cases:
        _one_error_line(run(*args, *FAST), text)
    assert not (bundle / "head.json").exists()


def test_parse_classes():
    assert parse_classes(None, "unet") == (["region"], None)
    assert parse_classes("1:liver, 2:kidney,3:kidney", "unet") == (["liver", "kidney"], [[1], [2, 3]])
    assert parse_classes("liver,spleen", "unet") == (["liver", "spleen"], [[1], [2]])
    assert parse_classes(None, "cnn") == (["normal", "abnormal"], [[0], [1]])
    assert parse_classes("normal,nodule,mass", "cnn") == (["normal", "nodule", "mass"], [[0], [1], [2]])
    for bad, kind in [("0:bg", "unet"), ("1:a,1:b", "unet"), ("1:", "unet"), ("normal", "cnn"), ("a:b", "cnn")]:
        with pytest.raises(ConfigError):
            parse_classes(bad, kind)


@pytest.mark.slow
def test_fit_head_unet_recalibrates_on_calib_dir_or_warns(data, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(data / "bundle", bundle)
    cal = json.loads((bundle / "calibration.json").read_text())
    cal["calibration_scans"] = [str(tmp_path / "gone" / f"n{i}.nii.gz") for i in range(6)]  # the bundle moved
    (bundle / "calibration.json").write_text(json.dumps(cal))
    args = (bundle, "--kind", "unet", "--images", data / "images", "--masks", data / "masks", "--val-fraction", "0")
    r = CliRunner().invoke(fit_head, [str(a) for a in (*args, *FAST[:-1])], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "calibration NOT refitted" in r.output and "aeanomaly calibrate" in r.output
    assert json.loads((bundle / "calibration.json").read_text()) == cal  # left as it was
    r = run(*args, "--overwrite", "--calib-dir", data / "normal", *FAST)
    assert r.exit_code == 0, r.output
    new = json.loads((bundle / "calibration.json").read_text())
    assert new["log"][-1]["what"] == "fit-head unet" and len(new["calibration_scans"]) == 6
