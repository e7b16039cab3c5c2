"""Synthetic lesions for the quality benchmark, injected into real 2-D lung slices.

The kmader-lungs-64 slices are min-max normalised per image, not HU. Each slice gets a *pseudo-HU*
scale by a two-point linear map fitted on the slice itself: the median of its lung pixels (manual
lung mask) ↦ −850 HU and the median of its non-lung tissue brighter than the lung ↦ 0 HU. Lesions are
drawn in that pseudo-HU scale and mapped back (clipped to [0, 1]), so a lesion has the same contrast
to the lung whatever the slice's normalisation.

The in-plane pixel size of the 64 px slices is not stored; LUNA16 scans have 0.55–0.8 mm pixels at
512 px, so one 64 px pixel is 4.4–6.4 mm: :data:`PIXEL_MM` = 5.5 mm is assumed throughout.

Kinds (:data:`KINDS`): three from :func:`aeanomaly.datasets.lesions.inject_lesions` (``solid``,
``ground_glass``, ``part_solid``) and three drawn here (``spiculated``, ``consolidation``,
``cavitary``). Sizes (:data:`SIZES`) are nominal diameters in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from aeanomaly.datasets.lesions import inject_lesions

PIXEL_MM = 5.5
LUNG_HU, TISSUE_HU = -850.0, 0.0
#: Kinds used to choose the scoring defaults, and kinds kept out of that choice.
TUNING_KINDS = ("solid", "ground_glass")
HELD_OUT_KINDS = ("part_solid", "spiculated", "consolidation", "cavitary")
KINDS = TUNING_KINDS + HELD_OUT_KINDS
#: Size classes: nominal diameter range in mm (≈ pixels at 5.5 mm: 1.5–2.5, 2.5–4.4, 4.4–7.3).
SIZES = {"small": (8.0, 14.0), "medium": (14.0, 24.0), "large": (24.0, 40.0)}

KIND_DOC = {
    "solid": "solid nodule: lobulated blob at +15…+55 pseudo-HU, sharp edge (aeanomaly inject_lesions)",
    "ground_glass": "ground-glass opacity: parenchyma raised to −650…−350 pseudo-HU with texture, fuzzy edge "
                    "(inject_lesions)",
    "part_solid": "part-solid: ground-glass halo with a solid core of 35–60 % of the radius (inject_lesions)",
    "spiculated": "irregular / spiculated: solid core (+20…+50) of 60 % of the radius with 6–11 radial "
                  "spicules 2.5–4 mm wide reaching 1.2–2.2 radii",
    "consolidation": "consolidation patch: pleural-based irregular patch (random smooth boundary) at "
                     "−100…+40 pseudo-HU, confined to the lung",
    "cavitary": "cavitary lesion: ring with a wall of +10…+50 pseudo-HU around an air cavity (−1000) of "
                "45–65 % of the radius",
}


def pseudo_hu_map(image: np.ndarray, lung: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` with ``pseudo_hu = a * image + b`` for one normalised slice and its lung mask."""
    v = np.asarray(image, np.float32)
    lung = np.asarray(lung, bool)
    lung_med = float(np.median(v[lung]))
    away = ~ndi.binary_dilation(lung, iterations=2)
    hi = float(np.quantile(v, 0.99))
    tissue = away & (v > lung_med + 0.1) & (v < hi)
    t_med = float(np.median(v[tissue])) if tissue.sum() > 20 else lung_med + 0.33
    a = (TISSUE_HU - LUNG_HU) / max(t_med - lung_med, 0.05)
    return a, LUNG_HU - a * lung_med


def _supersampled_grid(shape, centre, sub=5):
    """Coordinates (mm) relative to ``centre`` (px) of a ``sub``× supersampled 2-D grid."""
    off = (np.arange(sub) + 0.5) / sub - 0.5
    yy = (np.arange(shape[0])[:, None] + off[None, :]).ravel()
    xx = (np.arange(shape[1])[:, None] + off[None, :]).ravel()
    dy, dx = np.meshgrid((yy - centre[0]) * PIXEL_MM, (xx - centre[1]) * PIXEL_MM, indexing="ij")
    return dy, dx


def _down(w, shape, sub=5):
    return w.reshape(shape[0], sub, shape[1], sub).mean(axis=(1, 3))


def _pick_centre(rng, lung, radius_mm, pleural=False):
    dist = ndi.distance_transform_edt(np.pad(lung, 1))[1:-1, 1:-1] * PIXEL_MM
    cand = np.argwhere(lung)
    d = dist[tuple(cand.T)]
    if pleural:
        ok = (d <= max(1.5 * PIXEL_MM, 0.3 * radius_mm)) & (d >= 0.9 * PIXEL_MM)
    else:
        ok = d >= min(0.8 * radius_mm, 0.7 * float(dist.max()))
    if not ok.any():
        ok = np.ones(len(cand), bool)
    return tuple(int(v) for v in cand[rng.choice(np.flatnonzero(ok))])


