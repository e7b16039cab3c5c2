"""aeanomaly/cli/score.py: `aeanomaly score` — tables, heatmaps, overlays, report; exit codes scripts can
trust; a failing scan is an error row; read-only and full-disk outputs give one line and nothing."""

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def scored(fitted_bundle, phantom_test, tmp_path_factory):
    from click.testing import CliRunner

    from aeanomaly.cli import main

    out = tmp_path_factory.mktemp("scored") / "res"
    garbage = tmp_path_factory.mktemp("garbage") / "junk.nii.gz"
    garbage.write_bytes(b"not a nifti at all")
    r = CliRunner().invoke(main, [str(a) for a in ("score", fitted_bundle, phantom_test / "normal",
                                                   phantom_test / "abnormal", garbage, "--out", out, "--quiet")])
    assert r.exit_code == 0, r.output
    return out, r


def test_score_writes_tables_heatmaps_overlays_report(scored, phantom_test):
    out, r = scored
    scores = rows(out / "scores.csv")
    assert len(scores) == 13
    assert list(scores[0]) == ["scan", "n_slices", "scan_score", "p_value", "label", "top_slice", "n_lesions", "error",
                               "head_proba", "fused_proba", "note"]
    assert all(s["head_proba"] == "" and s["fused_proba"] == "" for s in scores)  # no supervised head
    bad = [s for s in scores if s["label"] == "error"]
    assert len(bad) == 1 and "junk.nii.gz" in bad[0]["error"]
    good = [s for s in scores if s["label"] != "error"]
    assert all(0 < float(s["p_value"]) <= 1 for s in good)
    slices = rows(out / "slices.csv")
    assert len(slices) >= 12 and list(slices[0]) == ["scan", "slice", "score", "p_value", "label", "head_proba"]
    lesions = rows(out / "lesions.csv")
    assert lesions and "centroid_r_mm" in lesions[0] and "severity" in lesions[0]
    src = nib.load(phantom_test / "abnormal" / "phantom_0006.nii.gz")  # the heatmap overlays the input scan
    hm = nib.load(out / "heatmaps" / "phantom_0006_heatmap.nii.gz")
    assert hm.shape == src.shape
    np.testing.assert_allclose(hm.affine, src.affine)
    assert len(list((out / "overlays").glob("*.png"))) >= 12
    html = (out / "report.html").read_text()
    assert "phantom_0006" in html and html.count("data:image/png;base64,") >= 12


def test_some_unreadable_inputs_exit_0_with_count_and_first_reason(scored):
    _, r = scored
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: 1 of 13 scans could not be scored")
    assert "junk.nii.gz" in lines[0] and "first:" in lines[0]
    assert r.stdout == ""  # --quiet


def test_score_exit_codes(cli, one_error_line, fitted_bundle, phantom_test, scored, tmp_path):
    out, _ = scored
    one_error_line(cli("score", fitted_bundle, phantom_test / "abnormal", "--out", out, "--quiet"), "not empty")
    r = cli("score", tmp_path / "nobundle", phantom_test / "abnormal", "--out", tmp_path / "o")
    one_error_line(r, "nobundle")
    assert not (tmp_path / "o").exists()
    one_error_line(cli("score", fitted_bundle, tmp_path / "missing.nii.gz", "--out", tmp_path / "o2"), "missing.nii.gz")
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"xx")
    r = cli("score", fitted_bundle, junk, phantom_test / "abnormal", "--out", tmp_path / "o3", "--strict", "--quiet")
    one_error_line(r, "junk.nii")
    assert not (tmp_path / "o3").exists()
    r = cli("score", fitted_bundle, phantom_test / "abnormal", "--out", tmp_path / "o4", "--target-fpr", "0.99",
            "--fail-on-anomaly", "--quiet", "--heatmaps", "none", "--overlays", "0", "--no-report")
    assert r.exit_code == 1
    assert not (tmp_path / "o4" / "heatmaps").exists() and not (tmp_path / "o4" / "report.html").exists()


