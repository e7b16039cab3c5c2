"""DICOM CT: one series from a folder (or a single slice file) → HU on the internal LPS grid.

Slices are sorted by ImagePositionPatient projected on the slice normal (row × column cosines of
ImageOrientationPatient), rescaled with RescaleSlope/Intercept, and stacked into the file grid
``(i = column, j = row, k = slice)`` whose voxel → RAS affine is built from IOP/IPP/PixelSpacing
(DICOM is LPS; RAS = diag(-1, -1, 1) · LPS). The same ``reorient_to_internal`` as NIfTI then applies.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import ScanError, UnsupportedFormatError
from .scan import Scan, reorient_to_internal, spacing_from_affine
from .validate import DICOM_SUFFIXES, checked_scan, has_dicom_preamble, reading, short_reason

#: Largest accepted ratio between the widest and the narrowest slice gap.
MAX_SPACING_RATIO = 1.10
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a visible regular file named ``*.dcm`` or carrying the ``DICM`` preamble."""
    p = Path(path)
    if p.name.startswith(".") or not p.is_file():
        return False
    return p.name.lower().endswith(DICOM_SUFFIXES) or has_dicom_preamble(p)


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """DICOM files directly inside ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_dicom_file(p))


def _read(path: Path, headers_only: bool) -> pydicom.Dataset:
    with reading(path, "DICOM"):
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=headers_only)
        except InvalidDicomError as e:
            raise ScanError("corrupt or truncated DICOM file: no valid DICOM header", path) from e


def _uid(ds: pydicom.Dataset) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "")


def series_in_folder(folder: str | os.PathLike) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Group the image files of a folder by SeriesInstanceUID (headers only; non-images skipped)."""
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for f in dicom_files(folder):
        ds = _read(f, headers_only=True)
        if "Rows" in ds and "Columns" in ds:  # skip DICOMDIR, SR and other non-image objects
            groups[_uid(ds)].append((f, ds))
    return dict(groups)


def _describe(groups: dict[str, list]) -> str:
    parts = []
    for uid, items in sorted(groups.items()):
        desc = str(items[0][1].get("SeriesDescription", "") or "")
        parts.append(f"{uid or '<no SeriesInstanceUID>'} '{desc}' ({len(items)} files)")
    return "; ".join(parts)


def _pick_series(folder: Path, series_uid: str | None) -> tuple[str, list[Path]]:
    groups = series_in_folder(folder)
    if not groups:
        raise ScanError("folder holds no DICOM image files (a folder of scans is read with find_scans)", folder)
    if series_uid is not None:
        if series_uid not in groups:
            raise ScanError(f"series {series_uid} not found; the folder holds: {_describe(groups)}", folder)
        return series_uid, [f for f, _ in groups[series_uid]]
    if len(groups) > 1:
        raise ScanError(f"folder holds {len(groups)} DICOM series, pick one with series_uid: {_describe(groups)}",
                        folder)
    uid, items = next(iter(groups.items()))
    return uid, [f for f, _ in items]


def _floats(ds: pydicom.Dataset, key: str, n: int, path: Path, default=None) -> np.ndarray:
    value = ds.get(key)
    if value is None or value == "":
        if default is None:
            raise ScanError(f"missing {key}", path)
        return np.asarray(default, dtype=float)
    try:
        arr = np.asarray([float(v) for v in (value if n > 1 else [value])], dtype=float)
    except (TypeError, ValueError) as e:
        raise ScanError(f"invalid {key} {value!r}", path) from e
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise ScanError(f"invalid {key} {value!r}", path)
    return arr


def _check_modality(ds: pydicom.Dataset, path: Path) -> str:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality != "CT":
        raise ScanError(f"Modality is {modality}, not CT", path)
    return modality


def _is_compressed(syntax) -> bool:
    try:
        return bool(syntax is not None and syntax.is_compressed)
    except ValueError:  # not a known transfer syntax
        return False


