"""The NIfTI heatmap write of ``score``: float32 against int16 counts with ``scl_slope``, in one process.

    python benchmarks/heatmap_write.py [--slices 300] [--size 128]   # → benchmarks/results/heatmap_write.json

Public API only. The 512×512×N chest phantom of ``speed.py`` is loaded with ``aeanomaly.io.load_scan`` and
prepared with ``aeanomaly.preprocess.prepare_volume`` at the model grid; two heatmaps on that grid are
written back to the input grid with ``aeanomaly.io.writers.save_slabs_like_input`` (resampled slab by slab
with ``aeanomaly.detector.heatmap_to_input_grid``, as ``ScanResult.heatmap_in_input_grid`` does), once as
float32 and once as int16 counts (``int16_slope``; each few slices quantised as soon as they are
resampled, what ``score`` writes), alternately, median of ``--repeats`` after a warm-up:

* ``dense``: smooth positive values in every body pixel of the scoring region, as a residual heatmap
  without the blob gate looks in the lungs (every pixel a different value for gzip);
* ``sparse``: zeros except a few smooth blobs, as a gated heatmap of a scan with few findings looks.

Reported: seconds and file size of each, their ratios, and the largest difference of the read-back int16
heatmap from the float32 one in steps of the slope (the tolerance the writer promises: half a step).
The times of one run are compared with each other only (the machine is shared).
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
from speed import make_volume_nifti  # noqa: E402


def heatmaps(prep, seed: int = 0) -> dict:
    """The ``dense`` and ``sparse`` heatmaps ``(z, size, size)`` on the prepared scan's grid."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    z, n = prep.x.shape[:2]
    body = prep.body.astype(np.float32)
    dense = ndi.gaussian_filter(rng.random((z, n, n)).astype(np.float32), (0, 2, 2)) * body
    sparse = np.zeros((z, n, n), np.float32)
    for _ in range(6):
        c = rng.integers((0, n // 4, n // 4), (z, 3 * n // 4, 3 * n // 4))
        sparse[tuple(c)] = 1.0
    sparse = ndi.gaussian_filter(sparse, (1, 3, 3)) * body
    return {"dense": dense, "sparse": sparse}


def write_pair(heat: np.ndarray, prep, scan, work: Path, repeats: int) -> dict:
    """Median seconds and sizes of the float32 and the int16 write of ``heat``, alternately, and the
    read-back difference in steps."""
    import nibabel as nib

    from aeanomaly.detector import heatmap_to_input_grid
    from aeanomaly.io.writers import int16_slope, save_slabs_like_input

    slope = int16_slope(float(np.max(np.abs(heat), initial=0.0)))
    kinds = {"float32": None, "int16": slope}

    def slab(s):  # what ScanResult.heatmap_in_input_grid(lo, hi, slope=s) calls
        return lambda lo, hi: heatmap_to_input_grid(heat[lo:hi], prep.grid, s)

    times: dict = {k: [] for k in kinds}
    paths = {k: work / f"heat_{k}.nii.gz" for k in kinds}
    for r in range(repeats + 1):
        for k, s in kinds.items():
            t0 = time.perf_counter()
            save_slabs_like_input(paths[k], slab(s), scan, slope=s)
            if r:
                times[k].append(time.perf_counter() - t0)
    a = np.asarray(nib.load(paths["float32"]).dataobj, np.float64)
    b = np.asarray(nib.load(paths["int16"]).dataobj, np.float64)
    med = {k: float(np.median(v)) for k, v in times.items()}
    size = {k: paths[k].stat().st_size for k in kinds}
    return {"seconds": med, "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "bytes": size, "int16_over_float32_time": med["int16"] / med["float32"],
            "int16_over_float32_bytes": size["int16"] / size["float32"], "slope": slope,
            "max_diff_steps": float(np.max(np.abs(a - b)) / slope), "nonzero_fraction": float(np.mean(heat > 0))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=128, help="model grid (fit's default 128)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="heatmap_write")
    args = ap.parse_args(argv)

    from aeanomaly.io import load_scan
    from aeanomaly.preprocess import HUWindow, prepare_volume

    result = {"benchmark": "heatmap_write", "machine": {**_perf.machine_info(), **_perf.shared_machine_note()},
              "config": {"scan_shape_zyx": [args.slices, 512, 512], "size_px": args.size, "repeats": args.repeats}}
    work = Path(tempfile.mkdtemp(prefix="aeanomaly-write-"))
    try:
        path = work / "scan512.nii.gz"
        make_volume_nifti(path, args.slices)
        scan = load_scan(path)
        prep = prepare_volume(scan.hu, scan.spacing, scan.affine, is_hu=scan.is_hu, window=HUWindow.parse("lung"),
                              size=args.size)
        result["heatmaps"] = {}
        for name, heat in heatmaps(prep).items():
            r = write_pair(heat, prep, scan, work, args.repeats)
            result["heatmaps"][name] = r
            print(f"[write] {name:6s} ({r['nonzero_fraction']:.0%} nonzero): float32 {r['seconds']['float32']:.3f} s "
                  f"{r['bytes']['float32'] / 2**20:.1f} MiB, int16 {r['seconds']['int16']:.3f} s "
                  f"{r['bytes']['int16'] / 2**20:.1f} MiB (time ×{r['int16_over_float32_time']:.2f}, "
                  f"bytes ×{r['int16_over_float32_bytes']:.2f}); read back within {r['max_diff_steps']:.3f} step",
                  flush=True)
        result["complete"] = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"→ {_perf.write_json(args.out, _perf.clean(result))}")


if __name__ == "__main__":
    main()
