"""PNG/TIFF slices: HU vs windowed dtypes, channels, spacing, labels and errors."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from aeanomaly.errors import ScanError
from aeanomaly.io import load_label, load_scan, to_input_geometry
from aeanomaly.io.scan import internal_affine


@pytest.fixture
def hu_slice(rng):
    return rng.integers(-1024, 2000, size=(40, 48)).astype(np.int16)


def test_int16_tiff_is_hu_with_rows_as_y(tmp_path, hu_slice):
    path = tmp_path / "s.tif"
    iio.imwrite(path, hu_slice)
    scan = load_scan(path)
    assert scan.shape == (1, 40, 48) and scan.hu.dtype == np.float32 and scan.is_hu
    np.testing.assert_array_equal(scan.hu[0], hu_slice.astype(np.float32))
    assert scan.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(scan.affine, internal_affine((1.0, 1.0, 1.0)))
    assert scan.meta["format"] == "image"


def test_float_tiff_is_hu(tmp_path, hu_slice):
    path = tmp_path / "f.tiff"
    tifffile.imwrite(path, hu_slice.astype(np.float32) + 0.25)
    scan = load_scan(path)
    assert scan.is_hu and scan.hu[0, 0, 0] == pytest.approx(hu_slice[0, 0] + 0.25)


@pytest.mark.parametrize("dtype, suffix", [(np.uint8, ".png"), (np.uint16, ".png"), (np.uint16, ".tif")])
def test_unsigned_images_are_flagged_not_hu_and_scaled(tmp_path, rng, dtype, suffix):
    top = np.iinfo(dtype).max
    img = rng.integers(0, top, size=(40, 48), endpoint=True).astype(dtype)
    img[0, 0], img[0, 1] = 0, top
    path = tmp_path / f"w{suffix}"
    iio.imwrite(path, img)
    scan = load_scan(path)
    assert not scan.is_hu and scan.meta["hu"] is False
    assert scan.hu.min() == 0.0 and scan.hu.max() == 1.0
    np.testing.assert_allclose(scan.hu[0], img / top, rtol=1e-6)


def test_rgb_with_equal_channels_takes_one(tmp_path, rng):
    gray = rng.integers(0, 255, size=(40, 48)).astype(np.uint8)
    path = tmp_path / "rgb.png"
    iio.imwrite(path, np.stack([gray] * 3, axis=-1))
    np.testing.assert_allclose(load_scan(path).hu[0], gray / 255.0, rtol=1e-6)


def test_rgb_with_different_channels_is_an_error(tmp_path, rng):
    path = tmp_path / "colour.png"
    iio.imwrite(path, rng.integers(0, 255, size=(40, 48, 3)).astype(np.uint8))
    with pytest.raises(ScanError) as err:
        load_scan(path)
    assert str(err.value).startswith(f"{path}: colour image with 3 differing channels")


def test_tiff_resolution_in_centimetres_sets_spacing(tmp_path, hu_slice):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, hu_slice, resolution=(20.0, 12.5), resolutionunit="CENTIMETER")  # px per cm
    scan = load_scan(path)
    assert scan.spacing == pytest.approx((1.0, 0.8, 0.5))
    assert scan.meta["spacing_known"] is True
    assert scan.affine[0, 0] == pytest.approx(-0.5) and scan.affine[1, 1] == pytest.approx(-0.8)


def test_tiff_inch_resolution_is_ignored(tmp_path, hu_slice):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, hu_slice, resolution=(72.0, 72.0), resolutionunit="INCH")
    assert load_scan(path).spacing == (1.0, 1.0, 1.0)


def test_multipage_tiff_is_an_error(tmp_path, hu_slice):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([hu_slice] * 6))
    with pytest.raises(ScanError, match="multi-page TIFF"):
        load_scan(path)


def test_image_has_no_input_reorientation(tmp_path, hu_slice):
    path = tmp_path / "s.tif"
    iio.imwrite(path, hu_slice)
    scan = load_scan(path)
    data, aff = to_input_geometry(scan.hu, scan)
    assert data.shape == (48, 40, 1)
    np.testing.assert_array_equal(aff, scan.affine)


def test_uint8_mask_keeps_255(tmp_path):
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 5:9] = 255
    path = tmp_path / "m.png"
    iio.imwrite(path, mask)
    labels = load_label(path)
    assert labels.shape == (1, 40, 48) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[0], mask)


def test_small_image_is_an_error(tmp_path):
    path = tmp_path / "tiny.png"
    iio.imwrite(path, np.zeros((20, 64), np.uint8))
    with pytest.raises(ScanError) as err:
        load_scan(path)
    assert str(err.value) == f"{path}: image is 20×64 pixels (y×x); at least 32×32 needed"


def test_nan_in_float_tiff_is_an_error(tmp_path, hu_slice):
    data = hu_slice.astype(np.float32)
    data[:3, :4] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(ScanError) as err:
        load_scan(path)
    assert str(err.value) == f"{path}: contains 12 NaN/inf voxels"
