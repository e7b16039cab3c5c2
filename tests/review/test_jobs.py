"""aeanomaly.review.jobs: content hashing of scans and the background Scorer (queue, progress, results and
errors stored in the feedback database, the viewer cache written). A stand-in detector keeps these fast."""

from __future__ import annotations

import hashlib
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from aeanomaly.errors import ScanError
from aeanomaly.io.scan import Scan, internal_affine
from aeanomaly.io.writers import save_nifti
from aeanomaly.preprocess import HUWindow
from aeanomaly.review.db import FeedbackDB
from aeanomaly.review.jobs import Progress, Scorer, content_sha256

SHAPE = (2, 32, 32)


class FakeDetector:
    """What the Scorer uses of a fitted AnomalyDetector."""

    pixel_threshold_ = 0.5
    window_ = HUWindow.parse("lung")
    calibrator_ = SimpleNamespace(threshold_=0.3)

    def __init__(self, fail: BaseException | None = None, gate: threading.Event | None = None):
        self.fail, self.gate, self.calls = fail, gate, []

    def score_scan(self, scan):
        self.calls.append(scan.source)
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        heat = np.zeros(scan.hu.shape, np.float32)
        heat[0, 5:9, 5:9] = 1.0
        labels = (heat > 0).astype(np.int32)
        les = SimpleNamespace(id=1, slice_start=0, slice_end=0, centroid_zyx=(0.0, 6.5, 6.5), centroid_zyx_input=None,
                              area_mm2=16.0, volume_mm3=80.0, equivalent_diameter_mm=4.5, max_residual=1.0,
                              p_value=1e-3, severity="high")
        return SimpleNamespace(scan=scan, heatmap_in_input_grid=lambda: heat, lesion_labels_in_input_grid=lambda: labels,
                               scan_score=0.9, p_value=0.01, label="abnormal", top_slice=0, note="",
                               slice_scores=[0.9, 0.1], slice_labels=[True, False], source=scan.source,
                               n_slices=scan.n_slices, lesions=[les])


def _scan(source="mem.nii"):
    hu = np.random.default_rng(0).uniform(-1000, 200, SHAPE).astype(np.float32)
    return Scan(hu, (5.0, 2.0, 2.0), internal_affine((5.0, 2.0, 2.0)), source)


@pytest.fixture
def db(tmp_path):
    d = FeedbackDB(tmp_path / "r.sqlite")
    yield d
    d.close()


# ------------------------------------------------------------------------------------------ hashing
def test_content_sha256_of_a_file_is_its_bytes_whatever_its_name(tmp_path):
    a, b = tmp_path / "a.nii", tmp_path / "b.nii"
    a.write_bytes(b"scan bytes")
    b.write_bytes(b"scan bytes")
    assert content_sha256(a) == content_sha256(b) == hashlib.sha256(b"scan bytes").hexdigest()
    b.write_bytes(b"other bytes")
    assert content_sha256(b) != content_sha256(a)


def test_content_sha256_of_a_metaimage_includes_its_data_file(tmp_path, write_mhd):
    vol = np.zeros((2, 32, 32), np.int16)
    mhd = write_mhd(tmp_path / "m.mhd", vol)
    raw = mhd.with_suffix(".raw")
    assert content_sha256(mhd) == hashlib.sha256(mhd.read_bytes() + raw.read_bytes()).hexdigest()
    before = content_sha256(mhd)
    raw.write_bytes(np.ones_like(vol).tobytes())  # same header, other voxels
    assert content_sha256(mhd) != before


def test_content_sha256_of_a_folder_covers_names_and_bytes_but_not_hidden_files(tmp_path):
    d = tmp_path / "series"
    (d / "sub").mkdir(parents=True)
    (d / "IM1.dcm").write_bytes(b"one")
    (d / "sub" / "IM2.dcm").write_bytes(b"two")
    h = content_sha256(d)
    (d / ".DS_Store").write_bytes(b"junk")
    assert content_sha256(d) == h
    (d / "sub" / "IM2.dcm").rename(d / "sub" / "IM3.dcm")
    assert content_sha256(d) != h  # relative paths count
    (d / "sub" / "IM3.dcm").rename(d / "sub" / "IM2.dcm")
    assert content_sha256(d) == h


# ------------------------------------------------------------------------------------------- scorer
def test_progress_defaults():
    p = Progress()
    assert (p.stage, p.fraction, p.expected_s) == ("queued", 0.0, None) and p.started > 0


