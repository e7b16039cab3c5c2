"""Hybrid scoring with a supervised head, on phantoms: U-Net organ region + lesion organs, CNN classifier
probability + fused probability, the bundle round trip with a head, and evaluate's head metrics."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aeanomaly.cli import main
from aeanomaly.datasets.synthetic import LUNG, make_phantom
from aeanomaly.evaluate import dice_iou, head_classification_metrics, organ_segmentation_metrics, overlap_counts
from aeanomaly.hybrid import fill_region_labels, head_outputs, label_map_to_model_grid, lesion_organs
from aeanomaly.localize import Lesion
from aeanomaly.model.heads import SupervisedHead
from aeanomaly.report_html import write_report

HEAD_ARGS = ["--depth", "2", "--base-filters", "8", "--batch-size", "8", "--no-jit", "--no-augment", "--quiet"]
OLD_SCORE_COLUMNS = ["scan", "n_slices", "scan_score", "p_value", "label", "top_slice", "n_lesions", "error"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_error_line(r, text):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], r.output


# ---------------------------------------------------------------------------------------------
# pure parts (no model)


def test_fill_region_labels_restricts_and_fills_holes_with_nearest_organ():
    labels = np.zeros((1, 6, 8), np.int16)
    labels[0, 1:5, 0:3] = 1
    labels[0, 1:5, 5:8] = 2
    labels[0, 2, 1] = 0  # a hole inside organ 1
    region = np.zeros((1, 6, 8), bool)
    region[0, 1:5, 0:8] = True  # covers the gap between the organs too
    region[0, 1:5, 7] = False
    out = fill_region_labels(labels, region)
    assert out.dtype == np.int16 and ((out > 0) == region).all()
    assert out[0, 2, 1] == 1 and out[0, 2, 3] == 1 and out[0, 2, 4] == 2 and out[0, 2, 7] == 0
    assert labels[0, 2, 1] == 0  # the input is not modified


def _lesion(i: int, peak: float) -> Lesion:
    return Lesion(id=i, slice_start=0, slice_end=0, centroid_zyx=(0.0, 0.0, 0.0), centroid_ras_mm=(0.0, 0.0, 0.0),
                  area_mm2=1.0, volume_mm3=1.0, equivalent_diameter_mm=1.0, n_voxels=1, max_residual=peak,
                  mean_residual=peak, p_value=None, severity="unknown")


def test_lesion_organs_names_the_majority_organ():
    head = SupervisedHead(kind="unet", classes=["liver", "spleen"])
    organs = np.zeros((2, 8, 8), np.int16)
    organs[:, :, :4], organs[:, :, 4:6] = 1, 2
    lesion_labels = np.zeros((2, 8, 8), np.int32)
    lesion_labels[0, 2:4, 3:6] = 1  # 2 liver + 4 spleen voxels
    lesion_labels[1, 0:2, 6:8] = 2  # outside every organ
    lesions = [_lesion(1, 2.0), _lesion(2, 1.0)]
    out = lesion_organs(head, organs, lesion_labels, lesions)
    assert [les["organ"] for les in out] == ["spleen", "background"]
    assert "organ" not in lesions[0] and out[0]["max_residual"] == 2.0


class _Prep:
    def __init__(self, z=4, size=8):
        self.x = np.zeros((z, size, size, 1), np.float32)
        self.keep = np.array([False, True, True, False])


class _CNN:
    kind = "cnn"

    def __init__(self, fusion):
        self.fusion_ = object() if fusion else None

    def abnormal_proba(self, x):
        return np.linspace(0.2, 0.6, len(x))

    def fused_proba(self, p, q):
        return np.array([0.5 * (1 - p[0]) + 0.5 * q[0]])


def test_head_outputs_cnn_and_without_head():
    prep = _Prep()
    lesions = [_lesion(1, 1.0)]
    out = head_outputs(None, prep, 0.01, lesions, np.zeros((4, 8, 8), np.int32))
    assert out["lesions"] is lesions and all(out[k] is None for k in
                                             ("organ_labels", "head_proba", "fused_proba", "slice_head_proba"))
    out = head_outputs(_CNN(fusion=True), prep, 0.01, lesions, None)
    np.testing.assert_allclose(out["slice_head_proba"], [np.nan, 0.2, 0.6, np.nan])
    assert out["head_proba"] == pytest.approx(0.6) and out["fused_proba"] == pytest.approx(0.5 * 0.99 + 0.3)
    out = head_outputs(_CNN(fusion=False), prep, 0.01, lesions, None)
    assert out["head_proba"] == pytest.approx(0.6) and out["fused_proba"] is None


def test_label_map_to_model_grid_uses_the_head_numbering():
    lab = np.zeros((2, 16, 16), np.uint8)
    lab[:, :8], lab[:, 8:12] = 5, 1
    np.testing.assert_array_equal(np.unique(label_map_to_model_grid(lab, [[5], [1]], 32)), [0, 1, 2])
    np.testing.assert_array_equal(np.unique(label_map_to_model_grid(lab, None, 32)), [0, 1])
    assert label_map_to_model_grid(lab, [[5], [1]], 32).shape == (2, 32, 32)


def test_organ_segmentation_and_head_classification_metrics():
    pred = np.array([[0, 1, 1, 2], [2, 2, 0, 0]])
    truth = np.array([[0, 1, 0, 2], [2, 0, 0, 0]])
    counts = overlap_counts(pred, truth, 2)
    np.testing.assert_array_equal(counts, [[1, 2, 1], [2, 3, 2]])
    m = organ_segmentation_metrics(["liver", "spleen"], counts + counts, [dice_iou(pred, truth, 2)] * 2)
    dice, iou = dice_iou(pred, truth, 2)
    assert m["n_scans"] == 2 and m["dice"]["liver"] == pytest.approx(dice[0]) == pytest.approx(2 / 3)
    assert m["iou"]["spleen"] == pytest.approx(iou[1]) and m["dice_mean_per_scan"]["spleen"] == pytest.approx(dice[1])
    h = head_classification_metrics([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9], [None] * 4)
    assert set(h) == {"scan_classifier"} and h["scan_classifier"]["auroc"] == 1.0
    assert h["scan_classifier"]["specificity"] == 0.5 and h["scan_classifier"]["threshold"] == 0.5
    assert head_classification_metrics([0, 1], [None, None], [None, None]) == {}


def test_report_shows_head_probabilities_only_when_present(tmp_path):
    scans = [{"scan": "a", "scan_score": 1.0, "p_value": 0.01, "label": "abnormal", "lesions": [],
              "head_proba": 0.93, "fused_proba": 0.97}]
    html = write_report(tmp_path / "r.html", scans).read_text()
    assert "fused P(abnormal)" in html and "0.97" in html and "classifier P(abnormal)" in html
    html = write_report(tmp_path / "r2.html", [{**scans[0], "head_proba": None, "fused_proba": None}]).read_text()
    assert "P(abnormal)" not in html


# ---------------------------------------------------------------------------------------------
# end to end on phantoms


def write_lung_maps(phantoms: Path, out: Path, seed: int) -> Path:
    """Organ label maps (phantom label ids; 5 = lung) of a phantom set, regenerated from the seeds
    documented in ``write_phantom_set``, saved under the scans' own file names."""
    from aeanomaly.datasets.synthetic import subject_rng
    from aeanomaly.io import load_scan
    from aeanomaly.io.writers import save_nifti

    out.mkdir(parents=True)
    rows = list(csv.DictReader(open(phantoms / "labels.csv")))
    counters = {"normal": 0, "abnormal": 0}
    for r in rows:
        group = int(r["label"] == "abnormal")
        scan = load_scan(phantoms / r["scan"])
        ph = make_phantom("chest", scan.hu.shape, tuple(scan.spacing), subject_rng(seed, group, counters[r["label"]]))
        counters[r["label"]] += 1
        save_nifti(out / Path(r["scan"]).name, ph.labels, ph.affine)
    return out


