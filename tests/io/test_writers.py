"""aeanomaly.io.writers: atomic files and folders, and NIfTI writing in the internal or the input grid."""

from __future__ import annotations

import contextlib
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from aeanomaly.io import load_scan
from aeanomaly.io.scan import internal_affine
from aeanomaly.io.writers import atomic_dir, atomic_path, save_like_input, save_nifti, write_text


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


# ------------------------------------------------------------------------------------------ atomic_path
def test_atomic_path_renames_on_success_only(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and tmp.name.startswith(".out.json.")
        assert tmp.name.endswith(".json")  # the suffixes are kept (writers pick the format from them)
        tmp.write_text("new")
        assert not target.exists()  # nothing at the target until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_atomic_path_leaves_the_old_file_and_no_temp_on_an_exception(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with pytest.raises(KeyboardInterrupt):  # also on BaseException
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_path_overwrites_an_existing_file(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with atomic_path(target, suffix=".tmp") as tmp:
        assert tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_respect_the_umask(tmp_path, mask, want):
    with umask(mask):
        write_text(tmp_path / "t.txt", "hi")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("x")
    assert _mode(tmp_path / "t.txt") == want  # not mkstemp's 0600
    assert _mode(tmp_path / "d") == 0o777 & ~mask  # not mkdtemp's 0700
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "hi"


# ------------------------------------------------------------------------------------------- atomic_dir
def test_atomic_dir_moves_a_complete_folder(tmp_path):
    target = tmp_path / "deep" / "bundle"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".bundle.tmp-")
        (tmp / "a.txt").write_text("a")
        assert not target.exists()
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["bundle"]


def test_atomic_dir_refuses_an_existing_folder_without_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("k")
    with pytest.raises(FileExistsError, match="out"):
        with atomic_dir(target) as tmp:
            (tmp / "new").write_text("n")
    assert sorted(p.name for p in target.iterdir()) == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the new folder is removed


def test_atomic_dir_overwrite_replaces_only_once_complete(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("o")
    with pytest.raises(ValueError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "new").write_text("n")
            raise ValueError("failed half-way")
    assert sorted(p.name for p in target.iterdir()) == ["old"]  # the old folder survives a failure
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("n")
        assert (target / "old").exists()
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or trash folder left


# ------------------------------------------------------------------------------------------------ NIfTI
@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_save_nifti_round_trips_data_and_geometry(tmp_path, name):
    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 1000, (4, 40, 36)).astype(np.int16)  # (z, y, x)
    aff = internal_affine((3.0, 0.8, 0.7), (10.0, 20.0, -30.0))
    out = save_nifti(tmp_path / name, vol, aff)
    assert out == tmp_path / name and sorted(p.name for p in tmp_path.iterdir()) == [name]
    img = nib.load(out)
    assert img.shape == (36, 40, 4) and img.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.transpose(2, 1, 0))
    scan = load_scan(out)
    np.testing.assert_array_equal(scan.hu, vol.astype(np.float32))
    assert scan.spacing == pytest.approx((3.0, 0.8, 0.7))
    if name.endswith(".gz"):  # ISA-L writes plain gzip: the standard library reads it back, header and all
        import gzip

        raw = gzip.decompress(out.read_bytes())
        assert raw[:4] == (348).to_bytes(4, "little") and len(raw) == 352 + vol.size * 2
    np.testing.assert_allclose(scan.affine, aff)


def _reoriented_input(tmp_path, seed):
    """``in.nii.gz``: int16 data ``(i, j, k)`` under an affine with permuted, flipped axes; its Scan.
    ``seed="lps"``: axes already the internal grid's (L, P, S), as ITK and most converters write."""
    rng = np.random.default_rng(0 if seed == "lps" else seed)
    data = rng.integers(-1000, 1000, (34, 36, 33)).astype(np.int16)  # the file's (i, j, k)
    aff = np.eye(4)
    aff[:3, :3] = (np.diag([-0.7, -0.8, 2.5]) if seed == "lps" else
                   (np.eye(3)[:, rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)) @ np.diag(rng.uniform(0.5, 3, 3)))
    aff[:3, 3] = rng.uniform(-100, 100, 3)
    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), str(src))
    return data, aff, load_scan(src)


