"""DICOM CT: one series from a folder (or a single slice file) → HU on the internal LPS grid.

Slices are sorted by ImagePositionPatient projected on the slice normal (row × column cosines of
ImageOrientationPatient), rescaled with RescaleSlope/Intercept, and stacked into the file grid
``(i = column, j = row, k = slice)`` whose voxel → RAS affine is built from IOP/IPP/PixelSpacing
(DICOM is LPS; RAS = diag(-1, -1, 1) · LPS). The same ``reorient_to_internal`` as NIfTI then applies.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import ScanError, UnsupportedFormatError
from .scan import Scan, reorient_to_internal, spacing_from_affine
from .validate import (DICOM_SUFFIXES, check_declared_size, checked_scan, has_dicom_preamble, quiet_logs, reading,
                       short_reason)

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


@contextlib.contextmanager
def quiet_pydicom():
    """Hold back pydicom's warnings and log lines about odd values (the reader reports what matters)."""
    with quiet_logs("pydicom"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
        warnings.filterwarnings("ignore", message=r"(?s).*(Invalid value for VR|VR of|number of bytes of pixel)")
        yield


def _read(path: Path, headers_only: bool) -> pydicom.Dataset:
    with reading(path, "DICOM"):
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=headers_only)
        except InvalidDicomError as e:
            raise ScanError("corrupt or truncated DICOM file: no valid DICOM header", path) from e


def _uid(ds: pydicom.Dataset) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "")


#: Shortest tail of the SeriesInstanceUID used in a series name (longer when needed to be unique).
_UID_TAIL = 8
#: How many series an error message lists.
_LIST_SERIES = 3
_NAME_RE = re.compile(r"^(?P<desc>[A-Za-z0-9-]+)_(?P<tail>[0-9-]+)$")


def _name_part(text: str) -> str:
    """``text`` reduced to letters, digits and single ``-`` (``"Chest 5.0 B20s"`` → ``"Chest-5-0-B20s"``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40].strip("-")


@functools.total_ordering
@dataclass(frozen=True)
class DicomSeriesRef:
    """One DICOM series of a folder that holds several: a scan for :func:`aeanomaly.io.load_scan`.

    :func:`aeanomaly.io.find_scans` returns one per multi-file series of such a folder. It behaves
    as a read-only path: ``os.fspath(ref)`` and ``str(ref)`` give ``<folder>/<name>``, a readable
    name unique in the folder (``<description>_<uid tail>``, e.g. ``Chest-5-0-B20s_25031349``)
    that does not exist on disk but that ``load_scan`` and ``find_scans`` accept again (so
    ``Path(ref)``, a CSV cell or a command-line argument still finds the series). ``ref.name``,
    ``ref.stem``, ``ref.parent``, ``ref.parents``, ``ref.relative_to()``, ``ref.as_posix()`` ... answer
    as that path would; ``ref.exists()`` is True while the folder is there, ``is_file()`` and
    ``is_dir()`` are False.

    Attributes
    ----------
    folder : Path
        The folder holding the series' files.
    series_uid : str
        SeriesInstanceUID.
    description : str
        SeriesDescription ("" when absent).
    name : str
        The unique name in the folder (derived from description and UID when not given).
    files : tuple of Path
        The series' files (not compared; empty means "look them up in the folder").
    """

    folder: Path
    series_uid: str
    description: str = ""
    name: str = ""
    files: tuple[Path, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "files", tuple(Path(f) for f in self.files))
        if not self.name:
            object.__setattr__(self, "name", series_name(self.description, self.series_uid))

    def __fspath__(self) -> str:
        return os.path.join(os.fspath(self.folder), self.name)

    def __str__(self) -> str:
        return self.__fspath__()

    def __lt__(self, other) -> bool:
        if not isinstance(other, (str, os.PathLike)):
            return NotImplemented
        return Path(os.fspath(self)) < Path(os.fspath(other))

    @property
    def path(self) -> Path:
        """The name as a plain :class:`~pathlib.Path` (``folder / name``; not on disk)."""
        return Path(os.fspath(self))

    @property
    def parent(self) -> Path:
        return self.folder

    @property
    def stem(self) -> str:
        return self.name

    @property
    def suffix(self) -> str:
        return ""

    @property
    def suffixes(self) -> list[str]:
        return []

    def exists(self) -> bool:
        """True while the series' folder exists."""
        return self.folder.is_dir()

    def is_dir(self) -> bool:
        return False

    def is_file(self) -> bool:
        return False

    def resolve(self, strict: bool = False) -> "DicomSeriesRef":
        return replace(self, folder=self.folder.resolve(strict=strict))

    def absolute(self) -> "DicomSeriesRef":
        return replace(self, folder=self.folder.absolute())

    def __getattr__(self, attr: str):
        # any other read-only Path attribute (parents, parts, relative_to, as_posix, with_name ...)
        if attr.startswith("_") or attr in ("folder", "name", "series_uid", "description", "files"):
            raise AttributeError(attr)
        return getattr(Path(os.path.join(os.fspath(self.folder), self.name)), attr)


