"""Markdown tables of ``benchmarks/results/real_ct.json`` (for README "Benchmarks"; the lead's
``benchmarks/tables.py`` can call :func:`real_ct`).

    python benchmarks/real_ct_tables.py [results/real_ct.json]
    python benchmarks/real_ct_tables.py --spread 128 1 seed0=results/real_ct_defaults.json seed1=results/real_ct_seed1.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import real_ct_maps as RM
import real_ct_volume as RV

RESULTS = Path(__file__).resolve().parent / "results"


def _f(v, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _pm(v, pm) -> str:
    return "–" if v is None else (f"{v:.3f} ± {pm:.2f}" if pm is not None else f"{v:.3f}")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


#: The methods made from the autoencoder (their rows depend on its training; the baselines' do not).
DAE_FAMILY = ("dae", "dae+seg", *RM.FUSED)
#: (header, summary key, format) of the main table; a column shows only when some row has a value.
COLUMNS = [
    ("noise (std @ grid)", "noise", None),
    ("inference", "precision", None),
    ("settings (σ mm / slice score, per fold)", "settings", None),
    ("tune merit (tuning kinds: slice AUROC + pixel AUPRC)", "tune_merit", 3),
    ("nodule slice AUROC (±95 %)", "slice_auroc", "pm:slice_auroc_pm95"),
    ("like-size slice AUROC", "slice_auroc_matched", 3),
    ("raw slice AUROC", "slice_auroc_raw", 3),
    ("pixel AUPRC", "pixel_auprc", 3),
    ("pixel AUROC", "pixel_auroc", 3),
    ("nodules hit", "nodules_hit", "of:nodules"),
    ("false lesions / LIDC scan", "false_lesions", 1),
    ("false lesions / normal scan", "false_per_normal", 2),
    ("observed FPR", "fpr", 2),
    ("FPR check p: excess / shift (per fold)", "fpr_check", None),
    ("B-volume held-out AUROC", "bv_held", 3),
    ("B-volume held-out ≥ 8 mm (±95 %)", "bv_held8", "pm:bv_held8_pm95"),
    ("B-volume pixel AUPRC", "bv_pixel_auprc", 3),
    ("B-volume lesions hit", "bv_lesions_hit", "of:bv_lesions"),
    ("B held-out AUROC", "b_held", 3),
    ("B held-out ≥ 8 mm (±95 %)", "b_held8", "pm:b_held8_pm95"),
    ("s / scan", "time_s", 2),
]


def _settings(r) -> str | None:
    """Per fold ``σ / score`` (mm), with ``, z σ_z`` (across slices, mm), ``, b p`` (blob gate), ``, v q``
    (blob gate across slices) when set and ``, e E`` (erosion, mm) when not fit's 6 mm (``RV.UNTAGGED``);
    ``– / score`` for a map the detector does not make."""
    sig, sc = r.get("sigma_mm"), r.get("slice_score")
    if not sig and not sc:
        return None
    zs = r.get("sigma_z_mm") or [None] * len(sig or [])
    bs = r.get("blob_gate") or [None] * len(sig or [])
    vs = r.get("blob_gate_3d") or [None] * len(sig or [])
    es = r.get("erode_mm") or [None] * len(sig or [])

    def smooth(a, z, b, v, e):
        return "–" if a is None else f"{a:g}" + (f", z {z:g}" if z else "") + (f", b {b:g}" if b else "") + (
            f", v {v:g}" if v else "") + (f", e {e:g}" if e is not None and e != RV.UNTAGGED["erode_mm"] else "")
    return ", ".join(f"{smooth(a, z, b, v, e)} / {c}" for a, z, b, v, e, c in zip(sig or [], zs, bs, vs, es, sc or []))


def _fpr_check(r) -> str | None:
    """Per fold, the p-values of Calibrator.fpr_check on the held-back normals: more flagged than the
    calibration normals allow / scores shifted higher (small = not exchangeable with them)."""
    ex, sh = r.get("fpr_p_excess") or [], r.get("fpr_p_shift") or []
    if not any(v is not None for v in ex + sh):
        return None
    return ", ".join(f"{_f(a, 2)} / {_f(b, 2)}" for a, b in zip(ex, sh))


def _cell(r, key, fmt):
    if key == "settings":
        return _settings(r)
    if key == "fpr_check":
        return _fpr_check(r)
    if key in ("noise", "precision"):
        return r.get(key)
    v = r.get(key)
    if v is None or (key.endswith("_hit") and not r.get(fmt[3:] if isinstance(fmt, str) else "")):
        return None
    if isinstance(fmt, str) and fmt.startswith("pm:"):
        return _pm(v, r.get(fmt[3:]))
    if isinstance(fmt, str) and fmt.startswith("of:"):
        return f"{v}/{r.get(fmt[3:])}"
    return _f(v, fmt)


def real_ct(d: dict) -> str:
    """Test A (real LIDC nodules, two folds), held-back normals and Test B (injected kinds, in the volume
    and in single slices) per variant and method, then Test B per kind and size for each variant."""
    g = d.get("goals", {})
    # the baselines do not depend on the autoencoder's noise: one row each, with no noise
    summ, seen = [], set()
    for r in d.get("summary", []):
        if r["method"] not in DAE_FAMILY:
            key = (r["size"], r["channels"], r.get("norm"), r["method"])
            if key in seen:
                continue
            seen.add(key)
            r = {**r, "noise": None, "precision": None}
        summ.append(r)
    cols = [(h, k, f) for h, k, f in COLUMNS if any(_cell(r, k, f) is not None for r in summ)]
    head = ["grid", "ch", "norm", "method"] + [h for h, _, _ in cols]
    rows = [[r["size"], r["channels"], r.get("norm", "group"), r["method"]]
            + [_cell(r, k, f) or "–" for _, k, f in cols] for r in summ]
    run = ("quick" if d.get("quick") else "full") + " run"
    if d.get("complete") is False:  # written after each variant; the run stopped before its last one
        run += f", interrupted after {len(d.get('variants', []))} variant(s)"
    out = [f"Real CT ({run}; goals: slice AUROC ≥ {g.get('slice_auroc')}, "
           f"pixel AUPRC ≥ {g.get('pixel_auprc')}, ≤ {g.get('false_lesions_per_normal_scan')} false lesion per normal "
           f"scan, held-out kinds ≥ 8 mm AUROC ≥ {g.get('held_out_kinds_ge8mm_slice_auroc')}). Test A and times are "
           "means over the LIDC folds; nodules summed.", "", _table(head, rows)]
    areas = list({v["fold"]: v["region_area"]["slice"]["auroc"] for v in d.get("variants", []) if v.get("region_area")}.items())
    if areas:
        out += ["", "The scoring region's size alone, as a slice score, ranks the nodule slices at "
                + ", ".join(f"{_f(a)} ({fold})" for fold, a in areas) + "."]
    for v in d.get("variants", []):
        for key, where in (("test_b_volume", "in the volume"), ("test_b", "in single slices")):
            tb = v.get(key)
            if tb is None:
                continue
            tb = tb["test"]["methods"] if key == "test_b" else tb
            if key == "test_b" and "test_b_volume" in v:
                continue  # the single-slice Test B per kind stays in the JSON
            names = [n for n in (v.get("chosen_seg"), "dae", "pca", "intensity", "hessian") if n in tb]
            kinds = sorted({k for n in names for k in tb[n]["per_kind"]})
            sizes = list(next(iter(tb.values()))["per_size"]) if tb else []
            hdr = ["method"] + [f"{k} AUROC" for k in kinds] + [f"{s} AUROC" for s in sizes]
            rws = [[n] + [_f(tb[n]["per_kind"][k]["auroc"]) for k in kinds]
                   + [_f(tb[n]["per_size"][s]["auroc"]) for s in sizes] for n in names]
            src = (v.get("tune") or {}).get("source")
            out += ["", f"Test B {where}, fold {v['fold']}, {v['size']} px, {v['channels']} channel(s), "
                    f"norm {v.get('norm', 'group')}" + (f", noise {v['noise']}" if v.get("noise") else "")
                    + (f", inference {v['precision']}" if v.get("precision", "float32") != "float32" else "")
                    + (f", settings tuned on {src}" if src else "")
                    + (f" (self-supervised map chosen on the tune split: {v['chosen_seg']})" if v.get("chosen_seg") else "")
                    + ":", "", _table(hdr, rws)]
    return "\n".join(out) + "\n"


#: (header, summary key, digits) of the spread table over runs of different seeds.
SPREAD_COLUMNS = [
    ("tune merit", "tune_merit", 3),
    ("nodule slice AUROC", "slice_auroc", 3),
    ("like-size slice AUROC", "slice_auroc_matched", 3),
    ("pixel AUPRC", "pixel_auprc", 3),
    ("false lesions / normal scan", "false_per_normal", 2),
    ("observed FPR", "fpr", 2),
    ("B-volume held-out AUROC", "bv_held", 3),
    ("B-volume held-out ≥ 8 mm", "bv_held8", 3),
    ("B-volume pixel AUPRC", "bv_pixel_auprc", 3),
]


def seed_spread(runs: dict[str, dict], size: int, channels: int) -> str:
    """Per method, the mean and the per-run values of the main figures over ``runs`` (label → a
    real_ct JSON; runs of different seeds draw other normal splits, lesions and training), for the rows
    of one grid and channel count in the fit's own precision (a run's first row of each method; rows
    recalibrated in another precision follow it), plus the nodules hit summed."""
    by_method: dict[str, list] = {}
    for label, d in runs.items():
        seen = set()
        for r in d.get("summary", []):
            if r.get("size") == size and r.get("channels") == channels and r["method"] not in seen:
                seen.add(r["method"])
                by_method.setdefault(r["method"], []).append(r)
    rows = []
    for method, rs in by_method.items():
        cells = [method, str(len(rs))]
        for _, key, nd in SPREAD_COLUMNS:
            vals = [r.get(key) for r in rs]
            if any(v is None for v in vals):
                cells.append("–")
                continue
            cells.append(f"{sum(vals) / len(vals):.{nd}f} ({' / '.join(f'{v:.{nd}f}' for v in vals)})")
        hit, n = sum(r.get("nodules_hit") or 0 for r in rs), sum(r.get("nodules") or 0 for r in rs)
        cells.append(f"{hit}/{n}")
        rows.append(cells)
    head = (f"{size} px, {channels} channel(s); runs " + ", ".join(f"{k}" for k in runs)
            + ": mean (each run's value, in that order)")
    return head + ":\n\n" + _table(["method", "runs", *(h for h, _, _ in SPREAD_COLUMNS), "nodules hit"], rows) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--spread":  # --spread SIZE CHANNELS LABEL=PATH ...
        try:
            size, channels = int(argv[1]), int(argv[2])
            runs = {a.split("=", 1)[0]: json.loads(Path(a.split("=", 1)[1]).read_text(encoding="utf-8")) for a in argv[3:]}
        except (IndexError, ValueError, OSError) as err:
            print(f"usage: real_ct_tables.py --spread SIZE CHANNELS LABEL=PATH ... ({err})", file=sys.stderr)
            return 2
        print(seed_spread(runs, size, channels))
        return 0
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
