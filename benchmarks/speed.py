"""Scoring speed: bare predict, the full ``score`` pipeline, a PyTorch peer, GFLOP/s and peak RSS.

    python benchmarks/speed.py            # full run  → benchmarks/results/speed.json  (~30 min on 2 cores)
    python benchmarks/speed.py --quick    # smoke run → benchmarks/results/speed_quick.json (~3 min)

All numbers come from one process run, so ratios compare like with like on a shared machine.

1. Bare ``model.predict`` throughput (slices/s) of the default architecture at 128 and 256 px.
2. The ``score`` pipeline on a 512×512×N NIfTI phantom at 256 px, through the same code as
   ``aeanomaly score`` (``AnomalyDetector.load`` → ``score_scan`` → ``write_scan_outputs`` with a
   NIfTI heatmap), broken down by stage (load, preprocess, infer, analyse, localize, write), as a
   ratio to (1). Also the CLI itself in a child process (with its import/model-load start-up).
3. The same network in PyTorch (weights copied from the Keras model, outputs compared) on the same
   slices with ``torch.inference_mode`` and the same thread count, as a ratio.
4. Achieved GFLOP/s (FLOPs counted from the layers) against numpy's sgemm in this run.
5. Peak RSS of this process and of the CLI child.
Then the "make it fast" variants: batch size, compiled/XLA predict, TF thread settings (child
processes), mixed float16/bfloat16 (with the reconstruction difference), overlapping scan loading
with inference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf  # noqa: E402

PY = sys.executable


# ------------------------------------------------------------------------------------------------
# data and detector
# ------------------------------------------------------------------------------------------------

def make_volume_nifti(path: Path, n_slices: int, seed: int = 0) -> dict:
    """A 512×512×n_slices chest phantom (HU, int16 NIfTI). A 30-slice phantom is generated at full
    in-plane resolution and mirrored/tiled along z (generating 300 slices directly takes minutes)."""
    from aeanomaly.datasets.synthetic import make_phantom
    from aeanomaly.io import save_nifti

    block = min(30, n_slices)
    ph = make_phantom("chest", (block, 512, 512), (1.0, 0.7, 0.7), rng=seed)
    reps = int(np.ceil(n_slices / block))
    parts = [ph.hu if i % 2 == 0 else ph.hu[::-1] for i in range(reps)]
    hu = np.concatenate(parts)[:n_slices]
    save_nifti(path, np.clip(np.rint(hu), -32768, 32767).astype(np.int16), ph.affine)
    return {"shape_zyx": list(hu.shape), "spacing_mm": [1.0, 0.7, 0.7], "file_mib": path.stat().st_size / 2**20}


def fit_bundle(work: Path, size: int, n_scans: int, epochs: int) -> Path:
    """A real bundle of the default architecture at ``size`` px, fitted through ``AnomalyDetector.fit``
    on small chest phantoms (quality is irrelevant here, but weights and the calibrated pixel threshold
    are real)."""
    from aeanomaly.datasets.synthetic import write_phantom_set
    from aeanomaly.detector import AnomalyDetector

    data = work / "fit_phantoms"
    write_phantom_set(data, n_scans, 0, "chest", seed=1, shape=(10, size, size), spacing=(2.5, 350.0 / size, 350.0 / size))
    paths = sorted((data / "normal").glob("*.nii.gz"))
    det = AnomalyDetector(window="lung", size=size, epochs=epochs, augment=False, seed=0)
    det.fit(paths, verbose=0)
    bundle = work / f"bundle{size}"
    det.save(bundle)
    return bundle


class StageTimer:
    """Wraps the functions ``score_scan`` calls so one end-to-end run is broken down by stage."""

    def __init__(self, det):
        import aeanomaly.detector as D

        self.t: dict[str, float] = {}
        self._undo = []
        self._wrap_module(D, "load_scan", "load")
        self._wrap_module(D, "find_lesions", "localize")
        for meth, stage in (("prepare", "preprocess"), ("reconstruct", "infer"), ("_analyse", "_analyse")):
            if hasattr(det, meth):
                orig = getattr(det, meth)
                setattr(det, meth, self._timed(orig, stage))
                self._undo.append(lambda d=det, m=meth: delattr(d, m))

    def _timed(self, fn, stage):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[stage] = self.t.get(stage, 0.0) + time.perf_counter() - t0
        return wrapper

    def _wrap_module(self, mod, name, stage):
        if hasattr(mod, name):
            orig = getattr(mod, name)
            setattr(mod, name, self._timed(orig, stage))
            self._undo.append(lambda: setattr(mod, name, orig))

    def restore(self):
        for u in self._undo:
            u()


def score_and_write(det, path: Path, out: Path, overlays: int = 0):
    """What ``aeanomaly score`` does per scan: score, then write the NIfTI heatmap (and overlays)."""
    from aeanomaly.cli_score import write_scan_outputs

    res = det.score_scan(path)
    write_scan_outputs(res, "scan", out, heatmaps="nifti", overlays=overlays, pixel_threshold=det.pixel_threshold_)
    return res


def pipeline_breakdown(det, path: Path, out: Path, repeats: int) -> dict:
    """End-to-end time of score_scan + heatmap write, and its stages (medians over repeats)."""
    from aeanomaly.cli_score import write_scan_outputs

    runs = []
    for r in range(repeats + 1):  # first run is warm-up (tracing, page cache)
        st = StageTimer(det)
        t0 = time.perf_counter()
        try:
            res = det.score_scan(path)
            t1 = time.perf_counter()
            write_scan_outputs(res, "scan", out, heatmaps="nifti", overlays=0, pixel_threshold=det.pixel_threshold_)
            t2 = time.perf_counter()
        finally:
            st.restore()
        s = dict(st.t)
        analyse = s.pop("_analyse", 0.0)
        stages = {
            "load": s.get("load", 0.0),
            "preprocess": s.get("preprocess", 0.0),
            "infer": s.get("infer", 0.0),
            "analyse (residual, region, heatmap, slice scores)": analyse - s.get("preprocess", 0.0) - s.get("infer", 0.0),
            "localize (lesions)": s.get("localize", 0.0),
            "calibrate+other": (t1 - t0) - analyse - s.get("load", 0.0) - s.get("localize", 0.0),
            "write heatmap (resample to input grid + NIfTI)": t2 - t1,
        }
        if r > 0:
            runs.append({"total_s": t2 - t0, "stages_s": stages})
    med = lambda xs: float(np.median(xs))  # noqa: E731
    return {
        "total_s": med([r["total_s"] for r in runs]),
        "all_total_s": [round(r["total_s"], 3) for r in runs],
        "stages_s": {k: round(med([r["stages_s"][k] for r in runs]), 3) for k in runs[0]["stages_s"]},
        "n_slices_scored": int(res.prepared.keep.sum()),
        "n_lesions": len(res.lesions),
        "label": res.label,
    }


def add_rates(run: dict, n_slices: int, bare_slices_per_s: float) -> dict:
    """Slices/s of a :func:`pipeline_breakdown` run and its ratio to bare ``model.predict``."""
    run["slices_per_s"] = n_slices / run["total_s"]
    run["ratio_to_bare_predict_256"] = run["slices_per_s"] / bare_slices_per_s
    return run


# ------------------------------------------------------------------------------------------------
# Keras inference variants
# ------------------------------------------------------------------------------------------------

def slices_per_s(n: int, t: dict) -> float:
    return n / t["median_s"]


def bench_predict(model, x: np.ndarray, batch_size: int, repeats: int) -> dict:
    t = _perf.timed(lambda: model.predict(x, batch_size=batch_size, verbose=0), repeats=repeats)
    return {**t, "slices_per_s": slices_per_s(len(x), t), "batch_size": batch_size}


def tf_infer_fn(model, jit: bool = False):
    import tensorflow as tf

    return tf.function(lambda t: model(t, training=False), reduce_retracing=True, jit_compile=jit)


def batched(fn, x: np.ndarray, bs: int) -> np.ndarray:
    out = np.empty(x.shape[:3], np.float32)
    for i in range(0, len(x), bs):
        out[i : i + bs] = np.asarray(fn(np.ascontiguousarray(x[i : i + bs], dtype=np.float32)))[..., 0]
    return out


def bench_fn(fn, x: np.ndarray, bs: int, repeats: int) -> dict:
    t = _perf.timed(lambda: batched(fn, x, bs), repeats=repeats)
    return {**t, "slices_per_s": slices_per_s(len(x), t), "batch_size": bs}


# ------------------------------------------------------------------------------------------------
# PyTorch peer
# ------------------------------------------------------------------------------------------------

def torch_peer(keras_model):
    """The same network in PyTorch with the Keras model's weights (NCHW). TF 'same' padding of a
    stride-2 conv pads (0 before, 1 after); its transposed conv keeps the first 2n outputs."""
    import torch
    from torch import nn
    import torch.nn.functional as F
    import keras

    layers = {l.name: l for l in keras_model.layers}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = nn.ModuleDict()
            for name, l in layers.items():
                if isinstance(l, keras.layers.Conv2DTranspose):
                    k = l.kernel.numpy()  # (kh, kw, out, in)
                    m = nn.ConvTranspose2d(k.shape[3], k.shape[2], 3, stride=2, padding=0, bias=l.use_bias)
                    m.weight.data = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
                elif isinstance(l, keras.layers.Conv2D):
                    k = l.kernel.numpy()  # (kh, kw, in, out)
                    ks = k.shape[0]
                    m = nn.Conv2d(k.shape[2], k.shape[3], ks, stride=l.strides[0],
                                  padding=0 if l.strides[0] == 2 or ks == 1 else ks // 2, bias=l.use_bias)
                    m.weight.data = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
                elif isinstance(l, keras.layers.GroupNormalization):
                    m = nn.GroupNorm(l.groups, l.gamma.shape[0], eps=l.epsilon)
                    m.weight.data = torch.from_numpy(l.gamma.numpy().copy())
                    m.bias.data = torch.from_numpy(l.beta.numpy().copy())
                else:
                    continue
                if getattr(l, "use_bias", False) and getattr(l, "bias", None) is not None and not isinstance(l, keras.layers.GroupNormalization):
                    m.bias.data = torch.from_numpy(l.bias.numpy().copy())
                self.mods[name] = m
            self.depth = sum(1 for n in layers if n.startswith("enc") and n.endswith("_conv1"))
            self.skip = any(n.endswith("_skip") for n in layers)

        def conv(self, name, x):
            m = self.mods[name]
            if m.stride[0] == 2:
                x = F.pad(x, (0, 1, 0, 1))
            return m(x)

        def block(self, x, name):
            x = F.leaky_relu(self.mods[f"{name}_norm1"](self.conv(f"{name}_conv1", x)), 0.2)
            return F.leaky_relu(self.mods[f"{name}_norm2"](self.conv(f"{name}_conv2", x)), 0.2)

        def forward(self, x):
            x = self.block(x, "stem")
            skips = []
            for i in range(self.depth):
                skips.append(x)
                x = self.block(x, f"enc{i}")
            x = F.leaky_relu(self.mods["latent"](x), 0.2)
            x = F.leaky_relu(self.mods["latent_out"](x), 0.2)
            for i in reversed(range(self.depth)):
                n = x.shape[-1] * 2
                x = self.mods[f"dec{i}_deconv"](x)[..., :n, :n]
                x = F.leaky_relu(self.mods[f"dec{i}_norm1"](x), 0.2)
                if self.skip:
                    x = torch.cat([x, skips[i]], dim=1)
                x = F.leaky_relu(self.mods[f"dec{i}_norm2"](self.mods[f"dec{i}_conv"](x)), 0.2)
            return torch.sigmoid(self.mods["reconstruction"](x))

    return Net().eval()


def bench_torch(keras_model, x: np.ndarray, bs: int, repeats: int, threads: int) -> dict:
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        return {"skipped": True, "reason": f"torch not importable: {err}"}
    torch.set_num_threads(threads)
    net = torch_peer(keras_model)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    ref = keras_model.predict(x[:8], verbose=0)[..., 0]
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": bs}

    def run(model, inp):
        with torch.inference_mode():
            for i in range(0, len(inp), bs):
                model(inp[i : i + bs])

    with torch.inference_mode():
        got = net(xt[:8]).numpy()[:, 0]
    out["max_abs_diff_vs_keras"] = float(np.abs(got - ref).max())
    t = _perf.timed(lambda: run(net, xt), repeats=repeats)
    out["nchw"] = {**t, "slices_per_s": slices_per_s(len(x), t)}
    try:
        net_cl = net.to(memory_format=torch.channels_last)
        xcl = xt.contiguous(memory_format=torch.channels_last)
        t = _perf.timed(lambda: run(net_cl, xcl), repeats=repeats)
        out["channels_last"] = {**t, "slices_per_s": slices_per_s(len(x), t)}
    except Exception as err:  # noqa: BLE001
        out["channels_last"] = {"error": str(err)}
    out["best_slices_per_s"] = max(v["slices_per_s"] for k, v in out.items() if isinstance(v, dict) and "slices_per_s" in v)
    return out


# ------------------------------------------------------------------------------------------------
# thread-setting probe (a child process, because TF thread pools are fixed at first use)
# ------------------------------------------------------------------------------------------------

def probe(args) -> None:
    import tensorflow as tf

    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    from aeanomaly.model.autoencoder import build_autoencoder

    model = build_autoencoder(size=args.size)
    x = np.random.default_rng(0).random((args.n, args.size, args.size, 1), dtype=np.float32)
    fn = tf_infer_fn(model)
    r = bench_fn(fn, x, 32, args.repeats)
    print(json.dumps({"slices_per_s": r["slices_per_s"], "median_s": r["median_s"]}))


def thread_variants(size: int, n: int, repeats: int) -> list[dict]:
    rows = []
    settings = [
        {"intra": 0, "inter": 0, "env": {}, "label": "TF default"},
        {"intra": 2, "inter": 1, "env": {}, "label": "intra=2 inter=1"},
        {"intra": 1, "inter": 2, "env": {}, "label": "intra=1 inter=2"},
        {"intra": 1, "inter": 1, "env": {}, "label": "intra=1 inter=1 (one core)"},
        {"intra": 0, "inter": 0, "env": {"TF_ENABLE_ONEDNN_OPTS": "0"}, "label": "oneDNN off"},
    ]
    for s in settings:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **s["env"]}
        cmd = [PY, __file__, "--probe", "--size", str(size), "--n", str(n), "--repeats", str(repeats),
               "--intra", str(s["intra"]), "--inter", str(s["inter"])]
        r = _perf.run_child(cmd, env=env, timeout=600)
        try:
            res = json.loads(r["stdout"].strip().splitlines()[-1])
        except Exception:  # noqa: BLE001
            res = {"error": (r["stderr"] or "")[-400:]}
        rows.append({"setting": s["label"], **res})
    return rows


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    ap.add_argument("--slices", type=int, default=None, help="slices of the 512×512 scan (default 300; quick 60)")
    ap.add_argument("--out", default=None, help="result name (default speed / speed_quick)")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.probe:
        return probe(args)

    quick = args.quick
    n_slices = args.slices or (60 if quick else 300)
    reps = 2 if quick else 3
    n_bare = {128: 64 if quick else 256, 256: 32 if quick else 128}
    threads = _perf.usable_cpus()
    t_start = time.perf_counter()

    import tensorflow as tf  # noqa: F401
    import keras

    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.model.autoencoder import build_autoencoder, with_dtype_policy

    result: dict = {"benchmark": "speed", "quick": quick, "machine": _perf.machine_info(),
                    "notes": [], "config": {"scan_shape_zyx": [n_slices, 512, 512], "model_size_px": 256,
                                            "repeats": reps, "threads": threads}}
    name = args.out or ("speed_quick" if quick else "speed")

    def save_partial(next_stage: str) -> None:
        """Write what is measured so far (a long run cut short keeps its first sections)."""
        result["complete"], result["next_stage"] = False, next_stage
        _perf.write_json(name, _perf.clean(result))

    print(f"[speed] sgemm reference", flush=True)
    result["numpy_sgemm"] = _perf.numpy_sgemm_gflops(1024 if quick else 2048)

    work = Path(tempfile.mkdtemp(prefix="aeanomaly-speed-"))
    try:
        # ---- the fitted bundle and the scan -------------------------------------------------
        print(f"[speed] fitting a 256-px bundle (package fit path)", flush=True)
        t0 = time.perf_counter()
        bundle = fit_bundle(work, 256, n_scans=5 if quick else 8, epochs=1)
        result["config"]["bundle_fit_s"] = time.perf_counter() - t0
        print(f"[speed] writing the 512×512×{n_slices} phantom", flush=True)
        scan_path = work / "scan512.nii.gz"
        result["config"]["scan"] = make_volume_nifti(scan_path, n_slices)

        det = AnomalyDetector.load(bundle)
        model = det.model_
        rng = np.random.default_rng(0)

        # real 256-px slices of the scan (preprocessed as score does)
        from aeanomaly.io import load_scan

        prep = det.prepare(load_scan(scan_path))
        x256_all = prep.x[prep.keep]

        # ---- 1. bare model.predict ----------------------------------------------------------
        save_partial("1. bare model.predict")
        print(f"[speed] 1. bare model.predict", flush=True)
        bare = {}
        flops = {}
        for size in (128, 256):
            m = model if size == 256 else build_autoencoder(size=128)
            if size == 128:
                m.set_weights(model.get_weights())  # fully convolutional: same weights fit
            x = (x256_all[: n_bare[256]] if size == 256 else
                 np.ascontiguousarray(x256_all[np.arange(n_bare[128]) % len(x256_all)].reshape(-1, 128, 2, 128, 2, 1).mean(axis=(2, 4))))
            flops[size] = _perf.model_flops(m)
            r = bench_predict(m, x, 32, reps)
            r["gflop_per_slice"] = flops[size]["total_gflop"]
            r["achieved_gflops"] = r["slices_per_s"] * flops[size]["conv_gflop"]
            r["n_slices"] = len(x)
            bare[f"{size}px"] = r
            print(f"   {size}px: {r['slices_per_s']:.1f} slices/s", flush=True)
        result["bare_predict"] = bare
        result["model_flops"] = {f"{k}px": v for k, v in flops.items()}

        # ---- 2. the score pipeline ------------------------------------------------------------
        save_partial("2. score pipeline")
        print(f"[speed] 2. score pipeline on {n_slices}×512×512", flush=True)
        out_dir = work / "out"
        out_dir.mkdir()
        # before/after of the slice-parallel CPU stages (aeanomaly.parallel): serial first
        os.environ["AEANOMALY_THREADS"] = "1"
        try:
            serial = pipeline_breakdown(det, scan_path, out_dir, reps)
        finally:
            os.environ.pop("AEANOMALY_THREADS", None)
        add_rates(serial, n_slices, bare["256px"]["slices_per_s"])
        result["pipeline_serial_cpu_stages"] = serial
        print(f"   serial CPU stages: total {serial['total_s']:.2f}s  stages {serial['stages_s']}", flush=True)
        pipe = pipeline_breakdown(det, scan_path, out_dir, reps)
        from aeanomaly.parallel import n_threads
        pipe["cpu_stage_threads"] = n_threads()
        pipe["speedup_vs_serial_cpu_stages"] = serial["total_s"] / pipe["total_s"]
        add_rates(pipe, n_slices, bare["256px"]["slices_per_s"])
        pipe["infer_slices_per_s"] = pipe["n_slices_scored"] / max(pipe["stages_s"]["infer"], 1e-9)
        result["pipeline"] = pipe
        # the package's bfloat16 inference (AnomalyDetector(precision="bfloat16")), same threads
        ref_recon = det.reconstruct(x256_all[:32])
        det.set_params(precision="bfloat16")
        try:
            bf = pipeline_breakdown(det, scan_path, out_dir, reps)
            bf_recon = det.reconstruct(x256_all[:32])
        finally:
            det.set_params(precision="float32")
        add_rates(bf, n_slices, bare["256px"]["slices_per_s"])
        bf["speedup_vs_float32_pipeline"] = pipe["total_s"] / bf["total_s"]
        bf["reconstruction_max_abs_diff"] = float(np.abs(bf_recon - ref_recon).max())
        bf["reconstruction_mean_abs_diff"] = float(np.abs(bf_recon - ref_recon).mean())
        result["pipeline_bfloat16"] = bf
        print(f"   bfloat16: total {bf['total_s']:.2f}s  stages {bf['stages_s']}", flush=True)
        print(f"   total {pipe['total_s']:.2f}s  stages {pipe['stages_s']}", flush=True)

        # the CLI itself (start-up, bundle load, overlays and report included), peak RSS of the child
        print(f"[speed]    CLI child", flush=True)
        cli_out = work / "cli_out"
        cmd = [PY, "-m", "aeanomaly.cli", "score", str(bundle), str(scan_path), "--out", str(cli_out), "--quiet"]
        if not (Path(PY).parent / "aeanomaly").exists():
            pass
        exe = Path(PY).parent / "aeanomaly"
        if exe.exists():
            cmd = [str(exe), "score", str(bundle), str(scan_path), "--out", str(cli_out), "--quiet"]
        child = _perf.run_child_rusage(cmd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        result["cli_score"] = {"command": "aeanomaly score BUNDLE scan512.nii.gz --out OUT --quiet (defaults: NIfTI heatmap, 3 overlays, report.html)",
                               "rc": child["rc"], "wall_s": child["wall_s"], "peak_rss_mib": child["peak_rss_mib"]}
        print(f"   CLI {child['wall_s']:.1f}s rc={child['rc']} peak RSS {child['peak_rss_mib']:.0f} MiB", flush=True)

        # ---- 3. PyTorch peer ----------------------------------------------------------------
        save_partial("3. PyTorch peer")
        print(f"[speed] 3. PyTorch peer", flush=True)
        x_peer = x256_all[: n_bare[256]]
        tp = bench_torch(model, x_peer, 32, reps, threads)
        if not tp.get("skipped"):
            tp["keras_predict_slices_per_s"] = bare["256px"]["slices_per_s"]
            tp["keras_over_torch"] = bare["256px"]["slices_per_s"] / tp["best_slices_per_s"]
            tp["torch_achieved_gflops"] = tp["best_slices_per_s"] * flops[256]["conv_gflop"]
        result["pytorch_peer"] = tp
        print(f"   {json.dumps({k: v for k, v in tp.items() if not isinstance(v, dict)})}", flush=True)

        # ---- make it fast: inference variants on the same slices ----------------------------
        save_partial("variants")
        print(f"[speed] variants", flush=True)
        x = x256_all[: n_bare[256]]
        variants = []
        fn = tf_infer_fn(model)
        variants.append({"variant": "keras model.predict bs=32 (bare, item 1)", **bare["256px"]})
        for bs in (16, 32, 64):
            variants.append({"variant": f"tf.function bs={bs} (detector._infer path)", **bench_fn(fn, x, bs, reps)})
        try:
            xla = tf_infer_fn(model, jit=True)
            variants.append({"variant": "tf.function jit_compile=True (XLA) bs=32", **bench_fn(xla, x, 32, reps)})
        except Exception as err:  # noqa: BLE001
            variants.append({"variant": "tf.function jit_compile=True (XLA) bs=32", "error": str(err)[:300]})
        ref = batched(fn, x, 32)
        for policy in ("mixed_bfloat16", "mixed_float16"):
            try:
                mp = with_dtype_policy(model, policy)
                mfn = tf_infer_fn(mp)
                r = bench_fn(mfn, x, 32, 1 if quick else 2)
                got = batched(mfn, x, 32)
                r["max_abs_diff"] = float(np.abs(got - ref).max())
                r["mean_abs_diff"] = float(np.abs(got - ref).mean())
                variants.append({"variant": f"{policy} bs=32", **r})
            except Exception as err:  # noqa: BLE001
                variants.append({"variant": f"{policy} bs=32", "error": str(err)[:300]})
        for v in variants:
            if "slices_per_s" in v:
                v["achieved_gflops"] = v["slices_per_s"] * flops[256]["conv_gflop"]
                v["speedup_vs_bare_predict"] = v["slices_per_s"] / bare["256px"]["slices_per_s"]
            print(f"   {v['variant']}: {v.get('slices_per_s', float('nan')):.2f} slices/s", flush=True)
        result["variants_256px"] = variants
        pkg = next(v for v in variants if v["variant"].startswith("tf.function bs=32"))
        if not tp.get("skipped"):
            tp["package_infer_slices_per_s"] = pkg["slices_per_s"]
            tp["package_infer_over_torch"] = pkg["slices_per_s"] / tp["best_slices_per_s"]

        save_partial("thread settings (child processes)")
        print(f"[speed] thread settings (child processes)", flush=True)
        result["thread_variants_256px"] = thread_variants(256, 16 if quick else 64, reps)
        for r in result["thread_variants_256px"]:
            print(f"   {r}", flush=True)

        # ---- overlapping scan loading with inference ----------------------------------------
        save_partial("overlap load with compute")
        print(f"[speed] overlap load with compute", flush=True)
        k = 2 if quick else 3
        paths = [scan_path] * k

        def sequential():
            for p in paths:
                det.score_scan(p)

        def prefetched():
            with ThreadPoolExecutor(1) as pool:
                fut = pool.submit(load_scan, paths[0])
                for i in range(len(paths)):
                    scan = fut.result()
                    if i + 1 < len(paths):
                        fut = pool.submit(load_scan, paths[i + 1])
                    det.score_scan(scan)

        seq = _perf.timed(sequential, repeats=1, warmup=0)
        pre = _perf.timed(prefetched, repeats=1, warmup=0)
        result["overlap_io"] = {"n_scans": k, "sequential_s": seq["median_s"], "prefetch_next_scan_s": pre["median_s"],
                                "speedup": seq["median_s"] / pre["median_s"]}
        print(f"   {result['overlap_io']}", flush=True)

        # ---- 4./5. summary ----------------------------------------------------------------
        sg = result["numpy_sgemm"]["gflops_median"]
        best = max((v for v in variants if "slices_per_s" in v), key=lambda v: v["slices_per_s"])
        result["gflops"] = {
            "numpy_sgemm_gflops": sg,
            "bare_predict_256_gflops": bare["256px"]["achieved_gflops"],
            "bare_predict_128_gflops": bare["128px"]["achieved_gflops"],
            "best_variant_256": best["variant"], "best_variant_256_gflops": best["achieved_gflops"],
            "bare_predict_256_fraction_of_sgemm": bare["256px"]["achieved_gflops"] / sg,
            "best_variant_256_fraction_of_sgemm": best["achieved_gflops"] / sg,
            "torch_fraction_of_sgemm": (tp.get("torch_achieved_gflops") or float("nan")) / sg,
        }
        result["peak_rss_mib"] = {"this_process": _perf.peak_rss_mib(), "cli_score_child": child["peak_rss_mib"]}
        gf = flops[256]["conv_gflop"] * n_slices
        result["targets"] = {
            "pipeline_ge_85pct_of_bare_predict": {"value": pipe["ratio_to_bare_predict_256"], "met": pipe["ratio_to_bare_predict_256"] >= 0.85},
            # what `score` runs (AnomalyDetector.reconstruct: a tf.function at batch 32) against the
            # peer's best layout; model.predict's own ratio is keras_over_torch in pytorch_peer
            "faster_than_pytorch_peer": ({"value": tp.get("package_infer_over_torch"),
                                          "met": (tp.get("package_infer_over_torch") or 0) > 1.0,
                                          "model_predict_over_torch": tp.get("keras_over_torch")}
                                         if not tp.get("skipped") else {"skipped": tp.get("reason")}),
            "score_512x512x300_at_256px_le_5s": {
                "value_s": pipe["total_s"] * (300 / n_slices), "measured_slices": n_slices,
                "value_s_bfloat16": result["pipeline_bfloat16"]["total_s"] * (300 / n_slices),
                "met": pipe["total_s"] * (300 / n_slices) <= 5.0,
                "extrapolated": n_slices != 300,
                "compute_floor_s_at_sgemm_rate": gf * (300 / n_slices) / sg,
                "note": "compute floor = conv FLOPs of 300 slices / numpy sgemm GFLOP/s of this machine",
            },
        }
        result["load_avg_at_end"] = _perf.load_avg()
        result["wall_s"] = time.perf_counter() - t_start
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    result["complete"] = True
    result.pop("next_stage", None)
    path = _perf.write_json(name, _perf.clean(result))
    print(f"[speed] wrote {path} in {result['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
