"""Markdown tables of ``benchmarks/results/real_ct.json`` (for README "Benchmarks"; the lead's
``benchmarks/tables.py`` can call :func:`real_ct`).

    python benchmarks/real_ct_tables.py [results/real_ct.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _f(v, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _pm(v, pm) -> str:
    return "–" if v is None else (f"{v:.3f} ± {pm:.2f}" if pm is not None else f"{v:.3f}")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def real_ct(d: dict) -> str:
    """Test A (real LIDC nodules, two folds), held-back normals and Test B (injected kinds) per variant
    and method, then Test B per kind and size for each variant's self-supervised map and the best
    baseline."""
    g = d.get("goals", {})
    head = ["grid", "ch", "norm", "method", "nodule slice AUROC (±95 %)", "raw slice AUROC", "pixel AUPRC", "pixel AUROC", "nodules hit",
            "false lesions / LIDC scan", "false lesions / normal scan", "observed FPR", "B held-out AUROC",
            "B held-out ≥ 8 mm (±95 %)", "s / scan"]
    rows = []
    for r in d.get("summary", []):
        rows.append([r["size"], r["channels"], r.get("norm", "group"), r["method"], _pm(r["slice_auroc"], r.get("slice_auroc_pm95")),
                     _f(r.get("slice_auroc_raw")), _f(r["pixel_auprc"]), _f(r["pixel_auroc"]), f"{r['nodules_hit']}/{r['nodules']}",
                     _f(r["false_lesions"], 1), _f(r["false_per_normal"], 2), _f(r["fpr"], 2), _f(r["b_held"]),
                     _pm(r["b_held8"], r.get("b_held8_pm95")), _f(r["time_s"], 2)])
    run = ("quick" if d.get("quick") else "full") + " run"
    if d.get("complete") is False:  # written after each variant; the run stopped before its last one
        run += f", interrupted after {len(d.get('variants', []))} variant(s)"
    out = [f"Real CT ({run}; goals: slice AUROC ≥ {g.get('slice_auroc')}, "
           f"pixel AUPRC ≥ {g.get('pixel_auprc')}, ≤ {g.get('false_lesions_per_normal_scan')} false lesion per normal "
           f"scan, held-out kinds ≥ 8 mm AUROC ≥ {g.get('held_out_kinds_ge8mm_slice_auroc')}). Test A and times are "
           "means over the LIDC folds; nodules summed.", "", _table(head, rows)]
    for v in d.get("variants", []):
        tb = v["test_b"]["test"]["methods"]
        names = [n for n in (v.get("chosen_seg"), "dae", "hessian") if n in tb]
        kinds = sorted({k for n in names for k in tb[n]["per_kind"]})
        sizes = list(next(iter(tb.values()))["per_size"]) if tb else []
        hdr = ["method"] + [f"{k} AUROC" for k in kinds] + [f"{s} AUROC" for s in sizes]
        rws = [[n] + [_f(tb[n]["per_kind"][k]["auroc"]) for k in kinds]
               + [_f(tb[n]["per_size"][s]["auroc"]) for s in sizes] for n in names]
        out += ["", f"Test B, fold {v['fold']}, {v['size']} px, {v['channels']} channel(s), "
                f"norm {v.get('norm', 'group')} "
                f"(self-supervised map chosen on the tune patients: {v.get('chosen_seg')}):", "", _table(hdr, rws)]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else RESULTS / "real_ct.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        print(f"{path}: cannot read the results ({err})", file=sys.stderr)
        return 2
    print(real_ct(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
