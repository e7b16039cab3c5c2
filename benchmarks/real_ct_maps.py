"""Heatmaps of every method of the real_ct benchmark from one product analysis, their calibration on
normal scans, and the metrics.

One :meth:`AnomalyDetector.analyse` per scan (the product's prepare → reconstruct → scoring region)
gives the image, the reconstruction and the scoring mask; every method's heatmap is computed on that
same prepared scan and mask, so methods differ only in the map:

* ``dae`` — the product's residual heatmap (``Analysis.heatmap``) as it is configured.
* ``dae+seg`` / ``dae+seg(fused W)`` — the self-supervised segmenter's probability
  (:func:`aeanomaly.model.selfsup.anomaly_probability`), alone or fused with the residual
  (:func:`aeanomaly.model.selfsup.fused_heatmap`: ``W`` × probability + (1 − ``W``) × the residual over its
  pixel threshold on the calibration normals), for each ``W`` of :data:`FUSED_WEIGHTS`; ``dae+seg(fused)``
  is ``W`` = 0.5 (the name of earlier runs). What the product's ``seg_weight`` computes.
* ``pca`` — the product's scoring of a PCA reconstruction (``AnomalyDetector.analyse_prepared``).
* ``intensity`` — the product's scoring of a zero reconstruction: the (positive) windowed intensity.
* ``log`` / ``hessian`` — non-learned bright-blob filters in the lungs, multi-scale (σ 1–6 mm, at least 0.7 px):
  scale-normalised −∇²G, and the Hessian blobness −λ_max·σ² where both eigenvalues are negative (a
  tube has one eigenvalue near zero, so vessels along the plane score low).

Slice scores use the product's ``slice_scores`` with the detector's ``slice_score`` method and scan
scores its ``scan_score``; calibration is the product's ``Calibration.fit`` on the detector's own
calibration normals (``det.split_["calib"]``), lesions the product's ``find_lesions``.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage as ndi

BLOB_SIGMAS_MM = (1.0, 1.75, 3.0, 4.5, 6.0)
#: Weights of the probability in the fused maps, each a method of its own (the tune split compares them).
FUSED_WEIGHTS = (0.75, 0.5, 0.25)


def fused_name(weight: float) -> str:
    """The method name of the fused map of ``weight`` (0.5 keeps the name of runs before the others)."""
    return "dae+seg(fused)" if weight == 0.5 else f"dae+seg(fused {weight:g})"


#: Every fused map's method name, in the order of :data:`FUSED_WEIGHTS`.
FUSED = tuple(fused_name(w) for w in FUSED_WEIGHTS)

#: Scales below this (in model pixels) are raised to it: sub-pixel derivative kernels are noise.
MIN_SIGMA_PX = 0.7


def log_blobness(image: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Scale-normalised bright-blob response ``max_σ −σ²∇²G_σ * image`` per slice, ≥ 0 (float32)."""
    out = np.zeros(image.shape, np.float32)
    for s_mm in BLOB_SIGMAS_MM:
        s = max(s_mm / spacing_mm, MIN_SIGMA_PX)
        out = np.maximum(out, -(s * s) * ndi.gaussian_laplace(image, s, axes=(1, 2)))
    return out


