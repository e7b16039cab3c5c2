"""The two data passes of ``fit``: normal scans → on-disk slice store, and held-out normal scans →
calibration statistics. Kept apart from :mod:`aeanomaly.detector` to keep both small."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import AeAnomalyError, ScanError
from .io import load_scan
from .localize import slice_peaks
from .model.data import SliceStore
from .scoring import scan_score
from .splits import Split

STORE = "slices"
#: Per calibration scan, the fraction of highest heatmap values kept to find the pixel threshold.
TAIL_FRACTION = 0.02


def _load(path: Path, strict: bool, skipped: list[dict]):
    try:
        return load_scan(path)
    except AeAnomalyError as err:
        if strict:
            raise
        skipped.append({"scan": str(path), "error": str(err)})
        warnings.warn(f"skipped unreadable scan: {err}", stacklevel=3)
        return None


def build_store(det, paths: list[Path], split: Split, work: Path, *, strict: bool, resume: bool, verbose: int):
    """Preprocess the training and validation scans one at a time into a :class:`SliceStore`.

    Returns the store and the list of skipped scans (``{"scan", "error"}``). With ``resume`` and a
    complete store from the same split in ``work``, it is reused.
    """
    meta_path = work / "split.json"
    want = {"paths": [str(p) for p in paths], "split": split.to_dict(), "size": det.size,
            "channels": det.channels, "window": det.window_.to_spec()}
    if resume and SliceStore.exists(work / STORE) and meta_path.is_file():
        have = json.loads(meta_path.read_text())
        if {k: have.get(k) for k in want} == want:
            return SliceStore.open(work / STORE), list(have.get("skipped", []))
    for stale in (work / f"{STORE}.bin", work / f"{STORE}.json"):
        stale.unlink(missing_ok=True)
    store = SliceStore(work / STORE, det.size, det.channels)
    skipped: list[dict] = []
    ids = sorted(split.train + split.val)
    for i in tqdm(ids, desc="preprocess", unit="scan", disable=verbose == 0):
        scan = _load(paths[i], strict, skipped)
        if scan is None:
            continue
        prep = det.prepare(scan)
        if prep.keep.any():
            store.append(prep.x[prep.keep], i)
        elif strict:
            raise ScanError("no slice with enough body (is this CT in the chosen window?)", paths[i])
        else:
            skipped.append({"scan": str(paths[i]), "error": f"{paths[i]}: no slice with enough body"})
    store.finish()
    meta_path.write_text(json.dumps({**want, "skipped": skipped}))
    return store, skipped


def calibration_pass(det, paths: list[Path], *, strict: bool, verbose: int) -> dict:
    """Score held-out normal scans: scan scores, slice scores, the upper tail of heatmap values (for
    the pixel threshold) and per-slice heatmap peaks (for lesion severity)."""
    scan_scores, slice_values, tails, peaks, sources, skipped = [], [], [], [], [], []
    n_pixels = 0
    for path in tqdm(paths, desc="calibrate", unit="scan", disable=verbose == 0):
        scan = _load(path, strict, skipped)
        if scan is None:
            continue
        _, _, _, heat, mask, scores = det._analyse(scan)
        s = scan_score(scores, det.scan_aggregation)
        if not np.isfinite(s):
            skipped.append({"scan": str(path), "error": f"{path}: no slice with enough body"})
            continue
        scan_scores.append(s)
        slice_values.extend(scores[np.isfinite(scores)].tolist())
        vals = heat[mask]
        n_pixels += vals.size
        k = max(1, int(np.ceil(TAIL_FRACTION * vals.size)))
        tails.append(np.partition(vals, vals.size - k)[vals.size - k :])
        peaks.extend(slice_peaks(heat)[mask.any(axis=(1, 2))].tolist())
        sources.append(str(path))
    if not scan_scores:
        raise ScanError("no usable calibration scan", paths[0] if paths else None)
    return {
        "scan_scores": scan_scores, "slice_scores": slice_values, "pixel_tail": np.concatenate(tails),
        "n_pixels": n_pixels, "normal_peaks": peaks, "sources": sources, "skipped": skipped,
    }
