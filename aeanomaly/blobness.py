"""Blob-shaped residual, pure numpy/scipy: Hessian-of-Gaussian blobness of a residual map, in-plane
(:func:`residual_blobness`) and across slices (:func:`residual_blobness_3d`), which the scoring stage's
blob gates weight the residual with (:class:`aeanomaly.scoring.ScoringParams`).

What the autoencoder failed to reconstruct is kept where it has the shape of a lesion: a round spot, and
in a volume a spot that ends within a few slices. Tubes (vessels, in the slice or cut across it), sheets
and edges (fissures, the pleura, reconstructed a little off) lose their height.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from .arrays import as_volume, check_spacing, mask_like
from .parallel import n_threads


#: Scales (Gaussian σ, mm) of :func:`residual_blobness`: lesions of about 5-25 mm across.
BLOB_SCALES_MM = (3.0, 6.0)
#: Scales below this many pixels are raised to it (sub-pixel derivative kernels are noise).
MIN_BLOB_SIGMA_PX = 0.7
#: Scale-normalised curvature (σ²·|λ|, on the [0, 1] intensity scale) below which a residual counts as
#: flat, not a blob: above the bias of the truncated derivative kernels on a plateau (5e-4 at height 1),
#: far below a lesion's (about 0.05 for a 3 mm blob of residual 0.2).
FLAT_CURVATURE = 1e-3


def inplane_hessian_eigenvalues(volume: np.ndarray, sigma_px: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of each slice's Hessian of Gaussian at ``sigma_px`` = ``(σ_y, σ_x)`` pixels.

    ``volume`` is float32 ``(z, y, x)``; returns ``(λ_small, λ_big)``, each like ``volume``, with
    ``λ_small ≤ λ_big``. Nothing is smoothed across slices.
    """
    sig = (0.0, float(sigma_px[0]), float(sigma_px[1]))
    hyy = ndimage.gaussian_filter(volume, sig, order=(0, 2, 0))
    hxx = ndimage.gaussian_filter(volume, sig, order=(0, 0, 2))
    hxy = ndimage.gaussian_filter(volume, sig, order=(0, 1, 1))
    half = np.sqrt(((hyy - hxx) * 0.5) ** 2 + hxy ** 2)
    mean = (hyy + hxx) * 0.5
    return mean - half, mean + half


def blobness_reach_px(spacing: Sequence[float], scales_mm: Sequence[float] = BLOB_SCALES_MM) -> int:
    """How many pixels in-plane :func:`residual_blobness` looks beyond a pixel: the radius of its widest
    Gaussian derivative kernel (scipy's, truncated at 4 σ). Its value at a pixel depends only on the
    residual (and mask) that near, and on the image border within that distance."""
    _, sy, sx = check_spacing(spacing)
    return max(int(4.0 * max(s_mm / d, MIN_BLOB_SIGMA_PX) + 0.5) for s_mm in scales_mm for d in (sy, sx))


