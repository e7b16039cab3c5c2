"""Checks of the arrays the pure-compute stages share: volumes ``(z, y, x)``, voxel sizes and masks."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def as_volume(array, name: str, dtype=np.float32) -> np.ndarray:
    """``array`` as a non-empty finite ``(z, y, x)`` array of ``dtype`` (a 2-D ``(y, x)`` becomes one slice)."""
    arr = np.asarray(array, dtype=dtype)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.size == 0:
        raise ConfigError(f"{name} must be a non-empty (z, y, x) or (y, x) array, got shape {np.shape(array)}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ConfigError(f"{name} holds NaN or infinite values")
    return arr


def check_spacing(spacing) -> tuple[float, float, float]:
    """``spacing`` as three positive finite ``(z, y, x)`` voxel sizes in mm."""
    sp = tuple(float(s) for s in np.ravel(spacing))
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ConfigError(f"spacing must be three positive (z, y, x) sizes in mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def mask_like(mask, ref: np.ndarray, name: str = "mask") -> np.ndarray:
    """``mask`` as a bool array of ``ref``'s shape (a 2-D ``(y, x)`` becomes one slice; None: all True)."""
    if mask is None:
        return np.ones(ref.shape, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    m = m[None] if m.ndim == 2 else m
    if m.shape != ref.shape:
        raise ConfigError(f"{name} shape {np.shape(mask)} differs from the heatmap's {ref.shape}")
    return m
