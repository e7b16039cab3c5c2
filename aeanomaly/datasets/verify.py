"""Check a folder against a dataset manifest: counts, names, pairing, checksums and (``deep``) pixel data.

:func:`verify` returns a :class:`VerifyReport` listing what is missing or wrong; it never modifies the
folder and never downloads anything. The manifests themselves are read by
:mod:`aeanomaly.datasets.manifests`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AeAnomalyError, DataManifestError
from .manifests import (
    SHOW_PATHS, READABLE_FORMATS, Item, discover, expected_id_set, find_csv, load_manifest, read_csv_keys,
)


def _file_hash(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`; ``ok`` is True when nothing is missing or wrong."""

    manifest: str
    name: str
    root: str
    layout: str | None
    counts: dict = field(default_factory=dict)  # what -> (found, expected or None)
    missing: list = field(default_factory=list)
    missing_ids: list = field(default_factory=list)
    unpaired_labels: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    shape_problems: list = field(default_factory=list)
    checksum_problems: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    info: list = field(default_factory=list)
    subset: bool = False

    @property
    def count_problems(self) -> list[str]:
        out = []
        for what, (found, expected) in self.counts.items():
            if expected is None or found == expected or (self.subset and found < expected):
                continue
            out.append(f"{what}: found {found}, expected {expected}")
        return out

    @property
    def ok(self) -> bool:
        return not (self.count_problems or self.missing or self.unpaired_labels or self.unreadable
                    or self.shape_problems or self.checksum_problems or self.problems
                    or (self.missing_ids and not self.subset))

    def lines(self) -> list[str]:
        """A human report: the counts table, each kind of problem with the paths, the verdict."""
        out = [f"{self.name} [{self.manifest}] in {self.root}",
               f"layout: {self.layout or 'none matched'}" + ("  (subset allowed)" if self.subset else "")]
        for what, (found, expected) in self.counts.items():
            if expected is None:
                state = ""
            elif found == expected:
                state = "ok"
            elif self.subset and found < expected:
                state = f"subset ({found} of {expected})"
            else:
                state = f"MISSING {expected - found}" if found < expected else f"{found - expected} MORE than published"
            exp = "-" if expected is None else str(expected)
            out.append(f"  {what:<12} found {found:>6}   expected {exp:>6}   {state}".rstrip())
        if self.missing_ids:
            ids = self.missing_ids
            shown = ", ".join(map(str, ids[:5 * SHOW_PATHS])) + (f" ... and {len(ids) - 5 * SHOW_PATHS} more" if len(ids) > 5 * SHOW_PATHS else "")
            out += [f"absent case ids{' (subset)' if self.subset else ''} ({len(ids)}):", f"  {shown}"]
        for title, items in (("missing files", self.missing), ("unpaired labels (no image)", self.unpaired_labels),
                             ("unreadable files", self.unreadable), ("shape problems", self.shape_problems),
                             ("checksum problems", self.checksum_problems), ("other problems", self.problems)):
            if items:
                out.append(f"{title} ({len(items)}):")
                out += [f"  {p}" for p in items[:SHOW_PATHS]]
                if len(items) > SHOW_PATHS:
                    out.append(f"  ... and {len(items) - SHOW_PATHS} more")
        out += [f"note: {s}" for s in self.info]
        n = len(self.count_problems) + sum(len(x) for x in (self.missing, self.unpaired_labels, self.unreadable,
                                                            self.shape_problems, self.checksum_problems,
                                                            self.problems))
        n += 1 if self.missing_ids and not self.subset else 0
        out.append("result: OK" if self.ok else f"result: FAILED ({n} problem{'s' if n != 1 else ''})")
        return out


