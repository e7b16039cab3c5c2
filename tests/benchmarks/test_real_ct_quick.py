"""The real-CT benchmark's --quick mode runs end to end on the shared real data (skipped without it)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_ct_data as RD  # noqa: E402
import real_ct_lesions as RL  # noqa: E402
import real_ct_maps as RM  # noqa: E402
import real_ct_volume as RV  # noqa: E402

MISSING = RD.available()


def test_nodule_free_slabs_keep_the_margin():
    readers = np.zeros((40, 4, 4), np.uint8)
    readers[20, 1, 1] = 1
    slabs = RD.nodule_free_slabs(readers, slice_mm=2.5, margin_mm=10.0, min_slices=3)
    assert slabs == [(0, 17), (24, 40)]
    assert RD.nodule_free_slabs(np.zeros((2, 4, 4), np.uint8), 2.5) == []


def test_hessian_keeps_blobs_and_drops_tubes():
    img = np.zeros((1, 64, 64), np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    img[0] += np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 8.0)
    img[0, 44, :] += 1.0
    img[0] = np.float32(img[0])
    h = RM.hessian_blobness(img, 1.0)
    log = RM.log_blobness(img, 1.0)
    assert h[0, 20, 20] > 5 * h[0, 44, 10]  # the blob beats the line
    assert log[0, 20, 20] > 0 and log[0, 44, 10] > 0


@pytest.mark.parametrize("kind", RL.KINDS)
def test_injected_lesions_stay_in_the_lung_and_change_hu(kind):
    rng = np.random.default_rng(0)
    hu = np.full((96, 96), 40.0, np.float32)
    lung = np.zeros((96, 96), bool)
    lung[16:80, 16:80] = True
    hu[lung] = -850 + 20 * rng.standard_normal(int(lung.sum()))
    new, mask = RL.inject(hu, lung, (0.7, 0.7), kind, 12.0, rng)
    assert mask.any() and not (mask & ~lung).any()
    assert np.abs(new - hu)[mask].mean() > 50
    np.testing.assert_array_equal(new[~lung], hu[~lung])


def _lung_volume(n=24, size=96, seed=0):
    rng = np.random.default_rng(seed)
    hu = np.full((n, size, size), 40.0, np.float32)
    lung = np.zeros((size, size), bool)
    lung[16:80, 16:80] = True
    hu[:, lung] = -850 + 20 * rng.standard_normal((n, int(lung.sum())))
    return hu, lung


def test_volume_lesion_spans_the_slices_a_sphere_reaches():
    hu, lung = _lung_volume()
    before = hu.copy()
    truth = np.zeros(hu.shape, bool)
    RL.inject_in_volume(hu, truth, 12, (2.5, 0.7, 0.7), "solid", 12.0, np.random.default_rng(1))
    marked = np.flatnonzero(truth.reshape(len(truth), -1).any(axis=1))
    # 12 mm across, 2.5 mm slices: the centre slice and two on each side (offsets 2.5, 5 mm < 6 mm)
    assert marked.tolist() == [10, 11, 12, 13, 14]
    areas = truth.reshape(len(truth), -1).sum(axis=1)
    assert areas[12] > areas[11] > areas[10] > 0 and abs(int(areas[11]) - int(areas[13])) <= 0.1 * areas[11]
    changed = np.abs(hu - before) > 1
    assert not changed[:10].any() and not changed[15:].any() and not (changed[:, ~lung]).any()


def test_matched_auroc_cannot_be_won_by_region_size():
    area = np.r_[np.full(10, 1000.0), np.full(10, 3000.0)]
    y = np.r_[np.zeros(15), np.ones(5)]  # positives all among the big slices
    full = RM.auroc_pm(y, area)["auroc"]
    matched = RM.matched_auroc(y, area, area)
    assert full > 0.8 and matched["auroc"] == 0.5 and matched["n_pairs"] == 25


def test_choose_takes_the_best_setting_and_the_fused_map_follows_the_dae():
    t = {"dae": {"1.5/p99": {"slice_auroc": 0.7, "pixel_auprc": 0.1}, "3.0/p99": {"slice_auroc": 0.8, "pixel_auprc": 0.1}},
         "dae+seg(fused)": {"1.5/topk": {"slice_auroc": 0.9, "pixel_auprc": 0.1},
                            "3.0/p999": {"slice_auroc": 0.6, "pixel_auprc": 0.1}},
         "hessian": {"-/topk": {"slice_auroc": 0.7, "pixel_auprc": 0.0}, "-/p99": {"slice_auroc": None, "pixel_auprc": 0.2}}}
    c = RV.choose(t)
    assert c["dae"] == {"sigma_mm": 3.0, "sigma_z_mm": 0.0, "blob_gate": 0.0, "blob_gate_3d": 0.0, "erode_mm": 6.0,
                        "slice_score": "p99", "merit": 0.9}
    assert c["dae+seg(fused)"]["sigma_mm"] == 3.0 and c["dae+seg(fused)"]["slice_score"] == "p999"
    assert c["hessian"]["sigma_mm"] is None and c["hessian"]["slice_score"] == "topk"
    # smoothing across slices is one more setting; the fused map follows the dae's σ and σ_z together
    t["dae"]["3.0+z2.5/topk"] = {"slice_auroc": 0.85, "pixel_auprc": 0.1}
    t["dae+seg(fused)"]["3.0+z2.5/p99"] = {"slice_auroc": 0.5, "pixel_auprc": 0.1}
    c = RV.choose(t)
    assert c["dae"] == {"sigma_mm": 3.0, "sigma_z_mm": 2.5, "blob_gate": 0.0, "blob_gate_3d": 0.0, "erode_mm": 6.0,
                        "slice_score": "topk", "merit": 0.95}
    assert c["dae+seg(fused)"] == {"sigma_mm": 3.0, "sigma_z_mm": 2.5, "blob_gate": 0.0, "blob_gate_3d": 0.0,
                                   "erode_mm": 6.0, "slice_score": "p99", "merit": 0.6}
    # and the blob gate, alone or with σ_z
    t["dae"]["3.0+b2.0/p99"] = {"slice_auroc": 0.9, "pixel_auprc": 0.3}
    t["dae+seg(fused)"]["3.0+b2.0/topk"] = {"slice_auroc": 0.4, "pixel_auprc": 0.1}
    c = RV.choose(t)
    assert c["dae"] == {"sigma_mm": 3.0, "sigma_z_mm": 0.0, "blob_gate": 2.0, "blob_gate_3d": 0.0, "erode_mm": 6.0,
                        "slice_score": "p99", "merit": 1.2}
    assert c["dae+seg(fused)"]["blob_gate"] == 2.0 and c["dae+seg(fused)"]["slice_score"] == "topk"
    # and the blob gate across slices beside it: the fused map follows all of the dae's smoothing
    t["dae"]["3.0+b2.0+v1.0/p999"] = {"slice_auroc": 0.95, "pixel_auprc": 0.35}
    t["dae+seg(fused)"]["3.0+b2.0+v1.0/p99"] = {"slice_auroc": 0.3, "pixel_auprc": 0.1}
    c = RV.choose(t)
    assert c["dae"] == {"sigma_mm": 3.0, "sigma_z_mm": 0.0, "blob_gate": 2.0, "blob_gate_3d": 1.0, "erode_mm": 6.0,
                        "slice_score": "p999", "merit": 1.3}
    assert c["dae+seg(fused)"]["blob_gate_3d"] == 1.0 and c["dae+seg(fused)"]["slice_score"] == "p99"
    # and the erosion of the scoring region: untagged keys are fit's 6 mm (runs before the option scored so)
    t["dae"]["6.0+b2.0+e3.0/p99"] = {"slice_auroc": 0.97, "pixel_auprc": 0.4}
    t["dae+seg(fused)"]["6.0+b2.0+e3.0/topk"] = {"slice_auroc": 0.3, "pixel_auprc": 0.1}
    t["dae+seg(fused)"]["6.0+b2.0/p99"] = {"slice_auroc": 0.9, "pixel_auprc": 0.1}
    c = RV.choose(t)
    assert c["dae"] == {"sigma_mm": 6.0, "sigma_z_mm": 0.0, "blob_gate": 2.0, "blob_gate_3d": 0.0, "erode_mm": 3.0,
                        "slice_score": "p99", "merit": 1.37}
    assert c["dae+seg(fused)"]["erode_mm"] == 3.0 and c["dae+seg(fused)"]["slice_score"] == "topk"
    assert RV.smoothing_of({"sigma_z_mm": 2.5, "blob_gate": None}) == (2.5, 0.0, 0.0, 6.0)
    for key in ("1.5/p99", "3.0+z2.5/topk", "-/p999", "6.0+b1.0/p999", "3.0+z2.5+b2.0/p99", "6.0+b2.0+v1.0/topk",
                "6.0+v2.0/p99", "6.0+b2.0+e3.0/p99", "3.0+e0.0/topk"):
        s = RV.parse_setting(key)
        assert RV.setting_key(s["sigma_mm"], s["slice_score"], *RV.smoothing_of(s)) == key


def test_with_slice_norm_takes_the_better_normalisation_and_the_default_on_a_tie():
    """Each method gets the slice normalisation of the higher tune slice AUROC; a tie or no table keeps
    the default given; the merit (tune_table's holds the raw slice AUROC) becomes the chosen one's."""
    chosen = {"dae": {"sigma_mm": 6.0, "slice_score": "p99", "merit": 1.2},
              "pca": {"sigma_mm": 3.0, "slice_score": "topk", "merit": 1.0},
              "log": {"sigma_mm": None, "slice_score": "p99", "merit": 0.7},
              "hessian": {"sigma_mm": None, "slice_score": "p99", "merit": 0.8}}
    table = {"dae": {"area": 0.9, "none": 0.8}, "pca": {"area": 0.7, "none": 0.75}, "log": {"area": 0.6, "none": 0.6}}
    c = RV.with_slice_norm(chosen, table)
    assert (c["dae"]["slice_norm"], c["dae"]["merit"]) == ("area", pytest.approx(1.3))
    assert (c["pca"]["slice_norm"], c["pca"]["merit"]) == ("none", pytest.approx(1.0))
    assert (c["log"]["slice_norm"], c["log"]["merit"]) == ("area", pytest.approx(0.7))
    assert (c["hessian"]["slice_norm"], c["hessian"]["merit"]) == ("area", 0.8)  # not in the table
    assert all(v["slice_norm"] == "area" and v["merit"] == chosen[k]["merit"]
               for k, v in RV.with_slice_norm(chosen, None).items())
    c = RV.with_slice_norm(chosen, table, default="none")
    assert c["log"]["slice_norm"] == "none" and c["hessian"]["slice_norm"] == "none"  # the tie and the missing row
    assert c["dae"]["slice_norm"] == "area" and c["pca"]["slice_norm"] == "none"  # the better one either way
    assert c["dae"]["sigma_mm"] == 6.0 and c["pca"]["slice_score"] == "topk"  # the other settings stay


@pytest.mark.slow
@pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
def test_quick_benchmark_runs_and_writes_every_table(tmp_path):
    out = tmp_path / "real_ct_quick.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_ct.py"), "--quick", "--out", str(out),
                           "--precisions", "float32", "bfloat16", "--slice-norms", "area", "none", "--erodes", "6", "3"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["quick"] is True and d["complete"] is True and d["machine"]["cpu_count"] and "load_note" in d
    v, vb = d["variants"]  # the fit's float32, then the same model recalibrated in bfloat16
    fused = set(RM.FUSED)  # one fused map per weight of the probability
    assert "dae+seg(fused)" in fused and len(fused) == len(RM.FUSED_WEIGHTS) >= 3
    methods = {"dae", "dae+seg", *fused, "pca", "intensity", "log", "hessian"}
    assert v["precision"] == "float32" and vb["precision"] == "bfloat16"
    assert set(vb["test_a"]) == set(vb["normals"]) == {"dae", "dae+seg", *fused}  # only the dae's maps change
    assert vb["tune"]["chosen"] == v["tune"]["chosen"] and vb["fit"]["recalibrate_s"] > 0
    assert {(r["method"], r["precision"]) for r in d["summary"]} >= {("dae", "float32"), ("dae", "bfloat16")}
    assert set(v["test_a"]) == methods
    for r in v["test_a"].values():
        assert r["slice"]["n_pos"] > 0 and r["slice"]["n_neg"] > 0 and 0 <= r["slice"]["auroc"] <= 1
        assert r["n_nodules"] >= 1 and 0 <= r["nodules_hit"] <= r["n_nodules"] and r["time_s"] >= 0
    assert set(v["normals"]) == methods
    chk = v["normals"]["dae"]["fpr_check"]  # the product's calibration check on the held-back normals
    assert chk["n_normal"] == v["normals"]["dae"]["n_scans"] > 0 and 0 <= chk["p_excess"] <= 1
    assert chk["observed_fpr"] == pytest.approx(v["normals"]["dae"]["observed_fpr"])
    tb = v["test_b"]["test"]["methods"]["dae"]
    assert set(tb["per_kind"]) <= set(RL.KINDS) and tb["per_kind"]
    assert set(v["test_b"]["tune"]["methods"]["dae"]["per_kind"]) <= set(RL.TUNING_KINDS)
    assert v["chosen_seg"] in {"dae+seg", *fused}
    # in-volume Test B: every method, lesion slices against the same scan's clean slices
    assert set(v["test_b_volume"]) == methods
    bv = v["test_b_volume"]["dae"]
    assert bv["held_out_kinds"]["n_pos"] > 0 and bv["held_out_kinds"]["n_neg"] > 0
    assert 0 <= bv["held_out_kinds"]["auroc"] <= 1 and bv["pixel"]["pixel_auprc"] is not None
    assert 0 <= bv["lesions_hit"] <= bv["n_lesions"] and bv["n_lesions"] >= 1
    # settings chosen on the tuning kinds: a one-fold run can only tune on its own patient, and says so
    assert v["tune"]["source"] == "LIDC-IDRI-0001" and v["tune"]["same_patient"] is True
    assert set(v["tune"]["chosen"]) == methods and v["scoring"]["sigma_mm"] == v["tune"]["chosen"]["dae"]["sigma_mm"]
    assert v["scoring"]["sigma_z_mm"] == v["tune"]["chosen"]["dae"]["sigma_z_mm"]
    assert {RV.parse_setting(k)["sigma_z_mm"] for k in v["tune"]["table"]["dae"]} == set(d["settings"]["sigma_zs"])
    assert {RV.parse_setting(k)["blob_gate"] for k in v["tune"]["table"]["dae"]} == set(d["settings"]["blob_gates"])
    assert v["scoring"]["blob_gate"] == v["tune"]["chosen"]["dae"]["blob_gate"]
    assert {RV.parse_setting(k)["blob_gate_3d"] for k in v["tune"]["table"]["dae"]} == set(d["settings"]["blob_gates_3d"])
    assert v["scoring"]["blob_gate_3d"] == v["tune"]["chosen"]["dae"]["blob_gate_3d"]
    assert {RV.parse_setting(k)["erode_mm"] for k in v["tune"]["table"]["dae"]} == set(d["settings"]["erodes"]) == {6, 3}
    assert v["scoring"]["erode_mm"] == v["tune"]["chosen"]["dae"]["erode_mm"]
    # the slice normalisation, chosen per method at its settings; the dae's is the detector's
    assert set(v["tune"]["slice_norm_table"]) == methods
    assert all(set(r) == {"area", "none"} for r in v["tune"]["slice_norm_table"].values())
    assert {c["slice_norm"] for c in v["tune"]["chosen"].values()} <= set(RV.SLICE_NORM_CHOICES)
    assert v["scoring"]["slice_norm"] == v["slice_norm"] == v["tune"]["chosen"]["dae"]["slice_norm"]
    assert 0 <= v["region_area"]["slice"]["auroc"] <= 1 and "slice_area_matched" in v["test_a"]["dae"]
    from aeanomaly.config import TRAIN_DEFAULTS

    assert v["noise"] == f"{TRAIN_DEFAULTS['noise_std']:g}@{TRAIN_DEFAULTS['noise_resolution']}"
    # patients never cross sides
    sides = d["data"]["LIDC-IDRI-0001"]
    assert sides["train"]["n_scans"] > 0 and sides["test"]["n_scans"] > 0
    assert {r["method"] for r in d["summary"]} == methods
    import real_ct_tables

    md = real_ct_tables.real_ct(d)
    assert "| dae+seg |" in md.replace("  ", " ") or "dae+seg" in md
    assert "| inference |" in md and "| bfloat16 |" in md
    assert "FPR check p: excess / shift (per fold)" in md
    assert d["settings"]["seed"] == 0  # runs of other seeds are told apart by it


@pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
def test_normal_sets_split_by_patient(tmp_path):
    for fold in RD.LIDC_PATIENTS:
        sets = RD.normal_sets(RD.shared_data(), tmp_path / fold, fold, seed=0)
        pats = {side: {i.patient for i in getattr(sets, side)} for side in ("train", "tune", "test")}
        assert not (pats["train"] & pats["tune"]) and not (pats["train"] & pats["test"]) and not (pats["tune"] & pats["test"])
        assert f"lidc:{fold}" not in pats["train"]  # never train on the patient under test
        other = [p for p in RD.LIDC_PATIENTS if p != fold][0]
        assert f"lidc:{other}" in pats["train"] and "totalseg:example" in pats["train"]
        assert len(pats["tune"]) >= 2 and len(pats["test"]) >= 2


def test_tables_say_when_a_run_was_interrupted():
    import real_ct_tables

    base = {"goals": {}, "variants": [], "summary": []}
    assert "interrupted after 0 variant(s)" in real_ct_tables.real_ct({**base, "complete": False})
    assert "interrupted" not in real_ct_tables.real_ct({**base, "complete": True})
    assert "interrupted" not in real_ct_tables.real_ct(base)  # JSON of runs before the field existed


def test_noise_sweep_summary_means_the_folds_and_the_table_names_the_best_setting():
    import real_ct_noise

    rows = [{"noise": "0.2@16", "fold": f, "table": {"3.0/p99": {"slice_auroc": a, "pixel_auprc": 0.1},
                                                      "6.0/p999": {"slice_auroc": 0.5, "pixel_auprc": 0.0}}}
            for f, a in (("A", 0.6), ("B", 0.8))]
    s = real_ct_noise.summary(rows)
    ref = next(r for r in s if r["setting"] == "3.0/p99")
    assert ref["slice_auroc"] == pytest.approx(0.7) and ref["pixel_auprc"] == pytest.approx(0.1)
    md = real_ct_noise.table_md({"summary": s})
    assert "| 0.2@16 | 0.700 | 0.100 | 3.0/p99 | 0.800 |" in md


def test_precision_table_reports_the_speedup_and_the_differences():
    import precision

    d = {"config": {"size": 256}, "n_slices": 64, "machine": {"cpu_model": "X", "cpu_flags": ["avx2", "avx512_bf16"]},
         "slices_per_s": {"float32": 10.0, "bfloat16": 15.0}, "bf16_speedup": 1.5,
         "reconstruction_abs_diff": {"mean": 0.001, "max": 0.01}, "heatmap_abs_diff": {"mean": 0.0005, "max": 0.004},
         "slice_score_abs_diff_max": 0.002, "slice_score_range_float32": 0.3}
    md = precision.table(d)
    assert "bfloat16 support: avx512_bf16" in md and "| bfloat16 | 15.0 | 1.50 | 0.0010 / 0.010 |" in md
    assert "ONEDNN_MAX_CPU_ISA" not in md  # runs before the rows
    d["limited_isa"] = {"AVX512_CORE": {"float32": 20.0, "bfloat16": 8.0, "bf16_speedup": 0.4},
                        "AVX2": {"float32": 21.0, "bfloat16": None, "bfloat16_error": "AbortedError: could not | create"}}
    md = precision.table(d)
    assert "| AVX512_CORE | 20.0 | 8.0 | 0.40 |" in md
    assert "| AVX2 | 21.0 | fails: AbortedError: could not / create | – |" in md


def test_seed_spread_table_means_the_runs_of_one_grid_and_sums_the_nodules():
    import real_ct_tables

    def row(method, auroc, size=128, ch=1, precision="float32", hit=1):
        return {"method": method, "size": size, "channels": ch, "precision": precision, "slice_auroc": auroc,
                "tune_merit": 0.9, "slice_auroc_matched": 0.7, "pixel_auprc": 0.1, "false_per_normal": 0.2,
                "fpr": 0.05, "bv_held": 0.6, "bv_held8": 0.65, "bv_pixel_auprc": 0.05, "nodules": 4, "nodules_hit": hit}

    runs = {"seed0": {"summary": [row("dae", 0.9), row("dae", 0.1, precision="bfloat16"), row("dae", 0.2, ch=3)]},
            "seed1": {"summary": [row("dae", 0.7, hit=0), row("dae", 0.3, size=256)]}}
    md = real_ct_tables.seed_spread(runs, 128, 1)
    assert "runs seed0, seed1" in md
    # other grids and channels left out, and the model recalibrated in bfloat16 after the fit's own row
    assert "| dae | 2 | 0.900 (0.900 / 0.900) | 0.800 (0.900 / 0.700) |" in md
    assert md.rstrip().endswith("| 1/8 |")
    assert real_ct_tables.main(["--spread", "128"]) == 2  # a usage error, not a traceback
