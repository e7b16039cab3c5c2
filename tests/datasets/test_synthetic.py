"""aeanomaly.datasets.synthetic: the Phantom container and make_phantom (grid, affine, seeds, arguments),
organ masks, and phantom data sets on disk. What the anatomy looks like is tested in test_anatomy.py,
lesion injection in test_lesions.py."""

from __future__ import annotations

import csv
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from aeanomaly.datasets import LUNG_KINDS, make_phantom, organ_mask, write_phantom_set
from aeanomaly.datasets.synthetic import BONE, KIDNEY, LIVER, LUNG, SPLEEN, VESSEL
from aeanomaly.errors import ConfigError
from aeanomaly.io.scan import internal_affine, spacing_from_affine

SHAPE, SPACING = (12, 96, 96), (5.0, 3.6, 3.6)  # the default 350 mm field of view on a smaller grid


@pytest.fixture(scope="module")
def chest():
    return make_phantom("chest", SHAPE, SPACING, rng=1)


# ----------------------------------------------------------------------------------------------- phantom


def test_phantom_arrays_grid_and_affine(chest):
    assert chest.hu.shape == SHAPE and chest.hu.dtype == np.float32
    assert chest.labels.shape == SHAPE and chest.labels.dtype == np.uint8
    assert chest.spacing == SPACING and chest.region == "chest"
    assert spacing_from_affine(chest.affine) == pytest.approx(SPACING)
    np.testing.assert_allclose(chest.affine[:3, :3], internal_affine(SPACING)[:3, :3])
    # the volume is centred in-plane: voxel centre (47.5, 47.5) maps to RAS x = y = 0
    centre = chest.affine @ np.array([(SHAPE[2] - 1) / 2, (SHAPE[1] - 1) / 2, 0, 1])
    assert centre[:2] == pytest.approx([0, 0], abs=1e-6)
    assert np.isfinite(chest.hu).all()
    scan = chest.as_scan()
    assert scan.hu.shape == SHAPE and scan.is_hu and scan.spacing == SPACING
    assert scan.hu is not chest.hu


def test_deterministic_for_seed_and_varies_between_subjects():
    a = make_phantom("chest", SHAPE, SPACING, rng=7)
    b = make_phantom("chest", SHAPE, SPACING, rng=np.random.default_rng(7))
    c = make_phantom("chest", SHAPE, SPACING, rng=8)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    lung_a, lung_c = (a.labels == LUNG).sum(), (c.labels == LUNG).sum()
    body_a, body_c = (a.labels != 0).sum(), (c.labels != 0).sum()
    assert abs(lung_a - lung_c) / lung_a > 0.02 or abs(body_a - body_c) / body_a > 0.02
    assert np.mean(a.labels != c.labels) > 0.05


def test_any_grid_and_fast():
    t0 = time.perf_counter()
    ph = make_phantom("abdomen", (24, 128, 128), (5.0, 2.7, 2.7), rng=0)
    assert time.perf_counter() - t0 < 5.0
    one = make_phantom("chest", (1, 64, 64), (1.0, 5.4, 5.4), rng=0)
    assert one.hu.shape == (1, 64, 64) and (one.labels == LUNG).any()
    assert (ph.labels == LIVER).any()


@pytest.mark.parametrize("kwargs, match", [(dict(region="pelvis"), "pelvis"), (dict(shape=(0, 8, 8)), "shape"),
                                           (dict(spacing=(1, -1, 1)), "spacing")])
def test_phantom_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_phantom(**kwargs)


def test_organ_mask_lung_takes_in_its_vessels_and_other_organs_are_their_label(chest):
    lung = organ_mask(chest.labels, "lung")
    assert lung.dtype == bool and lung.shape == SHAPE
    assert (lung & (chest.labels == LUNG)).sum() == (chest.labels == LUNG).sum()  # all parenchyma
    extra = lung & (chest.labels != LUNG)
    assert extra.any() and (chest.labels[extra] == VESSEL).all()  # plus vessels and airways, nothing else
    assert not (lung & (chest.labels == BONE)).any()
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 2:4, 2:4], labels[1, 5:7, 5:7] = LIVER, KIDNEY
    for organ, label in (("liver", LIVER), ("kidney", KIDNEY), ("spleen", SPLEEN)):
        np.testing.assert_array_equal(organ_mask(labels, organ), labels == label)
    with pytest.raises(ConfigError, match="unknown organ 'heart'"):
        organ_mask(labels, "heart")


# ----------------------------------------------------------------------------------------------- data set

