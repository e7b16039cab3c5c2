"""``aeanomaly evaluate``: detection quality of a bundle on labelled scans."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np

from .errors import AeAnomalyError, ConfigError


def find_mask(scan_path: Path, masks_dir: Path) -> Path | None:
    """The mask of a scan in ``masks_dir``: same file name, or ``<stem>_mask`` with any extension."""
    from .io.results import output_names

    stem = output_names([scan_path])[0]
    for cand in sorted(masks_dir.iterdir()):
        if cand.name == scan_path.name or output_names([cand])[0] in (stem, f"{stem}_mask"):
            return cand
    return None


def read_labels_csv(path: Path) -> list[tuple[Path, int, Path | None]]:
    """(scan, label, mask) from a labels.csv with columns scan,label[,mask]; paths relative to the CSV.
    Labels: normal/abnormal or 0/1."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                lab = str(r.get("label", "")).strip().lower()
                if lab not in ("normal", "abnormal", "0", "1"):
                    raise ConfigError(f"label {lab!r} of {r.get('scan')} is not normal/abnormal/0/1", path)
                mask = (r.get("mask") or "").strip()
                rows.append((path.parent / r["scan"], int(lab in ("abnormal", "1")), path.parent / mask if mask else None))
    except (OSError, KeyError, csv.Error) as err:
        raise ConfigError(f"cannot read labels: {err}", path) from None
    if not rows:
        raise ConfigError("no rows in labels file", path)
    return rows


def gather(normal, abnormal, labels_csv, masks_dir) -> list[tuple[Path, int, Path | None]]:
    """Scans with their labels (1 = abnormal) and masks, from folders, a labels.csv and/or masks.

    Scans labelled normal (``--normal`` folders, ``normal`` rows of the labels file) are never paired
    with a file of ``masks_dir``: normal and abnormal folders often reuse file names (``scan_001.nii.gz``).
    A mask named in the labels file itself is always used."""
    from .cli import _collect_scans

    items = []
    if labels_csv:
        items += read_labels_csv(Path(labels_csv))
    if normal:
        items += [(p, 0, None) for p in _collect_scans(normal)]
    if abnormal:
        items += [(p, 1, None) for p in _collect_scans(abnormal)]
    if masks_dir:
        md = Path(masks_dir)
        if not md.is_dir():
            raise ConfigError("masks folder does not exist", md)
        items = [(p, y, find_mask(p, md) if m is None and y == 1 else m) for p, y, m in items]
    if not items:
        raise ConfigError("no labelled scans: give --normal/--abnormal folders or --labels")
    return items


