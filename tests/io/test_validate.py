"""The shared checks: one error class per failure, one line, path first, library error chained."""

from __future__ import annotations

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest

from aeanomaly.errors import AeAnomalyError, ScanError, UnsupportedFormatError
from aeanomaly.io import load_label, load_scan
from aeanomaly.io.validate import short_reason


def _assert_one_line(err, path, reason):
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.startswith(f"{path}: "), msg
    assert reason in msg, msg


def test_missing_path(tmp_path):
    path = tmp_path / "none.nii.gz"
    with pytest.raises(ScanError) as err:
        load_scan(path)
    _assert_one_line(err, path, "no such file or folder")


@pytest.mark.parametrize("name", ["scan.jpg", "scan.hdr", "scan"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\0" * 300)
    with pytest.raises(UnsupportedFormatError) as err:
        load_scan(path)
    _assert_one_line(err, path, "unsupported file type")


def test_nan_and_inf_voxels(tmp_path):
    data = np.zeros((40, 40, 3), np.float32)
    data[0, 0, :2] = np.nan
    data[5, 5, 0] = np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(ScanError) as err:
        load_scan(path)
    _assert_one_line(err, path, "contains 3 NaN/inf voxels")


@pytest.mark.parametrize("shape", [(31, 40, 3), (40, 31, 3)])
def test_too_small_in_plane(tmp_path, shape):
    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(path))
    with pytest.raises(ScanError) as err:
        load_scan(path)
    _assert_one_line(err, path, "at least 32×32 needed")


def test_gzip_nifti_cut_in_half(tmp_path, rng):
    full = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(64, 64, 16)).astype(np.float32), np.eye(4)), str(full))
    blob = full.read_bytes()
    path = tmp_path / "half.nii.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ScanError) as err:
        load_scan(path)
    _assert_one_line(err, path, "corrupt or truncated NIfTI file: ")
    assert isinstance(err.value.__cause__, Exception) and not isinstance(err.value.__cause__, AeAnomalyError)


@pytest.mark.parametrize("name, kind", [("r.dcm", "DICOM"), ("r.png", "PNG"), ("r.tif", "TIFF"),
                                        ("r.npy", ".npy"), ("r.nii.gz", "NIfTI"), ("r.nii", "NIfTI")])
def test_random_bytes_are_corrupt(tmp_path, rng, name, kind):
    path = tmp_path / name
    path.write_bytes(rng.integers(0, 256, 700, dtype=np.uint8).tobytes())
    with pytest.raises(ScanError) as err:
        load_scan(path)
    _assert_one_line(err, path, f"corrupt or truncated {kind} file: ")
    assert len(str(err.value)) < len(str(path)) + 200


def test_truncated_png(tmp_path, rng):
    full = tmp_path / "full.png"
    iio.imwrite(full, rng.integers(0, 255, size=(64, 64)).astype(np.uint8))
    path = tmp_path / "half.png"
    path.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ScanError) as err:
        load_scan(path)
    _assert_one_line(err, path, "corrupt or truncated PNG file: ")


def test_label_of_dicom_is_unsupported(tmp_path):
    (tmp_path / "seg.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(UnsupportedFormatError, match="DICOM label maps are not supported"):
        load_label(tmp_path / "seg.dcm")


def test_short_reason_trims_and_hides_the_full_path(tmp_path):
    path = tmp_path / "deep" / "f.nii"
    assert short_reason(ValueError(f"File {path} is bad\nmore"), path) == "File f.nii is bad"
    assert short_reason(EOFError()) == "EOFError"
    long = "x" * 100 + " - " + "y" * 100
    assert short_reason(RuntimeError(long)) == "x" * 100


def test_scan_suffixes_is_one_table_longest_first():
    from aeanomaly.io import SCAN_SUFFIXES
    from aeanomaly.io.validate import SUFFIX_FORMAT, suffix_format

    assert SCAN_SUFFIXES[0] == ".nii.gz" and set(SCAN_SUFFIXES) == set(SUFFIX_FORMAT)
    assert list(SCAN_SUFFIXES) == sorted(SCAN_SUFFIXES, key=len, reverse=True)
    assert {".nii", ".mhd", ".mha", ".npy", ".tiff", ".tif", ".png", ".dcm"} <= set(SCAN_SUFFIXES)
    assert all(s == s.lower() and s.startswith(".") for s in SCAN_SUFFIXES)
    assert suffix_format("A.NII.GZ") == "nifti" and suffix_format("x.Tiff") == "image" and suffix_format("x.gz") is None


@pytest.mark.parametrize("path, stem", [
    ("a/ct.nii.gz", "ct"), ("CT.NII.GZ", "CT"), ("x.nii", "x"), ("b/LUNA.1.2.mhd", "LUNA.1.2"), ("v.npy", "v"),
    ("s.tiff", "s"), ("s.TIF", "s"), ("p.png", "p"), ("im.dcm", "im"), ("series_folder", "series_folder"),
    ("CT.1.3.12.2", "CT.1.3.12.2"), ("notes.txt", "notes.txt"), (".nii.gz", ".nii.gz"), ("a.raw", "a.raw"),
])
def test_scan_stem_strips_only_a_scan_suffix(path, stem):
    from pathlib import Path

    from aeanomaly.io import scan_stem

    assert scan_stem(path) == stem and scan_stem(Path(path)) == stem