def verify(manifest, root: str | os.PathLike, *, layout: str | None = None, subset: bool = False,
           deep: bool = False, checksums: bool = False, progress: bool = False) -> VerifyReport:
    """Check a dataset folder against a manifest.

    Parameters
    ----------
    manifest : dict, str or PathLike
        A manifest, its id, or a manifest file.
    root : path
        The dataset folder (never modified).
    layout : str, optional
        Force one of the manifest's layouts (default: the one that finds the most images).
    subset : bool
        Accept fewer files than published (a partial copy): counts below the published ones
        and absent case ids are reported but are not failures.
    deep : bool
        Also read every image and label (aeanomaly.io): unreadable files, label/image shape
        mismatches, in-plane size against ``image_shape``, label values outside the label map.
    checksums : bool
        Hash the files the manifest lists with published checksums (when present).

    Returns
    -------
    VerifyReport
    """
    m = load_manifest(manifest)
    root = Path(root)
    disc = discover(m, root, layout)
    rep = VerifyReport(m["id"], m["name"], str(root), disc.layout, subset=subset)
    exp = m.get("expected", {})
    items = disc.items
    if not items:
        tried = "; ".join(f"{lay['name']}: {', '.join(lay['images'])}" for lay in m["layouts"])
        rep.problems.append(f"no images found (layouts tried: {tried})")
    rep.counts["images"] = (len(items), exp.get("images"))
    if any("labels" in lay for lay in m["layouts"]):
        rep.counts["labels"] = (len(disc.label_files), exp.get("labels"))
        rep.counts["pairs"] = (sum(it.label is not None for it in items), exp.get("pairs"))
    patients = {it.patient for it in items if it.patient is not None}
    rep.counts["patients"] = (len(patients), exp.get("patients"))
    rep.missing += [f"{it.expected_label} (label of {it.image})" for it in items if it.label_required and it.label is None]
    rep.missing += [f"{c} (companion file)" for c in disc.missing_companions]
    rep.missing += [f"{f} (required file)" for f in disc.missing_files]
    rep.unpaired_labels = list(disc.unpaired_labels)
    rep.problems += [f"{it.image}: no patient id (pattern {m['patient_id']['regex']!r})" for it in items if it.patient is None]
    rep.unreadable += [f"{p}: empty file" for p in [it.image for it in items] + [it.label for it in items if it.label]
                       if (root / p).is_file() and (root / p).stat().st_size == 0]
    wanted = expected_id_set(m)
    if wanted and items:
        group = m["expected_ids"]["group"]
        have = {int(it.groups[group]) for it in items if (it.groups.get(group) or "").isdigit()}
        rep.missing_ids = sorted(wanted - have)
        extra = sorted(have - wanted)
        if extra:
            rep.problems.append(f"case ids outside the published ranges: {', '.join(map(str, extra[:SHOW_PATHS]))}")
    _check_rule(m, root, items, rep)
    if checksums:
        _check_files(m, root, rep)
    if deep:
        _deep(m, root, items, rep, progress)
    if m["normal_abnormal"].get("caveat"):
        rep.info.append(m["normal_abnormal"]["caveat"])
    if not subset and any(e is not None and 0 < f < e for f, e in rep.counts.values()):
        rep.info.append("fewer files than published: for a partial copy, verify with subset=True (--subset)")
    return rep


def _check_rule(m: dict, root: Path, items: list[Item], rep: VerifyReport) -> None:
    rule, exp = m["normal_abnormal"], m.get("expected", {})
    if rule["rule"] != "annotations_csv":
        return
    path = find_csv(m, root)
    if path is None:
        rep.missing.append(f"{' or '.join(rule['csv'])} (annotations file)")
        return
    try:
        keys = read_csv_keys(m, path)
    except DataManifestError as e:
        rep.problems.append(str(e))
        return
    rep.counts["annotations"] = (len(keys), exp.get("annotations"))
    stems = {it.stem for it in items}
    listed = set(keys)
    rep.counts["abnormal"] = (len(stems & listed), exp.get("abnormal"))
    if listed - stems:
        rep.info.append(f"{len(listed - stems)} annotated scan(s) of {path.name} are not in the folder")


def _check_files(m: dict, root: Path, rep: VerifyReport) -> None:
    for f in m.get("files", []):
        cands = [root / f["path"]] + ([root.parent / f["path"]] if f.get("kind") == "archive" else [])
        path = next((c for c in cands if c.is_file()), None)
        if path is None:
            rep.info.append(f"{f['path']}: not present, checksum not checked")
            continue
        if "size_bytes" in f and path.stat().st_size != f["size_bytes"]:
            rep.checksum_problems.append(f"{path}: {path.stat().st_size} bytes, published {f['size_bytes']}")
        for algo in ("md5", "sha256"):
            if algo in f:
                got = _file_hash(path, algo)
                if got != f[algo]:
                    rep.checksum_problems.append(f"{path}: {algo} {got}, published {f[algo]}")
                else:
                    rep.info.append(f"{f['path']}: {algo} ok")


def _deep(m: dict, root: Path, items: list[Item], rep: VerifyReport, progress: bool) -> None:
    from tqdm.auto import tqdm

    from ..io import load_label, load_scan

    if m["format"] not in READABLE_FORMATS:
        rep.info.append(f"deep check skipped: aeanomaly.io cannot read {m['format']} files")
        return
    shape = m.get("image_shape", {})
    known = {int(k) for k in m.get("label_map", {})}
    for it in tqdm(items, desc="verify", unit="image", disable=not progress):
        try:
            scan = load_scan(root / it.image)
        except AeAnomalyError as e:
            rep.unreadable.append(f"{it.image}: {e.reason}")
            continue
        z, y, x = scan.shape
        if m["dimensionality"] == "2d" and z != 1:
            rep.shape_problems.append(f"{it.image}: {z} slices, a 2-D slice expected")
        if (shape.get("y", y), shape.get("x", x)) != (y, x):
            rep.shape_problems.append(f"{it.image}: {y}×{x} pixels, expected {shape.get('y', y)}×{shape.get('x', x)}")
        if it.label is None:
            continue
        try:
            lab = load_label(root / it.label)
        except AeAnomalyError as e:
            rep.unreadable.append(f"{it.label}: {e.reason}")
            continue
        if lab.shape != scan.hu.shape:
            rep.shape_problems.append(f"{it.label}: shape {lab.shape} (z, y, x) differs from {it.image} {scan.shape}")
        elif known:
            odd = sorted(set(np.unique(lab).tolist()) - known)
            if odd:
                rep.problems.append(f"{it.label}: label values {odd[:SHOW_PATHS]} are not in the label map")
