import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.io.scan import internal_affine
from aeanomaly.preprocess import (
    HUWindow, body_fraction, from_model_grid, mask_to_model_grid, prepare_volume, slice_indices, stack_neighbours,
    to_model_grid,
)


def test_window_presets_and_custom():
    lung = HUWindow.parse("lung")
    assert (lung.width, lung.level) == (1500, -600)
    np.testing.assert_allclose(lung.apply(np.array([-1350.0, -600.0, 150.0, 3000.0])), [0.0, 0.5, 1.0, 1.0])
    custom = HUWindow.parse("400,40")
    assert custom.to_spec() == "400,40" and HUWindow.parse("abdomen").to_spec() == "abdomen"
    np.testing.assert_allclose(custom.to_hu(custom.apply(np.array([0.0, 100.0]))), [0.0, 100.0], atol=1e-3)
    assert lung.apply(np.zeros((2, 3))).dtype == np.float32


@pytest.mark.parametrize("spec", ["nope", "0,40", "-5,1", "1,2,3", "a,b"])
def test_window_bad_specs(spec):
    with pytest.raises(ConfigError, match="window"):
        HUWindow.parse(spec)


def test_model_grid_round_trip_and_padding():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:90, :120]
    smooth = (np.sin(xx / 9.0) + np.cos(yy / 11.0))[None].repeat(2, 0).astype(np.float32)
    m, grid = to_model_grid(smooth, 64)
    assert m.shape == (2, 64, 64) and grid.side == 120 and grid.pad_y == 15 and grid.pad_x == 0
    back = from_model_grid(m, grid)
    assert back.shape == smooth.shape
    assert np.abs(back - smooth)[:, 4:-4, 4:-4].max() < 0.05
    const, g2 = to_model_grid(np.full((1, 50, 50), 0.7, np.float32), 32, pad_value=0.7)
    np.testing.assert_allclose(const, 0.7, atol=1e-6)
    same, g3 = to_model_grid(rng.random((1, 64, 64)), 64)
    assert g3.scale == 1.0 and same.shape == (1, 64, 64)


def test_model_affine_maps_centres():
    aff = internal_affine((5.0, 0.5, 0.5), origin_ras=(10.0, 20.0, -30.0))
    _, grid = to_model_grid(np.zeros((1, 100, 100), np.float32), 50)
    maff = grid.model_affine(aff)
    # model pixel (0, 0) covers input pixels 0..1, centre at input index 0.5
    np.testing.assert_allclose(maff @ [0, 0, 0, 1], aff @ [0.5, 0.5, 0, 1])
    np.testing.assert_allclose(np.abs(np.diag(maff)[:3]), [1.0, 1.0, 5.0])


def test_mask_to_model_grid():
    m = np.zeros((1, 64, 64), bool)
    m[0, 16:48, 16:48] = True
    small = mask_to_model_grid(m, 32)
    assert small.sum() == 16 * 16


def test_slice_helpers():
    np.testing.assert_array_equal(slice_indices(10, (2, 8), 3), [2, 5])
    with pytest.raises(ConfigError):
        slice_indices(10, stride=0)
    vol = np.arange(4)[:, None, None] * np.ones((4, 2, 2), np.float32)
    st = stack_neighbours(vol, 3)
    assert st.shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(st[0, 0, 0], [0, 0, 1])
    np.testing.assert_array_equal(st[3, 0, 0], [2, 3, 3])
    with pytest.raises(ConfigError):
        stack_neighbours(vol, 2)
    np.testing.assert_allclose(body_fraction(np.array([[[1, 0], [0, 0]]], bool)), [0.25])


