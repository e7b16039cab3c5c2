"""Training benchmarks: throughput, memory flatness with dataset size, epochs to a plateau.

    python benchmarks/fit.py            # full run  → benchmarks/results/fit.json       (~17 min on 2 shared cores)
    python benchmarks/fit.py --quick    # smoke run → benchmarks/results/fit_quick.json (~6 min on 2 shared cores)

(Times measured with another test/benchmark process taking about half the CPU; roughly half that
on an idle 2-core machine. Most of the quick run is fixed cost: TensorFlow start-up and the first,
graph-building epoch of each fit.)

All numbers come from one process run (plus the child processes it starts), so ratios compare like
with like on a shared machine. Everything goes through the package's public code paths:
chest phantoms from ``aeanomaly.datasets.synthetic.write_phantom_set``, training through
``AnomalyDetector(...).fit(paths, verbose=0)`` and the ``aeanomaly fit`` CLI.

1. Training throughput (slices/s) of the default model (``AnomalyDetector`` defaults: coarse-noise
   DAE with skip connections, augmentation on, batch 16) at 128 and 256 px. The package's own
   training loop is instrumented from outside (class-level wrappers on ``RunState`` and
   ``SliceDataset``, removed afterwards): per epoch, the training phase (epoch begin → validation
   begin), validation, the per-epoch checkpoint, and the time spent producing batches (slice reads,
   augmentation, coarse noise), which runs in tf.data's prefetch thread and may overlap the train step.
   Throughput = training slices of an epoch / training-phase seconds, over the epochs after the
   first (warm-up: tracing and graph building).
2. Peak RSS of a whole ``aeanomaly fit --quiet`` run on N and on 10N phantom scans, each in its own
   child process: exact peak (``ru_maxrss`` of that child, read by a minimal wrapper process) plus a
   psutil RSS timeline. Target: 10N ≤ 1.2 × N. The phantoms are larger in-plane than the model grid so that a
   fit that held every scan (or every slice) in memory would show: the JSON gives how many MiB that
   would add.
3. Epochs to a validation-MAE plateau: ``fit`` at 64 px on ~24 phantoms for up to 30 epochs with the
   package's early stopping (its default patience), from ``det.history_``: the val-loss curve, the
   best epoch and the first epoch within 2 % of the best.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf  # noqa: E402
from _common import Stopwatch  # noqa: E402

PY = sys.executable
FOV_MM = 350.0


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------

def phantoms(folder: Path, n: int, n_slices: int, px: int, z_mm: float = 2.5, seed: int = 1) -> tuple[list[Path], float]:
    """``n`` normal chest phantoms of ``n_slices × px × px`` (350 mm field of view, ``z_mm`` slices);
    their paths and the seconds it took to write them."""
    from aeanomaly.datasets.synthetic import write_phantom_set

    t0 = time.perf_counter()
    write_phantom_set(folder, n, 0, "chest", seed=seed, shape=(n_slices, px, px),
                      spacing=(z_mm, FOV_MM / px, FOV_MM / px))
    return sorted((folder / "normal").glob("*.nii.gz")), time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# 1. instrumentation of the package's training loop (from outside, removed afterwards)
# ------------------------------------------------------------------------------------------------

class FitProbe:
    """Times the phases of each epoch of ``AnomalyDetector.fit`` and the stages of the fit itself.

    Wraps, at class / module level: ``RunState`` (epoch begin, validation begin/end, epoch end = the
    checkpoint), ``SliceDataset.__getitem__`` (batch production, counted per dataset: the training
    one shuffles, the validation one does not) and ``fitting.build_store`` /
    ``fitting.calibration_pass`` / ``train.train_autoencoder`` (looked up by ``fit`` at call time).
    """

    def __init__(self):
        from aeanomaly import fitting
        from aeanomaly.model import data, train

        self.train, self.data, self.fitting = train, data, fitting
        self.epochs: list[dict] = []
        self.stages: dict[str, float] = {}
        self._cur: dict | None = None
        self._saved = []

    def _patch(self, owner, name, new):
        self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, new)

    def __enter__(self):
        probe = self
        RunState, SliceDataset = self.train.RunState, self.data.SliceDataset
        orig_end = RunState.on_epoch_end
        orig_get = SliceDataset.__getitem__

        def on_epoch_begin(cb, epoch, logs=None):
            probe._cur = {"epoch": epoch + 1, "t0": time.perf_counter(), "cpu0": time.process_time(),
                          "t_val0": None, "t_val1": None,
                          **{f"{p}_{k}": 0 for p in ("train", "val") for k in ("slices", "batches", "batch_s")},
                          "train_ds_epoch": set(), "val_ds_epoch": set()}

        def on_test_begin(cb, logs=None):
            if probe._cur is not None:
                probe._cur["t_val0"] = time.perf_counter()

        def on_test_end(cb, logs=None):
            if probe._cur is not None:
                probe._cur["t_val1"] = time.perf_counter()

        def on_epoch_end(cb, epoch, logs=None):
            t_end = time.perf_counter()
            orig_end(cb, epoch, logs)
            c, t_done = probe._cur, time.perf_counter()
            if c is None:
                return
            t_val0 = c["t_val0"] or t_end
            t_val1 = c["t_val1"] or t_end
            probe.epochs.append({
                "epoch": c["epoch"],
                "epoch_s": t_done - c["t0"],
                "train_s": t_val0 - c["t0"],
                "val_s": t_val1 - t_val0,
                "checkpoint_s": t_done - t_end,
                "cpu_cores_used": (time.process_time() - c["cpu0"]) / max(t_done - c["t0"], 1e-9),
                "train_slices": c["train_slices"],
                "val_slices": c["val_slices"],
                "train_batches_fetched": c["train_batches"],
                "val_batches_fetched": c["val_batches"],
                "train_batch_production_s": c["train_batch_s"],
                "val_batch_production_s": c["val_batch_s"],
                "loss": (logs or {}).get("loss"),
                "val_loss": (logs or {}).get("val_loss"),
                # SliceDataset.epoch (it seeds shuffling, augmentation and noise) seen during this Keras epoch
                "train_dataset_epoch_seen": sorted(c["train_ds_epoch"]),
                "val_dataset_epoch_seen": sorted(c["val_ds_epoch"]),
            })
            probe._cur = None

        def getitem(ds, idx):
            t0 = time.perf_counter()
            x, y = orig_get(ds, idx)
            dt = time.perf_counter() - t0
            c = probe._cur
            if c is not None:
                side = "train" if ds.shuffle else "val"
                c[f"{side}_slices"] += len(x)
                c[f"{side}_batches"] += 1
                c[f"{side}_batch_s"] += dt
                c[f"{side}_ds_epoch"].add(int(ds.epoch))
            return x, y

        self._patch(RunState, "on_epoch_begin", on_epoch_begin)
        self._patch(RunState, "on_test_begin", on_test_begin)
        self._patch(RunState, "on_test_end", on_test_end)
        self._patch(RunState, "on_epoch_end", on_epoch_end)
        self._patch(SliceDataset, "__getitem__", getitem)
        for name in ("build_store", "calibration_pass"):
            self._patch(self.fitting, name, self._timed(getattr(self.fitting, name), name))
        self._patch(self.train, "train_autoencoder", self._timed(self.train.train_autoencoder, "train_autoencoder"))
        return self

    def _timed(self, fn, name):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    def __exit__(self, *exc):
        for owner, name, old in reversed(self._saved):
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        self._saved.clear()


_MISSING = object()


def _rounded(e: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.items()}


def throughput_run(paths: list[Path], size: int, epochs: int, augment: bool = True) -> dict:
    """Fit the default detector at ``size`` px for ``epochs`` epochs; per-epoch times and slices/s."""
    from aeanomaly.detector import AnomalyDetector

    det = AnomalyDetector(size=size, epochs=epochs, augment=augment, seed=0)
    load0 = _perf.load_avg()
    with FitProbe() as probe:
        t0 = time.perf_counter()
        det.fit(paths, verbose=0)
        wall = time.perf_counter() - t0
    eps = probe.epochs
    warm = eps[1:] if len(eps) > 1 else eps
    train_s = sum(e["train_s"] for e in warm)
    slices = sum(e["train_slices"] for e in warm)
    prod_s = sum(e["train_batch_production_s"] for e in warm)
    epoch_s = sum(e["epoch_s"] for e in warm)
    per_warm = [e["train_slices"] / e["train_s"] for e in warm if e["train_s"] > 0]
    return {
        "size_px": size, "augment": augment, "epochs": len(eps), "n_scans": len(paths),
        "split_scans": {k: len(v) for k, v in det.split_.items()},
        "per_epoch": [_rounded(e) for e in eps],
        "warm_epochs_used": [e["epoch"] for e in warm],
        "train_slices_per_epoch": warm[-1]["train_slices"] if warm else 0,
        "val_slices_per_epoch": warm[-1]["val_slices"] if warm else 0,
        # the headline: training slices per second of the training phase, warm epochs pooled
        "slices_per_s": slices / train_s if train_s else None,
        "slices_per_s_each_warm_epoch": per_warm,
        # the whole epoch as a user sees it (training + validation + checkpoint)
        "epoch_slices_per_s": slices / epoch_s if epoch_s else None,
        # batch production runs in tf.data's prefetch thread, so it can overlap the train step
        "batch_production_fraction_of_train_phase": prod_s / train_s if train_s else None,
        "first_epoch_s": eps[0]["epoch_s"] if eps else None,
        "warm_epoch_s_median": float(np.median([e["epoch_s"] for e in warm])) if warm else None,
        "warm_cpu_cores_used_median": float(np.median([e["cpu_cores_used"] for e in warm])) if warm else None,
        "fit_wall_s": wall,
        "fit_stages_s": {k: round(v, 3) for k, v in probe.stages.items()},
        "load_avg_before_after": [load0, _perf.load_avg()],
    }


# ------------------------------------------------------------------------------------------------
# 2. peak RSS of a whole `aeanomaly fit` in a child process
# ------------------------------------------------------------------------------------------------

def fit_cli_command(normal_dir: Path, bundle: Path, size: int, epochs: int, batch_size: int) -> list[str]:
    exe = Path(PY).parent / "aeanomaly"
    head = [str(exe)] if exe.exists() else [PY, "-m", "aeanomaly.cli"]
    return head + ["fit", "--normal-dir", str(normal_dir), "--out", str(bundle), "--size", str(size),
                   "--epochs", str(epochs), "--batch-size", str(batch_size), "--quiet"]


#: A minimal wrapper process (no site, stdlib only, ~10 MiB): it runs the command and writes the peak
#: RSS of its reaped child (``RUSAGE_CHILDREN``) to a JSON file. A child forked straight from this
#: benchmark would not do: Linux carries the forking process's RSS high-water mark into the child's
#: ``ru_maxrss`` across exec, and this process has TensorFlow and trained models in memory.
RSS_WRAPPER = (
    "import json,resource,subprocess,sys,time\n"
    "t=time.perf_counter()\n"
    "rc=subprocess.call(sys.argv[2:])\n"
    "ru=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1],'w').write(json.dumps({'rc':rc,'wall_s':time.perf_counter()-t,"
    "'peak_rss_mib':ru.ru_maxrss/1024.0,'child_cpu_s':ru.ru_utime+ru.ru_stime}))\n"
)


def run_child_peak_rss(cmd: list[str], poll_s: float = 0.1, timeout: float = 1200) -> dict:
    """Run ``cmd`` under :data:`RSS_WRAPPER`: its exact peak RSS (MiB) and a psutil RSS timeline."""
    import json

    import psutil

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        out_p, err_p = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_p, "wb") as out, open(err_p, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen([PY, "-S", "-c", RSS_WRAPPER, str(report), *cmd], stdout=out, stderr=err, env=env)
            wrapper = psutil.Process(proc.pid)
            samples: list[tuple[float, float]] = []
            while proc.poll() is None:
                if time.perf_counter() - t0 > timeout:
                    for c in wrapper.children(recursive=True):
                        c.kill()
                    proc.kill()
                    break
                try:
                    rss = sum(c.memory_info().rss for c in wrapper.children(recursive=True))
                    if rss:
                        samples.append((time.perf_counter() - t0, rss / 2**20))
                except psutil.Error:
                    pass
                time.sleep(poll_s)
            proc.wait()
            wall = time.perf_counter() - t0
        ru = json.loads(report.read_text()) if report.is_file() else {"rc": proc.returncode, "peak_rss_mib": None}
        stdout, stderr = out_p.read_text(errors="replace"), err_p.read_text(errors="replace")
    ts = np.array([s[0] for s in samples]) if samples else np.zeros(0)
    rs = np.array([s[1] for s in samples]) if samples else np.zeros(0)
    step = max(1, len(samples) // 60)
    res = {
        "rc": ru["rc"], "wall_s": wall, "peak_rss_mib": ru["peak_rss_mib"], "child_cpu_s": ru.get("child_cpu_s"),
        "psutil_peak_rss_mib": float(rs.max()) if len(rs) else None,
        "psutil_peak_at_s": float(ts[int(rs.argmax())]) if len(rs) else None,
        "psutil_final_rss_mib": float(rs[-1]) if len(rs) else None,
        "rss_timeline_s_mib": [[round(float(t), 1), round(float(r), 1)] for t, r in zip(ts[::step], rs[::step])],
        "n_samples": len(samples),
    }
    if ru["rc"] != 0:
        res["stderr_tail"] = stderr[-1500:]
        res["stdout_tail"] = stdout[-500:]
    return res


def memory_runs(work: Path, n: int, n_slices: int, px: int, size: int, epochs: int, batch_size: int) -> dict:
    """``aeanomaly fit`` on N and 10N phantoms (each its own child), peak RSS and ratio.

    ``n_slices`` should be at least ``batch_size``: N = 4 scans leave one training scan, and a run
    whose batches are smaller than the 10N run's holds smaller activations, which is not growth with
    the data set.
    """
    from aeanomaly.splits import split_scans

    runs = {}
    for label, count in (("N", n), ("10N", 10 * n)):
        folder = work / f"mem_{count}"
        paths, gen_s = phantoms(folder, count, n_slices, px)
        bundle = work / f"mem_bundle_{count}"
        cmd = fit_cli_command(folder / "normal", bundle, size, epochs, batch_size)
        print(f"   {label}: {count} scans ({gen_s:.1f}s to write) → aeanomaly fit", flush=True)
        r = run_child_peak_rss(cmd)
        sp = split_scans(count)
        hu_mib = count * n_slices * px * px * 4 / 2**20
        runs[label] = {
            "n_scans": count, "phantom_write_s": gen_s, "split_scans": {k: len(getattr(sp, k)) for k in ("train", "val", "calib")},
            "input_mib_on_disk": sum(p.stat().st_size for p in paths) / 2**20,
            # what holding the data would cost: every scan's HU as float32, every train+val slice on the model grid
            "all_scans_hu_float32_mib": hu_mib,
            "all_store_slices_float32_mib": (len(sp.train) + len(sp.val)) * n_slices * size * size * 4 / 2**20,
            "train_slices_per_epoch": len(sp.train) * n_slices,
            "largest_train_batch": min(batch_size, len(sp.train) * n_slices),
            "bundle_ok": (bundle / "bundle.json").is_file(),
            "command": " ".join(["aeanomaly"] + cmd[cmd.index("fit"):]).replace(str(work), "WORK"),
            **r,
        }
        print(f"      rc={r['rc']} {r['wall_s']:.1f}s peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
    a, b = runs["N"]["peak_rss_mib"], runs["10N"]["peak_rss_mib"]
    ratio = b / a if a and b else None
    pa, pb = runs["N"]["psutil_peak_rss_mib"], runs["10N"]["psutil_peak_rss_mib"]
    extra = runs["10N"]["all_scans_hu_float32_mib"] - runs["N"]["all_scans_hu_float32_mib"]
    return {
        "config": {"n": n, "slices_per_scan": n_slices, "phantom_px": px, "model_size_px": size, "epochs": epochs,
                   "batch_size": batch_size},
        "runs": runs,
        "peak_rss_ratio_10N_over_N": ratio,
        "peak_rss_growth_mib": b - a if a and b else None,
        "psutil_peak_ratio_10N_over_N": pb / pa if pa and pb else None,
        "within_1.2x": bool(ratio is not None and ratio <= 1.2 and runs["N"]["rc"] == 0 and runs["10N"]["rc"] == 0),
        "sensitivity": {
            "extra_mib_if_all_scans_held_as_float32_hu": extra,
            "ratio_that_would_give": (a + extra) / a if a else None,
            "note": "a fit that kept every loaded scan in memory would add this much at 10N; the measured growth "
                    "is to be read against it",
        },
    }


# ------------------------------------------------------------------------------------------------
# 3. epochs to a validation-MAE plateau
# ------------------------------------------------------------------------------------------------

def plateau_run(paths: list[Path], size: int, epochs: int, tol: float = 0.02) -> dict:
    from aeanomaly.detector import AnomalyDetector

    det = AnomalyDetector(size=size, epochs=epochs, seed=0)
    with FitProbe() as probe:
        t0 = time.perf_counter()
        det.fit(paths, verbose=0)
        wall = time.perf_counter() - t0
    hist = det.history_
    val = np.asarray(hist.get("val_loss", []), float)
    best_i = int(np.nanargmin(val)) if len(val) else None
    best = float(val[best_i]) if best_i is not None else None
    within = int(np.flatnonzero(val <= best * (1 + tol))[0]) if best is not None else None
    return {
        "size_px": size, "max_epochs": epochs, "patience": det.patience, "n_scans": len(paths),
        "split_scans": {k: len(v) for k, v in det.split_.items()},
        "epochs_run": len(val), "stopped_early": det.train_state_.get("stopped_early"),
        "history": {k: [round(float(v), 6) for v in vs] for k, vs in hist.items()},
        "best_epoch": best_i + 1 if best_i is not None else None,
        "best_val_loss": best,
        "tolerance": tol,
        "first_epoch_within_tol_of_best": within + 1 if within is not None else None,
        "val_loss_first_epoch": float(val[0]) if len(val) else None,
        "improvement_first_to_best": float(1 - best / val[0]) if len(val) else None,
        "epoch_s_median": float(np.median([e["epoch_s"] for e in probe.epochs])) if probe.epochs else None,
        "fit_wall_s": wall,
        "fit_stages_s": {k: round(v, 3) for k, v in probe.stages.items()},
        "per_epoch": [_rounded(e) for e in probe.epochs],
    }


def observations(result: dict) -> list[str]:
    """Facts read off the raw numbers that a reader of the summary should know."""
    obs = []
    val_seen = [tuple(e.get("val_dataset_epoch_seen", [])) for e in (result.get("plateau") or {}).get("per_epoch", [])]
    if len(val_seen) > 1 and len(set(val_seen)) > 1:
        obs.append(
            "The validation SliceDataset's epoch counter (which seeds its coarse noise) changes every Keras epoch "
            f"(seen per epoch in the plateau run: {[list(v) for v in val_seen]}), so val_loss is measured on a "
            "different noise draw each epoch (a noisier early-stopping signal), and since train_autoencoder builds "
            "the validation dataset without start_epoch, a --resume run restarts that counter at 0 and sees other "
            "validation noise than the uninterrupted run would have.")
    pl = result.get("plateau") or {}
    warm = pl.get("per_epoch", [])[1:]
    if warm:
        share = float(np.median([e["checkpoint_s"] / e["epoch_s"] for e in warm]))
        obs.append(f"The per-epoch checkpoint (model.save of the .keras file + best weights) takes a median "
                   f"{100 * share:.0f}% of a warm epoch at {pl.get('size_px')} px with "
                   f"{warm[-1]['train_slices']} training slices per epoch.")
    return obs


def section_throughput(c: dict, work: Path) -> dict:
    tp = {}
    for size in c["sizes"]:
        paths, gen_s = phantoms(work / f"tp{size}", c["n_scans"][size], c["slices_per_scan"], size)
        print(f"[fit] 1. throughput {size}px: {len(paths)} phantoms in {gen_s:.1f}s", flush=True)
        r = throughput_run(paths, size, c["epochs"])
        r["phantom_write_s"] = gen_s
        tp[f"{size}px"] = r
        print(f"   {size}px: {r['slices_per_s']:.1f} slices/s (train phase), "
              f"{r['epoch_slices_per_s']:.1f} whole epoch, epochs "
              f"{[round(e['epoch_s'], 1) for e in r['per_epoch']]} s, batch production "
              f"{100 * r['batch_production_fraction_of_train_phase']:.0f}%", flush=True)
        shutil.rmtree(work / f"tp{size}", ignore_errors=True)
    if "128px" in tp and "256px" in tp:
        tp["ratio_128_over_256"] = tp["128px"]["slices_per_s"] / tp["256px"]["slices_per_s"]
    return tp


def section_memory(c: dict, work: Path) -> dict:
    print(f"[fit] 2. peak RSS of `aeanomaly fit` on {c['n']} and {10 * c['n']} scans", flush=True)
    mem = memory_runs(work, c["n"], c["slices_per_scan"], c["phantom_px"], c["model_size_px"], c["epochs"],
                      c["batch_size"])
    print(f"   ratio {mem['peak_rss_ratio_10N_over_N']:.3f} within 1.2x: {mem['within_1.2x']}", flush=True)
    return mem


def section_plateau(c: dict, work: Path) -> dict:
    paths, gen_s = phantoms(work / "plateau", c["n_scans"], c["slices_per_scan"], c["phantom_px"], z_mm=c["z_mm"])
    print(f"[fit] 3. plateau: {len(paths)} phantoms in {gen_s:.1f}s, up to {c['max_epochs']} epochs at "
          f"{c['model_size_px']} px", flush=True)
    pl = plateau_run(paths, c["model_size_px"], c["max_epochs"])
    pl["phantom_write_s"] = gen_s
    print(f"   {pl['epochs_run']} epochs (stopped early: {pl['stopped_early']}), best epoch {pl['best_epoch']}, "
          f"within 2% from epoch {pl['first_epoch_within_tol_of_best']}", flush=True)
    return pl


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few epochs (a smoke run)")
    ap.add_argument("--out", default=None, help="result name (default fit / fit_quick)")
    ap.add_argument("--skip", default="", help=argparse.SUPPRESS)  # comma list of throughput,memory,plateau
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quick = args.quick
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.perf_counter()

    # sizes chosen for ~10 min on 2 idle cores (phantoms of 16 slices: ~0.1 s a scan at 64 px,
    # 0.3 s at 128 px, 1.5 s at 256 px; a 64-px training slice costs ~0.7 GFLOP, a 256-px one ~11)
    cfg = {
        "throughput": {"sizes": [128, 256], "n_scans": {128: 4, 256: 4} if quick else {128: 8, 256: 5},
                       "slices_per_scan": 8 if quick else 16, "epochs": 2 if quick else 3},
        "memory": {"n": 4, "slices_per_scan": 8 if quick else 16, "phantom_px": 64 if quick else 256,
                   "model_size_px": 64, "epochs": 1, "batch_size": 8 if quick else 16},
        # 8 slices 5 mm apart: the same 40 mm of chest as 16 × 2.5 mm, at half the cost per epoch
        "plateau": {"n_scans": 8 if quick else 24, "slices_per_scan": 8, "z_mm": 5.0, "phantom_px": 128,
                    "model_size_px": 64, "max_epochs": 3 if quick else 30},
    }
    import tensorflow as tf  # noqa: F401
    import keras  # noqa: F401

    result: dict = {
        "benchmark": "fit", "quick": quick, "machine": _perf.machine_info(), "config": cfg,
        "notes": [
            f"Measured on a shared {_perf.usable_cpus()}-core CPU machine (no GPU); another process may have been "
            "running tests or benchmarks at the same time (see load averages), so absolute throughput is noisy; "
            "ratios within this run compare like with like.",
            "Throughput = training slices of an epoch / seconds of its training phase (epoch begin → validation "
            "begin), over epochs after the first (warm-up: graph tracing; Keras also fetches an extra batch to "
            "infer the input signature, so epoch 1 counts one more batch). epoch_slices_per_s also counts "
            "validation and the per-epoch checkpoint. Batch production (pread of the float16 slice store, "
            "augmentation, coarse noise) runs in tf.data's prefetch thread (PyDataset workers=1: no enqueuer) and "
            "can overlap the train step; its share of the training phase is reported. cpu_cores_used = this "
            "process's CPU seconds / wall seconds per epoch (below 2 means the other load took the rest).",
            "Peak RSS: ru_maxrss (RUSAGE_CHILDREN) of each `aeanomaly fit` child, read in a minimal wrapper "
            "process, because a child forked straight from this TensorFlow-laden process inherits its RSS "
            "high-water mark; psutil samples every 0.1 s give the timeline.",
            "Validation loss is the package's: MAE of the reconstruction of the clean slice from the coarse-noise "
            "input (the DAE objective), on validation scans, no augmentation.",
        ],
    }
    work = Path(tempfile.mkdtemp(prefix="aeanomaly-fitbench-"))
    sw = Stopwatch()
    try:
        sections = (("throughput", section_throughput), ("memory", section_memory), ("plateau", section_plateau))
        for name, fn in sections:
            if name not in skip:
                with sw(name):
                    result[name] = fn(cfg[name], work)
        result["section_wall_s"] = dict(sw.laps)

        # ---- summary -------------------------------------------------------------------------
        s: dict = {}
        tp = result.get("throughput", {})
        for size in (128, 256):
            if f"{size}px" in tp:
                s[f"train_slices_per_s_{size}px"] = tp[f"{size}px"]["slices_per_s"]
                s[f"epoch_slices_per_s_{size}px"] = tp[f"{size}px"]["epoch_slices_per_s"]
                s[f"batch_production_fraction_{size}px"] = tp[f"{size}px"]["batch_production_fraction_of_train_phase"]
        if "memory" in result:
            m = result["memory"]
            s["peak_rss_mib_N"] = m["runs"]["N"]["peak_rss_mib"]
            s["peak_rss_mib_10N"] = m["runs"]["10N"]["peak_rss_mib"]
            s["N_scans"] = m["runs"]["N"]["n_scans"]
            s["peak_rss_ratio_10N_over_N"] = m["peak_rss_ratio_10N_over_N"]
            s["within_1.2x"] = m["within_1.2x"]
        if "plateau" in result:
            p = result["plateau"]
            s["plateau_best_epoch"] = p["best_epoch"]
            s["plateau_first_epoch_within_2pct"] = p["first_epoch_within_tol_of_best"]
            s["plateau_epochs_run"] = p["epochs_run"]
            s["plateau_stopped_early"] = p["stopped_early"]
            s["plateau_best_val_mae"] = p["best_val_loss"]
        result["summary"] = s
        result["observations"] = observations(result)
        result["load_avg_at_end"] = _perf.load_avg()
        result["wall_s"] = time.perf_counter() - t_start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = args.out or ("fit_quick" if quick else "fit")
    path = _perf.write_json(name, _perf.clean(result))
    print(f"[fit] wrote {path} in {result.get('wall_s', 0):.0f}s", flush=True)


if __name__ == "__main__":
    main()
