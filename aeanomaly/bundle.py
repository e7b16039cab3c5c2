"""The bundle: a fitted detector as a directory (JSON + .keras, nothing pickled).

```
bundle/
  bundle.json        format_version, aeanomaly version, created, parameters, input spec, split
  model.keras        the autoencoder (loaded with safe_mode=True)
  calibration.json   scan- and slice-level calibrators, their normal scores, the pixel threshold
  calibration.png    normal calibration scores, fitted density, threshold and goodness of fit
  history.csv        training curves; training.png
  head.keras         optional supervised head, with head.json
```

Writes go to a temporary directory beside the target, renamed into place when complete.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import shutil
from pathlib import Path

import numpy as np

from . import __version__
from .errors import BundleError
from .io.writers import atomic_dir, atomic_path

FORMAT_VERSION = 1
FILES = ("bundle.json", "model.keras", "calibration.json")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=False), encoding="utf-8")


def write_history_csv(path: Path, history: dict) -> None:
    keys = list(history)
    n = max((len(v) for v in history.values()), default=0)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", *keys])
        for i in range(n):
            w.writerow([i + 1, *[history[k][i] if i < len(history[k]) else "" for k in keys]])


def read_history_csv(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    return {k: [float(r[k]) for r in rows if r[k] != ""] for k in keys}


def save_bundle(path: str | os.PathLike, det, overwrite: bool = False) -> Path:
    """Write a fitted :class:`~aeanomaly.detector.AnomalyDetector` to ``path`` atomically."""
    from .report import save_training_curves

    path = Path(path)
    if path.exists() and not overwrite:
        raise BundleError("already exists; pass --overwrite (overwrite=True) to replace it", path)
    if path.exists() and not (path / "bundle.json").is_file():
        raise BundleError("exists and is not a bundle; refusing to replace it", path)
    try:
        with atomic_dir(path, overwrite=overwrite) as tmp:
            det.model_.save(tmp / "model.keras")
            dump_json(tmp / "bundle.json", bundle_info(det))
            dump_json(tmp / "calibration.json", det.calibration_dict())
            save_calibration_figure(tmp / "calibration.png", det)
            history = getattr(det, "history_", {}) or {}
            write_history_csv(tmp / "history.csv", history)
            if history.get("loss"):
                save_training_curves(tmp / "training.png", history)
            head = getattr(det, "head_", None)
            if head is not None:
                head.save_to(tmp)
    except FileExistsError:
        raise BundleError("appeared while writing; not replaced", path) from None
    return path


def bundle_info(det) -> dict:
    """The content of bundle.json."""
    return {
        "format_version": FORMAT_VERSION,
        "aeanomaly_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"window": det.window_.to_spec(), "size": det.size, "channels": det.channels},
        "params": det.get_params(),
        "training": getattr(det, "train_state_", {}),
        "split": getattr(det, "split_", {}),
        "skipped": getattr(det, "skipped_", []),
    }


def read_bundle_json(path: str | os.PathLike) -> dict:
    """bundle.json of a bundle, checked for presence and format version."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError("not a bundle directory (does not exist or is a file)", path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise BundleError(f"incomplete bundle: missing {', '.join(missing)}", path)
    try:
        info = json.loads((path / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"bundle.json is unreadable: {err}", path) from None
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"unknown bundle format_version {version!r} (this aeanomaly {__version__} reads version {FORMAT_VERSION})",
            path,
        )
    return info


def load_bundle(path: str | os.PathLike, cls):
    """Load a bundle into a new detector of class ``cls``."""
    import keras

    from .model import autoencoder  # noqa: F401  (registers custom objects)

    path = Path(path)
    info = read_bundle_json(path)
    try:
        calib = json.loads((path / "calibration.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"calibration.json is unreadable: {err}", path) from None
    det = cls(**info["params"])
    try:
        det.model_ = keras.models.load_model(path / "model.keras", safe_mode=True, compile=False)
    except Exception as err:  # keras raises many types for a broken archive
        raise BundleError(f"model.keras cannot be loaded: {str(err).splitlines()[0]}", path) from None
    det._infer_fn = None
    det.load_calibration_dict(calib)
    det.history_ = read_history_csv(path / "history.csv")
    det.train_state_ = info.get("training", {})
    det.split_ = info.get("split", {})
    det.skipped_ = info.get("skipped", [])
    det.bundle_path_ = str(path)
    if (path / "head.json").is_file():
        from .model.heads import load_head

        det.head_ = load_head(path)
    return det


def update_calibration(path: str | os.PathLike, det) -> Path:
    """Rewrite calibration.json of an existing bundle atomically (recalibrate, set_threshold)."""
    path = Path(path)
    read_bundle_json(path)
    with atomic_path(path / "calibration.json") as tmp:
        dump_json(tmp, det.calibration_dict())
    save_calibration_figure(path / "calibration.png", det)
    return path


def save_calibration_figure(path: Path, det) -> Path | None:
    """calibration.png: the normal calibration scan scores, the calibrator's fitted density and the
    threshold, titled with the goodness of fit (KS statistic / p-value of a parametric fit, and the
    in-sample FPR). Written atomically; None when there are too few finite scores to draw."""
    from .report import save_score_distribution

    cal = det.calibrator_
    scores = np.asarray(cal.scores_, float)
    if np.isfinite(scores).sum() < 2:
        return None
    gof = getattr(cal, "gof_", {}) or {}
    parts = [f"{cal.method} calibrator, target FPR {det.target_fpr:g}, n={int(np.isfinite(scores).sum())}"]
    if "ks_statistic" in gof:
        parts.append(f"KS D={gof['ks_statistic']:.3f} (p={gof['ks_pvalue']:.3g})")
    if "in_sample_fpr" in gof:
        parts.append(f"in-sample FPR {gof['in_sample_fpr']:.3f}")

    def density(x):  # the empirical calibrator's density is a KDE, for the picture only
        return np.nan_to_num(np.asarray(cal.density(x), float), nan=0.0, posinf=0.0, neginf=0.0)

    with atomic_path(path) as tmp:
        save_score_distribution(tmp, scores, threshold=float(cal.threshold_), density=density,
                                title="; ".join(parts))
    return path
