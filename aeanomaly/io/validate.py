"""Checks shared by every scan loader: path, format, finiteness, size, and error wrapping.

Every failure is raised from the :mod:`aeanomaly.errors` family with a one-line reason; the
underlying library exception is chained (``raise ... from e``) but never printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import AeAnomalyError, ConfigError, ScanError, UnsupportedFormatError
from .scan import Scan

#: Smallest accepted in-plane size (pixels, along y and along x).
MIN_INPLANE_PX = 32

#: Scan file suffixes of each format (lower case, with the leading dot).
NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".tiff", ".tif")
PNG_SUFFIXES = (".png",)
IMAGE_SUFFIXES = TIFF_SUFFIXES + PNG_SUFFIXES
NPY_SUFFIXES = (".npy",)
DICOM_SUFFIXES = (".dcm",)
METAIMAGE_SUFFIXES = (".mhd", ".mha")

#: Every suffix a scan reader accepts, longest first, so the first ``name.endswith`` match is the
#: whole suffix (``.nii.gz`` before ``.nii``). The one table: code elsewhere imports it.
SCAN_SUFFIXES: tuple[str, ...] = tuple(sorted(
    NIFTI_SUFFIXES + METAIMAGE_SUFFIXES + NPY_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES,
    key=lambda s: -len(s)))

#: Format of each suffix (``nifti``, ``metaimage``, ``npy``, ``image``, ``dicom``).
SUFFIX_FORMAT: dict[str, str] = {
    **{s: "nifti" for s in NIFTI_SUFFIXES}, **{s: "metaimage" for s in METAIMAGE_SUFFIXES},
    **{s: "npy" for s in NPY_SUFFIXES}, **{s: "image" for s in IMAGE_SUFFIXES},
    **{s: "dicom" for s in DICOM_SUFFIXES},
}

SUPPORTED_TEXT = "NIfTI (.nii, .nii.gz), DICOM (a series folder or .dcm), MetaImage (.mhd, .mha), PNG, TIFF or .npy"

_MAX_REASON = 160

#: Default largest number of voxels a reader allocates for one scan: 1024×1024×2048 (2^31), so a
#: 1024×1024×2000 CT passes. Override with the environment variable ``AEANOMALY_MAX_VOXELS`` (an
#: integer, read at every load) or by setting this module constant.
MAX_VOXELS = 1024 * 1024 * 2048
MAX_VOXELS_ENV = "AEANOMALY_MAX_VOXELS"

#: Largest ratio between decompressed and compressed size deflate (gzip, zlib, PNG) can reach
#: (the format's limit is about 1032:1); a header declaring more data than this holds is a lie.
MAX_DEFLATE_RATIO = 1100


def short_reason(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """First line of an exception's message, trimmed; the class name when the message is empty.

    The full ``path`` (already at the start of our messages) is shortened to its file name, and a
    long line is cut at its first sentence, then at ``_MAX_REASON`` characters.
    """
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    if path is not None:
        line = line.replace(os.fspath(path), Path(path).name)
    if len(line) > _MAX_REASON:
        for sep in (" - ", ". "):
            if sep in line:
                line = line.split(sep, 1)[0]
                break
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


@contextlib.contextmanager
def reading(path: str | os.PathLike, kind: str):
    """Turn any library error raised inside the block into ``ScanError("corrupt or truncated ...")``.

    Errors of the aeanomaly family pass through unchanged; ``MemoryError`` becomes a ScanError
    (``out of memory reading ...``) and an ``OSError`` of the file system (with an errno) keeps its
    reason (``cannot read ...: Permission denied``).
    """
    try:
        yield
    except (AeAnomalyError, KeyboardInterrupt):
        raise
    except MemoryError as e:
        raise ScanError(f"out of memory reading this {kind} file (its header may declare a wrong size)", path) from e
    except OSError as e:
        if e.errno is None:  # gzip.BadGzipFile, Pillow's "image file is truncated" ...: the content
            raise ScanError(f"corrupt or truncated {kind} file: {short_reason(e, path)}", path) from e
        raise ScanError(f"cannot read {kind} file: {e.strerror or short_reason(e, path)}", path) from e
    except Exception as e:  # noqa: BLE001 - library boundary: any failure means an unreadable file
        raise ScanError(f"corrupt or truncated {kind} file: {short_reason(e, path)}", path) from e


@contextlib.contextmanager
def quiet_logs(*names: str):
    """Silence the loggers of reader libraries inside the block (tifffile, nibabel and pydicom log odd
    headers at WARNING/ERROR level, which Python prints on stderr); the reader reports what matters."""
    logs = [logging.getLogger(n) for n in names]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def max_voxels() -> int:
    """The voxel limit in force: ``$AEANOMALY_MAX_VOXELS`` when set, else :data:`MAX_VOXELS`.

    Raises
    ------
    ConfigError
        The environment variable is set but is not a positive integer.
    """
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return int(MAX_VOXELS)
    try:
        value = int(float(raw)) if ("e" in raw.lower() or "." in raw) else int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_VOXELS_ENV}={raw!r} is not a positive integer number of voxels")
    return value


def _dims(shape) -> str:
    return "×".join(str(int(s)) for s in shape)


def check_declared_size(shape, itemsize: int, path: str | os.PathLike, *, available: int | None = None,
                        compressed: int | None = None, kind: str = "") -> int:
    """Check a header's declared array against the voxel limit and the bytes the file holds.

    Called by every reader after parsing a header and before allocating the data.

    Parameters
    ----------
    shape : sequence of int
        Declared dimensions (any order).
    itemsize : int
        Bytes per voxel as stored.
    path : str or PathLike
        File named in the error.
    available : int, optional
        Bytes of voxel data the file holds (uncompressed data): less than declared is truncation.
    compressed : int, optional
        Size in bytes of deflate-compressed data: more declared than ``MAX_DEFLATE_RATIO`` times
        this cannot be there.
    kind : str
        Format name for messages (``"NIfTI"`` ...).

    Returns
    -------
    int
        The number of bytes of voxel data declared.

    Raises
    ------
    ScanError
        Negative dimensions, more voxels than :func:`max_voxels`, or fewer bytes than declared.
    """
    dims = [int(s) for s in shape]
    what = f"{kind} header" if kind else "header"
    if any(d < 0 for d in dims):
        raise ScanError(f"corrupt {what}: negative dimension in {_dims(dims)}", path)
    n = 1
    for d in dims:
        n *= d
    limit = max_voxels()
    if n > limit:
        raise ScanError(f"{what} declares {_dims(dims)} = {n:,} voxels, more than the limit of {limit:,} "
                        f"(set {MAX_VOXELS_ENV} to read larger scans)", path)
    nbytes = n * int(itemsize)
    if available is not None and available < nbytes:
        raise ScanError(f"corrupt or truncated {kind + ' ' if kind else ''}file: {what} declares {_dims(dims)} "
                        f"voxels ({nbytes:,} bytes) but the file holds {max(int(available), 0):,} bytes of data", path)
    if compressed is not None and nbytes > MAX_DEFLATE_RATIO * max(int(compressed), 0) + 4096:
        raise ScanError(f"corrupt or truncated {kind + ' ' if kind else ''}file: {what} declares {_dims(dims)} "
                        f"voxels ({nbytes:,} bytes), more than {int(compressed):,} compressed bytes can hold", path)
    return nbytes


def file_size(path: str | os.PathLike) -> int:
    """Size of a file in bytes (ScanError when it cannot be read)."""
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise ScanError(f"cannot read file: {e.strerror or type(e).__name__}", path) from e


def require_exists(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path, or raise ScanError when nothing is there."""
    p = Path(path)
    if not p.exists():
        raise ScanError("no such file or folder", p)
    return p


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def scan_suffix(path: str | os.PathLike) -> str:
    """The scan suffix a file name ends with (lower case, from :data:`SCAN_SUFFIXES`), or ``""``."""
    name = os.path.basename(os.fspath(path).rstrip("/\\")).lower()
    for suf in SCAN_SUFFIXES:
        if name.endswith(suf) and len(name) > len(suf):
            return suf
    return ""


