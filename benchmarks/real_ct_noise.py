"""The denoising noise of the autoencoder, chosen on the real-CT benchmark's tune split.

    python benchmarks/real_ct_noise.py                       # → benchmarks/results/real_ct_noise.json
    python benchmarks/real_ct_noise.py --noises 0.2@16 0.5@64 --sigmas 3

For each noise setting (std @ resolution of the grid it is drawn on) and each LIDC fold, the product's
``AnomalyDetector`` (fit's defaults otherwise: 128 px, 3 channels here as in the real-CT benchmark) is
fitted on the fold's training normals (:func:`real_ct_data.normal_sets`) and scores the fold's LIDC volume
with the *tuning kinds* only (solid, ground glass; :func:`real_ct_volume.volume_cases`) injected into its
nodule-free part: lesion slices against the same scan's clean slices (slice AUROC per slice score) and
pixel AUPRC in the lungs, per heatmap σ. Neither the real nodules nor the held-out lesion kinds are
looked at: they stay the test (``benchmarks/real_ct.py``). About 3.5 min per setting and fold on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import real_ct  # noqa: E402
import real_ct_data as RD  # noqa: E402
import real_ct_lesions as RL  # noqa: E402
import real_ct_maps as RM  # noqa: E402
import real_ct_volume as RV  # noqa: E402

NOISES = ("0.2@16", "0.5@64", "0.5@32", "0.3@64", "0.5@128", "0.5@16", "0.8@32")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noises", nargs="+", default=list(NOISES), metavar="STD@RES")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[3.0, 6.0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=_common.RESULTS / "real_ct_noise.json")
    args = ap.parse_args(argv)
    root = RD.shared_data()
    why = RD.available(root)
    if why:
        print(f"real_ct_noise: {why}", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="aeanomaly-noise-"))
    rows = []
    cfg = {"epochs": args.epochs, "batch_size": 16, "seg_epochs": 0}

    def payload(complete):
        return {"benchmark": "real_ct_noise", "complete": complete, "settings": vars(args) | {"out": str(args.out)},
                "rows": rows, "summary": summary(rows), "total_s": round(time.perf_counter() - t_all, 1),
                "machine": _common.machine_info()}

    try:
        folds = {}
        for fold in RD.LIDC_PATIENTS:
            scan, readers = RD.lidc_volume(root, fold)
            folds[fold] = (RD.normal_sets(root, work / fold, fold), RV.volume_cases(scan, readers, RL.TUNING_KINDS, 3))
        for noise in args.noises:
            for fold, (sets, cases) in folds.items():
                t0 = time.perf_counter()
                _, methods, _, info = real_ct.fit_variant(sets, args.size, args.channels, cfg, 0, None,
                                                          real_ct.parse_noise(noise))
                methods.names = ["dae"]
                table = RV.tune_table(methods, cases, tuple(args.sigmas))["dae"]
                rows.append({"noise": noise, "fold": fold, "table": table, "fit_s": info["fit_s"],
                             "final_loss": methods.det.history_["loss"][-1], "s": round(time.perf_counter() - t0, 1)})
                print(f"real_ct_noise: {noise} {fold} " + " ".join(
                    f"{k}:{r['slice_auroc']:.3f}/{r['pixel_auprc']:.3f}" for k, r in table.items()), flush=True)
                _common.write_json(args.out, payload(False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _common.write_json(args.out, payload(True))
    print(table_md(payload(True)))
    return 0


def summary(rows) -> list[dict]:
    """Per noise and setting: slice AUROC and pixel AUPRC, means over the folds."""
    out = {}
    for r in rows:
        for k, v in r["table"].items():
            d = out.setdefault((r["noise"], k), {"noise": r["noise"], "setting": k, "slice_auroc": [], "pixel_auprc": []})
            d["slice_auroc"].append(v["slice_auroc"])
            d["pixel_auprc"].append(v["pixel_auprc"])
    return [{**d, "slice_auroc": float(np.mean(d["slice_auroc"])), "pixel_auprc": float(np.mean(d["pixel_auprc"]))}
            for d in out.values()]


def table_md(d: dict) -> str:
    """Markdown: one row per noise, the σ 3 mm / p99 setting and the best setting per noise."""
    by = {}
    for r in d["summary"]:
        by.setdefault(r["noise"], []).append(r)
    lines = ["| noise (std @ grid) | slice AUROC, σ 3 mm / p99 | pixel AUPRC, σ 3 mm | best setting | its slice AUROC + pixel AUPRC |",
             "|---|---|---|---|---|"]
    for noise, rs in by.items():
        ref = next((r for r in rs if r["setting"] == "3.0/p99"), rs[0])
        best = max(rs, key=lambda r: r["slice_auroc"] + r["pixel_auprc"])
        lines.append(f"| {noise} | {ref['slice_auroc']:.3f} | {ref['pixel_auprc']:.3f} | {best['setting']} | "
                     f"{best['slice_auroc'] + best['pixel_auprc']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
