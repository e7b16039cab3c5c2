"""Scan input/output: read CT from NIfTI, DICOM, MetaImage, PNG/TIFF and .npy onto one internal grid.

Every loader returns a :class:`Scan` whose ``hu`` is float32 ``(z, y, x)`` on the internal LPS grid
(see :mod:`aeanomaly.io.scan`); results go back to the input's own geometry with
:func:`to_input_geometry` / :func:`save_like_input`.

Reading is bounded: each reader checks the size a header declares against the voxel limit
(:data:`aeanomaly.io.validate.MAX_VOXELS`, 1024×1024×2048 voxels; environment variable
``AEANOMALY_MAX_VOXELS``) and against the bytes the file holds before it allocates, so a file that
lies about its size is a one-line :class:`~aeanomaly.errors.ScanError` naming it, at the cost of its
real bytes; running out of memory inside a reader is a ScanError too.

:func:`find_scans` lists a folder of several DICOM series as one scan per series
(:class:`DicomSeriesRef` for a series of several files). :data:`SCAN_SUFFIXES` is the one table of
scan file suffixes and :func:`scan_stem` a file name without it.
"""

from .dicom import DicomSeriesRef
from .discover import find_scans, load_label, load_scan, resolve_scan
from .scan import Scan, internal_affine, to_input_geometry
from .validate import SCAN_SUFFIXES, scan_stem
from .writers import atomic_dir, atomic_path, save_like_input, save_nifti, write_text

__all__ = [
    "DicomSeriesRef",
    "SCAN_SUFFIXES",
    "Scan",
    "atomic_dir",
    "atomic_path",
    "find_scans",
    "internal_affine",
    "load_label",
    "load_scan",
    "resolve_scan",
    "save_like_input",
    "save_nifti",
    "scan_stem",
    "to_input_geometry",
    "write_text",
]
