"""aeanomaly/cli/phantoms.py: `aeanomaly make-phantoms`."""

import csv

import nibabel as nib
import numpy as np


def test_make_phantoms_writes_loadable_set(cli, one_error_line, tmp_path):
    from aeanomaly.io import load_scan

    out = tmp_path / "ph"
    r = cli("make-phantoms", "--out", out, "--normal", 2, "--abnormal", 1, "--slices", 4, "--matrix", 64, "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert [row["label"] for row in rows].count("abnormal") == 1
    ab = [row for row in rows if row["label"] == "abnormal"][0]
    scan = load_scan(out / ab["scan"])
    img = nib.load(out / ab["scan"])
    np.testing.assert_allclose(scan.hu, np.asarray(img.dataobj).transpose(2, 1, 0), atol=0.5)
    np.testing.assert_allclose(scan.affine, img.affine)
    assert nib.load(out / ab["mask"]).shape == img.shape
    one_error_line(cli("make-phantoms", "--out", tmp_path / "z", "--normal", 0, "--abnormal", 0), "nothing to write")
    one_error_line(cli("make-phantoms", "--out", out, "--normal", 1, "--abnormal", 0), "not empty")


def test_make_phantoms_lesion_options(cli, tmp_path):
    out = tmp_path / "ph"
    r = cli("make-phantoms", "--out", out, "--normal", 0, "--abnormal", 2, "--slices", 8, "--matrix", 64,
            "--lesion-mm", 20, 24, "--lesions-per-scan", 2, 2, "--kinds", "solid", "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "lesions.csv")))
    assert rows and {row["kind"] for row in rows} == {"solid"}
    assert all(20 <= float(row["diameter_mm"]) <= 24 for row in rows)
    for i, bad in enumerate((["--kinds", "tumour"], ["--lesion-mm", 10, 5], ["--lesions-per-scan", 3, 1])):
        target = tmp_path / f"bad{i}"
        r = cli("make-phantoms", "--out", target, "--normal", 0, "--abnormal", 1, "--slices", 4, "--matrix", 64, *bad)
        assert r.exit_code == 2 and "error:" in r.output, (bad, r.output)
        assert not target.exists()


def test_make_phantoms_read_only_or_full_disk(cli, one_error_line, tmp_path, read_only_fs):
    read_only_fs(tmp_path)
    r = cli("make-phantoms", "--out", tmp_path / "ph", "--normal", 1, "--abnormal", 0, "--slices", 2, "--matrix", 32)
    one_error_line(r, "Read-only file system", starts=tmp_path / "ph")
    assert list(tmp_path.iterdir()) == []


def test_make_phantoms_full_disk(cli, one_error_line, tmp_path, disk_full):
    r = cli("make-phantoms", "--out", tmp_path / "ph", "--normal", 1, "--abnormal", 0, "--slices", 2, "--matrix", 32)
    one_error_line(r, "No space left on device")
    assert not (tmp_path / "ph").exists()