@pytest.fixture(scope="module")
def hybrid(fitted_bundle, phantom_train, phantom_test, tmp_path_factory):
    """Organ maps of the phantom sets and two copies of the tiny bundle: one with a U-Net lung head,
    one with a CNN head (its fusion fitted on held-out labelled scans)."""
    root = tmp_path_factory.mktemp("hybrid")
    maps_train = write_lung_maps(phantom_train, root / "maps_train", seed=1)
    maps_test = write_lung_maps(phantom_test, root / "maps_test", seed=2)
    unet, cnn = root / "unet", root / "cnn"
    shutil.copytree(fitted_bundle, unet)
    shutil.copytree(fitted_bundle, cnn)
    r = run("fit-head", unet, "--kind", "unet", "--images", phantom_train / "normal", "--masks", maps_train,
            "--classes", f"{LUNG}:lung", "--epochs", "8", "--val-fraction", "0.2", *HEAD_ARGS)
    assert r.exit_code == 0, r.output
    r = run("fit-head", cnn, "--kind", "cnn", "--labels", phantom_test / "labels.csv", "--epochs", "3",
            "--val-fraction", "0.5", *HEAD_ARGS)
    assert r.exit_code == 0, r.output
    assert json.loads((cnn / "head.json").read_text())["fusion"] is not None
    return {"root": root, "unet": unet, "cnn": cnn, "maps_train": maps_train, "maps_test": maps_test}