def scan_stem(path: str | os.PathLike) -> str:
    """File name without its scan suffix: ``a/ct.nii.gz`` → ``ct``, ``b/x.MHD`` → ``x``.

    A name without a scan suffix (a DICOM folder, a DICOM file without extension) is returned whole;
    so is a series reference from :func:`find_scans` (its ``os.fspath`` ends with a readable name).
    The case of the stem is kept.
    """
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    suf = scan_suffix(name)
    return name[: len(name) - len(suf)] if suf else name


def suffix_format(path: str | os.PathLike) -> str | None:
    """Format named by a file's extension: ``nifti``, ``image``, ``npy``, ``dicom``, ``metaimage`` or None."""
    return SUFFIX_FORMAT.get(scan_suffix(path))


def scan_format(path: str | os.PathLike) -> str:
    """Which loader reads ``path``: ``nifti``, ``dicom`` (file, folder, series ref), ``metaimage``, ``image``, ``npy``.

    Raises
    ------
    ScanError
        Nothing exists at ``path``.
    UnsupportedFormatError
        A file whose extension and content are none of the supported formats.
    """
    if hasattr(path, "series_uid") and hasattr(path, "folder"):  # a DicomSeriesRef from find_scans
        return "dicom"
    p = require_exists(path)
    if p.is_dir():
        return "dicom"
    fmt = suffix_format(p)
    if fmt is not None:
        return fmt
    if has_dicom_preamble(p):
        return "dicom"
    ext = "".join(p.suffixes[-2:]) or "no extension"
    raise UnsupportedFormatError(f"unsupported file type ({ext}); expected {SUPPORTED_TEXT}", p)


