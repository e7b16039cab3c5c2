"""Scoring speed: the network against numpy sgemm, the ``score`` pipeline by stage, a PyTorch peer.

    python benchmarks/speed.py                 # full run → results/speed.json (300-slice 512×512 scan)
    python benchmarks/speed.py --quick         # → results/speed_quick.json (60 slices, few repeats)
    python benchmarks/speed.py --slices 60 --out speed_short

Public APIs only (no monkeypatching of modules or detector methods); every number comes from one
run (the score pipeline and ``aeanomaly score`` in fresh child processes, as users run them) so that
ratios compare like with like on a shared machine.

1. numpy sgemm GFLOP/s in this run (the reference of every "fraction of sgemm").
2. The bare network per architecture (:data:`_perf.ARCHITECTURES`: the release's GroupNormalization,
   BatchNormalization folded at inference, no normalisation) at 128 and 256 px: inference through
   ``inference_model`` in a ``tf.function`` (as the detector runs it) and a training step; slices/s,
   GFLOP/s (convolutions counted from the layers) and their fraction of sgemm.
3. The ``score`` pipeline on a 512×512×N NIfTI phantom at each grid of ``--sizes`` (default: ``fit``'s
   default grid, 128 px, for every architecture asked for, and 256 px, the grid of the runs before, for
   the default architecture) with a bundle fitted through ``AnomalyDetector.fit``: stages timed through
   public calls —
   ``load_scan``, ``prepare``, ``reconstruct``, ``analyse_prepared``; ``score_scan`` end to end
   (the remainder is calibration + lesion localisation); ``aeanomaly.io.results.write_scan_outputs`` (the NIfTI heatmap, as ``aeanomaly score`` writes it).
   Its ratio to the bare inference of (2), and the **compute floor**: the model's GFLOP per slice ×
   scored slices ÷ this run's sgemm GFLOP/s, extrapolated to 300 slices.
   With ``--precisions float32 bfloat16`` (the default) the default architecture is timed again in
   bfloat16: bare inference against TensorFlow's bfloat16 GEMM in the same run, and the pipeline with the
   bundle recalibrated in bfloat16 (``AnomalyDetector.recalibrate``, what ``calibrate --precision`` runs),
   whose compute floor is at that GEMM rate.
   At the default grid, a batch of ``--batch`` copies of the scan through ``AnomalyDetector.iter_scores`` (what ``aeanomaly
   score`` runs), each heatmap written before the next result is taken, with the next scan read and
   prepared in a thread meanwhile and without: seconds per scan and their ratio to bare inference; and
   ``aeanomaly score`` of the whole batch for its peak RSS (two scans in memory).
4. The same network in PyTorch (weights copied, outputs compared) on the same slices, at each grid.
5. Peak RSS and the targets of issue 16.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf  # noqa: E402


# ------------------------------------------------------------------------------------------------
# data and bundle
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


def fit_phantoms(work: Path, size: int) -> Path:
    """The folder of the normal chest phantoms that the bundles at ``size`` px are fitted on."""
    return work / f"fit_phantoms{size}"


def fit_bundle(work: Path, size: int, n_scans: int, epochs: int, norm: str) -> Path:
    """A real bundle at ``size`` px with normalisation ``norm``, fitted through ``AnomalyDetector.fit``
    on small chest phantoms (quality is irrelevant here; weights and calibration are real)."""
    from aeanomaly.datasets.synthetic import write_phantom_set
    from aeanomaly.detector import AnomalyDetector

    data = fit_phantoms(work, size)
    if not data.exists():
        write_phantom_set(data, n_scans, 0, "chest", seed=1, shape=(10, size, size),
                          spacing=(2.5, 350.0 / size, 350.0 / size))
    paths = sorted((data / "normal").glob("*.nii.gz"))
    # float32: the precision rows recalibrate a copy (recalibrated) for each other arithmetic
    det = AnomalyDetector(window="lung", size=size, epochs=epochs, augment=False, seed=0, norm=norm, precision="float32")
    det.fit(paths, verbose=0)
    bundle = work / f"bundle{size}-{norm}"
    det.save(bundle)
    return bundle


def recalibrated(bundle: Path, work: Path, precision: str) -> Path:
    """A copy of ``bundle`` recalibrated in ``precision`` on its own fit phantoms (``AnomalyDetector.recalibrate``,
    what ``aeanomaly calibrate --precision`` runs): scoring then infers in that arithmetic."""
    from aeanomaly.detector import AnomalyDetector

    det = AnomalyDetector.load(bundle)
    det.recalibrate(sorted((fit_phantoms(work, det.size) / "normal").glob("*.nii.gz")), precision=precision)
    out = work / f"{bundle.name}-{precision}"
    det.save(out)
    return out


def _t(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def pipeline_stages(det, path: Path, out_dir: Path, repeats: int) -> dict:
    """Stage times (medians over ``repeats`` after one warm-up) of scoring one scan, public calls only."""
    from aeanomaly.io import load_scan
    from aeanomaly.io.results import write_scan_outputs

    runs = []
    for r in range(repeats + 1):
        scan, t_load = _t(lambda: load_scan(path))
        prep, t_prep = _t(lambda: det.prepare(scan))
        keep = prep.keep if prep.keep.any() else np.ones(len(prep.x), bool)
        recon = np.zeros(prep.x.shape[:3], np.float32)
        part, t_inf = _t(lambda: det.reconstruct(prep.x[keep]))
        recon[keep] = part
        _, t_an = _t(lambda: det.analyse_prepared(prep, recon, is_hu=scan.is_hu))
        res, t_score = _t(lambda: det.score_scan(scan))
        _, t_write = _t(lambda: write_scan_outputs(res, "scan", out_dir, heatmaps="nifti", overlays=0))
        stages = {"load": t_load, "preprocess": t_prep, "infer": t_inf,
                  "analyse (residual, region, heatmap, slice scores)": t_an,
                  "calibrate + localize (score_scan − the stages above)": max(0.0, t_score - t_prep - t_inf - t_an),
                  "write heatmap (resample to input grid + NIfTI)": t_write}
        if r:
            runs.append({"total_s": t_load + t_score + t_write, "stages_s": stages, "n_scored": int(keep.sum())})
    med = lambda xs: float(np.median(xs))  # noqa: E731
    return {"total_s": med([r["total_s"] for r in runs]), "all_total_s": [round(r["total_s"], 3) for r in runs],
            "stages_s": {k: round(med([r["stages_s"][k] for r in runs]), 3) for k in runs[0]["stages_s"]},
            "n_slices_scored": runs[0]["n_scored"], "n_lesions": len(res.lesions), "label": res.label}


def batch_seconds_per_scan(det, paths: list, out_dir: Path) -> dict:
    """Seconds per scan of scoring ``paths`` one after the other as ``aeanomaly score`` does
    (``AnomalyDetector.iter_scores``, each result's NIfTI heatmap written before the next is taken),
    with the next scan read and prepared in a thread meanwhile (``prefetch``, the default) and without;
    the two alternate, best of two each."""
    from aeanomaly.io.results import write_scan_outputs

    def run(prefetch: bool) -> float:
        t0 = time.perf_counter()
        # a plain loop, as the CLI's: an enumerate() wrapper would keep the previous result alive
        for path, res in det.iter_scores(paths, prefetch=prefetch, errors=()):
            write_scan_outputs(res, path.name.split(".")[0], out_dir, heatmaps="nifti", overlays=0)
            del res
        return (time.perf_counter() - t0) / len(paths)

    times: dict = {"prefetch": [], "serial": []}
    for _ in range(2):
        for key, pf in (("serial", False), ("prefetch", True)):
            times[key].append(run(pf))
    return {"scans": len(paths), "prefetch_s_per_scan": min(times["prefetch"]), "serial_s_per_scan": min(times["serial"]),
            "all_s_per_scan": {k: [round(v, 3) for v in vs] for k, vs in times.items()}}


def batch_copies(scan_path: Path, n: int) -> list[Path]:
    """``n`` names of the same scan file (hard links, else copies): a batch of that many scans."""
    import shutil

    out = []
    for i in range(n):
        q = scan_path.with_name(f"batch{i}-{scan_path.name}")
        if not q.exists():
            try:
                os.link(scan_path, q)
            except OSError:
                shutil.copyfile(scan_path, q)
        out.append(q)
    return out


def pipeline_in_child(bundle: Path, scan_path: Path, out_dir: Path, repeats: int, batch: int = 0) -> dict:
    """:func:`pipeline_stages` in a fresh Python process, as a user's ``score`` runs: in this process,
    after the network benchmarks have built and trained six models, the same calls ran 1.6× slower
    (numpy stages and inference alike), which is not what users see. With ``batch`` > 1 also
    :func:`batch_seconds_per_scan` on that many copies of the scan (``"batch"``)."""
    import json
    import subprocess

    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import speed; "
            "from aeanomaly.detector import AnomalyDetector; "
            "det = AnomalyDetector.load(sys.argv[2]); "
            "r = speed.pipeline_stages(det, Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])); "
            "b = int(sys.argv[6]); "
            "r['batch'] = speed.batch_seconds_per_scan(det, speed.batch_copies(Path(sys.argv[3]), b), Path(sys.argv[4])) "
            "if b > 1 else None; "
            "print('PIPELINE ' + json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(bundle), str(scan_path),
                           str(out_dir), str(repeats), str(batch)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PIPELINE ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"pipeline child failed (exit {proc.returncode}): {proc.stderr[-600:]}")
    return json.loads(lines[-1][len("PIPELINE "):])


def cli_score(bundle: Path, scan_path: Path | list, out_dir: Path) -> dict:
    """``aeanomaly score BUNDLE SCAN`` as a user runs it, in a child process: wall time (TensorFlow's
    start included) and the child's peak RSS (:func:`_perf.run_cli`)."""
    scans = [str(q) for q in (scan_path if isinstance(scan_path, list) else [scan_path])]
    return _perf.run_cli(["score", str(bundle), *scans, "--out", str(out_dir), "--overwrite", "--quiet"],
                         out_dir.parent / f".{out_dir.name}-status")


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
                elif isinstance(l, keras.layers.Identity):
                    m = nn.Identity()
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
    from aeanomaly.model.autoencoder import inference_model

    keras_model = inference_model(keras_model)  # BatchNormalization folded: convs with bias, Identity norms
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
    out["nchw"] = {**t, "slices_per_s": len(x) / t['median_s']}
    try:
        net_cl = net.to(memory_format=torch.channels_last)
        xcl = xt.contiguous(memory_format=torch.channels_last)
        t = _perf.timed(lambda: run(net_cl, xcl), repeats=repeats)
        out["channels_last"] = {**t, "slices_per_s": len(x) / t['median_s']}
    except Exception as err:  # noqa: BLE001
        out["channels_last"] = {"error": str(err)}
    out["best_slices_per_s"] = max(v["slices_per_s"] for k, v in out.items() if isinstance(v, dict) and "slices_per_s" in v)
    return out




# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 slices, few repeats (results/speed_quick.json)")
    ap.add_argument("--slices", type=int, default=None, help="slices of the 512×512 scan (default 300; quick 60)")
    ap.add_argument("--archs", nargs="+", default=list(_perf.ARCHITECTURES), choices=list(_perf.ARCHITECTURES))
    ap.add_argument("--pipeline-archs", nargs="+", default=None, choices=list(_perf.ARCHITECTURES),
                    help="architectures whose score pipeline is timed (default: all of --archs)")
    ap.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                    help="inference arithmetic: the default architecture's bare network and every score pipeline "
                         "are timed in each (a bfloat16 bundle is the float32 one recalibrated, as "
                         "`aeanomaly calibrate --precision bfloat16` does)")
    ap.add_argument("--sizes", nargs="+", type=int, default=None,
                    help="model grids (px) of the timed score pipelines: every architecture at the first, the "
                         "default architecture at the others (default: fit's default grid, then 256)")
    ap.add_argument("--batch", type=int, default=None,
                    help="scans of a batch scored one after the other with the default architecture, with and "
                         "without prefetching the next (default 3; quick 2; 1 = none)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help="results/<OUT>.json (default speed / speed_quick)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quick = args.quick
    n_slices = args.slices or (60 if quick else 300)
    reps = args.repeats or (2 if quick else 3)
    n_batch = args.batch or (2 if quick else 3)
    name = args.out or ("speed_quick" if quick else "speed")
    from aeanomaly.config import TrainConfig

    default_size = TrainConfig().size
    sizes = list(dict.fromkeys(args.sizes or [default_size, 256]))
    result: dict = {"benchmark": "speed", "machine": {**_perf.machine_info(), **_perf.shared_machine_note()},
                    "config": {"scan_shape_zyx": [n_slices, 512, 512], "pipeline_sizes_px": sizes,
                               "default_size_px": default_size, "repeats": reps, "batch": n_batch,
                               "archs": args.archs}}

    print("[speed] numpy sgemm", flush=True)
    result["numpy_sgemm"] = _perf.numpy_sgemm_gflops(1024 if quick else 2048)
    sgemm = result["numpy_sgemm"]["gflops_median"]
    print(f"  {sgemm:.1f} GFLOP/s", flush=True)
    extra = [p for p in args.precisions if p != "float32"]
    if extra:  # the machine's reference for bfloat16 arithmetic, as sgemm is for float32
        result["bf16_gemm"] = _perf.bf16_gemm_gflops(1024 if quick else 2048)
        print(f"[speed] TensorFlow bfloat16 GEMM {result['bf16_gemm']['gflops_median']:.1f} GFLOP/s", flush=True)

    # ---- 2. the bare network per architecture ------------------------------------------------
    nets: dict = {}
    for size in sorted(set(sizes) | {128, 256}):
        for label in args.archs:
            r = _perf.network_rates(size, _perf.ARCHITECTURES[label], batch_size=32, repeats=reps)
            nets[f"{size}px {label}"] = r
            print(f"  {size}px {label:28s} infer {r['infer_slices_per_s']:7.1f} sl/s {r['infer_gflops']:6.1f} GFLOP/s "
                  f"({r['infer_fraction_of_sgemm']:.0%} sgemm) | train {r['train_slices_per_s']:6.1f} sl/s "
                  f"({r['train_fraction_of_sgemm']:.0%} sgemm)", flush=True)
            _perf.write_json(name, {**result, "networks": nets, "complete": False})
        for prec in extra:  # the default architecture's inference in the other arithmetic
            label = args.archs[0]
            r = _perf.network_rates(size, _perf.ARCHITECTURES[label], batch_size=32, repeats=reps, train=False,
                                    precision=prec)
            r["bf16_gemm_fraction"] = r["infer_gflops"] / result["bf16_gemm"]["gflops_median"]
            nets[f"{size}px {label}, {prec}"] = r
            print(f"  {size}px {label}, {prec}: infer {r['infer_slices_per_s']:7.1f} sl/s {r['infer_gflops']:6.1f} GFLOP/s "
                  f"({r['bf16_gemm_fraction']:.0%} of the bfloat16 GEMM)", flush=True)
    result["networks"] = nets
    # tables.py reads bare_predict[<size>px] of the release default
    result["bare_predict"] = {f"{s}px": {"slices_per_s": nets[f"{s}px {args.archs[0]}"]["infer_slices_per_s"],
                                         "achieved_gflops": nets[f"{s}px {args.archs[0]}"]["infer_gflops"],
                                         "arch": args.archs[0]} for s in sorted(set(sizes) | {128, 256})}

    # ---- 3. the score pipeline ---------------------------------------------------------------
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.io import load_scan

    work = Path(tempfile.mkdtemp(prefix="aeanomaly-speed-"))
    pipelines: dict = {}
    try:
        scan_path = work / "scan512.nii.gz"
        print(f"[speed] writing the 512×512×{n_slices} phantom", flush=True)
        result["config"]["scan"] = make_volume_nifti(scan_path, n_slices)
        runs = [(size, label) for size in sizes
                for label in ((args.pipeline_archs or args.archs) if size == sizes[0] else args.archs[:1])]
        for size, label in runs:
            norm = _perf.ARCHITECTURES[label]["norm"]
            default_run = size == sizes[0] and label == args.archs[0]
            print(f"[speed] fitting a {size}-px bundle, {label}", flush=True)
            bundle, t_fit = _t(lambda: fit_bundle(work, size, n_scans=4 if quick else 6, epochs=1, norm=norm))
            for prec in args.precisions:
                bare_key = label if prec == "float32" else f"{label}, {prec}"
                key = f"{size}px {bare_key}"
                bare = nets.get(key)
                if bare is None:  # other precisions are timed bare for the default architecture only
                    continue
                b = bundle if prec == "float32" else recalibrated(bundle, work, prec)
                p = pipeline_in_child(b, scan_path, work, reps, n_batch if default_run else 0)
                p["cli_score"] = cli_score(b, scan_path, work / f"cli-{size}-{norm}-{prec}")
                print(f"  {key}: aeanomaly score {p['cli_score']['wall_s']:.1f} s, peak RSS "
                      f"{p['cli_score']['peak_rss_mib']:.0f} MiB", flush=True)
                if p.get("batch"):  # the whole batch through the command: its peak with two scans in memory
                    p["batch"]["cli_score"] = cli_score(b, batch_copies(scan_path, n_batch), work / f"cli-batch-{norm}-{prec}")
                # the floor at the best rate of the arithmetic seen in this run: sgemm, or the bfloat16 GEMM
                peak = (max(sgemm, bare["sgemm_gflops_reference"]) if prec == "float32"
                        else result["bf16_gemm"]["gflops_best"])
                floor = bare["gflop_per_slice"] * p["n_slices_scored"] / peak
                p.update({
                    "size_px": size, "precision": prec, "bundle_fit_s": t_fit, "slices_per_s": p["n_slices_scored"] / p["total_s"],
                    "ratio_to_bare_infer": (p["n_slices_scored"] / p["total_s"]) / bare["infer_slices_per_s"],
                    "heatmap_write_fraction": p["stages_s"]["write heatmap (resample to input grid + NIfTI)"] / p["total_s"],
                    "compute_floor_s": floor, "over_compute_floor": p["total_s"] / floor,
                    "extrapolated_300_slices_s": p["total_s"] * 300.0 / max(1, n_slices),
                    "compute_floor_300_slices_s": bare["gflop_per_slice"] * 300.0 * p["n_slices_scored"] / n_slices / peak,
                    "gemm_gflops_for_floor": peak,
                })
                if p.get("batch"):
                    bt = p["batch"]
                    bt["prefetch_ratio_to_bare_infer"] = p["n_slices_scored"] / bt["prefetch_s_per_scan"] / bare["infer_slices_per_s"]
                    bt["serial_ratio_to_bare_infer"] = p["n_slices_scored"] / bt["serial_s_per_scan"] / bare["infer_slices_per_s"]
                    bt["prefetch_speedup"] = bt["serial_s_per_scan"] / bt["prefetch_s_per_scan"]
                    print(f"  batch of {bt['scans']}: {bt['prefetch_s_per_scan']:.2f} s per scan with prefetch, "
                          f"{bt['serial_s_per_scan']:.2f} without (×{bt['prefetch_speedup']:.2f}; "
                          f"{bt['prefetch_ratio_to_bare_infer']:.2f} of bare inference); the command's peak RSS "
                          f"{bt['cli_score']['peak_rss_mib']:.0f} MiB", flush=True)
                pipelines[key] = p
                print(f"  total {p['total_s']:.2f} s for {p['n_slices_scored']} slices ({p['ratio_to_bare_infer']:.2f} of "
                      f"bare inference); compute floor {floor:.2f} s (×{p['over_compute_floor']:.1f}); stages "
                      + ", ".join(f"{k.split(' ')[0]} {v:.2f}" for k, v in p["stages_s"].items()), flush=True)
            if not args.no_torch and label == args.archs[0]:
                det = AnomalyDetector.load(bundle)
                x = det.prepare(load_scan(scan_path)).x
                x = np.ascontiguousarray(x[: min(len(x), 64)], np.float32)
                tp = bench_torch(det.model_, x, 32, reps, _perf.usable_cpus())
                if not tp.get("skipped"):
                    pkg = _perf.timed(lambda: det.reconstruct(x), repeats=reps)
                    tp["package_infer_slices_per_s"] = len(x) / pkg["median_s"]
                    tp["package_infer_over_torch"] = tp["package_infer_slices_per_s"] / tp["best_slices_per_s"]
                    mine = {q["precision"]: q for k, q in pipelines.items()
                            if k == f"{size}px {label}" or k.startswith(f"{size}px {label}, ")}
                    if "float32" in mine:
                        tp["pipeline_over_torch_infer"] = mine["float32"]["slices_per_s"] / tp["best_slices_per_s"]
                    if mine:
                        fastest = max(mine.values(), key=lambda q: q["slices_per_s"])
                        tp["fastest_pipeline"] = fastest["precision"]
                        tp["fastest_pipeline_over_torch_infer"] = fastest["slices_per_s"] / tp["best_slices_per_s"]
                result.setdefault("pytorch_peer_by_size", {})[f"{size}px"] = tp
                if size == sizes[0]:
                    result["pytorch_peer"] = tp
                print(f"  PyTorch peer at {size} px: {tp.get('best_slices_per_s', float('nan')):.1f} sl/s", flush=True)
            _perf.write_json(name, {**result, "pipelines": pipelines, "complete": False})
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    result["pipelines"] = pipelines
    first = pipelines.get(f"{sizes[0]}px {args.archs[0]}") or next(iter(pipelines.values()), None)
    if first:  # the default's pipeline at the default grid
        result["pipeline"] = first

    # ---- 5. targets ----------------------------------------------------------------------------
    targets: dict = {}
    for key, r in nets.items():
        if r.get("precision", "float32") != "float32":
            continue  # the targets are float32's; the bfloat16 rows are beside them in the tables
        targets[f"{key}: inference_ge_60pct_of_sgemm"] = {"value": r["infer_fraction_of_sgemm"],
                                                          "met": r["infer_fraction_of_sgemm"] >= 0.6}
        targets[f"{key}: training_ge_40pct_of_sgemm"] = {"value": r["train_fraction_of_sgemm"],
                                                         "met": r["train_fraction_of_sgemm"] >= 0.4}
    for label, p in pipelines.items():
        targets[f"{label}: score_512x512x300_le_5s (extrapolated)"] = {"value": p["extrapolated_300_slices_s"],
                                                                       "met": p["extrapolated_300_slices_s"] <= 5.0}
        targets[f"{label}: compute floor 300 slices (s)"] = {"value": p["compute_floor_300_slices_s"]}
        targets[f"{label}: pipeline_within_20pct_of_compute_floor"] = {"value": p["over_compute_floor"],
                                                                       "met": p["over_compute_floor"] <= 1.2}
        targets[f"{label}: pipeline_ge_85pct_of_bare_infer"] = {"value": p["ratio_to_bare_infer"],
                                                                "met": p["ratio_to_bare_infer"] >= 0.85}
        if p.get("batch"):
            targets[f"{label}: pipeline_ge_85pct_of_bare_infer (batch of {p['batch']['scans']}, prefetch)"] = {
                "value": p["batch"]["prefetch_ratio_to_bare_infer"], "met": p["batch"]["prefetch_ratio_to_bare_infer"] >= 0.85}
        targets[f"{label}: heatmap_write_le_5pct"] = {"value": p["heatmap_write_fraction"],
                                                      "met": p["heatmap_write_fraction"] <= 0.05}
        cli = p["cli_score"]
        if cli["exit_code"] == 0 and cli["peak_rss_mib"] is not None:  # for 300 slices: a shorter scan cannot meet it
            targets[f"{label}: score_cli_peak_rss_le_2GiB ({n_slices} slices)"] = {
                "value": cli["peak_rss_mib"], "met": cli["peak_rss_mib"] <= 2048 and n_slices >= 300}
    for grid, tp in (result.get("pytorch_peer_by_size") or {}).items():
        if tp.get("pipeline_over_torch_infer") is not None:
            targets[f"{grid}: pipeline_ge_1.5x_pytorch_peer"] = {"value": tp["pipeline_over_torch_infer"],
                                                                 "met": tp["pipeline_over_torch_infer"] >= 1.5}
        if tp.get("fastest_pipeline", "float32") != "float32":
            targets[f"{grid}: pipeline_ge_1.5x_pytorch_peer ({tp['fastest_pipeline']})"] = {
                "value": tp["fastest_pipeline_over_torch_infer"], "met": tp["fastest_pipeline_over_torch_infer"] >= 1.5}
    result["targets"] = targets
    result["peak_rss_mib"] = {"this_process": _perf.peak_rss_mib()}
    result["machine"]["load_avg_at_end"] = _perf.load_avg()
    result["complete"] = True
    path = _perf.write_json(name, _perf.clean(result))
    print("\ntarget                                                                  value   met")
    for k, v in targets.items():
        met = "" if "met" not in v else ("yes" if v["met"] else "no")
        print(f"{k:70s} {v['value']:8.3f} {met}")
    print(f"→ {path}")


if __name__ == "__main__":
    main()