def _texture(rng, shape, sigma_px=0.6):
    t = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_px)
    return t / max(float(t.std()), 1e-6)


def _custom(hu, lung, kind, diameter, rng):
    """Pseudo-HU slice with one lesion of a kind drawn here; returns (new_hu, membership ``w``)."""
    r = diameter / 2.0
    shape = hu.shape
    centre = _pick_centre(rng, lung, r, pleural=kind == "consolidation")
    dy, dx = _supersampled_grid(shape, centre)
    d = np.hypot(dy, dx)
    ang = np.arctan2(dy, dx)
    # lobulated boundary: radius modulated by a few low-order harmonics
    k = np.arange(2, 6)
    amp = rng.uniform(0.03, 0.12 if kind != "consolidation" else 0.25, k.size)
    ph = rng.uniform(0, 2 * np.pi, k.size)
    rr = r * (1 + (amp[:, None, None] * np.cos(k[:, None, None] * ang[None] + ph[:, None, None])).sum(0))
    tex = _texture(rng, shape)
    if kind == "spiculated":
        core = 1 / (1 + np.exp(-np.clip((0.6 * rr - d) / 0.7, -30, 30)))
        spic = np.zeros_like(d)
        for a in rng.uniform(0, 2 * np.pi, int(rng.integers(6, 12))):
            length = r * rng.uniform(1.2, 2.2)
            width = rng.uniform(2.5, 4.0)
            along = dx * np.cos(a) + dy * np.sin(a)
            across = np.abs(-dx * np.sin(a) + dy * np.cos(a))
            taper = np.clip(1 - along / length, 0, 1)
            spic = np.maximum(spic, ((along > 0) & (across < width / 2 * (0.4 + 0.6 * taper))).astype(float))
        w = _down(np.maximum(core, spic), shape) * lung
        target = rng.uniform(20, 50) + 8 * tex
        return hu + w * (target - hu), w
    if kind == "consolidation":
        w = _down(1 / (1 + np.exp(-np.clip((rr - d) / 1.5, -30, 30))), shape) * lung
        target = rng.uniform(-100, 40) + 15 * tex
        return hu + w * (target - hu), w
    if kind == "cavitary":
        outer = 1 / (1 + np.exp(-np.clip((rr - d) / 0.6, -30, 30)))
        inner = 1 / (1 + np.exp(-np.clip((rng.uniform(0.45, 0.65) * rr - d) / 0.6, -30, 30)))
        w_wall = _down(np.clip(outer - inner, 0, 1), shape) * lung
        w_cav = _down(inner, shape) * lung
        wall = rng.uniform(10, 50) + 8 * tex
        new = hu + w_wall * (wall - hu) + w_cav * (-1000.0 - hu)
        return new, np.clip(w_wall + w_cav, 0, 1)
    raise ValueError(kind)


def inject(image: np.ndarray, lung: np.ndarray, kind: str, size: str, rng: np.random.Generator):
    """One lesion of ``kind`` and ``size`` in a normalised 2-D slice.

    Parameters
    ----------
    image : np.ndarray
        float32 ``(y, x)`` in [0, 1] (min-max normalised slice).
    lung : np.ndarray
        bool ``(y, x)`` manual lung mask; the lesion centre lies in it and the lesion stays in it.
    kind : str
        One of :data:`KINDS`.
    size : str
        One of :data:`SIZES`.

    Returns
    -------
    new_image : np.ndarray
        float32 ``(y, x)`` in [0, 1].
    mask : np.ndarray
        bool ``(y, x)``: pixels at least half lesion (the ground truth).
    record : dict
        kind, size class, nominal diameter (mm), centre, pixels, mean contrast (pseudo-HU).
    """
    a, b = pseudo_hu_map(image, lung)
    hu = a * np.asarray(image, np.float32) + b
    diameter = float(rng.uniform(*SIZES[size]))
    if kind in ("solid", "ground_glass", "part_solid"):
        new, m, rec = inject_lesions(hu[None], lung[None], (2.0, PIXEL_MM, PIXEL_MM), 1, kinds=kind,
                                     size_mm=(diameter, diameter), rng=rng)
        new, mask = new[0], m[0] > 0
    else:
        new, w = _custom(hu, lung, kind, diameter, rng)
        mask = w >= 0.5
        if not mask.any():
            mask[np.unravel_index(int(np.argmax(w)), w.shape)] = True
    out = np.clip((new - b) / a, 0.0, 1.0).astype(np.float32)
    cy, cx = (float(c) for c in np.argwhere(mask).mean(axis=0))
    return out, mask, {
        "kind": kind, "size": size, "diameter_mm": round(diameter, 1), "centre_yx": [round(cy, 1), round(cx, 1)],
        "pixels": int(mask.sum()), "contrast_pseudo_hu": round(float((new - hu)[mask].mean()), 1),
    }