def test_no_scorable_input_exits_2_and_writes_nothing(cli, one_error_line, fitted_bundle, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.nii.gz").write_bytes(b"garbage")
    (bad / "b.nii").write_bytes(b"xx")
    r = cli("score", fitted_bundle, bad, "--out", tmp_path / "o", "--quiet")
    line = one_error_line(r, "none of the 2 scans could be scored", "a.nii.gz")
    assert line.startswith(f"error: {bad / 'a.nii.gz'}: ")
    assert not (tmp_path / "o").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    # with --fail-on-anomaly too: 2, not 1
    assert cli("score", fitted_bundle, bad, "--out", tmp_path / "o", "--fail-on-anomaly").exit_code == 2


def test_old_fpr_spelling_works_with_one_deprecation_line(cli, fitted_bundle, phantom_test, tmp_path):
    r = cli("score", fitted_bundle, phantom_test / "abnormal", "--out", tmp_path / "o", "--fpr", "0.99", "--quiet",
            "--heatmaps", "none", "--overlays", "0", "--no-report", "--fail-on-anomaly")
    assert r.exit_code == 1
    assert r.stderr.strip() == "warning: --fpr is deprecated; use --target-fpr"
    assert all(s["label"] == "abnormal" for s in rows(tmp_path / "o" / "scores.csv"))
    r = cli("score", fitted_bundle, phantom_test / "abnormal", "--out", tmp_path / "o2", "--fpr", "0.5",
            "--target-fpr", "0.4")
    assert r.exit_code == 2 and "not both" in r.output


@pytest.mark.parametrize("args, reason", [(["--slice-fdr", "0"], "--slice-fdr must be in (0, 1)"),
                                          (["--slice-fdr", "1.2"], "--slice-fdr must be in (0, 1)"),
                                          (["--target-fpr", "0"], "--target-fpr must be in (0, 1)"),
                                          (["--min-lesion-mm3", "-5"], "--min-lesion-mm3 must be ≥ 0")])
def test_bad_score_options_exit_2_and_write_nothing(cli, one_error_line, fitted_bundle, phantom_test, tmp_path, args,
                                                    reason):
    out = tmp_path / "res"
    one_error_line(cli("score", fitted_bundle, phantom_test / "abnormal", "--out", out, "--quiet", *args), reason)
    assert not out.exists()


def test_huge_min_lesion_volume_leaves_no_lesions_and_fdr_labels_slices(cli, fitted_bundle, phantom_test, tmp_path):
    out = tmp_path / "res"
    r = cli("score", fitted_bundle, phantom_test / "abnormal", "--out", out, "--quiet", "--no-report", "--overlays", "0",
            "--heatmaps", "none", "--min-lesion-mm3", "1e12", "--slice-fdr", "0.05")
    assert r.exit_code == 0, r.output
    scores = rows(out / "scores.csv")
    assert scores and all(s["n_lesions"] == "0" for s in scores)
    assert rows(out / "lesions.csv") == []
    assert {s["label"] for s in rows(out / "slices.csv")} <= {"normal", "abnormal"}


def test_read_only_output_gives_one_line_before_any_work(cli, one_error_line, fitted_bundle, phantom_test, tmp_path,
                                                         read_only_fs):
    read_only_fs(tmp_path)
    r = cli("score", fitted_bundle, phantom_test / "abnormal", "--out", tmp_path / "res", "--quiet")
    one_error_line(r, "Read-only file system", starts=tmp_path / "res")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_writing_gives_one_line_and_nothing_half_written(cli, one_error_line, fitted_bundle,
                                                                         phantom_test, tmp_path, disk_full):
    r = cli("score", fitted_bundle, phantom_test / "abnormal", "--out", tmp_path / "res", "--quiet", "--overlays", "0",
            "--no-report")
    one_error_line(r, "No space left on device", "disk full")
    assert list(tmp_path.iterdir()) == []


def test_a_scan_that_runs_out_of_memory_is_an_error_row(cli, fitted_bundle, phantom_test, tmp_path, monkeypatch):
    from aeanomaly.detector import AnomalyDetector

    real = AnomalyDetector.prepare
    victim = sorted((phantom_test / "abnormal").glob("*.nii.gz"))[0]

    def prepare(self, scan):  # runs in the prefetch thread: its error must reach this scan's row
        if str(scan.source) == str(victim):
            raise MemoryError("Unable to allocate 8.6 GiB")
        return real(self, scan)

    monkeypatch.setattr(AnomalyDetector, "prepare", prepare)
    r = cli("score", fitted_bundle, phantom_test / "abnormal", "--out", tmp_path / "o", "--quiet", "--heatmaps", "none",
            "--overlays", "0", "--no-report")
    assert r.exit_code == 0, r.output
    table = rows(tmp_path / "o" / "scores.csv")
    assert len(table) == 6 and sum(s["label"] == "error" for s in table) == 1
    err = [s for s in table if s["label"] == "error"][0]
    assert err["scan"] == str(victim) and "out of memory" in err["error"]
    assert "1 of 6 scans could not be scored" in r.stderr


def test_no_prefetch_scores_the_same(cli, scored, fitted_bundle, phantom_test, tmp_path):
    """--no-prefetch (one scan in memory at a time) gives the same table as the default, which reads and
    prepares the next scan while this one is scored."""
    out, _ = scored
    r = cli("score", fitted_bundle, phantom_test / "abnormal", "--out", tmp_path / "o", "--quiet", "--no-prefetch",
            "--heatmaps", "none", "--overlays", "0", "--no-report")
    assert r.exit_code == 0, r.output
    serial = rows(tmp_path / "o" / "scores.csv")
    default = {s["scan"]: s for s in rows(out / "scores.csv")}
    assert len(serial) == 6
    for s in serial:
        assert s == default[s["scan"]]


def _dicom_slice():
    """The DICOM slice writer of tests/io/conftest.py (one implementation of the test data)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("io_conftest", Path(__file__).parents[1] / "io" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.dicom_slice


def test_a_folder_of_several_dicom_series_is_one_scan_per_series(cli, fitted_bundle, phantom_test, tmp_path):
    from pydicom.uid import generate_uid

    from aeanomaly.io import load_scan

    dicom_slice = _dicom_slice()
    folder = tmp_path / "pacs"
    folder.mkdir()
    for i, src in enumerate(sorted((phantom_test / "abnormal").glob("*.nii.gz"))[:2]):
        hu = load_scan(src).hu
        uid = generate_uid()
        for k in range(hu.shape[0]):
            pixels = np.clip(np.rint(hu[k]) + 1024, 0, 65535)
            dicom_slice(pixels, 6.0 * k, series_uid=uid, description=f"chest{i}", number=k + 1).save_as(
                folder / f"s{i}_{k:03d}.dcm", enforce_file_format=True)
    r = cli("score", fitted_bundle, folder, "--out", tmp_path / "o", "--quiet", "--heatmaps", "none",
            "--overlays", "0", "--no-report")
    assert r.exit_code == 0, r.output
    table = rows(tmp_path / "o" / "scores.csv")
    assert len(table) == 2 and all(s["label"] in ("normal", "abnormal") for s in table), table
    names = sorted(Path(s["scan"]).name for s in table)
    assert names[0].startswith("chest0") and names[1].startswith("chest1")
    # the name of one series picks it (as a command-line argument)
    r = cli("score", fitted_bundle, folder / names[1], "--out", tmp_path / "o2", "--quiet", "--heatmaps", "none",
            "--overlays", "0", "--no-report")
    assert r.exit_code == 0, r.output
    assert [Path(s["scan"]).name for s in rows(tmp_path / "o2" / "scores.csv")] == [names[1]]
