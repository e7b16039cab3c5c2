"""Evaluation of a detector on labelled scans, and the detection metrics it reports.

* :class:`Evaluation` — the evaluation API (``aeanomaly evaluate`` and the benchmarks call it): add
  labelled scans one at a time (``add``), then read ``metrics()`` and the per-scan ``rows``.
* Pure metric functions of arrays, returning plain dicts of floats ready for metrics.json: scan /
  slice classification, pixel-level localisation, lesion detection by size, and for the optional
  supervised head organ Dice / IoU and the classifier's and fused probabilities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from .errors import AeAnomalyError, ConfigError, EmptyInputError

#: Lesion size bins (equivalent diameter in mm) for the detection rate by size.
SIZE_BINS_MM = (0.0, 5.0, 10.0, 20.0, np.inf)


def _safe_div(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def classification_metrics(y_true, scores, y_pred) -> dict:
    """AUROC, AUPRC, accuracy, sensitivity, specificity, precision, F1 and the confusion matrix.

    Parameters
    ----------
    y_true : array of bool/int, ``(n,)``
        1 = abnormal.
    scores : array of float, ``(n,)``
        Higher = more anomalous (NaN entries are dropped with their labels).
    y_pred : array of bool/int, ``(n,)``
        The label at the calibrated threshold.

    AUROC/AUPRC are None when only one class is present; ratios with an empty denominator are None.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=float)
    p = np.asarray(y_pred).astype(int)
    ok = np.isfinite(s)
    y, s, p = y[ok], s[ok], p[ok]
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, p, labels=[0, 1]).ravel())
    both = 0 < y.sum() < len(y)
    sens, prec = _safe_div(tp, tp + fn), _safe_div(tp, tp + fp)
    f1 = 2 * prec * sens / (prec + sens) if sens is not None and prec is not None and (prec + sens) > 0 else (0.0 if sens is not None and prec is not None else None)
    return {
        "n": int(len(y)), "n_abnormal": int(y.sum()), "n_normal": int(len(y) - y.sum()),
        "auroc": float(roc_auc_score(y, s)) if both else None,
        "auprc": float(average_precision_score(y, s)) if both else None,
        "accuracy": _safe_div(tp + tn, len(y)),
        "sensitivity": sens,
        "specificity": _safe_div(tn, tn + fp),
        "precision": prec,
        "f1": f1,
        "observed_fpr": _safe_div(fp, tn + fp),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def pixel_metrics(heatmaps: list[np.ndarray], truths: list[np.ndarray], masks: list[np.ndarray],
                  preds: list[np.ndarray], max_pixels: int = 2_000_000, seed: int = 0) -> dict:
    """Pixel AUROC / AUPRC of heatmaps inside the body masks, and Dice / IoU of the predicted lesion
    masks, over scans that have a ground-truth mask.

    Heatmap values are subsampled deterministically to at most ``max_pixels`` (all lesion pixels kept).
    Dice/IoU are computed on the union of all scans (global), and averaged per abnormal scan.
    """
    if not heatmaps:
        return {}
    rng = np.random.default_rng(seed)
    total = sum(int(m.sum()) for m in masks)
    keep_frac = min(1.0, max_pixels / max(total, 1))
    vals, labs = [], []
    inter = union = pred_sum = true_sum = 0
    per_scan = []
    for h, t, m, p in zip(heatmaps, truths, masks, preds):
        t, m, p = t > 0, m.astype(bool), p > 0
        hv, tv = h[m], t[m]
        sel = tv | (rng.random(tv.size) < keep_frac)
        vals.append(hv[sel])
        labs.append(tv[sel])
        inter += int((p & t).sum())
        union += int((p | t).sum())
        pred_sum += int(p.sum())
        true_sum += int(t.sum())
        if t.any():
            per_scan.append((dice(p, t), iou(p, t)))
    v, lab = np.concatenate(vals), np.concatenate(labs)
    both = 0 < lab.sum() < lab.size
    return {
        "pixel_auroc": float(roc_auc_score(lab, v)) if both else None,
        "pixel_auprc": float(average_precision_score(lab, v)) if both else None,
        "dice": _safe_div(2 * inter, pred_sum + true_sum),
        "iou": _safe_div(inter, union),
        "dice_mean_per_abnormal_scan": float(np.mean([d for d, _ in per_scan])) if per_scan else None,
        "iou_mean_per_abnormal_scan": float(np.mean([i for _, i in per_scan])) if per_scan else None,
    }


def lesion_detection(truth: np.ndarray, pred: np.ndarray, spacing) -> list[dict]:
    """One record per ground-truth lesion (3-D connected component of ``truth > 0``): its equivalent
    diameter in mm (from its largest in-plane area) and whether any predicted lesion voxel overlaps it."""
    t = np.asarray(truth) > 0
    p = np.asarray(pred) > 0
    lab, n = ndimage.label(t, structure=np.ones((3, 3, 3), bool))
    pix_mm2 = float(spacing[1]) * float(spacing[2])
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[sl] == i
        area = comp.reshape(comp.shape[0], -1).sum(axis=1).max() * pix_mm2
        out.append({"diameter_mm": float(2 * np.sqrt(area / np.pi)), "detected": bool((p[sl] & comp).any())})
    return out


def detection_rate_by_size(records: list[dict], bins=SIZE_BINS_MM) -> list[dict]:
    """Detection rate of ground-truth lesions per equivalent-diameter bin (mm)."""
    d = np.array([r["diameter_mm"] for r in records], float)
    hit = np.array([r["detected"] for r in records], bool)
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (d >= lo) & (d < hi)
        rows.append({"min_mm": lo, "max_mm": None if not np.isfinite(hi) else hi, "n": int(sel.sum()),
                     "detected": int(hit[sel].sum()), "rate": _safe_div(hit[sel].sum(), sel.sum())})
    rows.append({"min_mm": 0.0, "max_mm": None, "n": int(d.size), "detected": int(hit.sum()),
                 "rate": _safe_div(hit.sum(), d.size), "all": True})
    return rows


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


def overlap_counts(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Per class ``1..n_classes``: ``[intersection, predicted, true]`` pixel counts.

    Parameters
    ----------
    pred, truth : np.ndarray
        Integer label maps of the same shape (0 = background).

    Returns
    -------
    np.ndarray
        int64 ``(n_classes, 3)``; sum these over scans for pooled Dice / IoU
        (:func:`organ_segmentation_metrics`).
    """
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from the truth's {t.shape}")
    out = np.zeros((n_classes, 3), np.int64)
    for k in range(1, n_classes + 1):
        a, b = p == k, t == k
        out[k - 1] = (np.count_nonzero(a & b), np.count_nonzero(a), np.count_nonzero(b))
    return out


def dice_iou_of_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU per class from :func:`overlap_counts` rows ``[intersection, predicted, true]``.

    Returns
    -------
    dice, iou : np.ndarray
        ``(n_classes,)`` float; NaN for a class absent from both prediction and truth.
    """
    c = np.asarray(counts, dtype=float).reshape(-1, 3)
    inter, both = c[:, 0], c[:, 1] + c[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(both > 0, 2.0 * inter / both, np.nan)
        iou = np.where(both > 0, inter / (both - inter), np.nan)
    return dice, iou


def dice_iou(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of each class ``1..n_classes`` of two integer label maps of the same shape (0 =
    background), pooled over all pixels; ``(n_classes,)`` float each, NaN for a class absent from both."""
    return dice_iou_of_counts(overlap_counts(pred, truth, n_classes))


def organ_segmentation_metrics(classes, counts: np.ndarray, per_scan: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Dice and IoU per organ class of a U-Net head's labels against reference label maps.

    Parameters
    ----------
    classes : sequence of str
        Class names, class ``k`` = ``classes[k - 1]``.
    counts : np.ndarray
        ``(n_classes, 3)`` summed :func:`overlap_counts` over all scans.
    per_scan : list of (dice, iou)
        Per scan, the ``(n_classes,)`` arrays of :func:`dice_iou_of_counts`.

    Returns
    -------
    dict
        ``classes``, ``n_scans``, ``dice`` / ``iou`` (pooled over all pixels of all scans) and
        ``dice_mean_per_scan`` / ``iou_mean_per_scan`` (over scans where the class occurs in the
        prediction or the reference), each ``{class: float or None}``.
    """
    names = [str(n) for n in classes]
    pooled_dice, pooled_iou = dice_iou_of_counts(counts)

    def mean_of(j: int, k: int) -> float | None:
        vals = [s[j][k] for s in per_scan if np.isfinite(s[j][k])]
        return float(np.mean(vals)) if vals else None

    def value(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return {
        "classes": names, "n_scans": len(per_scan),
        "dice": {n: value(pooled_dice[k]) for k, n in enumerate(names)},
        "iou": {n: value(pooled_iou[k]) for k, n in enumerate(names)},
        "dice_mean_per_scan": {n: mean_of(0, k) for k, n in enumerate(names)},
        "iou_mean_per_scan": {n: mean_of(1, k) for k, n in enumerate(names)},
    }


def head_classification_metrics(y_true, head_proba, fused_proba, threshold: float = 0.5) -> dict:
    """Scan-level metrics of a CNN head's probability and of the fused probability.

    Parameters
    ----------
    y_true : array, ``(n,)``
        1 = abnormal.
    head_proba, fused_proba : sequence of float or None, ``(n,)``
        Per scan; None entries are dropped (a metric set is left out when all are None).
    threshold : float
        Probability at or above which a scan is called abnormal.

    Returns
    -------
    dict
        ``scan_classifier`` and/or ``scan_fused``: :func:`classification_metrics` dicts, plus the
        ``threshold`` used.
    """
    out = {}
    for key, probs in (("scan_classifier", head_proba), ("scan_fused", fused_proba)):
        p = np.array([np.nan if v is None else float(v) for v in probs], dtype=float)
        if np.isfinite(p).any():
            out[key] = {**classification_metrics(y_true, p, np.nan_to_num(p, nan=0.0) >= threshold),
                        "threshold": float(threshold)}
    return out


# ---------------------------------------------------------------------------------------------
# The evaluation API
# ---------------------------------------------------------------------------------------------

#: Columns of the per-scan table (scans.csv of ``aeanomaly evaluate``).
EVAL_COLUMNS = ["scan", "label", "scan_score", "p_value", "predicted", "n_lesions", "error", "head_proba",
                "fused_proba"]


@dataclass
class EvaluatedScan:
    """One scan added to an :class:`Evaluation`.

    Attributes
    ----------
    scan : str
        The input path.
    label : int
        1 = abnormal (a non-empty lesion mask makes a scan abnormal).
    result : ScanResult or None
        What the detector returned; None when the scan could not be scored.
    truth : np.ndarray or None
        The lesion mask on the model grid, bool ``(z, size, size)``, when the scan has one.
    error : str
        ``"<path>: <reason>"`` when the scan could not be scored, else "".
    """

    scan: str
    label: int
    result: Any = None
    truth: np.ndarray | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def error_overlay_slices(truth: np.ndarray, predicted: np.ndarray, n: int) -> list[int]:
    """The ``n`` slices with the most ground-truth plus predicted lesion pixels (those with any),
    most first: the slices worth a TP / FP / FN overlay."""
    t = np.asarray(truth) > 0
    p = np.asarray(predicted) > 0
    per_slice = t.reshape(len(t), -1).sum(axis=1) + p.reshape(len(p), -1).sum(axis=1)
    return [int(i) for i in np.argsort(per_slice, kind="stable")[::-1][:max(int(n), 0)] if per_slice[i] > 0]


class Evaluation:
    """Scan-, slice-, pixel- and lesion-level quality of a fitted detector on labelled scans.

    Parameters
    ----------
    detector : AnomalyDetector
        Fitted (or loaded) detector; only its public API is used.

    Attributes
    ----------
    rows : list of dict
        One row per added scan (:data:`EVAL_COLUMNS`); ``error`` non-empty for a scan that could not
        be scored.
    n_errors : int
        Scans that could not be scored.

    Examples
    --------
    >>> ev = Evaluation(AnomalyDetector.load("bundle"))          # doctest: +SKIP
    >>> for scan, label, mask in gather_labeled(labels_csv="labels.csv"):
    ...     ev.add(scan, label, mask)
    >>> ev.metrics()["scan"]["auroc"]
    """

    def __init__(self, detector):
        self.detector = detector
        self.rows: list[dict] = []
        self.errors: list[str] = []
        self._slice_y: list = []
        self._slice_s: list = []
        self._slice_p: list = []
        self._heat: list = []
        self._truth: list = []
        self._body: list = []
        self._pred: list = []
        self._lesions: list = []
        head = getattr(detector, "head_", None)
        self._head = head
        self.n_organs = len(head.classes_) if head is not None and head.kind == "unet" else 0
        self._organ_counts = np.zeros((self.n_organs, 3), np.int64)
        self._organ_per_scan: list = []

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    def add(self, path: str | os.PathLike, label: int, mask_path: str | os.PathLike | None = None,
            organ_path: str | os.PathLike | None = None) -> EvaluatedScan:
        """Score one labelled scan and keep what the metrics need.

        Parameters
        ----------
        path : path
            The scan.
        label : int
            1 abnormal, 0 normal (a lesion mask with any voxel makes the scan abnormal).
        mask_path : path, optional
            Lesion mask (same grid as the scan): slice, pixel and lesion metrics.
        organ_path : path, optional
            Organ label map (needs a U-Net head): Dice / IoU per organ class.

        Returns
        -------
        EvaluatedScan
            With ``error`` set (and an error row recorded) when the scan, its mask or its organ map
            could not be read or scored; the evaluation goes on with the next scan.
        """
        from .io import load_label
        from .io.results import error_text
        from .masks import disk_erode
        from .preprocess import mask_to_model_grid

        det, y = self.detector, int(label)
        try:
            res = det.score_scan(path)
            truth = None
            if mask_path is not None:
                truth = mask_to_model_grid(load_label(mask_path, like=res.scan) > 0, det.size)
                y = int(y or truth.any())
            organ = self._organ_counts_of(res, organ_path) if organ_path is not None else None
        except (AeAnomalyError, OSError, MemoryError) as err:
            text = error_text(err, path)
            self.errors.append(text)
            self.rows.append({"scan": str(path), "label": y, "error": text})
            return EvaluatedScan(str(path), y, error=text)
        self.rows.append({"scan": str(path), "label": y, "scan_score": res.scan_score, "p_value": res.p_value,
                          "predicted": int(res.label == "abnormal"), "n_lesions": len(res.lesions), "error": "",
                          "head_proba": res.head_proba, "fused_proba": res.fused_proba})
        if organ is not None:
            self._organ_counts += organ
            self._organ_per_scan.append(dice_iou_of_counts(organ))
        scored = np.isfinite(res.slice_scores)
        if truth is not None or y == 0:
            sy = truth.reshape(len(truth), -1).any(axis=1) if truth is not None else np.zeros(res.n_slices, bool)
            self._slice_y += sy[scored].tolist()
            self._slice_s += res.slice_scores[scored].tolist()
            self._slice_p += res.slice_labels[scored].tolist()
            body = disk_erode(res.prepared.body, 0) & res.prepared.keep[:, None, None]
            self._heat.append(res.heatmap)
            self._truth.append(truth if truth is not None else np.zeros_like(body))
            self._body.append(body)
            self._pred.append(res.lesion_labels > 0)
            if truth is not None:
                self._lesions += lesion_detection(truth, res.lesion_labels, res.prepared.spacing)
        return EvaluatedScan(str(path), y, result=res, truth=truth)

    def _organ_counts_of(self, res, organ_path) -> np.ndarray | None:
        """Overlap counts of the head's organ labels against a reference map, on the scored slices."""
        from .hybrid import label_map_to_model_grid
        from .io import load_label

        if res.organ_labels is None or not self.n_organs:
            return None
        ref = label_map_to_model_grid(load_label(organ_path, like=res.scan), self._head.label_values,
                                      self.detector.size)
        keep = res.prepared.keep
        return overlap_counts(res.organ_labels[keep], ref[keep], self.n_organs)

    def scored_rows(self) -> list[dict]:
        """The rows of the scans that were scored."""
        return [r for r in self.rows if not r["error"]]

    def metrics(self) -> dict:
        """Everything metrics.json holds: ``scan`` (and ``slice``, ``pixel``,
        ``lesion_detection_by_size`` with masks; ``head``, ``scan_classifier``, ``scan_fused``,
        ``organ_segmentation`` with a supervised head; ``calibration_check``, the bundle calibrator's
        :meth:`~aeanomaly.calibrate.Calibrator.fpr_check` of the normal scans, when there are any), plus
        the run's facts.

        Raises
        ------
        EmptyInputError
            No scan could be scored (names the first failure).
        """
        ok = self.scored_rows()
        if not ok:
            if self.errors:
                raise EmptyInputError(f"{self.errors[0]} (none of the {len(self.rows)} scans could be scored)")
            raise EmptyInputError("no scan was evaluated")
        y = [r["label"] for r in ok]
        det = self.detector
        m = {
            "bundle": getattr(det, "bundle_path_", None), "target_fpr": det.target_fpr_,
            "n_scans": len(self.rows), "n_errors": self.n_errors,
            "scan": classification_metrics(y, [r["scan_score"] for r in ok], [r["predicted"] for r in ok]),
        }
        normal = [r["scan_score"] for r in ok if not r["label"]]
        if normal:  # are these normals flagged as often as the calibration normals allow?
            m["calibration_check"] = det.calibrator_.fpr_check(normal)
        head = self._head
        if head is not None:
            m["head"] = {"kind": head.kind, "classes": list(head.classes_),
                         "fusion": getattr(head, "fusion_", None) is not None}
            m.update(head_classification_metrics(y, [r["head_proba"] for r in ok], [r["fused_proba"] for r in ok]))
        if self._organ_per_scan:
            m["organ_segmentation"] = organ_segmentation_metrics(head.classes_, self._organ_counts,
                                                                 self._organ_per_scan)
        if self._slice_y:
            m["slice"] = classification_metrics(self._slice_y, self._slice_s, self._slice_p)
        if any(t.any() for t in self._truth):
            m["pixel"] = pixel_metrics(self._heat, self._truth, self._body, self._pred)
            m["lesion_detection_by_size"] = detection_rate_by_size(self._lesions)
        return m