def hessian_blobness(image: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``max_σ σ²·(−λ_max)`` where both in-plane Hessian eigenvalues are negative (bright blobs), else 0."""
    from aeanomaly.blobness import inplane_hessian_eigenvalues

    out = np.zeros(image.shape, np.float32)
    for s_mm in BLOB_SIGMAS_MM:
        s = max(s_mm / spacing_mm, MIN_SIGMA_PX)
        _, lam_max = inplane_hessian_eigenvalues(image, (s, s))
        out = np.maximum(out, np.where(lam_max < 0, -lam_max * s * s, 0.0))
    return out


class Methods:
    """All methods' heatmaps for one fitted detector: ``maps(scan)`` → ``(analysis, {name: heatmap}, times)``."""

    def __init__(self, det, *, seg_model=None, pca=None, names=None):
        self.det, self.seg, self.pca = det, seg_model, pca
        self.residual_scale = None  # set by fix_residual_scale() from the dae's normal heatmaps
        self.slice_score: dict[str, str] = {}  # per method, chosen on the tune split
        # per method other than the dae, the detector's heatmap settings chosen on the tune split
        # ({"sigma_mm": ..., "sigma_z_mm": ..., "blob_gate": ...}: real_ct_volume.apply)
        self.sigma: dict[str, dict] = {}
        self.references: dict = {}  # per method, its calibration's region-size reference (slice_norm "area")
        # per method other than the dae, the slice normalisation chosen on the tune split (else the detector's)
        self.slice_norm: dict[str, str] = {}
        self.names = names or ["dae", *(("dae+seg", *FUSED) if seg_model is not None else ()),
                               *(("pca",) if pca is not None else ()), "intensity", "log", "hessian"]

    def maps(self, scan) -> tuple:
        from aeanomaly.model.selfsup import anomaly_probability, fused_heatmap

        det = self.det
        t0 = time.perf_counter()
        a = det.analyse(scan)
        times = {"dae": time.perf_counter() - t0}
        m = a.mask
        maps = {"dae": a.heatmap}
        prep = a.prepared
        sp = float(prep.spacing[1])
        if self.seg is not None:
            t = time.perf_counter()
            prob = np.zeros(a.image.shape, np.float32)
            k = m.reshape(len(m), -1).any(axis=1)
            if k.any():
                prob[k] = anomaly_probability(self.seg, prep.x[k], a.reconstruction[k])
            maps["dae+seg"] = np.where(m, prob, 0).astype(np.float32)
            times["dae+seg"] = times["dae"] + time.perf_counter() - t
            if self.residual_scale is not None:
                for w in FUSED_WEIGHTS:
                    if fused_name(w) in self.names:
                        maps[fused_name(w)] = np.where(m, fused_heatmap(prob, a.heatmap, w, self.residual_scale), 0)
                        times[fused_name(w)] = times["dae+seg"]
        if self.pca is not None:
            t = time.perf_counter()
            rec = np.zeros(a.image.shape, np.float32)
            k = prep.keep if prep.keep.any() else np.ones(len(rec), bool)
            rec[k] = self.pca(prep.x[k])
            maps["pca"] = self._heatmap("pca", prep, rec, scan.is_hu)
            times["pca"] = time.perf_counter() - t
        if "intensity" in self.names:
            t = time.perf_counter()
            maps["intensity"] = self._heatmap("intensity", prep, np.zeros(a.image.shape, np.float32), scan.is_hu)
            times["intensity"] = time.perf_counter() - t
        img = a.image.astype(np.float32)
        for name, fn in (("log", log_blobness), ("hessian", hessian_blobness)):
            if name not in self.names:
                continue
            t = time.perf_counter()
            maps[name] = np.where(m, fn(img, sp), 0).astype(np.float32)
            times[name] = time.perf_counter() - t
        return a, {n: maps[n] for n in self.names if n in maps}, times

    def subset(self, names) -> "Methods":
        """The same detector, models and chosen settings, computing only the methods among ``names``."""
        out = Methods(self.det, seg_model=self.seg, pca=self.pca if "pca" in names else None,
                      names=[n for n in self.names if n in names])
        out.residual_scale, out.slice_score, out.sigma = self.residual_scale, dict(self.slice_score), dict(self.sigma)
        out.slice_norm = dict(self.slice_norm)
        return out

    def _heatmap(self, name, prep, reconstruction, is_hu) -> np.ndarray:
        """The product's heatmap of ``reconstruction`` (``analyse_prepared``) at the method's own settings."""
        det = self.det
        mine = self.sigma.get(name) or {}
        own = {k: getattr(det, k) for k in mine}
        if mine == own:
            return det.analyse_prepared(prep, reconstruction, is_hu=is_hu).heatmap
        det.set_params(**mine)
        try:
            return det.analyse_prepared(prep, reconstruction, is_hu=is_hu).heatmap
        finally:
            det.set_params(**own)

    def scores(self, a, heat, name: str | None = None, method: str | None = None,
               raw: bool = False) -> tuple[np.ndarray, float]:
        """Slice scores (the product's ``slice_scores``; per method the choice of the tune split, else the
        detector's ``slice_score``; after :meth:`calibrate`, normalised by the method's region-size
        reference when the detector's ``slice_norm`` is ``area``, unless ``raw``) and the scan score
        (the detector's ``scan_aggregation``)."""
        from aeanomaly.calibrate import region_areas
        from aeanomaly.scoring import scan_score, slice_scores

        method = method or self.slice_score.get(name, self.det.slice_score)
        s = slice_scores(heat, a.mask, method)
        ref = None if raw else self.references.get(name)
        if ref is not None:
            s = ref.transform(s, region_areas(a.mask))
        return s, (scan_score(s, self.det.scan_aggregation) if np.isfinite(s).any() else float("nan"))

    def fix_residual_scale(self, scans) -> float:
        """The fused map's residual scale: the ``pixel_quantile`` of the dae heatmap on normal ``scans``."""
        vals = []
        for scan in scans:
            a = self.det.analyse(scan)
            vals.append(a.heatmap[a.mask])
        v = np.concatenate(vals) if vals else np.zeros(1)
        self.residual_scale = max(float(np.quantile(v, self.det.pixel_quantile)), 1e-6) if v.size else 1.0
        return self.residual_scale

    def calibrate(self, scans) -> dict:
        """Per method: the product's ``Calibration`` fitted on normal ``scans`` (each one scan), with the
        method's slice normalisation (:attr:`slice_norm`, else the detector's ``slice_norm``)."""
        from aeanomaly.calibrate import Calibration, NormalStats

        self.references = {}  # the normal statistics must hold raw slice scores, on a second call too
        stats = {n: NormalStats() for n in self.names}
        for i, scan in enumerate(scans):
            a, maps, _ = self.maps(scan)
            for n, h in maps.items():
                s, agg = self.scores(a, h, n)
                if np.isfinite(agg):
                    stats[n].add(f"calib{i}", agg, s, h, a.mask)
        cal = {n: Calibration.fit(st, target_fpr=self.det.target_fpr, pixel_quantile=self.det.pixel_quantile,
                                  slice_norm=self.slice_norm.get(n, self.det.slice_norm),
                                  scan_aggregation=self.det.scan_aggregation)
               for n, st in stats.items() if len(st) >= 2}
        self.references = {n: c.reference for n, c in cal.items() if c.reference is not None}
        return cal


def lesions_of(det, heat, prep, cal):
    from aeanomaly.localize import find_lesions

    return find_lesions(heat, cal.pixel_threshold, prep.spacing, prep.affine, min_size_mm2=det.min_lesion_mm2,
                        min_volume_mm3=det.min_lesion_mm3, opening_px=int(round(det.opening_mm / prep.spacing[1])),
                        normal_peaks=cal.normal_peaks)


def auroc_pm(y, s) -> dict:
    """AUROC and AUPRC with the Hanley–McNeil 95 % half-width."""
    from aeanomaly.evaluate import classification_metrics

    y, s = np.asarray(y, int), np.asarray(s, float)
    ok = np.isfinite(s)
    m = classification_metrics(y[ok], s[ok], np.zeros(int(ok.sum()), int))
    auc, npos, nneg = m["auroc"], m["n_abnormal"], m["n_normal"]
    pm = None
    if auc is not None and npos and nneg:
        q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
        var = (auc * (1 - auc) + (npos - 1) * (q1 - auc * auc) + (nneg - 1) * (q2 - auc * auc)) / (npos * nneg)
        pm = 1.96 * max(var, 0.0) ** 0.5
    return {"auroc": auc, "auroc_pm95": pm, "auprc": m["auprc"], "n_pos": npos, "n_neg": nneg}


def matched_auroc(y, s, area, tol: float = 0.2) -> dict:
    """AUROC over the (positive, negative) pairs whose region areas differ by at most ``tol`` (relative,
    in log area): how a score ranks nodule slices against nodule-free slices *of like lung size*, so a
    score cannot win by preferring big (mid-lung) slices. ``n_pairs`` is how many pairs it rests on."""
    y, s, area = (np.asarray(v, float) for v in (y, s, area))
    ok = np.isfinite(s) & (area > 0)
    la = np.log(np.where(ok, area, 1.0))
    pos, neg = np.flatnonzero(ok & (y == 1)), np.flatnonzero(ok & (y == 0))
    if not len(pos) or not len(neg):
        return {"auroc": None, "n_pairs": 0}
    close = np.abs(la[pos][:, None] - la[neg][None, :]) <= np.log1p(tol)
    wins = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
    n = int(close.sum())
    return {"auroc": float(wins[close].mean()) if n else None, "n_pairs": n}


def pixel_scores(heats, truths, regions) -> dict:
    from aeanomaly.evaluate import pixel_metrics

    m = pixel_metrics(heats, truths, regions, [np.zeros_like(t) for t in truths])
    return {"pixel_auroc": m.get("pixel_auroc"), "pixel_auprc": m.get("pixel_auprc"),
            "prevalence": float(sum(int(t[r].sum()) for t, r in zip(truths, regions))
                                / max(sum(int(r.sum()) for r in regions), 1))}
