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


def _targets(targets: dict) -> list[list]:
    rows = []
    for k, v in targets.items():
        val = v.get("value", v.get("value_s"))
        met = "" if "met" not in v else f" (met: {f(v.get('met'))})"
        rows.append([f"target {k}", "skipped" if "skipped" in v else f"{f(val, 3)}{met}"])
    return rows


def fit(d: dict) -> str:
    """Training throughput through ``train_autoencoder`` against the bare network's training step."""
    c = d.get("config", {})
    rows = []
    for name, r in d.get("runs", {}).items():
        b, ft = r.get("bare_network", {}), r.get("fit", {})
        rows.append([name, f(b.get("train_slices_per_s"), 1), f(b.get("train_fraction_of_sgemm"), 2),
                     f(ft.get("train_slices_per_s"), 1), f(ft.get("ratio_to_bare_train_step"), 2),
                     f(ft.get("checkpoint_fraction_of_1000_slice_epoch"), 4)])
    head = (f"`benchmarks/fit.py` ({c.get('slices')} slices, {c.get('epochs')} epochs, batch {c.get('batch_size')}; "
            f"numpy sgemm {f(d.get('numpy_sgemm', {}).get('gflops_median'), 1)} GFLOP/s in the same run):\n\n")
    out = (head + table(["model", "bare training step (slices/s)", "of sgemm", "`fit` training (slices/s)",
                         "÷ bare step", "checkpoint / 1000-slice epoch"], rows)) if rows else ""
    m = d.get("fit_memory")
    if m:
        runs = sorted((v for v in m.values() if isinstance(v, dict) and "scans" in v), key=lambda v: v["scans"])
        counts = ", ".join(str(v["scans"]) for v in runs[:-1]) + f" and {runs[-1]['scans']}"
        out += (("\n\n" if out else "") + f"`aeanomaly fit --epochs 1 --quiet` on {counts} normal chest phantoms of "
                f"{m.get('slices_per_scan')} slices of {m.get('slice_px')} × {m.get('slice_px')} px (a child process "
                "each; its own peak RSS):\n\n"
                + table(["normal scans", "slices", "wall (s)", "peak RSS (MiB)"],
                        [[v["scans"], v["scans"] * m.get("slices_per_scan", 0), f(v.get("wall_s"), 1),
                          f(v.get("peak_rss_mib"), 0)] for v in runs]))
    tr = [r for name, targets in d.get("targets", {}).items() for r in _targets({f"{name}: {k}": v for k, v in targets.items()})]
    return out + "\n\n" + table(["training target", "measured"], tr) if tr else out


def speed(d: dict) -> str:
    """Network inference/training against sgemm, and the scoring pipeline by stage."""
    c = d.get("config", {})
    sc = c.get("scan_shape_zyx") or c.get("scan", {}).get("shape_zyx")
    rows = []
    bf16 = d.get("bf16_gemm")  # runs with a bfloat16 row: TensorFlow's bfloat16 GEMM, its reference
    for name, n in d.get("networks", {}).items():
        rows.append([name, f(n.get("gflop_per_slice"), 2), f(n.get("infer_slices_per_s"), 1),
                     f(n.get("infer_fraction_of_sgemm"), 2), *([f(n.get("bf16_gemm_fraction"), 2)] if bf16 else []),
                     f(n.get("train_slices_per_s"), 1), f(n.get("train_fraction_of_sgemm"), 2)])
    ref = f"numpy sgemm {f(d.get('numpy_sgemm', {}).get('gflops_median'), 1)} GFLOP/s"
    if bf16:
        ref += f", TensorFlow bfloat16 GEMM {f(bf16.get('gflops_median'), 1)} GFLOP/s"
    out = [f"Network alone ({ref} in the same run):", "",
           table(["network", "GFLOP/slice", "inference (slices/s)", "of sgemm", *(["of bf16 GEMM"] if bf16 else []),
                  "training (slices/s)", "of sgemm"], rows)]
    prow = []
    for name, p in d.get("pipelines", {}).items():
        st = p.get("stages_s", {})
        prow.append([name, f(p.get("total_s"), 2), *[f(v, 2) for v in st.values()], f(p.get("ratio_to_bare_infer"), 2),
                     f(p.get("heatmap_write_fraction"), 3), f(p.get("compute_floor_s"), 2),
                     f(p.get("extrapolated_300_slices_s"), 1)])
    if prow:
        stages = list(next(iter(d["pipelines"].values())).get("stages_s", {}))
        grids = (f"{c['model_size_px']} px" if "model_size_px" in c  # runs before the grid was in each row's name
                 else "the grid in each row's name (" + ", ".join(f"{g} px" for g in c.get("pipeline_sizes_px", []))
                 + "; the first is `fit`'s default)")
        out += ["", f"`score` pipeline on a {'×'.join(map(str, sc[::-1])) if sc else '?'} NIfTI at "
                    f"{grids}, seconds per scan by stage"
                    + (" (the compute floor at the run's sgemm rate, for bfloat16 at its bfloat16 GEMM rate)" if bf16
                       else "") + ":", "",
                table(["network", "total", *stages, "÷ bare inference", "heatmap write share", "compute floor (s)",
                       "300 slices, extrapolated (s)"], prow)]
    cli = [[name, f(p["cli_score"].get("wall_s"), 1), f(p["cli_score"].get("peak_rss_mib"), 0)]
           for name, p in d.get("pipelines", {}).items() if p.get("cli_score")]
    if cli:
        out += ["", "`aeanomaly score BUNDLE SCAN --quiet` as a user runs it (a child process; TensorFlow's start "
                    "included):", "", table(["network", "wall (s)", "peak RSS (MiB)"], cli)]
    batch = [[name, f(b.get("serial_s_per_scan"), 2), f(b.get("prefetch_s_per_scan"), 2), f(b.get("prefetch_speedup"), 2),
              f(b.get("serial_ratio_to_bare_infer"), 2), f(b.get("prefetch_ratio_to_bare_infer"), 2),
              f((b.get("cli_score") or {}).get("peak_rss_mib"), 0)]
             for name, p in d.get("pipelines", {}).items() for b in [p.get("batch")] if b]
    if batch:
        n = next(b for name, p in d["pipelines"].items() for b in [p.get("batch")] if b)["scans"]
        out += ["", f"A batch of {n} such scans through `AnomalyDetector.iter_scores` (what `aeanomaly score` runs; "
                    "each heatmap written before the next result is taken), seconds per scan without and with the "
                    "next scan read and prepared in a thread meanwhile (best of two each), and the peak RSS of "
                    f"`aeanomaly score` of the {n} scans (prefetch on, its default):", "",
                table(["network", "one at a time (s/scan)", "prefetch (s/scan)", "speed-up", "÷ bare inference",
                       "÷ bare inference, prefetch", "batch peak RSS (MiB)"], batch)]
    peers = d.get("pytorch_peer_by_size") or ({"": d["pytorch_peer"]} if d.get("pytorch_peer") else {})
    prow = [[grid or "–", f(tp.get("best_slices_per_s"), 1), f(tp.get("package_infer_slices_per_s"), 1),
             f(tp.get("package_infer_over_torch"), 2), f(tp.get("pipeline_over_torch_infer"), 2),
             f"{f(tp.get('fastest_pipeline_over_torch_infer'), 2)} ({tp.get('fastest_pipeline', '–')})"]
            for grid, tp in peers.items() if not tp.get("skipped")]
    if prow:
        tp0 = next(iter(peers.values()))
        out += ["", f"PyTorch peer on the same weights (torch {tp0.get('torch', '?')}, {tp0.get('threads', '?')} threads, "
                    "the faster of NCHW and channels-last; its outputs compared with the Keras model's), on the "
                    "scan's first 64 slices:", "",
                table(["grid", "peer inference (slices/s)", "package inference, float32 (slices/s)", "package ÷ peer",
                       "float32 pipeline ÷ peer inference", "fastest pipeline ÷ peer inference"], prow)]
    tr = _targets(d.get("targets", {}))
    rss = d.get("peak_rss_mib", {}).get("this_process")
    if rss:
        tr.append(["peak RSS, benchmark process (MiB)", f(rss, 0)])
    if tr:
        out += ["", table(["speed target", "measured"], tr)]
    return "\n".join(out)


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


