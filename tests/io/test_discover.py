"""find_scans: recursive, sorted discovery; DICOM folders count once; hidden entries skipped."""

from __future__ import annotations

import numpy as np
import pytest

from aeanomaly.errors import EmptyInputError, ScanError, UnsupportedFormatError
from aeanomaly.io import find_scans


def _dicm(path):
    """A file with the DICOM Part 10 preamble (all discovery looks at)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_finds_every_kind_sorted_and_dicom_folders_once(tmp_path):
    for name in ["b/scan.nii.gz", "a.nii", "img/s1.PNG", "img/s2.tif", "img/s3.tiff", "v.npy",
                 "notes.txt", "img/readme.md"]:
        _touch(tmp_path / name)
    for n in range(3):
        _dicm(tmp_path / "series1" / f"CT.1.2.{n}")  # extension-less with preamble
        _touch(tmp_path / "series2" / f"im{n}.dcm")  # .dcm extension
    _dicm(tmp_path / "series1" / "nested" / "x")  # a second series in a sub-folder
    found = find_scans(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == sorted(rel)
    assert set(rel) == {"a.nii", "b/scan.nii.gz", "img/s1.PNG", "img/s2.tif", "img/s3.tiff", "v.npy",
                        "series1", "series1/nested", "series2"}
    assert found == find_scans(tmp_path)  # deterministic


def test_hidden_files_and_folders_are_skipped(tmp_path):
    _touch(tmp_path / ".hidden.nii.gz")
    _touch(tmp_path / ".cache" / "x.nii.gz")
    _dicm(tmp_path / ".git" / "obj")
    _touch(tmp_path / "visible.npy")
    assert [p.name for p in find_scans(tmp_path)] == ["visible.npy"]


def test_empty_folder_is_an_empty_input_error(tmp_path):
    _touch(tmp_path / "readme.txt")
    with pytest.raises(EmptyInputError) as err:
        find_scans(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: no scans found")


def test_missing_folder_is_a_scan_error(tmp_path):
    with pytest.raises(ScanError) as err:
        find_scans(tmp_path / "nope")
    assert str(err.value) == f"{tmp_path / 'nope'}: no such file or folder"


def test_a_single_scan_file_is_returned_as_is(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((1, 40, 40)))
    assert find_scans(tmp_path / "v.npy") == [tmp_path / "v.npy"]
    _touch(tmp_path / "x.jpg")
    with pytest.raises(UnsupportedFormatError):
        find_scans(tmp_path / "x.jpg")
