"""``aeanomaly score``: scan-level labels, p-values, heatmaps, lesion tables and the HTML report."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from .errors import AeAnomalyError, ConfigError


def write_scan_outputs(res, name: str, out: Path, *, heatmaps: str, overlays: int, pixel_threshold: float) -> list[Path]:
    """Heatmap and overlay files of one scored scan; returns the overlay PNG paths."""
    from .io.results import write_heatmap
    from .report import save_overlay

    if heatmaps != "none":
        ext = ".nii.gz" if heatmaps == "nifti" else ".npy"
        write_heatmap(out / "heatmaps" / f"{name}_heatmap{ext}", res.heatmap_in_input_grid(), res.scan, fmt=heatmaps)
    pngs = []
    if overlays > 0:
        order = np.argsort(np.nan_to_num(res.slice_scores, nan=-np.inf))[::-1][:overlays]
        sy, sx = res.prepared.spacing[1:]
        vmax = max(float(np.nanmax(res.heatmap)), 1e-6)
        for k in sorted(int(i) for i in order if np.isfinite(res.slice_scores[i])):
            png = out / "overlays" / f"{name}_slice{k:03d}.png"
            save_overlay(
                png, res.image[k], res.heatmap[k], res.lesion_labels[k], vmax=vmax, threshold=pixel_threshold,
                title=f"{name} slice {k}  score {res.slice_scores[k]:.4g}  p {res.slice_p_values[k]:.3g}",
                pixel_aspect=sy / sx,
            )
            pngs.append(png)
    return pngs


def head_summary(det) -> dict:
    """Report header lines describing the bundle's supervised head (empty without one)."""
    head = getattr(det, "head_", None)
    if head is None:
        return {}
    what = {"unet": "U-Net organ region", "cnn": "CNN slice classifier"}[head.kind]
    out = {"supervised head": f"{what} ({', '.join(head.classes_)})"}
    if head.kind == "cnn":
        out["fusion"] = "logistic stacking of p-value and classifier" if getattr(head, "fusion_", None) else "not fitted"
    return out


