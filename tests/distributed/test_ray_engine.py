"""Ray engine: same files as the local engine, resumable, survives a killed worker.

Uses a local Ray instance with 2 CPUs and the tiny fitted bundle of tests/conftest.py.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aeanomaly.distributed.ray_engine import (MANIFEST, Manifest, ScanRecord, content_hash, run_fingerprint,
                                              score_folder_on_ray, score_on_ray)

N_SCANS = 4
SUMMARY = {"bundle": "tiny", "engine": "test"}


# -------------------------------------------------------------------------------------------------
# No Ray needed
# -------------------------------------------------------------------------------------------------
def test_default_path_imports_no_ray():
    code = ("import sys; import aeanomaly.distributed.ray_engine, aeanomaly.distributed.strategy, "
            "aeanomaly.io.results; bad = [m for m in ('ray', 'tensorflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_content_hash_files_folders_and_metaimage(tmp_path, write_mhd):
    a = tmp_path / "a.npy"
    a.write_bytes(b"abc")
    b = tmp_path / "b.npy"
    b.write_bytes(b"abc")
    assert content_hash(a) == content_hash(b)  # content, not the name
    b.write_bytes(b"abd")
    assert content_hash(a) != content_hash(b)
    d = tmp_path / "dicom"
    d.mkdir()
    (d / "1.dcm").write_bytes(b"one")
    (d / "2.dcm").write_bytes(b"two")
    h = content_hash(d)
    (d / ".DS_Store").write_bytes(b"junk")  # hidden files do not count
    assert content_hash(d) == h
    (d / "2.dcm").write_bytes(b"TWO")
    assert content_hash(d) != h
    mhd = write_mhd(tmp_path / "m" / "scan.mhd", np.zeros((2, 3, 3)))
    h = content_hash(mhd)
    raw = mhd.with_suffix(".raw")
    raw.write_bytes(b"\x01" + raw.read_bytes()[1:])  # the data file changes, the header does not
    assert content_hash(mhd) != h
    from aeanomaly.errors import ScanError

    with pytest.raises(ScanError, match="missing.nii"):
        content_hash(tmp_path / "missing.nii")


def test_manifest_keys_settings_and_survives_torn_line(tmp_path):
    fitted_bundle = tmp_path / "bundle"  # the fingerprint hashes the bundle's files
    fitted_bundle.mkdir()
    (fitted_bundle / "bundle.json").write_text("{}")
    (tmp_path / "heatmaps").mkdir()
    (tmp_path / "heatmaps" / "s_heatmap.nii.gz").write_bytes(b"x")
    fp = run_fingerprint(fitted_bundle)
    assert fp != run_fingerprint(fitted_bundle, overlays=0)
    (fitted_bundle / "bundle.json").write_text('{"refitted": 1}')
    assert fp != run_fingerprint(fitted_bundle)
    (fitted_bundle / "bundle.json").write_text("{}")
    assert fp != run_fingerprint(fitted_bundle, params={"slice_fdr": 0.1})
    m = Manifest(tmp_path)
    m.append(ScanRecord(0, "/x/s.nii.gz", "s", "k1", fp, row={"scan": "/x/s.nii.gz"},
                        files=["heatmaps/s_heatmap.nii.gz"]))
    with open(tmp_path / MANIFEST, "a") as fh:
        fh.write('{"v": 1, "key": "k2", "trunc')  # a crash mid-line
    m2 = Manifest(tmp_path)
    assert len(m2) == 1
    assert m2.get("k1", fp, "s") is not None
    assert m2.get("k1", "other-settings", "s") is None
    (tmp_path / "heatmaps" / "s_heatmap.nii.gz").unlink()
    assert m2.get("k1", fp, "s") is None  # its files are gone: score it again


# -------------------------------------------------------------------------------------------------
# On a local Ray instance
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'aeanomaly[distributed]')")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def scans(phantom_test) -> list[Path]:
    from aeanomaly.io import find_scans

    normal = find_scans(phantom_test / "normal")[:N_SCANS // 2]
    abnormal = find_scans(phantom_test / "abnormal")[:N_SCANS - N_SCANS // 2]
    return [Path(p) for p in (*normal, *abnormal)]


def local_engine(bundle, paths, out) -> Path:
    """What ``aeanomaly score`` does (the local engine), with the same writer."""
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.errors import AeAnomalyError
    from aeanomaly.io.results import ResultsWriter, output_names

    det = AnomalyDetector.load(bundle)
    with ResultsWriter(out, heatmaps="nifti", overlays=2, pixel_threshold=det.pixel_threshold_) as w:
        for path, name in zip(paths, output_names(paths)):
            try:
                res = det.score_scan(path)
            except (AeAnomalyError, OSError, MemoryError) as err:  # as aeanomaly score does
                w.add(path, name, err)
                continue
            w.add(path, name, res)
        w.finish(summary=SUMMARY)
    return out


@pytest.fixture(scope="module")
def local_out(fitted_bundle, scans, tmp_path_factory) -> Path:
    return local_engine(fitted_bundle, scans, tmp_path_factory.mktemp("local") / "results")


def pixel_threshold(bundle) -> float:
    from aeanomaly.detector import AnomalyDetector

    return AnomalyDetector.load(bundle).pixel_threshold_


def assert_same_folder(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert any(f.endswith(".png") for f in files_a) and any(f.endswith(".nii.gz") for f in files_a)
    import nibabel as nib

    for f in files_a:
        fa, fb = a / f, b / f
        if f.endswith(".nii.gz"):  # gzip stores a write time: compare the NIfTI bytes inside
            assert gzip.decompress(fa.read_bytes()) == gzip.decompress(fb.read_bytes()), f
            ia, ib = nib.load(fa), nib.load(fb)
            assert np.array_equal(ia.get_fdata(), ib.get_fdata()) and np.array_equal(ia.affine, ib.affine), f
        elif f == "report.html":  # byte for byte but its footer's "Generated <minute> UTC" stamp
            assert _unstamped(fa) == _unstamped(fb), f
        else:  # CSVs, PNGs: byte for byte
            assert fa.read_bytes() == fb.read_bytes(), f


def _unstamped(path: Path) -> bytes:
    text, n = re.subn(rb"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", b"Generated <time>", path.read_bytes())
    assert n == 1, "report.html has no (or several) 'Generated ... UTC' stamps: update this test"
    return text


@pytest.mark.slow
def test_ray_gives_the_local_engines_files(ray_local, fitted_bundle, scans, local_out, tmp_path):
    seen = []
    writer, records = score_folder_on_ray(fitted_bundle, scans, tmp_path / "results", overlays=2,
                                          pixel_threshold=pixel_threshold(fitted_bundle), summary=SUMMARY,
                                          workers=2, on_result=seen.append)
    assert_same_folder(local_out, tmp_path / "results")
    assert [r.scan for r in records] == [str(p) for p in scans]  # input order
    assert len(seen) == len(scans) and not any(r.reused or r.error for r in seen)
    assert len({r.worker for r in records}) == 2  # both workers took part
    assert writer.n_scored == len(scans)
    assert not (tmp_path / ".results.ray-work").exists()  # work folder removed once the results are in place


class Crash(RuntimeError):
    pass


@pytest.mark.slow
def test_interrupted_run_resumes_without_rescoring(ray_local, fitted_bundle, scans, local_out, tmp_path):
    from aeanomaly.io.results import output_names

    work, k = tmp_path / "work", 2
    done = []

    def crash_after_k(rec):
        done.append(rec)
        if len(done) == k:
            raise Crash("driver killed")

    with pytest.raises(Crash):
        score_on_ray(fitted_bundle, scans, output_names(scans), work, overlays=2, workers=2,
                     on_result=crash_after_k)
    finished = {json.loads(line)["scan"] for line in (work / MANIFEST).read_text().splitlines()}
    assert finished == {r.scan for r in done}

    again = []
    writer, records = score_folder_on_ray(fitted_bundle, scans, tmp_path / "results", work_dir=work, overlays=2,
                                          pixel_threshold=pixel_threshold(fitted_bundle), summary=SUMMARY,
                                          workers=2, on_result=again.append)
    reused = {r.scan for r in again if r.reused}
    rescored = {r.scan for r in again if not r.reused}
    assert reused == finished  # what finished before the crash was not scored again
    assert rescored == {str(p) for p in scans} - finished
    assert_same_folder(local_out, tmp_path / "results")


@pytest.mark.slow
def test_killed_worker_is_restarted_and_its_scans_retried(ray_local, fitted_bundle, scans, local_out, tmp_path):
    killed = []

    def kill_first_worker(rec):
        if not killed:  # the worker that finished first still has a scan queued (in_flight=2): kill it
            pid = int(rec.worker.rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    writer, records = score_folder_on_ray(fitted_bundle, scans, tmp_path / "results", overlays=2,
                                          pixel_threshold=pixel_threshold(fitted_bundle), summary=SUMMARY,
                                          workers=2, in_flight=2, on_result=kill_first_worker, keep_work=True)
    assert killed
    assert not any(r.error for r in records)
    assert_same_folder(local_out, tmp_path / "results")
    lines = (tmp_path / ".results.ray-work" / MANIFEST).read_text().splitlines()
    assert sorted(json.loads(x)["scan"] for x in lines) == sorted(str(p) for p in scans)  # each scan once
    assert any(int(r.worker.rsplit(":", 1)[1]) not in killed for r in records)


@pytest.mark.slow
def test_unreadable_scan_is_the_same_error_row_as_locally(ray_local, fitted_bundle, scans, tmp_path):
    bad = tmp_path / "inputs" / "corrupt.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"not a nifti file")
    missing = tmp_path / "inputs" / "gone.nii.gz"
    paths = [bad, scans[0], missing]
    local = local_engine(fitted_bundle, paths, tmp_path / "local")
    writer, records = score_folder_on_ray(fitted_bundle, paths, tmp_path / "ray", overlays=2,
                                          pixel_threshold=pixel_threshold(fitted_bundle), summary=SUMMARY,
                                          workers=1, keep_work=True)
    assert writer.n_errors == 2 and writer.n_scored == 1
    assert_same_folder(local, tmp_path / "ray")
    lines = (tmp_path / ".ray.ray-work" / MANIFEST).read_text().splitlines()
    assert [json.loads(x)["scan"] for x in lines] == [str(scans[0])]  # errors are retried on a re-run