@pytest.mark.parametrize("seed", range(4))
def test_save_like_input_overlays_the_input_file(tmp_path, seed):
    """A scan stored flipped and permuted: the result is written in the file's own voxel grid."""
    data, aff, scan = _reoriented_input(tmp_path, seed)
    out = save_like_input(tmp_path / "res.nii.gz", scan.hu + 1, scan)
    img = nib.load(out)
    assert img.shape == data.shape
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data.astype(np.float32) + 1)
    with pytest.raises(ValueError, match="differs from the scan's"):
        save_like_input(tmp_path / "bad.nii.gz", scan.hu[:1], scan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "res.nii.gz"]  # no half-written file


def test_a_failed_nifti_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "v.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(Exception):
        save_nifti(target, np.zeros((2, 2, 2), object), np.eye(4))  # object arrays cannot be NIfTI
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]


@pytest.mark.parametrize("seed", [*range(8), "lps"])
@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_save_slabs_like_input_writes_the_same_file_as_the_whole_volume(tmp_path, seed, ext):
    """The streamed write (slab by slab, slabs shorter than the scan) gives byte for byte the data and
    header of the whole-volume write, for flipped and permuted inputs (the slice axis as the file's
    third axis, streamed, or not, assembled) and for a file already in the internal axes (each slab
    written from its own buffer)."""
    import gzip

    from aeanomaly.io.writers import save_slabs_like_input
    data, aff, scan = _reoriented_input(tmp_path, seed)
    if seed == "lps":
        assert nib.aff2axcodes(aff) == ("L", "P", "S")
    vol = (scan.hu / 7.0).astype(np.float32)
    calls = []

    def slab(lo, hi):
        calls.append((lo, hi))
        return vol[lo:hi]

    whole = save_like_input(tmp_path / f"whole{ext}", vol, scan)
    streamed = save_slabs_like_input(tmp_path / f"streamed{ext}", slab, scan, slab_slices=5)
    read = gzip.decompress if ext == ".nii.gz" else (lambda b: b)
    assert read(streamed.read_bytes()) == read(whole.read_bytes())
    assert nib.load(streamed).shape == data.shape
    n = len(vol)
    if len(calls) > 1:  # streamed: every slice once, in slabs of at most SLAB_SLICES
        covered = sorted(z for lo, hi in calls for z in range(lo, hi))
        assert covered == list(range(n)) and max(hi - lo for lo, hi in calls) <= 5
    else:  # the slices are not the file's third axis: one call for the whole volume
        assert calls == [(0, n)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.nii.gz", f"whole{ext}", f"streamed{ext}"])


@pytest.mark.parametrize("seed", [0, 1, 2, "lps"])
def test_save_slabs_like_input_with_a_slope_stores_int16_counts(tmp_path, seed):
    """With a slope the file holds int16 counts and scl_slope: read back through nibabel, every value is
    within slope / 2 (and float32 rounding) of the float volume, zeros stay exactly 0, the largest value keeps its height, and
    the geometry is that of the float file; streamed (slices the file's third axis) or assembled."""
    from aeanomaly.io.writers import QUANT_MAX, int16_slope, save_slabs_like_input
    _, aff, scan = _reoriented_input(tmp_path, seed)
    rng = np.random.default_rng(1)
    vol = np.where(rng.random(scan.hu.shape) < 0.6, 0.0, rng.gamma(2.0, 0.01, scan.hu.shape)).astype(np.float32)
    slope = int16_slope(float(np.abs(vol).max()))
    assert slope == pytest.approx(float(vol.max()) / QUANT_MAX, rel=1e-7)
    floats = save_slabs_like_input(tmp_path / "f.nii.gz", lambda lo, hi: vol[lo:hi], scan, slab_slices=5)
    counts = save_slabs_like_input(tmp_path / "q.nii.gz", lambda lo, hi: vol[lo:hi], scan, slab_slices=5, slope=slope)
    f, q = nib.load(floats), nib.load(counts)
    assert q.get_data_dtype() == np.int16 and f.get_data_dtype() == np.float32
    assert (q.dataobj.slope, q.dataobj.inter) == pytest.approx((slope, 0.0))  # nibabel moves scl_* there
    np.testing.assert_allclose(q.affine, f.affine)
    back, exact = q.get_fdata(), f.get_fdata()
    assert np.abs(back - exact).max() <= slope * 0.502
    assert (back[exact == 0] == 0).all()
    assert back.max() == pytest.approx(exact.max(), rel=1e-6)
    assert counts.stat().st_size < floats.stat().st_size


def test_int16_counts_are_rounded_per_value_and_clip_instead_of_wrapping(tmp_path):
    """Counts are round(v / slope) for every voxel of every slice (each slice is quantised through a
    one-slice buffer), and a value beyond ±QUANT_MAX steps is stored as ±QUANT_MAX, never wrapped to the
    other sign."""
    from aeanomaly.io import Scan
    from aeanomaly.io.writers import QUANT_MAX, save_slabs_like_input

    rng = np.random.default_rng(3)
    vol = rng.normal(0.0, 1.0, (7, 6, 5)).astype(np.float32)
    vol[2, 3, 1], vol[5, 0, 4] = 50.0, -50.0  # beyond the range of the slope below
    slope = 2.0 / QUANT_MAX
    scan = Scan(hu=vol, spacing=(2.0, 1.0, 1.0), affine=internal_affine((2.0, 1.0, 1.0)), source="v.npy", meta={})
    out = save_slabs_like_input(tmp_path / "c.nii.gz", lambda lo, hi: vol[lo:hi], scan, slab_slices=3, slope=slope)
    counts = np.asarray(nib.load(out).dataobj.get_unscaled()).transpose(2, 1, 0)
    expected = np.clip(np.rint(np.divide(vol, np.float32(slope), dtype=np.float32)), -QUANT_MAX, QUANT_MAX)
    np.testing.assert_array_equal(counts, expected.astype(np.int16))
    assert counts[2, 3, 1] == QUANT_MAX and counts[5, 0, 4] == -QUANT_MAX


def test_int16_slabs_are_written_as_the_counts_they_are(tmp_path):
    """A slab that returns int16 with a slope gives the counts itself (what ``score`` writes: each few
    slices quantised as soon as they are resampled): the file holds them unchanged, with the slope;
    float32 slabs with the same slope are quantised by the writer to the same counts."""
    from aeanomaly.io import Scan
    from aeanomaly.io.writers import _counts, int16_slope, save_slabs_like_input

    rng = np.random.default_rng(4)
    vol = np.where(rng.random((9, 6, 5)) < 0.5, 0.0, rng.gamma(2.0, 0.1, (9, 6, 5))).astype(np.float32)
    slope = int16_slope(float(vol.max()))
    counts = _counts(vol, slope)
    scan = Scan(hu=vol, spacing=(2.0, 1.0, 1.0), affine=internal_affine((2.0, 1.0, 1.0)), source="v.npy", meta={})
    given = save_slabs_like_input(tmp_path / "i.nii.gz", lambda lo, hi: counts[lo:hi], scan, slab_slices=4,
                                  slope=slope)
    made = save_slabs_like_input(tmp_path / "f.nii.gz", lambda lo, hi: vol[lo:hi], scan, slab_slices=4, slope=slope)
    a, b = nib.load(given), nib.load(made)
    np.testing.assert_array_equal(np.asarray(a.dataobj.get_unscaled()).transpose(2, 1, 0), counts)
    np.testing.assert_array_equal(np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled()))
    assert a.dataobj.slope == pytest.approx(slope) and a.get_data_dtype() == np.int16


def test_int16_slope_edge_cases():
    from aeanomaly.io.writers import int16_slope

    assert int16_slope(0.0) == 1.0  # all zeros: any slope stores them exactly
    assert int16_slope(float("nan")) is None and int16_slope(float("inf")) is None  # must stay floats
    assert int16_slope(32767.0) == 1.0
    assert int16_slope(1e-45) is None  # its step would be 0 in float32


def test_save_slabs_like_input_internal_grid_and_bad_slabs(tmp_path):
    """Scans without a recorded orientation are written in the internal grid; a slab of the wrong shape
    is an error and leaves no file."""
    from aeanomaly.io import Scan
    from aeanomaly.io.writers import save_slabs_like_input

    vol = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    scan = Scan(hu=vol, spacing=(2.0, 1.0, 1.0), affine=internal_affine((2.0, 1.0, 1.0)), source="v.npy", meta={})
    out = save_slabs_like_input(tmp_path / "v.nii.gz", lambda lo, hi: vol[lo:hi], scan)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), vol.transpose(2, 1, 0))
    with pytest.raises(ValueError, match="returned shape"):
        save_slabs_like_input(tmp_path / "bad.nii.gz", lambda lo, hi: vol[lo:hi, :2], scan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]
