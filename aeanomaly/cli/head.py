"""``aeanomaly fit-head``: train the optional supervised head on labelled scans and store it in a bundle.

The head sees the scans exactly as the bundle's autoencoder does (``AnomalyDetector.prepare``: same
window, model grid and channels). Scans are split into training and validation by scan, never by
slice. The bundle is rewritten atomically (``aeanomaly.bundle.save_head``).

A U-Net head changes where residuals count (its organ region replaces the body / lung region), so
when one is added or replaced the calibration is refitted on normal scans (``--calib-dir``, else the
bundle's own calibration scans) and calibration.json is swapped in with the head. A CNN head leaves
the autoencoder's scores alone; with validation scans of both classes its fusion is fitted.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import AeAnomalyError, BundleError, ConfigError, EmptyInputError, ScanError
from .common import (check_bundle, check_writable, collect_scans, deprecated_alias, handles_errors, quiet_warnings,
                     say, start_tensorflow, warn)


def parse_classes(text: str | None, kind: str) -> tuple[list[str], list[list[int]] | None]:
    """Class names and the label values of each, from ``--classes``.

    ``"1:liver,2:kidney,3:kidney"`` maps label values to names (a name may take several values);
    bare names ``"liver,spleen"`` take the values 1, 2, … (U-Net) or 0, 1, … (CNN). Default: U-Net one
    class ``region`` for every non-zero value (values None); CNN ``normal`` (0) and ``abnormal`` (1).
    """
    if text is None or not str(text).strip():
        return (["region"], None) if kind == "unet" else (["normal", "abnormal"], [[0], [1]])
    start = 1 if kind == "unet" else 0
    names: list[str] = []
    values: dict[str, list[int]] = {}
    seen: set[int] = set()
    for i, item in enumerate(p.strip() for p in str(text).split(",")):
        value_s, sep, name = item.rpartition(":") if ":" in item else ("", "", item)
        name = name.strip()
        try:
            value = int(value_s) if sep else start + i
        except ValueError:
            raise ConfigError(f"--classes entry {item!r} is not VALUE:NAME with an integer value") from None
        if not name or (kind == "unet" and value < 1) or value < 0:
            raise ConfigError(f"--classes entry {item!r}: names must be non-empty and values "
                              f"{'≥ 1 (0 is background)' if kind == 'unet' else '≥ 0'}")
        if value in seen:
            raise ConfigError(f"--classes gives label value {value} twice")
        seen.add(value)
        if name not in values:
            names.append(name)
        values.setdefault(name, []).append(value)
    if kind == "cnn" and len(names) < 2:
        raise ConfigError(f"--kind cnn needs at least 2 classes, got {names}")
    return names, [values[n] for n in names]


def gather_items(kind, images, masks, labels_csv, normal, abnormal, names, values):
    """(scan, class index or None, mask or None) of every labelled scan, and the number of U-Net
    scans without a mask."""
    from ..io import scan_stem
    from ..io.labels import pair_masks, read_labels_csv

    if kind == "unet":
        if labels_csv or normal or abnormal:
            raise ConfigError("--kind unet takes --images and --masks (not --labels, --normal-dir or --abnormal-dir)")
        if not images or not masks:
            raise ConfigError("--kind unet needs --images DIR and --masks DIR")
        masks = Path(masks)
        if not masks.is_dir():
            raise ConfigError("masks folder does not exist", masks)
        scans = [p for p in collect_scans([images]) if masks.resolve() not in p.resolve().parents]
        scans = [p for p in scans if not scan_stem(p).endswith("_mask")]
        paired = pair_masks(scans, masks)
        items = [(p, None, m) for p, m in zip(scans, paired) if m is not None]
        if not items:
            raise EmptyInputError(f"no masks found for the {len(scans)} scans of {images} "
                                  "(looked for the same file name or <stem>_mask.<ext>)", masks)
        return items, len(scans) - len(items)
    if labels_csv:
        if normal or abnormal:
            raise ConfigError("give either --labels or --normal-dir/--abnormal-dir folders, not both")
        items = [tuple(r) for r in read_labels_csv(labels_csv, names, values, images)]
    elif normal and abnormal:
        if len(names) != 2:
            raise ConfigError(f"--normal-dir/--abnormal-dir folders give two classes; use --labels for {names}")
        k_norm = names.index("normal") if "normal" in names else 0
        items = [(p, k_norm, None) for p in collect_scans(normal)]
        items += [(p, 1 - k_norm, None) for p in collect_scans(abnormal)]
    else:
        raise ConfigError("--kind cnn needs --labels labels.csv (scans in --images or beside the CSV) "
                          "or both --normal-dir DIR and --abnormal-dir DIR")
    if masks:
        paired = pair_masks([p for p, _, _ in items], masks)
        items = [(p, k, m if m is not None else pm) for (p, k, m), pm in zip(items, paired)]
    return items, 0


def _slices(det, path: Path, k, mask_path, kind, values, normal_k):
    """Kept model-grid slices of one scan and their labels (U-Net maps or CNN class ids)."""
    import numpy as np

    from ..hybrid import label_map_to_model_grid
    from ..io import load_label, load_scan
    from ..preprocess import mask_to_model_grid

    scan = load_scan(path)
    prep = det.prepare(scan)
    keep = prep.keep
    labels = load_label(mask_path, like=scan) if mask_path is not None else None
    if kind == "unet":
        return prep.x[keep], label_map_to_model_grid(labels, values, det.size)[keep]
    y = np.full(prep.x.shape[0], k, np.int16)
    if labels is not None:  # lesion mask: slices without lesion are normal
        lesion = mask_to_model_grid(labels > 0, det.size).reshape(len(y), -1).any(axis=1)
        y[~lesion] = normal_k
    return prep.x[keep], y[keep]


def _recalibrate(det, calib_dirs, kind: str, quiet: bool) -> tuple[dict | None, str]:
    """Refit the calibration with the region the new head gives (a U-Net head restricts residuals to
    its organ region, so the bundle's normal scores no longer apply). Calibration scans: ``calib_dirs``,
    else the bundle's own calibration scans where they still exist. Returns (calibration.json content or
    None when there is nothing to refit on, a note for the summary line)."""
    paths = collect_scans(calib_dirs) if calib_dirs else [
        Path(p) for p in det.calibration_sources_ if Path(p).exists()]
    if len(paths) < 2:
        warn("calibration NOT refitted for the new head (the bundle's calibration scans are gone); "
             "run `aeanomaly calibrate BUNDLE --normal-dir DIR`, or pass --calib-dir")
        return None, "calibration not refitted (see warning)"
    try:
        det.recalibrate(paths, strict=False, verbose=0 if quiet else 1, note=f"fit-head {kind}")
    except ScanError:
        raise ConfigError(f"the new {kind} head leaves no scorable region on any of the {len(paths)} normal "
                          "calibration scans; nothing written (train longer, or check the masks)") from None
    return det.calibration_dict(), f"calibration refitted on {len(det.calibration_sources_)} normal scans"


def _fusion(det, head, items, val_idx, per_scan, normal_k) -> str:
    import numpy as np

    ps, probs, ys = [], [], []
    for i in val_idx:
        try:
            p = det.score_scan(items[i][0]).p_value
        except AeAnomalyError:
            continue
        prob = head.scan_abnormal_proba(per_scan[i][0])
        if np.isfinite(p) and np.isfinite(prob):
            ps.append(p), probs.append(prob), ys.append(int(items[i][1] != normal_k))
    if len(set(ys)) < 2:
        return "fusion not fitted (needs validation scans of both normal and abnormal)"
    head.fit_fusion(ps, probs, ys)
    return f"fusion fitted on {len(ys)} validation scans"


@click.command("fit-head")
@click.argument("bundle", type=click.Path())
@click.option("--kind", type=click.Choice(["unet", "cnn"]), required=True,
              help="unet: organ/region segmentation; cnn: slice classifier.")
@click.option("--images", type=click.Path(), help="Folder of scans (unet; cnn with --labels).")
@click.option("--masks", type=click.Path(), help="Folder of label maps (same file name or <stem>_mask.<ext>).")
@click.option("--labels", "labels_csv", type=click.Path(), help="cnn: CSV with scan,label[,mask] columns.")
@click.option("--normal-dir", multiple=True, type=click.Path(), help="cnn: folder(s) of normal scans.")
@click.option("--abnormal-dir", multiple=True, type=click.Path(), help="cnn: folder(s) of abnormal scans.")
@click.option("--classes", default=None,
              help='Label values to names, e.g. "1:liver,2:kidney,3:spleen,4:pancreas" (others → background); '
                   "default: every non-zero value is one class 'region' (unet), normal/abnormal (cnn).")
@click.option("--depth", default=None, type=click.IntRange(1, 7), help="Poolings (default unet 3, cnn 4).")
@click.option("--base-filters", default=16, show_default=True, type=click.IntRange(1))
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--learning-rate", default=1e-3, show_default=True, type=float)
@click.option("--patience", default=8, show_default=True, type=click.IntRange(1))
@click.option("--val-fraction", default=0.2, show_default=True, type=float, help="Scans held out for validation.")
@click.option("--no-augment", is_flag=True, help="Disable rotation/flip/zoom/elastic augmentation.")
@click.option("--no-jit", is_flag=True, help="Disable XLA compilation (starts faster; for tiny runs).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--calib-dir", multiple=True, type=click.Path(),
              help="Normal scans to refit the calibration on when the region changes (a U-Net head is added "
                   "or replaced); default: the bundle's own calibration scans.")
@click.option("--overwrite", is_flag=True, help="Replace a head the bundle already holds.")
@click.option("--quiet", is_flag=True)
@deprecated_alias("--normal", "--normal-dir", "normal_dir", multiple=True, type=click.Path())
@deprecated_alias("--abnormal", "--abnormal-dir", "abnormal_dir", multiple=True, type=click.Path())
@handles_errors
def fit_head(bundle, kind, images, masks, labels_csv, normal_dir, abnormal_dir, classes, depth, base_filters, epochs,
             batch_size, learning_rate, patience, val_fraction, no_augment, no_jit, seed, calib_dir, overwrite, quiet):
    """Train a supervised head (U-Net or CNN) on labelled scans and add it to BUNDLE.

    \b
    aeanomaly fit-head BUNDLE --kind unet --images DIR --masks DIR --classes "1:liver,2:kidney"
    aeanomaly fit-head BUNDLE --kind cnn --images DIR --labels labels.csv
    aeanomaly fit-head BUNDLE --kind cnn --normal-dir DIR --abnormal-dir DIR
    """
    from ..bundle import HEAD_FILES

    quiet_warnings(quiet)
    bundle = Path(bundle)
    normal, abnormal = tuple(normal_dir), tuple(abnormal_dir)
    check_bundle(bundle)
    if any((bundle / f).exists() for f in HEAD_FILES) and not overwrite:
        raise BundleError("already holds a head (head.json); pass --overwrite to replace it", bundle)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    check_writable(bundle)
    names, values = parse_classes(classes, kind)
    normal_k = names.index("normal") if "normal" in names else 0
    items, n_unpaired = gather_items(kind, images, masks, labels_csv, normal, abnormal, names, values)
    for d in calib_dir:
        if not Path(d).exists():
            raise AeAnomalyError("does not exist", d)

    start_tensorflow()
    import numpy as np
    from tqdm.auto import tqdm

    from ..bundle import save_head
    from ..detector import AnomalyDetector
    from ..model.heads import SupervisedHead
    from ..splits import stratified_holdout

    det = AnomalyDetector.load(bundle)
    old_head = getattr(det, "head_", None)
    det.set_head(None)
    per_scan, kept, skipped = [], [], []
    for path, k, m in tqdm(items, desc="load", unit="scan", disable=quiet):
        try:
            per_scan.append(_slices(det, path, k, m, kind, values, normal_k))
            kept.append((path, k, m))
        except (AeAnomalyError, MemoryError) as err:
            skipped.append(str(err) if isinstance(err, AeAnomalyError) else f"{path}: out of memory")
            warn(f"skipped {skipped[-1]}")
    if not kept:
        raise EmptyInputError("no labelled scan could be read", images or labels_csv or (normal or abnormal)[0])
    if val_fraction > 0 and len(kept) < 2:
        raise ConfigError("validation needs at least 2 labelled scans; pass --val-fraction 0 to train on all")
    train_idx, val_idx = stratified_holdout([k or 0 for _, k, _ in kept], val_fraction, seed)

    def stack(idx):
        if not idx:
            return np.zeros((0, det.size, det.size, det.channels), np.float32), np.zeros(0, np.int16)
        return np.concatenate([per_scan[i][0] for i in idx]), np.concatenate([per_scan[i][1] for i in idx])

    x_tr, y_tr = stack(train_idx)
    x_va, y_va = stack(val_idx)
    if len(x_tr) == 0:
        raise ConfigError("the training scans have no slice with enough body to train on")
    if kind == "unet" and not y_tr.any():
        raise ConfigError(f"the masks hold none of the label values {values or 'non-zero'} on the training slices",
                          masks)
    head = SupervisedHead(
        kind=kind, classes=names, size=det.size, channels=det.channels, window=det.window_.to_spec(),
        label_values=values, depth=depth, base_filters=base_filters, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, patience=patience, augment=not no_augment,
        jit_compile=False if no_jit else "auto", seed=seed, verbose=0 if quiet else 2,
    )
    head.fit(x_tr, y_tr.astype(np.int64), val=(x_va, y_va.astype(np.int64)) if len(x_va) else None)
    note, calibration = "", None
    if kind == "unet" or getattr(old_head, "kind", None) == "unet":
        det.set_head(head if kind == "unet" else None)
        calibration, cal_note = _recalibrate(det, calib_dir, kind, quiet)
        note += "; " + cal_note
        det.set_head(None)
    if kind == "cnn" and val_idx:
        note += "; " + _fusion(det, head, kept, val_idx, per_scan, normal_k)
    head.train_info_ = {
        "images": images, "masks": masks, "labels": labels_csv, "normal": list(normal), "abnormal": list(abnormal),
        "train_scans": [str(kept[i][0]) for i in train_idx], "val_scans": [str(kept[i][0]) for i in val_idx],
        "skipped": skipped, "unpaired_scans": n_unpaired,
    }
    save_head(bundle, head, calibration)
    if kind == "unet":
        held = ", ".join(f"{c} {d:.3f}" for c, d in head.val_dice_.items() if d is not None) or "n/a"
        metric = f"held-out Dice {held}"
    else:
        metric = "held-out slice accuracy " + ("n/a" if head.val_accuracy_ is None else f"{head.val_accuracy_:.3f}")
    extra = f"; {n_unpaired} scans without a mask ignored" if n_unpaired else ""
    say(quiet, f"head {kind} ({', '.join(names)}) written to {bundle}: {metric} "
               f"({len(train_idx)} train / {len(val_idx)} validation scans, "
               f"{len(head.history_.get('loss', []))} epochs){note}{extra}; operating point target FPR "
               f"{det.target_fpr_}")
