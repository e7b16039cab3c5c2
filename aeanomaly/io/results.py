"""Writing scoring results: scores.csv, slices.csv, lesions.csv, heatmaps, overlays and the report.

:class:`ResultsWriter` is the one writer of a results folder (``aeanomaly score`` uses it; another
engine that scores the same scans produces identical files with it). The folder is built beside its
target and renamed into place on success only, so a failure (bad input, a full disk, a read-only
file system) leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import AeAnomalyError
from .validate import scan_stem
from .writers import atomic_dir, atomic_path, int16_slope, save_like_input, save_slabs_like_input

#: ``head_proba`` / ``fused_proba``: a CNN head's scan probability of abnormal and its fusion with the
#: p-value (empty without a CNN head / a fitted fusion). ``note``: why a scan was scored as it was
#: (e.g. no scoring region: scored normal). ``organ`` (lesions): a U-Net head's organ.
SCORE_COLUMNS = ["scan", "n_slices", "scan_score", "p_value", "label", "top_slice", "n_lesions", "error",
                 "head_proba", "fused_proba", "note"]
SLICE_COLUMNS = ["scan", "slice", "score", "p_value", "label", "head_proba"]
LESION_COLUMNS = [
    "scan", "lesion", "slice_start", "slice_end", "centroid_z", "centroid_y", "centroid_x",
    "centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "area_mm2", "volume_mm3",
    "equivalent_diameter_mm", "max_residual", "mean_residual", "p_value", "severity", "organ",
]
HEATMAP_FORMATS = ("nifti", "npy", "none")


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


def lesion_rows(scan_name: str, lesions: list) -> list[dict]:
    """Flatten lesion records (:class:`aeanomaly.localize.Lesion` or dicts) into lesions.csv rows.

    ``centroid_z/y/x`` are on the scan's own internal slice grid (axial slice index, row, column;
    ``centroid_zyx_input`` as :meth:`AnomalyDetector.score_scan` adds it), else on the model grid."""
    rows = []
    for les in lesions:
        les = les.to_dict() if hasattr(les, "to_dict") else les
        cz, cy, cx = les.get("centroid_zyx_input") or les["centroid_zyx"]
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
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", scan_stem(p)).strip("._") or "scan"
        base = base[:120]  # leaves room for "_heatmap.nii.gz" and the temporary-file prefix
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n + 1}")
    return names


def error_text(err: BaseException, path: str | os.PathLike | None = None) -> str:
    """One line ``"<path>: <reason>"`` for an error of one input (toolkit, OS or memory error)."""
    if isinstance(err, AeAnomalyError):
        return str(err) if err.path or path is None else f"{os.fspath(path)}: {err.reason}"
    if isinstance(err, MemoryError):
        reason = "out of memory while reading or scoring it"
    elif isinstance(err, OSError):
        reason = err.strerror or (errno.errorcode.get(err.errno or 0) if err.errno else "") or str(err)
        path = err.filename if err.filename is not None else path
    else:
        reason = f"{type(err).__name__}: {err}"
    reason = " ".join(str(reason).split())
    return f"{os.fspath(path)}: {reason}" if path is not None else reason


def write_heatmap(path: str | os.PathLike, heatmap_zyx: np.ndarray, scan, fmt: str = "nifti") -> Path:
    """Write a heatmap given on the scan's internal grid: NIfTI in the input's own voxel grid and
    affine (overlays the original in ITK-SNAP / 3D Slicer), or .npy in the internal ``(z, y, x)``."""
    if fmt == "nifti":
        return save_like_input(path, np.asarray(heatmap_zyx, dtype=np.float32), scan)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(heatmap_zyx, dtype=np.float32), allow_pickle=False)
    return Path(path)


def write_scan_outputs(res, name: str, out: str | os.PathLike, *, heatmaps: str = "nifti", overlays: int = 3,
                       pixel_threshold: float | None = None) -> list[Path]:
    """Heatmap and overlay files of one scored scan.

    Parameters
    ----------
    res : ScanResult
        What :meth:`AnomalyDetector.score_scan` returned.
    name : str
        File-name stem (see :func:`output_names`).
    out : path
        Results folder: ``heatmaps/<name>_heatmap.nii.gz`` (or ``.npy``) and
        ``overlays/<name>_slice<k>.png`` for the ``overlays`` top-scoring slices.
    heatmaps : {"nifti", "npy", "none"}
        ``nifti``: int16 counts with the NIfTI ``scl_slope`` that readers apply (the scan's largest
        heatmap value / 32767: every value within 1/65534 of it, zeros exact); ``npy``: float32.
    overlays : int
        Number of overlay PNGs (0 = none).
    pixel_threshold : float, optional
        Heatmap level drawn as the lesion contour threshold.

    Returns
    -------
    list of Path
        The overlay PNGs written.
    """
    out = Path(out)
    if heatmaps not in HEATMAP_FORMATS:
        raise ValueError(f"heatmaps must be one of {HEATMAP_FORMATS}, got {heatmaps!r}")
    if heatmaps != "none":
        ext = ".nii.gz" if heatmaps == "nifti" else ".npy"
        target = out / "heatmaps" / f"{name}_heatmap{ext}"
        if heatmaps == "nifti":  # streamed: the input-grid heatmap is never held whole; int16 counts
            # of the finest step for this scan's largest value (resampling to the input grid is a
            # weighted mean, which never exceeds it): within 1/65534 of it, half the bytes to compress
            slope = int16_slope(float(np.max(np.abs(res.heatmap), initial=0.0)))
            save_slabs_like_input(target, lambda lo, hi: res.heatmap_in_input_grid(lo, hi, slope=slope), res.scan,
                                  slope=slope)
        else:
            write_heatmap(target, res.heatmap_in_input_grid(), res.scan, fmt=heatmaps)
    pngs: list[Path] = []
    if overlays > 0:
        from ..report import save_overlay  # matplotlib: only when overlays are drawn

        scores = np.asarray(res.slice_scores, dtype=float)
        order = np.argsort(np.nan_to_num(scores, nan=-np.inf))[::-1][:overlays]
        sy, sx = res.prepared.spacing[1:]
        vmax = max(float(np.nanmax(res.heatmap)), 1e-6)
        for k in sorted(int(i) for i in order if np.isfinite(scores[i])):
            png = out / "overlays" / f"{name}_slice{k:03d}.png"
            save_overlay(
                png, res.image[k], res.heatmap[k], res.lesion_labels[k], vmax=vmax, threshold=pixel_threshold,
                title=f"{name} slice {k}  score {res.slice_scores[k]:.4g}  p {res.slice_p_values[k]:.3g}",
                pixel_aspect=sy / sx,
            )
            pngs.append(png)
    return pngs


def scan_rows(scan: str, res) -> tuple[dict, list[dict], list[dict]]:
    """The scores.csv row, slices.csv rows and lesions.csv rows of one scored scan."""
    row = {"scan": scan, "n_slices": res.n_slices, "scan_score": res.scan_score, "p_value": res.p_value,
           "label": res.label, "top_slice": res.top_slice, "n_lesions": len(res.lesions), "error": "",
           "head_proba": res.head_proba, "fused_proba": res.fused_proba, "note": getattr(res, "note", "") or ""}
    head_p = res.slice_head_proba
    slices = []
    for k, (s, p, lab) in enumerate(zip(res.slice_scores, res.slice_p_values, res.slice_labels)):
        if np.isfinite(s):
            slices.append({"scan": scan, "slice": k, "score": s, "p_value": p,
                           "label": "abnormal" if lab else "normal",
                           "head_proba": None if head_p is None else head_p[k]})
    return row, slices, lesion_rows(scan, res.lesions)


class ResultsWriter:
    """Writes one results folder: scores.csv, slices.csv, lesions.csv, heatmaps/, overlays/, report.html.

    Use as a context manager; everything is written into a temporary folder beside ``out_dir`` and
    renamed onto it when the block ends without an exception (an existing folder is replaced only
    then, and only with ``overwrite``)::

        with ResultsWriter(out, heatmaps="nifti", overlays=3, pixel_threshold=det.pixel_threshold_) as w:
            for path, name in zip(paths, output_names(paths)):
                try:
                    w.add(path, name, det.score_scan(path))
                except AeAnomalyError as err:
                    w.add(path, name, err)
            w.finish(summary={"bundle": ...})

    Parameters
    ----------
    out_dir : path
        The results folder.
    heatmaps : {"nifti", "npy", "none"}
        Heatmap files per scan (NIfTI in each input's own geometry, or the internal grid as .npy).
    overlays : int
        PNG overlays of the N top-scoring slices per scan (0 = none).
    pixel_threshold : float, optional
        Lesion threshold drawn on the overlays.
    report : bool
        Write report.html in :meth:`finish`.
    overwrite : bool
        Replace an existing ``out_dir`` (once the new one is complete).

    Attributes
    ----------
    rows : list of dict
        scores.csv rows so far (``label`` "error" for an input that could not be scored).
    errors : list of str
        One line per input that could not be scored, in order.
    """

    def __init__(self, out_dir: str | os.PathLike, *, heatmaps: str = "nifti", overlays: int = 3,
                 pixel_threshold: float | None = None, report: bool = True, overwrite: bool = False):
        if heatmaps not in HEATMAP_FORMATS:
            raise ValueError(f"heatmaps must be one of {HEATMAP_FORMATS}, got {heatmaps!r}")
        self.out_dir = Path(out_dir)
        self.heatmaps, self.overlays, self.pixel_threshold = heatmaps, int(overlays), pixel_threshold
        self.report, self.overwrite = bool(report), bool(overwrite)
        self.rows: list[dict] = []
        self.slice_rows: list[dict] = []
        self.lesion_rows: list[dict] = []
        self.report_items: list[dict] = []
        self.errors: list[str] = []
        self._stack: contextlib.ExitStack | None = None
        self._tmp: Path | None = None
        self._finished = False

    # -- context ---------------------------------------------------------------------------------
    def __enter__(self) -> "ResultsWriter":
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_dir(self.out_dir, overwrite=self.overwrite))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        if exc_type is None and not self._finished:
            try:
                self.finish()
            except BaseException:
                if not stack.__exit__(*sys.exc_info()):
                    raise
                return False
        return bool(stack.__exit__(exc_type, exc, tb))

    @property
    def folder(self) -> Path:
        """The folder being written (the temporary one while the block runs)."""
        if self._tmp is None:
            raise RuntimeError("ResultsWriter is used outside its with-block")
        return self._tmp

    # -- counts ----------------------------------------------------------------------------------
    @property
    def n_scored(self) -> int:
        return sum(r["label"] != "error" for r in self.rows)

    @property
    def n_abnormal(self) -> int:
        return sum(r["label"] == "abnormal" for r in self.rows)

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    # -- writing ---------------------------------------------------------------------------------
    def add(self, path: str | os.PathLike, name: str, result: Any) -> dict:
        """Record one input: a ScanResult (its files are written now) or the exception that stopped it
        (an ``error`` row). Returns its scores.csv row."""
        scan = str(path)
        if isinstance(result, BaseException):
            text = error_text(result, path)
            self.errors.append(text)
            row = {"scan": scan, "label": "error", "error": text}
            self.rows.append(row)
            self.report_items.append({**row, "scan_score": None, "p_value": None, "n_slices": None,
                                      "top_slice": None, "overlays": [], "lesions": []})
            return row
        pngs = write_scan_outputs(result, name, self.folder, heatmaps=self.heatmaps, overlays=self.overlays,
                                  pixel_threshold=self.pixel_threshold)
        row, slices, lesions = scan_rows(scan, result)
        self.rows.append(row)
        self.slice_rows += slices
        self.lesion_rows += lesions
        self.report_items.append({**row, "overlays": pngs, "lesions": result.lesions})
        return row

    def finish(self, summary: Mapping[str, Any] | None = None, title: str = "aeanomaly report") -> Path:
        """Write scores.csv, slices.csv, lesions.csv and (with ``report``) report.html; returns the
        folder's final path (in place once the with-block ends)."""
        tmp = self.folder
        write_csv(tmp / "scores.csv", SCORE_COLUMNS, self.rows)
        write_csv(tmp / "slices.csv", SLICE_COLUMNS, self.slice_rows)
        write_csv(tmp / "lesions.csv", LESION_COLUMNS, self.lesion_rows)
        if self.report:
            from ..report import write_report

            write_report(tmp / "report.html", self.report_items, title=title, summary=dict(summary or {}))
        self._finished = True
        return self.out_dir
