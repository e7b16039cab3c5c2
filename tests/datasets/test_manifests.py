"""Dataset manifests: schema validation, file-tree verification reports, patient-disjoint preparation."""

import copy
import csv
import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile

from aeanomaly.datasets.manifests import glob_regex, list_manifests, load_manifest, manifest_dir, schema_errors
from aeanomaly.datasets.verify import verify
from aeanomaly.datasets.prepare import output_names, prepare, split_patients
from aeanomaly.errors import ConfigError, DataManifestError, EmptyInputError

REQUIRED_IDS = {"luna16", "lidc-idri", "lits", "kits23", "btcv", "flare22", "msd-task03-liver", "msd-task06-lung",
                "msd-task09-spleen", "msd-task10-colon", "kmader-lungs", "aeanomaly-phantoms"}
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def save_nii(path, data_xyz, dtype=np.int16):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data_xyz, dtype=dtype), AFFINE), str(path))


def ct_volume(rng, nz=4):
    return rng.integers(-1000, 400, size=(32, 32, nz)).astype(np.int16)


@pytest.fixture
def msd_liver(tmp_path, rng):
    """Task03_Liver-like tree: liver_0 (tumour in slices 1-2), liver_1 (liver only), liver_2 (tumour in slice 3)."""
    root = tmp_path / "Task03_Liver"
    (root / "dataset.json").parent.mkdir(parents=True)
    (root / "dataset.json").write_text("{}")
    tumour_slices = {0: [1, 2], 1: [], 2: [3]}
    for n, zs in tumour_slices.items():
        save_nii(root / "imagesTr" / f"liver_{n}.nii.gz", ct_volume(rng))
        lab = np.zeros((32, 32, 4), np.uint8)
        lab[8:24, 8:24, :] = 1
        for z in zs:
            lab[12:16, 12:16, z] = 2
        save_nii(root / "labelsTr" / f"liver_{n}.nii.gz", lab, np.uint8)
    (root / "labelsTr" / "._liver_0.nii.gz").write_bytes(b"macOS resource fork")  # hidden: ignored
    return root, tumour_slices


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from aeanomaly.datasets.synthetic import write_phantom_set

    out = tmp_path_factory.mktemp("manifest_phantoms") / "ph"
    write_phantom_set(out, 4, 4, region="chest", seed=3, shape=(4, 48, 48), spacing=(6.0, 7.0, 7.0), size_mm=(15, 25))
    return out


# --------------------------------------------------------------------------------------------
# manifests and schema
# --------------------------------------------------------------------------------------------

def test_every_manifest_validates_against_the_schema():
    schema = json.loads((manifest_dir() / "schema.json").read_text())
    assert schema["$schema"].endswith("2020-12/schema")
    ms = list_manifests()
    ids = [m["id"] for m in ms]
    assert len(ids) == len(set(ids)) and REQUIRED_IDS <= set(ids)
    for m in ms:
        raw = json.loads(open(m["_path"]).read())
        assert schema_errors(raw, schema) == [], m["id"]
        assert m["download"] and m["license"] and m["citation"]
    by_id = {m["id"]: m for m in ms}
    assert by_id["lits"]["normal_abnormal"]["abnormal_labels"] == [2]
    assert by_id["msd-task06-lung"]["normal_abnormal"]["units"] == ["scan", "slice"]
    assert by_id["luna16"]["normal_abnormal"]["rule"] == "annotations_csv"
    assert by_id["kmader-lungs"]["normal_abnormal"]["rule"] == "all_normal"
    assert by_id["lidc-idri"]["normal_abnormal"]["rule"] == "external"
    # checksums only where published (MSD archives, md5 as MONAI checks them)
    with_sums = {m["id"] for m in ms if m.get("files")}
    assert with_sums == {"msd-task03-liver", "msd-task06-lung", "msd-task09-spleen", "msd-task10-colon"}