def series_name(description: str, uid: str, tail: int = _UID_TAIL) -> str:
    """``<description>_<last tail characters of the UID>`` with only letters, digits and ``-``."""
    uid_part = re.sub(r"[^0-9]+", "-", uid).strip("-") or "0"
    return f"{_name_part(description) or 'series'}_{uid_part[-tail:].lstrip('-') or uid_part}"


@dataclass(frozen=True)
class _Series:
    uid: str
    description: str
    files: tuple[Path, ...]


#: (folder, mtime) → the folder's series; a change of the folder's entries renews it.
_INDEX: dict[str, tuple[tuple, tuple[dict[str, _Series], tuple[Path, ...]]]] = {}  # name, mtime, size per file
_INDEX_SIZE = 64


def _series_index(folder: Path) -> tuple[dict[str, _Series], tuple[Path, ...]]:
    """The image series of a folder (uid → files, by header) and the DICOM files it cannot read."""
    files = dicom_files(folder)
    try:
        key: tuple | None = tuple((f.name, st.st_mtime_ns, st.st_size, st.st_ino) for f in files
                                  for st in (f.stat(),))
    except OSError:
        key = None
    cache_key = os.fspath(folder.absolute())
    hit = _INDEX.get(cache_key)
    if key is not None and hit is not None and hit[0] == key:
        return hit[1]
    groups: dict[str, list[Path]] = defaultdict(list)
    descriptions: dict[str, str] = {}
    instances: dict[str, set[str]] = {}
    unreadable: list[Path] = []
    for f in files:
        try:
            ds = _read(f, headers_only=True)
            with reading(f, "DICOM"):  # elements are decoded lazily: reading them may fail too
                is_image = "Rows" in ds and "Columns" in ds  # skip DICOMDIR, SR and other non-image objects
                uid = _uid(ds)
                sop = str(ds.get("SOPInstanceUID", "") or "")
                description = str(ds.get("SeriesDescription", "") or "")
        except ScanError:
            unreadable.append(f)
            continue
        if is_image:
            known = instances.setdefault(uid, set())
            if sop and sop in known:
                continue  # the same instance exported twice: one copy is the series' slice
            known.add(sop)
            groups[uid].append(f)
            descriptions.setdefault(uid, description)
    index = {uid: _Series(uid, descriptions[uid], tuple(files)) for uid, files in groups.items()}
    result = (index, tuple(unreadable))
    if key is not None:
        if len(_INDEX) >= _INDEX_SIZE:
            _INDEX.pop(next(iter(_INDEX)))
        _INDEX[cache_key] = (key, result)
    return result


