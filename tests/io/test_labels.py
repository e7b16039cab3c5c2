"""aeanomaly/io/labels.py: labels.csv reading and mask pairing (the one implementation)."""

import csv
from pathlib import Path

import pytest

from aeanomaly.errors import ConfigError, ScanError
from aeanomaly.io.labels import LabeledScan, find_mask, gather_labeled, pair_masks, read_labels_csv


def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_read_labels_csv_binary_names_values_and_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "s1.nii.gz").write_bytes(b"")
    p = write_csv(tmp_path / "labels.csv", [["scan", "label", "mask"], ["s1.nii.gz", "abnormal", "m1.nii.gz"],
                                            ["s2.nii.gz", "0", ""], ["s3.nii.gz", "Normal", ""]])
    rows = read_labels_csv(p, images=tmp_path / "imgs")
    assert rows == [(tmp_path / "imgs" / "s1.nii.gz", 1, tmp_path / "m1.nii.gz"), (tmp_path / "s2.nii.gz", 0, None),
                    (tmp_path / "s3.nii.gz", 0, None)]
    assert isinstance(rows[0], LabeledScan) and rows[0].label == 1 and rows[0].mask == tmp_path / "m1.nii.gz"
    assert read_labels_csv(p)[0].scan == tmp_path / "s1.nii.gz"  # without --images: beside the CSV


def test_read_labels_csv_classes_and_column_aliases(tmp_path):
    p = write_csv(tmp_path / "l.csv", [["path", "class"], ["/abs/a.nii", "nodule"], ["b.nii", "2"], ["c.nii", "normal"]])
    rows = read_labels_csv(p, ["normal", "nodule", "mass"], [[0], [1], [2, 3]])
    assert [(str(r.scan), r.label) for r in rows] == [("/abs/a.nii", 1), (str(tmp_path / "b.nii"), 2),
                                                      (str(tmp_path / "c.nii"), 0)]


@pytest.mark.parametrize("rows, text", [
    ([["scan", "label"], ["a.nii", "tumour"]], "label 'tumour' of a.nii is none of the classes"),
    ([["scan", "label"], ["a.nii", "7"]], "none of the classes"),
    ([["scan", "label"], ["", "normal"]], "lacks a scan or label"),
    ([["scan", "label"]], "no rows in the labels file"),
    ([["image"], ["a.nii"]], "lacks a scan or label"),
])
def test_read_labels_csv_errors_name_the_file(tmp_path, rows, text):
    p = write_csv(tmp_path / "l.csv", rows)
    with pytest.raises(ConfigError, match=text) as info:
        read_labels_csv(p)
    assert info.value.path == str(p)


def test_read_labels_csv_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="cannot read labels") as info:
        read_labels_csv(tmp_path / "none.csv")
    assert info.value.path == str(tmp_path / "none.csv")
    (tmp_path / "bin.csv").write_bytes(b"scan,label\n\xff\xfe,\x00\n")
    with pytest.raises(ConfigError, match="cannot read labels"):
        read_labels_csv(tmp_path / "bin.csv")


def test_pair_masks_by_name_or_mask_suffix(tmp_path):
    (tmp_path / "m").mkdir()
    for name in ("a.nii.gz", "b_mask.nii.gz", "c.png", "e_mask.mhd", ".hidden.nii"):
        (tmp_path / "m" / name).write_bytes(b"")
    scans = [Path("x/a.nii.gz"), Path("x/b.nii.gz"), Path("x/c.nii.gz"), Path("x/d.nii.gz"), Path("y/e.nii"),
             Path("x/hidden.nii")]
    got = pair_masks(scans, tmp_path / "m")
    assert [g.name if g else None for g in got] == ["a.nii.gz", "b_mask.nii.gz", "c.png", None, "e_mask.mhd", None]
    assert find_mask(Path("z/b.nii"), tmp_path / "m") == tmp_path / "m" / "b_mask.nii.gz"
    with pytest.raises(ConfigError, match="masks folder does not exist"):
        pair_masks(scans, tmp_path / "nope")


def test_pair_masks_prefers_the_same_file_name(tmp_path):
    (tmp_path / "m").mkdir()
    for name in ("a_mask.nii.gz", "a.nii.gz"):
        (tmp_path / "m" / name).write_bytes(b"")
    assert find_mask("s/a.nii.gz", tmp_path / "m").name == "a.nii.gz"
    assert find_mask("s/a.npy", tmp_path / "m").name == "a_mask.nii.gz"


def test_gather_labeled_never_pairs_normal_scans_with_masks(tmp_path):
    for d in ("n", "a", "m"):
        (tmp_path / d).mkdir()
    for i in range(2):
        (tmp_path / "n" / f"scan_{i}.npy").write_bytes(b"")
        (tmp_path / "a" / f"scan_{i}.npy").write_bytes(b"")
        (tmp_path / "m" / f"scan_{i}_mask.npy").write_bytes(b"")
    items = gather_labeled([tmp_path / "n"], [tmp_path / "a"], masks_dir=tmp_path / "m")
    assert [(it.scan.parent.name, it.label, it.mask.name if it.mask else None) for it in items] == [
        ("n", 0, None), ("n", 0, None), ("a", 1, "scan_0_mask.npy"), ("a", 1, "scan_1_mask.npy")]
    p = write_csv(tmp_path / "labels.csv", [["scan", "label", "mask"], ["n/scan_0.npy", "normal", "m/scan_1_mask.npy"],
                                            ["a/scan_1.npy", "abnormal", ""]])
    items = gather_labeled(labels_csv=p, masks_dir=tmp_path / "m")
    assert items[0].mask == tmp_path / "m" / "scan_1_mask.npy"  # named in the file: used
    assert items[1].mask == tmp_path / "m" / "scan_1_mask.npy"
    with pytest.raises(ConfigError, match="no labelled scans"):
        gather_labeled()
    with pytest.raises(ScanError, match="nope"):
        gather_labeled([tmp_path / "nope"])
