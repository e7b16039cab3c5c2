"""DICOM series loading: sorting, rescale, geometry, series selection and the error cases."""

from __future__ import annotations

import random

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from aeanomaly.errors import ScanError
from aeanomaly.io import load_scan, save_like_input, to_input_geometry

ROWS, COLS = 36, 40
PIXEL = (0.7, 0.8)  # (row spacing, column spacing) mm


def _slice(pixels, position, *, series_uid, modality="CT", iop=(1, 0, 0, 0, 1, 0), number=1,
           description="test series", intercept=-1024.0, slope=1.0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = list(PIXEL)
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write_series(folder, raw, z_positions, *, series_uid=None, shuffle=True, name="s", **kw):
    """Write ``raw[k]`` (rows, cols) at LPS z = z_positions[k]; returns the series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    order = list(range(len(raw)))
    if shuffle:
        random.Random(1).shuffle(order)
    for n, k in enumerate(order):  # file names in shuffled order: names never encode position
        ds = _slice(raw[k], (-10.0, 20.0, z_positions[k]), series_uid=uid, number=k + 1, **kw)
        ds.save_as(folder / f"{name}{n:03d}.dcm", enforce_file_format=True)
    return uid


@pytest.fixture
def raw(rng):
    return rng.integers(0, 3000, size=(4, ROWS, COLS)).astype(np.uint16)


def test_series_is_sorted_rescaled_and_on_the_lps_grid(tmp_path, raw):
    write_series(tmp_path / "ct", raw, [30.0, 32.0, 34.0, 36.0])
    (tmp_path / "ct" / "notes.txt").write_text("not dicom")  # ignored
    scan = load_scan(tmp_path / "ct")
    assert scan.shape == (4, ROWS, COLS) and scan.hu.dtype == np.float32
    # IOP (1,0,0,0,1,0): columns go Left, rows go Posterior, z rises: the internal grid itself
    np.testing.assert_array_equal(scan.hu, raw.astype(np.float32) - 1024.0)
    assert scan.spacing == pytest.approx((2.0, 0.7, 0.8))
    # voxel (x, y, z) = (0, 0, 0) is the first slice's IPP, converted LPS → RAS
    np.testing.assert_allclose(scan.affine @ [0, 0, 0, 1], [10.0, -20.0, 30.0, 1.0])
    np.testing.assert_allclose(scan.affine @ [1, 1, 1, 1], [10.0 - 0.8, -20.0 - 0.7, 32.0, 1.0])
    assert scan.meta["format"] == "dicom" and scan.is_hu and scan.meta["n_files"] == 4
    assert scan.hu.min() >= -1024.0


def test_descending_positions_are_sorted_superior_last(tmp_path, raw):
    write_series(tmp_path / "ct", raw, [36.0, 34.0, 32.0, 30.0])
    scan = load_scan(tmp_path / "ct")
    np.testing.assert_array_equal(scan.hu, raw[::-1].astype(np.float32) - 1024.0)


def test_flipped_orientation_lands_on_the_same_internal_grid(tmp_path, raw):
    # rows go Right (-x) and columns go Anterior (-y): the stored image is rotated by 180°
    folder = tmp_path / "flip"
    folder.mkdir()
    uid = generate_uid()
    x0, y0 = -10.0 + (COLS - 1) * PIXEL[1], 20.0 + (ROWS - 1) * PIXEL[0]
    for k, z in enumerate([30.0, 32.0, 34.0, 36.0]):
        ds = _slice(raw[k][::-1, ::-1].copy(), (x0, y0, z), series_uid=uid, iop=(-1, 0, 0, 0, -1, 0))
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    write_series(tmp_path / "ref", raw, [30.0, 32.0, 34.0, 36.0])
    ref = load_scan(tmp_path / "ref")
    flipped = load_scan(folder)
    np.testing.assert_array_equal(flipped.hu, ref.hu)
    np.testing.assert_allclose(flipped.affine, ref.affine, atol=1e-6)


def test_round_trip_to_the_series_grid(tmp_path, raw):
    write_series(tmp_path / "ct", raw, [30.0, 32.0, 34.0, 36.0])
    scan = load_scan(tmp_path / "ct")
    data, aff = to_input_geometry(scan.hu, scan)
    assert data.shape == (COLS, ROWS, 4)  # (column i, row j, slice k)
    np.testing.assert_array_equal(data[:, :, 2].T, raw[2].astype(np.float32) - 1024.0)
    np.testing.assert_array_equal(aff, scan.meta["input_affine"])
    out = nib.load(str(save_like_input(tmp_path / "h.nii.gz", scan.hu, scan)))
    # the NIfTI voxel (i=5, j=3, k=2) sits where the DICOM pixel (row 3, col 5) of slice 2 does
    lps = np.array([-10.0 + 5 * PIXEL[1], 20.0 + 3 * PIXEL[0], 34.0])
    np.testing.assert_allclose(out.affine @ [5, 3, 2, 1], [-lps[0], -lps[1], lps[2], 1.0], atol=1e-4)


def test_single_dcm_file_is_one_slice(tmp_path, raw):
    write_series(tmp_path / "ct", raw[:1], [12.0])
    scan = load_scan(next((tmp_path / "ct").glob("*.dcm")))
    assert scan.shape == (1, ROWS, COLS)
    assert scan.spacing == pytest.approx((2.0, 0.7, 0.8))  # slice thickness as z size


def test_extensionless_files_with_preamble_are_read(tmp_path, raw):
    write_series(tmp_path / "ct", raw, [0.0, 2.0, 4.0, 6.0])
    for f in (tmp_path / "ct").glob("*.dcm"):
        f.rename(f.with_name("CT.1.2.3." + f.stem))
    assert load_scan(tmp_path / "ct").shape == (4, ROWS, COLS)


def test_two_series_folder_lists_them_and_series_uid_picks_one(tmp_path, raw):
    folder = tmp_path / "mixed"
    a = write_series(folder, raw, [0.0, 2.0, 4.0, 6.0], name="a", description="lung")
    b = write_series(folder, raw[:2], [0.0, 3.0], name="b", description="bone")
    with pytest.raises(ScanError) as err:
        load_scan(folder)
    msg = str(err.value)
    assert msg.startswith(f"{folder}: ") and "2 DICOM series" in msg and "\n" not in msg
    assert f"{a} 'lung' (4 files)" in msg and f"{b} 'bone' (2 files)" in msg
    assert load_scan(folder, series_uid=b).shape == (2, ROWS, COLS)
    assert load_scan(folder, series_uid=a).meta["series_uid"] == a
    with pytest.raises(ScanError, match="series 9.9.9 not found"):
        load_scan(folder, series_uid="9.9.9")


def test_mr_modality_is_an_error(tmp_path, raw):
    write_series(tmp_path / "mr", raw, [0.0, 2.0, 4.0, 6.0], modality="MR")
    with pytest.raises(ScanError) as err:
        load_scan(tmp_path / "mr")
    assert str(err.value) == f"{tmp_path / 'mr'}: Modality is MR, not CT"


def test_uneven_spacing_is_an_error_naming_min_and_max(tmp_path, raw):
    write_series(tmp_path / "gap", raw, [0.0, 2.0, 4.0, 10.0])
    with pytest.raises(ScanError) as err:
        load_scan(tmp_path / "gap")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'gap'}: inconsistent slice spacing")
    assert "min 2.000 mm" in msg and "max 6.000 mm" in msg


def test_slightly_uneven_spacing_within_10_percent_is_accepted(tmp_path, raw):
    write_series(tmp_path / "ok", raw, [0.0, 2.0, 4.1, 6.1])
    scan = load_scan(tmp_path / "ok")
    assert scan.spacing[0] == pytest.approx(6.1 / 3)


def test_duplicate_positions_are_an_error(tmp_path, raw):
    write_series(tmp_path / "dup", raw, [0.0, 2.0, 2.0, 4.0])
    with pytest.raises(ScanError, match="share a position"):
        load_scan(tmp_path / "dup")


def test_corrupt_dcm_in_folder_is_named(tmp_path, raw, rng):
    write_series(tmp_path / "ct", raw, [0.0, 2.0, 4.0, 6.0])
    bad = tmp_path / "ct" / "zz_broken.dcm"
    bad.write_bytes(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    with pytest.raises(ScanError) as err:
        load_scan(tmp_path / "ct")
    assert str(err.value).startswith(f"{bad}: corrupt or truncated DICOM file")


def test_truncated_pixel_data_is_an_error(tmp_path, raw):
    write_series(tmp_path / "ct", raw, [0.0, 2.0, 4.0, 6.0], shuffle=False)
    f = tmp_path / "ct" / "s002.dcm"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ScanError) as err:
        load_scan(tmp_path / "ct")
    assert str(err.value).startswith(f"{f}: corrupt or truncated DICOM file")


def test_folder_without_dicom_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ScanError, match="no DICOM image files"):
        load_scan(tmp_path / "empty")


def test_pydicom_ct_small_is_a_scan():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    scan = load_scan(path)
    assert scan.shape == (1, 128, 128) and scan.is_hu and scan.meta["format"] == "dicom"
    assert scan.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    assert -1100 < scan.hu.min() < -800 and scan.hu.max() > 1000  # air and bone of a real spine slice


def test_a_truncated_header_says_truncated(tmp_path, raw):
    write_series(tmp_path / "ct", raw[:1], [0.0], shuffle=False)
    f = next((tmp_path / "ct").iterdir())
    data = f.read_bytes()
    f.write_bytes(data[: data.find(b"\xe0\x7f\x10\x00")])  # cut just before the PixelData element
    with pytest.raises(ScanError, match="corrupt or truncated DICOM file"):
        load_scan(f)