def pair_organ_masks(det, items, organ_dir) -> list[Path | None]:
    """The organ label map of each scan in ``organ_dir`` (paired by file name like ``--masks``);
    checked up front: the bundle needs a U-Net head and at least one scan a map."""
    if not organ_dir:
        return [None] * len(items)
    od = Path(organ_dir)
    if not od.is_dir():
        raise ConfigError("organ masks folder does not exist", od)
    head = getattr(det, "head_", None)
    if head is None or head.kind != "unet":
        raise ConfigError("--organ-masks needs a bundle with a U-Net head (aeanomaly fit-head BUNDLE --kind unet)",
                          getattr(det, "bundle_path_", None))
    paired = [find_mask(p, od) for p, _, _ in items]
    if not any(paired):
        raise ConfigError(f"no organ label map matches any of the {len(items)} scans "
                          "(looked for the same file name or <stem>_mask.<ext>)", od)
    return paired


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--normal", multiple=True, type=click.Path(), help="Folder(s) of normal scans.")
@click.option("--abnormal", multiple=True, type=click.Path(), help="Folder(s) of abnormal scans.")
@click.option("--labels", "labels_csv", type=click.Path(), help="labels.csv with scan,label[,mask] columns.")
@click.option("--masks", "masks_dir", type=click.Path(), help="Folder of lesion masks (<scan>_mask.nii.gz or same name).")
@click.option("--organ-masks", "organ_dir", type=click.Path(),
              help="Folder of organ label maps (paired like --masks): Dice/IoU per class of the U-Net head.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--overlays", default=2, show_default=True, type=click.IntRange(0), help="TP/FP/FN overlays per abnormal scan.")
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", is_flag=True)
def evaluate(bundle, normal, abnormal, labels_csv, masks_dir, organ_dir, out, overlays, overwrite, quiet):
    """Scan-, slice- and pixel-level metrics of BUNDLE on labelled scans (metrics.json, plots, overlays).

    Labels come from --normal/--abnormal folders, a labels.csv, or the presence of a lesion mask.
    With a CNN head, metrics.json adds the classifier's and the fused probability's scan metrics
    (scan_classifier, scan_fused); with a U-Net head and --organ-masks, Dice and IoU per organ class
    (organ_segmentation).
    """
    from tqdm.auto import tqdm

    from .cli import _fail, _quiet_warnings, _say
    from .detector import AnomalyDetector
    from .io.writers import atomic_dir

    _quiet_warnings(quiet)
    out = Path(out)
    try:
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise ConfigError("output folder exists and is not empty; pass --overwrite to replace it", out)
        det = AnomalyDetector.load(bundle)
        items = gather(normal, abnormal, labels_csv, masks_dir)
        organ_masks = pair_organ_masks(det, items, organ_dir)
        with atomic_dir(out, overwrite=True) as tmp:
            acc = _Accumulator(det)
            for (path, y, mask), organ in tqdm(list(zip(items, organ_masks)), desc="evaluate", unit="scan",
                                               disable=quiet):
                acc.add(path, y, mask, tmp, overlays, organ)
            metrics = acc.metrics()
            _write(tmp, metrics, acc, det)
    except AeAnomalyError as err:
        _fail(str(err))
    s = metrics["scan"]
    _say(quiet, f"scan AUROC {_f(s['auroc'])}, AUPRC {_f(s['auprc'])}, sensitivity {_f(s['sensitivity'])}, "
                f"specificity {_f(s['specificity'])} at target FPR {det.target_fpr} (observed {_f(s['observed_fpr'])})")
    if metrics.get("pixel"):
        _say(quiet, f"pixel AUROC {_f(metrics['pixel']['pixel_auroc'])}, Dice {_f(metrics['pixel']['dice'])}")
    for key, what in (("scan_classifier", "classifier"), ("scan_fused", "fused")):
        if metrics.get(key):
            _say(quiet, f"{what} AUROC {_f(metrics[key]['auroc'])}, sensitivity {_f(metrics[key]['sensitivity'])}, "
                        f"specificity {_f(metrics[key]['specificity'])} at P ≥ {metrics[key]['threshold']}")
    if metrics.get("organ_segmentation"):
        seg = metrics["organ_segmentation"]
        _say(quiet, "organ Dice " + ", ".join(f"{c} {_f(d)}" for c, d in seg["dice"].items())
             + f" ({seg['n_scans']} scans)")
    _say(quiet, f"metrics in {out / 'metrics.json'}")


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


