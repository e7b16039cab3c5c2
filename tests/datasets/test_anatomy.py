"""aeanomaly.datasets.anatomy: the rendered torso (tissue HU, noise, orientation, organs, continuity
along z), through render_anatomy directly and through make_phantom."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from aeanomaly.datasets.anatomy import (BONE, FAT, KIDNEY, LABELS, LIVER, LUNG, MUSCLE, SPLEEN, TABLE, VESSEL,
                                        render_anatomy)
from aeanomaly.datasets.synthetic import make_phantom

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


def test_anatomy_changes_smoothly_along_z(chest):
    body = ((chest.labels != 0) & (chest.labels != TABLE)).sum(axis=(1, 2)).astype(float)
    assert np.max(np.abs(np.diff(body)) / body[1:]) < 0.1
    lung = (chest.labels == LUNG).sum(axis=(1, 2)).astype(float)
    inside = (chest.labels[:, :, :] == LUNG)
    overlap = (inside[1:] & inside[:-1]).sum(axis=(1, 2)) / np.maximum(lung[1:], 1)
    assert np.median(overlap) > 0.6


@pytest.mark.parametrize("region", ["chest", "abdomen"])
def test_render_anatomy_arrays_and_determinism(region):
    shape, spacing = (3, 48, 48), (5.0, 7.2, 7.2)
    hu, labels, z0 = render_anatomy(region, shape, spacing, np.random.default_rng(4))
    assert hu.shape == labels.shape == shape and hu.dtype == np.float32 and labels.dtype == np.uint8
    assert np.isfinite(hu).all() and set(np.unique(labels)) <= set(LABELS) and isinstance(z0, float)
    again = render_anatomy(region, shape, spacing, np.random.default_rng(4))
    np.testing.assert_array_equal(hu, again[0])
    np.testing.assert_array_equal(labels, again[1])
    assert again[2] == z0
    # the chest range lies above the abdominal one (Z = 0 at the top of the right hemidiaphragm)
    other = render_anatomy("abdomen" if region == "chest" else "chest", shape, spacing, np.random.default_rng(4))[2]
    assert (z0 > other) == (region == "chest")


def test_make_phantom_is_render_anatomy_on_its_grid():
    shape, spacing = (2, 40, 40), (6.0, 8.0, 8.0)
    ph = make_phantom("chest", shape, spacing, rng=9)
    hu, labels, z0 = render_anatomy("chest", shape, spacing, np.random.default_rng(9))
    np.testing.assert_array_equal(ph.hu, hu)
    np.testing.assert_array_equal(ph.labels, labels)
    assert ph.affine[2, 3] == pytest.approx(z0)  # the first slice sits at z0 mm
