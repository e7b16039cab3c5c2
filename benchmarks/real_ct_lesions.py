"""Lesions for Test B of the real_ct benchmark, injected in HU into real full-resolution slices.

Kinds (:data:`KINDS`): ``solid``, ``part_solid`` and ``ground_glass`` from
:func:`aeanomaly.datasets.lesions.inject_lesions`; ``spiculated``, ``cavitary`` and ``consolidation``
drawn here in millimetres on the slice's own pixel grid (soft sigmoid edges of ~0.5–1.5 mm), keeping the
host's high-frequency noise inside the lesion. Sizes are nominal diameters in mm (:data:`SIZES`).
The scoring choices of the benchmark see only :data:`TUNING_KINDS`; :data:`HELD_OUT_KINDS` are reported
apart. None of this is used in training (the self-supervised families are in aeanomaly.model.selfsup).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from aeanomaly.datasets.lesions import inject_lesions

TUNING_KINDS = ("solid", "ground_glass")
HELD_OUT_KINDS = ("part_solid", "spiculated", "cavitary", "consolidation")
KINDS = TUNING_KINDS + HELD_OUT_KINDS
SIZES = {"4-8mm": (4.0, 8.0), "8-15mm": (8.0, 15.0), "15-30mm": (15.0, 30.0)}


def _sig(t):
    return 1.0 / (1.0 + np.exp(-np.clip(t, -30, 30)))


def _centre(rng, lung, radius_px, pleural=False):
    """A lung pixel at least ``radius_px`` from the lung border (or, ``pleural``, near it)."""
    dist = ndi.distance_transform_edt(lung)
    ok = (dist > radius_px * 0.3) & (dist < radius_px) if pleural else dist >= min(radius_px, dist.max() * 0.8)
    if not ok.any():
        ok = dist >= dist.max() * 0.8
    ys, xs = np.nonzero(ok)
    k = int(rng.integers(len(ys)))
    return ys[k], xs[k]


def _custom(hu, lung, spacing_yx, kind, diameter, rng):
    """One ``spiculated`` / ``cavitary`` / ``consolidation`` lesion; returns (new_hu, weight in [0, 1])."""
    py, px = spacing_yx
    r = diameter / 2.0
    cy, cx = _centre(rng, lung, r / py, pleural=kind == "consolidation")
    yy, xx = np.mgrid[0:hu.shape[0], 0:hu.shape[1]].astype(np.float32)
    dy, dx = (yy - cy) * py, (xx - cx) * px
    d, ang = np.hypot(dy, dx), np.arctan2(dy, dx)
    k = np.arange(2, 6)
    amp = rng.uniform(0.03, 0.25 if kind == "consolidation" else 0.12, k.size)
    ph = rng.uniform(0, 2 * np.pi, k.size)
    rr = r * (1 + (amp[:, None, None] * np.cos(k[:, None, None] * ang[None] + ph[:, None, None])).sum(0))
    smooth = ndi.gaussian_filter(hu, 1.0 / py)
    if kind == "spiculated":
        w = _sig((0.6 * rr - d) / 0.5)
        for a in rng.uniform(0, 2 * np.pi, int(rng.integers(6, 12))):
            length, width = r * rng.uniform(1.2, 2.2), rng.uniform(0.8, 1.6)
            along = dx * np.cos(a) + dy * np.sin(a)
            across = np.abs(-dx * np.sin(a) + dy * np.cos(a))
            taper = np.clip(1 - along / length, 0, 1)
            w = np.maximum(w, (along > 0) * (along < length) * _sig((width / 2 * (0.3 + 0.7 * taper) - across) / 0.3))
        w = w * lung
        return hu + w * (rng.uniform(20, 50) - smooth), w
    if kind == "consolidation":
        w = _sig((rr - d) / 1.5) * lung
        return hu + w * (rng.uniform(-100, 40) - smooth), w
    if kind == "cavitary":
        outer = _sig((rr - d) / 0.5)
        inner = _sig((rng.uniform(0.45, 0.65) * rr - d) / 0.5)
        wall, cav = np.clip(outer - inner, 0, 1) * lung, inner * lung
        new = hu + wall * (rng.uniform(10, 50) - smooth) + cav * (-1000.0 - smooth)
        return new, np.clip(wall + cav, 0, 1)
    raise ValueError(f"unknown lesion kind {kind!r}")


def inject(hu: np.ndarray, lung: np.ndarray, spacing_yx, kind: str, diameter_mm: float, rng: np.random.Generator):
    """One lesion of ``kind`` and nominal ``diameter_mm`` in a 2-D HU slice.

    Parameters
    ----------
    hu : np.ndarray
        float32 ``(y, x)`` in HU (not modified).
    lung : np.ndarray
        bool ``(y, x)``: where the lesion goes (and stays).
    spacing_yx : (float, float)
        Pixel size in mm.

    Returns
    -------
    new_hu : np.ndarray
        float32 ``(y, x)``.
    mask : np.ndarray
        bool ``(y, x)``: pixels at least half lesion.
    """
    hu = np.asarray(hu, np.float32)
    lung = np.asarray(lung, bool)
    if kind in ("solid", "part_solid", "ground_glass"):
        new, m, _ = inject_lesions(hu[None], lung[None], (2.5, *spacing_yx), 1, kinds=kind,
                                   size_mm=(diameter_mm, diameter_mm), rng=rng)
        new, mask = new[0], m[0] > 0
    else:
        new, w = _custom(hu, lung, spacing_yx, kind, diameter_mm, rng)
        mask = w >= 0.5
    if not mask.any():
        raise ValueError("lesion fell outside the lung")
    return np.asarray(new, np.float32), mask


def lung_mask_hu(hu: np.ndarray) -> np.ndarray:
    """bool ``(y, x)`` lungs of a HU slice: air inside the body, holes filled, eroded 2 px."""
    from aeanomaly.masks import body_mask

    body = body_mask(hu[None], is_hu=True)[0]
    lung = ndi.binary_opening(body & (hu < -400), iterations=2)
    lab, n = ndi.label(lung)
    if n:
        sizes = ndi.sum(lung, lab, range(1, n + 1))
        lung = np.isin(lab, 1 + np.flatnonzero(sizes >= 0.01 * lung.size))
    return ndi.binary_erosion(ndi.binary_fill_holes(lung), iterations=2)


def inject_in_volume(hu: np.ndarray, truth: np.ndarray, z: int, spacing_zyx, kind: str, diameter_mm: float,
                     rng: np.random.Generator) -> None:
    """One lesion of ``kind`` and nominal ``diameter_mm`` centred on slice ``z`` of a volume, in place.

    The 2-D lesion of :func:`inject` is drawn on slice ``z``; on a neighbour slice ``dz`` mm away its HU
    change is shrunk about the lesion's centroid by ``sqrt(1 − (2·dz / diameter)²)`` (a sphere's
    cross-section) and kept inside that slice's lung, for every neighbour the sphere reaches. A vessel cut
    across and a nodule differ in exactly this extent along z, so a 2.5-D model meets the lesion as a
    blob, not as a one-slice disc.

    Parameters
    ----------
    hu : np.ndarray
        float32 ``(z, y, x)`` HU volume, modified in place.
    truth : np.ndarray
        bool ``(z, y, x)``; the lesion's pixels (at least half lesion) are set in place.
    spacing_zyx : (float, float, float)
        Voxel size in mm.
    """
    sz, sy, sx = (float(s) for s in spacing_zyx)
    lung = lung_mask_hu(hu[z])
    new, mask = inject(hu[z], lung, (sy, sx), kind, diameter_mm, rng)
    delta = new - hu[z]
    cy, cx = (float(c) for c in np.argwhere(mask).mean(axis=0))
    hu[z] = new
    truth[z] |= mask
    r = diameter_mm / 2.0
    for dz in range(1, len(hu)):
        if dz * sz >= r:
            break
        f = float(np.sqrt(1.0 - (dz * sz / r) ** 2))
        matrix, offset = np.array([1 / f, 1 / f]), np.array([cy - cy / f, cx - cx / f])
        d = ndi.affine_transform(delta, matrix, offset, order=1, mode="constant")
        m = ndi.affine_transform(mask.astype(np.float32), matrix, offset, order=1, mode="constant") >= 0.5
        for zz in (z - dz, z + dz):
            if 0 <= zz < len(hu):
                inside = lung_mask_hu(hu[zz])
                hu[zz] += d * inside
                truth[zz] |= m & inside
