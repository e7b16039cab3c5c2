"""aeanomaly.datasets.prepare: patient-disjoint, stratified preparation of a dataset tree into the
labels.csv layout that fit and evaluate read (scan and slice units, masks, refusals)."""

import csv
import json

import numpy as np
import pytest

from aeanomaly.datasets.prepare import output_names, prepare, split_patients
from aeanomaly.datasets.verify import verify
from aeanomaly.errors import ConfigError, DataManifestError, EmptyInputError



@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from aeanomaly.datasets.synthetic import write_phantom_set

    out = tmp_path_factory.mktemp("manifest_phantoms") / "ph"
    write_phantom_set(out, 4, 4, region="chest", seed=3, shape=(4, 48, 48), spacing=(6.0, 7.0, 7.0), size_mm=(15, 25))
    return out


def test_prepare_luna16_reads_metaimage_and_brings_the_raw_files(tmp_path, write_mhd):
    from aeanomaly.io import load_scan

    root = tmp_path / "luna"
    uids = [f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{n}" for n in (101, 202, 303, 404)]
    rng = np.random.default_rng(0)
    vols = {}
    for i, u in enumerate(uids):
        vols[u] = rng.normal(-700, 150, (4, 40, 40)).round().astype(np.int16)
        write_mhd(root / f"subset{i % 2}" / f"{u}.mhd", vols[u])
    (root / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                                          f"{uids[1]},1,2,3,5.5\n{uids[3]},4,5,6,7.0\n")
    res = prepare("luna16", root, tmp_path / "out")
    assert not res.skipped
    rows = read_rows(tmp_path / "out" / "labels.csv")
    by_uid = {r["scan"].split("/")[-1][: -len(".mhd")]: r for r in rows}
    assert set(by_uid) == set(uids)
    assert {u for u, r in by_uid.items() if r["label"] == "abnormal"} == {uids[1], uids[3]}
    for u, r in by_uid.items():
        scan = load_scan(tmp_path / "out" / r["scan"])  # the copied header finds its copied .raw
        np.testing.assert_array_equal(np.sort(scan.hu.ravel()), np.sort(vols[u].ravel().astype(np.float32)))


def test_split_patients_is_disjoint_stratified_and_seeded():
    has = {f"p{i:02d}": i < 6 for i in range(20)}
    side = split_patients(has, 0.2, seed=4)
    val = {p for p, s in side.items() if s == "val"}
    assert len(val) == 4 and sum(has[p] for p in val) == 1  # round(.2*6)=1 abnormal, round(.2*14)=3 normal
    assert split_patients(has, 0.2, seed=4) == side and split_patients(has, 0.2, seed=5) != side
    assert set(split_patients(has, 0.0).values()) == {"train"}
    tiny = split_patients({"a": True, "b": False}, 0.1)
    assert sorted(tiny.values()) == ["train", "val"]
    assert sorted(split_patients({"a": True, "b": False}, 0.9).values()) == ["train", "val"]


def test_output_names_are_unique_and_short():
    assert output_names(["dataset/case_00000/imaging.nii.gz", "dataset/case_00001/imaging.nii.gz"]) == [
        "case_00000_imaging", "case_00001_imaging"]
    assert output_names(["Training Batch 1/volume-0.nii", "images/ID_0000_Z_0142.tif"]) == ["volume-0", "ID_0000_Z_0142"]
    assert output_names(["a/x.nii", "a/x.nii.gz"]) == ["a_x", "a_x_2"]


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_prepare_phantoms_patient_disjoint_split_matches_files(phantoms, tmp_path):
    from aeanomaly.io import find_scans, load_label, load_scan

    src_before = sorted((p.relative_to(phantoms), p.stat().st_mtime_ns) for p in phantoms.rglob("*"))
    out = tmp_path / "prep"
    res = prepare("aeanomaly-phantoms", phantoms, out, seed=2, val_fraction=0.5)
    assert sorted((p.relative_to(phantoms), p.stat().st_mtime_ns) for p in phantoms.rglob("*")) == src_before
    rows = read_rows(out / "labels.csv")
    assert list(rows[0]) == ["scan", "label", "patient", "mask", "split"]
    assert res.counts == {"normal": {"train": 2, "val": 2}, "abnormal": {"train": 2, "val": 2}}
    assert res.patients == {"train": 4, "val": 4} and res.skipped == []
    sides = {}
    for r in rows:
        sides.setdefault(r["patient"], set()).add(r["split"])
        assert r["scan"].startswith(f"{r['label']}/{r['split']}/")
        src = phantoms / r["label"] / r["scan"].split("/")[-1]
        assert (out / r["scan"]).read_bytes() == src.read_bytes()  # copied unchanged
        if r["label"] == "abnormal":
            mask = load_label(out / r["mask"], like=load_scan(out / r["scan"]))
            truth = load_label(phantoms / "masks" / r["mask"].split("/")[-1]) > 0
            assert mask.dtype == np.uint8 and np.array_equal(mask > 0, truth) and truth.any()
        else:
            assert r["mask"] == ""
    assert all(len(s) == 1 for s in sides.values())  # no patient on two sides
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz") if not p.name.endswith("_mask.nii.gz")}
    assert files == {r["scan"] for r in rows}
    assert read_rows(out / "labels_val.csv") == [r for r in rows if r["split"] == "val"]
    info = json.loads((out / "prepare.json").read_text())
    assert info["manifest"] == "aeanomaly-phantoms" and info["seed"] == 2 and info["source_root"] == str(phantoms.resolve())
    assert info["counts"] == res.counts and info["layout"] == "phantoms" and info["unit"] == "scan"
    # what fit and evaluate read
    assert [p.name for p in find_scans(out / "normal" / "train")] == sorted(
        r["scan"].split("/")[-1] for r in rows if r["label"] == "normal" and r["split"] == "train")
    from aeanomaly.io.labels import find_mask, read_labels_csv
    items = read_labels_csv(out / "labels_val.csv")
    assert sorted(y for _, y, _ in items) == [0, 0, 1, 1]
    for scan, y, mask in items:
        assert scan.is_file() and (mask is not None) == bool(y)
        if y:
            assert find_mask(scan, out / "masks") == mask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written


def test_prepare_slices_labels_each_slice_and_keeps_geometry(msd_liver, tmp_path):
    from aeanomaly.io import load_label, load_scan

    root, tumour = msd_liver
    out = tmp_path / "slices"
    res = prepare("msd-task03-liver", root, out, unit="slice")
    rows = read_rows(out / "labels.csv")
    assert len(rows) == 12 and res.counts["abnormal"]["train"] == 3 and res.counts["normal"]["train"] == 9
    for n, zs in tumour.items():
        got = sorted(int(r["scan"].split("_z")[1][:4]) for r in rows if r["label"] == "abnormal"
                     and r["patient"] == str(n))
        assert got == zs
    src = load_scan(root / "imagesTr" / "liver_0.nii.gz")
    r = next(r for r in rows if r["scan"].endswith("liver_0_z0002.nii.gz"))
    sl = load_scan(out / r["scan"])
    assert sl.shape == (1, 32, 32) and np.array_equal(sl.hu[0], src.hu[2]) and sl.spacing == src.spacing
    np.testing.assert_allclose(sl.affine[:3, 3], (src.affine @ [0, 0, 2, 1])[:3])
    mask = load_label(out / r["mask"], like=sl)
    assert mask.sum() == 16 and mask.max() == 1
    # scan unit: liver_1 has no tumour voxel, so it is the one normal volume
    res = prepare("msd-task03-liver", root, tmp_path / "scans", val_fraction=0.3)
    rows = read_rows(tmp_path / "scans" / "labels.csv")
    assert sorted((r["patient"], r["label"]) for r in rows) == [("0", "abnormal"), ("1", "normal"), ("2", "abnormal")]
    assert res.patients["val"] == 1


def test_prepare_skips_images_without_required_label(msd_liver, tmp_path):
    root, _ = msd_liver
    (root / "labelsTr" / "liver_2.nii.gz").unlink()
    res = prepare("msd-task03-liver", root, tmp_path / "o")
    assert res.skipped == ["imagesTr/liver_2.nii.gz: label labelsTr/liver_2.nii.gz is missing"]
    assert sum(res.counts["normal"].values()) + sum(res.counts["abnormal"].values()) == 2


def test_prepare_refusals(msd_liver, tmp_path):
    root, _ = msd_liver
    with pytest.raises(DataManifestError, match="lidc-idri: normal/abnormal cannot be derived"):
        prepare("lidc-idri", root, tmp_path / "a")
    with pytest.raises(DataManifestError, match="no abnormality labels; pass assume_normal=True"):
        prepare("msd-task09-spleen", root, tmp_path / "a")
    with pytest.raises(ConfigError, match="val-fraction must be in"):
        prepare("msd-task03-liver", root, tmp_path / "a", val_fraction=1.0)
    with pytest.raises(ConfigError, match="must be outside the dataset folder"):
        prepare("msd-task03-liver", root, root / "prepared")
    with pytest.raises(ConfigError, match="must be outside the dataset folder"):
        prepare("msd-task03-liver", root, root.parent)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not empty; pass --overwrite"):
        prepare("msd-task03-liver", root, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").exists()
    with pytest.raises(EmptyInputError, match="no images of msd-task06-lung found"):
        prepare("msd-task06-lung", root, tmp_path / "a")
    with pytest.raises(ConfigError, match="supports unit"):
        prepare("kmader-lungs", root, tmp_path / "a", unit="slice")
    assert not (tmp_path / "a").exists()
    prepare("msd-task03-liver", root, tmp_path / "full", overwrite=True)
    assert not (tmp_path / "full" / "keep.txt").exists() and (tmp_path / "full" / "labels.csv").is_file()


def test_prepare_assume_normal_uses_every_scan(msd_liver, tmp_path):
    root, _ = msd_liver
    for p in (root / "imagesTr").iterdir():
        p.rename(p.with_name(p.name.replace("liver", "spleen")))
    for p in (root / "labelsTr").glob("liver_*"):
        p.rename(p.with_name(p.name.replace("liver", "spleen")))
    res = prepare("msd-task09-spleen", root, tmp_path / "sp", assume_normal=True)
    assert res.counts == {"normal": {"train": 3, "val": 0}, "abnormal": {"train": 0, "val": 0}}
    assert json.loads((tmp_path / "sp" / "prepare.json").read_text())["caveat"].startswith("MSD Spleen scans come")


@pytest.mark.realdata
def test_verify_and_prepare_kmader_shared_copy(shared_data, tmp_path):
    root = shared_data / "kmader-lungs-512"
    rep = verify("kmader-lungs", root, subset=True, deep=True)
    assert rep.ok, rep.lines()
    assert rep.layout == "images-masks" and rep.counts["pairs"] == (17, 267) and rep.counts["patients"] == (17, None)
    full = verify("kmader-lungs", root)
    assert not full.ok and "  pairs        found     17   expected    267   MISSING 250" in full.lines()
    res = prepare("kmader-lungs", root, tmp_path / "k", val_fraction=0.2, seed=0)
    assert res.counts["abnormal"] == {"train": 0, "val": 0}
    assert res.counts["normal"]["train"] + res.counts["normal"]["val"] == 17 and res.counts["normal"]["val"] == 3
    row = read_rows(tmp_path / "k" / "labels.csv")[0]
    assert (tmp_path / "k" / row["scan"]).read_bytes() == (root / "images" / row["scan"].split("/")[-1]).read_bytes()
