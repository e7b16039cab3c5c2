"""Scan input/output: read CT from NIfTI, DICOM, PNG/TIFF and .npy onto one internal grid; write atomically.

Every loader returns a :class:`Scan` whose ``hu`` is float32 ``(z, y, x)`` on the internal LPS grid
(see :mod:`aeanomaly.io.scan`); results go back to the input's own geometry with
:func:`to_input_geometry` / :func:`save_like_input`.
"""

from .discover import find_scans, load_label, load_scan
from .scan import Scan, internal_affine, to_input_geometry
from .writers import atomic_dir, atomic_path, save_like_input, save_nifti, write_text

__all__ = [
    "Scan",
    "atomic_dir",
    "atomic_path",
    "find_scans",
    "internal_affine",
    "load_label",
    "load_scan",
    "save_like_input",
    "save_nifti",
    "to_input_geometry",
    "write_text",
]
