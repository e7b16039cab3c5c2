"""Inference in bfloat16 against float32 on this CPU: speed and how much the results move.

    python benchmarks/precision.py [--size 256] [--slices 64]   # → benchmarks/results/precision.json

Public API only: a bundle fitted by ``AnomalyDetector.fit`` on small phantoms (as ``speed.py`` does; its
weights are real, quality is irrelevant here), then on one 512×512 scan ``AnomalyDetector.reconstruct``
timed in each precision in the same process (median of repeats after a warm-up), and
``AnomalyDetector.analyse`` in each precision: the mean and largest difference of the reconstruction and
of the heatmap, and the largest difference of the slice scores. oneDNN computes bfloat16 convolutions
natively only where the CPU has AVX512-BF16 or AMX (``machine.cpu_flags``); elsewhere it emulates them.

**Without native bfloat16** (``--isas``, default ``AVX512_CORE AVX2``): the same ``reconstruct`` timing in
a child process whose oneDNN is limited to that instruction set (``ONEDNN_MAX_CPU_ISA``), standing in
for a CPU without AVX512-BF16 (AVX512_CORE: Skylake/Cascade Lake servers; AVX2: most desktops, AMD
Zen 2/3). This is what :func:`aeanomaly.model.autoencoder.native_bfloat16` guards against.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf  # noqa: E402
import speed  # noqa: E402
from aeanomaly.calibrate import PRECISIONS  # noqa: E402  (float32, bfloat16; no TensorFlow at import)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--isas", nargs="*", default=["AVX512_CORE", "AVX2"],
                    help="oneDNN instruction sets (ONEDNN_MAX_CPU_ISA) to time both precisions under, in a child")
    args = ap.parse_args(argv)
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.io import load_scan

    work = Path(tempfile.mkdtemp(prefix="aeanomaly-precision-"))
    result = {"benchmark": "precision", "machine": _perf.machine_info(), "config": vars(args)}
    try:
        bundle = speed.fit_bundle(work, args.size, n_scans=8, epochs=1, norm="batch")
        det = AnomalyDetector.load(bundle)
        scan_path = work / "scan.nii.gz"
        speed.make_volume_nifti(scan_path, args.slices)
        scan = load_scan(scan_path)
        prep = det.prepare(scan)
        x = prep.x[prep.keep]
        times = {p: [] for p in PRECISIONS}
        # one precision at a time: the detector keeps one traced inference function, for the last precision
        for p in PRECISIONS:
            det.reconstruct(x, precision=p)  # warm-up: tracing and oneDNN's kernel choice
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                det.reconstruct(x, precision=p)
                times[p].append(time.perf_counter() - t0)
        rates = {p: len(x) / float(np.median(t)) for p, t in times.items()}
        a = {p: det.analyse(scan, precision=p, normalise=False) for p in PRECISIONS}
        drec = np.abs(a["bfloat16"].reconstruction - a["float32"].reconstruction)[a["float32"].mask]
        dheat = np.abs(a["bfloat16"].heatmap - a["float32"].heatmap)[a["float32"].mask]
        dslice = np.abs(np.nan_to_num(a["bfloat16"].slice_scores - a["float32"].slice_scores))
        result.update({
            "n_slices": int(len(x)), "slices_per_s": rates, "bf16_speedup": rates["bfloat16"] / rates["float32"],
            "reconstruction_abs_diff": {"mean": float(drec.mean()), "max": float(drec.max())},
            "heatmap_abs_diff": {"mean": float(dheat.mean()), "max": float(dheat.max()),
                                 "heatmap_p99_float32": float(np.quantile(a["float32"].heatmap[a["float32"].mask], 0.99))},
            "slice_score_abs_diff_max": float(dslice.max()),
            "slice_score_range_float32": float(np.nanmax(a["float32"].slice_scores) - np.nanmin(a["float32"].slice_scores)),
        })
        np.save(work / "x.npy", x)
        result["limited_isa"] = {isa: rates_in_child(bundle, work / "x.npy", isa, args.repeats) for isa in args.isas}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _perf.write_json("precision", result)
    print(table(result))
    return 0


#: Run in a child: ``reconstruct`` slices/s per precision, or the first line of the error.
_CHILD = """
import json, sys, time
import numpy as np
from aeanomaly.detector import AnomalyDetector
det = AnomalyDetector.load(sys.argv[1])
x = np.load(sys.argv[2])
out = {}
for p in ("float32", "bfloat16"):
    try:
        det.reconstruct(x, precision=p)
        ts = []
        for _ in range(int(sys.argv[3])):
            t0 = time.perf_counter()
            det.reconstruct(x, precision=p)
            ts.append(time.perf_counter() - t0)
        out[p] = len(x) / float(np.median(ts))
    except Exception as err:  # noqa: BLE001  (what TensorFlow says is the result)
        out[p] = None
        msg = str(err).split("message:", 1)[-1].strip()  # oneDNN's reason, after TensorFlow's preamble
        out[p + "_error"] = (type(err).__name__ + ": " + msg).splitlines()[0][:300]