def _unique_names(index: dict[str, _Series]) -> dict[str, str]:
    """uid → a series name unique among the folder's series (UID tail lengthened as needed)."""
    names: dict[str, str] = {}
    tail = _UID_TAIL
    uids = sorted(index)
    while True:
        names = {u: series_name(index[u].description, u, tail) for u in uids}
        if len(set(names.values())) == len(names) or tail > 64:
            break
        tail += 4
    seen: dict[str, int] = {}
    for u in uids:  # identical UID tails (same description) left: number them
        n = seen.get(names[u], 0)
        seen[names[u]] = n + 1
        if n:
            names[u] = f"{names[u]}-{n + 1}"
    return names


def folder_scans(folder: str | os.PathLike) -> list[Path | DicomSeriesRef]:
    """The scans of a folder's DICOM files (not recursive).

    A folder with at most one series is one scan: ``[folder]``. A folder with several series gives
    one item per series: the file itself for a single-file series, a :class:`DicomSeriesRef` for a
    series of several files; files whose header cannot be read are listed as themselves (loading
    them reports why).
    """
    where = Path(folder)
    with quiet_pydicom():
        index, unreadable = _series_index(where)
    if len(index) <= 1:
        return [where]
    names = _unique_names(index)
    items: list[Path | DicomSeriesRef] = list(unreadable)
    for uid, series in index.items():
        if len(series.files) == 1:
            items.append(series.files[0])
        else:
            items.append(DicomSeriesRef(where, uid, series.description, names[uid], series.files))
    return sorted(items, key=lambda x: Path(os.fspath(x)))


def resolve_series_name(path: str | os.PathLike) -> DicomSeriesRef | None:
    """The series a name like ``<folder>/<description>_<uid tail>`` stands for, or None.

    Only a path that does not exist, whose parent holds several DICOM series and whose name has the
    form of :func:`series_name` is looked up. An outdated name (the folder gained series, so names
    grew longer) is still found when exactly one series has that description and UID tail.

    Raises
    ------
    ScanError
        The name matches several series.
    """
    p = Path(os.fspath(path))
    m = _NAME_RE.match(p.name)
    if m is None or p.exists() or not p.parent.is_dir():
        return None
    index, _ = _series_index(p.parent)
    if len(index) <= 1:
        return None
    names = _unique_names(index)
    for uid, name in names.items():
        if name == p.name:
            s = index[uid]
            return DicomSeriesRef(p.parent, uid, s.description, name, s.files)
    tail = m.group("tail")
    hits = [u for u in index if (_name_part(index[u].description) or "series") == m.group("desc")
            and re.sub(r"[^0-9]+", "-", u).strip("-").endswith(tail)]
    if len(hits) > 1:
        raise ScanError(f"the name matches {len(hits)} DICOM series; give series_uid", p)
    if not hits:
        return None
    s = index[hits[0]]
    return DicomSeriesRef(p.parent, hits[0], s.description, names[hits[0]], s.files)


def _describe(index: dict[str, _Series]) -> str:
    parts = []
    for uid in sorted(index)[:_LIST_SERIES]:
        s = index[uid]
        parts.append(f"{uid or '<no SeriesInstanceUID>'} '{s.description}' ({len(s.files)} files)")
    more = len(index) - _LIST_SERIES
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _pick_series(folder: Path, series_uid: str | None) -> tuple[str, list[Path]]:
    index, unreadable = _series_index(folder)
    if not index:
        if unreadable:
            _read(unreadable[0], headers_only=True)  # raises the reason
        raise ScanError("folder holds no DICOM image files (a folder of scans is read with find_scans)", folder)
    if series_uid is not None:
        if series_uid not in index:
            raise ScanError(f"series {series_uid} not found; the folder holds {len(index)}: {_describe(index)}",
                            folder)
        return series_uid, list(index[series_uid].files)
    if len(index) > 1:
        raise ScanError(f"folder holds {len(index)} DICOM series; find_scans lists each as a scan, or pick one "
                        f"with series_uid: {_describe(index)}", folder)
    if unreadable:
        _read(unreadable[0], headers_only=True)
    uid, series = next(iter(index.items()))
    return uid, list(series.files)


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


