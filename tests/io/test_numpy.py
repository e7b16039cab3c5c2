""".npy volumes: internal order, spacing warning, dtype rules, no pickle."""

from __future__ import annotations

import numpy as np
import pytest

from aeanomaly.errors import ScanError
from aeanomaly.io import load_label, load_scan


def test_3d_array_is_taken_as_zyx_with_a_spacing_warning(tmp_path, rng):
    vol = rng.normal(0, 200, size=(3, 40, 36)).astype(np.int16)
    path = tmp_path / "v.npy"
    np.save(path, vol)
    with pytest.warns(UserWarning, match="assuming 1 mm"):
        scan = load_scan(path)
    np.testing.assert_array_equal(scan.hu, vol.astype(np.float32))
    assert scan.hu.dtype == np.float32 and scan.is_hu
    assert scan.spacing == (1.0, 1.0, 1.0) and scan.meta["format"] == "npy"


def test_2d_array_is_one_slice(tmp_path, rng):
    path = tmp_path / "s.npy"
    np.save(path, rng.normal(size=(40, 36)))
    with pytest.warns(UserWarning):
        assert load_scan(path).shape == (1, 40, 36)


def test_uint16_array_is_not_hu(tmp_path):
    arr = np.zeros((1, 40, 40), np.uint16)
    arr[0, 0, 0] = 65535
    path = tmp_path / "u.npy"
    np.save(path, arr)
    with pytest.warns(UserWarning):
        scan = load_scan(path)
    assert not scan.is_hu and scan.hu.max() == 1.0


def test_object_array_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ScanError) as err:
        load_scan(path)
    assert str(err.value).startswith(f"{path}: holds an object (pickled) array")


def test_4d_array_is_an_error(tmp_path):
    path = tmp_path / "4d.npy"
    np.save(path, np.zeros((2, 2, 40, 40), np.float32))
    with pytest.raises(ScanError, match="4-D array"):
        load_scan(path)


def test_label_npy_is_integer_and_checked_against_like(tmp_path):
    ct, lab = tmp_path / "ct.npy", tmp_path / "lab.npy"
    np.save(ct, np.zeros((2, 40, 40), np.int16))
    np.save(lab, np.ones((2, 40, 40), bool))
    with pytest.warns(UserWarning):
        scan = load_scan(ct)
    labels = load_label(lab, like=scan)
    assert labels.dtype == np.uint8 and labels.sum() == 2 * 40 * 40
    np.save(tmp_path / "wrong.npy", np.ones((3, 40, 40), np.uint8))
    with pytest.raises(ScanError, match=r"label shape \(3, 40, 40\) .* differs from the scan's \(2, 40, 40\)"):
        load_label(tmp_path / "wrong.npy", like=scan)
