"""Tests of aeanomaly.masks: body, lung and scoring-region masks."""

import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.masks import (
    body_mask, clean_region_mask, disk_erode, fill_holes_2d, lung_region, resolved_roi, scoring_region,
)


def _disc_volume(z=3, n=64, r=20, hole=True):
    yy, xx = np.mgrid[:n, :n]
    body = (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < r**2
    vol = np.full((z, n, n), -1000.0, np.float32)
    vol[:, body] = 40.0
    if hole:  # an air pocket inside the body (e.g. lung) must be filled in the mask
        vol[:, (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < 25] = -900.0
    vol[:, 60:62, 5:59] = 200.0  # a thin "table" below the body
    return vol, body


def test_body_mask_fills_holes_and_drops_table():
    vol, body = _disc_volume()
    before = vol.copy()
    m = body_mask(vol)
    np.testing.assert_array_equal(vol, before)  # input untouched
    assert m.dtype == bool and m.shape == vol.shape
    inter = (m[0] & body).sum() / (m[0] | body).sum()
    assert inter > 0.9
    assert not m[:, 60:62, 5:59].any()
    assert m[:, 32, 32].all()  # the hole is filled


def test_body_mask_non_hu_uses_otsu():
    vol, body = _disc_volume(hole=False)
    norm = (vol - vol.min()) / (vol.max() - vol.min())
    m = body_mask(norm, is_hu=False)
    assert (m[0] & body).sum() / (m[0] | body).sum() > 0.9


def test_body_mask_keeps_lungs_inside_a_thin_chest_wall():
    """At 64 px the chest wall can be 2 px thick; the opening must not break it and lose the lungs."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    hu = np.full((1, 64, 64), -1000.0, np.float32)
    hu[0][r < 24] = 40.0                       # body
    hu[0][(r < 22) & (np.abs(xx - 32) > 3)] = -850.0  # two lungs, 2 px of wall left
    hu[0][56:58, 4:60] = 200.0                # a thin table below the body
    body = body_mask(hu)
    assert body[0][r < 23].all(), "lungs lost from the body mask"
    assert not body[0][56:58, 4:10].any(), "table kept"


def test_fill_holes_2d_equals_scipy():
    from scipy import ndimage


    rng = np.random.default_rng(3)
    cases = [rng.random((40, 37)) > p for p in (0.3, 0.5, 0.7, 0.9)]
    ring = np.zeros((20, 20), bool)
    ring[3:15, 3:15], ring[5:13, 5:13] = True, False  # a closed ring: its inside is a hole
    cases += [ring, np.zeros((8, 8), bool), np.ones((8, 8), bool), ring[:, 5:]]  # ring[:, 5:] is open at the left edge
    for m in cases:
        np.testing.assert_array_equal(fill_holes_2d(m), ndimage.binary_fill_holes(m))
    assert fill_holes_2d(ring)[8, 8] and not fill_holes_2d(ring[:, 5:])[8, 2]


def test_clean_region_mask_drops_specks_and_fills_holes():
    m = np.zeros((2, 40, 40), bool)
    m[0, 5:20, 5:20] = True
    m[0, 10:13, 10:13] = False  # a hole
    m[0, 30:33, 30:33] = True  # 9 px < 1% of 1600 px: a speck
    m[0, 25:35, 2:8] = True  # 60 px: kept
    original = m.copy()
    out = clean_region_mask(m)
    np.testing.assert_array_equal(m, original)
    assert out[0, 11, 11] and not out[0, 31, 31] and out[0, 30, 5]
    assert out[0].sum() == 15 * 15 + 60 and not out[1].any()
    np.testing.assert_array_equal(clean_region_mask(m[0]), out[0])


# ---------------------------------------------------------------------------------------------
# fusion


def test_erosion():
    small = np.zeros((1, 32, 32), bool)
    small[0, 8:24, 8:24] = True
    er = disk_erode(small, 2)
    assert er.sum() == 12 * 12 and small.sum() == 256
    assert disk_erode(small, 0).sum() == 256 and not np.shares_memory(disk_erode(small, 0), small)


def test_scoring_region_body_lung_and_organs():
    img = np.full((2, 32, 32), 0.6, np.float32)
    img[:, 8:24, 4:14] = 0.1  # a dark "lung"
    body = np.zeros(img.shape, bool)
    body[:, 2:30, 2:30] = True
    lung = scoring_region(img, body, "lung", 0.3)
    assert lung[:, 10, 8].all() and not lung[:, 10, 20].any() and not (lung & ~body).any()
    np.testing.assert_array_equal(lung, lung_region(img, body, 0.3))
    np.testing.assert_array_equal(scoring_region(img, body, "body"), body)
    organs = np.zeros(img.shape, np.int16)
    organs[:, 0:5, 0:5] = 2
    only = scoring_region(img, body, "lung", 0.3, organ_labels=organs)
    assert only.sum() == 2 * 3 * 3  # the organ labels inside the body, whatever roi says
    assert resolved_roi("auto", "lung") == "lung" and resolved_roi("auto", "abdomen") == "body"
    with pytest.raises(ConfigError, match="roi"):
        resolved_roi("liver", "lung")


def test_disk_morphology_matches_scipy_exactly():
    """The decomposed disk filters give scipy.ndimage's binary morphology with the disk as structure
    (outside the image is background), on 2-D and 3-D masks, radii 1–10, shapes smaller than the disk."""
    from scipy import ndimage

    from aeanomaly.masks import disk, disk_close, disk_dilate, disk_open

    rng = np.random.default_rng(0)
    pairs = [(disk_dilate, ndimage.binary_dilation), (disk_erode, ndimage.binary_erosion),
             (disk_open, ndimage.binary_opening), (disk_close, ndimage.binary_closing)]
    for _ in range(60):
        r = int(rng.integers(1, 11))
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        m = ndimage.gaussian_filter(rng.random(shape), (0, 1.5, 1.5)) > rng.uniform(0.45, 0.55)
        for ours, ref in pairs:
            got = ours(m, r)
            assert got.dtype == bool and got.shape == m.shape
            np.testing.assert_array_equal(got, ref(m, structure=disk(r)[None]))
            np.testing.assert_array_equal(ours(m[0], r), ref(m[0], structure=disk(r)))
    m = rng.random((2, 9, 9)) > 0.5
    for ours, _ in pairs:
        out = ours(m, 0)
        np.testing.assert_array_equal(out, m)
        assert out is not m
    assert disk(2).sum() == 13 and disk(2)[0, 2] and not disk(2)[0, 1]


def test_body_mask_matches_the_whole_slice_procedure():
    """The body mask (fast disk opening, hole filling inside the body's bounding box) equals the
    procedure written with scipy.ndimage on the whole slice: threshold, fill, opening, largest
    component, fill; for a body with an air pocket, one cut by the image border, and random blobs."""
    from scipy import ndimage

    from aeanomaly.masks import disk

    def reference(sl, thr=-500.0, r=2):
        m = ndimage.binary_fill_holes(sl > thr)
        m = ndimage.binary_opening(m, structure=disk(r))
        lab, n = ndimage.label(m)
        if n == 0:
            return np.zeros(sl.shape, bool)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        return ndimage.binary_fill_holes(lab == np.argmax(sizes))

    vol, _ = _disc_volume(z=1, n=64, r=20)
    edge = np.full((1, 40, 40), -1000.0, np.float32)
    edge[0, :, :25] = 40.0  # a body cut by the image border, with a hole
    edge[0, 15:20, 5:10] = -900.0
    rng = np.random.default_rng(5)
    blobs = np.where(ndimage.gaussian_filter(rng.random((4, 48, 48)), (0, 2, 2)) > 0.5, 40.0, -1000.0)
    # the steps run inside the box of the tissue pixels: tissue across the whole width (a table), in
    # one corner pixel, two equal blobs (the largest is the first in raster order), none at all
    wide = np.full((1, 40, 40), -1000.0, np.float32)
    wide[0, 10:30, 8:30] = 40.0
    wide[0, 34:36, :] = 40.0
    corner = np.full((1, 30, 30), -1000.0, np.float32)
    corner[0, 20:28, 20:28], corner[0, 0, 0] = 40.0, 40.0
    twins = np.full((1, 40, 40), -1000.0, np.float32)
    twins[0, 25:33, 5:13], twins[0, 5:13, 25:33] = 40.0, 40.0
    empty = np.full((1, 20, 20), -1000.0, np.float32)
    for v in (vol, edge, blobs.astype(np.float32), wide, corner, twins, empty):
        got = body_mask(v)
        for k in range(len(v)):
            np.testing.assert_array_equal(got[k], reference(v[k]))
    assert body_mask(twins)[0, 8, 28] and not body_mask(twins)[0, 28, 8]
    assert body_mask(vol)[0, 32, 32]  # the air pocket is filled
