"""MetaImage (.mhd + data file, or single-file .mha) scans and label maps: the LUNA16 format.

Read with numpy alone (no SimpleITK). The header's world frame is LPS (ITK's convention):
``TransformMatrix`` holds the direction cosines (row-major, one column per voxel axis), ``Offset``
the position of the first voxel and ``ElementSpacing`` the voxel size, all ordered x, y, z. The
voxel → RAS affine built from them goes through the same reorientation as NIfTI, so results are
written back (as NIfTI) in the file's own voxel grid.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import ScanError
from .scan import Scan, reorient_to_internal, spacing_from_affine
from .validate import (MAX_DEFLATE_RATIO, check_affine, check_declared_size, checked_scan, file_size, label_array,
                       reading)

_TYPES = {
    "MET_CHAR": np.int8, "MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16,
    "MET_INT": np.int32, "MET_UINT": np.uint32, "MET_LONG": np.int32, "MET_ULONG": np.uint32,
    "MET_LONG_LONG": np.int64, "MET_ULONG_LONG": np.uint64, "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


#: Largest MetaImage header read (the key = value lines before the data).
_MAX_HEADER = 1 << 20
_CHUNK = 4 * 1024 * 1024


def _header(path: Path) -> tuple[dict, int]:
    """Header fields (``key → raw string``) and the byte offset where a LOCAL data block starts."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_HEADER)
    except OSError as e:
        raise ScanError(f"cannot read MetaImage header: {e.strerror or e}", path) from None
    fields, pos = {}, 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        line = raw[pos:end].decode("latin-1").strip()
        pos = end + 1
        if not line:
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ScanError(f"corrupt MetaImage header: line {line[:40]!r} is not 'Key = Value'", path)
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    if "ElementDataFile" not in fields:
        raise ScanError("corrupt MetaImage header: no ElementDataFile", path)
    return fields, min(pos, len(raw))


def _read_into(fh, buf: np.ndarray) -> int:
    view, got = memoryview(buf), 0
    while got < buf.size:
        n = fh.readinto(view[got:min(buf.size, got + _CHUNK)])
        if not n:
            break
        got += n
    return got


