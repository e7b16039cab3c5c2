"""aeanomaly.datasets.verify: file-tree verification reports (counts, missing and unpaired files, deep
checks of readability, shapes and label values, published checksums)."""

import hashlib
import shutil

import numpy as np
import pytest
import tifffile

from aeanomaly.datasets.manifests import load_manifest
from aeanomaly.datasets.prepare import prepare
from aeanomaly.datasets.verify import verify
from aeanomaly.errors import DataManifestError, EmptyInputError



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
