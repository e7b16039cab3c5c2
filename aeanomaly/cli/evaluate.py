"""``aeanomaly evaluate``: detection quality of a bundle on labelled scans."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from .common import (check_bundle, check_output_dir, deprecated_alias, handles_errors, quiet_warnings, report_unscored,
                     say, start_tensorflow, warn)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _head_kind(bundle) -> str | None:
    """The kind of the bundle's supervised head, from head.json (None without one)."""
    import json

    p = Path(bundle) / "head.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None  # AnomalyDetector.load reports a broken head


_NEEDS_UNET = "--organ-masks needs a bundle with a U-Net head (aeanomaly fit-head BUNDLE --kind unet)"


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--normal-dir", multiple=True, type=click.Path(), help="Folder(s) of normal scans.")
@click.option("--abnormal-dir", multiple=True, type=click.Path(), help="Folder(s) of abnormal scans.")
@click.option("--labels", "labels_csv", type=click.Path(), help="labels.csv with scan,label[,mask] columns.")
@click.option("--masks", "masks_dir", type=click.Path(), help="Folder of lesion masks (<scan>_mask.nii.gz or same name).")
@click.option("--organ-masks", "organ_dir", type=click.Path(),
              help="Folder of organ label maps (paired like --masks): Dice/IoU per class of the U-Net head.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--overlays", default=2, show_default=True, type=click.IntRange(0), help="TP/FP/FN overlays per abnormal scan.")
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", is_flag=True)
@deprecated_alias("--normal", "--normal-dir", "normal_dir", multiple=True, type=click.Path())
@deprecated_alias("--abnormal", "--abnormal-dir", "abnormal_dir", multiple=True, type=click.Path())
@handles_errors
def evaluate(bundle, normal_dir, abnormal_dir, labels_csv, masks_dir, organ_dir, out, overlays, overwrite, quiet):
    """Scan-, slice- and pixel-level metrics of BUNDLE on labelled scans (metrics.json, plots, overlays).

    Labels come from --normal-dir/--abnormal-dir folders, a labels.csv, or the presence of a lesion
    mask. With a CNN head, metrics.json adds the classifier's and the fused probability's scan
    metrics (scan_classifier, scan_fused); with a U-Net head and --organ-masks, Dice and IoU per
    organ class (organ_segmentation). Exit code 2 for bad input and when no scan could be scored;
    scans that cannot be scored are error rows of scans.csv (their count and the first reason on
    stderr).
    """
    from ..io.labels import gather_labeled, pair_masks

    quiet_warnings(quiet)
    out = check_output_dir(out, overwrite, what="output folder")
    check_bundle(bundle)
    if organ_dir and not Path(organ_dir).is_dir():
        raise ConfigError("organ masks folder does not exist", organ_dir)
    items = gather_labeled(normal_dir, abnormal_dir, labels_csv, masks_dir)
    organ_masks = [None] * len(items)
    if organ_dir:
        if _head_kind(bundle) != "unet":
            raise ConfigError(_NEEDS_UNET, bundle)
        organ_masks = pair_masks([it.scan for it in items], organ_dir)
        if not any(organ_masks):
            raise ConfigError(f"no organ label map matches any of the {len(items)} scans "
                              "(looked for the same file name or <stem>_mask.<ext>)", organ_dir)

    start_tensorflow()
    from tqdm.auto import tqdm

    from ..detector import AnomalyDetector
    from ..evaluate import Evaluation

    det = AnomalyDetector.load(bundle)
    head = getattr(det, "head_", None)
    if organ_dir and (head is None or head.kind != "unet"):
        raise ConfigError(_NEEDS_UNET, bundle)
    from ..io.writers import atomic_dir

    with atomic_dir(out, overwrite=True) as tmp:
        ev = Evaluation(det)
        for it, organ in tqdm(list(zip(items, organ_masks)), desc="evaluate", unit="scan", disable=quiet):
            done = ev.add(it.scan, it.label, it.mask, organ)
            if done.ok and done.truth is not None and overlays:
                _overlays(done, tmp, overlays)
        metrics = ev.metrics()
        _write(tmp, metrics, ev, det)
    report_unscored(ev.errors, len(items), "scans.csv")
    s = metrics["scan"]
    say(quiet, f"scan AUROC {_f(s['auroc'])}, AUPRC {_f(s['auprc'])}, sensitivity {_f(s['sensitivity'])}, "
               f"specificity {_f(s['specificity'])} at target FPR {det.target_fpr_} (observed {_f(s['observed_fpr'])})")
    check = metrics.get("calibration_check")
    if check and check["observed_fpr"] is not None:
        lo, hi = check["ci95"]
        say(quiet, f"normal scans flagged: {check['n_flagged']} of {check['n_normal']} (95% CI {lo:.3f}–{hi:.3f}; "
                   f"target {check['target_fpr']}, p = {check['p_excess']:.3g} against the calibration normals)")
        advice = ("(another scanner, protocol or population?); recalibrate on normals like them: "
                  f"aeanomaly calibrate {bundle} --normal-dir DIR")
        if check["excess"]:
            warn(f"{check['n_flagged']} of these {check['n_normal']} normal scans are labelled abnormal, more than "
                 f"the bundle's calibration normals allow at target FPR {check['target_fpr']} (p = "
                 f"{check['p_excess']:.3g}): these normals score higher than the ones the bundle was calibrated on "
                 + advice)
        elif check["shifted"]:
            warn(f"these {check['n_normal']} normal scans score higher than the ones the bundle was calibrated on "
                 f"(rank test p = {check['p_shift']:.3g}), so their false-positive rate may exceed the target "
                 f"{check['target_fpr']} " + advice)
    if metrics.get("pixel"):
        say(quiet, f"pixel AUROC {_f(metrics['pixel']['pixel_auroc'])}, Dice {_f(metrics['pixel']['dice'])}")
    for key, what in (("scan_classifier", "classifier"), ("scan_fused", "fused")):
        if metrics.get(key):
            say(quiet, f"{what} AUROC {_f(metrics[key]['auroc'])}, sensitivity {_f(metrics[key]['sensitivity'])}, "
                       f"specificity {_f(metrics[key]['specificity'])} at P ≥ {metrics[key]['threshold']}")
    if metrics.get("organ_segmentation"):
        seg = metrics["organ_segmentation"]
        say(quiet, "organ Dice " + ", ".join(f"{c} {_f(d)}" for c, d in seg["dice"].items())
            + f" ({seg['n_scans']} scans)")
    say(quiet, f"metrics in {out / 'metrics.json'}")


