"""aeanomaly.fitting: the slice store pass and the normal-statistics pass of fit."""

import numpy as np
import pytest

from aeanomaly.errors import ScanError
from aeanomaly.fitting import build_store, mixed_depth_warning, normal_stats
from aeanomaly.io import find_scans, load_scan
from aeanomaly.preprocess import HUWindow, prepare_volume
from aeanomaly.scoring import Analysis


def _prepare(scan):
    return prepare_volume(scan.hu, scan.spacing, scan.affine, is_hu=scan.is_hu, window=HUWindow.parse("lung"),
                          size=32, channels=1)


def test_build_store_skips_bad_scans_and_is_reused_on_resume(phantom_train, tmp_path):
    paths = find_scans(phantom_train / "normal")[:3]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"nope")
    paths = [*paths, bad]
    spec = {"size": 32, "channels": 1, "window": "lung"}
    with pytest.warns(UserWarning, match="skipped unreadable scan"):
        store, skipped = build_store(_prepare, paths, [0, 1, 3], {"train": [0, 1, 3]}, spec, tmp_path, 32, 1,
                                     strict=False, resume=False, verbose=0)
    assert [s["scan"] for s in skipped] == [str(bad)]
    assert sorted(set(np.asarray(store.scan_ids).tolist())) == [0, 1] and len(store) > 0
    n = len(store)
    store.close()
    again, skipped2 = build_store(_prepare, paths, [0, 1, 3], {"train": [0, 1, 3]}, spec, tmp_path, 32, 1,
                                  strict=False, resume=True, verbose=0)
    assert len(again) == n and skipped2 == skipped  # the complete store of the same split is reused
    again.close()
    with pytest.raises(ScanError):
        build_store(_prepare, paths, [3], {"train": [3]}, spec, tmp_path, 32, 1, strict=True, resume=False, verbose=0)


def test_normal_stats_gathers_scores_tails_and_peaks(phantom_train, tmp_path):
    paths = find_scans(phantom_train / "normal")[:2]

    def fake_analyse(scan):  # a stand-in scoring stage: scores from the image itself
        prep = _prepare(scan)
        img = prep.x[..., 0]
        mask = prep.body & prep.keep[:, None, None]
        s = np.where(prep.keep, img.reshape(len(img), -1).mean(axis=1), np.nan)
        return Analysis(img, img, prep.body, mask, img * mask, s, float(np.nanmax(s)), prep.spacing)

    stats, skipped = normal_stats(fake_analyse, paths, strict=False, verbose=0)
    assert len(stats) == 2 and not skipped and stats.n_pixels > 0 and stats.peaks
    assert stats.sources == [str(p) for p in paths]
    with pytest.raises(ScanError, match="no usable calibration scan"):
        normal_stats(fake_analyse, [tmp_path / "missing.nii.gz"], strict=False, verbose=0)
    # the blob gate across slices on calibration scans that mix single slices and volumes: said

    def one_slice(scan):
        a = fake_analyse(scan)
        return Analysis(*(x[:1] for x in (a.image, a.reconstruction, a.region, a.mask, a.heatmap, a.slice_scores)),
                        a.scan_score, a.spacing)

    mixed = iter([fake_analyse, one_slice])
    with pytest.warns(UserWarning, match=r"blob_gate_3d 2: 1 of 2 calibration scans have fewer than 3 slices"):
        normal_stats(lambda scan: next(mixed)(scan), paths, strict=False, verbose=0, blob_gate_3d=2.0)


def test_mixed_depth_warning_only_for_the_gate_across_slices_on_mixed_scans():
    assert mixed_depth_warning([1, 1, 120], 0.0) is None  # gate off
    assert mixed_depth_warning([120, 80], 1.0) is None and mixed_depth_warning([1, 2], 1.0) is None  # one kind
    assert "2 of 3 calibration scans" in mixed_depth_warning([1, 2, 120], 1.0)
