"""Shared pieces of the benchmarks: machine info, atomic JSON writing, a stopwatch.

Only numpy/psutil at import time; library versions are read from modules already imported (or
importable) when :func:`machine_info` is called.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
ROOT = BENCH_DIR.parent


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for BLAS / convolution speed (avx*, amx*, fma, f16c)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                f = set(line.split(":", 1)[1].split())
                return sorted(x for x in f if x.startswith(("avx", "amx", "fma", "f16c")))
    except OSError:
        pass
    return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Date, CPU, memory, load and library versions."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_model": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    except Exception:  # noqa: BLE001
        pass
    for mod in ("aeanomaly", "numpy", "scipy", "sklearn", "tensorflow", "keras", "torch", "nibabel"):
        try:
            m = sys.modules.get(mod) or __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            info[mod] = None
    try:
        import subprocess

        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        info["git_commit"] = None
    try:
        import tensorflow as tf

        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # noqa: BLE001
        pass
    return info


def jsonable(o):
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (numpy values, NaN/inf → null) as indented JSON, atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{p.name}")
    tmp.write_text(json.dumps(jsonable(payload), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


class Stopwatch:
    """Named wall-clock laps: ``with sw("train"): ...``; ``sw.laps`` maps name → seconds."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self.start = time.perf_counter()

    def __call__(self, name: str):
        sw = self

        class _Lap:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                sw.laps[name] = round(sw.laps.get(name, 0.0) + time.perf_counter() - self.t, 2)

        return _Lap()

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 1)
