"""Turn a dataset folder described by a manifest into normal/abnormal sets, split by patient.

Output (written beside ``out`` and renamed into place; the source is only read)::

    out/normal/<split>/<scan>       scans (or axial slices) without abnormality
    out/abnormal/<split>/<scan>     scans (or slices) with abnormality
    out/masks/<scan>_mask.<ext>     binary abnormality mask of each abnormal scan (same grid)
    out/labels.csv                  scan,label,patient,mask,split (paths relative to out)
    out/labels_<split>.csv          the same rows, one file per split
    out/prepare.json                manifest id, source root, seed, counts, skipped inputs

``<split>`` is ``train`` or ``val``; no patient is on both sides. Scans are copied byte for byte
(unit ``scan``); unit ``slice`` writes every axial slice of a volume as a one-slice NIfTI with
its own affine, labelled on its own (the way to get normal slices from tumour patients).
``aeanomaly fit --normal-dir out/normal/train`` and ``aeanomaly evaluate BUNDLE --labels
out/labels_val.csv`` read the result directly.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import AeAnomalyError, ConfigError, DataManifestError, EmptyInputError
from ..io.metaimage import metaimage_data_file
from ..splits import split_patients
from .manifests import READABLE_FORMATS, Item, discover, find_csv, load_manifest, read_csv_keys, split_name

COLUMNS = ["scan", "label", "patient", "mask", "split"]
_MASK_EXT = {"nifti": ".nii.gz", "dicom": ".nii.gz", "metaimage": ".nii.gz", "tiff": ".tif", "png": ".png",
             "npy": ".npy"}


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote."""

    out: Path
    labels_csv: Path
    counts: dict  # {"normal": {"train": n, "val": n}, "abnormal": {...}} in written files
    patients: dict  # {"train": n, "val": n}
    skipped: list = field(default_factory=list)  # "<image>: <reason>"

    def summary(self) -> str:
        parts = []
        for split in ("train", "val"):
            if self.patients.get(split):
                parts.append(f"{split}: {self.counts['normal'].get(split, 0)} normal, "
                             f"{self.counts['abnormal'].get(split, 0)} abnormal ({self.patients[split]} patients)")
        return "; ".join(parts)


def output_names(rels: list[str]) -> list[str]:
    """Unique file-system-safe names: the file stem, prefixed by parent folders only where needed."""
    parts = [[split_name(r)[0] if i == len(r.rstrip("/").split("/")) - 1 else c
              for i, c in enumerate(r.rstrip("/").split("/"))] for r in rels]
    depth = [1] * len(rels)

    def name(i):
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts[i][-depth[i]:])).strip("._") or "scan"

    while True:
        names = [name(i) for i in range(len(rels))]
        dup = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in dup and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def _selector(rule: dict):
    if rule.get("any_nonzero"):
        return lambda lab: np.asarray(lab) != 0
    wanted = np.asarray(rule.get("abnormal_labels", []))
    return lambda lab: np.isin(lab, wanted)


def _native_label(path: Path, fmt: str):
    """Label data in the file's own grid, and its NIfTI image (None for other formats)."""
    if fmt == "nifti":
        import nibabel as nib

        from ..io.validate import reading

        with reading(path, "NIfTI"):
            img = nib.load(str(path))
            return np.asanyarray(img.dataobj), img
    from ..io import load_label

    return load_label(path), None


def _check_request(m: dict, unit: str, assume_normal: bool, val_fraction: float) -> None:
    rule = m["normal_abnormal"]
    if rule["rule"] == "external":
        raise DataManifestError(f"{m['id']}: normal/abnormal cannot be derived from the files: {rule['description']}")
    if rule["rule"] == "unlabelled" and not assume_normal:
        raise DataManifestError(f"{m['id']} has no abnormality labels; pass assume_normal=True (--assume-normal) "
                                f"to use every scan as normal. {rule.get('caveat', '')}".strip())
    if m["format"] not in READABLE_FORMATS:
        raise DataManifestError(f"{m['id']}: aeanomaly.io cannot read {m['format']} files; convert the scans to NIfTI "
                                "first (e.g. with SimpleITK)")
    if unit not in ("scan", "slice"):
        raise ConfigError(f"unit must be 'scan' or 'slice', got {unit!r}")
    if unit not in rule.get("units", ["scan", "slice"]):
        raise ConfigError(f"{m['id']}: rule {rule['rule']} supports unit(s) {', '.join(rule['units'])}, not {unit!r}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val-fraction must be in [0, 1), got {val_fraction}")


