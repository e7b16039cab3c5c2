"""Synthetic CT phantoms, lesion injection and phantom data sets on disk."""

from __future__ import annotations

import csv
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from aeanomaly.datasets import (KINDS, LUNG_KINDS, SOFT_TISSUE_KINDS, inject_lesions, make_phantom, organ_mask,
                                write_phantom_set)
from aeanomaly.datasets.synthetic import BONE, FAT, KIDNEY, LIVER, LUNG, MUSCLE, SPLEEN, TABLE, VESSEL
from aeanomaly.errors import ConfigError
from aeanomaly.io.scan import internal_affine, spacing_from_affine

SHAPE, SPACING = (12, 96, 96), (5.0, 3.6, 3.6)  # the default 350 mm field of view on a smaller grid


@pytest.fixture(scope="module")
def chest():
    return make_phantom("chest", SHAPE, SPACING, rng=1)


@pytest.fixture(scope="module")
def abdomen():
    return make_phantom("abdomen", SHAPE, SPACING, rng=2)


def _core(labels, label):
    """Voxels of a label away from its in-plane border (free of partial volume)."""
    return ndi.binary_erosion(labels == label, np.ones((1, 3, 3), bool))


def _lung_like(shape=(9, 48, 48), noise=15.0, seed=0):
    rng = np.random.default_rng(seed)
    return (-850 + noise * rng.standard_normal(shape)).astype(np.float32)


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


@pytest.mark.parametrize("label, lo, hi", [(0, -1010, -990), (LUNG, -900, -780), (FAT, -125, -80),
                                           (MUSCLE, 35, 65), (BONE, 150, 1000)])
def test_chest_tissue_hu(chest, label, lo, hi):
    core = _core(chest.labels, label)
    assert core.sum() > 30
    assert lo < np.median(chest.hu[core]) < hi


@pytest.mark.parametrize("label, lo, hi", [(LIVER, 48, 72), (SPLEEN, 35, 60), (KIDNEY, 20, 42), (FAT, -125, -80)])
def test_abdomen_tissue_hu(abdomen, label, lo, hi):
    core = _core(abdomen.labels, label)
    assert core.sum() > 5
    assert lo < np.median(abdomen.hu[core]) < hi


def test_noise_is_ct_like_and_spatially_correlated(chest):
    air = _core(chest.labels, 0)
    noise = chest.hu[air] + 1000
    assert 8 < noise.std() < 28
    vol = np.where(air, chest.hu + 1000, np.nan)
    a, b = vol[:, :, :-1].ravel(), vol[:, :, 1:].ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.2  # neighbours share noise: not white