def test_scorer_scores_a_submitted_scan_and_writes_its_cache(db, tmp_path):
    det = FakeDetector()
    scorer = Scorer(det, db, tmp_path / "cache", "v1")
    assert scorer.progress(99) == {"stage": "unknown", "progress": 0.0}
    sid, created = db.add_scan("a" * 64, tmp_path / "mem.nii", "v1")
    assert created
    scorer.submit(sid, _scan())
    assert scorer.wait_idle(30) and scorer.idle()
    row = db.scan(sid)
    assert row["status"] == "done" and row["label"] == "abnormal" and row["scan_score"] == pytest.approx(0.9)
    assert row["threshold"] == pytest.approx(0.3) and row["n_slices"] == 2 and row["n_lesions"] == 1
    assert row["cache_dir"] == str((tmp_path / "cache" / str(sid)).resolve())
    assert sorted(p.name for p in (tmp_path / "cache" / str(sid)).iterdir()) == [
        "heat.npy", "labels.npy", "meta.json", "volume.npy"]
    les = db.lesions(sid)
    assert len(les) == 1 and les[0]["severity"] == "high"
    assert scorer.progress(sid) == {"stage": "done", "progress": 1.0}


@pytest.mark.parametrize("fail, message", [
    (ScanError("no body found in any slice", "x.nii"), "x.nii: no body found in any slice"),
    (ValueError("bad\nvalue"), "bad"),  # the first line only
    (RuntimeError("secret internals"), "internal error while scoring (RuntimeError)"),
])
def test_a_scoring_failure_is_stored_on_the_row_and_the_worker_goes_on(db, tmp_path, fail, message):
    det = FakeDetector(fail=fail)
    scorer = Scorer(det, db, tmp_path / "cache", "v1")
    sid, _ = db.add_scan("b" * 64, tmp_path / "x.nii", "v1")
    scorer.submit(sid, _scan())
    assert scorer.wait_idle(30)
    row = db.scan(sid)
    assert row["status"] == "error" and row["error"] == message
    assert scorer.progress(sid) == {"stage": "error", "progress": 1.0}
    det.fail = None  # the worker thread survived: the next scan is scored
    sid2, _ = db.add_scan("c" * 64, tmp_path / "y.nii", "v1")
    scorer.submit(sid2, _scan())
    assert scorer.wait_idle(30) and db.scan(sid2)["status"] == "done"


def test_progress_while_scoring_and_wait_idle_timeout(db, tmp_path):
    gate = threading.Event()
    scorer = Scorer(FakeDetector(gate=gate), db, tmp_path / "cache", "v1")
    sid, _ = db.add_scan("d" * 64, tmp_path / "z.nii", "v1")
    scorer.submit(sid, _scan())
    assert scorer.wait_idle(0.2) is False and not scorer.idle()
    p = scorer.progress(sid)
    assert p["stage"] in ("queued", "scoring") and 0 <= p["progress"] < 1
    gate.set()
    assert scorer.wait_idle(30) and db.scan(sid)["status"] == "done"


def test_submit_path_discovers_a_file_once(db, tmp_path):
    det = FakeDetector()
    scorer = Scorer(det, db, tmp_path / "cache", "v1")
    path = save_nifti(tmp_path / "scans" / "found.nii.gz", _scan().hu.astype(np.int16), internal_affine((5, 2, 2)))
    scorer.submit_path(path)
    assert scorer.wait_idle(30)
    (row,) = db.scans()
    assert row["name"] == "found.nii.gz" and row["status"] == "done" and row["sha256"] == content_sha256(path)
    assert row["path"] == str(path.resolve()) and len(det.calls) == 1
    scorer.submit_path(path)  # already scored, cache present: not scored again
    assert scorer.wait_idle(30) and len(det.calls) == 1 and len(db.scans()) == 1
    import shutil

    shutil.rmtree(row["cache_dir"])  # the cache went away: scored again into the same row
    scorer.submit_path(path)
    assert scorer.wait_idle(30) and len(det.calls) == 2 and len(db.scans()) == 1
    scorer.submit_path(tmp_path / "scans" / "missing.nii.gz")  # unreadable: logged, no row
    assert scorer.wait_idle(30) and len(db.scans()) == 1


def test_a_scan_that_cannot_load_is_an_error_row(db, tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    scorer = Scorer(FakeDetector(), db, tmp_path / "cache", "v1")
    scorer.submit_path(bad)
    assert scorer.wait_idle(30)
    (row,) = db.scans()
    assert row["status"] == "error" and "bad.nii.gz" in row["error"] and "\n" not in row["error"]
