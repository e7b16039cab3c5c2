"""NIfTI (.nii, .nii.gz) scans and label maps via nibabel, reoriented to the internal LPS grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import nibabel as nib
from isal import igzip

from ..errors import ScanError
from .scan import Scan, reorient_to_internal, spacing_from_affine
from .validate import check_affine, check_declared_size, checked_scan, file_size, label_array, quiet_logs, reading


def _volume_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """3-D ``(i, j, k)`` shape for a header shape: 2-D → one slice, trailing 1-dims squeezed.

    Raises ScanError for 1-D images and real 4-D/5-D ones (any dim beyond the third > 1).
    """
    if len(shape) < 2:
        raise ScanError(f"{len(shape)}-D image (shape {shape}); a 2-D slice or 3-D volume expected", path)
    if len(shape) > 3 and any(int(s) != 1 for s in shape[3:]):
        dims = "×".join(str(int(s)) for s in shape)
        raise ScanError(f"{len(shape)}-D image (shape {dims}); one 3-D volume expected", path)
    full = tuple(int(s) for s in shape[:3]) + (1,) * (3 - min(len(shape), 3))
    return full  # type: ignore[return-value]


#: Bytes read (and decompressed) per step; the data buffer is filled in place, never zero-filled first.
_CHUNK = 4 * 1024 * 1024


def _fill(fh, buf: np.ndarray) -> int:
    """Read from ``fh`` into the uint8 buffer ``buf`` until it is full or the stream ends; bytes read."""
    view = memoryview(buf)
    got, total = 0, buf.size
    while got < total:
        n = fh.readinto(view[got:min(total, got + _CHUNK)])
        if not n:
            break
        got += n
    return got


def _truncated(p: Path, got: int, nbytes: int, gz: bool) -> ScanError:
    return ScanError(f"corrupt or truncated NIfTI file: {'decompressed ' if gz else ''}data ends after "
                     f"{got:,} of the {nbytes:,} bytes its header declares", p)


def _raw_data(p: Path, offset: int, nbytes: int, gz: bool) -> np.ndarray:
    """Exactly ``nbytes`` bytes of voxel data from ``offset`` (decompressed for ``.gz``), as uint8."""
    with reading(p, "NIfTI"):
        buf = np.empty(nbytes, dtype=np.uint8)  # untouched pages: memory grows only as data arrives
        opener = igzip.open if gz else open  # ISA-L: the same bytes as zlib, about 3× faster
        with opener(p, "rb") as fh:
            fh.seek(offset)
            got = _fill(fh, buf)
    if got < nbytes:
        raise _truncated(p, got, nbytes, gz)
    return buf


def _float_data(p: Path, offset: int, n: int, dtype: np.dtype, gz: bool, slope: float, inter: float) -> np.ndarray:
    """The ``n`` voxels of ``dtype`` from ``offset`` as flat float32, scaled by ``slope`` and ``inter``:
    read :data:`_CHUNK` bytes at a time into one small buffer, each chunk converted and scaled while it
    is in cache. The same values as converting the whole raw buffer (the same float32 operations per
    voxel), and the raw bytes are never held whole: the float32 volume is the only large allocation. On
    an idle machine it takes the time of the whole-buffer read (ISA-L's inflate is most of it); under
    memory-bandwidth load, about half."""
    size = dtype.itemsize
    nbytes = n * size
    out = np.empty(n, np.float32)  # untouched pages: memory grows only as data arrives
    buf = np.empty(max(size, _CHUNK - _CHUNK % size), np.uint8)
    f_slope, f_inter = np.float32(slope), np.float32(inter)
    got = 0
    with reading(p, "NIfTI"):
        opener = igzip.open if gz else open  # ISA-L: the same bytes as zlib, about 3× faster
        with opener(p, "rb") as fh:
            fh.seek(offset)
            while got < nbytes:
                want = min(buf.size, nbytes - got)
                k = _fill(fh, buf[:want])
                if k < want:
                    raise _truncated(p, got + k, nbytes, gz)
                part = out[got // size : (got + want) // size]
                part[...] = buf[:want].view(dtype)
                if slope != 1.0:
                    part *= f_slope
                if inter != 0.0:
                    part += f_inter
                got += want
    return out


def _read(path: str | os.PathLike, as_label: bool):
    """Read the file's ``(i, j, k)`` data (scaled by scl_slope/inter) and its RAS affine.

    The header is checked before any voxel is allocated: the declared size against the voxel limit
    (:func:`aeanomaly.io.validate.max_voxels`) and against the bytes the file holds (``.nii``) or
    can hold (``.nii.gz``: at most ``MAX_DEFLATE_RATIO`` times the compressed size); the data are
    then read into place, so a file that lies about its size is refused at the cost of its real bytes.
    """
    p = Path(path)
    with reading(p, "NIfTI"), quiet_logs("nibabel"):
        img = nib.load(str(p))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ScanError(f"not a NIfTI image ({type(img).__name__})", p)
        header_shape = tuple(int(s) for s in img.shape)
        proxy = img.dataobj
        dtype = np.dtype(proxy.dtype)
        offset = int(proxy.offset)
        slope, inter = float(proxy.slope), float(proxy.inter)
        affine = img.affine
    shape = _volume_shape(header_shape, p)
    if dtype.kind not in "iufb" or dtype.fields is not None:
        raise ScanError(f"unsupported NIfTI data type {img.get_data_dtype()}; integer or float voxels expected", p)
    gz = p.name.lower().endswith(".gz")
    size = file_size(p)
    if gz:
        nbytes = check_declared_size(header_shape, dtype.itemsize, p, compressed=size, kind="NIfTI")
    else:
        nbytes = check_declared_size(header_shape, dtype.itemsize, p, available=size - offset, kind="NIfTI")
    n = nbytes // dtype.itemsize
    if as_label:
        raw = _raw_data(p, offset, nbytes, gz)
        with reading(p, "NIfTI"):
            arr = raw.view(dtype)[:n].reshape(header_shape, order="F")
            if not dtype.isnative:
                arr = arr.astype(dtype.newbyteorder("="))
            data = arr if (slope, inter) == (1.0, 0.0) else arr * slope + inter
    else:
        data = _float_data(p, offset, n, dtype, gz, slope, inter).reshape(header_shape, order="F")
    affine = check_affine(affine, p)
    return np.reshape(data, shape), affine, header_shape, img.get_data_dtype()


def _reorient(data_ijk: np.ndarray, affine: np.ndarray, path: Path):
    try:
        return reorient_to_internal(data_ijk, affine)
    except Exception as e:  # nibabel raises ValueError/IndexError on axes it cannot resolve
        raise ScanError(f"cannot resolve the orientation of the affine: {e}", path) from e


def load_nifti(path: str | os.PathLike) -> Scan:
    """Read a NIfTI CT volume in HU on the internal grid.

    Parameters
    ----------
    path : str or PathLike
        ``.nii`` or ``.nii.gz``; 2-D images become one slice, ``(X, Y, Z, 1)`` is squeezed.

    Returns
    -------
    Scan
        ``hu`` float32 ``(z, y, x)`` in HU (scl_slope/inter applied), spacing ``(z, y, x)`` mm;
        ``meta`` holds ``format="nifti"``, ``hu=True``, ``input_affine``, ``input_shape``,
        ``input_ornt`` (to write results back in the file's own grid), ``file_shape``, ``file_dtype``.
    """
    p = Path(path)
    data, affine, header_shape, dtype = _read(p, as_label=False)
    hu, new_affine, ornt = _reorient(data, affine, p)
    meta = {
        "format": "nifti",
        "hu": True,
        "input_affine": affine,
        "input_shape": tuple(int(s) for s in data.shape),
        "input_ornt": ornt,
        "file_shape": header_shape,
        "file_dtype": str(dtype),
    }
    return checked_scan(hu, spacing_from_affine(new_affine), new_affine, p, meta)


def load_nifti_label(path: str | os.PathLike) -> np.ndarray:
    """Read a NIfTI label map / mask as an integer ``(z, y, x)`` array on the internal grid.

    Integer on-disk types are kept (uint8 masks with 255 stay 255); float maps must hold integers.
    """
    p = Path(path)
    data, affine, _, _ = _read(p, as_label=True)
    labels, _, _ = _reorient(label_array(data, p), affine, p)
    return labels