def test_orientation_liver_right_spine_posterior_table_below(abdomen):
    lab, nz, ny, nx = abdomen.labels, *SHAPE
    liver_x = np.argwhere(lab == LIVER)[:, 2].mean()
    spleen_x = np.argwhere(lab == SPLEEN)[:, 2].mean()
    assert liver_x < nx / 2 < spleen_x  # patient's right on the image's left
    spine = np.argwhere((lab == BONE)[:, :, nx // 2 - 3: nx // 2 + 3])
    assert spine[:, 1].mean() > ny / 2  # posterior = bottom of the image
    body_rows = np.nonzero(((lab != 0) & (lab != TABLE)).any(axis=(0, 2)))[0]
    table_rows = np.nonzero((lab == TABLE).any(axis=(0, 2)))[0]
    assert table_rows.min() > body_rows.max() - 2
    # and through the affine: the liver sits at RAS x > 0 (patient right)
    centroid = np.argwhere(lab == LIVER).mean(axis=0)[::-1]
    assert (abdomen.affine @ np.r_[centroid, 1])[0] > 0


def test_chest_anatomy(chest):
    lab, nx = chest.labels, SHAPE[2]
    lung_x = np.argwhere(lab == LUNG)[:, 2]
    assert 0.3 < (lung_x < nx / 2).mean() < 0.7  # two lungs
    assert (lab == VESSEL).sum() > 200  # vessel tree, airways, great vessels
    assert (lab == LIVER).sum() < 0.1 * (lab == LUNG).sum()
    # air inside the lungs' airways: some voxels well below the parenchyma near the mediastinum
    assert (chest.hu[lab == VESSEL] < -900).sum() > 5


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


def test_anatomy_changes_smoothly_along_z(chest):
    body = ((chest.labels != 0) & (chest.labels != TABLE)).sum(axis=(1, 2)).astype(float)
    assert np.max(np.abs(np.diff(body)) / body[1:]) < 0.1
    lung = (chest.labels == LUNG).sum(axis=(1, 2)).astype(float)
    inside = (chest.labels[:, :, :] == LUNG)
    overlap = (inside[1:] & inside[:-1]).sum(axis=(1, 2)) / np.maximum(lung[1:], 1)
    assert np.median(overlap) > 0.6


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


# ----------------------------------------------------------------------------------------------- lesions


def test_inject_is_pure_and_mask_matches_changes():
    hu = _lung_like()
    region = np.zeros(hu.shape, bool)
    region[2:7, 10:38, 10:38] = True
    hu0, region0 = hu.copy(), region.copy()
    new, mask, rec = inject_lesions(hu, region, (2.0, 1.0, 1.0), n_lesions=2, kinds=["solid"], size_mm=(6, 8), rng=0)
    np.testing.assert_array_equal(hu, hu0)
    np.testing.assert_array_equal(region, region0)
    assert new.dtype == np.float32 and mask.dtype == np.uint8 and new.shape == mask.shape == hu.shape
    assert sorted(np.unique(mask)) == [0, 1, 2] and len(rec) == 2
    changed = np.abs(new - hu) > 150
    assert changed[mask > 0].mean() > 0.95
    assert not (changed & ~ndi.binary_dilation(mask > 0, np.ones((3, 3, 3), bool))).any()
    far = ndi.distance_transform_edt(mask == 0, sampling=(2.0, 1.0, 1.0)) > 3.0  # mm from the lesion
    assert np.abs(new - hu)[far].max() < 5
    assert not (mask > 0)[~region].any()  # confined to the region
    for i, r in enumerate(rec, start=1):
        assert r["voxels"] == (mask == i).sum()
        assert region[r["centre_zyx"]] and mask[r["centre_zyx"]] == i
        assert r["delta_hu"] == pytest.approx((new - hu)[mask == i].mean(), abs=0.1)


def test_sizes_in_mm_with_anisotropic_spacing():
    spacing = (3.0, 0.8, 0.8)
    hu = _lung_like((16, 64, 64))
    new, mask, rec = inject_lesions(hu, np.ones(hu.shape, bool), spacing, kinds="solid", size_mm=(14, 14), rng=3)
    z, y, x = rec[0]["centre_zyx"]
    assert rec[0]["diameter_mm"] == 14
    assert 10 < (mask[z, y, :] > 0).sum() * spacing[2] < 18
    assert 10 < (mask[z, :, x] > 0).sum() * spacing[1] < 18
    assert 8 < (mask[:, y, x] > 0).sum() * spacing[0] < 20  # anisotropic: ≈ 5 slices of 3 mm
    volume = rec[0]["voxels"] * np.prod(spacing)
    assert 0.55 < volume / (np.pi / 6 * 14 ** 3) < 1.5


@pytest.mark.parametrize("kind, base, lo, hi", [("solid", -850, -20, 80), ("ground_glass", -850, -700, -250),
                                                ("part_solid", -850, -700, 60), ("hypodense", 60, 0, 35),
                                                ("hyperdense", 60, 95, 145), ("cyst", 60, -10, 25)])
def test_kind_values_and_texture_kept(kind, base, lo, hi):
    rng = np.random.default_rng(1)
    hu = (base + 15 * rng.standard_normal((7, 48, 48))).astype(np.float32)
    new, mask, rec = inject_lesions(hu, np.ones(hu.shape, bool), (2.0, 1.0, 1.0), kinds=[kind], size_mm=(14, 16), rng=2)
    core = ndi.binary_erosion(mask > 0, iterations=2)
    assert core.sum() > 50 and rec[0]["kind"] == kind
    assert lo < new[core].mean() < hi
    assert new[core].std() > 7  # noise texture survives: no flat disc
    if kind == "part_solid":
        assert (new[mask > 0] > -200).mean() > 0.05 and (new[mask > 0] < -400).mean() > 0.2
    if kind == "ground_glass":
        assert new[core].mean() > base + 150


def test_ground_glass_adds_to_parenchyma_keeping_vessels():
    hu = _lung_like((5, 48, 48))
    hu[:, 24, 10:38] = 40.0  # a vessel through the lesion
    new, mask, rec = inject_lesions(hu, np.ones(hu.shape, bool), (2.0, 1.0, 1.0), kinds=["ground_glass"],
                                    size_mm=(16, 16), rng=0)
    z = rec[0]["centre_zyx"][0]
    inside = mask[z] > 0
    assert new[z][inside & (np.arange(48)[:, None] == 24)].mean() > new[z][inside].mean() + 150


def test_small_lesions_are_visible_on_thick_slices():
    hu = _lung_like((8, 64, 64))
    new, mask, rec = inject_lesions(hu, np.ones(hu.shape, bool), (5.0, 2.7, 2.7), n_lesions=3, kinds=["solid"],
                                    size_mm=(3, 3), rng=4)
    for i, r in enumerate(rec, start=1):
        assert r["voxels"] >= 1 and r["delta_hu"] > 250
    liver = (60 + 10 * np.random.default_rng(0).standard_normal((8, 64, 64))).astype(np.float32)
    new, mask, rec = inject_lesions(liver, np.ones(liver.shape, bool), (5.0, 2.7, 2.7), kinds=["hypodense"],
                                    size_mm=(3, 3), rng=4)
    assert rec[0]["voxels"] >= 1 and rec[0]["delta_hu"] < -12


def test_kinds_auto_and_restricted():
    lung = _lung_like((5, 48, 48))
    liver = lung + 910
    ones = np.ones(lung.shape, bool)
    _, _, rec = inject_lesions(lung, ones, (2.0, 1.0, 1.0), n_lesions=6, size_mm=(3, 5), rng=0)
    assert {r["kind"] for r in rec} <= set(LUNG_KINDS)
    _, _, rec = inject_lesions(liver, ones, (2.0, 1.0, 1.0), n_lesions=6, size_mm=(3, 5), rng=0)
    assert {r["kind"] for r in rec} <= set(SOFT_TISSUE_KINDS)
    _, _, rec = inject_lesions(lung, ones, (2.0, 1.0, 1.0), n_lesions=5, kinds=["ground_glass", "cyst"],
                               size_mm=(3, 5), rng=0)
    assert {r["kind"] for r in rec} <= {"ground_glass", "cyst"} and set(KINDS) > {"ground_glass", "cyst"}
    same, mask, rec = inject_lesions(lung, ones, (2.0, 1.0, 1.0), n_lesions=0)
    assert rec == [] and not mask.any() and np.array_equal(same, lung)


def test_inject_deterministic_and_lesions_in_phantom_lungs(chest):
    region = organ_mask(chest.labels, "lung")
    a = inject_lesions(chest.hu, region, chest.spacing, n_lesions=2, size_mm=(6, 12), rng=5)
    b = inject_lesions(chest.hu, region, chest.spacing, n_lesions=2, size_mm=(6, 12), rng=5)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
    assert all(chest.labels[r["centre_zyx"]] in (LUNG, VESSEL) for r in a[2])
    assert not (a[1] > 0)[~region].any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(region_mask=np.zeros((3, 16, 16), bool)), "empty"),
    (dict(kinds=["tumour"]), "tumour"),
    (dict(region_mask=np.ones((3, 8, 8), bool)), "shape"),
    (dict(size_mm=(10, 5)), "size_mm"),
    (dict(hu=np.zeros((16, 16), np.float32), region_mask=np.ones((16, 16), bool)), "volume"),
])
def test_inject_errors(kwargs, match):
    args = dict(hu=_lung_like((3, 16, 16)), region_mask=np.ones((3, 16, 16), bool), spacing=(1, 1, 1))
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        inject_lesions(**args)


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


# ----------------------------------------------------------------------------------------------- real CT


@pytest.mark.realdata
def test_inject_nodule_into_real_lung_slice(shared_data):
    iio = pytest.importorskip("imageio.v3")
    folder = shared_data / "kmader-lungs-512"
    name = sorted((folder / "images").glob("*.tif"))[0].name
    hu = iio.imread(folder / "images" / name).astype(np.float32)[None]
    lung = (iio.imread(folder / "masks" / name) == 255)[None]
    assert hu.shape == (1, 512, 512)
    new, mask, rec = inject_lesions(hu, lung, (1.0, 0.7, 0.7), n_lesions=1, kinds=["solid"], size_mm=(8, 12), rng=0)
    assert rec[0]["voxels"] > 60 and rec[0]["delta_hu"] > 300
    assert not (mask > 0)[~lung].any()
    assert np.abs(new - hu)[mask > 0].mean() > 300
    assert np.abs(new - hu)[lung & (mask == 0)].mean() < 5
    assert np.array_equal(hu, iio.imread(folder / "images" / name).astype(np.float32)[None])