class _Accumulator:
    """Collects per-scan results for the metrics (keeps only what the metrics need)."""

    def __init__(self, det):
        self.det = det
        self.rows, self.slice_y, self.slice_s, self.slice_p = [], [], [], []
        self.heat, self.truth, self.body, self.pred, self.lesions = [], [], [], [], []
        self.n_errors = 0
        head = getattr(det, "head_", None)
        self.n_organs = len(head.classes_) if head is not None and head.kind == "unet" else 0
        self.organ_counts = np.zeros((self.n_organs, 3), np.int64)
        self.organ_per_scan: list = []

    def add(self, path: Path, y: int, mask_path: Path | None, out: Path, n_overlays: int,
            organ_path: Path | None = None) -> None:
        from .evaluate import lesion_detection
        from .io import load_label
        from .preprocess import erode_mask, mask_to_model_grid

        det = self.det
        try:
            res = det.score_scan(path)
        except AeAnomalyError as err:
            self.rows.append({"scan": str(path), "label": y, "error": str(err)})
            self.n_errors += 1
            return
        truth = None
        if mask_path is not None:
            truth = mask_to_model_grid(load_label(mask_path, like=res.scan) > 0, det.size)
            y = int(y or truth.any())
        self.rows.append({"scan": str(path), "label": y, "scan_score": res.scan_score, "p_value": res.p_value,
                          "predicted": int(res.label == "abnormal"), "n_lesions": len(res.lesions), "error": "",
                          "head_proba": res.head_proba, "fused_proba": res.fused_proba})
        if organ_path is not None and res.organ_labels is not None:
            self._add_organs(res, organ_path)
        scored = np.isfinite(res.slice_scores)
        if truth is not None or y == 0:
            sy = truth.reshape(len(truth), -1).any(axis=1) if truth is not None else np.zeros(res.n_slices, bool)
            self.slice_y += sy[scored].tolist()
            self.slice_s += res.slice_scores[scored].tolist()
            self.slice_p += res.slice_labels[scored].tolist()
            body = erode_mask(res.prepared.body, 0) & res.prepared.keep[:, None, None]
            t = truth if truth is not None else np.zeros_like(body)
            self.heat.append(res.heatmap)
            self.truth.append(t)
            self.body.append(body)
            self.pred.append(res.lesion_labels > 0)
            if truth is not None:
                self.lesions += lesion_detection(truth, res.lesion_labels, res.prepared.spacing)
                self._overlays(res, truth, out, n_overlays)

    def _add_organs(self, res, organ_path: Path) -> None:
        """Dice / IoU counts of the head's organ labels against a reference map, on the scored slices."""
        from .evaluate import dice_iou_of_counts, overlap_counts
        from .hybrid import label_map_to_model_grid
        from .io import load_label

        ref = label_map_to_model_grid(load_label(organ_path, like=res.scan), self.det.head_.label_values,
                                      self.det.size)
        keep = res.prepared.keep
        pred, ref = res.organ_labels[keep], ref[keep]
        counts = overlap_counts(pred, ref, self.n_organs)
        self.organ_counts += counts
        self.organ_per_scan.append(dice_iou_of_counts(counts))

    def _overlays(self, res, truth, out: Path, n: int) -> None:
        from .io.results import output_names
        from .report import save_eval_overlay

        per_slice = truth.reshape(len(truth), -1).sum(axis=1) + (res.lesion_labels > 0).reshape(len(truth), -1).sum(axis=1)
        name = output_names([res.source])[0]
        for k in [int(i) for i in np.argsort(per_slice)[::-1][:n] if per_slice[i] > 0]:
            save_eval_overlay(out / "overlays" / f"{name}_slice{k:03d}.png", res.image[k], res.lesion_labels[k] > 0,
                              truth[k], title=f"{name} slice {k}: TP yellow, FP green, FN red")

    def metrics(self) -> dict:
        from .evaluate import (classification_metrics, detection_rate_by_size, head_classification_metrics,
                               organ_segmentation_metrics, pixel_metrics)

        ok = [r for r in self.rows if not r["error"]]
        if not ok:
            raise ConfigError("no scan could be scored")
        y = [r["label"] for r in ok]
        m = {
            "bundle": getattr(self.det, "bundle_path_", None), "target_fpr": self.det.target_fpr,
            "n_scans": len(self.rows), "n_errors": self.n_errors,
            "scan": classification_metrics(y, [r["scan_score"] for r in ok], [r["predicted"] for r in ok]),
        }
        head = getattr(self.det, "head_", None)
        if head is not None:
            m["head"] = {"kind": head.kind, "classes": list(head.classes_),
                         "fusion": getattr(head, "fusion_", None) is not None}
            m.update(head_classification_metrics(y, [r["head_proba"] for r in ok], [r["fused_proba"] for r in ok]))
        if self.organ_per_scan:
            m["organ_segmentation"] = organ_segmentation_metrics(head.classes_, self.organ_counts, self.organ_per_scan)
        if self.slice_y:
            m["slice"] = classification_metrics(self.slice_y, self.slice_s, self.slice_p)
        if any(t.any() for t in self.truth):
            m["pixel"] = pixel_metrics(self.heat, self.truth, self.body, self.pred)
            m["lesion_detection_by_size"] = detection_rate_by_size(self.lesions)
        return m


def _write(out: Path, metrics: dict, acc: _Accumulator, det) -> None:
    from .bundle import dump_json
    from .io.results import write_csv
    from .report import save_roc_pr, save_score_distribution

    dump_json(out / "metrics.json", metrics)
    write_csv(out / "scans.csv", ["scan", "label", "scan_score", "p_value", "predicted", "n_lesions", "error",
                                  "head_proba", "fused_proba"], acc.rows)
    ok = [r for r in acc.rows if not r["error"]]
    y = np.array([r["label"] for r in ok])
    s = np.array([r["scan_score"] for r in ok])
    if 0 < y.sum() < len(y):
        c = metrics["scan"]
        op = {"fpr": c["observed_fpr"], "tpr": c["sensitivity"]} if c["observed_fpr"] is not None else None
        save_roc_pr(out / "roc_pr.png", y, s, operating_point=op)
    thr = det.calibrator_.threshold_
    save_score_distribution(out / "score_distribution.png", s[y == 0], s[y == 1] if y.any() else None,
                            threshold=thr if np.isfinite(thr) else None, density=det.calibrator_.density)
