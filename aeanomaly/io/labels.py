"""Labelled scans: reading ``labels.csv`` and pairing scans with their mask files.

One implementation for ``evaluate``, ``fit-head`` and the benchmarks:

* :func:`read_labels_csv` — rows ``scan,label[,mask]`` (``path`` / ``image`` and ``class`` are
  accepted as column names), labels given as class names or class values;
* :func:`pair_masks` / :func:`find_mask` — the mask of a scan in a folder: the same file name, else
  ``<stem>_mask.<ext>``, else ``<stem>.<ext>`` with any scan suffix;
* :func:`gather_labeled` — scans with labels and masks from normal / abnormal folders and / or a
  labels file (scans labelled normal are never paired with a file of the masks folder).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple, Sequence

from ..errors import ConfigError
from .validate import scan_stem

#: The two classes of anomaly detection: class index 0 (value 0) normal, 1 (value 1) abnormal.
BINARY_CLASSES = ("normal", "abnormal")


class LabeledScan(NamedTuple):
    """One labelled scan: its path, its class index and its mask (None when it has none)."""

    scan: Path
    label: int
    mask: Path | None = None


def _resolve(name: str, bases: list[Path]) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return base / p
    return bases[-1] / p


def read_labels_csv(path: str | os.PathLike, classes: Sequence[str] = BINARY_CLASSES,
                    values: Sequence[Sequence[int]] | None = None,
                    images: str | os.PathLike | None = None) -> list[LabeledScan]:
    """The rows of a labels file with columns ``scan,label[,mask]``.

    Parameters
    ----------
    path : path
        The CSV file. Column ``scan`` (or ``path`` / ``image``), ``label`` (or ``class``), optional
        ``mask``.
    classes : sequence of str
        Class names; a label is a class name (case-insensitive) or one of the class's values.
    values : sequence of sequence of int, optional
        Label values of each class (default: class ``k`` has value ``k``, so ``0``/``1`` are
        normal/abnormal for the default classes).
    images : path, optional
        Folder that relative scan and mask paths are looked up in first; then the CSV's folder.

    Returns
    -------
    list of LabeledScan
        ``label`` is the index of the class in ``classes``.

    Raises
    ------
    ConfigError
        Unreadable file, a row without scan or label, an unknown label, no rows.
    """
    path = Path(path)
    names = [str(c) for c in classes]
    values = [[k] for k in range(len(names))] if values is None else [list(v) for v in values]
    value_of = {int(v): i for i, vs in enumerate(values) for v in vs}
    by_name = {n: i for i, n in enumerate(names)}
    by_lower = {n.lower(): i for i, n in enumerate(names)}
    bases = ([Path(images)] if images else []) + [path.parent]
    rows: list[LabeledScan] = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                scan = (r.get("scan") or r.get("path") or r.get("image") or "").strip()
                lab = (r.get("label") or r.get("class") or "").strip()
                if not scan or not lab:
                    raise ConfigError(f"row {dict(r)} lacks a scan or label column value", path)
                if lab in by_name:
                    k = by_name[lab]
                elif lab.lower() in by_lower:
                    k = by_lower[lab.lower()]
                elif lab.lstrip("-").isdigit() and int(lab) in value_of:
                    k = value_of[int(lab)]
                else:
                    shown = "/".join(names + [str(v) for vs in values for v in vs])
                    raise ConfigError(f"label {lab!r} of {scan} is none of the classes ({shown})", path)
                mask = (r.get("mask") or "").strip()
                rows.append(LabeledScan(_resolve(scan, bases), k, _resolve(mask, bases) if mask else None))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read labels: {getattr(err, 'strerror', None) or err}", path) from None
    if not rows:
        raise ConfigError("no rows in the labels file", path)
    return rows


def pair_masks(scans: Sequence[str | os.PathLike], masks_dir: str | os.PathLike) -> list[Path | None]:
    """The mask of each scan in ``masks_dir`` (None where there is none).

    A mask has the scan's file name, else the name ``<stem>_mask`` with any scan suffix, else the
    scan's stem with another suffix (``scan_stem`` strips ``.nii.gz``, ``.mhd`` ... ). Only the
    folder's own entries are looked at, in sorted order (the first match wins).

    Raises
    ------
    ConfigError
        ``masks_dir`` is not a folder.
    """
    md = Path(masks_dir)
    if not md.is_dir():
        raise ConfigError("masks folder does not exist", md)
    by_name: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    for m in sorted(md.iterdir()):
        if m.name.startswith("."):
            continue
        by_name.setdefault(m.name, m)
        by_stem.setdefault(scan_stem(m), m)
    out = []
    for p in scans:
        p = Path(p)
        stem = scan_stem(p)
        out.append(by_name.get(p.name) or by_stem.get(f"{stem}_mask") or by_stem.get(stem))
    return out


def find_mask(scan: str | os.PathLike, masks_dir: str | os.PathLike) -> Path | None:
    """The mask of one scan in ``masks_dir`` (see :func:`pair_masks`)."""
    return pair_masks([scan], masks_dir)[0]


def gather_labeled(normal_dirs: Sequence[str | os.PathLike] = (), abnormal_dirs: Sequence[str | os.PathLike] = (),
                   labels_csv: str | os.PathLike | None = None,
                   masks_dir: str | os.PathLike | None = None) -> list[LabeledScan]:
    """Scans with their labels (1 = abnormal) and masks, from folders, a labels file and / or masks.

    Scans labelled normal (folders of ``normal_dirs``, ``normal`` rows of the labels file) are never
    paired with a file of ``masks_dir``: normal and abnormal folders often reuse file names. A mask
    named in the labels file itself is always used.

    Raises
    ------
    ConfigError
        No labelled scan, a bad labels file, a missing masks folder.
    ScanError, EmptyInputError
        A folder that does not exist or holds no scan.
    """
    from .discover import find_scans

    items: list[LabeledScan] = []
    if labels_csv:
        items += read_labels_csv(labels_csv)
    for d in normal_dirs:
        items += [LabeledScan(p, 0, None) for p in find_scans(d)]
    for d in abnormal_dirs:
        items += [LabeledScan(p, 1, None) for p in find_scans(d)]
    if masks_dir:
        want = [i for i, it in enumerate(items) if it.mask is None and it.label == 1]
        paired = pair_masks([items[i].scan for i in want], masks_dir)
        for i, m in zip(want, paired):
            items[i] = LabeledScan(items[i].scan, items[i].label, m)
    if not items:
        raise ConfigError("no labelled scans: give --normal-dir/--abnormal-dir folders or --labels")
    return items
