"""``aeanomaly score``: scan-level labels, p-values, heatmaps, lesion tables and the HTML report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import ConfigError, EmptyInputError
from .common import (check_bundle, check_open_unit, check_output_dir, collect_scans, deprecated_alias, handles_errors,
                     method_in_force, quiet_warnings, report_unscored, say, start_tensorflow)


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
@click.option("--target-fpr", type=float, default=None, help="Target FPR for this run (refits the threshold from "
              "the bundle's normal calibration scores; the bundle is not changed).")
@click.option("--slice-fdr", type=float, default=None,
              help="Label slices by Benjamini-Hochberg across each scan's slices at this FDR (default: each "
                   "slice against the slice-level threshold).")
@click.option("--min-lesion-mm3", type=float, default=None, help="Drop lesions smaller than this volume (mm³).")
@click.option("--heatmaps", type=click.Choice(["nifti", "npy", "none"]), default="nifti", show_default=True,
              help="nifti: .nii.gz in each input's own grid, int16 with scl_slope (within 1/65534 of the scan's "
                   "largest value); npy: float32 on the internal grid.")
@click.option("--overlays", default=3, show_default=True, type=click.IntRange(0),
              help="PNG overlays of the N top-scoring slices per scan (0 = none).")
@click.option("--report/--no-report", default=True, show_default=True, help="Write report.html.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable scan (exit 2).")
@click.option("--prefetch/--no-prefetch", default=True, show_default=True,
              help="Read and prepare the next scan while this one is scored (--engine local; holds two scans "
                   "in memory instead of one).")
@click.option("--fail-on-anomaly", is_flag=True, help="Exit with code 1 when any scan is labelled abnormal.")
@click.option("--overwrite", is_flag=True, help="Replace an existing results folder.")
@click.option("--quiet", is_flag=True)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a pool of Ray workers that each load the bundle once "
                   "(pip install 'aeanomaly[distributed]'); resumable: re-run the same command after an interruption.")
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="Ray cluster (--engine ray): 'auto' = the cluster this machine joined with `ray start`, "
                   "HOST:PORT = a remote head; default: a local Ray instance.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Ray workers (--engine ray; default: one per CPU of the cluster).")
@deprecated_alias("--fpr", "--target-fpr", "target_fpr", type=float)
@handles_errors
def score(bundle, scans, out, target_fpr, slice_fdr, min_lesion_mm3, heatmaps, overlays, report, strict, prefetch,
          fail_on_anomaly, overwrite, quiet, engine, address, workers):
    """Score scans (files or folders) with a fitted BUNDLE.

    \b
    Writes to OUT: scores.csv (one row per scan), slices.csv, lesions.csv, heatmaps/ (NIfTI in each
    input's own geometry), overlays/ (PNG of the top slices) and report.html.
    Exit code 0, or 1 with --fail-on-anomaly when a scan is abnormal; 2 for bad input and when no
    scan could be scored. Inputs that cannot be scored are error rows; their count and the first
    reason are printed on stderr.
    """
    quiet_warnings(quiet)
    out = Path(out)
    check_open_unit("--target-fpr", target_fpr)
    check_open_unit("--slice-fdr", slice_fdr)
    if min_lesion_mm3 is not None and min_lesion_mm3 < 0:
        raise ConfigError(f"--min-lesion-mm3 must be ≥ 0, got {min_lesion_mm3}")
    if engine == "local" and (address is not None or workers is not None):
        raise ConfigError("--address and --workers need --engine ray")
    if engine == "ray":
        from ..distributed.ray_engine import require_ray  # imports no Ray

        require_ray()
    check_output_dir(out, overwrite)
    paths = collect_scans(scans)
    check_bundle(bundle)

    start_tensorflow()
    from .. import __version__
    from ..detector import SCAN_ERRORS, AnomalyDetector
    from ..io.results import ResultsWriter, output_names

    det = AnomalyDetector.load(bundle)
    if slice_fdr is not None:
        det.set_params(slice_fdr=slice_fdr)
    if min_lesion_mm3 is not None:
        det.set_params(min_lesion_mm3=min_lesion_mm3)
    if target_fpr is not None:
        det.set_threshold(target_fpr=target_fpr, reason="score --target-fpr")
    from tqdm.auto import tqdm

    cal = det.calibrator_
    summary = {"bundle": str(bundle), "calibration method": method_in_force(cal), "target FPR": det.target_fpr_,
               "threshold": cal.threshold_, "normal calibration scans": len(det.calibration_sources_),
               **head_summary(det), "aeanomaly version": __version__}
    if engine == "ray":
        from ..distributed.ray_engine import score_folder_on_ray

        params = {k: v for k, v in (("slice_fdr", slice_fdr), ("min_lesion_mm3", min_lesion_mm3)) if v is not None}
        with tqdm(total=len(paths), desc="score", unit="scan", disable=quiet) as bar:
            writer, _ = score_folder_on_ray(
                bundle, paths, out, heatmaps=heatmaps, overlays=overlays, pixel_threshold=det.pixel_threshold_,
                report=report, overwrite=True, summary=summary, address=address, workers=workers, params=params,
                target_fpr=target_fpr, strict=strict, on_result=lambda rec: bar.update(1))
    else:
        with ResultsWriter(out, heatmaps=heatmaps, overlays=overlays, pixel_threshold=det.pixel_threshold_,
                           report=report, overwrite=True) as writer:
            results = det.iter_scores(paths, prefetch=prefetch, errors=() if strict else SCAN_ERRORS)
            with tqdm(total=len(paths), desc="score", unit="scan", disable=quiet) as bar:
                for name in output_names(paths):
                    # next() rather than a for-loop over a tqdm or enumerate wrapper: those keep the
                    # previous item until the next one arrives, i.e. two scans' arrays at once
                    path, res = next(results)
                    writer.add(path, name, res)
                    del res
                    bar.update(1)
            if writer.n_scored == 0:  # nothing usable: exit 2, write nothing
                raise EmptyInputError(f"{writer.errors[0]} (none of the {len(paths)} scans could be scored)")
            writer.finish(summary=summary)
    n_err, n_abn = writer.n_errors, writer.n_abnormal
    say(quiet, f"scored {writer.n_scored} scans: {n_abn} abnormal at target FPR {det.target_fpr_}"
               + (f", {n_err} unreadable (see scores.csv)" if n_err else ""))
    report_unscored(writer.errors, len(paths), "scores.csv")
    say(quiet, f"results in {out}" + (f"; open {out / 'report.html'}" if report else ""))
    if fail_on_anomaly and n_abn:
        sys.exit(1)
