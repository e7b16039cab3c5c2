"""MetaImage (.mhd/.raw, .mha): HU values, LPS world geometry, the input-grid round trip, errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from aeanomaly.errors import ScanError
from aeanomaly.io import find_scans, load_label, load_scan, save_like_input

SPACING = (0.7, 0.8, 2.5)  # x, y, z as in the header
OFFSET = (-180.0, -200.0, -300.0)  # LPS mm of the first voxel


def _volume(rng, shape=(6, 40, 36)):
    vol = rng.normal(-500, 200, shape).round().astype(np.int16)
    vol[1, 5, 3] = 3000  # a marker at file index x=3, y=5, z=1
    return vol


def _ras_of_marker(scan) -> np.ndarray:
    z, y, x = np.unravel_index(int(np.argmax(scan.hu)), scan.hu.shape)
    return (scan.affine @ np.array([x, y, z, 1.0]))[:3]


@pytest.mark.parametrize("direction, lps_step", [
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 1, 1)),   # the usual LUNA16 header
    ((1, 0, 0, 0, -1, 0, 0, 0, 1), (1, -1, 1)),  # rows stored towards anterior
    ((-1, 0, 0, 0, 1, 0, 0, 0, -1), (-1, 1, -1)),  # columns towards right, slices towards inferior
])
def test_hu_spacing_and_world_position_follow_the_header(write_mhd, tmp_path, direction, lps_step):
    vol = _volume(np.random.default_rng(0))
    path = write_mhd(tmp_path / "ct.mhd", vol, SPACING, OFFSET, direction)
    scan = load_scan(path)
    assert scan.meta["format"] == "metaimage" and scan.is_hu
    assert scan.hu.dtype == np.float32 and scan.hu.shape == vol.shape
    np.testing.assert_allclose(scan.spacing, (2.5, 0.8, 0.7))
    assert sorted(scan.hu.ravel().tolist()) == sorted(vol.astype(np.float32).ravel().tolist())
    lps = np.array(OFFSET) + np.array(lps_step) * np.array([3, 5, 1]) * np.array(SPACING)
    np.testing.assert_allclose(_ras_of_marker(scan), [-lps[0], -lps[1], lps[2]], atol=1e-4)


def test_matches_the_same_image_written_as_nifti(write_mhd, tmp_path):
    vol = _volume(np.random.default_rng(1))
    mhd = load_scan(write_mhd(tmp_path / "ct.mhd", vol, SPACING, OFFSET))
    aff = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # LPS → RAS of an identity direction
    aff[:3, 3] = [-OFFSET[0], -OFFSET[1], OFFSET[2]]
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0).copy(), aff), str(tmp_path / "ct.nii.gz"))
    nii = load_scan(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(mhd.hu, nii.hu)
    np.testing.assert_allclose(mhd.affine, nii.affine, atol=1e-5)


def test_heatmap_goes_back_to_the_files_voxel_grid(write_mhd, tmp_path):
    vol = _volume(np.random.default_rng(2))
    scan = load_scan(write_mhd(tmp_path / "ct.mhd", vol, SPACING, OFFSET, (1, 0, 0, 0, -1, 0, 0, 0, 1)))
    out = save_like_input(tmp_path / "heat.nii.gz", scan.hu, scan)
    img = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.transpose(2, 1, 0))  # file order (x, y, z)
    assert img.shape == (36, 40, 6)


def test_local_compressed_float_and_big_endian_variants(write_mhd, tmp_path):
    vol = _volume(np.random.default_rng(3))
    ref = load_scan(write_mhd(tmp_path / "a.mhd", vol)).hu
    for name, kw in (("b.mha", {"local": True}), ("c.mhd", {"compressed": True}), ("d.mhd", {"dtype": ">i2"}),
                     ("e.mha", {"local": True, "compressed": True, "dtype": "<f4"})):
        np.testing.assert_array_equal(load_scan(write_mhd(tmp_path / name, vol, **kw)).hu, ref, err_msg=name)


def test_label_map_and_discovery(write_mhd, tmp_path):
    vol = _volume(np.random.default_rng(4))
    scan = load_scan(write_mhd(tmp_path / "scans" / "ct.mhd", vol))
    mask = np.zeros(vol.shape, np.uint8)
    mask[2, 10:20, 5:9] = 1
    lab = load_label(write_mhd(tmp_path / "masks" / "ct_mask.mhd", mask, dtype="|u1"), like=scan)
    assert lab.shape == scan.hu.shape and lab.sum() == 40
    assert find_scans(tmp_path / "scans") == [tmp_path / "scans" / "ct.mhd"]  # the .raw is not a scan


@pytest.mark.parametrize("edit, reason", [
    (lambda p: p.with_suffix(".raw").write_bytes(p.with_suffix(".raw").read_bytes()[:100]), "truncated MetaImage data"),
    (lambda p: p.with_suffix(".raw").unlink(), "cannot read its data file ct.raw"),
    (lambda p: p.write_text(p.read_text().replace("MET_SHORT", "MET_COMPLEX")), "unsupported MetaImage ElementType"),
    (lambda p: p.write_text(p.read_text().replace("NDims = 3", "NDims = 4")), "4-D MetaImage"),
    (lambda p: p.write_text(p.read_text().replace("ElementDataFile", "Element")), "no ElementDataFile"),
    (lambda p: p.write_text("garbage without equals\n"), "corrupt MetaImage header"),
    (lambda p: p.write_text(p.read_text().replace("DimSize = 36 40 6", "DimSize = 36 40")), "DimSize has 2 values"),
])
def test_bad_files_name_the_file_and_the_reason(write_mhd, tmp_path, edit, reason):
    path = write_mhd(tmp_path / "ct.mhd", _volume(np.random.default_rng(5)))
    edit(path)
    with pytest.raises(ScanError) as err:
        load_scan(path)
    assert str(err.value).startswith(f"{path}: ") and reason in str(err.value)
