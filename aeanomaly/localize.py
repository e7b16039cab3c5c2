"""Localisation, pure numpy/scipy: residual volumes → heatmaps → pixel threshold → lesion table.

Volumes are ``(z, y, x)`` in the internal grid of :mod:`aeanomaly.io.scan` with ``spacing``
``(z, y, x)`` in mm and an affine mapping the index ``(x, y, z, 1)`` to RAS+ mm. Residuals are on
the [0, 1] windowed intensity scale, so heatmap values and thresholds are too. A 2-D ``(y, x)``
array is accepted wherever a volume is and treated as one slice. Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .errors import ConfigError

#: Keys of one lesion record, in table order.
LESION_FIELDS = (
    "id", "slice_start", "slice_end", "centroid_zyx", "centroid_ras_mm", "area_mm2", "volume_mm3",
    "equivalent_diameter_mm", "n_voxels", "max_residual", "mean_residual", "p_value", "severity",
)


def _as_zyx(array, name: str, dtype=np.float32) -> np.ndarray:
    arr = np.asarray(array, dtype=dtype)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.size == 0:
        raise ConfigError(f"{name} must be a non-empty (z, y, x) or (y, x) array, got shape {np.shape(array)}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ConfigError(f"{name} holds NaN or infinite values")
    return arr


def _spacing(spacing) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in np.ravel(spacing))
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ConfigError(f"spacing must be three positive (z, y, x) sizes in mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def _mask_like(mask, ref: np.ndarray, name: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(ref.shape, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    m = m[None] if m.ndim == 2 else m
    if m.shape != ref.shape:
        raise ConfigError(f"{name} shape {np.shape(mask)} differs from the heatmap's {ref.shape}")
    return m


def _fill_outside(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy of ``vol`` where each outside-mask pixel takes the value of the nearest in-plane mask pixel."""
    out = vol.copy()
    for k in np.flatnonzero(mask.any(axis=(1, 2)) & ~mask.all(axis=(1, 2))):
        idx = ndimage.distance_transform_edt(~mask[k], return_distances=False, return_indices=True)
        out[k] = vol[k][idx[0], idx[1]]
    return out


def residual_heatmap(
    residual: np.ndarray,
    mask: np.ndarray | None = None,
    sigma_mm: float = 2.0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    median_px: int = 0,
) -> np.ndarray:
    """Smoothed anomaly heatmap of a residual volume, zero outside the mask.

    Parameters
    ----------
    residual : np.ndarray
        ``(z, y, x)`` (or ``(y, x)``) residual, e.g. ``|x - x̂|`` on the [0, 1] windowed scale.
    mask : np.ndarray of bool, optional
        Same shape; the region where the heatmap is defined (e.g. the eroded body mask).
    sigma_mm : float
        Standard deviation of the in-plane Gaussian in mm (per-axis pixels ``sigma_mm / spacing``);
        there is no smoothing across slices. 0 disables it.
    spacing : (3,) float
        Voxel size ``(z, y, x)`` in mm.
    median_px : int
        Radius of an optional in-plane median filter applied first: window ``(2r+1) × (2r+1)``.

    Returns
    -------
    np.ndarray
        float32, same shape as ``residual``; 0 outside ``mask``.

    Notes
    -----
    Smoothing is a normalised convolution, ``G(r·m) / G(m)``: residual outside the mask never
    bleeds in and pixels near the mask (or image) edge are not darkened. Before the median filter,
    outside-mask pixels take the value of the nearest in-plane mask pixel, for the same reasons.
    """
    res = _as_zyx(residual, "residual")
    _, sy, sx = _spacing(spacing)
    m = _mask_like(mask, res)
    if not np.isfinite(sigma_mm) or sigma_mm < 0:
        raise ConfigError(f"sigma_mm must be ≥ 0, got {sigma_mm}")
    if int(median_px) != median_px or median_px < 0:
        raise ConfigError(f"median_px must be an integer ≥ 0, got {median_px}")
    work = res
    if median_px > 0:
        size = (1, 2 * int(median_px) + 1, 2 * int(median_px) + 1)
        work = ndimage.median_filter(_fill_outside(res, m) if mask is not None else res, size=size, mode="nearest")
    mf = m.astype(np.float32)
    if sigma_mm > 0:
        sig = (0.0, sigma_mm / sy, sigma_mm / sx)
        num = ndimage.gaussian_filter(work * mf, sig, mode="constant", cval=0.0)
        den = ndimage.gaussian_filter(mf, sig, mode="constant", cval=0.0)
        out = np.divide(num, den, out=np.zeros_like(num), where=m & (den > 1e-6))
    else:
        out = np.where(m, work, np.float32(0.0))
    return out.astype(np.float32, copy=False).reshape(np.shape(residual))


