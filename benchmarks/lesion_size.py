"""Which lesion sizes the `make demo` configuration detects: scan AUROC, lesion detection rate and
heatmap overlap by lesion diameter and kind, on chest phantoms it never saw.

    python benchmarks/lesion_size.py            # full run  → benchmarks/results/lesion_size.json (~15 min, 2 cores)
    python benchmarks/lesion_size.py --quick    # smoke run → benchmarks/results/lesion_size_quick.json

Training is the demo's own ``aeanomaly fit`` (48 normal chest phantoms of 24 × 128 × 128 at 5 × 2.7 ×
2.7 mm, model grid 64 px, 12 epochs, calibration fraction 0.42, validation 0.1), but on phantoms of
other seeds than the demo's. Test: normal phantoms and, per diameter bin, abnormal phantoms with
exactly one lesion of that bin (a scan's label then depends on one lesion of known size and kind;
kinds drawn among the lung kinds solid / part-solid / ground-glass). Each bin goes through
``aeanomaly evaluate`` (scan AUROC with a Hanley–McNeil 95 % half-width, sensitivity at the calibrated
threshold, pixel AUROC, Dice, lesion detection rate); per kind, the scan AUROC of that kind's scans
against all normals; per scoring setting (slice score × scan aggregation), the scan AUROC from the
same reconstructions, so the choice of defaults can be checked against lesion size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from quality import cli  # noqa: E402
from tables import auroc_ci95  # noqa: E402

BINS_MM = ((5, 10), (10, 15), (15, 20), (20, 30), (30, 40))
SHAPE, SPACING = (24, 128, 128), (5.0, 350.0 / 128, 350.0 / 128)
DEMO_FIT = ("--size", 64, "--epochs", 12, "--calib-fraction", 0.42, "--val-fraction", 0.1, "--seed", 0)
SCORINGS = [(s, a) for s in ("mae", "p99", "topk") for a in ("max", "top3")]


def per_kind_auroc(ev: Path, lesions_csv: Path) -> dict:
    from sklearn.metrics import roc_auc_score

    kind = {Path(r["scan"]).name: r["kind"] for r in csv.DictReader(open(lesions_csv))}
    rows = list(csv.DictReader(open(ev / "scans.csv")))
    normal = [float(r["scan_score"]) for r in rows if r["label"] == "0"]
    out = {}
    for k in sorted(set(kind.values())):
        ab = [float(r["scan_score"]) for r in rows if r["label"] == "1" and kind.get(Path(r["scan"]).name) == k]
        if ab and normal:
            out[k] = {"n": len(ab), "auroc": float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(ab))],
                                                                  normal + ab))}
    return out


def scoring_aurocs(det, normal: list[Path], abnormal: list[Path]) -> dict:
    from sklearn.metrics import roc_auc_score
    from aeanomaly.scoring import scan_score

    from aeanomaly.io import load_scan

    y = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]
    slice_score, out = det.slice_score, {}
    # one inference pass per scan: the scoring variants share the prepared scan and its reconstruction
    prepared = []
    for p in normal + abnormal:
        scan = load_scan(p)
        prep = det.prepare(scan)
        recon = np.zeros(prep.x.shape[:3], np.float32)
        if prep.keep.any():
            recon[prep.keep] = det.reconstruct(prep.x[prep.keep])
        prepared.append((prep, recon, scan.is_hu))
    for s in sorted({s for s, _ in SCORINGS}):
        det.set_params(slice_score=s)
        sl = [det.analyse_prepared(prep, recon, is_hu=hu).slice_scores for prep, recon, hu in prepared]
        for s2, a in SCORINGS:
            if s2 == s:
                out[f"{s}/{a}"] = float(roc_auc_score(y, [scan_score(v, a) for v in sl]))
    det.set_params(slice_score=slice_score)
    return out


def run(work: Path, quick: bool) -> dict:
    from aeanomaly.datasets.synthetic import write_phantom_set
    from aeanomaly.detector import AnomalyDetector

    n_train, n_test = (6, 4) if quick else (48, 15)
    shape = (8, 128, 128) if quick else SHAPE
    fit_args = list(DEMO_FIT)
    if quick:
        fit_args[fit_args.index("--epochs") + 1] = 2
    write_phantom_set(work / "train", n_train, 0, "chest", seed=21, shape=shape, spacing=SPACING)
    write_phantom_set(work / "normal", n_test, 0, "chest", seed=22, shape=shape, spacing=SPACING)
    t0 = time.perf_counter()
    cli("fit", "--normal-dir", work / "train" / "normal", "--out", work / "bundle", *fit_args, "--quiet")
    fit_s = time.perf_counter() - t0
    det = AnomalyDetector.load(work / "bundle")
    normal = sorted((work / "normal" / "normal").glob("*.nii.gz"))
    rows = []
    for i, (lo, hi) in enumerate(BINS_MM):
        d = work / f"bin_{lo}_{hi}"
        write_phantom_set(d, 0, n_test, "chest", seed=30 + i, shape=shape, spacing=SPACING,
                          lesions_per_scan=(1, 1), size_mm=(lo, hi))
        ev = work / f"eval_{lo}_{hi}"
        cli("evaluate", work / "bundle", "--normal-dir", work / "normal" / "normal", "--abnormal-dir", d / "abnormal",
            "--masks", d / "masks", "--out", ev, "--overlays", 0, "--quiet")
        m = json.loads((ev / "metrics.json").read_text())
        auc = m["scan"].get("auroc")
        det_all = next((r for r in m.get("lesion_detection_by_size", []) if r.get("all")), {})
        abnormal = sorted((d / "abnormal").glob("*.nii.gz"))
        rows.append({
            "diameter_mm": [lo, hi], "n_normal": n_test, "n_abnormal": n_test,
            "scan": {"auroc": auc, "auroc_ci95": auroc_ci95(auc, n_test, n_test),
                     **{k: m["scan"].get(k) for k in ("auprc", "sensitivity", "specificity", "observed_fpr")}},
            "pixel": {k: m.get("pixel", {}).get(k) for k in ("pixel_auroc", "pixel_auprc", "dice", "iou")},
            "lesions_detected": {k: det_all.get(k) for k in ("n", "detected", "rate")},
            "scan_auroc_by_kind": per_kind_auroc(ev, d / "lesions.csv"),
            "scan_auroc_by_scoring": scoring_aurocs(det, normal, abnormal),
        })
        print(f"[lesion_size] {lo}-{hi} mm: scan AUROC {auc}, pixel {rows[-1]['pixel']}, "
              f"detected {rows[-1]['lesions_detected']}", flush=True)
    from aeanomaly.detector import SCORING_DEFAULTS

    return {"package_scoring_defaults": {k: SCORING_DEFAULTS[k] for k in ("slice_score", "scan_aggregation")},
            "train": {"n_scans": n_train, "shape_zyx": list(shape), "spacing_mm": list(SPACING),
                      "fit_args": [str(a) for a in fit_args], "fit_s": round(fit_s, 1)},
            "bins": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.perf_counter()
    out = {"benchmark": "lesion_size", "quick": args.quick, "machine": _common.machine_info()}
    with tempfile.TemporaryDirectory(prefix="aeanomaly-lesion-size-") as tmp:
        out.update(run(Path(tmp), args.quick))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    path = _common.write_json(_common.RESULTS / ("lesion_size_quick.json" if args.quick else "lesion_size.json"), out)
    print(f"wrote {path} in {out['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
