"""Slice-parallel helpers: run a per-slice computation on z-chunks of a volume in a thread pool.

The per-slice preprocessing and analysis (windowing, body and lung masks, resampling, smoothing) are
numpy / scipy.ndimage calls that release the GIL, so threads use every core without copying the
volume. Results are identical to one call on the whole volume as long as ``fn`` treats slices
independently (no smoothing or morphology across z), which every caller here guarantees.

The number of threads is ``$AEANOMALY_THREADS`` when set (1 = serial), else the usable CPUs (at most 8).
While the threads run, BLAS is limited to one thread of its own (threadpoolctl): the per-slice matrix
products of resampling would otherwise start BLAS threads in every chunk's thread and oversubscribe
the cores (measured: 256 → 512 px upsampling of 300 slices 1.05 s oversubscribed, 0.45 s limited).
That limit is process-wide, so it is counted: when two threads run ``map_slices`` at once (batch
scoring prepares the next scan while the current one is analysed), the first sets it and the last
to finish restores BLAS's own thread count.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable

import numpy as np
from threadpoolctl import ThreadpoolController

from .errors import ConfigError

#: Fewer slices than this per chunk are not worth a thread.
MIN_CHUNK = 4
#: At most this many slices per chunk: what a stage holds in flight beside its outputs is a few chunks.
MAX_CHUNK = 32


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None
#: The loaded BLAS libraries, and the number of imported modules when they were found: finding them
#: (threadpoolctl walks the process's shared libraries) took about 5 ms, paid by every ``map_slices``
#: call (a dozen per scored scan) before. They are looked for again only after an import, which may
#: have loaded another BLAS (scipy brings its own beside numpy's).
_blas_controller: tuple[int, ThreadpoolController] | None = None


def _release_openblas_control() -> None:
    """Recent threadpoolctl (3.8 here) lets only the first thread that limits OpenBLAS's process-wide pool
    change it again (the others are silently ignored) until that thread clears it; :func:`single_threaded_blas`
    may set the limit in one thread and restore it in another, under its own lock, so it clears it."""
    import threadpoolctl

    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


@contextmanager
def single_threaded_blas():
    """BLAS limited to one thread while any thread is inside this context (nesting and concurrent
    use are counted; the original limits come back when the last one leaves, whichever thread that is)."""
    global _blas_users, _blas_limiter, _blas_controller
    with _blas_lock:
        if _blas_users == 0:
            _release_openblas_control()
            if _blas_controller is None or _blas_controller[0] != len(sys.modules):
                _blas_controller = (len(sys.modules), ThreadpoolController())
            _blas_limiter = _blas_controller[1].limit(limits=1, user_api="blas")
            _release_openblas_control()
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _release_openblas_control()
                _blas_limiter.restore_original_limits()
                _release_openblas_control()
                _blas_limiter = None


def n_threads() -> int:
    """Threads for slice-parallel work: ``$AEANOMALY_THREADS`` or the usable CPUs (≤ 8)."""
    env = os.environ.get("AEANOMALY_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(f"AEANOMALY_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ConfigError(f"AEANOMALY_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def chunk_bounds(n: int, threads: int, min_chunk: int = MIN_CHUNK, max_chunk: int = MAX_CHUNK) -> list[tuple[int, int]]:
    """Split ``range(n)`` into contiguous ``[start, stop)`` chunks: at least ``threads`` of them (so that
    every thread has work) and of at most ``max_chunk`` slices, but none shorter than ``min_chunk``."""
    want = max(int(threads), -(-n // max(1, int(max_chunk))))
    k = max(1, min(want, n // max(1, min_chunk)))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a] or [(0, n)]


def map_slices(fn: Callable, *arrays: np.ndarray, threads: int | None = None, out: np.ndarray | None = None):
    """``fn(*chunks)`` on z-chunks of ``arrays`` (all with the same first axis), results assembled.

    ``fn`` returns one array or a tuple of arrays, each with the chunk's slices on axis 0; the result
    has the same structure for the whole volume. Chunks run in a thread pool, at most two per thread
    at a time, and each result is copied into the preallocated output as soon as it is the next one
    in order: the memory in flight is a few chunks, not a second copy of the volume. With one thread
    (or a short volume) it is a plain call on the whole volume.

    With ``out`` (an array with the volume's slices on axis 0), ``fn`` is called as
    ``fn(*chunks, out=view)`` and writes each chunk's result into its view of ``out``, which is
    returned: nothing is assembled or copied.
    """
    n = len(arrays[0])
    if any(len(a) != n for a in arrays) or (out is not None and len(out) != n):
        raise ConfigError("map_slices needs arrays with the same number of slices")
    t = n_threads() if threads is None else int(threads)
    bounds = chunk_bounds(n, t)
    if out is not None:
        if t <= 1 or len(bounds) == 1:
            fn(*arrays, out=out)
            return out
        with single_threaded_blas(), ThreadPoolExecutor(min(t, len(bounds))) as pool:
            for done in [pool.submit(fn, *(a[lo:hi] for a in arrays), out=out[lo:hi]) for lo, hi in bounds]:
                done.result()
        return out
    if t <= 1 or len(bounds) == 1:
        return fn(*arrays)
    outputs: list[np.ndarray] | None = None
    single = False
    with single_threaded_blas(), ThreadPoolExecutor(min(t, len(bounds))) as pool:
        pending: deque = deque()
        todo = iter(bounds)

        def submit() -> None:
            b = next(todo, None)
            if b is not None:
                pending.append((b, pool.submit(fn, *(a[b[0]: b[1]] for a in arrays))))

        for _ in range(2 * t):
            submit()
        while pending:
            (lo, hi), fut = pending.popleft()
            part = fut.result()
            submit()
            single = not isinstance(part, tuple)
            parts = (part,) if single else part
            if outputs is None:
                outputs = [np.empty((n,) + np.shape(q)[1:], dtype=np.asarray(q).dtype) for q in parts]
            for out, q in zip(outputs, parts):
                if len(q) != hi - lo:
                    raise ValueError(f"map_slices: fn returned {len(q)} slices for a chunk of {hi - lo}")
                out[lo:hi] = q
            del part, parts
    return outputs[0] if single else tuple(outputs)