def test_prepare_volume_shapes_and_spacing():
    yy, xx = np.mgrid[:96, :96]
    vol = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 30**2, 40.0, -1000.0)[None].repeat(4, 0).astype(np.float32)
    vol[0] = -1000.0  # a slice with no body is not kept
    prep = prepare_volume(vol, (5.0, 0.8, 0.8), internal_affine((5.0, 0.8, 0.8)), is_hu=True,
                          window=HUWindow.parse("abdomen"), size=32, channels=3)
    assert prep.x.shape == (4, 32, 32, 3) and prep.x.min() >= 0 and prep.x.max() <= 1
    assert prep.body.shape == (4, 32, 32)
    np.testing.assert_array_equal(prep.keep, [False, True, True, True])
    np.testing.assert_allclose(prep.spacing, (5.0, 2.4, 2.4))


def test_model_to_input_yx_undoes_padding_and_resampling():
    from aeanomaly.preprocess import GridSpec, model_to_input_yx

    g = GridSpec(ny=100, nx=60, size=50)  # padded to 100 x 100 (20 px each side in x), then halved
    assert model_to_input_yx(0, 0, g) == (0.5, -19.5)
    assert model_to_input_yx(49, 49, g) == (98.5, 78.5)
    y, x = model_to_input_yx(24.5, 24.5, g)  # the model grid centre is the input slice centre
    assert (y, x) == (49.5, 29.5)
    assert model_to_input_yx(10, 10, GridSpec(ny=64, nx=64, size=64)) == (10.0, 10.0)




def test_mask_to_model_grid_integer_blocks_match_area_mean():
    """Integer downsampling factors count each block in integers: the same mask as the area mean ≥ 0.5
    of the general path (non-square inputs included)."""
    from aeanomaly.preprocess import resample_matrix

    rng = np.random.default_rng(3)
    # f = 2, 4, 8, 16 (a uint8 count up to 15 × 15 blocks, int32 from 16 × 16), padded inputs; f a power of 2
    # so that the float reference has no rounding at ties
    for shape, size in [((2, 64, 64), 32), ((2, 64, 48), 16), ((1, 40, 64), 32), ((1, 60, 60), 32), ((1, 64, 64), 4),
                        ((1, 80, 96), 12)]:
        m = rng.random(shape) > 0.5
        side = max(shape[1:])
        sq = np.zeros((shape[0], side, side))
        py, px = (side - shape[1]) // 2, (side - shape[2]) // 2
        sq[:, py : py + shape[1], px : px + shape[2]] = m
        r = resample_matrix(side, size).toarray()
        ref = np.einsum("ij,zjk,lk->zil", r, sq, r) >= 0.5
        np.testing.assert_array_equal(mask_to_model_grid(m, size), ref)


def _upsampled_reference(h: np.ndarray, grid) -> np.ndarray:
    """``h`` upsampled to ``grid``'s input slices by the whole interpolation products in float64."""
    from aeanomaly.preprocess import resample_matrix

    r = resample_matrix(grid.size, grid.side).toarray()
    return (r @ h.astype(np.float64) @ r.T)[:, grid.pad_y : grid.pad_y + grid.ny, grid.pad_x : grid.pad_x + grid.nx]


def test_from_model_grid_upsampling_matches_the_interpolation_matrices():
    """Upsampling to the input grid (dense products) is linear interpolation with the matrices of
    ``resample_matrix``, within float32 rounding, for integer and non-integer factors."""
    from aeanomaly.preprocess import GridSpec

    rng = np.random.default_rng(4)
    for ny, nx, size in [(128, 128, 64), (100, 90, 32), (512, 512, 128)]:
        grid = GridSpec(ny, nx, size)
        h = rng.random((3, size, size)).astype(np.float32)
        ref = _upsampled_reference(h, grid)
        got = from_model_grid(h, grid)
        assert got.dtype == np.float32 and got.shape == (3, ny, nx)
        np.testing.assert_allclose(got, ref, atol=2e-6)


