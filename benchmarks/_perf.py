"""Timing helpers of the speed, memory and training-throughput benchmarks.

Robust timing (median of repeats), peak RSS of this process or of a child, model FLOP counting and a
numpy sgemm reference; machine info and the JSON writer come from :mod:`_common`. Only numpy/psutil at import time;
TensorFlow is imported lazily so that thread settings can still be applied by the caller.
"""

from __future__ import annotations

import os
import resource
import statistics
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


def numpy_sgemm_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """float32 matrix-multiply GFLOP/s of numpy's BLAS (``2 n^3`` FLOPs per product)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return _gemm_rates(n, timed(lambda: a @ b, repeats=repeats, warmup=1))


def _gemm_rates(n: int, t: dict) -> dict:
    """GFLOP/s (median and best) of ``n × n`` matrix products timed as ``t`` (:func:`timed`): ``2 n³`` FLOPs each."""
    flops = 2.0 * n**3
    return {"n": n, "median_s": t["median_s"], "gflops_median": flops / t["median_s"] / 1e9,
            "gflops_best": flops / t["min_s"] / 1e9}


def bf16_gemm_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """bfloat16 matrix-multiply GFLOP/s of TensorFlow (oneDNN; float32 accumulation): the machine's
    reference for bfloat16 inference, as numpy sgemm is for float32. Where the CPU has neither
    AVX512-BF16 nor AMX, oneDNN emulates it and this rate shows so."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((n, n), dtype=np.float32), dtype=tf.bfloat16)
    b = tf.constant(rng.standard_normal((n, n), dtype=np.float32), dtype=tf.bfloat16)
    mm = tf.function(lambda u, v: tf.matmul(u, v), autograph=False)
    return _gemm_rates(n, timed(lambda: mm(a, b).numpy(), repeats=repeats, warmup=1))


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


#: Architectures compared by the speed and fit benchmarks (``build_autoencoder`` keyword arguments);
#: the first is the release default (``TRAIN_DEFAULTS["norm"]``).
ARCHITECTURES = {
    "batch (folded at inference; default)": {"norm": "batch"},
    "group (the earlier default)": {"norm": "group"},
    "none": {"norm": "none"},
}


def network_rates(size: int, arch: dict, *, batch_size: int = 32, train_batch_size: int = 16, repeats: int = 3,
                  train: bool = True, sgemm_gflops: float | None = None, precision: str = "float32") -> dict:
    """Bare network throughput of one architecture on random slices, through public APIs only.

    Inference: :func:`aeanomaly.model.autoencoder.inference_model` (BatchNormalization folded; in
    ``precision``) in a ``tf.function``, as the detector runs it. Training: one Adam step with an L1 loss in a
    ``tf.function`` (the work ``fit`` does per batch, without the input pipeline). GFLOP/s count the
    convolutions only (``model_flops``); a training step is counted as 3 × the forward pass.

    The sgemm reference is measured again right before (best of 10 products of 1024²; on a shared
    machine the best is the closest to what the cores can do) unless ``sgemm_gflops`` is given; the
    fractions use it, so numerator and denominator come from the same minute.
    """
    import keras
    import tensorflow as tf

    from aeanomaly.model.autoencoder import build_autoencoder, inference_model

    local_sgemm = numpy_sgemm_gflops(1024, 10)["gflops_best"] if not sgemm_gflops else 0.0
    keras.utils.set_random_seed(0)
    model = build_autoencoder(size=size, **arch)
    gflop = model_flops(model)["conv_gflop"]
    inf = inference_model(model, precision)
    fn = tf.function(lambda t: inf(t, training=False), autograph=False, reduce_retracing=True)
    x = np.random.default_rng(0).random((batch_size, size, size, 1), dtype=np.float32)
    t = timed(lambda: fn(x).numpy(), repeats=repeats, warmup=1)
    out = {"size": size, "arch": arch, "precision": precision, "gflop_per_slice": gflop, "batch_size": batch_size,
           "infer_slices_per_s": batch_size / t["median_s"], "infer_best_slices_per_s": batch_size / t["min_s"]}
    out["infer_gflops"] = gflop * out["infer_slices_per_s"]
    if train:
        opt = keras.optimizers.Adam(1e-3)
        xt = x[:train_batch_size]

        @tf.function(autograph=False)
        def step(a):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.abs(model(a, training=True) - a[..., :1]))
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            return loss

        tt = timed(lambda: step(xt).numpy(), repeats=repeats, warmup=1)
        out.update({"train_batch_size": train_batch_size, "train_slices_per_s": train_batch_size / tt["median_s"]})
        out["train_gflops"] = 3 * gflop * out["train_slices_per_s"]
    sg = sgemm_gflops or max(numpy_sgemm_gflops(1024, 10)["gflops_best"], local_sgemm)
    out["sgemm_gflops_reference"] = sg
    out["infer_fraction_of_sgemm"] = out["infer_gflops"] / sg
    if train:
        out["train_fraction_of_sgemm"] = out["train_gflops"] / sg
    return out


def shared_machine_note() -> dict:
    """What a reader of the JSON needs to know about the machine's load during the run."""
    return {"shared_machine": True, "load_avg_at_start": load_avg(), "cpus": usable_cpus(),
            "note": "the CPUs were shared with other agents' work during this run: absolute times vary "
                    "between runs; compare ratios within one run (same process, same minutes)"}


#: Runs ``aeanomaly`` (``python -m aeanomaly.cli``) unchanged and, at exit, copies the process's
#: /proc/self/status (VmHWM: the peak RSS of this program's own memory) to $AEANOMALY_BENCH_STATUS.
_CLI_WITH_PEAK = (
    "import atexit, os, runpy, shutil, sys\n"
    "atexit.register(shutil.copyfile, '/proc/self/status', os.environ['AEANOMALY_BENCH_STATUS'])\n"
    "sys.argv[0] = 'aeanomaly'\n"
    "runpy.run_module('aeanomaly.cli', run_name='__main__', alter_sys=True)\n"
)


def run_cli(args: list[str], status_file: Path) -> dict:
    """``aeanomaly ARGS`` as a user runs it, in a child process: wall time (TensorFlow's start included)
    and the child's peak RSS.

    The peak is the child's own ``VmHWM`` (copied by the child at exit to ``status_file``), not
    ``ru_maxrss`` of ``wait4``: Linux carries the forking parent's high-water mark into the child's
    ``ru_maxrss`` at ``exec``, so from a benchmark process of several GiB it reported the benchmark's
    peak, not the command's."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CLI_WITH_PEAK, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env={**os.environ, "AEANOMALY_BENCH_STATUS": str(status_file)})
    wall = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")[-400:]
    peak = None
    if status_file.exists():
        for line in status_file.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024.0
        status_file.unlink()
    return {"wall_s": wall, "peak_rss_mib": peak, "peak_rss_source": "VmHWM of the child at exit",
            "exit_code": proc.returncode, **({"stderr_tail": err} if proc.returncode else {})}
