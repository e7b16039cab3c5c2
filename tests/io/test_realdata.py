"""Loading the real CT in ../shared/data: NIfTI (RAS and LPS), a DICOM series, TIFF and PNG slices."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from aeanomaly.io import find_scans, load_label, load_scan, to_input_geometry
from aeanomaly.io.scan import reorient_to_internal

pytestmark = pytest.mark.realdata


def test_example_ct_nifti(shared_data):
    path = shared_data / "totalseg-examples" / "example_ct.nii.gz"
    scan = load_scan(path)
    assert scan.shape == (112, 101, 122)  # file (x, y, z) = 122×101×112
    assert scan.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert scan.hu.dtype == np.float32 and scan.is_hu
    assert -1300 < scan.hu.min() < -1000 and scan.hu.max() > 1000
    assert np.count_nonzero(scan.hu < -900) > 1000  # air around the body
    back, aff = to_input_geometry(scan.hu, scan)
    img = nib.load(str(path))
    np.testing.assert_array_equal(back, img.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(aff, img.affine)


def test_lps_crop_has_the_internal_orientation(shared_data):
    path = shared_data / "totalseg-examples" / "pulmonary_ct_cropped.nii.gz"
    img = nib.load(str(path))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    scan = load_scan(path)
    assert scan.shape == (112, 102, 122)
    assert scan.affine[0, 0] < 0 and scan.affine[1, 1] < 0 and scan.affine[2, 2] > 0
    # already LPS: the internal grid is the file's grid transposed, nothing flipped
    np.testing.assert_array_equal(scan.hu, img.get_fdata(dtype=np.float32).transpose(2, 1, 0))
    np.testing.assert_allclose(scan.affine, img.affine)


def test_dicom_series(shared_data):
    scan = load_scan(shared_data / "totalseg-examples" / "example_ct_dicom")
    assert scan.shape == (20, 512, 512)
    assert scan.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert scan.meta["format"] == "dicom" and scan.meta["n_files"] == 20
    assert scan.meta["rescale_intercept"] == -1024.0
    assert scan.hu.min() >= -1100 and np.count_nonzero(np.abs(scan.hu + 1000) < 50) > 10000  # air ≈ −1000
    assert scan.hu.max() > 1000  # bone


def test_dicom_series_agrees_with_its_nifti_labels(shared_data):
    root = shared_data / "totalseg-examples"
    scan = load_scan(root / "example_ct_dicom")
    labels = load_label(root / "example_seg_dicom.nii.gz", like=scan)
    assert labels.shape == (20, 512, 512) and labels.dtype == np.uint8
    # the label file (LAS, dcm2niix-style) and the series share one internal grid and affine
    seg = nib.load(str(root / "example_seg_dicom.nii.gz"))
    _, seg_affine, _ = reorient_to_internal(np.zeros(seg.shape, np.uint8), seg.affine)
    np.testing.assert_allclose(seg_affine, scan.affine, atol=1e-3)
    inside = scan.hu[labels > 0] > -500
    assert inside.mean() > 0.95  # organs are in the body (flipping y drops this to ~0.73)
    # anatomy: liver (5) on the patient's right = low internal x, spleen (1) on the left;
    # the vertebra labelled 33 (T11) lies above 32 (T12), and the spine is posterior (high y)
    zyx = {v: np.argwhere(labels == v).mean(axis=0) for v in (1, 5, 32, 33)}
    assert zyx[5][2] < 256 < zyx[1][2]
    assert zyx[33][0] > zyx[32][0]
    assert zyx[32][1] > zyx[5][1]
    assert scan.hu[labels == 5].mean() > 0  # soft tissue, not air


def test_kmader_tiff_is_hu(shared_data):
    path = sorted((shared_data / "kmader-lungs-512" / "images").glob("*.tif"))[0]
    scan = load_scan(path)
    assert scan.shape == (1, 512, 512) and scan.is_hu
    assert scan.hu.min() < -500 and 500 < scan.hu.max() < 4000
    mask = load_label(shared_data / "kmader-lungs-512" / "masks" / path.name, like=scan)
    assert set(np.unique(mask)) <= {0, 255}
    assert np.median(scan.hu[mask > 0]) < -500  # lungs hold air


def test_kmader_png_is_not_hu(shared_data):
    path = sorted((shared_data / "kmader-lungs-64" / "images").glob("*.png"))[0]
    scan = load_scan(path)
    assert scan.shape == (1, 64, 64) and not scan.is_hu and scan.meta["dtype"] == "uint16"
    assert scan.hu.min() >= 0.0 and scan.hu.max() <= 1.0 and scan.hu.max() > 0.5


def test_find_scans_on_the_examples(shared_data):
    found = find_scans(shared_data / "totalseg-examples")
    names = [p.name for p in found]
    assert "example_ct_dicom" in names and "example_ct.nii.gz" in names
    assert names.count("example_ct_dicom") == 1