SMALL, SMALL_SPACING = (6, 64, 64), (5.0, 5.4, 5.4)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_write_phantom_set_files_roundtrip(tmp_path):
    out = tmp_path / "set"
    labels = write_phantom_set(out, 2, 2, region="chest", seed=3, shape=SMALL, spacing=SMALL_SPACING,
                               lesions_per_scan=(1, 2), size_mm=(10, 16))
    assert labels == out / "labels.csv"
    rows = _read_csv(labels)
    assert list(rows[0]) == ["scan", "label", "region", "n_lesions", "kinds", "mask"]
    assert [r["scan"] for r in rows] == ["normal/phantom_0000.nii.gz", "normal/phantom_0001.nii.gz",
                                         "abnormal/phantom_0002.nii.gz", "abnormal/phantom_0003.nii.gz"]
    assert [r["label"] for r in rows] == ["normal", "normal", "abnormal", "abnormal"]
    lesions = _read_csv(out / "lesions.csv")
    for i, row in enumerate(rows):
        img = nib.load(out / row["scan"])
        data = np.asarray(img.dataobj).transpose(2, 1, 0)
        assert data.shape == SMALL and img.get_data_dtype() == np.int16
        group, j = (0, i) if row["label"] == "normal" else (1, i - 2)
        ph = make_phantom("chest", SMALL, SMALL_SPACING, np.random.default_rng(np.random.SeedSequence(3, spawn_key=(group, j))))
        np.testing.assert_allclose(img.affine, ph.affine)
        if row["label"] == "normal":
            assert row["mask"] == "" and row["n_lesions"] == "0"
            assert np.abs(data - ph.hu).max() <= 0.5 + 1e-4
            continue
        mask_img = nib.load(out / row["mask"])
        mask = np.asarray(mask_img.dataobj).transpose(2, 1, 0)
        np.testing.assert_allclose(mask_img.affine, img.affine)
        mine = [r for r in lesions if r["scan"] == row["scan"]]
        assert int(row["n_lesions"]) == len(mine) == mask.max() >= 1
        assert row["kinds"].split(";") == [r["kind"] for r in mine]
        assert set(row["kinds"].split(";")) <= set(LUNG_KINDS)
        for k, r in enumerate(mine, start=1):
            centre = (int(r["centre_z"]), int(r["centre_y"]), int(r["centre_x"]))
            assert mask[centre] == k and (mask == k).sum() == int(r["voxels"])
            assert ph.labels[centre] in (LUNG, VESSEL)  # chest lesions go in the lungs
        for k in range(1, mask.max() + 1):  # every lesion is in the HU written
            assert np.abs(data - ph.hu)[mask == k].mean() > 100
        # away from the lesions the HU are the phantom's: rounding plus sub-HU lesion tails at most
        far = ndi.distance_transform_edt(mask == 0, sampling=SMALL_SPACING) > 15.0  # mm
        assert np.abs(data - ph.hu)[far].max() <= 1.0


def test_write_phantom_set_subjects_stable_and_refuses_existing(tmp_path):
    a = write_phantom_set(tmp_path / "a", 1, 1, region="abdomen", seed=5, shape=SMALL, spacing=SMALL_SPACING,
                          kinds=["hyperdense"]).parent
    b = write_phantom_set(tmp_path / "b", 2, 1, region="abdomen", seed=5, shape=SMALL, spacing=SMALL_SPACING,
                          kinds=["hyperdense"]).parent
    load = lambda p: np.asarray(nib.load(p).dataobj)  # noqa: E731
    np.testing.assert_array_equal(load(a / "normal/phantom_0000.nii.gz"), load(b / "normal/phantom_0000.nii.gz"))
    np.testing.assert_array_equal(load(a / "abnormal/phantom_0001.nii.gz"), load(b / "abnormal/phantom_0002.nii.gz"))
    assert {r["kinds"] for r in _read_csv(a / "labels.csv")} <= {"", "hyperdense", "hyperdense;hyperdense",
                                                                  "hyperdense;hyperdense;hyperdense"}
    assert {r["organ"] for r in _read_csv(a / "lesions.csv")} <= {"liver", "spleen", "kidney"}
    with pytest.raises(ConfigError, match="already exists") as err:
        write_phantom_set(a, 1, 0, shape=SMALL, spacing=SMALL_SPACING)
    assert str(a) in str(err.value)
    write_phantom_set(a, 1, 0, seed=9, shape=SMALL, spacing=SMALL_SPACING, overwrite=True)
    assert [r["scan"] for r in _read_csv(a / "labels.csv")] == ["normal/phantom_0000.nii.gz"]
    assert not (a / "abnormal").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp folders left behind
    with pytest.raises(ConfigError, match="unknown lesion kind"):
        write_phantom_set(tmp_path / "c", 1, 1, shape=SMALL, spacing=SMALL_SPACING, kinds=["tumour"])
    assert not (tmp_path / "c").exists()
