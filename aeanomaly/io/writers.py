"""Atomic file writing: everything is written to a temporary path beside the target, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import nibabel as nib
import nibabel.orientations as nio
from isal import igzip

from ..parallel import map_slices
from .scan import Scan, input_orientation, to_input_geometry


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


#: gzip level of written .nii.gz files (ISA-L level 1: standard gzip output, about 10× zlib's speed).
GZIP_LEVEL = 1


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
            with igzip.open(tmp, "wb", compresslevel=GZIP_LEVEL) as f:
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


#: Slices per slab of :func:`save_slabs_like_input`.
SLAB_SLICES = 64

#: Largest count of an int16 file written with a slope (:func:`int16_slope`): values are stored as
#: ``round(v / slope)`` in ±QUANT_MAX, and NIfTI readers (nibabel, ITK-SNAP, 3D Slicer) multiply by
#: the header's ``scl_slope``.
QUANT_MAX = 32767


def int16_slope(max_abs: float) -> float | None:
    """The ``scl_slope`` that stores values of magnitude ≤ ``max_abs`` as int16 counts with the finest
    step, ``max_abs / QUANT_MAX``: a value comes back within half a step, 1/65534 of ``max_abs``. 1.0
    when ``max_abs`` is 0 (all zeros); None when it is not finite or the step is below float32's range
    (the data must then be stored as floats). The counts are rounded in float32, which adds at most
    ``32767 · 2⁻²⁴`` of a step (the bound is under 0.502 of a step)."""
    m = float(max_abs)
    if not np.isfinite(m):
        return None
    if m == 0:
        return 1.0
    # float32, as the header stores it: the counts are computed with the slope that readers apply
    slope = float(np.float32(m / QUANT_MAX))
    return slope if slope > 0 else None


def int16_quantiser(slope: float) -> Callable[[np.ndarray, np.ndarray], None]:
    """``quantise(values, out)``: ``out[...] = round(values / slope)`` clipped to ±QUANT_MAX, as int16,
    for one float32 slice, overwriting ``values`` on the way (divide, round and clip run in place in
    it, so over a slice they stay in cache). A division, not a product with ``1 / slope``: one float32
    rounding, not two, keeps the bound of :func:`int16_slope`."""
    step = np.float32(slope)

    def quantise(values: np.ndarray, out: np.ndarray) -> None:
        np.divide(values, step, out=values, dtype=np.float32)
        np.rint(values, out=values)
        np.clip(values, -QUANT_MAX, QUANT_MAX, out=values)
        out[...] = values

    return quantise


def _counts(part: np.ndarray, slope: float) -> np.ndarray:
    """int16 counts of :func:`int16_quantiser` for a float32 ``(z, y, x)`` chunk, in threads by
    z-chunks, one slice at a time through a one-slice buffer per thread (the four passes over data in
    cache instead of streaming the chunk through memory four times: about half the time)."""
    quantise = int16_quantiser(slope)

    def chunk(p, out):
        buf = np.empty(p.shape[1:], np.float32)
        for src, dst in zip(p, out):
            buf[...] = src
            quantise(buf, dst)
        return out

    return map_slices(chunk, part, out=np.empty(part.shape, np.int16))


def _slab_header(affine: np.ndarray, shape: tuple, dtype, slope: float | None) -> nib.Nifti1Header:
    """The header nibabel writes for ``affine``, with the data shape, dtype (int16 with a slope) and scaling."""
    shell = nib.Nifti1Image(np.zeros((1, 1, 1), np.int16 if slope is not None else dtype), affine)
    shell.header.set_xyzt_units("mm")
    shell.update_header()
    hdr = shell.header.copy()
    hdr.set_data_shape(shape)
    hdr.set_slope_inter(1.0 if slope is None else float(slope), 0.0)
    return hdr


def save_slabs_like_input(path: str | os.PathLike, slab: Callable[[int, int], np.ndarray], scan: Scan,
                          dtype=np.float32, slab_slices: int = SLAB_SLICES, slope: float | None = None) -> Path:
    """Save an internal-grid volume that ``slab(lo, hi)`` computes ``(hi − lo, y, x)`` slices at a time
    as NIfTI in the input scan's own voxel grid and affine: the same file as :func:`save_like_input` of
    the whole volume, holding ``slab_slices`` slices at a time instead of the volume.

    NIfTI stores its third axis slowest, so when the scan's slices are that axis (axial series: the
    usual case) each slab is a contiguous run of the file; otherwise the whole volume is assembled,
    reoriented and written at once.

    With ``slope`` (see :func:`int16_slope`) the file holds int16 counts ``round(v / slope)`` and
    ``scl_slope = slope`` instead of ``dtype``: readers get the values back within ``slope / 2``, zeros
    exactly, and there are half the bytes to compress. The counts are computed in threads; a ``slab``
    that returns int16 already gives the counts itself (those of :func:`int16_quantiser`, e.g. from
    :func:`aeanomaly.preprocess.from_model_grid_each`), written as they are.
    """
    nz, ny, nx = scan.hu.shape
    back = input_orientation(scan)

    def part(lo: int, hi: int) -> np.ndarray:
        p = np.asarray(slab(lo, hi))
        counted = slope is not None and p.dtype == np.int16
        p = p if counted else p.astype(np.float32 if slope is not None else dtype, copy=False)
        if p.shape != (hi - lo, ny, nx):
            raise ValueError(f"slab({lo}, {hi}) returned shape {p.shape}, expected {(hi - lo, ny, nx)}")
        return p

    def stored(a: np.ndarray) -> np.ndarray:
        return a if slope is None or a.dtype == np.int16 else _counts(a, slope)

    if back is not None and int(back[2][0]) != 2:  # slices are not the file's third axis: assembled
        data, affine = to_input_geometry(part(0, nz), scan)
        hdr = _slab_header(np.asarray(affine, dtype=float), data.shape, dtype, slope)
        pieces = iter([np.asfortranarray(stored(data)).T])
    else:
        flip = back is not None and back[2][1] < 0
        affine = np.asarray(scan.affine if back is None else scan.meta["input_affine"], dtype=float)
        shape_xyz = (nx, ny, nz)
        shape = shape_xyz if back is None else tuple(shape_xyz[i] for i in np.argsort(back[:, 0].astype(int)))
        hdr = _slab_header(affine, shape, dtype, slope)

        def slabs():
            step = max(1, int(slab_slices))
            for k0 in range(0, nz, step):
                k1 = min(nz, k0 + step)
                xyz = stored(part(*((nz - k1, nz - k0) if flip else (k0, k1)))).transpose(2, 1, 0)
                if back is not None:
                    xyz = nio.apply_orientation(xyz, back)
                # (x, y, z) in Fortran order is the slab's own (z, y, x) buffer when the file's axes are
                # the internal ones (LPS, as ITK and most DICOM converters write): written without a copy;
                # flipped or permuted axes are copied once into file order
                yield np.asfortranarray(xyz).T

        pieces = slabs()
    gz = str(path).endswith(".gz")
    with atomic_path(path, suffix=".nii.gz" if gz else ".nii") as tmp:
        with (igzip.open(tmp, "wb", compresslevel=GZIP_LEVEL) if gz else open(tmp, "wb")) as f:
            hdr.write_to(f)
            f.write(b"\0" * (int(hdr.get_data_offset()) - f.tell()))
            for piece in pieces:
                f.write(memoryview(piece).cast("B"))
    return Path(path)