def slice_peaks(heatmap: np.ndarray) -> np.ndarray:
    """Per-slice maximum of a heatmap: float64 ``(z,)`` (``(1,)`` for a 2-D heatmap).

    On normal calibration slices these are the reference distribution of lesion severity.
    """
    return _as_zyx(heatmap, "heatmap", np.float64).max(axis=(1, 2))


def _pairs(normal_heatmaps, masks) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    if isinstance(normal_heatmaps, np.ndarray):
        arrays, mlist = [normal_heatmaps], [masks]
    else:
        arrays = list(normal_heatmaps)
        mlist = [None] * len(arrays) if masks is None else list(masks)
    if len(mlist) != len(arrays):
        raise ConfigError(f"{len(arrays)} normal heatmaps but {len(mlist)} masks")
    for i, (a, m) in enumerate(zip(arrays, mlist)):
        if m is not None and np.shape(m) != np.shape(a):
            raise ConfigError(f"mask {i} shape {np.shape(m)} differs from its heatmap's {np.shape(a)}")
    return arrays, mlist


def _values(a, m) -> np.ndarray:
    a = np.asarray(a)
    v = a.ravel() if m is None else a[np.asarray(m, dtype=bool)]
    if not np.isfinite(v).all():
        raise ConfigError("a normal heatmap holds NaN or infinite values")
    return v.astype(np.float64, copy=False)


def pixel_threshold(
    normal_heatmaps: np.ndarray | Iterable[np.ndarray],
    quantile: float = 0.999,
    masks: np.ndarray | Iterable[np.ndarray | None] | None = None,
    max_values: int = 4_000_000,
) -> float:
    """Pixel threshold: the ``quantile`` of heatmap values inside the masks over NORMAL slices.

    Parameters
    ----------
    normal_heatmaps : np.ndarray or iterable of np.ndarray
        One array of any shape, or several (shapes may differ), e.g. ``(z, y, x)`` heatmaps of the
        normal calibration scans ([0, 1] residual scale).
    quantile : float
        In (0, 1), e.g. 0.999 gives a 0.1 % pixel false-positive rate on normal tissue.
    masks : np.ndarray of bool or iterable, optional
        Matching the heatmaps (``None`` entries = every pixel counts).
    max_values : int
        Memory bound on the number of values held at once (besides one array's masked values).

    Returns
    -------
    float
        Linear-interpolated quantile, the same as ``np.quantile`` of the concatenated values.

    Notes
    -----
    Exact whenever the upper tail it needs, ``N - floor(q (N - 1))`` values, fits in
    ``max_values``: the arrays are scanned one at a time keeping only the running top values
    (``np.partition``), never a concatenated copy. Otherwise each array is deterministically
    subsampled with the stride ``ceil(N / max_values)`` (every k-th masked value, in C order), and
    the result is the quantile of that sample: accurate to its sampling error only.
    """
    if not 0.0 < float(quantile) < 1.0:
        raise ConfigError(f"quantile must be in (0, 1), got {quantile}")
    arrays, mlist = _pairs(normal_heatmaps, masks)
    counts = [int(np.size(a)) if m is None else int(np.count_nonzero(m)) for a, m in zip(arrays, mlist)]
    n = sum(counts)
    if n == 0:
        raise ConfigError("no normal heatmap values inside the masks to learn a pixel threshold from")
    pos = float(quantile) * (n - 1)
    lo = int(np.floor(pos))
    k = n - lo  # values of rank lo .. n-1 (ascending) are all that the quantile needs
    if k > max_values:
        stride = int(np.ceil(n / max_values))
        sample = np.concatenate([_values(a, m)[::stride] for a, m in zip(arrays, mlist)])
        return float(np.quantile(sample, quantile))
    top = np.empty(0, dtype=np.float64)
    for a, m in zip(arrays, mlist):
        v = _values(a, m)
        if v.size > k:
            v = np.partition(v, v.size - k)[v.size - k:]
        top = np.concatenate([top, v])
        if top.size > k:
            top = np.partition(top, top.size - k)[top.size - k:]
    two = np.partition(top, 1)[:2] if top.size > 1 else np.repeat(top, 2)
    return float(two[0] + (pos - lo) * (two[1] - two[0]))


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _p_values(peaks: np.ndarray, normal_peaks) -> np.ndarray | None:
    if normal_peaks is None:
        return None
    ref = np.sort(np.asarray(normal_peaks, dtype=np.float64).ravel())
    if ref.size == 0 or not np.isfinite(ref).all():
        raise ConfigError("normal_peaks must be a non-empty array of finite per-slice heatmap maxima")
    n_ge = ref.size - np.searchsorted(ref, peaks, side="left")
    return (1.0 + n_ge) / (ref.size + 1.0)


