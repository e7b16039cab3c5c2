"""``.npy`` arrays taken as already in the internal ``(z, y, x)`` order, 1 mm spacing assumed."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import ScanError
from .scan import Scan, internal_affine
from .validate import check_declared_size, checked_scan, file_size, intensity_volume, label_array, reading


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """The array of a ``.npy`` file (no pickle), 2-D ``(y, x)`` promoted to ``(1, y, x)``.

    Raises ScanError for object arrays, corrupt files and arrays that are not 2-D or 3-D.
    """
    p = Path(path)
    with reading(p, ".npy"):
        with open(p, "rb") as fh:
            magic = fh.read(6)
            if magic == b"\x93NUMPY":
                fh.seek(0)
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                data_start = fh.tell()
    if magic != b"\x93NUMPY":
        raise ScanError("corrupt or truncated .npy file: no NumPy header", p)
    if dtype.hasobject:
        raise ScanError("holds an object (pickled) array, which is never loaded; save numbers only", p)
    if len(shape) not in (2, 3):
        raise ScanError(f"{len(shape)}-D array (shape {shape}); a 2-D (y, x) or 3-D (z, y, x) array expected", p)
    check_declared_size(shape, dtype.itemsize, p, available=file_size(p) - data_start, kind=".npy")
    try:
        with reading(p, ".npy"):
            arr = np.load(str(p), allow_pickle=False)
    except ScanError as e:
        if "allow_pickle" in str(e.__cause__):
            raise ScanError("holds an object (pickled) array, which is never loaded; save numbers only", p) from e
        raise
    if not isinstance(arr, np.ndarray):  # np.load of a .npz renamed .npy gives an NpzFile
        raise ScanError("not a single .npy array", p)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ScanError(f"{arr.ndim}-D array (shape {arr.shape}); a 2-D (y, x) or 3-D (z, y, x) array expected", p)
    return arr


def load_npy(path: str | os.PathLike) -> Scan:
    """Read a ``.npy`` volume as a scan; warns that the 1 mm spacing is assumed.

    Returns
    -------
    Scan
        ``hu`` float32 ``(z, y, x)``: HU unless the dtype is uint8/uint16 (then [0, 1],
        ``meta["hu"]`` False); spacing ``(1, 1, 1)`` mm; ``meta``: ``format="npy"``, ``hu``, ``dtype``.
    """
    p = Path(path)
    arr = read_npy(p)
    values, is_hu = intensity_volume(arr, p)
    warnings.warn(f"{p}: .npy carries no voxel spacing; assuming 1 mm and (z, y, x) LPS axes", UserWarning,
                  stacklevel=2)
    spacing = (1.0, 1.0, 1.0)
    meta = {"format": "npy", "hu": is_hu, "dtype": str(arr.dtype), "spacing_known": False}
    return checked_scan(values, spacing, internal_affine(spacing), p, meta)


def load_npy_label(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.npy`` label map as an integer ``(z, y, x)`` array."""
    p = Path(path)
    return label_array(read_npy(p), p)