def test_schema_errors_name_the_json_path():
    good = load_manifest("lits")
    good = {k: v for k, v in good.items() if k != "_path"}
    schema = json.loads((manifest_dir() / "schema.json").read_text())
    cases = [
        (("layouts", 0, "images"), "volume-*.nii", "$.layouts[0].images: expected array, got str"),
        (("dimensionality",), "4d", "$.dimensionality: '4d' is not one of ['2d', '3d']"),
        (("expected", "images"), -1, "$.expected.images: -1 is below the minimum 0"),
        (("expected", "images"), True, "$.expected.images: expected integer, got bool"),
        (("id",), "Bad Id", "$.id: 'Bad Id' does not match"),
        (("normal_abnormal", "colour"), "red", "$.normal_abnormal: unknown key 'colour'"),
    ]
    for keys, value, msg in cases:
        m = copy.deepcopy(good)
        target = m
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
        errors = schema_errors(m, schema)
        assert any(e.startswith(msg) for e in errors), (msg, errors)
    m = copy.deepcopy(good)
    del m["citation"]
    assert "$: missing required key 'citation'" in schema_errors(m, schema)


@pytest.mark.parametrize("edit, msg", [
    (lambda m: m["patient_id"].update(regex="(unclosed"), "$.patient_id.regex: invalid regex"),
    (lambda m: m["layouts"][0]["labels"].update(template="{dir}/segmentation-{number}.nii"),
     "$.layouts[0].labels.template: unknown placeholder(s) ['number']"),
    (lambda m: m["normal_abnormal"].update(abnormal_labels=[]), "rule label_values needs abnormal_labels"),
    (lambda m: m["normal_abnormal"].update(abnormal_labels=[7]), "$.normal_abnormal.abnormal_labels: 7 is not in"),
    (lambda m: m["expected_ids"].update(group="case"), "has no group 'case'"),
])
def test_invalid_manifest_file_is_refused_with_its_json_path(tmp_path, edit, msg):
    m = {k: v for k, v in load_manifest("lits").items() if k != "_path"}
    edit(m)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(m))
    with pytest.raises(DataManifestError) as err:
        load_manifest(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: invalid manifest: ") and msg in text


def test_load_manifest_by_id_stem_path_and_refusals(tmp_path):
    assert load_manifest("LITS")["id"] == "lits" and load_manifest("lits.json")["id"] == "lits"
    by_path = load_manifest(manifest_dir() / "kits23.json")
    assert by_path["id"] == "kits23" and by_path["_path"].endswith("kits23.json")
    with pytest.raises(DataManifestError, match=r"unknown manifest 'nope'; known: aeanomaly-phantoms, btcv"):
        load_manifest("nope")
    with pytest.raises(DataManifestError, match="manifest file does not exist"):
        load_manifest(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(DataManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "broken.json")


def test_manifest_dir_follows_the_environment(tmp_path, monkeypatch):
    shutil.copy(manifest_dir() / "schema.json", tmp_path / "schema.json")
    shutil.copy(manifest_dir() / "lits.json", tmp_path / "lits.json")
    monkeypatch.setenv("AEANOMALY_MANIFESTS", str(tmp_path))
    assert manifest_dir() == tmp_path
    assert [m["id"] for m in list_manifests()] == ["lits"]
    with pytest.raises(DataManifestError, match="known: lits$"):
        load_manifest("kits23")


def test_glob_regex():
    g = glob_regex("**/Training/img/img*.nii.gz")
    assert g.match("Training/img/img0001.nii.gz") and g.match("a/RawData/Training/img/img0001.nii.gz")
    assert not g.match("Training/img/sub/img0001.nii.gz") and not g.match("Training/img/img0001.nii")
    s = glob_regex("subset[0-9]/*.mhd")
    assert s.match("subset3/1.2.3.mhd") and not s.match("subsetA/1.mhd") and not s.match("subset3/a/1.mhd")
    assert glob_regex("img?.tif").match("img1.tif") and not glob_regex("img?.tif").match("img12.tif")


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------

def test_verify_msd_tree_reports_counts_ids_missing_and_unpaired(msd_liver):
    root, _ = msd_liver
    rep = verify("msd-task03-liver", root)
    assert rep.layout == "msd" and not rep.ok
    assert rep.counts["images"] == (3, 131) and rep.counts["pairs"] == (3, 131) and rep.counts["patients"] == (3, None)
    text = "\n".join(rep.lines())
    assert "images       found      3   expected    131   MISSING 128" in text
    assert "absent case ids (128):" in text and "3, 4, 5" in text
    assert "for a partial copy, verify with subset=True" in text
    assert text.endswith("result: FAILED (4 problems)")
    sub = verify("msd-task03-liver", root, subset=True)
    assert sub.ok and sub.lines()[-1] == "result: OK" and "subset (3 of 131)" in "\n".join(sub.lines())
    # break the tree: a label without image, an image without label, the dataset.json gone
    shutil.copy(root / "labelsTr" / "liver_1.nii.gz", root / "labelsTr" / "liver_7.nii.gz")
    (root / "labelsTr" / "liver_2.nii.gz").unlink()
    (root / "dataset.json").unlink()
    rep = verify("msd-task03-liver", root, subset=True)
    text = "\n".join(rep.lines())
    assert not rep.ok
    assert "missing files (2):\n  labelsTr/liver_2.nii.gz (label of imagesTr/liver_2.nii.gz)\n  dataset.json (required file)" in text
    assert "unpaired labels (no image) (1):\n  labelsTr/liver_7.nii.gz" in text
    assert "._liver_0" not in text
    assert rep.counts["labels"] == (3, 131) and rep.counts["pairs"] == (2, 131)
    assert text.endswith("result: FAILED (3 problems)")


def test_verify_follows_symlinked_folders_once(msd_liver, tmp_path):
    root, _ = msd_liver
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("imagesTr", "labelsTr", "dataset.json"):
        (linked / name).symlink_to(root / name)
    (linked / "imagesTr" / "loop").symlink_to(linked)  # a cycle must not hang the walk
    rep = verify("msd-task03-liver", linked, subset=True)
    assert rep.ok and rep.counts["pairs"] == (3, 131)


def test_verify_deep_finds_unreadable_files_shapes_and_label_values(tmp_path, rng):
    root = tmp_path / "lungs"
    for d in ("2d_images", "2d_masks"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        tifffile.imwrite(root / "2d_images" / f"ID_000{i}_Z_0010.tif", rng.integers(-1000, 500, (512, 512)).astype(np.int16))
        mask = np.zeros((512, 512), np.uint8)
        mask[100:300, 100:200] = 255
        tifffile.imwrite(root / "2d_masks" / f"ID_000{i}_Z_0010.tif", mask)
    assert verify("kmader-lungs", root, subset=True, deep=True).ok
    tifffile.imwrite(root / "2d_images" / "ID_0001_Z_0010.tif", np.zeros((64, 64), np.int16))
    m7 = np.zeros((512, 512), np.uint8)
    m7[:10, :10] = 7
    tifffile.imwrite(root / "2d_masks" / "ID_0002_Z_0010.tif", m7)
    (root / "2d_images" / "ID_0003_Z_0010.tif").write_bytes(b"II*\x00 truncated")
    shutil.copy(root / "2d_masks" / "ID_0000_Z_0010.tif", root / "2d_masks" / "ID_0003_Z_0010.tif")
    rep = verify("kmader-lungs", root, subset=True, deep=True)
    text = "\n".join(rep.lines())
    assert rep.layout == "kaggle" and not rep.ok
    assert "unreadable files (1):\n  2d_images/ID_0003_Z_0010.tif: corrupt or truncated TIFF file" in text
    assert "2d_images/ID_0001_Z_0010.tif: 64×64 pixels, expected 512×512" in text
    assert "2d_masks/ID_0001_Z_0010.tif: shape (1, 512, 512) (z, y, x) differs from 2d_images/ID_0001_Z_0010.tif (1, 64, 64)" in text
    assert "2d_masks/ID_0002_Z_0010.tif: label values [7] are not in the label map" in text
    # without --deep only the file tree is checked: all of this passes
    assert verify("kmader-lungs", root, subset=True).ok


def test_verify_picks_the_layout_that_finds_images(tmp_path):
    root = tmp_path / "btcv"
    for n in (1, 2):
        for sub, stem in (("imagesTr", "img"), ("labelsTr", "label")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"{stem}{n:04d}.nii.gz").write_bytes(b"x")
    rep = verify("btcv", root, subset=True)
    assert rep.layout == "monai" and rep.ok and rep.counts["pairs"] == (2, 30)
    assert rep.missing_ids == [3, 4, 5, 6, 7, 8, 9, 10] + list(range(21, 41))
    nested = tmp_path / "syn" / "RawData" / "Training"
    for sub, stem in (("img", "img"), ("label", "label")):
        (nested / sub).mkdir(parents=True)
        (nested / sub / f"{stem}0021.nii.gz").write_bytes(b"x")
    (nested / "img" / "img0099.nii.gz").write_bytes(b"")
    rep = verify("btcv", tmp_path / "syn", subset=True)
    text = "\n".join(rep.lines())
    assert rep.layout == "synapse" and not rep.ok
    assert "RawData/Training/label/label0099.nii.gz (label of RawData/Training/img/img0099.nii.gz)" in text
    assert "RawData/Training/img/img0099.nii.gz: empty file" in text
    assert "case ids outside the published ranges: 99" in text
    with pytest.raises(DataManifestError, match="manifest btcv has no layout 'x'; it has: synapse, monai"):
        verify("btcv", root, layout="x")
    with pytest.raises(DataManifestError, match="dataset folder does not exist"):
        verify("btcv", tmp_path / "nowhere")


def test_verify_luna16_companions_and_annotations(tmp_path):
    root = tmp_path / "luna"
    uids = ["1.3.6.1.4.1.14519.5.2.1.6279.6001.100", "1.3.6.1.4.1.14519.5.2.1.6279.6001.200"]
    (root / "subset0").mkdir(parents=True)
    for u in uids:
        (root / "subset0" / f"{u}.mhd").write_text("ObjectType = Image\n")
    (root / "subset0" / f"{uids[0]}.raw").write_bytes(b"\0" * 8)
    rep = verify("luna16", root, subset=True)
    text = "\n".join(rep.lines())
    assert f"subset0/{uids[1]}.raw (companion file)" in text
    assert "annotations.csv or CSVFILES/annotations.csv (annotations file)" in text
    (root / "subset0" / f"{uids[1]}.raw").write_bytes(b"\0" * 8)
    (root / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{uids[0]},1,2,3,5.5\n{uids[0]},4,5,6,7.0\n1.3.6.999,0,0,0,4\n")
    rep = verify("luna16", root, subset=True)
    assert rep.ok, rep.lines()
    assert rep.counts["annotations"] == (3, 1186) and rep.counts["abnormal"] == (1, 601)
    assert rep.counts["patients"] == (2, None)
    assert "1 annotated scan(s) of annotations.csv are not in the folder" in "\n".join(rep.lines())
    with pytest.raises(EmptyInputError, match="nothing written for luna16.*corrupt MetaImage header: no ElementDataFile"):
        prepare("luna16", root, tmp_path / "out")  # the placeholder headers are unreadable
    assert not (tmp_path / "out").exists()


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


def test_verify_checks_published_checksums(tmp_path):
    root = tmp_path / "data" / "Task"
    root.mkdir(parents=True)
    archive = tmp_path / "data" / "Task.tar"
    archive.write_bytes(b"archive bytes")
    tifffile.imwrite(root / "a.tif", np.zeros((40, 40), np.int16))
    m = {k: v for k, v in load_manifest("kmader-lungs").items() if k not in ("_path", "expected")}
    m["layouts"] = [{"name": "flat", "images": ["*.tif"]}]
    m["normal_abnormal"] = {"rule": "all_normal", "description": "all normal"}
    m["patient_id"] = {"regex": "(.*)"}
    del m["image_shape"]
    m["files"] = [{"path": "Task.tar", "kind": "archive", "md5": hashlib.md5(b"archive bytes").hexdigest(),
                   "size_bytes": 13, "source": "test"}, {"path": "other.zip", "kind": "archive", "md5": "0" * 32, "source": "t"}]
    rep = verify(m, root, checksums=True)
    assert rep.ok and "Task.tar: md5 ok" in rep.info and "other.zip: not present, checksum not checked" in rep.info
    m["files"][0]["md5"] = "f" * 32
    rep = verify(m, root, checksums=True)
    assert not rep.ok and rep.checksum_problems == [f"{archive}: md5 {hashlib.md5(b'archive bytes').hexdigest()}, "
                                                    f"published {'f' * 32}"]
    assert verify(m, root).ok  # hashing only on request


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------

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


UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"
EXAMPLE_TREES = {  # manifest id -> (files of a minimal copy as published, images found, pairs found)
    "luna16": ([f"subset0/{UID}.mhd", f"subset0/{UID}.raw", "annotations.csv"], 1, None),
    "lidc-idri": (["LIDC-IDRI-0001/1.3.6.1.4.1.14519.5.2.1.6279.6001.2988/1.3.6.1.4.1.14519.5.2.1.6279.6001.1790/1-001.dcm"],
                  1, None),
    "lits": (["Training Batch 1/volume-0.nii", "Training Batch 1/segmentation-0.nii", "Training Batch 2/volume-28.nii",
              "Training Batch 2/segmentation-28.nii"], 2, 2),
    "kits23": (["dataset/case_00000/imaging.nii.gz", "dataset/case_00000/segmentation.nii.gz",
                "dataset/case_00000/instances/tumor_instance-1_annotation-1.nii.gz"], 1, 1),
    "btcv": (["RawData/Training/img/img0001.nii.gz", "RawData/Training/label/label0001.nii.gz",
              "RawData/Testing/img/img0061.nii.gz"], 1, 1),
    "flare22": (["FLARE22Train/images/FLARE22_Tr_0001_0000.nii.gz", "FLARE22Train/labels/FLARE22_Tr_0001.nii.gz"], 1, 1),
    "msd-task03-liver": (["imagesTr/liver_0.nii.gz", "labelsTr/liver_0.nii.gz", "imagesTs/liver_132.nii.gz",
                          "dataset.json"], 1, 1),
    "msd-task06-lung": (["imagesTr/lung_001.nii.gz", "labelsTr/lung_001.nii.gz", "dataset.json"], 1, 1),
    "msd-task09-spleen": (["imagesTr/spleen_2.nii.gz", "labelsTr/spleen_2.nii.gz", "dataset.json"], 1, 1),
    "msd-task10-colon": (["imagesTr/colon_001.nii.gz", "labelsTr/colon_001.nii.gz", "dataset.json"], 1, 1),
    "kmader-lungs": (["2d_images/ID_0000_Z_0142.tif", "2d_masks/ID_0000_Z_0142.tif"], 1, 1),
    "aeanomaly-phantoms": (["normal/phantom_0000.nii.gz", "abnormal/phantom_0001.nii.gz",
                            "masks/phantom_0001_mask.nii.gz", "labels.csv"], 2, 1),
}


@pytest.mark.parametrize("mid", sorted(EXAMPLE_TREES))
def test_each_manifest_finds_its_published_layout(mid, tmp_path):
    files, n_images, n_pairs = EXAMPLE_TREES[mid]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID},1,2,3,4\n" if f.endswith(".csv") else "x")
    assert {m["id"] for m in list_manifests()} == set(EXAMPLE_TREES)
    rep = verify(mid, tmp_path, subset=True)
    assert rep.ok, rep.lines()
    assert rep.counts["images"][0] == n_images and rep.counts["patients"][0] == 1 + (mid == "lits") + (mid == "aeanomaly-phantoms")
    if n_pairs is not None:
        assert rep.counts["pairs"][0] == n_pairs
    if mid == "luna16":
        assert rep.counts["abnormal"] == (1, 601) and rep.counts["annotations"] == (1, 1186)
