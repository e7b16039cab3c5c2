"""Print the README's benchmark tables (Markdown) from benchmarks/results/*.json.

    python benchmarks/tables.py            # quality.json, fit.json, speed.json where present

Every number in the README's Benchmarks section is printed by this script from a committed result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def f(v, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:.{nd}f}"
    return str(v)


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def auroc_ci95(auc, n_pos: int, n_neg: int) -> float | None:
    """Half-width of the 95 % interval of an AUROC (Hanley & McNeil 1982 standard error)."""
    if auc is None or not n_pos or not n_neg:
        return None
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return 1.96 * max(var, 0.0) ** 0.5


def auroc_pm(auc, n_pos: int, n_neg: int) -> str:
    """``AUROC ± 95 % half-width`` as printed in the tables."""
    return f(auc) + " ± " + f(auroc_ci95(auc, n_pos, n_neg), 3)


def quality(q: dict) -> str:
    parts = []
    r = q.get("real_ct")
    if r and not r.get("skipped"):
        d = r["data"]
        parts.append(f"Real CT: {d['set']}, {d['n_slices']} slices in {d['n_pseudo_patients']} pseudo-patients; "
                     f"test = {d['n_test_normal']} normal + {d['n_test_abnormal']} lesion slices of held-out "
                     f"pseudo-patients; target FPR {q['target_fpr']}.")
        rows = []
        for name, m in r["test"].items():
            s, p = m["scan"], m["pixel"]
            rows.append([name, auroc_pm(s["auroc"], s["n_abnormal"], s["n_normal"]),
                         f(s["auprc"]), f(m["tuning_kinds"]["auroc"]), f(m["held_out_kinds"]["auroc"]),
                         f(s["sensitivity"], 2), f(s["observed_fpr"], 3), f(p.get("pixel_auroc")), f(p.get("pixel_auprc")),
                         f(p.get("dice")), f(m["false_lesions_per_normal_slice"], 2)])
        parts.append(table(["detector", "AUROC ± 95% CI", "AUPRC", "AUROC tuning kinds", "AUROC held-out kinds",
                            "sensitivity", "observed FPR", "pixel AUROC", "pixel AUPRC", "Dice",
                            "false lesions / normal slice"], rows))
        kinds = sorted(next(iter(r["test"].values()))["per_kind"])
        rows = [[name] + [f(m["per_kind"][k]["auroc"]) for k in kinds] for name, m in r["test"].items()]
        parts.append("Slice AUROC per lesion kind (normal test slices vs that kind):\n\n"
                     + table(["detector"] + kinds, rows))
        t = r["tuning"]
        parts.append(f"Scoring chosen on the tune split ({t['criterion']}): `{t['chosen']}` "
                     f"(before: `{t['defaults_before']}`).")
        lr = r.get("lung_region")
        if lr:
            rows = [[name, auroc_pm(m["scan"]["auroc"], m["scan"]["n_abnormal"], m["scan"]["n_normal"]),
                     f(m["held_out_kinds"]["auroc"]), f(m["scan"]["sensitivity"], 2),
                     f(m["scan"]["observed_fpr"], 3), f(m["pixel"].get("pixel_auroc")), f(m["pixel"].get("dice")),
                     f(m["false_lesions_per_normal_slice"], 2)] for name, m in lr["rows"].items()]
            parts.append(f"Where residuals count (DAE, residual sign `{lr['sign']}`; U-Net lung Dice on the "
                         f"test slices {f(lr['unet_test_dice'])}):\n\n"
                         + table(["region", "AUROC ± 95% CI", "AUROC held-out kinds", "sensitivity", "observed FPR",
                                  "pixel AUROC", "Dice", "false lesions / normal slice"], rows))
    ph = q.get("phantoms")
    if ph:
        n_ab, n_no = ph["n_test_abnormal"], ph["n_test_normal"]
        rows = [[c["n_scans"], c["n_train_slices"],
                 auroc_pm(c["scan"]["auroc"], n_ab, n_no), f(c["scan"]["sensitivity"], 2),
                 f(c["scan"]["observed_fpr"], 3), f(c["slice"]["auroc"]), f(c["pixel"]["pixel_auroc"]),
                 f(c["pixel"]["dice"])] for c in ph["learning_curve"]]
        parts.append(f"Phantoms (chest, {ph['n_test_normal']} normal + {ph['n_test_abnormal']} abnormal test scans, "
                     f"{ph['model_size_px']} px, {ph['epochs']} epochs), learning curve:\n\n"
                     + table(["normal scans", "train slices", "scan AUROC ± 95% CI", "sensitivity", "observed FPR",
                              "slice AUROC", "pixel AUROC", "Dice"], rows))
        parts.append("Scan aggregation of slice scores (largest training set), scan AUROC: "
                     + ", ".join(f"{k} {f(v)}" for k, v in ph["scan_aggregation_auroc"].items()) + ".")
    return "\n\n".join(parts)


def fit(d: dict) -> str:
    s = d.get("summary", {})
    n = s.get("N_scans")
    rows = [
        ["training throughput, 128 px (slices/s)", f(s.get("train_slices_per_s_128px"), 2)],
        ["training throughput, 256 px (slices/s)", f(s.get("train_slices_per_s_256px"), 2)],
        ["time spent producing batches (128 / 256 px)", f"{f(s.get('batch_production_fraction_128px'), 3)} / "
                                                        f"{f(s.get('batch_production_fraction_256px'), 3)}"],
        [f"peak RSS of `aeanomaly fit`, {n} vs {10 * n if n else '10N'} scans (MiB)",
         f"{f(s.get('peak_rss_mib_N'), 0)} vs {f(s.get('peak_rss_mib_10N'), 0)} "
         f"(×{f(s.get('peak_rss_ratio_10N_over_N'), 3)}; within 1.2×: {f(s.get('within_1.2x'))})"],
        ["validation-MAE plateau (64 px, 24 scans)", f"best epoch {s.get('plateau_best_epoch')} of "
         f"{s.get('plateau_epochs_run')}; within 2 % of the best from epoch {s.get('plateau_first_epoch_within_2pct')}"],
    ]
    return table(["training", "measured"], rows)


def speed(d: dict) -> str:
    rows = []
    sc = d.get("config", {}).get("scan_shape_zyx")
    for k, v in d.get("bare_predict", {}).items():
        rows.append([f"bare `model.predict`, {k} (slices/s)", f(v["slices_per_s"], 2)])
    p = d.get("pipeline")
    if p:
        rows.append([f"`score` pipeline on a {'×'.join(map(str, sc[::-1]))} NIfTI at 256 px, per scan (s)", f(p["total_s"], 1)])
        rows.append(["pipeline slices/s ÷ bare predict slices/s", f(p["ratio_to_bare_predict_256"], 2)])
        rows += [[f"  stage: {k} (s)", f(v, 2)] for k, v in p["stages_s"].items()]
    ps = d.get("pipeline_serial_cpu_stages")
    if ps and p:
        rows.append([f"before: same pipeline with serial CPU stages (`AEANOMALY_THREADS=1`) (s); speed-up of "
                     f"{p.get('cpu_stage_threads')} threads", f"{f(ps['total_s'], 1)}; ×{f(p.get('speedup_vs_serial_cpu_stages'), 2)}"])
    bf = d.get("pipeline_bfloat16")
    if bf:
        rows.append(["same pipeline, `precision=\"bfloat16\"` (s); speed-up; reconstruction max / mean abs. difference",
                     f"{f(bf['total_s'], 1)}; ×{f(bf.get('speedup_vs_float32_pipeline'), 2)}; "
                     f"{f(bf.get('reconstruction_max_abs_diff'), 4)} / {f(bf.get('reconstruction_mean_abs_diff'), 4)}"])
    c = d.get("cli_score")
    if c:
        rows.append(["`aeanomaly score` CLI, whole run incl. start-up (s) / peak RSS (MiB)",
                     f"{f(c['wall_s'], 1)} / {f(c['peak_rss_mib'], 0)}"])
    t = d.get("pytorch_peer")
    if t and not t.get("skipped"):
        rows.append([f"PyTorch peer ({t.get('torch')}), same weights (slices/s); `score`'s inference ÷ PyTorch; "
                     "`model.predict` ÷ PyTorch",
                     f"{f(t.get('best_slices_per_s'), 2)}; {f(t.get('package_infer_over_torch'), 2)}; "
                     f"{f(t.get('keras_over_torch'), 2)}"])
    sg = d.get("numpy_sgemm")
    if sg:
        rows.append(["numpy sgemm (GFLOP/s)", f(sg["gflops_median"], 1)])
        b = d.get("bare_predict", {}).get("256px")
        if b:
            rows.append(["bare predict 256 px achieved (GFLOP/s)", f(b["achieved_gflops"], 1)])
    for v in d.get("variants_256px", []):
        if "slices_per_s" in v:
            extra = f"; max abs. difference {f(v['max_abs_diff'], 4)}" if "max_abs_diff" in v else ""
            rows.append([f"variant: {v['variant']} (slices/s)", f"{f(v['slices_per_s'], 2)} "
                         f"(×{f(v.get('speedup_vs_bare_predict'), 2)} bare{extra})"])
    o = d.get("overlap_io")
    if o:
        rows.append([f"loading the next scan during scoring ({o['n_scans']} scans): speed-up", f"×{f(o['speedup'], 2)}"])
    rss = d.get("peak_rss_mib")
    if rss:
        rows.append(["peak RSS, benchmark process (MiB)", f(rss.get("this_process"), 0)])
    for k, v in d.get("targets", {}).items():
        val = v.get("value", v.get("value_s"))
        rows.append([f"target {k}", "skipped" if "skipped" in v else f"{f(val, 3)} (met: {f(v.get('met'))})"])
    return table(["scoring speed", "measured"], rows)


def lesion_size(d: dict) -> str:
    rows = []
    dflt = d.get("package_scoring_defaults", {})
    for b in d.get("bins", []):
        sc, px, ld = b["scan"], b["pixel"], b["lesions_detected"]
        kinds = ", ".join(f"{k} {f(v['auroc'], 2)}" for k, v in b.get("scan_auroc_by_kind", {}).items())
        by = b.get("scan_auroc_by_scoring", {})
        rows.append([f"{b['diameter_mm'][0]}–{b['diameter_mm'][1]}", f"{f(sc['auroc'], 2)} ± {f(sc.get('auroc_ci95'), 2)}",
                     f(sc.get("sensitivity"), 2), f(sc.get("observed_fpr"), 2), f(px.get("pixel_auroc"), 2),
                     f(px.get("dice"), 3), f"{ld.get('detected')}/{ld.get('n')}", kinds,
                     " / ".join(f(by.get(k), 2) for k in ("mae/max", "topk/top3"))])
    t = d.get("train", {})
    head = (f"Trained as `make demo` does ({t.get('n_scans')} normal phantoms, `{' '.join(t.get('fit_args', []))}`), "
            f"{d['bins'][0]['n_normal']} normal and {d['bins'][0]['n_abnormal']} one-lesion test phantoms per size; "
            f"package scoring `{dflt.get('slice_score')}` / `{dflt.get('scan_aggregation')}`:\n\n") if d.get("bins") else ""
    return head + table(["lesion diameter (mm)", "scan AUROC ± 95 %", "sensitivity", "observed FPR", "pixel AUROC",
                         "Dice", "lesions found", "scan AUROC by kind", "scan AUROC with MAE/max / top-k/top3"], rows)


def main() -> int:
    for name, fn in (("quality", quality), ("lesion_size", lesion_size), ("fit", fit), ("speed", speed)):
        p = RESULTS / f"{name}.json"
        if p.is_file():
            print(f"<!-- {name}: from {p.relative_to(RESULTS.parent.parent)} -->\n")
            print(fn(json.loads(p.read_text())))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
