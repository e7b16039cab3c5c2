"""NIfTI loading: orientation handling, scaling, dimensionality, round trip to the input grid."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from aeanomaly.errors import ScanError
from aeanomaly.io import load_label, load_scan, save_like_input, to_input_geometry
from aeanomaly.io.scan import internal_affine

SHAPE = (40, 36, 5)  # (i, j, k) of the RAS reference grid
SPACING = (0.8, 0.7, 2.5)
ORIGIN = (-12.0, 30.0, -100.0)


def _ras_volume(rng):
    data = rng.normal(0, 300, SHAPE).round().astype(np.int16)
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = ORIGIN
    return data, aff


def _save(path, data, aff):
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return path


def _lps_version(data, aff):
    """Same physical image stored with i → Left, j → Posterior."""
    flipped = data[::-1, ::-1, :]
    new = aff.copy()
    new[:3, 0] = -aff[:3, 0]
    new[:3, 1] = -aff[:3, 1]
    new[:3, 3] = aff[:3, :3] @ [data.shape[0] - 1, data.shape[1] - 1, 0] + aff[:3, 3]
    return np.ascontiguousarray(flipped), new


def _permuted_version(data, aff):
    """Same physical image stored with axes (k, i, j): first file axis is S, then R, then A."""
    perm = np.ascontiguousarray(data.transpose(2, 0, 1))
    new = np.eye(4)
    new[:3, 0], new[:3, 1], new[:3, 2] = aff[:3, 2], aff[:3, 0], aff[:3, 1]
    new[:3, 3] = aff[:3, 3]
    return perm, new


def test_ras_file_maps_to_internal_lps_grid(tmp_path, rng):
    data, aff = _ras_volume(rng)
    scan = load_scan(_save(tmp_path / "ras.nii.gz", data, aff))
    assert scan.hu.dtype == np.float32 and scan.shape == (5, 36, 40)
    # internal x → Left means file i reversed; internal y → Posterior means file j reversed
    np.testing.assert_array_equal(scan.hu, data[::-1, ::-1, :].transpose(2, 1, 0))
    assert scan.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert scan.affine[0, 0] < 0 and scan.affine[1, 1] < 0 and scan.affine[2, 2] > 0
    assert scan.meta["format"] == "nifti" and scan.is_hu
    assert scan.meta["input_shape"] == SHAPE
    np.testing.assert_allclose(scan.meta["input_affine"], aff, atol=1e-6)


@pytest.mark.parametrize("variant", [_lps_version, _permuted_version])
def test_same_physical_voxel_lands_at_same_internal_index(tmp_path, rng, variant):
    data, aff = _ras_volume(rng)
    ref = load_scan(_save(tmp_path / "ras.nii", data, aff))
    other_data, other_aff = variant(data, aff)
    other = load_scan(_save(tmp_path / "other.nii.gz", other_data, other_aff))
    np.testing.assert_array_equal(other.hu, ref.hu)
    np.testing.assert_allclose(other.affine, ref.affine, atol=1e-5)
    # a physical check: internal voxel (x, y, z) sits at RAS = affine @ (x, y, z, 1) in both files
    x, y, z = 7, 11, 3
    ras = ref.affine @ [x, y, z, 1]
    ijk = np.rint(np.linalg.inv(other_aff) @ ras)[:3].astype(int)
    assert other_data[tuple(ijk)] == ref.hu[z, y, x]


@pytest.mark.parametrize("variant", [lambda d, a: (d, a), _lps_version, _permuted_version])
def test_to_input_geometry_round_trips_exactly(tmp_path, rng, variant):
    data, aff = variant(*_ras_volume(rng))
    path = _save(tmp_path / "in.nii.gz", data, aff)
    file_aff = nib.load(str(path)).affine  # as stored (float32 in the header)
    scan = load_scan(path)
    back, back_aff = to_input_geometry(scan.hu, scan)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_array_equal(back_aff, file_aff)
    out = save_like_input(tmp_path / "out.nii.gz", scan.hu, scan)
    written = nib.load(str(out))
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), data)
    np.testing.assert_array_equal(written.affine, file_aff)


def test_scl_slope_and_inter_are_applied(tmp_path):
    raw = np.zeros((40, 40, 2), dtype=np.int16)
    raw[0, 0, 0] = 1000
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, str(path))
    scan = load_scan(path)
    assert scan.hu.min() == -1024.0
    assert scan.hu.max() == 2.0 * 1000 - 1024.0


def test_2d_nifti_is_one_slice(tmp_path, rng):
    data = rng.normal(size=(48, 40)).astype(np.float32)
    scan = load_scan(_save(tmp_path / "slice.nii.gz", data, np.diag([0.5, 0.5, 1.0, 1.0])))
    assert scan.shape == (1, 40, 48)
    np.testing.assert_array_equal(scan.hu[0], data[::-1, ::-1].T)


def test_4d_with_singleton_extra_dim_is_squeezed(tmp_path, rng):
    data = rng.normal(size=(40, 36, 3, 1)).astype(np.float32)
    scan = load_scan(_save(tmp_path / "v.nii.gz", data, np.eye(4)))
    assert scan.shape == (3, 36, 40)


@pytest.mark.parametrize("shape, words", [((40, 36, 3, 2), "4-D image (shape 40×36×3×2)"),
                                          ((40, 36, 3, 1, 2), "5-D image"),
                                          ((40,), "1-D image")])
def test_wrong_dimensionality_is_an_error(tmp_path, shape, words):
    path = _save(tmp_path / "bad.nii.gz", np.zeros(shape, np.float32), np.eye(4))
    with pytest.raises(ScanError) as err:
        load_scan(path)
    assert str(err.value).startswith(f"{path}: ")
    assert words in str(err.value)


def test_degenerate_affine_is_an_error(tmp_path):
    path = _save(tmp_path / "flat.nii", np.zeros((40, 40, 2), np.float32), np.eye(4))
    with open(path, "r+b") as fh:  # zero the sform's z row (nibabel refuses to write it)
        fh.seek(312)
        fh.write(np.zeros(4, "<f4").tobytes())
    with pytest.raises(ScanError, match="degenerate"):
        load_scan(path)


def test_label_keeps_integer_values_and_orientation(tmp_path, rng):
    data, aff = _ras_volume(rng)
    mask = np.zeros(SHAPE, np.uint8)
    mask[5:9, 20:30, 2] = 255
    lps_mask, lps_aff = _lps_version(mask, aff)
    scan = load_scan(_save(tmp_path / "ct.nii.gz", data, aff))
    labels = load_label(_save(tmp_path / "mask.nii.gz", lps_mask, lps_aff), like=scan)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 255}
    np.testing.assert_array_equal(labels, mask[::-1, ::-1, :].transpose(2, 1, 0))


def test_label_float_integral_values_become_int(tmp_path):
    lab = np.zeros((40, 40, 2), np.float32)
    lab[3, 4, 1] = 5.0
    labels = load_label(_save(tmp_path / "f.nii.gz", lab, np.eye(4)))
    assert labels.dtype.kind == "i" and labels.max() == 5


def test_label_non_integer_values_are_an_error(tmp_path):
    lab = np.full((40, 40, 2), 0.5, np.float32)
    path = _save(tmp_path / "frac.nii.gz", lab, np.eye(4))
    with pytest.raises(ScanError, match="non-integer values"):
        load_label(path)


def test_label_shape_mismatch_names_file_and_shapes(tmp_path, rng):
    data, aff = _ras_volume(rng)
    scan = load_scan(_save(tmp_path / "ct.nii.gz", data, aff))
    path = _save(tmp_path / "small.nii.gz", np.zeros((40, 40, 2), np.uint8), aff)
    with pytest.raises(ScanError) as err:
        load_label(path, like=scan)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "(2, 40, 40)" in msg and "(5, 36, 40)" in msg


def test_internal_affine_matches_a_plain_lps_file(tmp_path, rng):
    data = rng.normal(size=(40, 40, 3)).astype(np.float32)
    aff = internal_affine((2.0, 0.5, 0.5), origin_ras=(10.0, 20.0, 30.0))
    scan = load_scan(_save(tmp_path / "lps.nii.gz", data, aff))
    np.testing.assert_allclose(scan.affine, aff)
    np.testing.assert_array_equal(scan.hu, data.transpose(2, 1, 0))


@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<u1", "<i4", ">f4", "<f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_voxels_are_read_chunk_by_chunk_as_nibabel_scales_them(tmp_path, rng, monkeypatch, dtype, gz):
    """Voxels are converted to float32 a small chunk at a time as they are read (decompressed): every
    value is nibabel's own scaled value in float32 (integers and floats, either byte order, slope and
    intercept), including a last chunk that is only partly full; a file cut short inside a chunk is one
    clear error naming how far its data go."""
    from aeanomaly.io import nifti

    monkeypatch.setattr(nifti, "_CHUNK", 1000)  # many chunks, none a multiple of the volume
    data = rng.normal(0, 60, SHAPE).astype(dtype)
    img = nib.Nifti1Image(data, np.diag([*SPACING, 1.0]))
    img.header.set_data_dtype(np.dtype(dtype))
    img.header.set_slope_inter(1.5, -20.0)
    path = tmp_path / ("v.nii.gz" if gz else "v.nii")
    nib.save(img, str(path))
    back = nib.load(str(path))
    expected = (np.asarray(back.dataobj.get_unscaled()).astype(np.float32) * np.float32(1.5)) + np.float32(-20.0)
    scan = load_scan(path)
    assert scan.hu.dtype == np.float32
    np.testing.assert_array_equal(to_input_geometry(scan.hu, scan)[0], expected)

    # a .nii.gz whose data end inside the third chunk (a plain .nii that short is refused by its size)
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[: int(back.dataobj.offset) + 2500]))
    with pytest.raises(ScanError, match="decompressed data ends after 2,500 of the"):
        load_scan(short)
