"""aeanomaly/cli/evaluate.py: `aeanomaly evaluate` writes metrics, tables, plots and overlays; labelled
scans from folders (`--normal-dir`, old `--normal`) and labels.csv; exit 2 when nothing can be scored."""

import csv
import json
import shutil
from pathlib import Path


def test_evaluate_writes_metrics(cli, fitted_bundle, phantom_test, tmp_path):
    out = tmp_path / "ev"
    r = cli("evaluate", fitted_bundle, "--labels", phantom_test / "labels.csv", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and r.stderr == ""
    m = json.loads((out / "metrics.json").read_text())
    assert m["scan"]["n_abnormal"] == 6 and m["scan"]["n_normal"] == 6 and m["n_errors"] == 0
    assert m["scan"]["auroc"] > 0.5 and m["pixel"]["pixel_auroc"] > 0.5 and m["target_fpr"] == 0.2
    assert (out / "roc_pr.png").is_file() and (out / "score_distribution.png").is_file()
    assert list((out / "overlays").glob("*.png"))
    assert m["lesion_detection_by_size"][-1]["n"] >= 6
    assert list(csv.DictReader(open(out / "scans.csv")))[0].keys() >= {"scan", "label", "scan_score", "error"}


def test_evaluate_never_pairs_normal_folder_scans_with_masks(cli, fitted_bundle, phantom_test, tmp_path):
    """Normal and abnormal folders (or labels.csv rows) reusing file names: the normal scan stays normal."""
    ab = sorted((phantom_test / "abnormal").glob("*.nii.gz"))[:2]
    nd, ad, md = tmp_path / "n", tmp_path / "a", tmp_path / "m"
    for d in (nd, ad, md):
        d.mkdir()
    for i, (n, a) in enumerate(zip(sorted((phantom_test / "normal").glob("*.nii.gz"))[:2], ab)):
        shutil.copy(n, nd / f"scan_{i}.nii.gz")
        shutil.copy(a, ad / f"scan_{i}.nii.gz")
        shutil.copy(phantom_test / "masks" / a.name.replace(".nii.gz", "_mask.nii.gz"), md / f"scan_{i}_mask.nii.gz")
    out = tmp_path / "ev"
    r = cli("evaluate", fitted_bundle, "--normal-dir", nd, "--abnormal-dir", ad, "--masks", md, "--out", out,
            "--overlays", 0, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["scan"]["n_normal"] == 2 and m["scan"]["n_abnormal"] == 2
    got = sorted((Path(row["scan"]).parent.name, row["label"]) for row in csv.DictReader(open(out / "scans.csv")))
    assert got == [("a", "1"), ("a", "1"), ("n", "0"), ("n", "0")]
    (tmp_path / "labels.csv").write_text("scan,label\n" + "".join(f"{d}/scan_{i}.nii.gz,{lab}\n" for d, lab in
                                                                  (("n", "normal"), ("a", "abnormal")) for i in range(2)))
    r = cli("evaluate", fitted_bundle, "--labels", tmp_path / "labels.csv", "--masks", md, "--out", tmp_path / "ev2",
            "--overlays", 0, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert m["scan"]["n_normal"] == 2 and m["scan"]["n_abnormal"] == 2 and m["pixel"]["pixel_auroc"] is not None
    # the old spellings: same result, one deprecation line each
    r = cli("evaluate", fitted_bundle, "--normal", nd, "--abnormal", ad, "--masks", md, "--out", tmp_path / "ev3",
            "--overlays", 0, "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == ["warning: --normal is deprecated; use --normal-dir",
                                     "warning: --abnormal is deprecated; use --abnormal-dir"]
    assert json.loads((tmp_path / "ev3" / "metrics.json").read_text())["scan"] == \
        json.loads((out / "metrics.json").read_text())["scan"]


def test_evaluate_exit_codes(cli, one_error_line, fitted_bundle, phantom_test, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.nii.gz").write_bytes(b"garbage")
    r = cli("evaluate", fitted_bundle, "--abnormal-dir", bad, "--out", tmp_path / "o", "--quiet")
    one_error_line(r, "a.nii.gz", "none of the 1 scans could be scored")
    assert not (tmp_path / "o").exists()
    # one unreadable among good ones: exit 0, the count and the first reason on stderr
    mixed = tmp_path / "mixed"
    shutil.copytree(phantom_test / "normal", mixed)
    (mixed / "zz.nii.gz").write_bytes(b"garbage")
    r = cli("evaluate", fitted_bundle, "--normal-dir", mixed, "--abnormal-dir", phantom_test / "abnormal",
            "--out", tmp_path / "o2", "--overlays", 0, "--quiet")
    assert r.exit_code == 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: 1 of 13 scans could not be scored") and "zz.nii.gz" in lines[0]
    m = json.loads((tmp_path / "o2" / "metrics.json").read_text())
    assert m["n_scans"] == 13 and m["n_errors"] == 1
    one_error_line(cli("evaluate", fitted_bundle, "--out", tmp_path / "o3"), "no labelled scans")
    one_error_line(cli("evaluate", fitted_bundle, "--normal-dir", tmp_path / "nope", "--out", tmp_path / "o4"), "nope")
    one_error_line(cli("evaluate", fitted_bundle, "--labels", phantom_test / "labels.csv", "--organ-masks",
                       phantom_test / "masks", "--out", tmp_path / "o5"), "needs a bundle with a U-Net head")
    assert not any((tmp_path / f"o{i}").exists() for i in (3, 4, 5))


def test_evaluate_read_only_or_full_disk_output(cli, one_error_line, fitted_bundle, phantom_test, tmp_path,
                                                read_only_fs, monkeypatch):
    import errno
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    read_only_fs(ro)
    r = cli("evaluate", fitted_bundle, "--labels", phantom_test / "labels.csv", "--out", ro / "ev", "--quiet")
    one_error_line(r, "Read-only file system", starts=ro / "ev")
    assert list(ro.iterdir()) == []

    def replace(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dst))

    monkeypatch.setattr(os, "replace", replace)
    full = tmp_path / "full"
    full.mkdir()
    r = cli("evaluate", fitted_bundle, "--labels", phantom_test / "labels.csv", "--out", full / "ev", "--quiet",
            "--overlays", 0)
    one_error_line(r, "No space left on device")
    assert list(full.iterdir()) == []


def test_evaluate_warns_when_the_normals_score_higher_than_the_calibration_normals(cli, fitted_bundle, phantom_test,
                                                                                    tmp_path):
    """Scans with lesions given as normals stand in for normals of another site that score higher: one
    warning line (also with --quiet) that says so and how to recalibrate; metrics.json holds the check.
    The same bundle's own kind of normals (test_evaluate_writes_metrics) gives no warning."""
    out = tmp_path / "ev"
    r = cli("evaluate", fitted_bundle, "--normal-dir", phantom_test / "abnormal", "--out", out, "--overlays", 0,
            "--quiet")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "score higher than the ones the bundle" in lines[0]
    assert f"aeanomaly calibrate {fitted_bundle} --normal-dir DIR" in lines[0]
    check = json.loads((out / "metrics.json").read_text())["calibration_check"]
    assert check["n_normal"] == 6 and (check["excess"] or check["shifted"])
    assert check["ci95"][0] <= check["observed_fpr"] <= check["ci95"][1]
    r = cli("evaluate", fitted_bundle, "--normal-dir", phantom_test / "abnormal", "--out", tmp_path / "ev2",
            "--overlays", 0)
    assert "normal scans flagged: " in r.stdout and "95% CI" in r.stdout
