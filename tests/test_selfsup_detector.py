"""The self-supervised model kind ``dae+seg`` through the product: fit, score, calibrate, evaluate, the
bundle and ``info``, on a tiny model (phantoms, and a real CT slice when ../shared/data is there)."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from aeanomaly.cli import main
from aeanomaly.detector import AnomalyDetector
from aeanomaly.errors import ConfigError
from aeanomaly.io import find_scans

TINY_SEG = dict(window="lung", size=32, depth=2, base_filters=4, latent_dim=8, epochs=2, batch_size=8,
                calib_fraction=0.4, val_fraction=0.15, target_fpr=0.2, seed=0, model_kind="dae+seg", seg_epochs=1,
                seg_filters=4)


@pytest.fixture(scope="module")
def seg_det(phantom_train):
    return AnomalyDetector(**TINY_SEG).fit(find_scans(phantom_train / "normal")[:10], verbose=0)


def test_the_heatmap_is_the_segmenters_probability(seg_det, phantom_test):
    assert seg_det.seg_model_ is not None and seg_det.seg_history_["loss"]
    r = seg_det.score_scan(find_scans(phantom_test / "abnormal")[0])
    a = seg_det.analyse(find_scans(phantom_test / "abnormal")[0])
    assert 0.0 <= r.heatmap.min() and r.heatmap.max() <= 1.0  # a probability, not a residual
    assert (r.heatmap[~a.mask] == 0).all() and np.isfinite(r.scan_score) and r.label in ("normal", "abnormal")
    np.testing.assert_array_equal(a.heatmap, r.heatmap)
    with pytest.raises(ConfigError, match="model_kind"):
        AnomalyDetector(**{**TINY_SEG, "model_kind": "draem"}).fit([], verbose=0)


def test_bundle_round_trip_and_recalibration(seg_det, phantom_test, tmp_path):
    path = find_scans(phantom_test / "abnormal")[0]
    before = seg_det.score_scan(path)
    seg_det.save(tmp_path / "b")
    assert (tmp_path / "b" / "seg.keras").is_file() and (tmp_path / "b" / "seg.json").is_file()
    loaded = AnomalyDetector.load(tmp_path / "b")
    after = loaded.score_scan(path)
    np.testing.assert_allclose(after.heatmap, before.heatmap, atol=1e-6)
    assert after.scan_score == pytest.approx(before.scan_score, abs=1e-6) and after.label == before.label
    loaded.recalibrate(find_scans(phantom_test / "normal"), method="empirical")
    assert loaded.calibration_log_[-1]["what"] == "recalibrate"
    (tmp_path / "b" / "seg.keras").unlink()
    with pytest.raises(Exception, match="seg.keras"):
        AnomalyDetector.load(tmp_path / "b")


@pytest.mark.slow
def test_cli_fit_info_score_evaluate_with_dae_seg(phantom_train, phantom_test, tmp_path):
    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    normals = tmp_path / "normals"
    normals.mkdir()
    for p in find_scans(phantom_train / "normal")[:10]:
        shutil.copy(p, normals / p.name)
    r = run("fit", "--normal-dir", normals, "--out", tmp_path / "bundle", "--model", "dae+seg", "--size", 32,
            "--depth", 2, "--base-filters", 4, "--latent-dim", 8, "--epochs", 1, "--seg-epochs", 1,
            "--calib-fraction", 0.4, "--target-fpr", 0.2, "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["params"]["model_kind"] == "dae+seg"
    r = run("info", tmp_path / "bundle")
    assert "dae+seg" in r.output and "segmenter" in r.output
    r = run("score", tmp_path / "bundle", phantom_test / "abnormal", "--out", tmp_path / "res", "--quiet")
    assert r.exit_code == 0, r.output
    r = run("evaluate", tmp_path / "bundle", "--normal-dir", phantom_test / "normal", "--abnormal-dir",
            phantom_test / "abnormal", "--masks", phantom_test / "masks", "--out", tmp_path / "ev", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["scan"]["auroc"] is not None and m["pixel"]["pixel_auroc"] is not None


@pytest.mark.realdata
def test_a_real_ct_slice_is_scored(seg_det, shared_data):
    tiffs = sorted((shared_data / "kmader-lungs-512").rglob("*.tif*"))
    if not tiffs:
        pytest.skip(f"no TIFF slice under {shared_data / 'kmader-lungs-512'}")
    r = seg_det.score_scan(tiffs[0])
    assert np.isfinite(r.scan_score) and r.heatmap.shape == (1, 32, 32) and r.label in ("normal", "abnormal")