def test_upsampling_a_map_that_is_zero_outside_a_box_is_the_same_product():
    """Only the box of nonzero input rows/columns enters the products (a heatmap is 0 outside its
    scoring region): the same values as the whole products, exactly 0 outside what the box reaches,
    and an all-zero stack stays 0."""
    from aeanomaly.preprocess import GridSpec

    rng = np.random.default_rng(5)
    boxes = [(512, 512, 256, (slice(60, 130), slice(90, 200))), (300, 512, 128, (slice(0, 5), slice(120, 128))),
             (100, 90, 32, (slice(31, 32), slice(0, 1)))]
    for ny, nx, size, box in boxes:
        grid = GridSpec(ny, nx, size)
        h = np.zeros((4, size, size), np.float32)
        h[1:3][:, box[0], box[1]] = rng.random((2, *h[0][box].shape)) - 0.5
        ref = _upsampled_reference(h, grid)
        got = from_model_grid(h, grid)
        np.testing.assert_allclose(got, ref, atol=2e-6)
        assert (got[[0, 3]] == 0).all() and (got[2][ref[2] == 0] == 0).all()
    assert not from_model_grid(np.zeros((2, 64, 64), np.float32), GridSpec(128, 128, 64)).any()


def test_from_model_grid_into_out_is_the_same_and_overwrites_what_was_there():
    """``out=``: the same values written into the given array (square grids resample straight into it,
    others through a crop), every element of it overwritten, for upsampling, no resampling and
    downsampling, a box of nonzero rows and an all-zero stack."""
    from aeanomaly.preprocess import GridSpec

    rng = np.random.default_rng(6)
    for ny, nx, size in [(512, 512, 128), (100, 90, 32), (64, 64, 64), (32, 32, 64), (128, 128, 64)]:
        grid = GridSpec(ny, nx, size)
        for h in (rng.random((3, size, size)).astype(np.float32), np.zeros((3, size, size), np.float32)):
            h = h.copy()
            h[:, : size // 3] = 0.0  # zero rows: the products' box
            out = np.full((3, ny, nx), np.nan, np.float32)  # garbage that must not survive
            got = from_model_grid(h, grid, out=out)
            assert got is out
            np.testing.assert_array_equal(out, from_model_grid(h, grid))


# z is not a multiple of EACH_SLICES: a short last group
@pytest.mark.parametrize("ny, nx, size, z", [(512, 512, 128, 11), (100, 90, 32, 6), (64, 64, 64, 3), (128, 96, 64, 9)])
def test_from_model_grid_each_stores_what_from_model_grid_gives(ny, nx, size, z):
    """Without ``each`` the result is ``from_model_grid``'s; with the int16 quantiser of the heatmap
    writer, the counts of ``from_model_grid``'s values (a count may differ by one only where float32
    rounding of the two products falls on the other side of a half), every slice stored once, also in
    a last group of fewer than EACH_SLICES slices and for all-zero slices."""
    from aeanomaly.io.writers import QUANT_MAX, int16_quantiser, int16_slope
    from aeanomaly.preprocess import GridSpec, from_model_grid_each

    rng = np.random.default_rng(z)
    h = np.where(rng.random((z, size, size)) < 0.7, 0.0, rng.gamma(2.0, 0.3, (z, size, size))).astype(np.float32)
    h[1] = 0.0  # an empty slice
    grid = GridSpec(ny, nx, size)
    ref = from_model_grid(h, grid)
    np.testing.assert_array_equal(from_model_grid_each(h, grid), ref)
    slope = int16_slope(float(h.max()))
    seen = []

    def each(values, out):
        seen.append(values.shape)
        int16_quantiser(slope)(values, out)

    got = from_model_grid_each(h, grid, each=each, dtype=np.int16)
    expected = np.clip(np.rint(np.divide(ref, np.float32(slope), dtype=np.float32)), -QUANT_MAX, QUANT_MAX)
    assert got.dtype == np.int16 and got.shape == (z, ny, nx) and seen == [(ny, nx)] * z
    diff = np.abs(got.astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4
    assert (got[1] == 0).all() and (got[ref == 0] == 0).all()
