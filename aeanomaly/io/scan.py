"""The :class:`Scan` container and the one orientation convention of the toolkit.

Internal convention
-------------------
``Scan.hu`` is float32 with axes ``(z, y, x)``. The voxel axes point to the patient's
**x → Left, y → Posterior, z → Superior** (LPS), so ``hu[k]`` shown with ``imshow`` is an axial
slice in the radiological convention (anterior at the top, patient's right on the image's left),
whatever the orientation of the file it came from.

``Scan.affine`` is the 4×4 matrix that maps an internal voxel index written as ``(x, y, z, 1)``
(that is ``hu[z, y, x]``) to RAS+ millimetres, exactly like a NIfTI affine maps ``(i, j, k)``.

To write a result back in the *input's own* voxel grid (so it overlays the original file in any
viewer), :func:`to_input_geometry` undoes the reorientation recorded in ``meta["input_ornt"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import nibabel.orientations as nio

#: Axis codes of the internal grid for index order (x, y, z).
INTERNAL_AXCODES = ("L", "P", "S")


@dataclass
class Scan:
    """One CT scan in Hounsfield units.

    Attributes
    ----------
    hu : np.ndarray
        float32 ``(z, y, x)``, Hounsfield units. When ``meta["hu"]`` is False (8/16-bit images that
        are already windowed), values are intensities scaled to [0, 1] instead.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in mm.
    affine : np.ndarray
        4×4, internal voxel index ``(x, y, z, 1)`` → RAS+ mm.
    source : str
        Path the scan was read from.
    meta : dict
        Free-form facts: ``hu`` (bool), ``format``, ``input_affine``, ``input_shape``,
        ``input_ornt`` (how to go back to the file's own grid), DICOM tags, warnings.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu.shape)  # type: ignore[return-value]

    @property
    def is_hu(self) -> bool:
        return bool(self.meta.get("hu", True))

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])


def internal_affine(spacing_zyx, origin_ras=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine of an internal LPS grid with the given ``(z, y, x)`` spacing in mm.

    Voxel ``(x, y, z)`` maps to RAS ``(-x*sx, -y*sy, z*sz) + origin``.
    """
    sz, sy, sx = (float(s) for s in spacing_zyx)
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = np.asarray(origin_ras, dtype=float)
    return aff


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size ``(z, y, x)`` in mm of an affine whose columns are the (x, y, z) index axes."""
    norms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return (float(norms[2]), float(norms[1]), float(norms[0]))


def reorient_to_internal(data_ijk: np.ndarray, affine: np.ndarray):
    """Reorient a 3-D array indexed ``(i, j, k)`` with its RAS affine to the internal grid.

    Parameters
    ----------
    data_ijk : np.ndarray
        3-D array in the file's own index order (NIfTI convention).
    affine : np.ndarray
        4×4 voxel ``(i, j, k)`` → RAS mm.

    Returns
    -------
    hu_zyx : np.ndarray
        The data with axes ``(z, y, x)`` of the internal LPS grid (a copy, never a view).
    new_affine : np.ndarray
        Internal index ``(x, y, z)`` → RAS mm.
    ornt : np.ndarray
        nibabel orientation transform from the input grid to the internal ``(x, y, z)`` grid.
    """
    affine = np.asarray(affine, dtype=float)
    start = nio.io_orientation(affine)
    target = nio.axcodes2ornt(INTERNAL_AXCODES)
    ornt = nio.ornt_transform(start, target)
    xyz = nio.apply_orientation(data_ijk, ornt)
    new_affine = affine @ nio.inv_ornt_aff(ornt, data_ijk.shape)
    return np.ascontiguousarray(xyz.transpose(2, 1, 0)), new_affine, ornt


def to_input_geometry(volume_zyx: np.ndarray, scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """Map an internal-grid volume (same shape as ``scan.hu``) back to the input file's grid.

    Returns ``(data_ijk, input_affine)``: save them together (e.g. as NIfTI) and the result
    overlays the original file voxel for voxel. ``data_ijk`` is Fortran-ordered (NIfTI's own layout:
    a free view of a C-ordered ``(z, y, x)`` volume when no reorientation is needed). Scans without a recorded reorientation (2-D images,
    .npy) come back in the internal grid with ``scan.affine``.
    """
    vol = np.asarray(volume_zyx)
    if vol.shape != scan.hu.shape:
        raise ValueError(f"volume shape {vol.shape} differs from the scan's {scan.hu.shape}")
    xyz = vol.transpose(2, 1, 0)
    back = input_orientation(scan)
    if back is None:
        return np.asfortranarray(xyz), np.asarray(scan.affine, dtype=float)
    data = nio.apply_orientation(xyz, back)
    return np.asfortranarray(data), np.asarray(scan.meta["input_affine"], dtype=float)


def input_orientation(scan: Scan) -> np.ndarray | None:
    """The nibabel orientation ``(3, 2)`` that takes an internal ``(x, y, z)`` array back to the input
    file's axes (row ``i``: the input axis of internal axis ``i`` and its flip, ±1), or None for scans
    without a recorded reorientation (2-D images, .npy): their file grid is the internal one."""
    if scan.meta.get("input_ornt") is None:
        return None
    # ornt_transform(target, start) is the inverse of ornt_transform(start, target)
    return nio.ornt_transform(nio.axcodes2ornt(INTERNAL_AXCODES), nio.io_orientation(scan.meta["input_affine"]))
