"""Helpers shared by the speed, memory and training-throughput benchmarks.

Machine info, robust timing (median of repeats), peak RSS of this process or of a child, model
FLOP counting, a numpy sgemm reference and the JSON writer. Only numpy/psutil at import time;
TensorFlow is imported lazily so that thread settings can still be applied by the caller.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                f = set(line.split(":", 1)[1].split())
                return sorted(x for x in f if x.startswith(("avx", "amx", "fma", "f16c")))
    except OSError:
        pass
    return []


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict:
    """Machine and library versions (TF/Keras only when already imported or importable)."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_avg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except Exception:  # noqa: BLE001
        pass
    for mod in ("tensorflow", "keras", "torch", "scipy", "nibabel"):
        try:
            m = sys.modules.get(mod) or __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            info[mod] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        info["git_commit"] = None
    return info


def write_json(name: str, payload: dict) -> Path:
    """Write ``results/<name>.json`` (atomically) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_default, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def clean(obj):
    """Replace non-finite floats by None, recursively (for JSON with allow_nan=False)."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


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