def _int_tag(ds: pydicom.Dataset, key: str, path: Path, default: int | None = None) -> int:
    """An integer element; ``default`` when absent or empty; ScanError when it is not a number."""
    value = ds.get(key, default)
    if value is None or value == "":
        value = default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ScanError(f"corrupt DICOM header: {key} is {str(value)[:40]!r}", path) from None


def _float_tag(ds: pydicom.Dataset, key: str, path: Path, default: float) -> float:
    """A finite number element (DS); ``default`` when absent or empty; ScanError otherwise."""
    value = ds.get(key, default)
    if value is None or value == "":
        return float(default)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ScanError(f"corrupt DICOM header: {key} is {str(value)[:40]!r}", path) from None
    if not np.isfinite(number):
        raise ScanError(f"corrupt DICOM header: {key} is {number}", path)
    return number


def _pixels_hu(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """One slice ``(rows, cols)`` float32 in HU."""
    if _int_tag(ds, "NumberOfFrames", path, 1) > 1:
        raise UnsupportedFormatError(f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported; "
                                     "use one file per slice or NIfTI", path)
    if _int_tag(ds, "SamplesPerPixel", path, 1) != 1:
        raise ScanError("colour DICOM image; a grayscale CT slice is expected", path)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    rows, cols = _int_tag(ds, "Rows", path), _int_tag(ds, "Columns", path)
    bits = _int_tag(ds, "BitsAllocated", path, default=16)
    if rows < 1 or cols < 1 or bits not in (1, 8, 16, 32, 64):
        raise ScanError(f"corrupt DICOM header: {rows}×{cols} pixels of {bits} bits", path)
    native = not _is_compressed(syntax)
    pixel_bytes = len(ds.PixelData) if native and "PixelData" in ds else None
    if pixel_bytes is not None and bits == 1:
        pixel_bytes *= 8
    expected = check_declared_size((rows, cols), max(bits // 8, 1), path, available=pixel_bytes, kind="DICOM")
    if pixel_bytes is not None and bits >= 8 and pixel_bytes > expected + 1:
        raise ScanError(f"corrupt DICOM file: {pixel_bytes:,} bytes of pixel data for the {rows}×{cols} "
                        f"{bits}-bit pixels ({expected:,} bytes) its header declares", path)
    try:
        raw = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom/decoder boundary
        if _is_compressed(syntax):
            raise ScanError(f"cannot decode {syntax.name} pixel data (corrupt, or no decoder "
                            f"installed): {short_reason(e, path)}", path) from e
        raise ScanError(f"corrupt or truncated DICOM file: {short_reason(e, path)}", path) from e
    if raw.shape != (rows, cols):
        raise ScanError(f"corrupt DICOM file: pixel data decode to shape {raw.shape}, the header declares "
                        f"{rows}×{cols}", path)
    slope = _float_tag(ds, "RescaleSlope", path, 1.0) or 1.0  # 0 (never valid) read as 1
    intercept = _float_tag(ds, "RescaleIntercept", path, 0.0)
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
        raise ScanError(f"invalid ImageOrientationPatient [{', '.join(f'{v:g}' for v in iop)}]", files[0])
    normal /= np.linalg.norm(normal)
    single = len(datasets) == 1
    ipps = np.stack([_floats(ds, "ImagePositionPatient", 3, f, default=[0, 0, 0] if single else None)
                     for ds, f in zip(datasets, files)])
    for ds, f in zip(datasets[1:], files[1:]):
        other = _floats(ds, "ImageOrientationPatient", 6, f, default=[1, 0, 0, 0, 1, 0])
        if not np.allclose(other, iop, atol=1e-4):
            raise ScanError("slices have different ImageOrientationPatient", where)
    proj = ipps @ normal
    inst = [_int_tag(ds, "InstanceNumber", f, 0) for ds, f in zip(datasets, files)]
    order = sorted(range(len(datasets)), key=lambda n: (proj[n], inst[n]))
    row_sp, col_sp = _floats(datasets[0], "PixelSpacing", 2, files[0], default=[1.0, 1.0])
    if single:
        thick = _float_tag(datasets[0], "SpacingBetweenSlices", files[0], 0.0) \
            or _float_tag(datasets[0], "SliceThickness", files[0], 0.0) or 1.0
        k_step = normal * abs(thick)
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
    path : str, PathLike or DicomSeriesRef
        A folder holding one series (non-DICOM files are ignored), one DICOM file, or a series of
        a folder holding several (as :func:`aeanomaly.io.find_scans` lists them).
    series_uid : str, optional
        SeriesInstanceUID to read when the folder holds several series.

    Returns
    -------
    Scan
        ``hu`` float32 ``(z, y, x)`` in HU; spacing ``(z, y, x)`` mm; ``meta`` holds ``format="dicom"``,
        ``hu=True``, ``series_uid``, ``series_description``, ``n_files`` and the ``input_*`` keys so
        results can be written back as NIfTI aligned with the series.
    """
    where = Path(os.fspath(path))
    with reading(where, "DICOM"), quiet_pydicom():  # elements are decoded lazily: any access may fail
        return _load_dicom(path, series_uid)


def _load_dicom(path, series_uid: str | None) -> Scan:
    if isinstance(path, DicomSeriesRef):
        where = Path(os.fspath(path))
        if series_uid is not None and series_uid != path.series_uid:
            raise ScanError(f"is series {path.series_uid}, not {series_uid}", where)
        series_uid = path.series_uid
        files = list(path.files)
        if not files or not all(f.is_file() for f in files):
            files = _pick_series(path.folder, series_uid)[1]
        uid = series_uid
    elif Path(path).is_dir():
        where = Path(path)
        uid, files = _pick_series(where, series_uid)
    else:
        where = Path(path)
        files = [where]
        uid = _uid(_read(where, headers_only=True))
    if len(files) > 1:  # the whole series against the voxel limit before any pixel is read
        first = _read(files[0], headers_only=True)
        rows, cols = _int_tag(first, "Rows", files[0], 0), _int_tag(first, "Columns", files[0], 0)
        check_declared_size((len(files), rows, cols), 4, where, kind="DICOM series")
    datasets, kept, seen = [], [], set()
    for f in files:
        ds = _read(f, headers_only=False)
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if sop and sop in seen:
            continue  # a duplicate file of one instance
        seen.add(sop)
        datasets.append(ds)
        kept.append(f)
    n_duplicates = len(files) - len(kept)
    files = kept
    for ds, f in zip(datasets, files):
        if "Rows" not in ds or "PixelData" not in ds:
            if "Rows" in ds and "PixelData" not in ds:
                raise ScanError("corrupt or truncated DICOM file: an image header without pixel data", f)
            raise ScanError("DICOM file holds no image (no Rows/PixelData: truncated, or not an image object)", f)
        _check_modality(ds, where)
    order, affine = _geometry(datasets, files, where)
    shapes = {(_int_tag(datasets[n], "Rows", files[n]), _int_tag(datasets[n], "Columns", files[n])) for n in order}
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
        "rescale_slope": _float_tag(first, "RescaleSlope", files[order[0]], 1.0) or 1.0,
        "rescale_intercept": _float_tag(first, "RescaleIntercept", files[order[0]], 0.0),
        "input_affine": affine,
        "input_shape": tuple(int(s) for s in data_ijk.shape),
        "input_ornt": ornt,
    }
    warnings = []
    if not meta["modality"]:
        warnings.append("Modality tag is missing; assumed CT")
    if n_duplicates:
        warnings.append(f"{n_duplicates} duplicate file(s) of the same SOPInstanceUID ignored")
    if warnings:
        meta["warnings"] = warnings
    return checked_scan(hu, spacing_from_affine(new_affine), new_affine, where, meta)
