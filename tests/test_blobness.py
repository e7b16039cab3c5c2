import numpy as np
import pytest

from aeanomaly.blobness import inplane_hessian_eigenvalues, residual_blobness, residual_blobness_3d, symmetric_eigenvalues_3x3

SPACING = (2.5, 1.0, 1.0)  # (z, y, x) mm


def test_inplane_hessian_eigenvalues_of_a_quadratic():
    yy, xx = np.mgrid[-40:41, -40:41].astype(np.float32)
    vol = np.stack([-(0.01 * yy**2 + 0.002 * xx**2), 0.003 * (yy**2 - xx**2)]).astype(np.float32)
    small, big = inplane_hessian_eigenvalues(vol, (2.0, 3.0))
    assert small.shape == big.shape == vol.shape and (small <= big).all()
    # away from the edges a quadratic's Hessian: -0.02 and -0.004, then a saddle ±0.006 (up to the truncated
    # kernels' 0.4 %)
    assert small[0, 40, 40] == pytest.approx(-0.02, rel=1e-2) and big[0, 40, 40] == pytest.approx(-0.004, rel=1e-2)
    assert small[1, 40, 40] == pytest.approx(-0.006, rel=1e-2) and big[1, 40, 40] == pytest.approx(0.006, rel=1e-2)


def test_residual_blobness_keeps_blobs_and_drops_tubes_and_edges(blob_tube_edge):
    r = blob_tube_edge()
    b = residual_blobness(r, spacing=SPACING)
    assert b.dtype == np.float32 and b.shape == r.shape and b.min() >= 0 and b.max() <= 1
    assert b[0, 20, 20] > 0.95  # a round blob
    assert b[0, 45, 35] < 0.05  # mid-tube: curved across, flat along
    assert b[0, 30:60, 82:94].max() < 0.05  # inside the edge's plateau and along it
    # σ in mm: the same shapes on pixels half the size give the same answer
    r2 = np.kron(r[0], np.ones((2, 2), np.float32))[None]
    b2 = residual_blobness(r2, spacing=(2.5, 0.5, 0.5))
    assert b2[0, 40, 40] > 0.95 and b2[0, 90, 70] < 0.05
    # outside the mask counts as 0: a blob there is not seen, one inside is unchanged
    m = np.ones(r.shape, bool)
    m[0, :32, :40] = False
    bm = residual_blobness(r, m, SPACING)
    assert bm[0, 20, 20] == 0 or bm[0, 20, 20] < b[0, 20, 20]
    np.testing.assert_allclose(bm[0, 42:49, 35:55], b[0, 42:49, 35:55], atol=0.01)  # the tube, far from the cut
    assert residual_blobness(r[0], spacing=SPACING).shape == r.shape[1:]  # one (y, x) slice
    assert r[0, 20, 20] == pytest.approx(1.0, abs=1e-3)  # the input is not modified


def test_symmetric_eigenvalues_3x3_match_lapack():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3, 3))
    a = a + a.transpose(0, 2, 1)
    a[:3] = np.diag([2.0, 2.0, 2.0])  # a multiple of the identity (all three equal) and repeated ones
    a[3:6] = np.diag([-1.0, 3.0, 3.0])
    lam = symmetric_eigenvalues_3x3(a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], a[:, 0, 1], a[:, 0, 2], a[:, 1, 2])
    np.testing.assert_allclose(np.stack(lam, axis=1), np.linalg.eigvalsh(a), atol=1e-9)



def test_residual_blobness_3d_keeps_a_ball_and_drops_a_vessel_cut_across(ball_and_tubes):
    r = ball_and_tubes()
    k = 12  # the middle slice
    b3 = residual_blobness_3d(r, spacing=SPACING)
    b2 = residual_blobness(r, spacing=SPACING)
    assert b3.dtype == np.float32 and b3.shape == r.shape and b3.min() >= 0 and b3.max() <= 1
    assert b3[k, 12, 12] > 0.9 and b2[k, 12, 12] > 0.9  # the ball: a blob either way
    assert b2[k, 36, 12] > 0.9 and b3[k, 36, 12] < 0.05  # the vessel along z: round on its slice, a tube in 3-D
    assert b2[k, 36, 56] < 0.05 and b3[k, 36, 56] < 0.05  # the vessel in the slice: a tube either way
    # the Hessian is in mm: the same shapes on slices twice as thick give the same answer
    thick = ball_and_tubes((5.0, 1.0, 1.0), (12, 48, 72))
    b3t = residual_blobness_3d(thick, spacing=(5.0, 1.0, 1.0))
    assert b3t[6, 12, 12] > 0.9 and b3t[6, 36, 12] < 0.05
    # a mask: computed on its box only, the same values inside it as on the whole (zeroed) volume, 0 outside
    m = np.zeros(r.shape, bool)
    m[4:20, 4:30, 4:44] = True
    whole = residual_blobness_3d(np.where(m, r, 0), spacing=SPACING)
    boxed = residual_blobness_3d(r, m, SPACING)
    np.testing.assert_allclose(boxed[m], whole[m], atol=1e-6)
    assert not boxed[~m].any()
    assert not residual_blobness_3d(r, np.zeros(r.shape, bool), SPACING).any()
    with pytest.raises(ValueError, match="volume"):
        residual_blobness_3d(r[0], spacing=SPACING)


def test_gates_across_slices_from_min_blob_slices_3d():
    from aeanomaly.blobness import MIN_BLOB_SLICES_3D, gates_across_slices

    assert not gates_across_slices(1) and not gates_across_slices(MIN_BLOB_SLICES_3D - 1)
    assert gates_across_slices(MIN_BLOB_SLICES_3D) and gates_across_slices(300)
