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


def test_the_heatmap_is_made_from_the_segmenters_probability(seg_det, phantom_test):
    assert seg_det.seg_model_ is not None and seg_det.seg_history_["loss"]
    r = seg_det.score_scan(find_scans(phantom_test / "abnormal")[0])
    a = seg_det.analyse(find_scans(phantom_test / "abnormal")[0])
    assert 0.0 <= r.heatmap.min() and r.heatmap.max() <= 1.0  # a probability (fused with the clipped residual)
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


def test_the_fused_heatmap_weighs_the_probability_and_the_residual_at_the_calibration_scale(seg_det, phantom_test,
                                                                                            tmp_path):
    path = find_scans(phantom_test / "abnormal")[0]
    w, calib = seg_det.seg_weight, seg_det.calibration_sources_
    assert w == 0.25  # the default: the real-CT tune split's choice
    # the scale fit fixed: the pixel threshold (pixel_quantile of every in-region pixel) of the calibration
    # normals' residual heatmaps
    pooled = np.concatenate([(lambda a: a.heatmap[a.mask])(seg_det.analyse(p, normalise=False, heatmap="residual"))
                             for p in calib])
    m = int(np.ceil((1 - seg_det.pixel_quantile) * pooled.size))
    scale = seg_det.calibration_.residual_scale
    assert scale == pytest.approx(np.sort(pooled)[::-1][m - 1], rel=1e-6) and scale > 0
    seg_det.save(tmp_path / "b")
    alone = AnomalyDetector.load(tmp_path / "b").set_params(seg_weight=1.0)  # the probability alone
    prob = alone.analyse(path, normalise=False)
    resid = seg_det.analyse(path, normalise=False, heatmap="residual")
    fused = seg_det.analyse(path, normalise=False)
    want = np.where(prob.mask, w * prob.heatmap + (1 - w) * np.clip(resid.heatmap / scale, 0, 1), 0)
    np.testing.assert_allclose(fused.heatmap, want, atol=1e-6)
    assert 0 <= fused.heatmap.min() and fused.heatmap.max() <= 1 and not np.allclose(prob.heatmap, fused.heatmap)
    # a calibration at weight 1 fixes no scale: fusing then asks for a recalibration, which fixes it
    alone.recalibrate(calib, method="empirical")
    assert alone.calibration_.residual_scale is None
    with pytest.raises(ConfigError, match="recalibrate"):
        alone.set_params(seg_weight=0.5).analyse(path)
    alone.recalibrate(calib, method="empirical")
    assert alone.calibration_.residual_scale == pytest.approx(scale, rel=1e-6)
    # the weight and the scale travel with the bundle; bundles written before the option: probability alone
    alone.save(tmp_path / "half")
    back = AnomalyDetector.load(tmp_path / "half")
    assert back.seg_weight == 0.5 and back.calibration_.residual_scale == pytest.approx(scale)
    assert back.score_scan(path).scan_score == pytest.approx(alone.score_scan(path).scan_score, abs=1e-6)
    info = json.loads((tmp_path / "half" / "bundle.json").read_text())
    info["params"].pop("seg_weight")
    (tmp_path / "half" / "bundle.json").write_text(json.dumps(info))
    assert AnomalyDetector.load(tmp_path / "half").seg_weight == 1.0
    zero = back.set_params(seg_weight=0.0).analyse(path, normalise=False)  # the scaled residual alone
    np.testing.assert_allclose(zero.heatmap, np.where(resid.mask, np.clip(resid.heatmap / scale, 0, 1), 0), atol=1e-6)
    with pytest.raises(ConfigError, match="seg_weight"):
        back.set_params(seg_weight=1.5).analyse(path)
    with pytest.raises(ConfigError, match="heatmap"):
        seg_det.analyse(path, heatmap="probability")
    with pytest.raises(ConfigError, match="residual_scale"):
        seg_det.analyse(path, residual_scale=0.0)


@pytest.mark.slow
def test_cli_fit_info_score_evaluate_with_dae_seg(phantom_train, phantom_test, tmp_path):
    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    normals = tmp_path / "normals"
    normals.mkdir()
    for p in find_scans(phantom_train / "normal")[:10]:
        shutil.copy(p, normals / p.name)
    r = run("fit", "--normal-dir", normals, "--out", tmp_path / "bundle", "--model", "dae+seg", "--size", 32,
            "--depth", 2, "--base-filters", 4, "--latent-dim", 8, "--epochs", 1, "--seg-epochs", 1,
            "--seg-weight", 0.5, "--calib-fraction", 0.4, "--target-fpr", 0.2, "--quiet")
    assert r.exit_code == 0, r.output
    params = json.loads((tmp_path / "bundle" / "bundle.json").read_text())["params"]
    assert params["model_kind"] == "dae+seg" and params["seg_weight"] == 0.5
    scale = json.loads((tmp_path / "bundle" / "calibration.json").read_text())["residual_scale"]
    assert scale > 0
    r = run("info", tmp_path / "bundle")
    assert "dae+seg" in r.output and "segmenter" in r.output
    assert f"0.5 × its probability + 0.5 × the residual / {scale:.4g}" in r.output
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
