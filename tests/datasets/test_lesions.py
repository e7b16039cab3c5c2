"""aeanomaly.datasets.lesions: lesion injection into any HU volume (purity, sizes in mm on anisotropic grids,
kinds and their HU, texture kept, errors), in phantoms and in a real lung slice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from aeanomaly.datasets.lesions import (KINDS, LUNG_KINDS, SOFT_TISSUE_KINDS, check_kinds, inject_lesions,
                                        kinds_for)
from aeanomaly.datasets.synthetic import LUNG, VESSEL, make_phantom, organ_mask
from aeanomaly.errors import ConfigError

SHAPE, SPACING = (12, 96, 96), (5.0, 3.6, 3.6)


@pytest.fixture(scope="module")
def chest():
    return make_phantom("chest", SHAPE, SPACING, rng=1)


def _lung_like(shape=(9, 48, 48), noise=15.0, seed=0):
    rng = np.random.default_rng(seed)
    return (-850 + noise * rng.standard_normal(shape)).astype(np.float32)


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


def test_kinds_for_picks_by_the_tissue_under_the_region():
    hu = np.full((2, 8, 8), -850.0, np.float32)
    hu[1] = 60.0
    region = np.zeros(hu.shape, bool)
    region[0] = True
    assert kinds_for(hu, region) == LUNG_KINDS
    assert kinds_for(hu, ~region) == SOFT_TISSUE_KINDS
    assert set(LUNG_KINDS) | set(SOFT_TISSUE_KINDS) == set(KINDS) and not set(LUNG_KINDS) & set(SOFT_TISSUE_KINDS)


def test_check_kinds():
    assert check_kinds(None) is None
    assert check_kinds("cyst") == ("cyst",)
    assert check_kinds(["solid", "cyst"]) == ("solid", "cyst")
    with pytest.raises(ConfigError, match="unknown lesion kind.*'tumour'"):
        check_kinds(["solid", "tumour"])
    with pytest.raises(ConfigError, match="none given"):
        check_kinds([])


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
