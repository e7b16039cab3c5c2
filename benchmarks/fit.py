"""Training throughput: the ``fit`` pipeline against the bare network and numpy sgemm, in one run.

    python benchmarks/fit.py                     # → results/fit.json (128 and 256 px, 3 architectures)
    python benchmarks/fit.py --quick             # → results/fit_quick.json (a few minutes)
    python benchmarks/fit.py --slices 60 --epochs 2 --sizes 128 --out fit_short

Public APIs only (no monkeypatching): slices of chest phantoms are windowed into a
:class:`aeanomaly.model.data.SliceStore` and trained with :func:`aeanomaly.model.train.train_autoencoder`
(the function ``AnomalyDetector.fit`` calls, with its default augmentation and coarse-noise denoising);
per-epoch times come from the run state it returns (``state["timing"]``: training step, validation,
checkpoint). Per size and architecture:

1. the bare network's training step on in-memory batches (slices/s, GFLOP/s, fraction of sgemm);
2. ``train_autoencoder`` (slices/s of the epochs after the first, which includes tracing), its ratio
   to (1) — what the input pipeline costs — and the checkpoint's share of an epoch, also extrapolated
   to an epoch of 1000 slices;
3. the targets of issue 16 (≥ 30 slices/s at 128 px, ≥ 8 at 256 px, training ≥ 40 % of sgemm,
   checkpoint < 5 % of an epoch) and the compute floor: slices/s the run's sgemm rate allows for the
   model's training FLOPs.

Then the memory of ``fit`` as users run it: ``aeanomaly fit --quiet`` (fit's defaults, one epoch) on N
and on 10N normal chest phantoms of 512 × 512 slices, each in a child process, with the child's peak
RSS (``VmHWM``). Target: 10N ≤ 1.2 × N (``--memory-scans N``, default 4, the fewest ``fit`` splits;
0 skips it). ``--memory-factors 10 40 --memory-px 128 --memory-only`` measures further out (40N) on
slices at the model grid, without the throughput part.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf  # noqa: E402

TARGETS = {128: 30.0, 256: 8.0}


def phantom_store(path: Path, size: int, n_slices: int, seed: int = 0):
    """A :class:`SliceStore` of ``n_slices`` lung-windowed chest-phantom slices at ``size`` px
    (phantoms of 20 slices generated on the model grid)."""
    from aeanomaly.datasets.synthetic import make_phantom
    from aeanomaly.model.data import SliceStore
    from aeanomaly.preprocess import HUWindow

    window = HUWindow.parse("lung")
    store = SliceStore(path, size, 1)
    made, scan = 0, 0
    while made < n_slices:
        n = min(20, n_slices - made)
        ph = make_phantom("chest", (n, size, size), (5.0, 350.0 / size, 350.0 / size), rng=seed + scan)
        store.append(window.apply(ph.hu).astype(np.float32)[..., None], scan)
        made += n
        scan += 1
    return store.finish()


def fit_run(size: int, arch: dict, n_slices: int, epochs: int, batch_size: int, work: Path) -> dict:
    """``train_autoencoder`` with the release's training defaults and ``arch``; epoch timings."""
    from aeanomaly.model.train import TrainConfig, train_autoencoder

    work.mkdir(parents=True, exist_ok=True)
    store = phantom_store(work / f"store{size}", size, n_slices)
    n_val = max(batch_size, n_slices // 10)
    idx = np.arange(len(store))
    cfg = TrainConfig(size=size, epochs=epochs, batch_size=batch_size, patience=epochs + 1, **arch)
    run_dir = work / f"run{size}-{arch['norm']}"
    run_dir.mkdir()
    t0 = time.perf_counter()
    _, state = train_autoencoder(cfg, store, idx[n_val:], idx[:n_val], run_dir, verbose=0)
    wall = time.perf_counter() - t0
    store.close()
    timing = state["timing"]
    steady = timing[1:] or timing  # the first epoch includes tracing the graphs
    rate = float(np.median([t["train_slices_per_s"] for t in steady]))
    ckpt = float(np.median([t["checkpoint_s"] for t in steady]))
    epoch_s = float(np.median([t["epoch_s"] for t in steady]))
    return {
        "train_slices": int(len(idx) - n_val), "val_slices": int(n_val), "epochs": epochs, "batch_size": batch_size,
        "wall_s": wall, "epochs_timing": timing, "train_slices_per_s": rate,
        "checkpoint_s": ckpt, "checkpoint_fraction_of_epoch": ckpt / epoch_s,
        "checkpoint_fraction_of_1000_slice_epoch": ckpt / (ckpt + 1000.0 / rate),
        "final_loss": state["history"]["loss"][-1], "final_val_loss": state["history"].get("val_loss", [None])[-1],
    }


def fit_memory(n_scans: int, work: Path, slices_per_scan: int = 10, factors=(10,), slice_px: int = 512) -> dict:
    """Peak RSS of ``aeanomaly fit --quiet --epochs 1`` on ``n_scans`` and on ``f · n_scans`` normal chest
    phantoms for each factor ``f`` (slices of ``slice_px`` px over 358 mm, 512 as real CT; the first scans
    shared), each in a child process."""
    from aeanomaly.datasets.synthetic import write_phantom_set

    out: dict = {"slices_per_scan": slices_per_scan, "slice_px": slice_px, "epochs": 1}
    data = work / "memory_phantoms"
    counts = [n_scans, *(int(f) * n_scans for f in factors)]
    write_phantom_set(data, max(counts), 0, "chest", seed=3, shape=(slices_per_scan, slice_px, slice_px),
                      spacing=(5.0, 358.4 / slice_px, 358.4 / slice_px))
    paths = sorted((data / "normal").glob("*.nii.gz"))
    for n in counts:
        folder = work / f"normals{n}"
        folder.mkdir()
        for q in paths[:n]:
            (folder / q.name).symlink_to(q)
        r = _perf.run_cli(["fit", "--normal-dir", str(folder), "--out", str(work / f"bundle{n}"), "--epochs", "1",
                           "--quiet"], work / f".fit{n}-status")
        out[f"{n}_scans"] = {**r, "scans": n}
        print(f"aeanomaly fit on {n} scans of {slices_per_scan} slices: {r['wall_s']:.1f} s, peak RSS "
              f"{r['peak_rss_mib']} MiB (exit {r['exit_code']})", flush=True)
        if r["exit_code"]:
            raise RuntimeError(f"aeanomaly fit failed: {r.get('stderr_tail')}")
    small = out[f"{n_scans}_scans"]["peak_rss_mib"]
    out["ratio_by_factor"] = {str(f): out[f"{int(f) * n_scans}_scans"]["peak_rss_mib"] / small for f in factors}
    if "10" in out["ratio_by_factor"]:
        out["ratio_10x_data"] = out["ratio_by_factor"]["10"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few slices and epochs (results/fit_quick.json)")
    ap.add_argument("--slices", type=int, default=None, help="training + validation slices per size")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--archs", nargs="+", default=list(_perf.ARCHITECTURES), choices=list(_perf.ARCHITECTURES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-scans", type=int, default=None,
                    help="N of the fit-memory run (N and 10N scans; default 4, the fewest fit accepts; 0 skips it)")
    ap.add_argument("--memory-factors", type=int, nargs="+", default=[10],
                    help="the fit-memory run fits N and each factor times N scans (default 10)")
    ap.add_argument("--memory-px", type=int, default=512, help="slice side of the fit-memory phantoms (default 512)")
    ap.add_argument("--memory-only", action="store_true", help="only the fit-memory run")
    ap.add_argument("--out", default=None, help="results/<OUT>.json")
    args = ap.parse_args(argv)
    n_memory = 4 if args.memory_scans is None else args.memory_scans
    if 0 < n_memory < 4:
        ap.error("--memory-scans: fit needs at least 4 normal scans (train, validation, calibration)")
    n_slices = args.slices or (64 if args.quick else 400)
    epochs = args.epochs or (2 if args.quick else 3)
    name = args.out or ("fit_quick" if args.quick else "fit")

    machine = {**_perf.machine_info(), **_perf.shared_machine_note()}
    sg = _perf.numpy_sgemm_gflops(2048 if not args.quick else 1024)
    sgemm = sg["gflops_median"]
    print(f"numpy sgemm: {sgemm:.1f} GFLOP/s", flush=True)
    sizes = [] if args.memory_only else args.sizes
    results: dict = {"config": {"slices": n_slices, "epochs": epochs, "batch_size": args.batch_size,
                                "sizes": sizes, "archs": args.archs},
                     "machine": machine, "numpy_sgemm": sg, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="aeanomaly-fitbench-") as tmp:
        for size in sizes:
            for label in args.archs:
                arch = _perf.ARCHITECTURES[label]
                bare = _perf.network_rates(size, arch, batch_size=args.batch_size, train_batch_size=args.batch_size,
                                           repeats=args.repeats)
                run = fit_run(size, arch, n_slices, epochs, args.batch_size, Path(tmp) / f"{size}-{arch['norm']}")
                run["ratio_to_bare_train_step"] = run["train_slices_per_s"] / bare["train_slices_per_s"]
                run["train_gflops"] = 3 * bare["gflop_per_slice"] * run["train_slices_per_s"]
                peak = max(sgemm, bare["sgemm_gflops_reference"])  # best sgemm rate seen so far in this run
                run["sgemm_gflops_reference"] = peak
                run["train_fraction_of_sgemm"] = run["train_gflops"] / peak
                run["compute_floor_slices_per_s"] = peak / (3 * bare["gflop_per_slice"])
                results["runs"][f"{size}px {label}"] = {"bare_network": bare, "fit": run}
                print(f"{size}px {label:28s} bare train {bare['train_slices_per_s']:6.1f} sl/s "
                      f"({bare['train_fraction_of_sgemm']:.0%} sgemm) | fit {run['train_slices_per_s']:6.1f} sl/s "
                      f"(×{run['ratio_to_bare_train_step']:.2f} bare, {run['train_fraction_of_sgemm']:.0%} sgemm) | "
                      f"checkpoint {run['checkpoint_fraction_of_epoch']:.1%} of epoch "
                      f"({run['checkpoint_fraction_of_1000_slice_epoch']:.2%} of a 1000-slice one) | "
                      f"floor {run['compute_floor_slices_per_s']:.0f} sl/s", flush=True)
                _perf.write_json(name, results)
        if n_memory > 0:
            results["fit_memory"] = fit_memory(n_memory, Path(tmp), factors=args.memory_factors,
                                               slice_px=args.memory_px)
    targets = {}
    for key, r in results["runs"].items():
        size = int(key.split("px")[0])
        f = r["fit"]
        targets[key] = {
            f"fit_ge_{TARGETS.get(size, 0):g}_slices_per_s": {"value": f["train_slices_per_s"],
                                                               "met": f["train_slices_per_s"] >= TARGETS.get(size, 0)},
            "train_ge_40pct_of_sgemm": {"value": f["train_fraction_of_sgemm"], "met": f["train_fraction_of_sgemm"] >= 0.4},
            "checkpoint_lt_5pct_of_1000_slice_epoch": {"value": f["checkpoint_fraction_of_1000_slice_epoch"],
                                                       "met": f["checkpoint_fraction_of_1000_slice_epoch"] < 0.05},
            "compute_floor_slices_per_s": {"value": f["compute_floor_slices_per_s"]},
        }
    if results.get("fit_memory"):
        m = results["fit_memory"]
        targets["aeanomaly fit"] = {f"peak_rss_{int(k) * n_memory}_over_{n_memory}_scans_le_1.2": {
            "value": v, "met": v <= 1.2} for k, v in m["ratio_by_factor"].items()}
    results["targets"] = targets
    results["machine"]["load_avg_at_end"] = _perf.load_avg()
    results["peak_rss_mib"] = _perf.peak_rss_mib()
    path = _perf.write_json(name, results)
    print("\ntarget                                                  value     met")
    for key, t in targets.items():
        for k, v in t.items():
            met = "" if "met" not in v else ("yes" if v["met"] else "no")
            print(f"{key + ': ' + k:55s} {v['value']:9.3f} {met}")
    print(f"→ {path}")


if __name__ == "__main__":
    main()
