"""What a path holds and how to read it: ``load_scan``, ``load_label`` and ``find_scans``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import EmptyInputError, ScanError, UnsupportedFormatError
from .dicom import is_dicom_file, load_dicom
from .image import load_image, load_image_label
from .metaimage import load_metaimage, load_metaimage_label
from .nifti import load_nifti, load_nifti_label
from .numpy import load_npy, load_npy_label
from .scan import Scan
from .validate import SUPPORTED_TEXT, require_exists, scan_format, suffix_format


def load_scan(path: str | os.PathLike, series_uid: str | None = None) -> Scan:
    """Read one CT scan from any supported source onto the internal grid.

    Parameters
    ----------
    path : str or PathLike
        A NIfTI file (.nii, .nii.gz), a DICOM series folder or a single DICOM file, a MetaImage
        (.mhd with its data file, or .mha), a PNG/TIFF slice, or a ``.npy`` array already in
        ``(z, y, x)`` order.
    series_uid : str, optional
        SeriesInstanceUID to read from a DICOM folder holding several series.

    Returns
    -------
    Scan
        ``hu`` float32 ``(z, y, x)`` (HU, or [0, 1] when ``scan.is_hu`` is False), spacing in mm.

    Raises
    ------
    ScanError
        Missing path, corrupt/truncated file, 4-D, NaN/inf voxels, slices < 32 px, not CT,
        inconsistent DICOM spacing, several DICOM series without ``series_uid``.
    UnsupportedFormatError
        An extension/content none of the loaders reads.
    """
    fmt = scan_format(path)
    if fmt == "nifti":
        return load_nifti(path)
    if fmt == "dicom":
        return load_dicom(path, series_uid=series_uid)
    if fmt == "image":
        return load_image(path)
    if fmt == "metaimage":
        return load_metaimage(path)
    return load_npy(path)


def load_label(path: str | os.PathLike, like: Scan | None = None) -> np.ndarray:
    """Read a label map / mask with the same reorientation rules as :func:`load_scan`.

    Parameters
    ----------
    path : str or PathLike
        NIfTI, MetaImage, PNG/TIFF or ``.npy`` label file (DICOM-SEG is not supported).
    like : Scan, optional
        When given, the labels must have the shape of ``like.hu``.

    Returns
    -------
    np.ndarray
        Integer ``(z, y, x)`` array with the file's values (a uint8 mask keeps 255; use ``> 0``).
    """
    fmt = scan_format(path)
    if fmt == "nifti":
        labels = load_nifti_label(path)
    elif fmt == "image":
        labels = load_image_label(path)
    elif fmt == "npy":
        labels = load_npy_label(path)
    elif fmt == "metaimage":
        labels = load_metaimage_label(path)
    else:
        raise UnsupportedFormatError("DICOM label maps are not supported; use NIfTI, MetaImage, PNG, TIFF or .npy", path)
    if like is not None and tuple(labels.shape) != tuple(like.hu.shape):
        raise ScanError(f"label shape {tuple(labels.shape)} (z, y, x) differs from the scan's "
                        f"{tuple(like.hu.shape)} ({like.source or 'scan'})", path)
    return labels


def find_scans(folder: str | os.PathLike) -> list[Path]:
    """Every scan under ``folder``, recursively, sorted by path.

    NIfTI, PNG/TIFF and ``.npy`` files count one each; a folder directly holding DICOM files
    (``*.dcm`` or files with the ``DICM`` preamble) counts once as one series. Hidden files and
    folders are skipped. A path to a single supported file returns ``[path]``.

    Raises
    ------
    ScanError
        ``folder`` does not exist.
    EmptyInputError
        No scan was found.
    """
    root = require_exists(folder)
    if root.is_file():
        scan_format(root)  # raises UnsupportedFormatError for anything we cannot read
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        has_dicom = False
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            f = here / name
            fmt = suffix_format(f)
            if fmt in ("nifti", "image", "npy", "metaimage"):
                found.append(f)
            elif not has_dicom and is_dicom_file(f):
                has_dicom = True
        if has_dicom:
            found.append(here)
    if not found:
        raise EmptyInputError(f"no scans found (looked for {SUPPORTED_TEXT})", root)
    return sorted(found)