def residual_blobness(residual: np.ndarray, mask: np.ndarray | None = None, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                      scales_mm: Sequence[float] = BLOB_SCALES_MM) -> np.ndarray:
    """How blob-shaped a residual map is at each pixel, in [0, 1], per slice.

    Parameters
    ----------
    residual : np.ndarray
        ``(z, y, x)`` (or ``(y, x)``) residual ≥ 0, e.g. :func:`aeanomaly.scoring.residual_map`.
    mask : np.ndarray of bool, optional
        Same shape: residual outside it is taken as 0 (it neither makes nor breaks a blob inside).
    spacing : (3,) float
        Voxel size ``(z, y, x)`` in mm.
    scales_mm : sequence of float
        Gaussian σ of the in-plane Hessian, in mm (at least :data:`MIN_BLOB_SIGMA_PX` pixels).

    Returns
    -------
    np.ndarray
        float32, same shape: the largest over the scales of ``λ₁ / λ₂`` where both in-plane Hessian
        eigenvalues are negative (``λ₂ ≤ λ₁ < 0``: a bright spot, curved in every direction), else 0.
        A round blob scores near 1; a tube or an edge, curved across but not along, near 0; so does
        a plateau wider than the scales, inside (flat) and at its rim (an edge).

    Notes
    -----
    Frangi et al.'s blob ratio R_B (MICCAI 1998), here of the residual rather than the image: what the
    autoencoder failed to reconstruct is kept where it has the shape of a lesion. Written with scipy's
    Gaussian derivatives rather than skimage's ``hessian_matrix``, which takes one σ in pixels for every
    axis: on a ``(z, y, x)`` stack it would mix slices, and it cannot follow non-square pixels.
    """
    res = as_volume(residual, "residual")
    _, sy, sx = check_spacing(spacing)
    m = mask_like(mask, res)
    work = np.where(m, res, np.float32(0.0))
    out = np.zeros(res.shape, np.float32)
    for s_mm in scales_mm:
        sig = (max(s_mm / sy, MIN_BLOB_SIGMA_PX), max(s_mm / sx, MIN_BLOB_SIGMA_PX))
        lam_small, lam_big = inplane_hessian_eigenvalues(work, sig)
        # curved down both ways, each beyond flat (scale-normalised): a plateau or an edge's shoulder is no blob
        curved = lam_big * np.float32(sig[0] * sig[1]) < -FLAT_CURVATURE  # and so lam_small too
        ratio = np.divide(lam_big, lam_small, out=np.zeros_like(lam_big), where=curved)
        np.maximum(out, ratio, out=out)
    return np.clip(out, 0.0, 1.0).reshape(np.shape(residual))


#: Fewest slices a scan needs for :func:`residual_blobness_3d` in :func:`aeanomaly.scoring.analyse`;
#: thinner scans keep the in-plane gate alone (a lone slice has no curvature across z to measure).
MIN_BLOB_SLICES_3D = 3


def gates_across_slices(n_slices: int) -> bool:
    """Whether a scan of ``n_slices`` slices gets the blob gate across slices (at least
    :data:`MIN_BLOB_SLICES_3D`): the one rule scoring applies and calibration checks."""
    return int(n_slices) >= MIN_BLOB_SLICES_3D


