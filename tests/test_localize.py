"""Tests of aeanomaly.localize (and the heatmap it starts from, aeanomaly.scoring.residual_heatmap) on
small synthetic residual volumes with analytically known lesions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from aeanomaly.errors import ConfigError
from aeanomaly.io.scan import internal_affine
from aeanomaly.localize import LESION_FIELDS, Lesion, find_lesions, slice_peaks
from aeanomaly.scoring import residual_heatmap

SPACING = (3.0, 0.8, 0.5)  # (z, y, x) mm: anisotropic in-plane on purpose
ORIGIN = (12.0, -30.0, 45.0)
SHAPE = (5, 64, 128)
SIGMA_MM = 2.0
NOISE = 0.02  # uniform [0, NOISE) background residual
THRESHOLD = 0.25
# Blob 1: Gaussian (amplitude 1, sigma 3 mm) on slices 1..3; blob 2: amplitude 0.8, sigma 2.5 mm, slice 2 only.
BLOB1 = dict(zs=(1, 2, 3), y=20, x=40, amp=1.0, s=3.0)
BLOB2 = dict(zs=(2,), y=40, x=96, amp=0.8, s=2.5)


def _blob_plane(y0: int, x0: int, amp: float, s: float) -> np.ndarray:
    yy = (np.arange(SHAPE[1]) - y0)[:, None] * SPACING[1]
    xx = (np.arange(SHAPE[2]) - x0)[None, :] * SPACING[2]
    return amp * np.exp(-(yy**2 + xx**2) / (2 * s * s))


def _residual(rng: np.random.Generator) -> np.ndarray:
    res = rng.uniform(0.0, NOISE, SHAPE).astype(np.float32)
    for b in (BLOB1, BLOB2):
        plane = _blob_plane(b["y"], b["x"], b["amp"], b["s"]).astype(np.float32)
        for z in b["zs"]:
            res[z] += plane
    return res


def _analytic_area_mm2(amp: float, s: float) -> float:
    """Area above THRESHOLD of a 2-D Gaussian blob after Gaussian smoothing, on the noise floor."""
    s2 = s * s + SIGMA_MM**2
    peak = amp * s * s / s2
    return 2 * np.pi * s2 * np.log(peak / (THRESHOLD - NOISE / 2))


@pytest.fixture
def residual(rng) -> np.ndarray:
    return _residual(rng)


def test_heatmap_peaks_where_the_blobs_are(residual):
    hm = residual_heatmap(residual, sigma_mm=SIGMA_MM, spacing=SPACING)
    assert hm.dtype == np.float32 and hm.shape == SHAPE
    for z in (1, 3):
        assert np.unravel_index(np.argmax(hm[z]), hm[z].shape) == (BLOB1["y"], BLOB1["x"])
    # on slice 2 both blobs: the stronger one wins, the weaker is a local maximum at its centre
    assert np.unravel_index(np.argmax(hm[2]), hm[2].shape) == (BLOB1["y"], BLOB1["x"])
    win = hm[2, BLOB2["y"] - 5 : BLOB2["y"] + 6, BLOB2["x"] - 5 : BLOB2["x"] + 6]
    assert np.unravel_index(np.argmax(win), win.shape) == (5, 5)
    # smoothed peak height matches the analytic convolution of two Gaussians (plus the noise floor)
    s2 = BLOB1["s"] ** 2 + SIGMA_MM**2
    assert hm[1, BLOB1["y"], BLOB1["x"]] == pytest.approx(BLOB1["s"] ** 2 / s2 + NOISE / 2, abs=0.02)
    # slices without a blob stay at the noise floor
    assert hm[0].max() < NOISE and hm[4].max() < NOISE
    peaks = slice_peaks(hm)
    assert peaks.shape == (5,) and np.allclose(peaks, hm.max(axis=(1, 2)))


def test_heatmap_smooths_in_plane_only_with_sigma_in_mm():
    res = np.zeros((3, 41, 61), dtype=np.float32)
    res[1, 20, 30] = 1.0
    hm = residual_heatmap(res, sigma_mm=2.0, spacing=SPACING)
    assert np.all(hm[0] == 0) and np.all(hm[2] == 0)  # nothing across z
    assert hm[1].sum() == pytest.approx(1.0, rel=1e-4)  # mass conserved away from the edges
    yy, xx = np.mgrid[:41, :61]
    var_y = (hm[1] * (yy - 20) ** 2).sum() / hm[1].sum()
    var_x = (hm[1] * (xx - 30) ** 2).sum() / hm[1].sum()
    assert np.sqrt(var_y) == pytest.approx(2.0 / SPACING[1], rel=0.05)  # 2.5 px
    assert np.sqrt(var_x) == pytest.approx(2.0 / SPACING[2], rel=0.05)  # 4 px
    # sigma 0: the residual comes back unchanged (as float32)
    assert np.array_equal(residual_heatmap(res, sigma_mm=0.0, spacing=SPACING), res)


def test_heatmap_mask_no_bleed_and_no_edge_darkening():
    res = np.full((2, 40, 40), 0.1, dtype=np.float32)
    mask = np.zeros(res.shape, dtype=bool)
    mask[:, 10:30, 8:25] = True
    res[~mask] = 10.0  # huge residual outside the body
    for median_px in (0, 1):
        hm = residual_heatmap(res, mask=mask, sigma_mm=2.0, spacing=SPACING, median_px=median_px)
        assert np.all(hm[~mask] == 0)
        assert np.allclose(hm[mask], 0.1, atol=1e-5)  # flat inside, up to the very edge
    # a plain masked Gaussian would darken the edge: the check above can fail
    naive = ndimage.gaussian_filter(np.where(mask, res, 0), (0, 2.5, 4.0), mode="constant")
    assert naive[0, 10, 8] < 0.05
    # nothing is found where only the outside-mask residual is large
    hm = residual_heatmap(res, mask=mask, sigma_mm=2.0, spacing=SPACING)
    recs, labels = find_lesions(hm, 0.5, SPACING, internal_affine(SPACING), min_size_mm2=0.0)
    assert recs == [] and not labels.any()


def test_heatmap_median_removes_speckle():
    res = np.zeros((1, 30, 30), dtype=np.float32)
    res[0, 5, 5] = res[0, 20, 12] = 1.0  # isolated hot pixels
    res[0, 10:16, 10:16] = 0.5  # a real 6×6 patch survives
    hm = residual_heatmap(res, sigma_mm=0.0, spacing=SPACING, median_px=1)
    assert hm[0, 5, 5] == 0 and hm[0, 20, 12] == 0
    assert np.all(hm[0, 11:15, 11:15] == 0.5)


def test_heatmap_accepts_one_slice_and_rejects_bad_input():
    res2d = np.random.default_rng(1).random((20, 24)).astype(np.float32)
    assert residual_heatmap(res2d, spacing=SPACING).shape == (20, 24)
    with pytest.raises(ConfigError, match="spacing"):
        residual_heatmap(res2d, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="mask shape"):
        residual_heatmap(res2d, mask=np.ones((20, 23), bool), spacing=SPACING)
    bad = res2d.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        residual_heatmap(bad, spacing=SPACING)
    with pytest.raises(ConfigError, match="median_px"):
        residual_heatmap(res2d, spacing=SPACING, median_px=-1)


def test_find_lesions_two_blobs(residual):
    aff = internal_affine(SPACING, ORIGIN)
    hm = residual_heatmap(residual, sigma_mm=SIGMA_MM, spacing=SPACING)
    recs, labels = find_lesions(hm, THRESHOLD, SPACING, aff)
    assert len(recs) == 2
    assert [r["id"] for r in recs] == [1, 2]
    assert all(tuple(r) == LESION_FIELDS for r in recs)  # read like a dict, in table order
    assert all(isinstance(r, Lesion) and r.to_dict() == dict(r) for r in recs)
    named = recs[0].with_(organ="lung")
    assert named["organ"] == "lung" and "organ" not in recs[0] and named.id == recs[0].id
    big, small = recs  # sorted by decreasing peak
    assert big["max_residual"] > small["max_residual"]
    assert (big["slice_start"], big["slice_end"]) == (1, 3)
    assert (small["slice_start"], small["slice_end"]) == (2, 2)
    # voxel centroids (z, y, x) at the blob centres
    assert big["centroid_zyx"] == pytest.approx((2.0, BLOB1["y"], BLOB1["x"]), abs=0.1)
    assert small["centroid_zyx"] == pytest.approx((2.0, BLOB2["y"], BLOB2["x"]), abs=0.1)
    # RAS through the affine with index order (x, y, z): LPS grid -> R = -x*sx, A = -y*sy, S = z*sz
    expected_ras = (ORIGIN[0] - BLOB2["x"] * SPACING[2], ORIGIN[1] - BLOB2["y"] * SPACING[1], ORIGIN[2] + 2 * SPACING[0])
    assert small["centroid_ras_mm"] == pytest.approx(expected_ras, abs=0.1)
    # areas in mm² against the analytic cross-section (anisotropic pixels of 0.4 mm²)
    a1, a2 = _analytic_area_mm2(BLOB1["amp"], BLOB1["s"]), _analytic_area_mm2(BLOB2["amp"], BLOB2["s"])
    assert big["area_mm2"] == pytest.approx(a1, rel=0.1)
    assert small["area_mm2"] == pytest.approx(a2, rel=0.1)
    assert big["equivalent_diameter_mm"] == pytest.approx(2 * np.sqrt(big["area_mm2"] / np.pi))
    # volume: the same blob (up to the noise) on its 3 slices
    assert big["volume_mm3"] == pytest.approx(3 * big["area_mm2"] * SPACING[0], rel=0.03)
    per_slice_px = [np.count_nonzero(labels[z] == 1) for z in range(SHAPE[0])]
    assert per_slice_px[0] == per_slice_px[4] == 0
    assert big["area_mm2"] == pytest.approx(max(per_slice_px) * SPACING[1] * SPACING[2])
    assert big["volume_mm3"] == pytest.approx(sum(per_slice_px) * np.prod(SPACING))
    assert big["n_voxels"] * np.prod(SPACING) == pytest.approx(big["volume_mm3"])
    # label volume renumbered to the ids, consistent with the records
    assert labels.dtype == np.int32 and labels.shape == SHAPE
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.count_nonzero(labels == 1) == big["n_voxels"]
    assert labels[2, BLOB2["y"], BLOB2["x"]] == 2
    assert hm[labels == 1].max() == pytest.approx(big["max_residual"])
    assert hm[labels == 2].mean() == pytest.approx(small["mean_residual"])
    assert big["p_value"] is None and big["severity"] == "unknown"


def test_find_lesions_per_slice_components():
    hm = np.zeros((3, 20, 20))
    hm[:, 5:12, 5:12] = 1.0
    hm[1, 12:16, 12:16] = 0.8  # touches the first block diagonally, in-plane
    recs, labels = find_lesions(hm, 0.5, (1, 1, 1), np.eye(4), min_size_mm2=0.0, opening_px=0)
    assert len(recs) == 1 and recs[0]["volume_mm3"] == 3 * 49 + 16
    recs, labels = find_lesions(hm, 0.5, (1, 1, 1), np.eye(4), min_size_mm2=0.0, opening_px=0, connectivity3d=False)
    assert len(recs) == 3 and all(r["slice_start"] == r["slice_end"] for r in recs)
    assert sorted(r["slice_start"] for r in recs) == [0, 1, 2]


def test_find_lesions_small_components_and_opening():
    hm = np.zeros((2, 30, 30))
    hm[0, 3:6, 3:6] = 1.0  # 9 px × 0.4 mm² = 3.6 mm²
    hm[0, 15:22, 15:22] = 0.9  # 49 px = 19.6 mm²
    hm[1, 25, 2:28] = 0.95  # a one-pixel-wide line: 26 px = 10.4 mm²
    recs, _ = find_lesions(hm, 0.5, SPACING, np.eye(4), min_size_mm2=10.0, opening_px=0)
    assert sorted(r["area_mm2"] for r in recs) == pytest.approx([10.4, 19.6])
    recs, _ = find_lesions(hm, 0.5, SPACING, np.eye(4), min_size_mm2=10.0, opening_px=1)
    assert [r["area_mm2"] for r in recs] == pytest.approx([18.0])  # line opened away, square loses 4 corners
    recs, _ = find_lesions(hm, 0.5, SPACING, np.eye(4), min_size_mm2=1.0, opening_px=0)
    assert len(recs) == 3 and recs[0]["area_mm2"] == pytest.approx(3.6)  # highest peak first
    recs, _ = find_lesions(hm, 0.5, SPACING, np.eye(4), min_size_mm2=1.0, min_volume_mm3=40.0, opening_px=0)
    assert [r["volume_mm3"] for r in recs] == pytest.approx([58.8])
    recs, labels = find_lesions(hm, 2.0, SPACING, np.eye(4))
    assert recs == [] and labels.shape == hm.shape and not labels.any()


def test_find_lesions_p_values_and_severity():
    hm = np.zeros((1, 40, 40))
    hm[0, 2:8, 2:8] = 0.9975
    hm[0, 12:18, 12:18] = 0.9725
    hm[0, 22:28, 22:28] = 0.5025
    hm[0, 32:38, 32:38] = 0.9  # ties with a normal peak count as ≥
    normal_peaks = np.arange(1, 200) / 200.0  # 0.005 .. 0.995, n = 199
    recs, _ = find_lesions(hm, 0.1, (1, 1, 1), np.eye(4), min_size_mm2=1.0, normal_peaks=normal_peaks)
    got = [(r["max_residual"], r["p_value"], r["severity"]) for r in recs]
    assert got == [
        (0.9975, pytest.approx(1 / 200), "high"),
        (0.9725, pytest.approx(6 / 200), "moderate"),
        (0.9, pytest.approx(21 / 200), "low"),
        (0.5025, pytest.approx(100 / 200), "low"),
    ]
    with pytest.raises(ConfigError, match="normal_peaks"):
        find_lesions(hm, 0.1, (1, 1, 1), np.eye(4), normal_peaks=np.array([]))


def test_find_lesions_rotated_affine_and_2d_input():
    hm = np.zeros((30, 30))
    hm[10:15, 20:27] = 1.0  # centre (y, x) = (12, 23)
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.array([[0.7 * c, -0.9 * s, 0, 5.0], [0.7 * s, 0.9 * c, 0, -2.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
    recs, labels = find_lesions(hm, 0.5, (2.5, 0.9, 0.7), aff, min_size_mm2=1.0, opening_px=0)
    assert labels.shape == (30, 30) and labels[12, 23] == 1
    assert recs[0]["centroid_zyx"] == pytest.approx((0.0, 12.0, 23.0))
    assert recs[0]["centroid_ras_mm"] == pytest.approx(tuple((aff @ [23.0, 12.0, 0.0, 1.0])[:3]))
    assert recs[0]["area_mm2"] == pytest.approx(35 * 0.9 * 0.7)
    with pytest.raises(ConfigError, match="affine"):
        find_lesions(hm, 0.5, (1, 1, 1), np.eye(3))


def test_inputs_are_not_mutated(residual):
    mask = np.ones(SHAPE, dtype=bool)
    mask[:, :, :5] = False
    res0, mask0 = residual.copy(), mask.copy()
    hm = residual_heatmap(residual, mask=mask, sigma_mm=SIGMA_MM, spacing=SPACING, median_px=1)
    assert np.array_equal(residual, res0) and np.array_equal(mask, mask0)
    hm0 = hm.copy()
    peaks = np.array([0.1, 0.2, 0.3])
    peaks0 = peaks.copy()
    slice_peaks(hm)
    find_lesions(hm, THRESHOLD, SPACING, internal_affine(SPACING), normal_peaks=peaks)
    assert np.array_equal(hm, hm0) and np.array_equal(mask, mask0) and np.array_equal(peaks, peaks0)
    same = residual_heatmap(residual, sigma_mm=0.0, spacing=SPACING)
    assert not np.shares_memory(same, residual)


def test_find_lesions_float32_heatmap_as_float64(residual):
    """A float32 heatmap is labelled without a float64 copy of the volume: the same lesions and
    statistics (within float32 rounding of the voxel values) as the float64 heatmap it came from."""
    aff = internal_affine(SPACING, ORIGIN)
    hm32 = residual_heatmap(residual, sigma_mm=SIGMA_MM, spacing=SPACING).astype(np.float32)
    peaks = np.linspace(0.0, float(hm32.max()), 20)
    a, la = find_lesions(hm32, THRESHOLD, SPACING, aff, opening_px=1, normal_peaks=peaks)
    b, lb = find_lesions(hm32.astype(np.float64), THRESHOLD, SPACING, aff, opening_px=1, normal_peaks=peaks)
    np.testing.assert_array_equal(la, lb)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in LESION_FIELDS:
            if isinstance(ra[key], float):
                assert ra[key] == pytest.approx(rb[key], rel=1e-6)
            else:
                assert ra[key] == rb[key]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_find_lesions_matches_labelling_the_whole_volume(seed):
    """Only the box holding the lesion voxels is labelled: the components, their statistics and the
    label volume are those of labelling the whole volume, with components on every face of the volume."""
    rng = np.random.default_rng(seed)
    hm = np.zeros((9, 40, 50), np.float32)
    for z, y, x in [(0, 0, 0), (8, 39, 49), (4, 20, 0), (3, 0, 30), (6, 25, 49)] + [
            tuple(rng.integers((0, 0, 0), hm.shape)) for _ in range(6)]:
        hm[max(z - 1, 0): z + 2, max(y - 3, 0): y + 4, max(x - 3, 0): x + 4] += rng.uniform(1.0, 3.0)
    spacing = (2.0, 0.7, 0.7)
    recs, labels = find_lesions(hm, 0.5, spacing, np.eye(4), min_size_mm2=0.0, opening_px=0)
    ref, n = ndimage.label(hm > 0.5, structure=np.ones((3, 3, 3), bool))
    assert len(recs) == n > 5
    for r in recs:
        comp = ref[labels == r["id"]]
        k = int(comp[0])
        assert (comp == k).all() and comp.size == np.count_nonzero(ref == k) == r["n_voxels"]
        zs = np.nonzero(ref == k)[0]
        assert (r["slice_start"], r["slice_end"]) == (zs.min(), zs.max())
        assert r["max_residual"] == pytest.approx(float(hm[ref == k].max()))
    assert ((labels > 0) == (ref > 0)).all()
    empty, lab0 = find_lesions(np.zeros((3, 8, 8)), 0.5, spacing, np.eye(4))
    assert empty == [] and lab0.shape == (3, 8, 8) and not lab0.any()
