"""Scoring, pure numpy/scipy: reconstruction → residual map in the scoring region → smoothed heatmap →
slice and scan scores. Higher is always more anomalous.

:func:`analyse` is the whole stage for one prepared scan and returns an :class:`Analysis`; the
scoring parameters are one :class:`ScoringParams`. Volumes are ``(z, y, x)`` on the model grid with
``spacing`` ``(z, y, x)`` in mm; residuals and heatmaps are on the [0, 1] windowed intensity scale.
Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from .arrays import as_volume, check_spacing, mask_like
from .blobness import blobness_reach_px, gates_across_slices, residual_blobness, residual_blobness_3d
from .errors import ConfigError
from .masks import ROIS, disk_erode, true_extent
from .parallel import map_slices

SLICE_SCORES = ("mae", "p99", "p999", "topk")
SCAN_AGGREGATIONS = ("max", "top3", "top5", "mean")
RESIDUAL_SIGNS = ("abs", "positive", "negative")
#: How slice scores are compared before calibration: raw, or against normal slices of the same
#: scoring-region size (:class:`aeanomaly.calibrate.RegionSizeReference`).
SLICE_NORMS = ("none", "area", "location")


@dataclass(frozen=True)
class ScoringParams:
    """How residuals become heatmaps, scores and lesions (the benchmarks choose the defaults; see
    README "Benchmarks").

    Attributes
    ----------
    roi : {"auto", "body", "lung"}
        Where residuals count (see :func:`aeanomaly.masks.resolved_roi`); a U-Net head's organ region
        replaces it.
    slice_score : {"mae", "p99", "p999", "topk"}
        Slice score from the heatmap in the region (``mae``: mean residual, the seed papers' score).
    scan_aggregation : {"max", "top3", "top5", "mean"}
        Scan score from the slice scores.
    residual_sign : {"auto", "abs", "positive", "negative"}
        ``auto``: positive residuals in the lung region without a U-Net head, absolute elsewhere.
    sigma_mm, erode_mm, opening_mm : float
        In-plane Gaussian σ of the heatmap, erosion of the region, opening radius of lesion masks (mm).
    blob_gate : float
        Exponent ``p`` of the residual's own blobness (:func:`aeanomaly.blobness.residual_blobness`, in
        [0, 1]) that weights the residual before smoothing: ``residual · B^p``. Blob-shaped residual (a
        nodule the network did not reconstruct) keeps its height, tube- and edge-shaped residual (a vessel
        or a fissure reconstructed slightly off) loses it. 0 leaves the residual as it is; the default 2 is
        the real-CT tune split's choice. Its scales (:data:`aeanomaly.blobness.BLOB_SCALES_MM`) are
        nodule-sized: a lesion much wider than about 25 mm is a plateau of residual whose inside and rim
        the gate lowers.
    blob_gate_3d : float
        Exponent ``q`` of the residual's blobness across slices too (the 3-D Hessian,
        :func:`aeanomaly.blobness.residual_blobness_3d`), a further weight ``· B₃^q`` beside the in-plane
        one: a vessel cut across is a round spot on its slice, the same spot moved a little on the next
        ones (a tube along z), while a nodule ends within a few slices. Scans of fewer than
        :data:`aeanomaly.blobness.MIN_BLOB_SLICES_3D` slices (single slices) keep the in-plane gate alone.
        0 (the default) leaves it off.
    sigma_z_mm : float
        Gaussian σ (mm) of a weighted average of the heatmap over neighbouring slices
        (:func:`z_smoothed_heatmap`): a lesion persists at the same place on the next slices, a vessel
        cut across moves. 0 (the default) keeps every slice's heatmap its own.
    pixel_quantile : float
        Quantile of normal heatmap pixels that sets the pixel (lesion) threshold.
    min_lesion_mm2, min_lesion_mm3 : float, optional
        Lesions smaller in their largest cross-section (mm²) or, when set, in volume (mm³) are dropped.
    min_body_fraction : float
        Slices with less body than this fraction of the slice are not scored.
    slice_fdr : float, optional
        Slice labels by Benjamini–Hochberg at this FDR instead of the per-slice threshold.
    slice_norm : {"area", "none"}
        ``area``: slice scores (and the scan score aggregated from them) are standardised against the
        calibration normals' slices of the same scoring-region size, so that the lung apex and base,
        where the small lungs' edges raise every residual, are not flagged for where they lie.
        ``location``: the same reference's median at the slice's region size is subtracted, and all sizes
        share one spread (the pooled deviations from those medians). ``none`` (the default, the real-CT tune
        split's choice with the blob gate): raw slice scores.
        Takes effect at calibration.
    seg_weight : float
        In [0, 1]; used only by a detector that holds a ``dae+seg`` segmenter. Its heatmap is
        ``seg_weight`` × the segmenter's anomaly probability + (1 − ``seg_weight``) × the residual heatmap
        over its pixel threshold on the calibration normals, clipped to [0, 1]
        (:func:`aeanomaly.model.selfsup.fused_heatmap`). 1: the probability alone; the default 0.25 is the
        real-CT tune split's choice. Takes effect at calibration, which fixes that residual scale.
    """

    roi: str = "auto"
    slice_score: str = "p99"
    scan_aggregation: str = "top3"
    residual_sign: str = "auto"
    # σ 6 mm with the blob gate 2: what the real-CT tune split chose in every fold of three seeds, the gate 2
    # in five of six (README "Detection on real CT"); σ 3 mm and no gate before
    sigma_mm: float = 6.0
    sigma_z_mm: float = 0.0
    blob_gate: float = 2.0
    blob_gate_3d: float = 0.0
    erode_mm: float = 6.0
    opening_mm: float = 2.0
    pixel_quantile: float = 0.999
    min_lesion_mm2: float = 12.0
    min_lesion_mm3: float | None = None
    min_body_fraction: float = 0.05
    slice_fdr: float | None = None
    # none: what the real-CT tune split chose over area in four of six folds of three seeds, with every held-out
    # part as good or better; with location offered too the folds split 2/2/2, so it stayed (README
    # "Detection on real CT", the slice normalisation); area before
    slice_norm: str = "none"
    # 0.25: what the real-CT tune split chose among 1, 0.75, 0.5 and 0.25 in all four folds of two seeds
    # (README "The self-supervised segmenter with the blob gate"); 1 before the option
    seg_weight: float = 0.25

    def validated(self) -> "ScoringParams":
        """Self, after checking every value (ConfigError naming the parameter)."""
        choices = {"roi": ROIS, "slice_score": SLICE_SCORES, "scan_aggregation": SCAN_AGGREGATIONS,
                   "residual_sign": ("auto", *RESIDUAL_SIGNS), "slice_norm": SLICE_NORMS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("sigma_mm", "sigma_z_mm", "blob_gate", "blob_gate_3d", "erode_mm", "opening_mm", "min_lesion_mm2"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a number ≥ 0, got {v!r}")
        if self.min_lesion_mm3 is not None and not (np.isfinite(self.min_lesion_mm3) and self.min_lesion_mm3 >= 0):
            raise ConfigError(f"min_lesion_mm3 must be ≥ 0 or None, got {self.min_lesion_mm3!r}")
        if not 0.0 < float(self.pixel_quantile) < 1.0:
            raise ConfigError(f"pixel_quantile must be in (0, 1), got {self.pixel_quantile!r}")
        if not 0.0 <= float(self.min_body_fraction) < 1.0:
            raise ConfigError(f"min_body_fraction must be in [0, 1), got {self.min_body_fraction!r}")
        if self.slice_fdr is not None and not 0.0 < float(self.slice_fdr) < 1.0:
            raise ConfigError(f"slice_fdr must be in (0, 1), got {self.slice_fdr!r}")
        w = self.seg_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
            raise ConfigError(f"seg_weight must be a number in [0, 1], got {w!r}")
        return self

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict:
        return asdict(self)


def resolved_sign(sign: str, roi: str, region_head: bool = False) -> str:
    """``auto`` → ``positive`` in the (unsupervised) lung region, else ``abs``."""
    if sign != "auto":
        return sign
    return "positive" if roi == "lung" and not region_head else "abs"


@dataclass
class Analysis:
    """One scan scored on the model grid (no calibration needed).

    Attributes
    ----------
    image, reconstruction : np.ndarray
        float32 ``(z, size, size)``: the centre channel of the input and its reconstruction in [0, 1]
        (reconstruction 0 on slices that are not scored).
    region : np.ndarray
        bool ``(z, size, size)``: the scoring region before erosion.
    mask : np.ndarray
        bool ``(z, size, size)``: where residuals count (eroded region on scored slices).
    heatmap : np.ndarray
        float32 ``(z, size, size)``: smoothed residual, 0 outside ``mask``.
    slice_scores : np.ndarray
        float64 ``(z,)``; NaN where the slice has no mask.
    scan_score : float
        Aggregate of the finite slice scores; NaN when none.
    spacing : tuple
        Model-grid voxel size ``(z, y, x)`` in mm.
    note : str
        Why the region is not the one asked for (e.g. no lung found: scored in the body), else "".
    prepared : PreparedScan, optional
        The scan on the model grid (set by the detector).
    organ_labels : np.ndarray, optional
        int16 ``(z, size, size)`` labels of a U-Net head that gave the region (set by the detector).
    """

    image: np.ndarray
    reconstruction: np.ndarray
    region: np.ndarray
    mask: np.ndarray
    heatmap: np.ndarray
    slice_scores: np.ndarray
    scan_score: float
    spacing: tuple[float, float, float]
    note: str = ""
    prepared: object = None
    organ_labels: np.ndarray | None = None


def analyse(image: np.ndarray, reconstruction: np.ndarray, region: np.ndarray, keep: np.ndarray,
            spacing: Sequence[float], params: ScoringParams, sign: str, note: str = "") -> Analysis:
    """Residual → heatmap → slice and scan scores of one scan on the model grid.

    Parameters
    ----------
    image, reconstruction : np.ndarray
        float32 ``(z, size, size)`` in [0, 1].
    region : np.ndarray
        bool ``(z, size, size)`` scoring region (:func:`aeanomaly.masks.scoring_region`).
    keep : np.ndarray
        bool ``(z,)``: the slices to score.
    spacing : (3,) float
        Model-grid voxel size ``(z, y, x)`` in mm.
    params : ScoringParams
    sign : {"abs", "positive", "negative"}
        The resolved residual sign (:func:`resolved_sign`).

    Returns
    -------
    Analysis
    """
    sp = check_spacing(spacing)
    erode_px = int(round(params.erode_mm / max(sp[1], 1e-6)))

    across_z = params.sigma_z_mm > 0 and len(image) > 1
    later = across_z and params.slice_score != "mae"  # scored from the heatmap after the pass across z
    gate_3d = params.blob_gate_3d > 0 and gates_across_slices(len(image))

    def residual(x, x_hat, reg, k):
        return residual_map(x, x_hat, sign), disk_erode(reg, erode_px) & k[:, None, None]

    def gated(r, m):
        return r * residual_blobness(r, m, sp) ** np.float32(params.blob_gate) if params.blob_gate > 0 else r

    def heat_and_scores(r, m):
        h = residual_heatmap(r, mask=m, sigma_mm=params.sigma_mm, spacing=sp)
        if later:
            return h
        return h, slice_scores(r if params.slice_score == "mae" else h, m, params.slice_score)

    # The gate and the heatmap of a chunk are computed in the box of its mask, widened by the gate's
    # reach: outside the mask both are 0, and inside the box they are what the whole slices give (the
    # heatmap's normalised convolution pads with zeros, which is what lies outside the mask; the gate's
    # kernels reach no further than the widening, or to the image border, which the box then shares).
    reach = blobness_reach_px(sp) if params.blob_gate > 0 else 0

    def chunk(x, x_hat, reg, k):  # all per slice: z-chunks run in threads
        r, m = residual(x, x_hat, reg, k)
        (y0, y1), (x0, x1) = true_extent(m, (0, 2)), true_extent(m, (0, 1))
        box = (slice(None), slice(max(y0 - reach, 0), y1 + reach), slice(max(x0 - reach, 0), x1 + reach))
        heat = np.zeros(r.shape, np.float32)
        if y1 == y0:  # no mask in the chunk: no heatmap, no slice scores
            return (m, heat) if later else (m, heat, np.full(len(r), np.nan))
        out = heat_and_scores(gated(r[box], m[box]), m[box])
        heat[box] = out if later else out[0]
        return (m, heat) if later else (m, heat, out[1])

    arrays = (np.asarray(image, np.float32), np.asarray(reconstruction, np.float32), np.asarray(region, bool),
              np.asarray(keep, bool))
    if gate_3d:  # the 3-D blobness needs the whole residual first; the rest stays per slice
        r, mask = map_slices(residual, *arrays)
        weighted = map_slices(gated, r, mask) * residual_blobness_3d(r, mask, sp) ** np.float32(params.blob_gate_3d)
        del r
        out = map_slices(heat_and_scores, weighted, mask)
        heat, scores = (out, None) if later else out
    elif later:
        mask, heat = map_slices(chunk, *arrays)
    else:
        mask, heat, scores = map_slices(chunk, *arrays)
    if across_z:
        heat = z_smoothed_heatmap(heat, mask, params.sigma_z_mm, sp)
    if later:
        scores = map_slices(lambda h, m: slice_scores(h, m, params.slice_score), heat, mask)
    return Analysis(image=image, reconstruction=reconstruction, region=region, mask=mask, heatmap=heat,
                    slice_scores=scores, scan_score=scan_score(scores, params.scan_aggregation), spacing=sp,
                    note=note)


def residual_map(x: np.ndarray, x_hat: np.ndarray, sign: str = "abs") -> np.ndarray:
    """Residual between input and reconstruction on the [0, 1] scale.

    Parameters
    ----------
    x, x_hat : np.ndarray
        Same shape, e.g. ``(z, size, size)``.
    sign : {"abs", "positive", "negative"}
        ``abs`` = ``|x - x̂|``; ``positive`` keeps only where the input is brighter than its
        reconstruction (nodules in a lung window), ``negative`` only where it is darker.

    Returns
    -------
    np.ndarray
        float32, same shape, ≥ 0.
    """
    if sign not in RESIDUAL_SIGNS:
        raise ConfigError(f"residual sign must be one of {RESIDUAL_SIGNS}, got {sign!r}")
    d = np.asarray(x, dtype=np.float32) - np.asarray(x_hat, dtype=np.float32)
    if sign == "abs":
        return np.abs(d)
    if sign == "positive":
        return np.maximum(d, 0.0)
    return np.maximum(-d, 0.0)


def slice_scores(residual: np.ndarray, mask: np.ndarray, method: str = "mae", topk_fraction: float = 0.01) -> np.ndarray:
    """One score per slice from ``(z, y, x)`` residuals restricted to ``mask``.

    Methods
    -------
    mae
        Mean absolute error in the mask (the seed papers' score).
    p99, p999
        99th / 99.9th percentile of the residual in the mask: catches small lesions.
    topk
        Mean of the highest ``topk_fraction`` of residuals in the mask.

    Slices whose mask is empty get NaN.
    """
    if method not in SLICE_SCORES:
        raise ConfigError(f"slice score must be one of {SLICE_SCORES}, got {method!r}")
    r = np.asarray(residual, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    out = np.full(r.shape[0], np.nan, dtype=np.float64)
    for k in range(r.shape[0]):
        v = r[k][m[k]]
        if v.size == 0:
            continue
        if method == "mae":
            out[k] = float(v.mean())
        elif method == "p99":
            out[k] = float(np.quantile(v, 0.99))
        elif method == "p999":
            out[k] = float(np.quantile(v, 0.999))
        else:
            n = max(1, int(round(topk_fraction * v.size)))
            out[k] = float(np.partition(v, v.size - n)[v.size - n :].mean())
    return out


def scan_score(slice_values: np.ndarray, method: str = "max") -> float:
    """Aggregate finite slice scores into one scan score (``max``, ``top3``, ``top5``, ``mean``).

    NaN slices (not scored) are ignored; a scan with no scored slice gets NaN.
    """
    if method not in SCAN_AGGREGATIONS:
        raise ConfigError(f"scan aggregation must be one of {SCAN_AGGREGATIONS}, got {method!r}")
    v = np.asarray(slice_values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    if method == "max":
        return float(v.max())
    if method == "mean":
        return float(v.mean())
    k = min(v.size, 3 if method == "top3" else 5)
    return float(np.sort(v)[-k:].mean())


def _fill_outside(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy of ``vol`` where each outside-mask pixel takes the value of the nearest in-plane mask pixel."""
    out = vol.copy()
    for k in np.flatnonzero(mask.any(axis=(1, 2)) & ~mask.all(axis=(1, 2))):
        idx = ndimage.distance_transform_edt(~mask[k], return_distances=False, return_indices=True)
        out[k] = vol[k][idx[0], idx[1]]
    return out


def z_smoothed_heatmap(heatmap: np.ndarray, mask: np.ndarray, sigma_z_mm: float,
                       spacing: Sequence[float]) -> np.ndarray:
    """Weighted average of each pixel's heatmap over the neighbouring slices, where they are in the mask.

    Parameters
    ----------
    heatmap : np.ndarray
        float32 ``(z, y, x)``, e.g. :func:`residual_heatmap`'s in-plane smoothed residual.
    mask : np.ndarray of bool
        Same shape: where the heatmap is defined (the eroded scoring region of the scored slices).
    sigma_z_mm : float
        Standard deviation (mm) of the Gaussian weights along z; 0 returns the heatmap unchanged.
    spacing : (3,) float
        Voxel size ``(z, y, x)`` in mm.

    Returns
    -------
    np.ndarray
        float32, same shape; 0 outside ``mask``.

    Notes
    -----
    A normalised convolution along z only, ``G_z(h·m) / G_z(m)``: a slice outside the mask (above the
    lungs, a slice not scored) neither lowers nor raises its neighbours. A lesion that persists at the
    same place over the next slices keeps its height; a bright spot on one slice alone (a vessel cut
    across, noise) is averaged down with the slices around it.
    """
    h = as_volume(heatmap, "heatmap")
    m = mask_like(mask, h)
    sz = check_spacing(spacing)[0]
    if not np.isfinite(sigma_z_mm) or sigma_z_mm < 0:
        raise ConfigError(f"sigma_z_mm must be ≥ 0, got {sigma_z_mm}")
    if sigma_z_mm == 0 or len(h) < 2:
        return np.where(m, h, np.float32(0.0)).astype(np.float32, copy=False)
    mf = m.astype(np.float32)
    s = sigma_z_mm / sz
    num = ndimage.gaussian_filter1d(np.where(m, h, np.float32(0.0)), s, axis=0, mode="constant", cval=0.0)
    den = ndimage.gaussian_filter1d(mf, s, axis=0, mode="constant", cval=0.0)
    return np.divide(num, den, out=np.zeros_like(num), where=m & (den > 1e-6)).astype(np.float32, copy=False)


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
    res = as_volume(residual, "residual")
    _, sy, sx = check_spacing(spacing)
    m = mask_like(mask, res)
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