def test_lung_maps_match_the_phantom_scans(phantom_test, tmp_path):
    from aeanomaly.io import load_label, load_scan

    maps = write_lung_maps(phantom_test, tmp_path / "maps", seed=2)  # as the fixture above does; no head needed
    scan = load_scan(phantom_test / "abnormal" / "phantom_0006.nii.gz")
    lab = load_label(maps / "phantom_0006.nii.gz", like=scan)
    lesion = load_label(phantom_test / "masks" / "phantom_0006_mask.nii.gz", like=scan) > 0
    assert np.median(scan.hu[(lab == LUNG) & ~lesion]) < -600  # the regenerated anatomy is the scan's
    assert (lab[lesion] == LUNG).mean() > 0.5  # chest lesions lie in the lungs


@pytest.mark.slow
def test_unet_head_restricts_region_and_names_lesion_organs(hybrid, fitted_bundle, phantom_test):
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.hybrid import organ_label_map
    from aeanomaly.io import find_scans, load_scan

    det = AnomalyDetector.load(hybrid["unet"])
    plain = AnomalyDetector.load(fitted_bundle)
    assert det.head_.kind == "unet" and det.head_.classes_ == ("lung",)
    cal = json.loads((hybrid["unet"] / "calibration.json").read_text())
    assert cal["log"][-1]["what"] == "fit-head unet"  # calibrated on the head's region
    scan = load_scan(find_scans(phantom_test / "abnormal")[0])
    prep = det.prepare(scan)
    region = det.analyse(scan).region
    organs = organ_label_map(det.head_, prep.x)
    np.testing.assert_array_equal(region, (organs > 0) & prep.body)
    np.testing.assert_array_equal(region, det.head_.region_mask(prep.x) & prep.body)
    assert region.any() and not np.array_equal(region, plain.analyse(scan).region)
    res = det.score_scan(scan)
    assert res.organ_labels is not None and res.head_proba is None and res.fused_proba is None
    assert (res.heatmap[res.organ_labels == 0] == 0).all()  # residuals count only inside the organ region
    organs_found = []
    for path in find_scans(phantom_test / "abnormal"):
        r = det.score_scan(path)
        assert all(les["organ"] in ("lung", "background") for les in r.lesions)
        organs_found += [les["organ"] for les in r.lesions]
    assert "lung" in organs_found
    # without a head nothing of this appears
    r0 = plain.score_scan(scan)
    assert r0.organ_labels is None and r0.head_proba is None and all("organ" not in les for les in r0.lesions)


