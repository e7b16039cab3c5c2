"""aeanomaly.datasets.manifests: schema validation, loading, glob patterns, and every manifest finding its
published layout (verification reports are tested in test_verify.py, preparation in test_prepare.py)."""

import copy
import json
import shutil

import pytest

from aeanomaly.datasets.manifests import glob_regex, list_manifests, load_manifest, manifest_dir, schema_errors
from aeanomaly.datasets.verify import verify
from aeanomaly.errors import DataManifestError

REQUIRED_IDS = {"luna16", "lidc-idri", "lits", "kits23", "btcv", "flare22", "msd-task03-liver", "msd-task06-lung",
                "msd-task09-spleen", "msd-task10-colon", "kmader-lungs", "aeanomaly-phantoms"}


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
# the published layouts
# --------------------------------------------------------------------------------------------

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
