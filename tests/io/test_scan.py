"""aeanomaly.io.scan: the Scan container and the internal (z, y, x) LPS orientation convention."""

from __future__ import annotations

import numpy as np
import pytest

from aeanomaly.io.scan import (INTERNAL_AXCODES, Scan, internal_affine, reorient_to_internal,
                               spacing_from_affine, to_input_geometry)


def _random_affine(rng, spacing_xyz, oblique_deg=0.0):
    """A NIfTI affine: a random permutation of the axes with random flips, voxel sizes, a small
    rotation and an origin."""
    perm = np.eye(3)[:, rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
    a = np.radians(oblique_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ perm @ np.diag(spacing_xyz)
    aff[:3, 3] = rng.uniform(-200, 200, 3)
    return aff


def test_scan_properties():
    hu = np.zeros((3, 5, 7), np.float32)
    s = Scan(hu, (2.0, 1.0, 1.0), internal_affine((2.0, 1.0, 1.0)), "a.nii")
    assert s.shape == (3, 5, 7) and all(isinstance(v, int) for v in s.shape)
    assert s.n_slices == 3 and s.is_hu and s.meta == {}
    assert not Scan(hu, (1, 1, 1), np.eye(4), meta={"hu": False}).is_hu
    assert Scan(hu, (1, 1, 1), np.eye(4)).meta is not s.meta  # a fresh dict per scan


def test_internal_affine_is_lps_with_the_spacing_and_origin():
    aff = internal_affine((3.0, 0.8, 0.7), origin_ras=(10.0, -20.0, 5.0))
    np.testing.assert_allclose(aff, [[-0.7, 0, 0, 10], [0, -0.8, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    # voxel (x, y, z) = (1, 2, 3): 1 voxel left (RAS -x), 2 posterior (RAS -y), 3 superior
    np.testing.assert_allclose(aff @ [1, 2, 3, 1], [10 - 0.7, -20 - 1.6, 5 + 9.0, 1])
    assert spacing_from_affine(aff) == pytest.approx((3.0, 0.8, 0.7))
    import nibabel as nib

    assert nib.aff2axcodes(aff) == INTERNAL_AXCODES


@pytest.mark.parametrize("seed", range(6))
def test_spacing_from_affine_ignores_rotation_and_flips(seed):
    rng = np.random.default_rng(seed)
    sp = rng.uniform(0.5, 5.0, 3)
    aff = _random_affine(rng, sp, oblique_deg=rng.uniform(-20, 20))
    # the affine's columns are the file's (i, j, k) axes: spacing comes back as (k, j, i)
    assert spacing_from_affine(aff) == pytest.approx(tuple(sp[::-1]))


@pytest.mark.parametrize("seed", range(8))
def test_reorient_keeps_every_voxel_in_its_place_and_round_trips(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(2, 7, 3))
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)  # every value unique
    aff = _random_affine(rng, rng.uniform(0.5, 4.0, 3), oblique_deg=rng.uniform(-15, 15) if seed % 2 else 0.0)
    hu, new_aff, ornt = reorient_to_internal(data, aff)
    assert hu.flags.c_contiguous and not np.shares_memory(hu, data)
    assert hu.size == data.size and sorted(hu.shape) == sorted(shape)
    import nibabel as nib

    if seed % 2 == 0:  # axis-aligned: exactly L, P, S
        assert nib.aff2axcodes(new_aff) == INTERNAL_AXCODES
    # the same value sits at the same millimetre position in both grids
    for v in rng.choice(data.size, 5, replace=False):
        ijk = np.argwhere(data == v)[0]
        zyx = np.argwhere(hu == v)[0]
        np.testing.assert_allclose(aff @ np.r_[ijk, 1], new_aff @ np.r_[zyx[::-1], 1], atol=1e-6)
    scan = Scan(hu, spacing_from_affine(new_aff), new_aff, "x.nii",
                {"input_ornt": ornt, "input_affine": aff, "input_shape": shape})
    assert sorted(scan.spacing) == pytest.approx(sorted(spacing_from_affine(aff)))  # the same voxel sizes, permuted
    back, back_aff = to_input_geometry(hu * 2, scan)
    np.testing.assert_array_equal(back, data * 2)
    np.testing.assert_array_equal(back_aff, aff)


def test_internal_grid_is_unchanged_by_reorientation():
    aff = internal_affine((2.0, 1.0, 1.0), (5.0, 6.0, 7.0))
    data = np.random.default_rng(0).random((4, 3, 2))  # indexed (x, y, z)
    hu, new_aff, _ = reorient_to_internal(data, aff)
    np.testing.assert_array_equal(hu, data.transpose(2, 1, 0))
    np.testing.assert_allclose(new_aff, aff)


def test_to_input_geometry_without_a_recorded_orientation_and_shape_errors():
    hu = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    aff = internal_affine((1.0, 1.0, 1.0))
    scan = Scan(hu, (1.0, 1.0, 1.0), aff)
    data, out_aff = to_input_geometry(hu, scan)
    np.testing.assert_array_equal(data, hu.transpose(2, 1, 0))
    np.testing.assert_array_equal(out_aff, aff)
    with pytest.raises(ValueError, match=r"volume shape \(2, 3\) differs from the scan's \(2, 3, 4\)"):
        to_input_geometry(hu[:, :, 0], scan)