@pytest.mark.slow
def test_score_cli_writes_head_columns(hybrid, phantom_test, tmp_path):
    out = tmp_path / "cnn"
    r = run("score", hybrid["cnn"], phantom_test / "normal", phantom_test / "abnormal", "--out", out,
            "--overlays", "1", "--heatmaps", "none", "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert list(rows[0]) == OLD_SCORE_COLUMNS + ["head_proba", "fused_proba", "note"] and len(rows) == 12
    for row in rows:
        assert 0 <= float(row["head_proba"]) <= 1 and 0 < float(row["fused_proba"]) < 1
    slices = list(csv.DictReader(open(out / "slices.csv")))
    assert list(slices[0])[-1] == "head_proba" and all(0 <= float(s["head_proba"]) <= 1 for s in slices)
    html = (out / "report.html").read_text()
    assert "fused P(abnormal)" in html and "CNN slice classifier" in html

    out = tmp_path / "unet"
    r = run("score", hybrid["unet"], phantom_test / "abnormal", "--out", out, "--overlays", "0",
            "--heatmaps", "none", "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert all(row["head_proba"] == "" and row["fused_proba"] == "" for row in rows)
    lesions = list(csv.DictReader(open(out / "lesions.csv")))
    assert lesions and list(lesions[0])[-1] == "organ"
    assert {les["organ"] for les in lesions} <= {"lung", "background"} and "lung" in {les["organ"] for les in lesions}
    assert "<th>organ</th>" in (out / "report.html").read_text()


@pytest.mark.slow
def test_bundle_round_trip_with_head_gives_identical_scores(hybrid, phantom_test, tmp_path):
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.io import find_scans

    path = find_scans(phantom_test / "abnormal")[1]
    for kind in ("cnn", "unet"):
        det = AnomalyDetector.load(hybrid[kind])
        a = det.score_scan(path)
        det.save(tmp_path / kind)
        assert (tmp_path / kind / "head.json").is_file() and (tmp_path / kind / "head.keras").is_file()
        b = AnomalyDetector.load(tmp_path / kind).score_scan(path)
        assert b.scan_score == pytest.approx(a.scan_score, rel=1e-6) and b.p_value == pytest.approx(a.p_value)
        assert b.head_proba == pytest.approx(a.head_proba, abs=1e-6) if kind == "cnn" else b.head_proba is None
        assert (b.fused_proba == pytest.approx(a.fused_proba, abs=1e-6)) if kind == "cnn" else b.fused_proba is None
        if kind == "unet":
            np.testing.assert_array_equal(a.organ_labels, b.organ_labels)
            assert [les["organ"] for les in a.lesions] == [les["organ"] for les in b.lesions]


@pytest.mark.slow
def test_evaluate_reports_organ_overlap_and_fused_metrics(hybrid, phantom_test, tmp_path):
    labels = phantom_test / "labels.csv"
    out = tmp_path / "unet"
    r = run("evaluate", hybrid["unet"], "--labels", labels, "--organ-masks", hybrid["maps_test"], "--out", out,
            "--overlays", "0")
    assert r.exit_code == 0, r.output
    assert "organ Dice lung" in r.output
    m = json.loads((out / "metrics.json").read_text())
    seg = m["organ_segmentation"]
    assert seg["classes"] == ["lung"] and seg["n_scans"] == 12 and m["head"]["kind"] == "unet"
    assert 0.3 < seg["dice"]["lung"] <= 1 and 0 < seg["iou"]["lung"] <= seg["dice"]["lung"]
    assert 0 < seg["dice_mean_per_scan"]["lung"] <= 1 and "scan_fused" not in m

    out = tmp_path / "cnn"
    r = run("evaluate", hybrid["cnn"], "--labels", labels, "--out", out, "--overlays", "0", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["head"] == {"kind": "cnn", "classes": ["normal", "abnormal"], "fusion": True}
    for key in ("scan", "scan_classifier", "scan_fused"):
        assert m[key]["n"] == 12 and m[key]["n_abnormal"] == 6 and 0 <= m[key]["auroc"] <= 1
    rows = list(csv.DictReader(open(out / "scans.csv")))
    assert all(0 < float(row["fused_proba"]) < 1 for row in rows)

    _one_error_line(run("evaluate", hybrid["cnn"], "--labels", labels, "--organ-masks", hybrid["maps_test"],
                        "--out", tmp_path / "x"), "needs a bundle with a U-Net head")
    _one_error_line(run("evaluate", hybrid["unet"], "--labels", labels, "--organ-masks", tmp_path / "nowhere",
                        "--out", tmp_path / "y"), "organ masks folder does not exist")
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "other.nii.gz").write_bytes(b"")
    _one_error_line(run("evaluate", hybrid["unet"], "--labels", labels, "--organ-masks", tmp_path / "unrelated",
                        "--out", tmp_path / "z"), "no organ label map matches")
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))
