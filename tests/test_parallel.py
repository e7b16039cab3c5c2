"""Slice-parallel chunks give exactly the serial result."""

import numpy as np
import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.parallel import chunk_bounds, map_slices, n_threads, single_threaded_blas


def test_chunk_bounds_cover_range_once():
    for n in (0, 1, 3, 4, 9, 17, 120, 301):
        for t in (1, 2, 3, 8):
            b = chunk_bounds(n, t)
            assert b[0][0] == 0 and b[-1][1] == n
            assert all(x[1] == y[0] for x, y in zip(b[:-1], b[1:]))
            sizes = [hi - lo for lo, hi in b]
            assert max(sizes) <= 32  # at most MAX_CHUNK slices
            if n >= 4 * t:
                assert len(b) >= t  # every thread has a chunk
            if len(b) > 1:
                assert min(sizes) >= 4
    assert len(chunk_bounds(300, 2)) == 10  # 300 slices: ten chunks of 30, not two of 150


def test_map_slices_matches_serial_with_tuples():
    rng = np.random.default_rng(0)
    a, m = rng.random((23, 8, 8)), rng.random((23, 8, 8)) > 0.5

    def fn(x, mask):
        return x * mask, (x * mask).reshape(len(x), -1).sum(axis=1)

    serial = fn(a, m)
    big, bm = rng.random((101, 4, 4)), rng.random((101, 4, 4)) > 0.5  # more chunks than threads
    for g, s in zip(map_slices(fn, big, bm, threads=2), fn(big, bm)):
        np.testing.assert_array_equal(g, s)
    for t in (1, 2, 5):
        got = map_slices(fn, a, m, threads=t)
        assert isinstance(got, tuple) and len(got) == 2
        for g, s in zip(got, serial):
            np.testing.assert_array_equal(g, s)
    np.testing.assert_array_equal(map_slices(lambda x: x + 1, a, threads=3), a + 1)
    with pytest.raises(ConfigError):
        map_slices(fn, a, m[:5])


def test_map_slices_into_out_writes_each_chunk_in_place():
    rng = np.random.default_rng(1)
    a = rng.random((101, 4, 4))
    seen = []

    def fn(x, out):
        seen.append(len(x))
        np.multiply(x, 2.0, out=out)

    for t in (1, 2, 5):
        seen.clear()
        out = np.full(a.shape, np.nan)
        assert map_slices(fn, a, threads=t, out=out) is out
        np.testing.assert_array_equal(out, 2 * a)
        assert sum(seen) == len(a) and (len(seen) > 1) == (t > 1)
    with pytest.raises(ConfigError):
        map_slices(fn, a, out=np.empty((5, 4, 4)))


def test_thread_count_from_environment(monkeypatch):
    monkeypatch.setenv("AEANOMALY_THREADS", "3")
    assert n_threads() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("AEANOMALY_THREADS", bad)
        with pytest.raises(ConfigError, match="AEANOMALY_THREADS"):
            n_threads()
    monkeypatch.delenv("AEANOMALY_THREADS")
    assert 1 <= n_threads() <= 8


def test_prepare_volume_and_scoring_identical_serial_and_threaded(fitted_bundle, phantom_test, monkeypatch):
    from aeanomaly.detector import AnomalyDetector

    det = AnomalyDetector.load(fitted_bundle)
    scan = sorted((phantom_test / "abnormal").glob("*.nii.gz"))[0]
    out = {}
    for t in ("1", "3"):
        monkeypatch.setenv("AEANOMALY_THREADS", t)
        r = det.score_scan(scan)
        out[t] = (r.prepared.x, r.prepared.body, r.heatmap, r.slice_scores, r.heatmap_in_input_grid(), r.scan_score)
    for a, b in zip(out["1"], out["3"]):
        np.testing.assert_array_equal(a, b)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]


def test_blas_limit_counted_across_threads_and_restored():
    """Two threads inside the limit at overlapping times (A enters, B enters, A leaves, B leaves): BLAS
    stays at one thread until the last one leaves, then its own count comes back. Without the count,
    A's exit restored the original while B ran, and B's exit set one thread for good (and threadpoolctl
    ignores a thread that did not set the limit, which the helper must work around)."""
    import threading

    before = _blas_threads()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with single_threaded_blas():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with single_threaded_blas():
            b_in.set()
            a_out.wait(10)
            seen["b after a left"] = _blas_threads()

    ts = [threading.Thread(target=f) for f in (a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert all(n == 1 for n in seen["b after a left"]), (before, seen)
    assert _blas_threads() == before
    with single_threaded_blas():
        with single_threaded_blas():  # nesting in one thread
            assert all(n == 1 for n in _blas_threads())
        assert all(n == 1 for n in _blas_threads())
    assert _blas_threads() == before
