"""Writing scoring results: scores.csv, slices.csv, lesions.csv and heatmaps in the input geometry."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from .writers import atomic_path, save_like_input

#: ``head_proba`` / ``fused_proba``: a CNN head's scan probability of abnormal and its fusion with the
#: p-value (empty without a CNN head / a fitted fusion). ``organ`` (lesions): a U-Net head's organ.
SCORE_COLUMNS = ["scan", "n_slices", "scan_score", "p_value", "label", "top_slice", "n_lesions", "error",
                 "head_proba", "fused_proba"]
SLICE_COLUMNS = ["scan", "slice", "score", "p_value", "label", "head_proba"]
LESION_COLUMNS = [
    "scan", "lesion", "slice_start", "slice_end", "centroid_z", "centroid_y", "centroid_x",
    "centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "area_mm2", "volume_mm3",
    "equivalent_diameter_mm", "max_residual", "mean_residual", "p_value", "severity", "organ",
]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{float(v):.6g}"
    return str(v)


def write_csv(path: str | os.PathLike, columns: list[str], rows: list[dict]) -> Path:
    """Write rows (dicts) with the given columns atomically; missing keys are empty."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            for r in rows:
                w.writerow([_fmt(r.get(c)) for c in columns])
    return Path(path)


def lesion_rows(scan_name: str, lesions: list[dict]) -> list[dict]:
    """Flatten lesion records of :func:`aeanomaly.localize.find_lesions` into lesions.csv rows.

    ``centroid_z/y/x`` are on the scan's own internal slice grid (axial slice index, row, column;
    ``centroid_zyx_input`` as :meth:`AnomalyDetector.score_scan` adds it), else on the model grid."""
    rows = []
    for les in lesions:
        cz, cy, cx = les.get("centroid_zyx_input", les["centroid_zyx"])
        r, a, s = les["centroid_ras_mm"]
        rows.append({
            "scan": scan_name, "lesion": les["id"], "slice_start": les["slice_start"], "slice_end": les["slice_end"],
            "centroid_z": cz, "centroid_y": cy, "centroid_x": cx, "centroid_r_mm": r, "centroid_a_mm": a,
            "centroid_s_mm": s, **{k: les.get(k) for k in LESION_COLUMNS[10:]},
        })
    return rows


def output_names(paths: list[str | os.PathLike]) -> list[str]:
    """Unique, file-system-safe names for scans (stem without .nii.gz etc.; duplicates numbered)."""
    names, seen = [], {}
    for p in paths:
        base = Path(p).name
        for ext in (".nii.gz", ".nii", ".npy", ".tiff", ".tif", ".png", ".dcm", ".mhd", ".mha"):
            if base.lower().endswith(ext):
                base = base[: -len(ext)]
                break
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "scan"
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n + 1}")
    return names


def write_heatmap(path: str | os.PathLike, heatmap_zyx: np.ndarray, scan, fmt: str = "nifti") -> Path:
    """Write a heatmap given on the scan's internal grid: NIfTI in the input's own voxel grid and
    affine (overlays the original in ITK-SNAP / 3D Slicer), or .npy in the internal ``(z, y, x)``."""
    if fmt == "nifti":
        return save_like_input(path, heatmap_zyx.astype(np.float32), scan)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(heatmap_zyx, dtype=np.float32), allow_pickle=False)
    return Path(path)
