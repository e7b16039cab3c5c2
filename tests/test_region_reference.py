"""Slice scores compared with normal slices of the same scoring-region size (slice_norm="area")."""

import json

import numpy as np
import pytest

from aeanomaly.calibrate import Calibration, NormalStats, RegionSizeReference, region_areas
from aeanomaly.errors import ConfigError, NotFittedError


def _normal_slices(rng, n=400):
    """Normal slices whose score falls with the region's size, as the lung apex and base do."""
    areas = rng.uniform(200, 4000, n)
    return 5.0 / np.sqrt(areas) + rng.normal(0, 0.005, n), areas


def test_reference_removes_the_area_trend_and_ranks_a_mid_lung_lesion_above_a_normal_apex(rng):
    s, a = _normal_slices(rng)
    ref = RegionSizeReference().fit(s, a)
    z = ref.transform(s, a)
    small, large = a < np.quantile(a, 0.25), a > np.quantile(a, 0.75)
    assert abs(np.median(z[small])) < 0.5 and abs(np.median(z[large])) < 0.5  # no trend left
    assert 0.3 < np.median(np.abs(z)) / 0.6745 < 1.5  # about unit scale (a bin's spread holds its trend too)
    apex = (5.0 / np.sqrt(250.0), 250.0)  # a normal small slice, raw score high
    lesion = (5.0 / np.sqrt(3500.0) + 0.03, 3500.0)  # a large slice with a lesion, raw score lower
    assert apex[0] > lesion[0]
    za, zl = ref.transform([apex[0], lesion[0]], [apex[1], lesion[1]])
    assert zl > za + 1.5  # the raw order is reversed
    assert np.isnan(ref.transform([0.1, np.nan], [0.0, 100.0])).all()  # empty region, unscored slice


def test_reference_uses_fewer_bins_with_few_slices_and_round_trips(rng):
    s, a = _normal_slices(rng, 50)
    ref = RegionSizeReference(n_bins=4, min_per_bin=20).fit(s, a)
    assert ref.median_.size == 2
    back = RegionSizeReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    np.testing.assert_allclose(back.transform(s, a), ref.transform(s, a))
    with pytest.raises(ConfigError):
        RegionSizeReference.from_dict({**ref.to_dict(), "scale": [0.0, 1.0]})
    with pytest.raises(ConfigError):
        RegionSizeReference().fit([1.0], [10.0])
    with pytest.raises(NotFittedError):
        RegionSizeReference().transform([1.0], [10.0])


def test_pooled_spread_keeps_the_bins_medians_and_gives_every_size_one_scale(rng):
    """slice_norm "location": the medians follow the region size as with "area", the scale is one, that of
    all slices' deviations from their bin's median; it round-trips and Calibration.fit builds it."""
    s, a = _normal_slices(rng)
    s = s + np.where(a < 1000, rng.normal(0, 0.05, s.size), 0.0)  # small regions: a much wider spread
    per_bin, pooled = RegionSizeReference().fit(s, a), RegionSizeReference(pooled_spread=True).fit(s, a)
    np.testing.assert_allclose(pooled.median_, per_bin.median_)
    assert np.ptp(per_bin.scale_) > 0 and np.ptp(pooled.scale_) == 0
    dev = s - np.interp(np.log(a), pooled.log_area_, pooled.median_)
    assert pooled.scale_[0] == pytest.approx(1.4826 * np.median(np.abs(dev - np.median(dev))))
    np.testing.assert_allclose(pooled.transform(s, a), dev / pooled.scale_[0])
    back = RegionSizeReference.from_dict(json.loads(json.dumps(pooled.to_dict())))
    assert back.pooled_spread and RegionSizeReference.from_dict({**per_bin.to_dict(), "pooled_spread": None}).pooled_spread is False
    np.testing.assert_allclose(back.transform(s, a), pooled.transform(s, a))
    # a wide-spread small slice counts for more than with its own bin's wider spread
    z_bin, z_pool = per_bin.transform([s.max()], [a[np.argmax(s)]]), pooled.transform([s.max()], [a[np.argmax(s)]])
    assert z_pool[0] > z_bin[0]


