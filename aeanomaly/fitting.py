"""The two data passes of ``fit``: normal scans → on-disk slice store, and held-out normal scans →
calibration statistics. Functions of callables and paths (no detector object), kept apart from
:mod:`aeanomaly.detector` to keep both small."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .blobness import MIN_BLOB_SLICES_3D, gates_across_slices
from .calibrate import NormalStats
from .errors import AeAnomalyError, ScanError
from .io import load_scan

STORE = "slices"


def _load(path, strict: bool, skipped: list[dict]):
    try:
        return load_scan(path)
    except AeAnomalyError as err:
        if strict:
            raise
        skipped.append({"scan": str(path), "error": str(err)})
        warnings.warn(f"skipped unreadable scan: {err}", stacklevel=3)
        return None


def build_store(prepare: Callable, paths: list, ids: list[int], split: dict, spec: dict, work: Path, size: int,
                channels: int, *, strict: bool, resume: bool, verbose: int):
    """Preprocess the scans ``paths[i]`` for ``i`` in ``ids``, one at a time, into a :class:`SliceStore`.

    Parameters
    ----------
    prepare : callable
        Scan → :class:`~aeanomaly.preprocess.PreparedScan` (the detector's ``prepare``).
    split, spec : dict
        The split and the input spec (size, channels, window), recorded so that ``resume`` reuses
        a complete store only when both are unchanged.

    Returns
    -------
    store, skipped
        The store and the skipped scans (``{"scan", "error"}``).
    """
    from .model.data import SliceStore  # Keras: imported only when fitting

    meta_path = work / "split.json"
    want = {"paths": [str(p) for p in paths], "split": split, **spec}
    if resume and SliceStore.exists(work / STORE) and meta_path.is_file():
        have = json.loads(meta_path.read_text())
        if {k: have.get(k) for k in want} == want:
            return SliceStore.open(work / STORE), list(have.get("skipped", []))
    for stale in (work / f"{STORE}.bin", work / f"{STORE}.json"):
        stale.unlink(missing_ok=True)
    store = SliceStore(work / STORE, size, channels)
    skipped: list[dict] = []
    for i in tqdm(ids, desc="preprocess", unit="scan", disable=verbose == 0):
        scan = _load(paths[i], strict, skipped)
        if scan is None:
            continue
        prep = prepare(scan)
        if prep.keep.any():
            store.append(prep.x[prep.keep], i)
        elif strict:
            raise ScanError("no slice with enough body (is this CT in the chosen window?)", paths[i])
        else:
            skipped.append({"scan": str(paths[i]), "error": f"{paths[i]}: no slice with enough body"})
    store.finish()
    meta_path.write_text(json.dumps({**want, "skipped": skipped}))
    return store, skipped


def normal_stats(analyse: Callable, paths: list, *, strict: bool, verbose: int,
                 blob_gate_3d: float = 0.0, desc: str = "calibrate") -> tuple[NormalStats, list[dict]]:
    """Score held-out normal scans with ``analyse`` (scan → :class:`~aeanomaly.scoring.Analysis`) and
    gather what calibration needs (:class:`~aeanomaly.calibrate.NormalStats`). With the scoring's
    ``blob_gate_3d`` > 0, warns when the scans mix volumes and single slices (:func:`mixed_depth_warning`).
    ``desc`` names the pass in the progress bar.

    Returns the statistics and the skipped scans; ScanError when no scan could be used.
    """
    stats, skipped = NormalStats(), []
    for path in tqdm(paths, desc=desc, unit="scan", disable=verbose == 0):
        scan = _load(path, strict, skipped)
        if scan is None:
            continue
        a = analyse(scan)
        if not np.isfinite(a.scan_score):
            skipped.append({"scan": str(path), "error": f"{path}: no slice with enough body"})
            continue
        stats.add(str(path), a.scan_score, a.slice_scores, a.heatmap, a.mask)
    if not len(stats):
        raise ScanError("no usable calibration scan", paths[0] if paths else None)
    why = mixed_depth_warning([len(sl) for sl, _ in stats.per_scan], blob_gate_3d)
    if why:
        warnings.warn(why, stacklevel=2)
    return stats, skipped


def mixed_depth_warning(n_slices: list[int], blob_gate_3d: float) -> str | None:
    """Why calibration scans of these slice counts do not calibrate the blob gate across slices, or None.

    Scans of fewer than :data:`~aeanomaly.blobness.MIN_BLOB_SLICES_3D` slices are scored with the in-plane
    gate alone and volumes with the gate across slices too, which lowers a normal volume's residual more
    (its vessels cut across): pooled, the two set the region-size reference and the thresholds for
    neither (measured on real CT: README "Detection on real CT").
    """
    if blob_gate_3d <= 0:
        return None
    thin = sum(not gates_across_slices(n) for n in n_slices)
    if 0 < thin < len(n_slices):
        return (f"blob_gate_3d {blob_gate_3d:g}: {thin} of {len(n_slices)} calibration scans have fewer than "
                f"{MIN_BLOB_SLICES_3D} slices and are scored with the in-plane blob gate only, the others with the "
                "gate across slices too; their scores are not alike. Calibrate on volumes only, or use blob_gate_3d 0")
    return None
