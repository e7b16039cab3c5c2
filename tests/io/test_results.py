"""aeanomaly/io/results.py: the results folder writer (scores / slices / lesions tables, heatmaps,
overlays, report), atomic as a whole."""

import csv
import errno
import os
from types import SimpleNamespace

import numpy as np
import pytest

from aeanomaly.errors import ScanError
from aeanomaly.io.results import (LESION_COLUMNS, SCORE_COLUMNS, SLICE_COLUMNS, ResultsWriter, error_text,
                                  lesion_rows, output_names, scan_rows)


def fake_result(seed=0, n=4, size=32, label="abnormal", note=""):
    rng = np.random.default_rng(seed)
    heat = rng.random((n, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size), np.int32)
    labels[1, 10:14, 10:14] = 1
    scores = np.array([0.1, 0.9, np.nan, 0.3])[:n]
    lesion = {"id": 1, "slice_start": 1, "slice_end": 1, "centroid_zyx": (1.0, 11.5, 11.5),
              "centroid_zyx_input": (1.0, 23.0, 23.0), "centroid_ras_mm": (1.0, 2.0, 3.0), "area_mm2": 16.0,
              "volume_mm3": 80.0, "equivalent_diameter_mm": 4.5, "max_residual": 0.99, "mean_residual": 0.5,
              "p_value": 0.01, "severity": "high"}
    return SimpleNamespace(
        source="x.nii.gz", n_slices=n, scan_score=0.9, p_value=0.02, label=label, top_slice=1,
        slice_scores=scores, slice_p_values=np.array([0.5, 0.01, np.nan, 0.3])[:n],
        slice_labels=np.array([False, True, False, False])[:n], heatmap=heat, lesion_labels=labels,
        image=rng.random((n, size, size)).astype(np.float32), lesions=[lesion], head_proba=None, fused_proba=None,
        slice_head_proba=None, note=note, prepared=SimpleNamespace(spacing=(5.0, 2.0, 2.0)), scan=None,
        heatmap_in_input_grid=lambda lo=0, hi=None: heat[lo:hi],
    )


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_output_names_are_unique_safe_and_short():
    assert output_names(["a/ct 1.nii.gz", "b/ct 1.nii", "c/x.MHD", "d/dicom_dir", "e/.nii"]) == [
        "ct_1", "ct_1_2", "x", "dicom_dir", "nii"]
    assert len(output_names(["/p/" + "n" * 200 + ".nii"])[0]) <= 120


def test_scan_rows_and_lesion_rows():
    row, slices, lesions = scan_rows("s.nii", fake_result(note="why"))
    assert row["label"] == "abnormal" and row["n_lesions"] == 1 and row["note"] == "why" and row["error"] == ""
    assert [s["slice"] for s in slices] == [0, 1, 3]  # the unscored (NaN) slice is left out
    assert slices[1]["label"] == "abnormal"
    assert lesions[0]["centroid_z"] == 1.0 and lesions[0]["centroid_y"] == 23.0  # the input grid when given
    assert set(lesions[0]) == set(LESION_COLUMNS) - {"organ"} | {"organ"}
    assert lesion_rows("s", [])== []


def test_error_text():
    assert error_text(ScanError("corrupt", "/a.nii")) == "/a.nii: corrupt"
    assert error_text(ScanError("corrupt"), "/b.nii") == "/b.nii: corrupt"
    assert error_text(OSError(errno.EACCES, "Permission denied", "/c.nii")) == "/c.nii: Permission denied"
    assert "out of memory" in error_text(MemoryError(), "/d.nii") and error_text(MemoryError(), "/d").startswith("/d:")


def test_writer_writes_every_table_and_file_atomically(tmp_path):
    out = tmp_path / "res"
    with ResultsWriter(out, heatmaps="npy", overlays=2, pixel_threshold=0.5, report=True) as w:
        w.add("a/one.nii.gz", "one", fake_result(0))
        w.add("a/bad.nii.gz", "bad", ScanError("corrupt or truncated NIfTI", "a/bad.nii.gz"))
        w.add("a/two.nii.gz", "two", fake_result(1, label="normal"))
        assert not out.exists()  # nothing in place before the block ends
        assert w.n_scored == 2 and w.n_errors == 1 and w.n_abnormal == 1
        w.finish(summary={"bundle": "B", "target FPR": 0.05})
    scores = rows(out / "scores.csv")
    assert list(scores[0]) == SCORE_COLUMNS and [r["label"] for r in scores] == ["abnormal", "error", "normal"]
    assert scores[1]["error"] == "a/bad.nii.gz: corrupt or truncated NIfTI"
    assert list(rows(out / "slices.csv")[0]) == SLICE_COLUMNS and len(rows(out / "slices.csv")) == 6
    assert list(rows(out / "lesions.csv")[0]) == LESION_COLUMNS and len(rows(out / "lesions.csv")) == 2
    np.testing.assert_allclose(np.load(out / "heatmaps" / "one_heatmap.npy"), fake_result(0).heatmap)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [
        "one_slice001.png", "one_slice003.png", "two_slice001.png", "two_slice003.png"]
    html = (out / "report.html").read_text()
    assert "one.nii.gz" in html and "bad.nii.gz" in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temporary folder left


def test_writer_finishes_itself_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "res"
    with ResultsWriter(out, heatmaps="none", overlays=0, report=False) as w:
        w.add("s.nii", "s", fake_result())
    assert sorted(p.name for p in out.iterdir()) == ["lesions.csv", "scores.csv", "slices.csv"]
    with pytest.raises(RuntimeError):
        with ResultsWriter(tmp_path / "r2", heatmaps="npy", overlays=0, report=False) as w:
            w.add("s.nii", "s", fake_result())
            raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_writer_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    def replace(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dst))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as info:
        with ResultsWriter(tmp_path / "res", heatmaps="npy", overlays=0, report=False) as w:
            w.add("s.nii", "s", fake_result())
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_an_existing_folder_without_overwrite(tmp_path):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        with ResultsWriter(tmp_path / "res", heatmaps="none", overlays=0, report=False) as w:
            w.add("s.nii", "s", fake_result())
    assert (tmp_path / "res" / "keep.txt").read_text() == "x"
    with ResultsWriter(tmp_path / "res", heatmaps="none", overlays=0, report=False, overwrite=True) as w:
        w.add("s.nii", "s", fake_result())
    assert not (tmp_path / "res" / "keep.txt").exists() and (tmp_path / "res" / "scores.csv").is_file()
    with pytest.raises(ValueError, match="heatmaps"):
        ResultsWriter(tmp_path / "x", heatmaps="png")
