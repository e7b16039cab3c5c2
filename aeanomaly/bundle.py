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

Writes go to a temporary directory beside the target, renamed into place when complete. This module
is all the persistence of a fitted detector: the bundle, its supervised head and its operating point.
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
from .calibrate import Calibration
from .errors import BundleError, ConfigError
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
            save_calibration_figure(tmp / "calibration.png", det.calibration_)
            history = det.history_ or {}
            write_history_csv(tmp / "history.csv", history)
            if history.get("loss"):
                save_training_curves(tmp / "training.png", history)
            if det.head_ is not None:
                save_head_files(tmp, det.head_)
            if getattr(det, "seg_model_", None) is not None:
                save_segmenter_files(tmp, det.seg_model_, det.seg_history_ or {})
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
        "training": det.train_state_,
        "split": det.split_,
        "skipped": det.skipped_,
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


def read_calibration_json(path: str | os.PathLike) -> dict:
    """calibration.json of a bundle directory."""
    try:
        return json.loads((Path(path) / "calibration.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"calibration.json is unreadable: {err}", path) from None


def load_keras_model(file: Path, where: Path):
    """A ``.keras`` archive loaded with ``safe_mode=True``; BundleError naming the file when it is
    missing, truncated or corrupt."""
    import keras

    from .model import autoencoder  # noqa: F401  (registers custom objects)

    if not file.is_file():
        raise BundleError(f"{file.name} is missing", where)
    try:
        return keras.models.load_model(file, safe_mode=True, compile=False)
    except Exception as err:  # keras raises many types for a broken archive
        import zipfile

        if not zipfile.is_zipfile(file):
            raise BundleError(f"{file.name} is corrupt or truncated (not a .keras zip archive)", where) from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{file.name} cannot be loaded (corrupt or written by an incompatible version): {first}",
                          where) from None


def load_parts(path: str | os.PathLike) -> dict:
    """Everything a bundle holds, checked: ``info`` (bundle.json), ``model`` (Keras), ``calibration``
    (:class:`~aeanomaly.calibrate.Calibration`), ``history``, ``head`` (or None).

    The detector turns these into its fitted state (:meth:`aeanomaly.detector.AnomalyDetector.load`).
    """
    path = Path(path)
    info = read_bundle_json(path)
    params = info.get("params", {})
    try:
        calibration = Calibration.from_dict(read_calibration_json(path), params.get("pixel_quantile", 0.999))
    except ConfigError as err:
        raise BundleError(f"calibration.json: {err.reason}", path) from None
    model = load_keras_model(path / "model.keras", path)
    head = load_head(path) if (path / "head.json").is_file() else None
    segmenter = (None, None)
    if params.get("model_kind", "dae") != "dae" or (path / "seg.json").is_file():
        segmenter = load_segmenter(path)
    return {"info": info, "model": model, "calibration": calibration,
            "history": read_history_csv(path / "history.csv"), "head": head, "segmenter": segmenter}


# ---------------------------------------------------------------------------------------------
# The self-supervised segmenter (model_kind "dae+seg")
# ---------------------------------------------------------------------------------------------

#: The segmenter's files inside a bundle.
SEG_FILES = ("seg.keras", "seg.json")
SEG_FORMAT_VERSION = 1


def save_segmenter_files(directory: str | os.PathLike, model, history: dict) -> list[Path]:
    """Write ``seg.keras`` and ``seg.json`` (format version, training history) into ``directory``."""
    d = Path(directory)
    with atomic_path(d / "seg.keras") as tmp:
        model.save(tmp)
    with atomic_path(d / "seg.json") as tmp:
        dump_json(Path(tmp), {"format_version": SEG_FORMAT_VERSION, "model_kind": "dae+seg", "history": history})
    return [d / f for f in SEG_FILES]


def load_segmenter(bundle_dir: str | os.PathLike):
    """(Keras model, training history) of the bundle's segmenter (safe_mode; stock layers only)."""
    d = Path(bundle_dir)
    missing = [f for f in SEG_FILES if not (d / f).is_file()]
    if missing:
        raise BundleError(f"a dae+seg bundle without its segmenter: missing {', '.join(missing)}", d)
    try:
        info = json.loads((d / "seg.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"seg.json is unreadable: {err}", d) from None
    if info.get("format_version") != SEG_FORMAT_VERSION:
        raise BundleError(f"unknown seg.json format_version {info.get('format_version')!r}", d)
    return load_keras_model(d / "seg.keras", d), info.get("history", {})


# ---------------------------------------------------------------------------------------------
# The supervised head
# ---------------------------------------------------------------------------------------------

#: The head's files inside a bundle.
HEAD_FILES = ("head.keras", "head.json")


def save_head_files(directory: str | os.PathLike, head) -> list[Path]:
    """Write ``head.keras`` and ``head.json`` of a fitted head into ``directory``, each atomically."""
    d = Path(directory)
    info = json.dumps(head.to_dict(), indent=2, allow_nan=False, default=_json_default)
    with atomic_path(d / "head.keras") as tmp:
        head.model_.save(tmp)
    with atomic_path(d / "head.json") as tmp:
        Path(tmp).write_text(info, encoding="utf-8")
    return [d / f for f in HEAD_FILES]


def load_head(bundle_dir: str | os.PathLike):
    """The head stored in a bundle directory (``head.json`` + ``head.keras``, safe_mode)."""
    from .model.heads import SupervisedHead

    d = Path(bundle_dir)
    missing = [f for f in HEAD_FILES if not (d / f).is_file()]
    if missing:
        raise BundleError(f"incomplete head: missing {', '.join(missing)}", d)
    try:
        info = json.loads((d / "head.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"head.json is unreadable: {err}", d) from None
    model = load_keras_model(d / "head.keras", d)
    try:
        return SupervisedHead.from_dict(info, model)
    except ConfigError as err:
        raise BundleError(f"head.json: {err.reason}", d) from None


def save_head(path: str | os.PathLike, head, calibration: dict | None = None) -> Path:
    """Swap in a copy of the bundle at ``path`` holding ``head`` (replacing any head it had) and, when
    given, a new calibration.json (a U-Net head changes where residuals count). Atomic: copied beside
    the bundle, changed, then renamed into place."""
    path = Path(path)
    read_bundle_json(path)
    with atomic_dir(path, overwrite=True) as tmp:
        shutil.copytree(path, tmp, symlinks=True, dirs_exist_ok=True)
        for f in HEAD_FILES:
            (tmp / f).unlink(missing_ok=True)
        save_head_files(tmp, head)
        if calibration is not None:
            (tmp / "calibration.json").unlink()
            dump_json(tmp / "calibration.json", calibration)
            save_calibration_figure(tmp / "calibration.png", Calibration.from_dict(calibration))
    return path


# ---------------------------------------------------------------------------------------------
# The operating point
# ---------------------------------------------------------------------------------------------


def update_calibration(path: str | os.PathLike, det) -> Path:
    """Rewrite calibration.json of an existing bundle atomically from a fitted detector (after
    ``recalibrate`` or ``set_threshold``)."""
    return write_calibration(path, det.calibration_)


def write_calibration(path: str | os.PathLike, calibration: Calibration) -> Path:
    """Rewrite calibration.json (and calibration.png) of an existing bundle atomically."""
    path = Path(path)
    read_bundle_json(path)
    with atomic_path(path / "calibration.json") as tmp:
        dump_json(tmp, calibration.to_dict())
    save_calibration_figure(path / "calibration.png", calibration)
    return path


def save_operating_point(bundle: str | os.PathLike, *, threshold: float | None = None,
                         target_fpr: float | None = None, reason: str, evidence=None, detector=None) -> dict:
    """Set the bundle's scan-level operating point and record when and why in its calibration.json.

    Exactly one of ``threshold`` (a scan-score threshold) or ``target_fpr`` (refit the calibrator on
    the bundle's normal calibration scores at that rate) is applied; calibration.json is rewritten
    atomically. ``aeanomaly score BUNDLE …`` then labels a scan abnormal exactly when
    ``scan_score > threshold``.

    Parameters
    ----------
    bundle : path
        The bundle directory to update.
    threshold, target_fpr : float
        The operating point (give exactly one).
    reason : str
        Why this point was chosen (required, non-empty); stored in the log entry.
    evidence : aeanomaly.tuning.OperatingPoint, optional
        Its confusion matrix and rates on a labelled set, stored as ``evidence`` in the log entry.
    detector : AnomalyDetector, optional
        A loaded detector of this bundle, updated in place (through its ``set_threshold``) too.

    Returns
    -------
    dict
        The new calibration log entry: ``when`` (UTC ISO 8601), ``what`` (``"set_threshold"``),
        ``reason``, ``target_fpr``, ``threshold`` and, if given, ``evidence``.
    """
    import warnings

    if not str(reason).strip():
        raise ConfigError("say why this operating point was chosen: reason must not be empty")
    if (threshold is None) == (target_fpr is None):
        raise ConfigError("give exactly one of threshold or target_fpr")
    if threshold is not None and not (np.isfinite(threshold) or threshold == np.inf):
        raise ConfigError(f"threshold must be a finite number (or +inf to flag nothing), got {threshold!r}")
    path = Path(bundle)
    read_bundle_json(path)
    reason = str(reason).strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if detector is not None:
            detector.set_threshold(threshold=None if threshold is None else float(threshold), target_fpr=target_fpr,
                                   reason=reason)
            calibration = detector.calibration_
        else:
            current = Calibration.from_dict(read_calibration_json(path))
            calibration = (current.with_threshold(float(threshold), reason) if threshold is not None
                           else current.with_target_fpr(float(target_fpr), reason))
    entry = calibration.log[-1]
    if evidence is not None:
        entry["evidence"] = evidence.to_dict()
    write_calibration(path, calibration)
    return dict(entry)


def save_calibration_figure(path: Path, calibration: Calibration) -> Path | None:
    """calibration.png: the normal calibration scan scores, the calibrator's fitted density and the
    threshold, titled with the goodness of fit (KS statistic / p-value of a parametric fit, and the
    in-sample FPR). Written atomically; None when there are too few finite scores to draw."""
    from .report import save_score_distribution

    cal = calibration.scan
    scores = np.asarray(cal.scores_, float)
    if np.isfinite(scores).sum() < 2:
        return None
    gof = getattr(cal, "gof_", {}) or {}
    parts = [f"{cal.method_} calibrator, target FPR {calibration.target_fpr:g}, n={int(np.isfinite(scores).sum())}"]
    if "ks_statistic" in gof:
        parts.append(f"KS D={gof['ks_statistic']:.3f} (p={gof['ks_pvalue']:.3g})")
    if "in_sample_fpr" in gof:
        parts.append(f"in-sample FPR {gof['in_sample_fpr']:.3f}")

    def density(x):  # the empirical calibrator's density is a KDE, for the picture only
        return np.nan_to_num(np.asarray(cal.density(x), float), nan=0.0, posinf=0.0, neginf=0.0)

    return save_score_distribution(path, scores, threshold=float(cal.threshold_), density=density,
                                   title="; ".join(parts))