print("RATES " + json.dumps(out))
"""


def rates_in_child(bundle: Path, x_path: Path, isa: str, repeats: int) -> dict:
    """Both precisions' ``reconstruct`` rates with oneDNN limited to ``isa`` (a fresh process: the limit is
    read once, when oneDNN starts)."""
    import json
    import os
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), str(x_path), str(repeats)],
                          capture_output=True, text=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RATES ")]
    if not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    out = json.loads(lines[-1][len("RATES "):])
    if out.get("float32") and out.get("bfloat16"):
        out["bf16_speedup"] = out["bfloat16"] / out["float32"]
    return out


def table(d: dict) -> str:
    """Markdown: one row per precision, with the speed-up and the differences against float32."""
    r = d["slices_per_s"]
    flags = [f for f in d["machine"].get("cpu_flags", []) if f in ("avx512_bf16", "amx_bf16")] or ["none"]
    lines = [f"{d['config']['size']} px, {d['n_slices']} slices of a 512×512 scan, {d['machine'].get('cpu_model')} "
             f"(bfloat16 support: {', '.join(flags)}):", "",
             "| precision | reconstruct slices/s | × float32 | mean / max abs. difference of the reconstruction | "
             "mean / max of the heatmap | max of the slice scores |", "|---|---|---|---|---|---|",
             f"| float32 | {r['float32']:.1f} | 1.00 | – | – | – |",
             f"| bfloat16 | {r['bfloat16']:.1f} | {d['bf16_speedup']:.2f} | "
             f"{d['reconstruction_abs_diff']['mean']:.4f} / {d['reconstruction_abs_diff']['max']:.3f} | "
             f"{d['heatmap_abs_diff']['mean']:.4f} / {d['heatmap_abs_diff']['max']:.3f} | "
             f"{d['slice_score_abs_diff_max']:.4f} (range {d['slice_score_range_float32']:.3f}) |"]
    lim = d.get("limited_isa") or {}
    if lim:
        lines += ["", "Without native bfloat16 (oneDNN limited with `ONEDNN_MAX_CPU_ISA`, in a child process):", "",
                  "| oneDNN limited to | float32 slices/s | bfloat16 slices/s | bfloat16 × float32 |", "|---|---|---|---|"]
        for isa, r in lim.items():
            f32, bf = r.get("float32"), r.get("bfloat16")
            why = str(r.get("bfloat16_error", r.get("error", "?"))).replace("|", "/")[:90]
            bf_cell = f"{bf:.1f}" if bf is not None else f"fails: {why}"
            ratio = f"{r['bf16_speedup']:.2f}" if r.get("bf16_speedup") else "–"
            lines.append(f"| {isa} | {'–' if f32 is None else f'{f32:.1f}'} | {bf_cell} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
