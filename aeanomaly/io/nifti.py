"""NIfTI (.nii, .nii.gz) scans and label maps via nibabel, reoriented to the internal LPS grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import nibabel as nib

from ..errors import ScanError
from .scan import Scan, reorient_to_internal, spacing_from_affine
from .validate import check_affine, checked_scan, label_array, reading


def _volume_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """3-D ``(i, j, k)`` shape for a header shape: 2-D → one slice, trailing 1-dims squeezed.

    Raises ScanError for 1-D images and real 4-D/5-D ones (any dim beyond the third > 1).
    """
    if len(shape) < 2:
        raise ScanError(f"{len(shape)}-D image (shape {shape}); a 2-D slice or 3-D volume expected", path)
    if len(shape) > 3 and any(int(s) != 1 for s in shape[3:]):
        dims = "×".join(str(int(s)) for s in shape)
        raise ScanError(f"{len(shape)}-D image (shape {dims}); one 3-D volume expected", path)
    full = tuple(int(s) for s in shape[:3]) + (1,) * (3 - min(len(shape), 3))
    return full  # type: ignore[return-value]


def _read(path: str | os.PathLike, as_label: bool):
    """Read the file's ``(i, j, k)`` data (scaled by scl_slope/inter) and its RAS affine."""
    p = Path(path)
    with reading(p, "NIfTI"):
        img = nib.load(str(p))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ScanError(f"not a NIfTI image ({type(img).__name__})", p)
        header_shape = tuple(int(s) for s in img.shape)
        shape = _volume_shape(header_shape, p)
        if as_label:
            data = np.asanyarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32)
        affine = img.affine
    affine = check_affine(affine, p)
    return np.reshape(data, shape), affine, header_shape, img.get_data_dtype()


def _reorient(data_ijk: np.ndarray, affine: np.ndarray, path: Path):
    try:
        return reorient_to_internal(data_ijk, affine)
    except Exception as e:  # nibabel raises ValueError/IndexError on axes it cannot resolve
        raise ScanError(f"cannot resolve the orientation of the affine: {e}", path) from e


def load_nifti(path: str | os.PathLike) -> Scan:
    """Read a NIfTI CT volume in HU on the internal grid.

    Parameters
    ----------
    path : str or PathLike
        ``.nii`` or ``.nii.gz``; 2-D images become one slice, ``(X, Y, Z, 1)`` is squeezed.

    Returns
    -------
    Scan
        ``hu`` float32 ``(z, y, x)`` in HU (scl_slope/inter applied), spacing ``(z, y, x)`` mm;
        ``meta`` holds ``format="nifti"``, ``hu=True``, ``input_affine``, ``input_shape``,
        ``input_ornt`` (to write results back in the file's own grid), ``file_shape``, ``file_dtype``.
    """
    p = Path(path)
    data, affine, header_shape, dtype = _read(p, as_label=False)
    hu, new_affine, ornt = _reorient(data, affine, p)
    meta = {
        "format": "nifti",
        "hu": True,
        "input_affine": affine,
        "input_shape": tuple(int(s) for s in data.shape),
        "input_ornt": ornt,
        "file_shape": header_shape,
        "file_dtype": str(dtype),
    }
    return checked_scan(hu, spacing_from_affine(new_affine), new_affine, p, meta)


def load_nifti_label(path: str | os.PathLike) -> np.ndarray:
    """Read a NIfTI label map / mask as an integer ``(z, y, x)`` array on the internal grid.

    Integer on-disk types are kept (uint8 masks with 255 stay 255); float maps must hold integers.
    """
    p = Path(path)
    data, affine, _, _ = _read(p, as_label=True)
    labels, _, _ = _reorient(label_array(data, p), affine, p)
    return labels