def _check_out(root: Path, out: Path, overwrite: bool) -> None:
    r, o = root.resolve(), out.resolve()
    if o == r or r in o.parents or o in r.parents:
        raise ConfigError(f"output folder must be outside the dataset folder {root} (and not contain it)", out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError("output folder exists and is not empty; pass --overwrite to replace it", out)


def prepare(manifest, root, out, seed: int = 0, val_fraction: float = 0.0, overwrite: bool = False, *,
            unit: str = "scan", layout: str | None = None, masks: bool = True, assume_normal: bool = False,
            progress: bool = False) -> PrepareResult:
    """Write the normal/abnormal sets of a dataset folder, split by patient (see the module doc).

    Parameters
    ----------
    manifest : dict, str or PathLike
        Manifest, id or manifest file.
    root : path
        Dataset folder (only read).
    out : path
        Folder to create (refused when it exists and is not empty, unless ``overwrite``).
    seed : int
        Seed of the patient split.
    val_fraction : float
        Fraction of patients held out as ``val`` (stratified by abnormal/normal patients).
    overwrite : bool
        Replace an existing ``out`` once the new one is complete.
    unit : {"scan", "slice"}
        Label whole scans (copied unchanged) or every axial slice (one-slice NIfTI files).
    layout : str, optional
        Force one of the manifest's layouts.
    masks : bool
        Write ``masks/<scan>_mask.<ext>`` (uint8; 1, or 255 for PNG/TIFF) for abnormal scans.
    assume_normal : bool
        Needed for manifests whose rule is ``unlabelled``: every scan is taken as normal.

    Returns
    -------
    PrepareResult

    Raises
    ------
    DataManifestError
        The rule cannot label the files (``external``, ``unlabelled`` without ``assume_normal``),
        the format is unreadable, the annotations file is missing.
    ConfigError
        Bad unit / fraction, ``out`` exists or overlaps the dataset.
    EmptyInputError
        No usable image.
    """
    from tqdm.auto import tqdm

    from ..io.writers import atomic_dir

    m = load_manifest(manifest)
    root, out = Path(root), Path(out)
    _check_request(m, unit, assume_normal, val_fraction)
    disc = discover(m, root, layout)
    _check_out(root, out, overwrite)
    if not disc.items:
        raise EmptyInputError(f"no images of {m['id']} found (layouts: {', '.join(x['name'] for x in m['layouts'])})", root)
    rule = m["normal_abnormal"]
    keys: set[str] = set()
    if rule["rule"] == "annotations_csv":
        path = find_csv(m, root)
        if path is None:
            raise DataManifestError(f"annotations file missing (looked for {', '.join(rule['csv'])})", root)
        keys = set(read_csv_keys(m, path))
    usable, skipped, abnormal = [], [], {}
    for it in disc.items:
        if it.patient is None:
            skipped.append(f"{it.image}: no patient id")
        elif it.label_required and it.label is None:
            skipped.append(f"{it.image}: label {it.expected_label} is missing")
        else:
            try:
                abnormal[it.image] = _is_abnormal(m, root, it, keys)
                usable.append(it)
            except AeAnomalyError as e:
                skipped.append(f"{it.image}: {e.reason}")
    if not usable:
        raise EmptyInputError(f"no usable images of {m['id']} ({len(skipped)} skipped: {skipped[0]})", root)
    has_abn: dict[str, bool] = {}
    for it in usable:
        has_abn[it.patient] = has_abn.get(it.patient, False) or abnormal[it.image]
    side = split_patients(has_abn, val_fraction, seed)
    names = output_names([it.image for it in usable])
    rows: list[dict] = []
    with atomic_dir(out, overwrite=True) as tmp:
        for it, name in tqdm(list(zip(usable, names)), desc=f"prepare {m['id']}", unit="scan", disable=not progress):
            written: list[Path] = []
            try:
                rows += _write_item(m, root, tmp, it, name, side[it.patient], unit, masks, abnormal[it.image], written)
            except AeAnomalyError as e:
                for p in written:
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                skipped.append(f"{it.image}: {e.reason}")
        if not rows:
            raise EmptyInputError(f"nothing written for {m['id']} ({len(skipped)} skipped: {skipped[0]})", root)
        counts = {lab: {s: sum(r["label"] == lab and r["split"] == s for r in rows) for s in ("train", "val")}
                  for lab in ("normal", "abnormal")}
        patients = {s: len({r["patient"] for r in rows if r["split"] == s}) for s in ("train", "val")}
        _write_csv(tmp / "labels.csv", rows)
        for s in ("train", "val"):
            if patients[s]:
                _write_csv(tmp / f"labels_{s}.csv", [r for r in rows if r["split"] == s])
        info = {"manifest": m["id"], "manifest_name": m["name"], "source_root": str(root.resolve()),
                "layout": disc.layout, "unit": unit, "seed": seed, "val_fraction": val_fraction, "masks": masks,
                "rule": rule["rule"], "rule_description": rule["description"], "caveat": rule.get("caveat", ""),
                "assume_normal": assume_normal, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "aeanomaly_version": __version__, "counts": counts, "patients": patients, "skipped": skipped}
        (tmp / "prepare.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return PrepareResult(out, out / "labels.csv", counts, patients, skipped)


def _is_abnormal(m: dict, root: Path, it: Item, keys: set[str]) -> bool:
    rule = m["normal_abnormal"]
    if rule["rule"] == "annotations_csv":
        return it.stem in keys
    if rule["rule"] != "label_values" or it.label is None:
        return False
    lab, _ = _native_label(root / it.label, m["format"])
    return bool(_selector(rule)(lab).any())


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _row(tmp: Path, scan: Path, label: str, patient: str, mask: Path | None, split: str) -> dict:
    return {"scan": scan.relative_to(tmp).as_posix(), "label": label, "patient": patient,
            "mask": mask.relative_to(tmp).as_posix() if mask else "", "split": split}


def _write_item(m, root: Path, tmp: Path, it: Item, name: str, split: str, unit: str, masks: bool,
                abnormal: bool, written: list) -> list[dict]:
    src = root / it.image
    label = "abnormal" if abnormal else "normal"
    if unit == "scan" or m["dimensionality"] == "2d":
        dst = tmp / label / split / (name + split_name(it.image)[1])
        dst.parent.mkdir(parents=True, exist_ok=True)
        written.append(dst)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
            data = metaimage_data_file(src)
            if data is not None:  # a .mhd header names its voxel file: bring it along, same name
                written.append(dst.parent / data.name)
                shutil.copyfile(data, dst.parent / data.name)
        mask = None
        if abnormal and masks and it.label is not None:
            mask = tmp / "masks" / f"{name}_mask{_MASK_EXT[m['format']]}"
            written.append(mask)
            _write_scan_mask(m, root / it.label, mask)
        return [_row(tmp, dst, label, it.patient, mask, split)]
    return _write_slices(m, root, tmp, it, name, split, masks, written)


def _write_scan_mask(m: dict, label_path: Path, dst: Path) -> None:
    """Binary abnormality mask of one label file, in the label file's own grid and format."""
    lab, img = _native_label(label_path, m["format"])
    sel = _selector(m["normal_abnormal"])(lab)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if img is not None:
        import nibabel as nib

        out = nib.Nifti1Image(sel.astype(np.uint8), img.affine)
        out.header.set_xyzt_units("mm")
        nib.save(out, str(dst))
    elif dst.suffix == ".npy":
        np.save(dst, sel.astype(np.uint8), allow_pickle=False)
    elif dst.suffix == ".tif":
        import tifffile

        tifffile.imwrite(dst, (sel[0] * 255).astype(np.uint8))
    else:
        import imageio.v3 as iio

        iio.imwrite(dst, (sel[0] * 255).astype(np.uint8))


def _write_slices(m, root: Path, tmp: Path, it: Item, name: str, split: str, masks: bool, written: list) -> list[dict]:
    """Every axial slice of a volume as a one-slice NIfTI (HU, its own affine), labelled on its own."""
    from ..io import load_label, load_scan
    from ..io.writers import save_nifti

    scan = load_scan(root / it.image)
    sel = None
    if m["normal_abnormal"]["rule"] == "label_values" and it.label is not None:
        sel = _selector(m["normal_abnormal"])(load_label(root / it.label, like=scan))
    hu = scan.hu
    if scan.is_hu and np.array_equal(hu, np.rint(hu)) and hu.min() >= -32768 and hu.max() <= 32767:
        hu = hu.astype(np.int16)
    rows = []
    for k in range(scan.n_slices):
        affine = np.array(scan.affine, dtype=float)
        affine[:3, 3] = (scan.affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        bad = sel is not None and bool(sel[k].any())
        label = "abnormal" if bad else "normal"
        dst = tmp / label / split / f"{name}_z{k:04d}.nii.gz"
        written.append(dst)
        save_nifti(dst, hu[k:k + 1], affine)
        mask = None
        if bad and masks:
            mask = tmp / "masks" / f"{name}_z{k:04d}_mask.nii.gz"
            written.append(mask)
            save_nifti(mask, sel[k:k + 1].astype(np.uint8), affine)
        rows.append(_row(tmp, dst, label, it.patient, mask, split))
    return rows