def unsigned_to_unit(arr: np.ndarray) -> np.ndarray:
    """uint8/uint16 intensities divided by the dtype maximum: float32 in [0, 1] (a new array)."""
    return (arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)).astype(np.float32)


def is_windowed_dtype(dtype: np.dtype) -> bool:
    """True for 8/16-bit unsigned (and bool) data, which is read as already-windowed, not HU."""
    return np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(bool))


def intensity_volume(arr: np.ndarray, path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Float32 copy of image/array data and whether it is HU.

    int/float data are HU; uint8/uint16 are scaled to [0, 1] and flagged not-HU; bool → 0/1, not-HU.
    """
    dtype = np.dtype(arr.dtype)
    if dtype == np.dtype(bool):
        return arr.astype(np.float32), False
    if dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return unsigned_to_unit(arr), False
    if dtype.kind not in "iuf":
        raise ScanError(f"unsupported pixel type {dtype}; integer or float data expected", path)
    return arr.astype(np.float32), True


def label_array(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Integer copy of label data: integer dtypes kept, bool → uint8, integral floats → int32."""
    dtype = np.dtype(arr.dtype)
    if dtype == np.dtype(bool):
        return arr.astype(np.uint8)
    if dtype.kind in "iu":
        return np.array(arr, copy=True)
    if dtype.kind != "f":
        raise ScanError(f"unsupported label type {dtype}; integer data expected", path)
    check_finite(arr, path)
    if not np.array_equal(arr, np.round(arr)):
        frac = arr[arr != np.round(arr)].flat[0]
        raise ScanError(f"label map holds non-integer values (e.g. {float(frac):g}); integer labels expected", path)
    return arr.astype(np.int32)


def check_finite(arr: np.ndarray, path: str | os.PathLike) -> None:
    """Raise ScanError when float data holds NaN or ±inf voxels."""
    if np.dtype(arr.dtype).kind not in "fc":
        return
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ScanError(f"contains {bad} NaN/inf voxels", path)


def check_inplane_size(shape_zyx: tuple[int, ...], path: str | os.PathLike) -> None:
    """Raise ScanError when the slices are smaller than MIN_INPLANE_PX along y or x."""
    ny, nx = int(shape_zyx[-2]), int(shape_zyx[-1])
    if ny < MIN_INPLANE_PX or nx < MIN_INPLANE_PX:
        raise ScanError(f"image is {ny}×{nx} pixels (y×x); at least {MIN_INPLANE_PX}×{MIN_INPLANE_PX} needed", path)


def check_affine(affine: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Return the affine as float 4×4, or raise ScanError if it is non-finite or singular."""
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ScanError("affine is missing or not finite", path)
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ScanError("affine is degenerate (zero voxel size or collinear axes)", path)
    return aff


def checked_scan(hu: np.ndarray, spacing, affine: np.ndarray, path: str | os.PathLike, meta: dict) -> Scan:
    """Build a :class:`Scan` after the shared checks (3-D float32, finite, in-plane ≥ 32 px).

    Parameters
    ----------
    hu : np.ndarray
        ``(z, y, x)`` volume, HU (or [0, 1] intensities when ``meta["hu"]`` is False).
    spacing : sequence of float
        ``(z, y, x)`` voxel size in mm.
    affine : np.ndarray
        4×4 internal index ``(x, y, z)`` → RAS mm.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or 0 in hu.shape:
        raise ScanError(f"volume has shape {hu.shape}; a non-empty 3-D (z, y, x) volume expected", path)
    check_finite(hu, path)
    check_inplane_size(hu.shape, path)
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_t):
        raise ScanError(f"voxel spacing {spacing_t} mm is not positive", path)
    hu32 = hu if hu.dtype == np.float32 else hu.astype(np.float32)
    return Scan(hu=np.ascontiguousarray(hu32), spacing=spacing_t,  # type: ignore[arg-type]
                affine=np.asarray(affine, dtype=float), source=os.fspath(path), meta=meta)
