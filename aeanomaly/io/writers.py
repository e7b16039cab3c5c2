"""Atomic file writing: everything is written to a temporary path beside the target, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import nibabel as nib
from isal import igzip

from .scan import Scan, to_input_geometry


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary file path beside ``path``; rename it onto ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory beside ``path``; move it onto ``path`` on success only.

    With ``overwrite``, an existing ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            if not overwrite:
                raise FileExistsError(str(path))
            trash = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def _write_nifti(path: str | os.PathLike, data_ijk: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data_ijk`` as NIfTI atomically. NIfTI stores the first axis fastest, so the data go out
    Fortran-ordered (free for the transposed views callers pass, instead of a C copy that nibabel would
    transpose again); ``.nii.gz`` is compressed with ISA-L's gzip (python-isal: standard gzip output,
    about 10× zlib's speed at level 1), since compression was most of the time of writing a heatmap."""
    img = nib.Nifti1Image(np.asfortranarray(data_ijk), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    gz = str(path).endswith(".gz")
    with atomic_path(path, suffix=".nii.gz" if gz else ".nii") as tmp:
        if gz:
            with igzip.open(tmp, "wb", compresslevel=1) as f:
                img.to_stream(f)
        else:
            nib.save(img, str(tmp))
    return Path(path)


def save_nifti(path: str | os.PathLike, volume_zyx: np.ndarray, affine: np.ndarray) -> Path:
    """Save an internal-grid volume ``(z, y, x)`` with its affine (index (x, y, z) → RAS) as NIfTI."""
    return _write_nifti(path, np.asarray(volume_zyx).transpose(2, 1, 0), affine)


def save_like_input(path: str | os.PathLike, volume_zyx: np.ndarray, scan: Scan) -> Path:
    """Save an internal-grid volume as NIfTI in the input scan's own voxel grid and affine."""
    data, aff = to_input_geometry(volume_zyx, scan)
    return _write_nifti(path, data, aff)