def _stats(rng, n_scans=12):
    st = NormalStats()
    for i in range(n_scans):
        z = 20
        mask = np.zeros((z, 32, 32), bool)
        for k in range(z):  # the region grows towards mid-scan, as the lungs do
            r = 3 + int(12 * np.sin(np.pi * (k + 0.5) / z))
            mask[k, 16 - r:16 + r, 16 - r:16 + r] = True
        area = region_areas(mask)
        sl = 1.0 / np.sqrt(area) + rng.normal(0, 0.003, z)
        heat = rng.random(mask.shape).astype(np.float32) * mask
        st.add(f"n{i}", float(np.sort(sl)[-3:].mean()), sl, heat, mask)
    return st


def test_calibration_with_area_norm_calibrates_normalised_scores_and_keeps_the_reference(rng):
    st = _stats(rng)
    raw = Calibration.fit(st, target_fpr=0.1, method="empirical", scan_aggregation="top3")
    cal = Calibration.fit(st, target_fpr=0.1, method="empirical", slice_norm="area", scan_aggregation="top3")
    assert raw.reference is None and cal.reference is not None
    # the scan calibrator holds the top-3 mean of normalised slice scores, not the raw scan scores
    sl, area = st.per_scan[0]
    z = cal.normalised(sl, np.arange(area.max() + 1)[None, None, :] < area[:, None, None])
    assert np.isclose(np.sort(z)[-3:].mean(), np.sort(cal.scan.scores_)).any()
    assert not np.isclose(np.sort(cal.scan.scores_), np.sort(raw.scan.scores_)).all()
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(back.reference.median_, cal.reference.median_)
    assert cal.with_target_fpr(0.2).reference is cal.reference
    assert cal.with_threshold(1.0).reference is cal.reference
    assert Calibration.from_dict(json.loads(json.dumps(raw.to_dict()))).reference is None
    loc = Calibration.fit(st, target_fpr=0.1, method="empirical", slice_norm="location", scan_aggregation="top3")
    assert loc.reference.pooled_spread and np.ptp(loc.reference.scale_) == 0
    np.testing.assert_allclose(loc.reference.median_, cal.reference.median_)
    assert Calibration.from_dict(json.loads(json.dumps(loc.to_dict()))).reference.pooled_spread
    with pytest.raises(ConfigError):
        Calibration.fit(st, target_fpr=0.1, slice_norm="position")


def test_fitted_detector_scores_against_its_reference(fitted_bundle, phantom_test, tmp_path):
    import shutil

    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.scoring import scan_score

    # fit's default is raw scores (the real-CT tune split's choice with the blob gate); the tiny phantom
    # bundle, fitted as the demo is (no gate), holds the reference
    assert AnomalyDetector().slice_norm == "none"
    det = AnomalyDetector.load(fitted_bundle)
    assert det.slice_norm == "area" and det.calibration_.reference is not None
    from click.testing import CliRunner

    from aeanomaly.cli import main

    assert "against normal slices of the same region size" in CliRunner().invoke(main, ["info", str(fitted_bundle)]).output
    scan = sorted((phantom_test / "abnormal").glob("*.nii.gz"))[0]
    a, r = det.analyse(scan), det.analyse(scan, normalise=False)
    np.testing.assert_allclose(a.slice_scores, det.calibration_.normalised(r.slice_scores, r.mask), equal_nan=True)
    assert np.isclose(a.scan_score, scan_score(a.slice_scores, det.scan_aggregation))
    assert np.isclose(det.score_scan(scan).scan_score, a.scan_score)
    # a bundle written before the option holds raw scores: it loads with slice_norm "none"
    old = tmp_path / "old"
    shutil.copytree(fitted_bundle, old)
    info = json.loads((old / "bundle.json").read_text())
    info["params"].pop("slice_norm")
    (old / "bundle.json").write_text(json.dumps(info))
    cal = json.loads((old / "calibration.json").read_text())
    cal.pop("slice_reference")
    (old / "calibration.json").write_text(json.dumps(cal))
    legacy = AnomalyDetector.load(old)
    assert legacy.slice_norm == "none" and legacy.calibration_.reference is None
    assert np.isclose(legacy.analyse(scan).scan_score, r.scan_score)