def _overlays(done, out: Path, n: int) -> None:
    """TP / FP / FN overlays of the slices of one abnormal scan with the most lesion pixels."""
    from ..evaluate import error_overlay_slices
    from ..io.results import output_names
    from ..report import save_eval_overlay

    res, truth = done.result, done.truth
    name = output_names([res.source or done.scan])[0]
    for k in error_overlay_slices(truth, res.lesion_labels > 0, n):
        save_eval_overlay(out / "overlays" / f"{name}_slice{k:03d}.png", res.image[k], res.lesion_labels[k] > 0,
                          truth[k], title=f"{name} slice {k}: TP yellow, FP green, FN red")


def _write(out: Path, metrics: dict, ev, det) -> None:
    """metrics.json, scans.csv, roc_pr.png (both classes present) and score_distribution.png."""
    import numpy as np

    from ..bundle import dump_json
    from ..evaluate import EVAL_COLUMNS
    from ..io.results import write_csv
    from ..report import save_roc_pr, save_score_distribution

    dump_json(out / "metrics.json", metrics)
    write_csv(out / "scans.csv", EVAL_COLUMNS, ev.rows)
    ok = ev.scored_rows()
    y = np.array([r["label"] for r in ok])
    s = np.array([r["scan_score"] for r in ok], dtype=float)
    if 0 < y.sum() < len(y):
        c = metrics["scan"]
        op = {"fpr": c["observed_fpr"], "tpr": c["sensitivity"]} if c["observed_fpr"] is not None else None
        save_roc_pr(out / "roc_pr.png", y, s, operating_point=op)
    thr = det.calibrator_.threshold_
    save_score_distribution(out / "score_distribution.png", s[y == 0], s[y == 1] if y.any() else None,
                            threshold=thr if np.isfinite(thr) else None, density=det.calibrator_.density)