def _pixels_hu(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """One slice ``(rows, cols)`` float32 in HU."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise UnsupportedFormatError(f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported; "
                                     "use one file per slice or NIfTI", path)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise ScanError("colour DICOM image; a grayscale CT slice is expected", path)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        raw = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom/decoder boundary
        if _is_compressed(syntax):
            raise ScanError(f"cannot decode {syntax.name} pixel data (corrupt, or no decoder "
                            f"installed): {short_reason(e, path)}", path) from e
        raise ScanError(f"corrupt or truncated DICOM file: {short_reason(e, path)}", path) from e
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def _slice_gaps(positions: np.ndarray, path: Path) -> np.ndarray:
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        n_dup = int(np.count_nonzero(gaps < 1e-3))
        raise ScanError(f"{n_dup} slices share a position with another; the series may hold several acquisitions",
                        path)
    lo, hi = float(gaps.min()), float(gaps.max())
    if hi > lo * MAX_SPACING_RATIO:
        raise ScanError(f"inconsistent slice spacing: min {lo:.3f} mm, max {hi:.3f} mm (more than 10% apart)", path)
    return gaps


def _geometry(datasets: list[pydicom.Dataset], files: list[Path], where: Path):
    """Sort order, in-file RAS affine ``(i=col, j=row, k=slice)`` of a series."""
    iop = _floats(datasets[0], "ImageOrientationPatient", 6, files[0], default=[1, 0, 0, 0, 1, 0])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if np.linalg.norm(normal) < 1e-6:
        raise ScanError(f"invalid ImageOrientationPatient {list(iop)}", files[0])
    normal /= np.linalg.norm(normal)
    single = len(datasets) == 1
    ipps = np.stack([_floats(ds, "ImagePositionPatient", 3, f, default=[0, 0, 0] if single else None)
                     for ds, f in zip(datasets, files)])
    for ds, f in zip(datasets[1:], files[1:]):
        other = _floats(ds, "ImageOrientationPatient", 6, f, default=[1, 0, 0, 0, 1, 0])
        if not np.allclose(other, iop, atol=1e-4):
            raise ScanError("slices have different ImageOrientationPatient", where)
    proj = ipps @ normal
    inst = [int(ds.get("InstanceNumber", 0) or 0) for ds in datasets]
    order = sorted(range(len(datasets)), key=lambda n: (proj[n], inst[n]))
    row_sp, col_sp = _floats(datasets[0], "PixelSpacing", 2, files[0], default=[1.0, 1.0])
    if single:
        thick = datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0
        k_step = normal * float(thick)
    else:
        _slice_gaps(proj[order], where)
        k_step = (ipps[order[-1]] - ipps[order[0]]) / (len(order) - 1)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_sp  # i: along a row, i.e. increasing column index
    lps[:3, 1] = col_cos * row_sp  # j: down a column, i.e. increasing row index
    lps[:3, 2] = k_step
    lps[:3, 3] = ipps[order[0]]
    return order, _LPS_TO_RAS @ lps


def load_dicom(path: str | os.PathLike, series_uid: str | None = None) -> Scan:
    """Read a DICOM CT series (a folder) or a single DICOM slice file.

    Parameters
    ----------
    path : str or PathLike
        A folder holding one series (non-DICOM files are ignored), or one DICOM file.
    series_uid : str, optional
        SeriesInstanceUID to read when the folder holds several series.

    Returns
    -------
    Scan
        ``hu`` float32 ``(z, y, x)`` in HU; spacing ``(z, y, x)`` mm; ``meta`` holds ``format="dicom"``,
        ``hu=True``, ``series_uid``, ``series_description``, ``n_files`` and the ``input_*`` keys so
        results can be written back as NIfTI aligned with the series.
    """
    where = Path(path)
    if where.is_dir():
        uid, files = _pick_series(where, series_uid)
    else:
        files = [where]
        uid = _uid(_read(where, headers_only=True))
    datasets = [_read(f, headers_only=False) for f in files]
    for ds, f in zip(datasets, files):
        if "Rows" not in ds or "PixelData" not in ds:
            raise ScanError("DICOM file holds no image", f)
        _check_modality(ds, where)
    order, affine = _geometry(datasets, files, where)
    shapes = {(int(datasets[n].Rows), int(datasets[n].Columns)) for n in order}
    if len(shapes) > 1:
        raise ScanError(f"slices have different sizes: {sorted(shapes)}", where)
    slices = [_pixels_hu(datasets[n], files[n]) for n in order]
    data_ijk = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (cols, rows, slices)
    hu, new_affine, ornt = reorient_to_internal(data_ijk, affine)
    first = datasets[order[0]]
    meta = {
        "format": "dicom",
        "hu": True,
        "series_uid": uid,
        "series_description": str(first.get("SeriesDescription", "") or ""),
        "modality": str(first.get("Modality", "") or ""),
        "n_files": len(files),
        "rescale_slope": float(first.get("RescaleSlope", 1) or 1),
        "rescale_intercept": float(first.get("RescaleIntercept", 0) or 0),
        "input_affine": affine,
        "input_shape": tuple(int(s) for s in data_ijk.shape),
        "input_ornt": ornt,
    }
    if not meta["modality"]:
        meta["warnings"] = ["Modality tag is missing; assumed CT"]
    return checked_scan(hu, spacing_from_affine(new_affine), new_affine, where, meta)