@click.command()
@click.argument("bundle", type=click.Path())
@click.argument("scans", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Results folder.")
@click.option("--fpr", type=float, default=None, help="Target FPR for this run (refits the threshold from the "
              "bundle's normal calibration scores; the bundle is not changed).")
@click.option("--slice-fdr", type=float, default=None,
              help="Label slices by Benjamini-Hochberg across each scan's slices at this FDR (default: each "
                   "slice against the slice-level threshold).")
@click.option("--min-lesion-mm3", type=float, default=None, help="Drop lesions smaller than this volume (mm³).")
@click.option("--heatmaps", type=click.Choice(["nifti", "npy", "none"]), default="nifti", show_default=True)
@click.option("--overlays", default=3, show_default=True, type=click.IntRange(0),
              help="PNG overlays of the N top-scoring slices per scan (0 = none).")
@click.option("--report/--no-report", default=True, show_default=True, help="Write report.html.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable scan (exit 2).")
@click.option("--fail-on-anomaly", is_flag=True, help="Exit with code 1 when any scan is labelled abnormal.")
@click.option("--overwrite", is_flag=True, help="Replace an existing results folder.")
@click.option("--quiet", is_flag=True)
def score(bundle, scans, out, fpr, slice_fdr, min_lesion_mm3, heatmaps, overlays, report, strict, fail_on_anomaly,
          overwrite, quiet):
    """Score scans (files or folders) with a fitted BUNDLE.

    \b
    Writes to OUT: scores.csv (one row per scan), slices.csv, lesions.csv, heatmaps/ (NIfTI in each
    input's own geometry), overlays/ (PNG of the top slices) and report.html.
    Exit code 0, or 1 with --fail-on-anomaly when a scan is abnormal; 2 for bad input.
    """
    from tqdm.auto import tqdm

    from .cli import _collect_scans, _fail, _quiet_warnings, _say
    from .detector import AnomalyDetector
    from .io.results import (LESION_COLUMNS, SCORE_COLUMNS, SLICE_COLUMNS, lesion_rows, output_names, write_csv)
    from .io.writers import atomic_dir

    _quiet_warnings(quiet)
    out = Path(out)
    try:
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise ConfigError("results folder exists and is not empty; pass --overwrite to replace it", out)
        if fpr is not None and not 0 < fpr < 1:
            raise ConfigError(f"--fpr must be in (0, 1), got {fpr}")
        if slice_fdr is not None and not 0 < slice_fdr < 1:
            raise ConfigError(f"--slice-fdr must be in (0, 1), got {slice_fdr}")
        if min_lesion_mm3 is not None and min_lesion_mm3 < 0:
            raise ConfigError(f"--min-lesion-mm3 must be ≥ 0, got {min_lesion_mm3}")
        det = AnomalyDetector.load(bundle)
        if slice_fdr is not None:
            det.set_params(slice_fdr=slice_fdr)
        if min_lesion_mm3 is not None:
            det.set_params(min_lesion_mm3=min_lesion_mm3)
        if fpr is not None:
            det.set_threshold(target_fpr=fpr, reason="score --fpr")
        paths = _collect_scans(scans)
    except AeAnomalyError as err:
        _fail(str(err))
    names = output_names(paths)
    rows, slice_rows, les_rows, report_items = [], [], [], []
    try:
        with atomic_dir(out, overwrite=True) as tmp:
            for path, name in tqdm(list(zip(paths, names)), desc="score", unit="scan", disable=quiet):
                try:
                    res = det.score_scan(path)
                except AeAnomalyError as err:
                    if strict:
                        raise
                    rows.append({"scan": str(path), "label": "error", "error": str(err)})
                    report_items.append({"scan": str(path), "label": "error", "error": str(err), "scan_score": None,
                                         "p_value": None, "n_slices": None, "top_slice": None, "overlays": [], "lesions": []})
                    continue
                pngs = write_scan_outputs(res, name, tmp, heatmaps=heatmaps, overlays=overlays,
                                          pixel_threshold=det.pixel_threshold_)
                rows.append({"scan": str(path), "n_slices": res.n_slices, "scan_score": res.scan_score,
                             "p_value": res.p_value, "label": res.label, "top_slice": res.top_slice,
                             "n_lesions": len(res.lesions), "error": "", "head_proba": res.head_proba,
                             "fused_proba": res.fused_proba})
                head_p = res.slice_head_proba
                for k, (s, p, lab) in enumerate(zip(res.slice_scores, res.slice_p_values, res.slice_labels)):
                    if np.isfinite(s):
                        slice_rows.append({"scan": str(path), "slice": k, "score": s, "p_value": p,
                                           "label": "abnormal" if lab else "normal",
                                           "head_proba": None if head_p is None else head_p[k]})
                les_rows.extend(lesion_rows(str(path), res.lesions))
                report_items.append({**rows[-1], "overlays": pngs, "lesions": res.lesions})
            write_csv(tmp / "scores.csv", SCORE_COLUMNS, rows)
            write_csv(tmp / "slices.csv", SLICE_COLUMNS, slice_rows)
            write_csv(tmp / "lesions.csv", LESION_COLUMNS, les_rows)
            if report:
                from .report import write_report

                cal = det.calibrator_
                summary = {"bundle": str(bundle), "calibration method": cal.method, "target FPR": det.target_fpr,
                           "threshold": cal.threshold_, "normal calibration scans": len(det.calibration_sources_),
                           **head_summary(det), "aeanomaly version": __import__("aeanomaly").__version__}
                write_report(tmp / "report.html", report_items, summary=summary)
    except AeAnomalyError as err:
        _fail(str(err))
    n_abn = sum(r["label"] == "abnormal" for r in rows)
    n_err = sum(r["label"] == "error" for r in rows)
    _say(quiet, f"scored {len(rows) - n_err} scans: {n_abn} abnormal at target FPR {det.target_fpr}"
                + (f", {n_err} unreadable (see scores.csv)" if n_err else ""))
    _say(quiet, f"results in {out}" + (f"; open {out / 'report.html'}" if report else ""))
    if fail_on_anomaly and n_abn:
        sys.exit(1)