def real_ct(d: dict) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import real_ct_tables

    return real_ct_tables.real_ct(d)


def real_ct_noise(d: dict) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import real_ct_noise as noise_bench

    return noise_bench.table_md(d)


def precision(d: dict) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import precision as precision_bench

    return precision_bench.table(d)


def scale(d: dict) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scale as scale_bench

    return scale_bench.table(d) if hasattr(scale_bench, "table") else json.dumps(d.get("summary", {}), indent=1)


def heatmap_write(d: dict) -> str:
    """The NIfTI heatmap write, float32 against int16 counts, per heatmap kind (heatmap_write.json)."""
    cfg = d.get("config", {})
    z, y, x = cfg.get("scan_shape_zyx", ["?", "?", "?"])
    rows = [[name, f"{r['nonzero_fraction']:.0%}", f(r["seconds"]["float32"], 3), f(r["seconds"]["int16"], 3),
             f(r["int16_over_float32_time"], 2), f"{r['bytes']['float32'] / 2**20:.1f}", f"{r['bytes']['int16'] / 2**20:.1f}",
             f(r["int16_over_float32_bytes"], 2), f(r["max_diff_steps"], 3)]
            for name, r in d.get("heatmaps", {}).items()]
    head = (f"Heatmap write of a {x}×{y}×{z} scan from the {cfg.get('size_px')} px grid, median of "
            f"{cfg.get('repeats')} in one process:\n\n")
    return head + table(["heatmap", "nonzero", "float32 (s)", "int16 (s)", "time ×", "float32 (MiB)", "int16 (MiB)",
                         "bytes ×", "read back (steps)"], rows)


def main() -> int:
    for name, fn in (("real_ct", real_ct), ("real_ct_1ch", real_ct), ("real_ct_256", real_ct), ("real_ct_seg", real_ct), ("real_ct_area", real_ct), ("real_ct_tuned", real_ct), ("real_ct_noise128", real_ct), ("real_ct_defaults", real_ct), ("real_ct_256_defaults", real_ct), ("real_ct_256_3ch", real_ct), ("real_ct_fpr_check", real_ct), ("real_ct_noise", real_ct_noise),
                     ("quality", quality), ("lesion_size", lesion_size), ("fit", fit), ("fit_memory_scale", fit), ("speed", speed), ("heatmap_write", heatmap_write), ("precision", precision), ("scale", scale)):
        p = RESULTS / f"{name}.json"
        if p.is_file():
            print(f"<!-- {name}: from {p.relative_to(RESULTS.parent.parent)} -->\n")
            print(fn(json.loads(p.read_text())))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