def _voxel_bytes(src: Path, start: int, nbytes: int, compressed: bool, header: Path) -> np.ndarray:
    """``nbytes`` bytes of voxel data of ``src`` from ``start``, inflated when ``compressed``, as uint8.

    Sizes are checked before the buffer is filled: raw data must be in the file; zlib data can
    hold at most ``MAX_DEFLATE_RATIO`` times its size. The buffer is never zero-filled first.
    """
    on_disk = max(file_size(src) - start, 0)
    if not compressed and on_disk < nbytes:
        raise ScanError(f"truncated MetaImage data: {on_disk:,} bytes in {src.name} where the header "
                        f"declares {nbytes:,}", header)
    if compressed and nbytes > MAX_DEFLATE_RATIO * on_disk + 4096:
        raise ScanError(f"corrupt or truncated MetaImage data: {on_disk:,} compressed bytes cannot hold "
                        f"the {nbytes:,} bytes the header declares", header)
    with reading(header, "MetaImage"):
        buf = np.empty(nbytes, dtype=np.uint8)
        with open(src, "rb") as fh:
            fh.seek(start)
            if not compressed:
                got = _read_into(fh, buf)
            else:
                inflater, got = zlib.decompressobj(), 0
                while got < nbytes:
                    chunk = fh.read(_CHUNK // 16) if not inflater.unconsumed_tail else b""
                    data = inflater.decompress(inflater.unconsumed_tail + chunk, nbytes - got)
                    if not data and not chunk and not inflater.unconsumed_tail:
                        break
                    buf[got:got + len(data)] = np.frombuffer(data, np.uint8)
                    got += len(data)
                    if inflater.eof:
                        break
    if got < nbytes:
        raise ScanError(f"truncated MetaImage data: {'inflates to ' if compressed else ''}{got:,} bytes "
                        f"where the header declares {nbytes:,}", header)
    return buf


def _numbers(fields: dict, key: str, n: int, path: Path, default=None) -> np.ndarray:
    if key not in fields:
        if default is None:
            raise ScanError(f"MetaImage header has no {key}", path)
        return np.asarray(default, float)
    try:
        vals = np.array([float(v) for v in fields[key].split()], float)
    except ValueError:
        raise ScanError(f"MetaImage {key} is not numeric: {fields[key][:40]!r}", path) from None
    if vals.size != n:
        raise ScanError(f"MetaImage {key} has {vals.size} values, {n} expected", path)
    return vals


def _read(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The file's ``(i, j, k)`` voxel data (x fastest on disk) and its voxel → RAS affine."""
    p = Path(path)
    f, data_start = _header(p)
    if f.get("ObjectType", "Image").lower() != "image":
        raise ScanError(f"MetaImage ObjectType {f['ObjectType']!r} is not an image", p)
    try:
        ndims = int(f.get("NDims", "3"))
    except ValueError:
        raise ScanError(f"MetaImage NDims {f.get('NDims')!r} is not an integer", p) from None
    if ndims not in (2, 3):
        raise ScanError(f"{ndims}-D MetaImage; a 2-D slice or 3-D volume expected", p)
    if f.get("ElementNumberOfChannels", "1").strip() not in ("1", ""):
        raise ScanError("multi-channel MetaImage; one grey-value channel expected", p)
    dim_vals = _numbers(f, "DimSize", ndims, p)
    if not np.all((dim_vals >= 1) & (dim_vals == np.round(dim_vals)) & (dim_vals < 2 ** 62)):
        raise ScanError(f"corrupt MetaImage header: DimSize {f['DimSize'][:40]!r} is not positive integers", p)
    dims = [int(d) for d in dim_vals]
    etype = f.get("ElementType", "")
    if etype not in _TYPES:
        raise ScanError(f"unsupported MetaImage ElementType {etype!r}", p)
    dtype = np.dtype(_TYPES[etype])
    big = f.get("BinaryDataByteOrderMSB", f.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = dtype.newbyteorder(">" if big else "<")
    nbytes = check_declared_size(dims, dtype.itemsize, p, kind="MetaImage")  # voxel limit first
    data_file = f["ElementDataFile"]
    if data_file.upper() == "LOCAL":
        src, start = p, data_start
    elif " " in data_file.strip() or data_file.upper().startswith("LIST"):
        raise ScanError(f"MetaImage with several data files ({data_file[:40]!r}) is not supported", p)
    else:
        src, start = p.parent / data_file, 0
        if not src.is_file():
            raise ScanError(f"cannot read its data file {data_file}: no such file", p)
    compressed = f.get("CompressedData", "False").lower() == "true"
    blob = _voxel_bytes(src, start, nbytes, compressed, p)
    n = nbytes // dtype.itemsize
    arr = blob.view(dtype)[:n].reshape(dims[::-1])
    if not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    data = arr.transpose(tuple(range(ndims))[::-1])  # (x, y[, z]) index order
    if ndims == 2:
        data = data[:, :, None]
    spacing = _numbers(f, "ElementSpacing", ndims, p, default=[1.0] * ndims)
    pos_key = next((k for k in ("Offset", "Position", "Origin") if k in f), "Offset")
    offset = _numbers(f, pos_key, ndims, p, default=[0.0] * ndims)
    key = "TransformMatrix" if "TransformMatrix" in f else ("Rotation" if "Rotation" in f else "Orientation")
    direction = _numbers(f, key, ndims * ndims, p, default=np.eye(ndims).ravel()).reshape(ndims, ndims)
    if ndims == 2:
        spacing, offset = np.r_[spacing, 1.0], np.r_[offset, 0.0]
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction = d3
    # ITK stores the direction matrix row-major with one column per voxel axis
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = offset
    affine = np.eye(4)
    affine[:3, :] = _LPS_TO_RAS @ lps[:3, :]
    return data, check_affine(affine, p)


def metaimage_data_file(path: str | os.PathLike) -> Path | None:
    """The separate voxel-data file a ``.mhd`` header names (None for other files and LOCAL data)."""
    p = Path(path)
    if p.suffix.lower() != ".mhd":
        return None
    fields, _ = _header(p)
    name = fields["ElementDataFile"]
    return None if name.upper() == "LOCAL" else p.parent / name


def load_metaimage(path: str | os.PathLike) -> Scan:
    """Read a MetaImage CT volume in HU on the internal grid.

    Returns
    -------
    Scan
        ``hu`` float32 ``(z, y, x)`` in HU (values as stored: LUNA16 stores HU), spacing ``(z, y, x)``
        mm; ``meta`` holds ``format="metaimage"``, ``hu=True`` and, as for NIfTI, ``input_affine``,
        ``input_shape`` and ``input_ornt`` (heatmaps go back to the file's voxel grid as NIfTI).
    """
    p = Path(path)
    data, affine = _read(p)
    hu, new_affine, ornt = reorient_to_internal(data.astype(np.float32), affine)
    meta = {"format": "metaimage", "hu": True, "input_affine": affine,
            "input_shape": tuple(int(s) for s in data.shape), "input_ornt": ornt, "file_dtype": str(data.dtype)}
    return checked_scan(hu, spacing_from_affine(new_affine), new_affine, p, meta)


def load_metaimage_label(path: str | os.PathLike) -> np.ndarray:
    """Read a MetaImage label map / mask as an integer ``(z, y, x)`` array on the internal grid."""
    p = Path(path)
    data, affine = _read(p)
    labels, _, _ = reorient_to_internal(label_array(data, p), affine)
    return labels
