import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.blobness import residual_blobness, residual_blobness_3d
from aeanomaly.scoring import (ScoringParams, analyse, residual_heatmap, residual_map, scan_score, slice_scores,
                               z_smoothed_heatmap)

SPACING = (2.5, 1.0, 1.0)  # (z, y, x) mm


def test_residual_signs():
    x = np.array([0.5, 0.2, 0.9], np.float32)
    xh = np.array([0.4, 0.4, 0.9], np.float32)
    np.testing.assert_allclose(residual_map(x, xh), [0.1, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(residual_map(x, xh, "positive"), [0.1, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(residual_map(x, xh, "negative"), [0.0, 0.2, 0.0], atol=1e-6)
    with pytest.raises(ConfigError):
        residual_map(x, xh, "up")


def test_slice_scores_methods():
    r = np.zeros((3, 10, 10), np.float32)
    r[0] = 0.1
    r[1, :5] = 1.0
    mask = np.ones_like(r, bool)
    mask[2] = False
    mae = slice_scores(r, mask, "mae")
    np.testing.assert_allclose(mae[:2], [0.1, 0.5], atol=1e-6)
    assert np.isnan(mae[2])
    r2 = np.zeros((1, 10, 10), np.float32)
    r2[0, 0, 0] = 1.0  # one hot pixel: small lesion; MAE barely moves, top-k sees it
    m2 = np.ones_like(r2, bool)
    assert slice_scores(r2, m2, "topk", topk_fraction=0.01)[0] == pytest.approx(1.0)
    assert slice_scores(r2, m2, "mae")[0] == pytest.approx(0.01)
    assert slice_scores(r2, m2, "p999")[0] > slice_scores(r2, m2, "p99")[0]
    with pytest.raises(ConfigError):
        slice_scores(r, mask, "median")


def test_scan_aggregation():
    s = np.array([0.1, np.nan, 0.5, 0.3, 0.2])
    assert scan_score(s, "max") == 0.5
    assert scan_score(s, "top3") == pytest.approx((0.5 + 0.3 + 0.2) / 3)
    assert scan_score(s, "mean") == pytest.approx(0.275)
    assert np.isnan(scan_score(np.array([np.nan]), "max"))
    with pytest.raises(ConfigError):
        scan_score(s, "median")


def _blob_and_spot(n_z: int = 9) -> np.ndarray:
    """A 3x3 blob of height 1 on slices 2..6 (a lesion seen on five slices) and a spot of height 1 on
    slice 4 only (a vessel cut across), on a zero background."""
    h = np.zeros((n_z, 20, 20), np.float32)
    h[2:7, 4:7, 4:7] = 1.0
    h[4, 14:17, 14:17] = 1.0
    return h


def test_z_smoothing_keeps_a_lesion_that_persists_and_lowers_a_one_slice_spot():
    h = _blob_and_spot()
    m = np.ones(h.shape, bool)
    out = z_smoothed_heatmap(h, m, 2.5, SPACING)  # σ = one slice
    assert out.dtype == np.float32 and out.shape == h.shape
    assert out[4, 5, 5] > 0.9  # mid-lesion: its neighbours agree
    w = np.exp(-0.5 * np.arange(-4, 5) ** 2)
    assert out[4, 15, 15] == pytest.approx(1.0 / w.sum(), rel=1e-3)  # 0.40: the spot's weight among its slices
    assert out[4, 5, 5] > 2 * out[4, 15, 15]
    assert (out[0] >= 0).all() and out[0, 15, 15] < 0.01  # the spot hardly reaches four slices away
    # only moved along z: nothing reaches the next column; the sum along z is kept up to the
    # volume's ends, where fewer slices share the weight
    assert out[:, 15, 13].max() == 0 and out[:, 15, 15].sum() == pytest.approx(1.0, rel=1e-2)
    np.testing.assert_array_equal(z_smoothed_heatmap(h, m, 0.0, SPACING), h)  # σ 0: as it was
    assert z_smoothed_heatmap(h[:1], m[:1], 5.0, SPACING).tolist() == h[:1].tolist()  # one slice: as it was
    # σ is in mm: 5 mm on 5 mm slices is what 2.5 mm is on 2.5 mm slices
    np.testing.assert_allclose(z_smoothed_heatmap(h, m, 5.0, (5.0, 1.0, 1.0)), out, atol=1e-6)
    assert h[4, 15, 15] == 1.0  # the input is not modified


def test_z_smoothing_is_normalised_by_the_mask():
    h = np.full((6, 8, 8), 0.3, np.float32)
    m = np.ones(h.shape, bool)
    m[0] = m[5] = False  # slices not scored (above and below the lungs)
    m[2, :4] = False  # part of a slice outside the region
    h[~m] = 50.0  # whatever lies outside never bleeds in
    out = z_smoothed_heatmap(h, m, 5.0, SPACING)
    assert np.all(out[~m] == 0)
    np.testing.assert_allclose(out[m], 0.3, atol=1e-6)  # a flat map stays flat up to the mask's ends
    with pytest.raises(ConfigError, match="sigma_z_mm"):
        z_smoothed_heatmap(h, m, -1.0, SPACING)
    with pytest.raises(ConfigError, match="mask shape"):
        z_smoothed_heatmap(h, m[:5], 2.5, SPACING)


def test_analyse_scores_slices_from_the_heatmap_smoothed_across_slices():
    rng = np.random.default_rng(3)
    image = rng.uniform(0.0, 0.05, (9, 20, 20)).astype(np.float32)
    recon = np.zeros_like(image)
    image += _blob_and_spot()  # the blob and the spot as positive residuals
    region = np.ones(image.shape, bool)
    keep = np.ones(9, bool)
    plain = dict(sigma_mm=0.0, erode_mm=0.0, blob_gate=0.0)  # the residual as it is: smoothing across z alone
    flat = analyse(image, recon, region, keep, SPACING, ScoringParams(**plain, slice_score="p999"), "positive")
    z = analyse(image, recon, region, keep, SPACING, ScoringParams(**plain, sigma_z_mm=2.5, slice_score="p999"),
                "positive")
    # without smoothing across slices slice 4 (blob and spot) and slice 2 (blob) score alike; with it the
    # spot's slice loses nothing it needs, the blob's edge slice falls, the scores follow the heatmap
    np.testing.assert_allclose(z.heatmap, z_smoothed_heatmap(flat.heatmap, flat.mask, 2.5, SPACING), atol=1e-6)
    np.testing.assert_allclose(z.slice_scores, slice_scores(z.heatmap, z.mask, "p999"))
    assert abs(flat.slice_scores[4] - flat.slice_scores[2]) < 0.06 and z.slice_scores[4] > z.slice_scores[2] + 0.1
    assert z.scan_score == pytest.approx(scan_score(z.slice_scores, "top3"))
    # "mae" stays the mean raw residual; the heatmap is still smoothed across slices
    zm = analyse(image, recon, region, keep, SPACING, ScoringParams(**plain, sigma_z_mm=2.5, slice_score="mae"),
                 "positive")
    np.testing.assert_allclose(zm.slice_scores, slice_scores(image, zm.mask, "mae"), rtol=1e-6)
    np.testing.assert_allclose(zm.heatmap, z.heatmap)
    # in-plane smoothing first, then across slices
    both = analyse(image, recon, region, keep, SPACING,
                   ScoringParams(sigma_mm=2.0, sigma_z_mm=2.5, erode_mm=0.0, blob_gate=0.0), "positive")
    inplane = residual_heatmap(image, mask=both.mask, sigma_mm=2.0, spacing=SPACING)
    np.testing.assert_allclose(both.heatmap, z_smoothed_heatmap(inplane, both.mask, 2.5, SPACING), atol=1e-6)
    with pytest.raises(ConfigError, match="sigma_z_mm"):
        ScoringParams(sigma_z_mm=-2.0).validated()



def test_blob_gate_weights_the_residual_before_smoothing(blob_tube_edge):
    r = blob_tube_edge()
    image, recon = r, np.zeros_like(r)
    region, keep = np.ones(r.shape, bool), np.ones(1, bool)
    plain = analyse(image, recon, region, keep, SPACING, ScoringParams(sigma_mm=0.0, erode_mm=0.0, blob_gate=0.0),
                    "positive")
    gated = analyse(image, recon, region, keep, SPACING, ScoringParams(sigma_mm=0.0, erode_mm=0.0, blob_gate=2.0),
                    "positive")
    expect = r * residual_blobness(r, plain.mask, SPACING) ** 2
    np.testing.assert_allclose(gated.heatmap, expect, atol=1e-6)
    assert gated.heatmap[0, 20, 20] > 0.9 * plain.heatmap[0, 20, 20]  # the blob keeps its height
    assert gated.heatmap[0, 45, 35] < 0.01 and gated.heatmap[0, 30:60, 82:94].max() < 0.01  # tube and edge do not
    # with σ the gated residual is what is smoothed
    both = analyse(image, recon, region, keep, SPACING, ScoringParams(sigma_mm=2.0, erode_mm=0.0, blob_gate=1.0),
                   "positive")
    np.testing.assert_allclose(both.heatmap, residual_heatmap(r * residual_blobness(r, both.mask, SPACING), mask=both.mask,
                                                              sigma_mm=2.0, spacing=SPACING), atol=1e-6)
    with pytest.raises(ConfigError, match="blob_gate"):
        ScoringParams(blob_gate=-1.0).validated()



def test_blob_gate_3d_weights_volumes_and_leaves_single_slices_to_the_in_plane_gate(ball_and_tubes):
    r = ball_and_tubes()
    image, recon = r, np.zeros_like(r)
    region, keep = np.ones(r.shape, bool), np.ones(len(r), bool)
    params = dict(sigma_mm=0.0, erode_mm=0.0, blob_gate=1.0)
    plain = analyse(image, recon, region, keep, SPACING, ScoringParams(**params), "positive")
    both = analyse(image, recon, region, keep, SPACING, ScoringParams(**params, blob_gate_3d=2.0), "positive")
    expect = r * residual_blobness(r, plain.mask, SPACING) * residual_blobness_3d(r, plain.mask, SPACING) ** 2
    np.testing.assert_allclose(both.heatmap, expect, atol=1e-6)
    assert both.heatmap[12, 12, 12] > 0.8 * plain.heatmap[12, 12, 12]  # the ball keeps its height
    assert plain.heatmap[12, 36, 12] > 0.25 and both.heatmap[12, 36, 12] < 0.01  # the vessel cut across does not
    np.testing.assert_allclose(both.slice_scores, [float(np.quantile(h, 0.99)) for h in expect], rtol=1e-5)
    # with σ and smoothing across slices: the weighted residual is what is smoothed, scored after the pass across z
    smooth = ScoringParams(sigma_mm=2.0, sigma_z_mm=2.5, erode_mm=0.0, blob_gate=1.0, blob_gate_3d=1.0, slice_score="topk")
    z = analyse(image, recon, region, keep, SPACING, smooth, "positive")
    heat = z_smoothed_heatmap(residual_heatmap(r * residual_blobness(r, plain.mask, SPACING)
                                               * residual_blobness_3d(r, plain.mask, SPACING), mask=plain.mask,
                                               sigma_mm=2.0, spacing=SPACING), plain.mask, 2.5, SPACING)
    np.testing.assert_allclose(z.heatmap, heat, atol=1e-6)
    np.testing.assert_allclose(z.slice_scores, slice_scores(heat, plain.mask, "topk"), rtol=1e-5)
    # fewer than MIN_BLOB_SLICES_3D slices: the in-plane gate alone
    two = analyse(image[11:13], recon[11:13], region[11:13], keep[11:13], SPACING,
                  ScoringParams(**params, blob_gate_3d=2.0), "positive")
    np.testing.assert_allclose(two.heatmap, r[11:13] * residual_blobness(r[11:13], None, SPACING), atol=1e-6)
    with pytest.raises(ConfigError, match="blob_gate_3d"):
        ScoringParams(blob_gate_3d=-1.0).validated()


@pytest.mark.parametrize("blob_gate, sigma_z_mm", [(2.0, 0.0), (0.0, 0.0), (2.0, 2.5)])
def test_analyse_in_the_masks_box_equals_the_whole_slices(blob_gate, sigma_z_mm):
    """analyse computes the gate and the heatmap of each chunk inside the box of its mask (widened by the
    gate's reach) only: the heatmap and slice scores are exactly those of the whole slices, for a region
    in the middle of the slice, one against the image border, slices with no region, and a chunk with no
    region at all; p99 and mae."""
    from aeanomaly.masks import disk_erode

    rng = np.random.default_rng(11)
    z, n = 40, 64
    image = rng.gamma(2.0, 0.05, (z, n, n)).astype(np.float32)
    recon = (image * rng.uniform(0.7, 1.0, image.shape)).astype(np.float32)
    yy, xx = np.mgrid[:n, :n]
    region = np.zeros((z, n, n), bool)
    region[3:12] = np.hypot(yy - 30, xx - 34) < 12  # in the middle
    region[14:20] = (yy > 40) & (xx < 25)  # against the lower and left borders
    region[20] = np.hypot(yy - 10, xx - 50) < 4  # small, near the upper border
    keep = np.ones(z, bool)
    keep[5] = False  # a slice not scored (slices 21-39 have no region: a chunk of its own)
    sp = (2.5, 1.6, 1.6)
    for score in ("p99", "mae"):
        params = ScoringParams(sigma_mm=6.0, erode_mm=3.0, blob_gate=blob_gate, sigma_z_mm=sigma_z_mm,
                               slice_score=score)
        got = analyse(image, recon, region, keep, sp, params, "positive")
        r = residual_map(image, recon, "positive")
        m = disk_erode(region, 2) & keep[:, None, None]
        gated = r * residual_blobness(r, m, sp) ** np.float32(blob_gate) if blob_gate else r
        heat = residual_heatmap(gated, mask=m, sigma_mm=6.0, spacing=sp)
        if sigma_z_mm:
            heat = z_smoothed_heatmap(heat, m, sigma_z_mm, sp)
        np.testing.assert_array_equal(got.mask, m)
        np.testing.assert_array_equal(got.heatmap, heat)
        np.testing.assert_array_equal(got.slice_scores, slice_scores(gated if score == "mae" else heat, m, score))
        assert np.isnan(got.slice_scores[21:]).all() and np.isfinite(got.slice_scores[[3, 14, 20]]).all()
