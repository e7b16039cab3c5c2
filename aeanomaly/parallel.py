"""Slice-parallel helpers: run a per-slice computation on z-chunks of a volume in a thread pool.

The per-slice preprocessing and analysis (windowing, body and lung masks, resampling, smoothing) are
numpy / scipy.ndimage calls that release the GIL, so threads use every core without copying the
volume. Results are identical to one call on the whole volume as long as ``fn`` treats slices
independently (no smoothing or morphology across z), which every caller here guarantees.

The number of threads is ``$AEANOMALY_THREADS`` when set (1 = serial), else the usable CPUs (at most 8).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .errors import ConfigError

#: Fewer slices than this per chunk are not worth a thread.
MIN_CHUNK = 4


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


def chunk_bounds(n: int, threads: int, min_chunk: int = MIN_CHUNK) -> list[tuple[int, int]]:
    """Split ``range(n)`` into at most ``threads`` contiguous ``[start, stop)`` chunks of ≥ ``min_chunk``."""
    k = max(1, min(int(threads), n // max(1, min_chunk)))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a] or [(0, n)]


def map_slices(fn: Callable, *arrays: np.ndarray, threads: int | None = None):
    """``fn(*chunks)`` on z-chunks of ``arrays`` (all with the same first axis), results concatenated.

    ``fn`` returns one array or a tuple of arrays, each with the chunk's slices on axis 0; the result
    has the same structure for the whole volume. With one thread (or a short volume) it is a plain call.
    """
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ConfigError("map_slices needs arrays with the same number of slices")
    bounds = chunk_bounds(n, n_threads() if threads is None else threads)
    if len(bounds) == 1:
        return fn(*arrays)
    with ThreadPoolExecutor(len(bounds)) as pool:
        parts = list(pool.map(lambda b: fn(*(a[b[0]: b[1]] for a in arrays)), bounds))
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)
