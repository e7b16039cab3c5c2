"""What a path holds and how to read it: ``load_scan``, ``load_label`` and ``find_scans``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import EmptyInputError, ScanError, UnsupportedFormatError
from .dicom import DicomSeriesRef, folder_scans, is_dicom_file, load_dicom, resolve_series_name
from .image import load_image, load_image_label
from .metaimage import load_metaimage, load_metaimage_label
from .nifti import load_nifti, load_nifti_label
from .numpy import load_npy, load_npy_label
from .scan import Scan
from .validate import SUPPORTED_TEXT, reading, scan_format, suffix_format

_KIND = {"nifti": "NIfTI", "dicom": "DICOM", "image": "image", "metaimage": "MetaImage", "npy": ".npy"}


def resolve_scan(path: str | os.PathLike) -> Path | DicomSeriesRef:
    """What a scan path stands for: the path itself, or the DICOM series a series name names.

    ``DicomSeriesRef`` objects pass through; a path that does not exist but has the form
    ``<folder>/<description>_<uid tail>`` of a series of ``folder`` (as :func:`find_scans` names
    them, also after ``Path(ref)`` or ``str(ref)``) becomes that series.

    Raises
    ------
    ScanError
        Nothing exists at ``path`` and it names no series.
    """
    if isinstance(path, DicomSeriesRef):
        return path
    p = Path(path)
    if p.exists():
        return p
    with reading(p, "DICOM"):
        ref = resolve_series_name(p)
    if ref is None:
        raise ScanError("no such file or folder", p)
    return ref


def load_scan(path: str | os.PathLike, series_uid: str | None = None) -> Scan:
    """Read one CT scan from any supported source onto the internal grid.

    Parameters
    ----------
    path : str, PathLike or DicomSeriesRef
        A NIfTI file (.nii, .nii.gz), a DICOM series folder, a single DICOM file or a series of a
        multi-series folder as :func:`find_scans` lists it (also by its name, ``str(ref)``), a
        MetaImage (.mhd with its data file, or .mha), a PNG/TIFF slice, or a ``.npy`` array
        already in ``(z, y, x)`` order.
    series_uid : str, optional
        SeriesInstanceUID to read from a DICOM folder holding several series.

    Returns
    -------
    Scan
        ``hu`` float32 ``(z, y, x)`` (HU, or [0, 1] when ``scan.is_hu`` is False), spacing in mm.

    Raises
    ------
    ScanError
        Missing path, corrupt/truncated file, a header declaring more voxels than the file holds or
        than the voxel limit (:data:`aeanomaly.io.validate.MAX_VOXELS`, env ``AEANOMALY_MAX_VOXELS``),
        out of memory, 4-D, NaN/inf voxels, slices < 32 px, not CT, inconsistent DICOM spacing,
        several DICOM series without ``series_uid``.
    UnsupportedFormatError
        An extension/content none of the loaders reads.
    """
    target = resolve_scan(path)
    fmt = "dicom" if isinstance(target, DicomSeriesRef) else scan_format(target)
    # a safety net around the whole reader: out of memory, or a library failing on odd content,
    # costs this one scan and says so in one line (the readers raise their own ScanErrors first)
    with reading(target, _KIND[fmt]):
        if isinstance(target, DicomSeriesRef):
            return load_dicom(target, series_uid=series_uid)
        if fmt == "nifti":
            return load_nifti(target)
        if fmt == "dicom":
            return load_dicom(target, series_uid=series_uid)
        if fmt == "image":
            return load_image(target)
        if fmt == "metaimage":
            return load_metaimage(target)
        return load_npy(target)


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
    with reading(path, _KIND[fmt]):  # out of memory or a library failure: one ScanError naming the file
        if fmt == "nifti":
            labels = load_nifti_label(path)
        elif fmt == "image":
            labels = load_image_label(path)
        elif fmt == "npy":
            labels = load_npy_label(path)
        elif fmt == "metaimage":
            labels = load_metaimage_label(path)
        else:
            raise UnsupportedFormatError("DICOM label maps are not supported; use NIfTI, MetaImage, PNG, TIFF or .npy",
                                         path)
    if like is not None and tuple(labels.shape) != tuple(like.hu.shape):
        raise ScanError(f"label shape {tuple(labels.shape)} (z, y, x) differs from the scan's "
                        f"{tuple(like.hu.shape)} ({like.source or 'scan'})", path)
    return labels


def find_scans(folder: str | os.PathLike) -> list[Path | DicomSeriesRef]:
    """Every scan under ``folder``, recursively, sorted by path.

    NIfTI, MetaImage, PNG/TIFF and ``.npy`` files count one each. A folder directly holding DICOM
    files (``*.dcm`` or files with the ``DICM`` preamble) counts once when it holds one series, and
    once per series when it holds several: a single-file series is its file, a series of several
    files a :class:`~aeanomaly.io.dicom.DicomSeriesRef` (``str(ref)`` = ``<folder>/<description>_<uid
    tail>``, which :func:`load_scan` reads). Hidden files and folders are skipped. A path to a
    single supported file returns ``[path]``, a series name ``[ref]``.

    Raises
    ------
    ScanError
        ``folder`` does not exist.
    EmptyInputError
        No scan was found.
    """
    root = resolve_scan(folder)
    if isinstance(root, DicomSeriesRef):
        return [root]
    if root.is_file():
        scan_format(root)  # raises UnsupportedFormatError for anything we cannot read
        return [root]
    found: list[Path | DicomSeriesRef] = []
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
            found.extend(folder_scans(here))
    if not found:
        raise EmptyInputError(f"no scans found (looked for {SUPPORTED_TEXT})", root)
    return sorted(found, key=lambda x: Path(os.fspath(x)))