def find_lesions(
    heatmap: np.ndarray,
    threshold: float,
    spacing: Sequence[float],
    affine: np.ndarray,
    min_size_mm2: float = 10.0,
    min_volume_mm3: float | None = None,
    opening_px: int = 1,
    normal_peaks: np.ndarray | None = None,
    connectivity3d: bool = True,
) -> tuple[list[dict], np.ndarray]:
    """Lesions as connected components of the thresholded heatmap.

    Parameters
    ----------
    heatmap : np.ndarray
        ``(z, y, x)`` (or ``(y, x)``) from :func:`residual_heatmap`.
    threshold : float
        Pixel threshold (:func:`pixel_threshold`); lesion voxels are ``heatmap > threshold``.
    spacing : (3,) float
        Voxel size ``(z, y, x)`` in mm.
    affine : (4, 4) np.ndarray
        Internal index ``(x, y, z, 1)`` → RAS+ mm.
    min_size_mm2 : float
        Components whose largest in-plane cross-section is smaller (mm²) are dropped.
    min_volume_mm3 : float, optional
        Components with a smaller volume (mm³) are dropped too.
    opening_px : int
        Radius in pixels of the disk of the per-slice binary opening (0 = none).
    normal_peaks : np.ndarray, optional
        ``(n,)`` per-slice heatmap maxima of the normal calibration slices (:func:`slice_peaks`).
    connectivity3d : bool
        True: components are connected across slices with 26-connectivity (any shared face, edge
        or corner). False: each slice is labelled on its own (8-connectivity in-plane).

    Returns
    -------
    records : list of dict
        One per lesion, keys :data:`LESION_FIELDS`, sorted by decreasing ``max_residual``:
        ``id`` (1..n), ``slice_start``/``slice_end`` (inclusive z range), ``centroid_zyx`` (voxel
        index, weighted by the heatmap's excess over ``threshold``), ``centroid_ras_mm`` (that
        centroid through ``affine``), ``area_mm2`` (largest in-plane cross-section),
        ``volume_mm3``, ``equivalent_diameter_mm`` (of a circle of area ``area_mm2``),
        ``n_voxels``, ``max_residual``/``mean_residual`` (heatmap inside the lesion), ``p_value``
        ``(1 + #{normal_peaks ≥ max_residual}) / (n + 1)`` and ``severity`` ("high" p ≤ 0.01,
        "moderate" p ≤ 0.05, "low" otherwise); both are None / "unknown" without ``normal_peaks``.
    labels : np.ndarray
        int32, same shape as ``heatmap``: 0 = background, ``k`` = the voxels of lesion id ``k``.
    """
    hm = _as_zyx(heatmap, "heatmap", np.float64)
    sz, sy, sx = _spacing(spacing)
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise ConfigError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if not np.isfinite(threshold):
        raise ConfigError(f"threshold must be finite, got {threshold}")
    if int(opening_px) != opening_px or opening_px < 0:
        raise ConfigError(f"opening_px must be an integer ≥ 0, got {opening_px}")
    binary = hm > threshold
    if opening_px > 0:
        binary = ndimage.binary_opening(binary, structure=_disk(int(opening_px))[None])
    structure = np.ones((3, 3, 3), dtype=bool)
    if not connectivity3d:
        structure[[0, 2]] = False
    labels, n = ndimage.label(binary, structure=structure)
    if n == 0:
        return [], np.zeros(np.shape(heatmap), dtype=np.int32)
    fg = labels > 0
    zyx = np.nonzero(fg)
    lab = labels[fg].astype(np.int64) - 1
    vals = hm[fg]
    n_vox = np.bincount(lab, minlength=n)
    keys, per_slice = np.unique(lab * hm.shape[0] + zyx[0], return_counts=True)
    max_px = np.zeros(n, dtype=np.int64)
    np.maximum.at(max_px, keys // hm.shape[0], per_slice)
    area = max_px * sy * sx
    volume = n_vox * sz * sy * sx
    keep = area >= float(min_size_mm2)
    if min_volume_mm3 is not None:
        keep &= volume >= float(min_volume_mm3)
    peaks = np.full(n, -np.inf)
    np.maximum.at(peaks, lab, vals)
    order = np.flatnonzero(keep)[np.argsort(-peaks[keep], kind="stable")]
    lookup = np.zeros(n + 1, dtype=np.int32)
    lookup[order + 1] = np.arange(1, order.size + 1, dtype=np.int32)
    out_labels = lookup[labels].reshape(np.shape(heatmap))
    if order.size == 0:
        return [], out_labels
    means = np.bincount(lab, weights=vals, minlength=n) / n_vox
    w = vals - threshold  # > 0 on every lesion voxel
    w_sum = np.bincount(lab, weights=w, minlength=n)
    cen = np.column_stack([np.bincount(lab, weights=w * c, minlength=n) / w_sum for c in zyx])
    ras = (aff @ np.column_stack([cen[:, ::-1], np.ones(n)]).T)[:3].T
    z_first = np.full(n, hm.shape[0])
    z_last = np.zeros(n, dtype=np.int64)
    np.minimum.at(z_first, keys // hm.shape[0], keys % hm.shape[0])
    np.maximum.at(z_last, keys // hm.shape[0], keys % hm.shape[0])
    p = _p_values(peaks[order], normal_peaks)
    records = []
    for i, c in enumerate(order):
        pv = None if p is None else float(p[i])
        sev = "unknown" if pv is None else "high" if pv <= 0.01 else "moderate" if pv <= 0.05 else "low"
        records.append({
            "id": i + 1,
            "slice_start": int(z_first[c]),
            "slice_end": int(z_last[c]),
            "centroid_zyx": tuple(float(v) for v in cen[c]),
            "centroid_ras_mm": tuple(float(v) for v in ras[c]),
            "area_mm2": float(area[c]),
            "volume_mm3": float(volume[c]),
            "equivalent_diameter_mm": float(2.0 * np.sqrt(area[c] / np.pi)),
            "n_voxels": int(n_vox[c]),
            "max_residual": float(peaks[c]),
            "mean_residual": float(means[c]),
            "p_value": pv,
            "severity": sev,
        })
    return records, out_labels


def _pair_masks(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise ConfigError(f"prediction shape {a.shape} differs from the truth's {b.shape}")
    return a, b


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap ``2|P∩T| / (|P| + |T|)`` of two same-shape masks (nonzero = True).

    1.0 when both are empty (a correct "no lesion"), 0.0 when exactly one is.
    """
    a, b = _pair_masks(pred, truth)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union ``|P∩T| / |P∪T|`` of two same-shape masks; 1.0 when both are empty."""
    a, b = _pair_masks(pred, truth)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union
