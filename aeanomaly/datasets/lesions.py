"""Lesion injection into any CT volume in Hounsfield units (phantoms or real scans).

Lesions are lobulated, slightly irregular blobs sized in mm, rendered with sub-voxel sampling so that
anisotropic voxels get the right partial-volume effect. The scan's own noise texture is kept inside
the lesion: solid kinds replace the *smoothed* background by the lesion value and keep the
high-frequency residual; additive kinds (ground glass, hypo/hyperdense) shift the tissue by a delta.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import ConfigError

#: Lesion kinds suited to aerated lung.
LUNG_KINDS = ("solid", "part_solid", "ground_glass")
#: Lesion kinds suited to solid organs (liver, spleen, kidney).
SOFT_TISSUE_KINDS = ("hypodense", "hyperdense", "cyst")
KINDS = LUNG_KINDS + SOFT_TISSUE_KINDS
#: Boundary width in mm of each kind (sigmoid scale): cysts are sharp, ground glass is fuzzy.
_EDGE_MM = {"solid": 0.5, "part_solid": 1.6, "ground_glass": 1.6, "hypodense": 1.0, "hyperdense": 1.0, "cyst": 0.3}


def kinds_for(hu: np.ndarray, region_mask: np.ndarray) -> tuple[str, ...]:
    """Lesion kinds suited to the tissue under ``region_mask``: lung-like (median < −400 HU) or soft tissue."""
    return LUNG_KINDS if float(np.median(np.asarray(hu)[region_mask])) < -400 else SOFT_TISSUE_KINDS


def check_kinds(kinds: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if kinds is None:
        return None
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"unknown lesion kind(s) {bad or '(none given)'}; expected some of {', '.join(KINDS)}")
    return kinds


def _shape_fn(rng: np.random.Generator):
    """Random lobulated radius multiplier ``f(u)`` on unit directions ``u`` (..., 3), mean ≈ 1."""
    n = int(rng.integers(3, 7))
    v = rng.normal(0, 1, (n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    amp = rng.uniform(0.05, 0.18, n)
    kappa = 4.0
    mean = amp.sum() * (1 - np.exp(-2 * kappa)) / (2 * kappa)
    axes = np.linalg.qr(rng.normal(0, 1, (3, 3)))[0]
    stretch = 1 + np.clip(rng.normal(0, 0.07, 3), -0.15, 0.15)

    def radius_factor(u):
        lobes = (amp * np.exp(kappa * (u @ v.T - 1))).sum(-1)
        ell = 1 / np.sqrt((((u @ axes) / stretch) ** 2).sum(-1))
        return ell * (1 + lobes - mean)

    return radius_factor


def _weights(box_shape, centre_off, spacing, radius_mm, edge_mm, shape_fn, core=1.0):
    """Voxel-averaged lesion membership in [0, 1] over a box, supersampled to ≈ 1 mm."""
    subs = [int(np.clip(np.ceil(s / 1.0), 1, 5)) for s in spacing]
    axes = []
    for n, k, c, s in zip(box_shape, subs, centre_off, spacing):
        off = (np.arange(n)[:, None] + (np.arange(k)[None, :] + 0.5) / k - 0.5).ravel()
        axes.append((off - c) * s)
    dz, dy, dx = np.meshgrid(*axes, indexing="ij")
    d = np.sqrt(dz * dz + dy * dy + dx * dx)
    u = np.stack([dz, dy, dx], -1) / np.maximum(d, 1e-6)[..., None]
    u[d < 1e-6] = (1.0, 0.0, 0.0)
    r = radius_mm * core * shape_fn(u)
    w = 1 / (1 + np.exp(-np.clip((r - d) / edge_mm, -30, 30)))
    nz, ny, nx = box_shape
    w = w.reshape(nz, subs[0], ny, subs[1], nx, subs[2]).mean(axis=(1, 3, 5))
    return np.where(w < 0.01, 0.0, w)  # no far tails: the volume is untouched a little beyond the edge


def _pick_centre(rng, region, dist_in, radius, placed, spacing):
    """A voxel of ``region``, preferring ones deep enough for the lesion and away from earlier lesions."""
    cand = np.argwhere(region)
    mm = cand * np.asarray(spacing)
    far = np.ones(len(cand), bool)
    for c, r in placed:
        far &= np.linalg.norm(mm - np.asarray(c) * spacing, axis=1) > radius + r
    deep = dist_in[tuple(cand.T)] >= min(0.8 * radius, 0.7 * float(dist_in.max()))
    for ok in (deep & far, far, np.ones(len(cand), bool)):
        if ok.any():
            return tuple(int(v) for v in cand[rng.choice(np.flatnonzero(ok))])
    raise AssertionError("unreachable")


def inject_lesions(hu: np.ndarray, region_mask: np.ndarray, spacing: Sequence[float], n_lesions: int = 1,
                   kinds: Iterable[str] | str | None = None, size_mm: tuple[float, float] = (5, 20),
                   rng: np.random.Generator | int | None = None, confine: bool = True):
    """Blend synthetic lesions into a CT volume; the input is never modified.

    Parameters
    ----------
    hu : np.ndarray
        ``(z, y, x)`` volume in HU (a single slice is ``(1, y, x)``).
    region_mask : np.ndarray
        bool ``(z, y, x)``: where lesion centres may go (e.g. lungs, liver). With ``confine`` the lesion
        also stays inside it (a nodule at the pleura is flattened against the chest wall).
    spacing : sequence of float
        Voxel size ``(z, y, x)`` in mm; lesion sizes are physical, so anisotropic voxels are handled.
    n_lesions : int
        Number of lesions (0 returns an unchanged copy).
    kinds : str, sequence of str or None
        Kinds to draw from (uniformly): ``solid`` (≈ +40 HU), ``part_solid`` (solid core in a ground-glass
        halo), ``ground_glass`` (parenchyma raised to ≈ −600…−300 HU, vessels stay visible),
        ``hypodense`` (30–60 HU below the organ), ``hyperdense`` (40–80 HU above), ``cyst``
        (0–15 HU, sharp). None picks lung kinds for lung-like regions and organ kinds otherwise.
    size_mm : (float, float)
        Range of nominal diameters in mm, drawn uniformly.
    rng : np.random.Generator, int or None
        Random source (an int is a seed).
    confine : bool
        Keep each lesion inside ``region_mask``.

    Returns
    -------
    new_hu : np.ndarray
        float32 ``(z, y, x)`` HU with the lesions.
    lesion_mask : np.ndarray
        uint8 ``(z, y, x)``: 0 background, ``i`` for the i-th lesion (voxels at least half lesion).
    records : list of dict
        Per lesion: ``kind``, ``centre_zyx`` (voxel), ``diameter_mm``, ``delta_hu`` (mean change over its
        mask), ``voxels``.

    Raises
    ------
    ConfigError
        Empty or mismatched ``region_mask``, unknown kind, bad size or spacing.
    """
    vol = np.asarray(hu)
    if vol.ndim != 3:
        raise ConfigError(f"inject_lesions needs a (z, y, x) volume, got shape {vol.shape}")
    region = np.asarray(region_mask)
    if region.shape != vol.shape:
        raise ConfigError(f"region_mask shape {region.shape} differs from the volume's {vol.shape}")
    region = region.astype(bool)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ConfigError(f"spacing must be 3 positive mm (z, y, x), got {spacing}")
    lo, hi = (float(v) for v in size_mm)
    if not (0 < lo <= hi):
        raise ConfigError(f"size_mm must be (min, max) diameters with 0 < min <= max, got {size_mm}")
    if int(n_lesions) < 0:
        raise ConfigError(f"n_lesions must be >= 0, got {n_lesions}")
    kinds = check_kinds(kinds)
    if not region.any():
        raise ConfigError("region_mask is empty: there is nowhere to place a lesion")
    rng = np.random.default_rng(rng)
    kinds = kinds or kinds_for(vol, region)
    out = vol.astype(np.float32, copy=True)
    mask = np.zeros(vol.shape, np.uint8)
    records: list[dict] = []
    # depth inside the region in mm; beyond the array counts as outside
    dist_in = ndi.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    soft_region = ndi.gaussian_filter(region.astype(np.float32), 0.5) if confine else None
    placed: list[tuple[tuple[int, int, int], float]] = []
    for i in range(int(n_lesions)):
        kind = str(rng.choice(kinds))
        diameter = float(rng.uniform(lo, hi))
        radius = diameter / 2
        centre = _pick_centre(rng, region, dist_in, radius, placed, spacing)
        placed.append((centre, radius))
        edge = _EDGE_MM[kind]
        half = [int(np.ceil((radius * 1.4 + 3 * edge) / s)) + 1 for s in spacing]
        lo_i = [max(0, c - h) for c, h in zip(centre, half)]
        hi_i = [min(n, c + h + 1) for c, n, h in zip(centre, vol.shape, half)]
        box = tuple(slice(a, b) for a, b in zip(lo_i, hi_i))
        bshape = tuple(b - a for a, b in zip(lo_i, hi_i))
        off = [c - a for c, a in zip(centre, lo_i)]
        shape_fn = _shape_fn(rng)
        w = _weights(bshape, off, spacing, radius, edge, shape_fn)
        if confine:
            w = w * np.clip(soft_region[box] * 1.5, 0, 1)
        w[tuple(off)] = max(w[tuple(off)], 0.5)  # the centre always belongs to the lesion
        before = out[box].copy()
        sigma = [min(1.5 / s, 2.0) if s < 3 else 0.0 for s in spacing]
        bg = ndi.gaussian_filter(before, sigma)
        tex = ndi.gaussian_filter(rng.standard_normal(bshape).astype(np.float32), [2.0 / s for s in spacing])
        tex /= max(float(tex.std()), 1e-6)
        inside = w >= 0.5
        if kind in ("ground_glass", "part_solid"):
            level = float(rng.uniform(-650, -350)) if kind == "ground_glass" else float(rng.uniform(-600, -450))
            near = (w > 0.05) & region[box]  # the parenchyma around the lesion sets the baseline
            delta = max(level - float(np.median(before[near if near.any() else inside])), 200.0)
            new = before + w * delta * (1 + 0.15 * tex)
            if kind == "part_solid":
                wc = _weights(bshape, off, spacing, radius, _EDGE_MM["solid"], shape_fn, core=rng.uniform(0.35, 0.6))
                new = new + wc * (rng.uniform(15, 55) + 6 * tex - ndi.gaussian_filter(new, sigma))
        elif kind in ("solid", "cyst"):
            target = rng.uniform(15, 55) + 8 * tex if kind == "solid" else rng.uniform(0, 15)
            new = before + w * (target - bg)
        else:
            delta = -rng.uniform(30, 60) if kind == "hypodense" else rng.uniform(40, 80)
            new = before + w * (delta + 5 * tex)
        out[box] = new
        lesion = inside & (mask[box] == 0)
        mask[box][lesion] = i + 1
        records.append(dict(kind=kind, centre_zyx=centre, diameter_mm=round(diameter, 2)))
    change = out - vol
    for i, rec in enumerate(records, start=1):
        sel = mask == i
        rec["delta_hu"] = round(float(change[sel].mean()), 1) if sel.any() else 0.0
        rec["voxels"] = int(sel.sum())
    return out, mask, records
