"""Timing helpers of the speed, memory and training-throughput benchmarks.

Robust timing (median of repeats), peak RSS of this process or of a child, model FLOP counting and a
numpy sgemm reference; machine info and the JSON writer come from :mod:`_common`. Only numpy/psutil at import time;
TensorFlow is imported lazily so that thread settings can still be applied by the caller.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from _common import RESULTS, ROOT, machine_info, usable_cpus  # noqa: E402,F401  (shared with the other benchmarks)
import _common  # noqa: E402


def write_json(name: str, payload: dict) -> Path:
    """Write ``results/<name>.json`` (atomically; NaN/inf → null) and return its path."""
    return _common.write_json(RESULTS / f"{name}.json", payload)


def clean(obj):
    """Replace non-finite floats by None and numpy values by Python ones, recursively."""
    return _common.jsonable(obj)


def timed(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; seconds as median/min/all."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "all_s": [round(t, 4) for t in ts]}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run a child process; its wall time, exit code, peak RSS (``ru_maxrss`` via wait4) and output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    # communicate() reaped the child; its rusage is folded into RUSAGE_CHILDREN only as a max over
    # all children, so the child reports its own peak too (see child_report) when it can.
    wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "wall_s": wall, "stdout": out, "stderr": err}


def run_child_rusage(cmd: list[str], env: dict | None = None, cwd=None) -> dict:
    """Run a child with ``os.wait4`` so that its own peak RSS is known exactly (MiB)."""
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=devnull, env=env, cwd=cwd)
        out = proc.stdout.read()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_rss_mib": ru.ru_maxrss / 1024.0,
            "stdout": out.decode(errors="replace")}


def numpy_sgemm_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """float32 matrix-multiply GFLOP/s of numpy's BLAS (``2 n^3`` FLOPs per product)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    t = timed(lambda: a @ b, repeats=repeats, warmup=1)
    flops = 2.0 * n**3
    return {"n": n, "median_s": t["median_s"], "gflops_median": flops / t["median_s"] / 1e9,
            "gflops_best": flops / t["min_s"] / 1e9}


def model_flops(model) -> dict:
    """Forward-pass FLOPs per sample of a Keras model (2 × multiply-adds of Conv2D,
    Conv2DTranspose and Dense; normalisation and activations are counted separately, ~elementwise)."""
    import keras

    conv = 0.0
    other = 0.0
    for layer in model.layers:
        try:
            in_shape = layer.input.shape if not isinstance(layer.input, list) else layer.input[0].shape
            out_shape = layer.output.shape
        except Exception:  # noqa: BLE001
            continue
        if isinstance(layer, keras.layers.Conv2DTranspose):
            kh, kw = layer.kernel_size
            cin, cout = in_shape[-1], layer.filters
            conv += 2.0 * in_shape[1] * in_shape[2] * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin, cout = in_shape[-1], layer.filters
            conv += 2.0 * out_shape[1] * out_shape[2] * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            conv += 2.0 * in_shape[-1] * layer.units
        elif isinstance(layer, (keras.layers.GroupNormalization, keras.layers.LeakyReLU,
                                keras.layers.BatchNormalization)):
            other += 5.0 * float(np.prod(out_shape[1:]))
    return {"conv_gflop": conv / 1e9, "elementwise_gflop": other / 1e9, "total_gflop": (conv + other) / 1e9}


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]
