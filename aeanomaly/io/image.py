"""2-D CT slices stored as PNG (imageio/Pillow) or TIFF (tifffile), one slice ``(1, rows, cols)``.

Rows are y and columns x of the internal grid. int16/int32/float pixels are HU; uint8/uint16 are
already-windowed intensities, scaled to [0, 1] and flagged ``meta["hu"] = False``. Colour images are
accepted only when all colour channels are equal. The pixel spacing is 1 mm unless a TIFF carries a
physical resolution (centimetre unit, or an ImageJ ``unit`` of mm/cm/µm).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ScanError
from .scan import Scan, internal_affine
from .validate import (MAX_DEFLATE_RATIO, TIFF_SUFFIXES, check_declared_size, checked_scan, file_size, quiet_logs,
                       intensity_volume, label_array, reading)

_UNIT_MM = {"mm": 1.0, "millimeter": 1.0, "cm": 10.0, "centimeter": 10.0,
            "micron": 1e-3, "um": 1e-3, "\u00b5m": 1e-3, "\\u00b5m": 1e-3}


def _gray(arr: np.ndarray, channel_axis: int | None, path: Path) -> np.ndarray:
    """Collapse equal colour channels to one plane; raise ScanError for a real colour image."""
    if channel_axis is None:
        return arr
    arr = np.moveaxis(arr, channel_axis, -1)
    n = arr.shape[-1]
    colour = arr[..., : 3 if n >= 3 else 1]  # alpha (4th, or 2nd of grey+alpha) is ignored
    if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[-1])):
        raise ScanError(f"colour image with {n} differing channels; a grayscale CT slice is expected", path)
    return np.ascontiguousarray(arr[..., 0])


def _as_int(value) -> int | None:
    """A TIFF tag value as an int, or None when it is not a single integer."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _resolution_mm(tif, page) -> tuple[float, float] | None:
    """``(y, x)`` pixel size in mm from TIFF tags, or None when the file gives no physical unit."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = _as_int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit == 3:
        per_unit_mm = 10.0
    elif unit == 1 and tif.is_imagej and str((tif.imagej_metadata or {}).get("unit", "")).lower() in _UNIT_MM:
        per_unit_mm = _UNIT_MM[str(tif.imagej_metadata["unit"]).lower()]
    else:  # inch: nearly always a screen/print default (72 dpi ...), not the scanner's pixel size
        return None

    def size(tag) -> float:
        value = tag.value
        if not isinstance(value, tuple) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
            return 0.0  # a malformed rational: no physical size
        num, den = value
        return per_unit_mm * den / num if num and np.isfinite(per_unit_mm * den / num) else 0.0

    sy, sx = size(tags["YResolution"]), size(tags["XResolution"])
    return (sy, sx) if sy > 0 and sx > 0 else None


#: Largest decompressed/compressed ratio accepted per TIFF compression scheme (1 = none); other
#: schemes are bounded by the voxel limit alone.
_TIFF_RATIO = {1: 1, 5: 5000, 8: MAX_DEFLATE_RATIO, 32946: MAX_DEFLATE_RATIO, 32773: 130}


def _check_tiff_size(tif, series, path: Path, size: int) -> None:
    """Declared TIFF size against the voxel limit and the strips/tiles the file holds."""
    dtype = np.dtype(series.dtype)
    nbytes = check_declared_size(series.shape, dtype.itemsize, path, kind="TIFF")
    stored, compressions = 0, set()
    for page in series.pages:
        if page is None:
            continue
        offsets, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
        for off, cnt in zip(offsets, counts):
            if int(off) + int(cnt) > size:
                raise ScanError(f"corrupt or truncated TIFF file: image data at byte {int(off):,} "
                                f"(+{int(cnt):,}) lies beyond the end of the {size:,}-byte file", path)
            stored += int(cnt)
        compressions.add(_as_int(getattr(page, "compression", 1)))
    if compressions and all(c in _TIFF_RATIO for c in compressions):
        ratio = max(_TIFF_RATIO[c] for c in compressions)
        if nbytes > ratio * stored + (4096 if ratio > 1 else 0):
            raise ScanError(f"corrupt or truncated TIFF file: {stored:,} bytes of image data cannot hold the "
                            f"{'×'.join(map(str, series.shape))} {dtype} pixels ({nbytes:,} bytes) it declares", path)


def _read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import tifffile

    size = file_size(path)
    with reading(path, "TIFF"), quiet_logs("tifffile"), tifffile.TiffFile(str(path)) as tif:
        if not tif.series:
            raise ScanError("corrupt or truncated TIFF file: it holds no image", path)
        series = tif.series[0]
        _check_tiff_size(tif, series, path, size)
        arr, axes = series.asarray(), series.axes
        spacing = _resolution_mm(tif, tif.pages[0])
    channel = axes.index("S") if "S" in axes else None
    extra = [n for n, a in enumerate(axes) if a not in "YXS" and arr.shape[n] > 1]
    if extra:
        raise ScanError(f"multi-page TIFF (axes {axes}, shape {arr.shape}); one 2-D slice expected", path)
    keep = [n for n, a in enumerate(axes) if a in "YXS"]
    arr = arr.reshape([arr.shape[n] for n in keep])
    if channel is not None:
        channel = keep.index(channel)
    return _gray(arr, channel, path), spacing


#: Samples per pixel of each PNG colour type (grey, RGB, palette, grey + alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _check_png_size(path: Path) -> None:
    """Declared PNG size (IHDR) against the voxel limit and what the compressed file can hold."""
    size = file_size(path)
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise ScanError("corrupt or truncated PNG file: no IHDR header", path)
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour = head[24], head[25]
    if width == 0 or height == 0 or colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ScanError(f"corrupt PNG header: {width}×{height} pixels, bit depth {depth}, colour type {colour}", path)
    row_bytes = (width * _PNG_CHANNELS[colour] * depth + 7) // 8 + 1
    check_declared_size((height, width), 1, path, kind="PNG")
    if height * row_bytes > MAX_DEFLATE_RATIO * size + 4096:
        raise ScanError(f"corrupt or truncated PNG file: {size:,} bytes cannot hold the {width}×{height} "
                        f"pixels its header declares", path)


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    with reading(path, "PNG"):
        with open(path, "rb") as fh:
            signature = fh.read(8)
    if signature != b"\x89PNG\r\n\x1a\n":
        raise ScanError("corrupt or truncated PNG file: no PNG signature", path)
    _check_png_size(path)
    with reading(path, "PNG"):
        arr = np.asarray(iio.imread(str(path), plugin="pillow"))
    if arr.ndim == 3:
        return _gray(arr, 2, path)
    if arr.ndim != 2:
        raise ScanError(f"image has shape {arr.shape}; one 2-D slice expected", path)
    return arr


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Raw pixels ``(rows, cols)`` in the file's dtype and the ``(y, x)`` pixel size in mm if known."""
    p = Path(path)
    if p.name.lower().endswith(TIFF_SUFFIXES):
        return _read_tiff(p)
    return _read_png(p), None


def load_image(path: str | os.PathLike) -> Scan:
    """Read a PNG/TIFF CT slice as a one-slice scan.

    Returns
    -------
    Scan
        ``hu`` float32 ``(1, rows, cols)``: HU for int/float pixels, [0, 1] for uint8/uint16
        (``meta["hu"]`` False); spacing ``(1, sy, sx)`` mm; affine from ``internal_affine``.
        ``meta``: ``format="image"``, ``hu``, ``dtype``, ``spacing_known``.
    """
    p = Path(path)
    pixels, yx = read_image(p)
    values, is_hu = intensity_volume(pixels, p)
    spacing = (1.0, *(yx if yx is not None else (1.0, 1.0)))
    meta = {"format": "image", "hu": is_hu, "dtype": str(pixels.dtype), "spacing_known": yx is not None}
    return checked_scan(values[None], spacing, internal_affine(spacing), p, meta)


def load_image_label(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/TIFF mask as an integer ``(1, rows, cols)`` array with the file's values."""
    p = Path(path)
    pixels, _ = read_image(p)
    return label_array(pixels, p)[None]
