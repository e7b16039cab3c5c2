"""The viewer's per-scan cache: a scored scan's volume, heatmap and lesion labels on the scan's own
slice grid, written once after scoring, and the slice PNGs rendered from them on demand.

Layout of one cache folder (written beside its final place, then renamed)::

    volume.npy   int16 HU (or float16 intensities in [0, 1] for already-windowed images), (z, y, x)
    heat.npy     float16 heatmap resampled to the same grid
    labels.npy   int16 lesion ids (0 = background) on the same grid
    meta.json    shape, spacing (mm), the tool's scores and lesions, the pixel threshold
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..io import atomic_dir
from ..preprocess import WINDOW_PRESETS, HUWindow

#: Window presets offered in the viewer (name → (width, level) in HU).
VIEWER_WINDOWS = dict(WINDOW_PRESETS)
LAYERS = ("ct", "heat", "contour")


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def lesion_rows(result) -> list[dict]:
    """The lesions of a :class:`~aeanomaly.detector.ScanResult` as plain dicts on the scan's own slice
    grid: ``id, slice_start, slice_end, z, y, x, area_mm2, volume_mm3, diameter_mm, max_residual,
    p_value, severity``."""
    rows = []
    for les in result.lesions:
        z, y, x = les.centroid_zyx_input if les.centroid_zyx_input is not None else les.centroid_zyx
        rows.append({"id": int(les.id), "slice_start": int(les.slice_start), "slice_end": int(les.slice_end),
                     "z": float(z), "y": float(y), "x": float(x), "area_mm2": _finite(les.area_mm2),
                     "volume_mm3": _finite(les.volume_mm3), "diameter_mm": _finite(les.equivalent_diameter_mm),
                     "max_residual": _finite(les.max_residual), "p_value": _finite(les.p_value),
                     "severity": str(les.severity)})
    return rows


def write_cache(cache_dir: str | os.PathLike, result, pixel_threshold: float, window: str) -> dict:
    """Write the cache of one scored scan (atomically) and return its meta dict.

    Parameters
    ----------
    cache_dir : path
        Folder to create (replaced if present).
    result : ScanResult
        With ``scan`` set (the detector's :meth:`score_scan` sets it).
    pixel_threshold : float
        The detector's pixel threshold (heatmap values above it form lesions).
    window : str
        The bundle's window preset, the viewer's default.
    """
    scan = result.scan
    heat = np.asarray(result.heatmap_in_input_grid(), dtype=np.float32)
    labels = np.asarray(result.lesion_labels_in_input_grid())
    if scan.is_hu:
        volume = np.clip(np.rint(scan.hu), -32768, 32767).astype(np.int16)
    else:
        volume = np.clip(scan.hu, 0.0, 1.0).astype(np.float16)
    finite_heat = heat[np.isfinite(heat)]
    thr = float(pixel_threshold) if np.isfinite(pixel_threshold) and pixel_threshold > 0 else (
        float(np.quantile(finite_heat, 0.99)) if finite_heat.size else 1.0)
    meta = {
        "shape": [int(s) for s in volume.shape], "spacing": [float(s) for s in scan.spacing],
        "is_hu": bool(scan.is_hu), "pixel_threshold": thr, "window": window,
        "scan_score": _finite(result.scan_score), "p_value": _finite(result.p_value), "label": result.label,
        "top_slice": int(result.top_slice), "note": result.note,
        "slice_scores": [_finite(v) for v in np.asarray(result.slice_scores, dtype=float)],
        "slice_labels": [bool(v) for v in np.asarray(result.slice_labels)],
        "lesions": lesion_rows(result), "source": result.source,
    }
    with atomic_dir(cache_dir, overwrite=True) as tmp:
        np.save(tmp / "volume.npy", volume, allow_pickle=False)
        np.save(tmp / "heat.npy", np.nan_to_num(heat, nan=0.0).astype(np.float16), allow_pickle=False)
        np.save(tmp / "labels.npy", np.clip(labels, 0, 32767).astype(np.int16), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, allow_nan=False), encoding="utf-8")
    return meta


def read_labels(cache_dir: str | os.PathLike) -> np.ndarray | None:
    """The lesion label volume of a cache, or None when the cache is gone."""
    f = Path(cache_dir) / "labels.npy"
    return np.load(f, allow_pickle=False) if f.is_file() else None


def _png(rgb_or_rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb_or_rgba)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def heat_colours(heat: np.ndarray, threshold: float) -> np.ndarray:
    """RGBA uint8 ``(y, x, 4)``: transparent below half the pixel threshold, then red → yellow → white,
    opaque from the threshold up."""
    r = np.asarray(heat, dtype=np.float32) / np.float32(threshold)
    v = np.clip((r - 0.5) / 1.5, 0.0, 1.0)
    rgba = np.empty(r.shape + (4,), np.uint8)
    rgba[..., 0] = np.clip(0.55 + 0.45 * 3 * v, 0, 1) * 255
    rgba[..., 1] = np.clip(3 * v - 1, 0, 1) * 255
    rgba[..., 2] = np.clip(3 * v - 2, 0, 1) * 255
    rgba[..., 3] = (np.clip((r - 0.5) * 2, 0, 1) * 255).astype(np.uint8)
    return rgba


def contour_colours(labels: np.ndarray) -> np.ndarray:
    """RGBA uint8: the one-pixel boundary of every lesion in cyan, the rest transparent."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, bool)
    inside = lab > 0
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge &= inside
    edge[0, :] |= inside[0, :]
    edge[-1, :] |= inside[-1, :]
    edge[:, 0] |= inside[:, 0]
    edge[:, -1] |= inside[:, -1]
    rgba = np.zeros(lab.shape + (4,), np.uint8)
    rgba[edge] = (0, 230, 255, 255)
    return rgba


class ScanCache:
    """Read side of one cache folder; renders slice PNGs and keeps the last ones in memory.

    Parameters
    ----------
    cache_dir : path
    max_items : int
        PNGs kept in memory (least recently used dropped first).
    """

    def __init__(self, cache_dir: str | os.PathLike, max_items: int = 256):
        self.dir = Path(cache_dir)
        self.meta = json.loads((self.dir / "meta.json").read_text(encoding="utf-8"))
        self.volume = np.load(self.dir / "volume.npy", mmap_mode="r", allow_pickle=False)
        self.heat = np.load(self.dir / "heat.npy", mmap_mode="r", allow_pickle=False)
        self.labels = np.load(self.dir / "labels.npy", mmap_mode="r", allow_pickle=False)
        self.n_slices = int(self.volume.shape[0])
        self._pngs: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._max = int(max_items)

    def ct_gray(self, z: int, window: str) -> np.ndarray:
        """uint8 ``(y, x)`` of slice ``z`` in a window preset (or the bundle's window)."""
        sl = np.asarray(self.volume[z], dtype=np.float32)
        if not self.meta["is_hu"]:
            return (np.clip(sl, 0, 1) * 255).astype(np.uint8)
        w = HUWindow.parse(window if window in VIEWER_WINDOWS else self.meta["window"])
        return (w.apply(sl) * 255).astype(np.uint8)

    def composite(self, z: int, window: str, opacity: float = 0.6) -> np.ndarray:
        """RGB uint8 of slice ``z``: CT, heatmap blended with ``opacity``, lesion contours on top."""
        gray = self.ct_gray(z, window).astype(np.float32)[..., None].repeat(3, axis=-1)
        heat = heat_colours(self.heat[z], self.meta["pixel_threshold"]).astype(np.float32)
        a = heat[..., 3:] / 255.0 * float(opacity)
        rgb = gray * (1 - a) + heat[..., :3] * a
        cont = contour_colours(self.labels[z])
        m = cont[..., 3] > 0
        rgb[m] = cont[m, :3]
        return rgb.astype(np.uint8)

    def png(self, z: int, layer: str, window: str = "") -> bytes:
        """PNG bytes of one layer (``ct``, ``heat`` or ``contour``) of slice ``z`` (0-based)."""
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}")
        if not 0 <= z < self.n_slices:
            raise IndexError(z)
        key = (z, layer, window if layer == "ct" else "")
        with self._lock:
            if key in self._pngs:
                self._pngs.move_to_end(key)
                return self._pngs[key]
        if layer == "ct":
            data = _png(self.ct_gray(z, window))
        elif layer == "heat":
            data = _png(heat_colours(self.heat[z], self.meta["pixel_threshold"]))
        else:
            data = _png(contour_colours(self.labels[z]))
        with self._lock:
            self._pngs[key] = data
            while len(self._pngs) > self._max:
                self._pngs.popitem(last=False)
        return data

    def composite_png(self, z: int, window: str = "") -> bytes:
        """PNG of :meth:`composite` (for reports)."""
        return _png(self.composite(z, window))
