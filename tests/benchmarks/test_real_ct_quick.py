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


@pytest.mark.slow
@pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
def test_quick_benchmark_runs_and_writes_every_table(tmp_path):
    out = tmp_path / "real_ct_quick.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_ct.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["quick"] is True and d["complete"] is True and d["machine"]["cpu_count"] and "load_note" in d
    v = d["variants"][0]
    methods = {"dae", "dae+seg", "dae+seg(fused)", "pca", "intensity", "log", "hessian"}
    assert set(v["test_a"]) == methods
    for r in v["test_a"].values():
        assert r["slice"]["n_pos"] > 0 and r["slice"]["n_neg"] > 0 and 0 <= r["slice"]["auroc"] <= 1
        assert r["n_nodules"] >= 1 and 0 <= r["nodules_hit"] <= r["n_nodules"] and r["time_s"] >= 0
    assert set(v["normals"]) == methods
    tb = v["test_b"]["test"]["methods"]["dae"]
    assert set(tb["per_kind"]) <= set(RL.KINDS) and tb["per_kind"]
    assert set(v["test_b"]["tune"]["methods"]["dae"]["per_kind"]) <= set(RL.TUNING_KINDS)
    assert v["chosen_seg"] in ("dae+seg", "dae+seg(fused)")
    # patients never cross sides
    sides = d["data"]["LIDC-IDRI-0001"]
    assert sides["train"]["n_scans"] > 0 and sides["test"]["n_scans"] > 0
    assert {r["method"] for r in d["summary"]} == methods
    import real_ct_tables

    md = real_ct_tables.real_ct(d)
    assert "| dae+seg |" in md.replace("  ", " ") or "dae+seg" in md


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
