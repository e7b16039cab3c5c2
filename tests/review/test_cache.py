"""aeanomaly.review.cache: the per-scan viewer cache (written atomically from a scoring result) and the
slice PNGs rendered from it. A stand-in result keeps these tests free of the model."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from aeanomaly.io.scan import Scan, internal_affine
from aeanomaly.preprocess import HUWindow
from aeanomaly.review.cache import (LAYERS, VIEWER_WINDOWS, ScanCache, contour_colours, heat_colours, lesion_rows,
                                    read_labels, write_cache)

SHAPE = (3, 32, 40)  # (z, y, x)
PNG = b"\x89PNG\r\n\x1a\n"


def _lesion(i, zyx, zyx_input=None, **kw):
    d = dict(id=i, slice_start=zyx[0], slice_end=zyx[0] + 1, centroid_zyx=zyx, centroid_zyx_input=zyx_input,
             area_mm2=12.5, volume_mm3=40.0, equivalent_diameter_mm=4.2, max_residual=0.3, p_value=1e-4,
             severity="high")
    d.update(kw)
    return SimpleNamespace(**d)


def _result(is_hu=True, heat_scale=1.0):
    """What write_cache reads of a ScanResult: the scan, heat and labels on its grid, scores, lesions."""
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 400, SHAPE).astype(np.float32) if is_hu else rng.random(SHAPE).astype(np.float32)
    scan = Scan(hu, (5.0, 2.0, 2.0), internal_affine((5.0, 2.0, 2.0)), "s.nii", {"hu": is_hu})
    heat = np.zeros(SHAPE, np.float32)
    heat[1, 10:16, 12:20] = 0.8 * heat_scale
    heat[2, 0, 0] = np.nan
    labels = np.zeros(SHAPE, np.int32)
    labels[1, 10:16, 12:20] = 1
    return SimpleNamespace(
        scan=scan, heatmap_in_input_grid=lambda: heat, lesion_labels_in_input_grid=lambda: labels,
        scan_score=0.7, p_value=0.01, label="abnormal", top_slice=1, note="", slice_scores=[0.1, 0.7, np.nan],
        slice_labels=[False, True, False], source="s.nii",
        lesions=[_lesion(1, (1.0, 12.5, 15.5), (1.2, 12.0, 15.0)), _lesion(2, (2.0, 3.0, 4.0), max_residual=np.inf)])


@pytest.fixture
def cache(tmp_path):
    write_cache(tmp_path / "c", _result(), 0.5, "lung")
    return ScanCache(tmp_path / "c", max_items=3)


def test_lesion_rows_use_the_input_grid_centroid_and_drop_non_finite_values():
    rows = lesion_rows(_result())
    assert [r["id"] for r in rows] == [1, 2]
    assert (rows[0]["z"], rows[0]["y"], rows[0]["x"]) == (1.2, 12.0, 15.0)  # centroid_zyx_input when known
    assert (rows[1]["z"], rows[1]["y"], rows[1]["x"]) == (2.0, 3.0, 4.0)  # else the model-grid centroid
    assert rows[0]["diameter_mm"] == 4.2 and rows[0]["severity"] == "high" and rows[1]["max_residual"] is None
    assert set(rows[0]) == {"id", "slice_start", "slice_end", "z", "y", "x", "area_mm2", "volume_mm3",
                            "diameter_mm", "max_residual", "p_value", "severity"}
    json.dumps(rows, allow_nan=False)  # plain JSON-safe values


def test_write_cache_files_and_meta(tmp_path):
    res = _result()
    meta = write_cache(tmp_path / "c", res, 0.5, "lung")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["heat.npy", "labels.npy", "meta.json", "volume.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary folder left
    vol = np.load(tmp_path / "c" / "volume.npy")
    assert vol.dtype == np.int16 and vol.shape == SHAPE
    np.testing.assert_array_equal(vol, np.rint(res.scan.hu).astype(np.int16))
    heat = np.load(tmp_path / "c" / "heat.npy")
    assert heat.dtype == np.float16 and heat[2, 0, 0] == 0 and heat[1, 12, 14] == pytest.approx(0.8, abs=1e-3)
    labels = read_labels(tmp_path / "c")
    assert labels.dtype == np.int16 and labels.sum() == 48
    assert json.loads((tmp_path / "c" / "meta.json").read_text()) == meta
    assert meta["shape"] == list(SHAPE) and meta["spacing"] == [5.0, 2.0, 2.0] and meta["is_hu"] is True
    assert meta["pixel_threshold"] == 0.5 and meta["window"] == "lung" and meta["label"] == "abnormal"
    assert meta["slice_scores"] == [0.1, 0.7, None] and meta["slice_labels"] == [False, True, False]
    assert [d["id"] for d in meta["lesions"]] == [1, 2] and meta["top_slice"] == 1


def test_write_cache_non_hu_images_and_a_missing_threshold(tmp_path):
    meta = write_cache(tmp_path / "c", _result(is_hu=False), float("nan"), "abdomen")
    vol = np.load(tmp_path / "c" / "volume.npy")
    assert vol.dtype == np.float16 and 0 <= vol.min() and vol.max() <= 1 and meta["is_hu"] is False
    heat = _result().heatmap_in_input_grid()
    assert meta["pixel_threshold"] == pytest.approx(np.quantile(heat[np.isfinite(heat)], 0.99))  # the fallback
    assert write_cache(tmp_path / "c", _result(), 0.0, "lung")["pixel_threshold"] > 0  # replaced in place


def test_read_labels_of_a_missing_cache(tmp_path):
    assert read_labels(tmp_path / "gone") is None


def test_heat_colours_ramp_and_transparency():
    heat = np.array([[0.0, 0.2, 0.5, 0.75, 1.0, 4.0]], np.float32)
    rgba = heat_colours(heat, 1.0)
    assert rgba.dtype == np.uint8 and rgba.shape == (1, 6, 4)
    alpha = rgba[0, :, 3]
    assert alpha[0] == alpha[1] == alpha[2] == 0  # below half the threshold: transparent
    assert 0 < alpha[3] < 255 and alpha[4] == alpha[5] == 255  # opaque from the threshold up
    assert rgba[0, 5, :3].tolist() == [255, 255, 255] and rgba[0, 3, 0] > rgba[0, 3, 2]  # red → white
    np.testing.assert_array_equal(heat_colours(heat * 2, 2.0), rgba)  # relative to the threshold


def test_contour_colours_draw_the_boundary_only():
    lab = np.zeros((8, 8), np.int16)
    lab[2:6, 2:6] = 1
    lab[0:2, 6:8] = 2  # touching the image border
    rgba = contour_colours(lab)
    edge = rgba[..., 3] == 255
    assert (rgba[edge, :3] == (0, 230, 255)).all() and (rgba[~edge] == 0).all()
    assert edge[2, 2:6].all() and edge[5, 2:6].all() and edge[2:6, 2].all() and not edge[3:5, 3:5].any()
    assert edge[0:2, 6:8].all()  # a lesion at the border is closed by the border
    assert not edge[lab == 0].any()
    assert not contour_colours(np.zeros((4, 4), int)).any()


def test_scan_cache_renders_every_layer_as_png(cache):
    assert cache.n_slices == 3 and LAYERS == ("ct", "heat", "contour")
    for layer in LAYERS:
        data = cache.png(1, layer)
        assert data.startswith(PNG)
        img = np.asarray(Image.open(io.BytesIO(data)))
        assert img.shape == (SHAPE[1:] if layer == "ct" else SHAPE[1:] + (4,))  # grey CT, RGBA overlays
    heat = np.asarray(Image.open(io.BytesIO(cache.png(1, "heat"))))
    assert heat[12, 14, 3] == 255 and heat[0, 0, 3] == 0
    with pytest.raises(ValueError, match="unknown layer"):
        cache.png(0, "secret")
    with pytest.raises(IndexError):
        cache.png(3, "ct")
    with pytest.raises(IndexError):
        cache.png(-1, "ct")


def test_ct_windows(cache):
    sl = np.asarray(cache.volume[0], np.float32)
    np.testing.assert_array_equal(cache.ct_gray(0, "abdomen"),
                                  (HUWindow.parse("abdomen").apply(sl) * 255).astype(np.uint8))
    assert not np.array_equal(cache.ct_gray(0, "lung"), cache.ct_gray(0, "bone"))
    # an unknown window name falls back to the bundle's window
    np.testing.assert_array_equal(cache.ct_gray(0, "../../etc"), cache.ct_gray(0, "lung"))
    assert set(VIEWER_WINDOWS) >= {"lung", "abdomen", "bone"}


def test_non_hu_cache_shows_the_intensities(tmp_path):
    write_cache(tmp_path / "c", _result(is_hu=False), 0.5, "lung")
    c = ScanCache(tmp_path / "c")
    want = (np.clip(np.asarray(c.volume[2], np.float32), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(c.ct_gray(2, "bone"), want)  # no window on already-windowed images


def test_png_memory_is_bounded_and_reused(cache):
    first = cache.png(0, "ct", "lung")
    assert cache.png(0, "ct", "lung") is first  # served from memory
    assert cache.png(0, "heat", "lung") is cache.png(0, "heat", "bone")  # the window matters for ct only
    for z in range(3):
        cache.png(z, "contour")
    assert len(cache._pngs) == 3
    assert cache.png(0, "ct", "lung") is not first  # the oldest was dropped, rendered again
    assert cache.png(0, "ct", "lung") == first


def test_composite_blends_heat_and_draws_contours_on_top(cache):
    rgb = cache.composite(1, "lung", opacity=0.6)
    gray = cache.ct_gray(1, "lung")
    assert rgb.shape == SHAPE[1:] + (3,) and rgb.dtype == np.uint8
    assert rgb[10, 12].tolist() == [0, 230, 255]  # lesion boundary
    np.testing.assert_array_equal(rgb[25, 30], [gray[25, 30]] * 3)  # no heat: the CT itself
    assert rgb[12, 14, 0] > rgb[12, 14, 2]  # heat inside the lesion tints it red
    np.testing.assert_array_equal(cache.composite(1, "lung", opacity=0.0)[12, 14], [gray[12, 14]] * 3)
    png = cache.composite_png(1)
    assert png.startswith(PNG) and np.asarray(Image.open(io.BytesIO(png))).shape == SHAPE[1:] + (3,)
