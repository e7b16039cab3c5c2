"""End-to-end behaviour of AnomalyDetector on phantoms, with the tiny session bundle."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aeanomaly.detector import AnomalyDetector
from aeanomaly.errors import AeAnomalyError, BundleError, ConfigError, NotFittedError
from aeanomaly.io import find_scans, load_label, load_scan
from aeanomaly.evaluate import dice
from aeanomaly.preprocess import mask_to_model_grid


@pytest.fixture(scope="module")
def det(fitted_bundle):
    return AnomalyDetector.load(fitted_bundle)


def test_not_fitted_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        AnomalyDetector().score_scan("x.nii.gz")
    assert not hasattr(AnomalyDetector(), "window_")  # fitted attributes exist only after fit
    with pytest.raises(ConfigError, match="unknown parameter"):
        AnomalyDetector().set_params(colour="red")


def test_fitted_attributes_and_split(det):
    split = det.split_
    assert split["train"] and split["val"] and split["calib"]
    assert not set(split["train"]) & set(split["calib"]) and not set(split["val"]) & set(split["calib"])
    assert det.calibration_sources_ == split["calib"]
    assert det.history_["loss"] and len(det.history_["loss"]) == det.train_state_["epoch"]
    assert det.pixel_threshold_ > 0 and len(det.normal_peaks_) > 0
    assert det.calibrator_.n_ == len(split["calib"])


def test_reconstruction_beats_mean_image_baseline(det, phantom_test):
    """Held-out normal slices are reconstructed far better than by the mean normal slice."""
    train = [det.prepare(load_scan(p)) for p in det.split_["train"]]
    mean_img = np.mean(np.concatenate([p.x[p.keep, ..., 0] for p in train]), axis=0)
    maes, base = [], []
    for path in find_scans(phantom_test / "normal"):
        prep = det.prepare(load_scan(path))
        x = prep.x[prep.keep]
        rec = det.reconstruct(x)
        m = prep.body[prep.keep]
        maes.append(np.abs(rec - x[..., 0])[m].mean())
        base.append(np.abs(mean_img[None] - x[..., 0])[m].mean())
    assert np.mean(maes) < 0.5 * np.mean(base), (np.mean(maes), np.mean(base))


def test_reconstruction_independent_of_the_inference_batch(det, phantom_test):
    """The default inference batch (a pixel budget, INFER_BATCH_PIXELS) changes nothing but memory:
    batches of 1, 5 and the default reconstruct the same slices within 1e-5."""
    from aeanomaly.detector import INFER_BATCH_PIXELS

    prep = det.prepare(load_scan(find_scans(phantom_test / "normal")[0]))
    x = prep.x[prep.keep]
    ref = det.reconstruct(x)
    assert ref.shape == x.shape[:3] and min(32, INFER_BATCH_PIXELS // det.size**2) == 32
    for bs in (1, 5):
        np.testing.assert_allclose(det.reconstruct(x, batch_size=bs), ref, atol=1e-5)


def test_scoring_ranks_abnormal_above_normal_and_localizes(det, phantom_test):
    normals = find_scans(phantom_test / "normal")
    abnormals = find_scans(phantom_test / "abnormal")
    results = [det.score_scan(p) for p in normals + abnormals]
    y = [0] * len(normals) + [1] * len(abnormals)
    auroc = roc_auc_score(y, [r.scan_score for r in results])
    assert auroc >= 0.75, auroc
    dices, heat, lesion = [], [], []
    for r, path in zip(results[len(normals):], abnormals):
        truth = load_label(phantom_test / "masks" / path.name.replace(".nii.gz", "_mask.nii.gz"), like=r.scan)
        t = mask_to_model_grid(truth > 0, det.size)
        dices.append(dice(r.lesion_labels > 0, t))
        heat.append(r.heatmap[r.prepared.body])
        lesion.append(t[r.prepared.body])
    assert max(dices) > 0.0 and np.mean(dices) > 0.0, dices
    pixel_auroc = roc_auc_score(np.concatenate(lesion), np.concatenate(heat))  # heatmap ranks lesion pixels high
    assert pixel_auroc >= 0.75, pixel_auroc
    n_normal = np.mean([len(r.lesions) for r in results[: len(normals)]])
    n_abnormal = np.mean([len(r.lesions) for r in results[len(normals):]])
    assert n_abnormal > n_normal, (n_normal, n_abnormal)
    r = results[-1]
    assert r.heatmap.shape == (8, 64, 64) and r.heatmap_in_input_grid().shape == r.scan.hu.shape
    assert 0 < r.p_value <= 1 and r.label in ("normal", "abnormal")
    assert r.slice_scores.shape == (8,) and np.isfinite(r.slice_scores).any()
    for les in r.lesions:
        assert les["slice_start"] <= les["slice_end"] and les["area_mm2"] > 0 and len(les["centroid_ras_mm"]) == 3


def test_written_heatmap_is_the_input_grid_heatmap_within_half_a_step(det, phantom_test, tmp_path):
    """What ``score`` writes (int16 counts with scl_slope) reads back as ``heatmap_in_input_grid`` in the
    input file's grid, within half a quantisation step (1/65534 of the scan's largest value), zeros
    exact: the storage saves half the bytes and changes no threshold decision beyond that step."""
    import nibabel as nib

    from aeanomaly.io.results import write_scan_outputs
    from aeanomaly.io.scan import to_input_geometry

    r = det.score_scan(find_scans(phantom_test / "abnormal")[0])
    write_scan_outputs(r, "s", tmp_path, heatmaps="nifti", overlays=0)
    img = nib.load(tmp_path / "heatmaps" / "s_heatmap.nii.gz")
    expected, affine = to_input_geometry(r.heatmap_in_input_grid(), r.scan)
    step = float(np.abs(r.heatmap).max()) / 32767
    assert img.get_data_dtype() == np.int16 and step > 0
    np.testing.assert_allclose(img.affine, affine)
    back = img.get_fdata()
    assert np.abs(back - expected).max() <= 0.502 * step
    assert (back[expected == 0] == 0).all()


def test_save_load_round_trip_gives_same_scores(det, fitted_bundle, phantom_test, tmp_path):
    path = find_scans(phantom_test / "abnormal")[0]
    a = det.score_scan(path)
    copy = tmp_path / "copy"
    det.save(copy)
    b = AnomalyDetector.load(copy).score_scan(path)
    assert a.scan_score == pytest.approx(b.scan_score, rel=1e-5)
    assert a.p_value == pytest.approx(b.p_value)
    with pytest.raises(BundleError, match="already exists"):
        det.save(copy)
    det.save(copy, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".copy")]  # no temp left behind


def test_smoothing_across_slices_and_the_blob_gate_are_scoring_parameters_the_bundle_keeps(fitted_bundle, phantom_test, tmp_path):
    from aeanomaly.scoring import z_smoothed_heatmap

    det = AnomalyDetector.load(fitted_bundle)
    path = find_scans(phantom_test / "abnormal")[0]
    flat = det.analyse(path)
    det.set_params(sigma_z_mm=4.0, blob_gate=0.0)
    z = det.analyse(path)
    assert len(z.heatmap) > 1 and not np.array_equal(z.heatmap, flat.heatmap)
    np.testing.assert_allclose(z.heatmap, z_smoothed_heatmap(flat.heatmap, flat.mask, 4.0, flat.spacing), atol=1e-6)
    det.save(tmp_path / "z")
    back = AnomalyDetector.load(tmp_path / "z")
    assert back.sigma_z_mm == 4.0
    np.testing.assert_allclose(back.score_scan(path).slice_scores, det.score_scan(path).slice_scores, rtol=1e-6)
    det.set_params(sigma_z_mm=0.0, blob_gate=2.0)
    gated = det.analyse(path)
    assert not np.array_equal(gated.heatmap, flat.heatmap)
    det.save(tmp_path / "b")
    assert AnomalyDetector.load(tmp_path / "b").blob_gate == 2.0
    det.set_params(blob_gate_3d=1.0)
    gated_3d = det.analyse(path)
    assert len(gated_3d.heatmap) >= 3 and not np.array_equal(gated_3d.heatmap, gated.heatmap)
    det.save(tmp_path / "v")
    back = AnomalyDetector.load(tmp_path / "v")
    assert back.blob_gate_3d == 1.0
    np.testing.assert_allclose(back.analyse(path).heatmap, gated_3d.heatmap, atol=1e-6)


def test_set_threshold_and_recalibrate(fitted_bundle, phantom_test, tmp_path):
    det = AnomalyDetector.load(fitted_bundle)
    path = find_scans(phantom_test / "abnormal")[0]
    s = det.score_scan(path).scan_score
    det.set_threshold(s * 2, reason="fewer false alarms")
    assert det.score_scan(path).label == "normal"
    assert det.calibration_log_[-1]["reason"] == "fewer false alarms"
    det.set_threshold(s / 2)
    assert det.score_scan(path).label == "abnormal"
    with pytest.raises(ConfigError):
        det.set_threshold()
    det.recalibrate(find_scans(phantom_test / "normal"), target_fpr=0.3)
    assert det.calibrator_.n_ == 6 and det.target_fpr_ == 0.3 and det.target_fpr == 0.2  # fitted state only
    assert det.calibration_log_[-1]["what"] == "recalibrate"


def test_slice_fdr_labels_slices_by_benjamini_hochberg(det, phantom_test):
    from aeanomaly.calibrate import benjamini_hochberg

    path = find_scans(phantom_test / "abnormal")[0]
    plain = det.score_scan(path)
    try:
        det.set_params(slice_fdr=0.1)
        bh = det.score_scan(path)
        ok = np.isfinite(bh.slice_scores)
        np.testing.assert_array_equal(bh.slice_labels[ok], benjamini_hochberg(bh.slice_p_values[ok], 0.1))
        assert not bh.slice_labels[~ok].any()
        np.testing.assert_allclose(bh.slice_p_values[ok], plain.slice_p_values[ok])
        assert bh.scan_score == plain.scan_score and bh.label == plain.label  # scan level unchanged
        det.set_params(slice_fdr=1.5)
        with pytest.raises(ConfigError, match="slice_fdr must be in"):
            det.score_scan(path)
    finally:
        det.set_params(slice_fdr=None)


def _scan_with_most_lesions(det, folder):
    results = [det.score_scan(p) for p in find_scans(folder)]
    best = max(results, key=lambda r: len(r.lesions))
    assert best.lesions, "the tiny model should find a lesion in at least one abnormal phantom"
    return best


def test_min_lesion_volume_drops_small_lesions(det, phantom_test):
    best = _scan_with_most_lesions(det, phantom_test / "abnormal")
    path, base = best.source, best.lesions
    vols = sorted(les["volume_mm3"] for les in base)
    try:
        det.set_params(min_lesion_mm3=vols[-1] + 1.0)
        assert det.score_scan(path).lesions == []
        det.set_params(min_lesion_mm3=vols[0])
        kept = det.score_scan(path).lesions
        assert len(kept) == len(base)
    finally:
        det.set_params(min_lesion_mm3=None)


def test_lesion_centroids_are_given_on_the_input_slice_grid(det, phantom_test):
    from scipy import ndimage

    from aeanomaly.io.results import lesion_rows

    res = _scan_with_most_lesions(det, phantom_test / "abnormal")
    assert res.lesions, "the test phantoms hold lesions the tiny model finds"
    labels_in = res.lesion_labels_in_input_grid()
    rows = lesion_rows("s", res.lesions)
    checked = 0
    for les, row in zip(res.lesions, rows):
        z, y, x = les["centroid_zyx_input"]
        assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == (z, y, x)
        assert 0 <= y < labels_in.shape[1] and 0 <= x < labels_in.shape[2]
        own = labels_in[int(round(z))] == les["id"]
        if own.sum() >= 4:  # big enough to survive resampling to the input grid
            dist = ndimage.distance_transform_edt(~own)
            assert dist[int(round(y)), int(round(x))] <= 2.0  # on (or next to) the lesion's own pixels
            checked += 1
    assert checked >= 1, "no lesion large enough on the input grid to check its centroid"


@pytest.mark.slow
def test_fit_is_reproducible_with_a_seed(phantom_train, tmp_path):
    """Same scans, same seed: the same split, training curve and weights (CPU)."""
    paths = find_scans(phantom_train / "normal")[:6]
    kw = dict(window="lung", size=32, depth=2, base_filters=4, latent_dim=8, epochs=2, batch_size=8, seed=3)
    a = AnomalyDetector(**kw).fit(paths, verbose=0)
    b = AnomalyDetector(**kw).fit(paths, verbose=0)
    assert a.split_ == b.split_
    np.testing.assert_allclose(a.history_["loss"], b.history_["loss"], rtol=1e-5)
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-6)
    c = AnomalyDetector(**{**kw, "seed": 4}).fit(paths, verbose=0)
    assert c.split_ != a.split_ or not np.allclose(c.history_["loss"], a.history_["loss"])


def test_fit_resolves_auto_precision_and_refuses_bfloat16_without_instructions(phantom_train, monkeypatch):
    """The default calibrates in what this machine computes natively (bfloat16 or float32), and the bundle
    says which; asked for bfloat16 where the machine has none, fit stops before training."""
    from aeanomaly.model import autoencoder

    paths = find_scans(phantom_train / "normal")[:6]
    kw = dict(window="lung", size=32, depth=2, base_filters=4, latent_dim=8, epochs=1, batch_size=8, seed=3)
    assert AnomalyDetector().precision == "auto"
    det = AnomalyDetector(**kw).fit(paths, verbose=0)
    assert det.precision_ == autoencoder.resolve_precision("auto") and det.get_params()["precision"] == "auto"
    monkeypatch.setattr(autoencoder, "native_bfloat16", lambda: False)
    with pytest.raises(ConfigError, match="bfloat16 instructions"):
        AnomalyDetector(**{**kw, "precision": "bfloat16"}).fit(["never-read.nii.gz"], verbose=0)


FIXTURE_V1 = Path(__file__).parent / "data" / "v1"


def test_a_bundle_written_by_the_first_release_loads_and_scores_identically():
    """tests/data/v1 was written by aeanomaly at commit ed33ef0 (format_version 1), with the
    scores it gave then."""
    expected = json.loads((FIXTURE_V1 / "expected.json").read_text())["scans"]
    det = AnomalyDetector.load(FIXTURE_V1 / "bundle")
    # written before smoothing across slices and the blob gate: each slice its own and the residual as it is,
    # whatever the defaults
    assert det.sigma_z_mm == 0.0 and det.blob_gate == 0.0 and det.blob_gate_3d == 0.0
    for name, e in expected.items():
        r = det.score_scan(FIXTURE_V1 / "scans" / name)
        assert r.label == e["label"]
        assert r.scan_score == pytest.approx(e["scan_score"], rel=1e-6)
        assert r.p_value == pytest.approx(e["p_value"], rel=1e-6)
        np.testing.assert_allclose(r.slice_scores, np.array(e["slice_scores"], float), rtol=1e-6)
        assert float(r.heatmap.sum()) == pytest.approx(e["heatmap_sum"], rel=1e-5)
        assert len(r.lesions) == e["n_lesions"]


@pytest.mark.parametrize("bad", [dict(window="bogus"), dict(size=0), dict(channels=2), dict(target_fpr=1.5),
                                 dict(roi="liverish"), dict(slice_fdr=2.0), dict(calib_method="magic"),
                                 dict(precision="int8"), dict(augment={"spin": 1})])
def test_fit_validates_every_parameter_before_any_work(bad, tmp_path):
    with pytest.raises(ConfigError):
        AnomalyDetector(**bad).fit([tmp_path / "does-not-exist.nii.gz"], verbose=0)


def test_analysis_is_public_and_matches_score_scan(det, phantom_test):
    path = find_scans(phantom_test / "abnormal")[0]
    a = det.analyse(path)
    r = det.score_scan(path)
    np.testing.assert_array_equal(a.slice_scores, r.slice_scores)
    np.testing.assert_array_equal(a.heatmap, r.heatmap)
    assert a.scan_score == r.scan_score and a.mask.shape == a.heatmap.shape and a.note == ""
    assert (a.heatmap[~a.mask] == 0).all()


@pytest.mark.parametrize("prefetch", [True, False])
def test_iter_scores_gives_score_scans_results_in_order_and_reports_bad_scans(det, phantom_test, tmp_path, prefetch):
    """Batch scoring (the next scan read and prepared in a thread while this one is scored) gives each
    scan exactly what score_scan gives, in the order asked, with a bad file in the middle reported as
    its error, and the scans after it still scored."""
    good = find_scans(phantom_test / "abnormal")[:2] + find_scans(phantom_test / "normal")[:1]
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    paths = [good[0], bad, good[1], tmp_path / "missing.nii.gz", good[2]]
    got = list(det.iter_scores(paths, prefetch=prefetch))
    assert [p for p, _ in got] == paths
    assert isinstance(got[1][1], AeAnomalyError) and "broken.nii.gz" in str(got[1][1])
    assert isinstance(got[3][1], (AeAnomalyError, OSError))
    for (path, res) in (got[0], got[2], got[4]):
        ref = det.score_scan(path)
        assert res.source == ref.source and res.label == ref.label and res.scan_score == ref.scan_score
        np.testing.assert_array_equal(res.slice_scores, ref.slice_scores)
        np.testing.assert_array_equal(res.heatmap, ref.heatmap)
        np.testing.assert_array_equal(res.lesion_labels, ref.lesion_labels)
    with pytest.raises(AeAnomalyError, match="broken.nii.gz"):  # errors=(): raised, as score() does
        list(det.iter_scores(paths, prefetch=prefetch, errors=()))
    with pytest.raises(AeAnomalyError, match="broken.nii.gz"):
        det.score(paths)
    assert [r.scan_score for r in det.score(good)] == [det.score_scan(p).scan_score for p in good]


@pytest.mark.parametrize("prefetch", [True, False])
def test_iter_scores_holds_no_earlier_result_while_reading_the_next_scan(fitted_bundle, phantom_test, prefetch,
                                                                           monkeypatch):
    """Memory stays at one scan (two with prefetch): when a scan is read and prepared, no result handed
    out before is still referenced by the iterator (the consumer drops each, as the CLI does)."""
    import weakref

    det = AnomalyDetector.load(fitted_bundle)
    handed: list = []
    alive_at_prepare: list = []
    real = AnomalyDetector.prepare

    def prepare(self, scan):
        alive_at_prepare.append(sum(r() is not None for r in handed))
        return real(self, scan)

    monkeypatch.setattr(AnomalyDetector, "prepare", prepare)
    paths = find_scans(phantom_test / "normal")[:4]
    for _, res in det.iter_scores(paths, prefetch=prefetch):
        handed.append(weakref.ref(res))
        del res
    assert len(alive_at_prepare) == 4 and alive_at_prepare == [0, 0, 0, 0]


def test_recalibrate_failure_leaves_the_detector_as_it_was(fitted_bundle, tmp_path):
    det = AnomalyDetector.load(fitted_bundle)
    before = det.calibration_dict()
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(AeAnomalyError):
        det.recalibrate([bad], target_fpr=0.3, strict=True)
    assert det.calibration_dict() == before and det.target_fpr_ == before["target_fpr"]


def test_a_scan_without_lung_is_scored_in_the_body_and_one_without_body_is_normal(det):
    from aeanomaly.io import Scan, internal_affine

    soft = np.full((2, 64, 64), -1000.0, np.float32)
    soft[:, 8:56, 8:56] = 40.0  # soft tissue only: no lung anywhere
    r = det.score_scan(Scan(soft, (6.0, 5.5, 5.5), internal_affine((6.0, 5.5, 5.5)), source="soft"))
    assert np.isfinite(r.scan_score) and r.label in ("normal", "abnormal")
    assert "no lung region found" in r.note
    air = np.full((2, 64, 64), -1000.0, np.float32)
    r = det.score_scan(Scan(air, (6.0, 5.5, 5.5), internal_affine((6.0, 5.5, 5.5)), source="air"))
    assert r.label == "normal" and np.isnan(r.scan_score) and "no body" in r.note