def symmetric_eigenvalues_3x3(a11, a22, a33, a12, a13, a23) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues ``λ₁ ≤ λ₂ ≤ λ₃`` of symmetric 3 × 3 matrices given by their six entries (arrays of
    one shape), in closed form (the trigonometric solution of the characteristic cubic, Smith 1961).

    Written out rather than ``np.linalg.eigvalsh`` on a stack of matrices: the same values to float64
    round-off, about 7× faster (200 000 matrices: 0.018 s against 0.13 s; no per-matrix LAPACK call),
    and without the ``(n, 3, 3)`` stack in memory.
    """
    a11, a22, a33, a12, a13, a23 = (np.asarray(v, np.float64) for v in (a11, a22, a33, a12, a13, a23))
    q = (a11 + a22 + a33) / 3.0
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p = np.sqrt((b11 ** 2 + b22 ** 2 + b33 ** 2 + 2.0 * (a12 ** 2 + a13 ** 2 + a23 ** 2)) / 6.0)
    det = b11 * (b22 * b33 - a23 ** 2) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    safe = np.where(p > 0, p, 1.0)
    half_det = np.where(p > 0, det / (2.0 * safe ** 3), 0.0)  # det(B) / 2 of B = (A − qI) / p, in [−1, 1]
    phi = np.arccos(np.clip(half_det, -1.0, 1.0)) / 3.0
    big = q + 2.0 * p * np.cos(phi)
    small = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    return small, 3.0 * q - big - small, big


def residual_blobness_3d(residual: np.ndarray, mask: np.ndarray | None = None,
                         spacing: Sequence[float] = (1.0, 1.0, 1.0),
                         scales_mm: Sequence[float] = BLOB_SCALES_MM) -> np.ndarray:
    """How blob-shaped a residual volume is at each voxel, across slices too, in [0, 1].

    Parameters
    ----------
    residual : np.ndarray
        ``(z, y, x)`` residual ≥ 0 of contiguous slices, e.g. :func:`aeanomaly.scoring.residual_map`.
    mask : np.ndarray of bool, optional
        Same shape: residual outside it is taken as 0; the result is 0 outside it.
    spacing : (3,) float
        Voxel size ``(z, y, x)`` in mm: the Hessian is taken in mm, so thick slices and fine pixels
        measure one shape.
    scales_mm : sequence of float
        Gaussian σ of the Hessian, in mm on every axis (at least :data:`MIN_BLOB_SIGMA_PX` voxels).

    Returns
    -------
    np.ndarray
        float32, same shape: the largest over the scales of ``λ₃ / λ₁`` where all three eigenvalues of
        the 3-D Hessian are negative (``λ₁ ≤ λ₂ ≤ λ₃ < 0``: a bright spot curved in every direction),
        else 0. A nodule scores near 1; a vessel, a tube along any direction (one cut across is a round
        spot on each slice, see :func:`residual_blobness`), near 0, as are sheets and edges.

    Notes
    -----
    Frangi et al.'s 3-D blob measure (MICCAI 1998) of the residual. The derivatives are computed on the
    mask's bounding box with a margin of the kernels' reach, which gives the same values inside the mask
    as the whole volume (the residual is 0 outside it); eigenvalues only at the mask's voxels
    (:func:`symmetric_eigenvalues_3x3`).
    """
    if np.ndim(residual) != 3:
        raise ValueError(f"residual_blobness_3d needs a (z, y, x) volume, got shape {np.shape(residual)}")
    res = as_volume(residual, "residual")
    sp = check_spacing(spacing)
    m = mask_like(mask, res)
    out = np.zeros(res.shape, np.float32)
    if not m.any():
        return out
    sigmas = [tuple(max(s_mm / d, MIN_BLOB_SIGMA_PX) for d in sp) for s_mm in scales_mm]
    reach = [max(int(4.0 * max(sig[a] for sig in sigmas) + 0.5), 1) for a in range(3)]  # scipy's truncate 4
    box = []
    for axis, (r, n) in enumerate(zip(reach, res.shape)):
        on = np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, int(on[0]) - r), min(n, int(on[-1]) + r + 1)))
    box = tuple(box)
    mb = m[box]
    work = np.where(mb, res[box], np.float32(0.0))
    inside = np.nonzero(mb)
    best = np.zeros(len(inside[0]), np.float32)
    orders = {(0, 0): (2, 0, 0), (1, 1): (0, 2, 0), (2, 2): (0, 0, 2), (0, 1): (1, 1, 0), (0, 2): (1, 0, 1), (1, 2): (0, 1, 1)}

    def second_derivative(task):  # in mm⁻², at the mask's voxels
        sig, (i, j) = task
        return ndimage.gaussian_filter(work, sig, order=orders[i, j])[inside] / np.float32(sp[i] * sp[j])

    tasks = [(sig, ij) for sig in sigmas for ij in orders]
    with ThreadPoolExecutor(min(n_threads(), len(tasks))) as pool:  # scipy's filters release the GIL
        derivatives = dict(zip(tasks, pool.map(second_derivative, tasks)))
    for sig in sigmas:
        h = {ij: derivatives.pop((sig, ij)) for ij in orders}
        # a matrix with every eigenvalue negative has a negative diagonal: the eigenvalues are needed there only
        at = np.flatnonzero((h[0, 0] < 0) & (h[1, 1] < 0) & (h[2, 2] < 0))
        small, _, big = symmetric_eigenvalues_3x3(*(h[ij][at] for ij in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))))
        scale2 = float(np.prod([s * d for s, d in zip(sig, sp)])) ** (2.0 / 3.0)  # σ² in mm², scale-normalised
        curved = big * scale2 < -FLAT_CURVATURE  # and so the other two
        ratio = np.divide(big, small, out=np.zeros_like(big), where=curved).astype(np.float32)
        best[at] = np.maximum(best[at], ratio)
    view = out[box]
    view[inside] = np.clip(best, 0.0, 1.0)
    return out
