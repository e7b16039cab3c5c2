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
from .validate import checked_scan, intensity_volume, label_array, reading

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


def _resolution_mm(tif, page) -> tuple[float, float] | None:
    """``(y, x)`` pixel size in mm from TIFF tags, or None when the file gives no physical unit."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit == 3:
        per_unit_mm = 10.0
    elif unit == 1 and tif.is_imagej and str((tif.imagej_metadata or {}).get("unit", "")).lower() in _UNIT_MM:
        per_unit_mm = _UNIT_MM[str(tif.imagej_metadata["unit"]).lower()]
    else:  # inch: nearly always a screen/print default (72 dpi ...), not the scanner's pixel size
        return None

    def size(tag) -> float:
        num, den = tag.value
        return per_unit_mm * den / num if num else 0.0

    sy, sx = size(tags["YResolution"]), size(tags["XResolution"])
    return (sy, sx) if sy > 0 and sx > 0 else None


def _read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import tifffile

    with reading(path, "TIFF"), tifffile.TiffFile(str(path)) as tif:
        series = tif.series[0]
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


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    with reading(path, "PNG"):
        with open(path, "rb") as fh:
            signature = fh.read(8)
    if signature != b"\x89PNG\r\n\x1a\n":
        raise ScanError("corrupt or truncated PNG file: no PNG signature", path)
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
    if p.name.lower().endswith((".tif", ".tiff")):
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
