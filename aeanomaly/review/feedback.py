"""The loop back from reviews into the model: reviewer labels, an exported annotated dataset, the
scans confirmed normal (for recalibration and fine-tuning), and agreement statistics.

How a scan's reviewer label is decided (one scan = one content hash, across bundle versions):

* *evidence of abnormality* = a tool lesion whose latest verdict is ``confirm``, or a missed finding;
* latest scan verdict ``confirm`` → ``abnormal``;
* ``normal`` → ``normal``; with evidence of abnormality it is a ``conflict`` (left out, listed in the notes);
* ``reject`` (the tool's findings are false alarms) → ``normal``, or ``abnormal`` with evidence;
* no scan verdict: ``abnormal`` with evidence, else unreviewed.

Only scans whose latest verdict is ``normal`` (and no evidence) count as *confirmed normals*.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..io import scan_stem
from ..io.validate import scan_suffix
from .cache import read_labels
from .db import FeedbackDB, now_iso, open_db


def _groups(db: FeedbackDB, bundle_version: str | None = None) -> list[dict]:
    """One record per content hash: its rows, latest review, confirmed/rejected lesions, missed points,
    and the reviewer label."""
    rows = db.query("SELECT * FROM scans ORDER BY id")
    by_sha: dict[str, list[dict]] = {}
    for r in rows:
        by_sha.setdefault(r["sha256"], []).append(r)
    out = []
    for sha, scans in by_sha.items():
        ids = [s["id"] for s in scans]
        marks = ",".join("?" * len(ids))
        reviews = db.query(f"SELECT * FROM reviews WHERE scan_id IN ({marks}) ORDER BY created_at, id", tuple(ids))
        missed = db.query(f"SELECT * FROM missed_findings WHERE scan_id IN ({marks}) AND deleted_at IS NULL "
                          "ORDER BY id", tuple(ids))
        lesions = {s["id"]: db.lesions(s["id"]) for s in scans}
        confirmed = [(sid, l) for sid, ls in lesions.items() for l in ls if l["verdict"] == "confirm"]
        latest = reviews[-1] if reviews else None
        evidence = bool(confirmed or missed)
        verdict = latest["verdict"] if latest else None
        if verdict == "confirm":
            label = "abnormal"
        elif verdict == "normal":
            label = "conflict" if evidence else "normal"
        elif verdict == "reject":
            label = "abnormal" if evidence else "normal"
        else:
            label = "abnormal" if evidence else None
        scored = [s for s in scans if s["status"] == "done" and (bundle_version is None
                                                                  or s["bundle_version"] == bundle_version)]
        # the tool's result judged: the latest one the reviewers gave lesion verdicts on, else the latest
        judged = {sid for sid, ls in lesions.items() if any(l["verdict"] for l in ls)}
        tool_row = max(scored, key=lambda s: (s["id"] in judged, s["scored_at"] or "", s["id"])) if scored else None
        out.append({"sha256": sha, "rows": scans, "path": scans[-1]["path"], "name": scans[-1]["name"],
                    "review": latest, "reviews": reviews, "missed": missed, "lesions": lesions,
                    "confirmed": confirmed, "label": label, "tool_row": tool_row})
    return out


def reviewer_labels(db: FeedbackDB | str | os.PathLike) -> list[dict]:
    """Every scan with a reviewer label: ``sha256, path, name, label`` (``normal``, ``abnormal`` or
    ``conflict``), ``verdict``, ``reviewer``, ``reviewed_at``, ``n_missed``, ``n_confirmed_lesions``."""
    fdb = open_db(db)
    return [{"sha256": g["sha256"], "path": g["path"], "name": g["name"], "label": g["label"],
             "verdict": g["review"]["verdict"] if g["review"] else None,
             "reviewer": g["review"]["reviewer"] if g["review"] else None,
             "reviewed_at": g["review"]["created_at"] if g["review"] else None,
             "n_missed": len(g["missed"]), "n_confirmed_lesions": len(g["confirmed"])}
            for g in _groups(fdb) if g["label"] is not None]


def confirmed_normal_reviews(db: FeedbackDB | str | os.PathLike) -> list[dict]:
    """The reviews that make scans confirmed normals, for provenance logs: ``path, sha256, review_id,
    reviewer, reviewed_at, note``; one per scan whose file still exists, sorted by path."""
    fdb = open_db(db)
    recs = [{"path": str(g["path"]), "sha256": g["sha256"], "review_id": int(g["review"]["id"]),
             "reviewer": g["review"]["reviewer"], "reviewed_at": g["review"]["created_at"],
             "note": g["review"]["note"]}
            for g in _groups(fdb) if g["label"] == "normal" and g["review"]["verdict"] == "normal"
            and Path(g["path"]).exists()]
    return sorted(recs, key=lambda r: r["path"])


def confirmed_normals(db: FeedbackDB | str | os.PathLike) -> list[Path]:
    """Paths of the scans reviewers confirmed normal (latest verdict ``normal``, no confirmed lesion,
    no missed finding) whose files still exist, sorted; one per content hash.

    These are what ``calibrate --from-feedback`` adds to the calibration set and what fine-tuning adds
    to the normal training scans.
    """
    return [Path(r["path"]) for r in confirmed_normal_reviews(db)]


def _disc(mask: np.ndarray, z: int, y: float, x: float, radius_px: tuple[float, float]) -> None:
    """Set an elliptical disc on slice ``z`` of ``mask`` (in place; the mask is ours)."""
    ry, rx = max(radius_px[0], 1.0), max(radius_px[1], 1.0)
    ny, nx = mask.shape[1:]
    yy, xx = np.ogrid[:ny, :nx]
    mask[z] |= ((yy - y) / ry) ** 2 + ((xx - x) / rx) ** 2 <= 1.0


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def _unique_stem(name: str, used: set[str]) -> str:
    stem = scan_stem(name)
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem) or "scan"
    out, k = stem, 1
    while out in used:
        k += 1
        out = f"{stem}_{k}"
    used.add(out)
    return out


def export_dataset(db: FeedbackDB | str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False,
                   copy_scans: bool = False, point_radius_mm: float = 5.0) -> dict:
    """Write the reviewed scans as an annotated dataset that ``evaluate --labels`` and
    ``fit-head --labels`` read as they are.

    Layout of ``out_dir`` (written beside it, then renamed into place)::

        labels.csv           scan,label,mask,sha256,reviewer,reviewed_at  (paths relative to the CSV,
                             or absolute where the scan stays in place)
        masks/<stem>_mask.nii.gz   uint8 lesion mask in the scan's own geometry (abnormal scans with a
                             confirmed lesion or a missed finding): confirmed tool lesions, and a disc
                             of ``point_radius_mm`` around each missed finding on its slice
        points.csv           every missed finding (slice, y, x on the scan's internal grid, note, who, when)
        lesion_verdicts.csv  the latest verdict on each reviewed tool lesion
        notes.csv            every scan verdict with its note (the full history)
        scans/               copies of the scans (only with ``copy_scans``)
        export.json          counts, what was left out and why

    Parameters
    ----------
    db : FeedbackDB or path
    out_dir : path
    overwrite : bool
        Replace an existing ``out_dir``.
    copy_scans : bool
        Copy the scans into ``out_dir/scans`` (a self-contained dataset) instead of naming them in place.
    point_radius_mm : float
        In-plane radius of the disc drawn at each missed finding.

    Returns
    -------
    dict
        The content of export.json.

    Raises
    ------
    FeedbackError
        The database does not exist or is unusable.
    """
    from ..io import atomic_dir, load_scan, save_like_input

    fdb = open_db(db)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True / --overwrite)")
    groups = [g for g in _groups(fdb) if g["label"] is not None]
    summary: dict = {"created": now_iso(), "database": str(fdb.path), "schema_version": fdb.schema_version,
                     "n_normal": 0, "n_abnormal": 0, "n_masks": 0, "left_out": []}
    label_rows, point_rows, verdict_rows, note_rows = [], [], [], []
    used: set[str] = set()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "masks").mkdir()
        for g in groups:
            src = Path(g["path"])
            stem = _unique_stem(g["name"], used)
            for r in g["reviews"]:
                note_rows.append({"scan": g["name"], "sha256": g["sha256"], "verdict": r["verdict"],
                                  "reviewer": r["reviewer"], "created_at": r["created_at"], "note": r["note"]})
            for m in g["missed"]:
                point_rows.append({"scan": g["name"], "sha256": g["sha256"], "slice": m["slice"], "y": m["y"],
                                   "x": m["x"], "note": m["note"], "reviewer": m["reviewer"],
                                   "created_at": m["created_at"]})
            for ls in g["lesions"].values():
                for l in ls:
                    if l["verdict"]:
                        verdict_rows.append({"scan": g["name"], "sha256": g["sha256"], "lesion_id": l["lesion_id"],
                                             "verdict": l["verdict"], "reviewer": l["reviewer"],
                                             "created_at": l["reviewed_at"], "z": l["z"], "y": l["y"], "x": l["x"],
                                             "diameter_mm": l["diameter_mm"], "severity": l["severity"]})
            if g["label"] == "conflict":
                summary["left_out"].append({"scan": g["name"], "reason": "verdict normal but a lesion was confirmed "
                                                                         "or a missed finding marked"})
                continue
            if not src.exists():
                summary["left_out"].append({"scan": g["name"], "reason": f"scan file is gone: {src}"})
                continue
            if copy_scans:
                suffix = "" if src.is_dir() else scan_suffix(src) or src.suffix
                dest = tmp / "scans" / (stem + suffix)
                dest.parent.mkdir(exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dest)
                else:
                    shutil.copy2(src, dest)
                scan_ref = dest.relative_to(tmp).as_posix()
            else:
                scan_ref = str(src.resolve())
            mask_ref = ""
            if g["label"] == "abnormal" and (g["confirmed"] or g["missed"]):
                scan = load_scan(src)
                mask = np.zeros(scan.hu.shape, bool)
                for sid, l in g["confirmed"]:
                    row = next(r for r in g["rows"] if r["id"] == sid)
                    labels = read_labels(row["cache_dir"]) if row["cache_dir"] else None
                    if labels is not None and labels.shape == mask.shape and (labels == l["lesion_id"]).any():
                        mask |= labels == l["lesion_id"]
                    else:  # no cache: a disc of the lesion's diameter on its centre slice
                        r_mm = (l["diameter_mm"] or 2 * point_radius_mm) / 2
                        _disc(mask, int(np.clip(round(l["z"]), 0, mask.shape[0] - 1)), l["y"], l["x"],
                              (r_mm / scan.spacing[1], r_mm / scan.spacing[2]))
                for m in g["missed"]:
                    if 0 <= m["slice"] < mask.shape[0]:
                        _disc(mask, int(m["slice"]), m["y"], m["x"],
                              (point_radius_mm / scan.spacing[1], point_radius_mm / scan.spacing[2]))
                mask_ref = f"masks/{stem}_mask.nii.gz"
                save_like_input(tmp / mask_ref, mask.astype(np.uint8), scan)
                summary["n_masks"] += 1
            summary["n_" + g["label"]] += 1
            rv = g["review"]
            label_rows.append({"scan": scan_ref, "label": g["label"], "mask": mask_ref, "sha256": g["sha256"],
                               "reviewer": rv["reviewer"] if rv else "", "reviewed_at": rv["created_at"] if rv else ""})
        _write_csv(tmp / "labels.csv", ["scan", "label", "mask", "sha256", "reviewer", "reviewed_at"], label_rows)
        _write_csv(tmp / "points.csv", ["scan", "sha256", "slice", "y", "x", "note", "reviewer", "created_at"],
                   point_rows)
        _write_csv(tmp / "lesion_verdicts.csv", ["scan", "sha256", "lesion_id", "verdict", "reviewer", "created_at",
                                                 "z", "y", "x", "diameter_mm", "severity"], verdict_rows)
        _write_csv(tmp / "notes.csv", ["scan", "sha256", "verdict", "reviewer", "created_at", "note"], note_rows)
        (tmp / "export.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def agreement_stats(db: FeedbackDB | str | os.PathLike, threshold: float | None = None,
                    bundle_version: str | None = None) -> dict:
    """Agreement between the tool and the reviewers.

    Parameters
    ----------
    db : FeedbackDB or path
    threshold : float, optional
        Scan-score threshold to judge the tool's labels at (e.g. the bundle's current one); default:
        the label stored when each scan was scored.
    bundle_version : str, optional
        Use only results of this bundle version (default: each scan's latest result).

    Returns
    -------
    dict
        ``n_scans`` (scored), ``n_reviewed``, ``n_conflict``; scan level ``tp, fp, fn, tn,
        sensitivity, specificity, precision``; lesion level ``lesions_confirmed`` (tool lesions
        confirmed), ``lesions_false`` (rejected, or on a scan the reviewer called normal),
        ``lesions_unreviewed`` (on abnormal scans, no verdict), ``missed_findings``,
        ``lesion_sensitivity`` = confirmed / (confirmed + missed), ``lesion_precision`` = confirmed /
        (confirmed + false), ``false_lesions_per_scan`` = false / reviewed scans. Ratios are None when
        undefined. Lesions are those found at the pixel threshold in force when each scan was scored.
    """
    fdb = open_db(db)
    groups = [g for g in _groups(fdb, bundle_version) if g["tool_row"] is not None]
    c = dict(tp=0, fp=0, fn=0, tn=0, conflict=0, reviewed=0, conf=0, false=0, unrev=0, missed=0)
    for g in groups:
        if g["label"] is None:
            continue
        if g["label"] == "conflict":
            c["conflict"] += 1
            continue
        c["reviewed"] += 1
        row = g["tool_row"]
        if threshold is not None and row["scan_score"] is not None:
            tool_abn = float(row["scan_score"]) > float(threshold)
        else:
            tool_abn = row["label"] == "abnormal"
        truth_abn = g["label"] == "abnormal"
        c[{(True, True): "tp", (True, False): "fp", (False, True): "fn", (False, False): "tn"}[(tool_abn, truth_abn)]] += 1
        for l in g["lesions"][row["id"]]:
            if l["verdict"] == "confirm":
                c["conf"] += 1
            elif l["verdict"] == "reject" or not truth_abn:
                c["false"] += 1
            else:
                c["unrev"] += 1
        c["missed"] += len(g["missed"])
    return {
        "n_scans": len(groups), "n_reviewed": c["reviewed"], "n_conflict": c["conflict"], "threshold": threshold,
        "tp": c["tp"], "fp": c["fp"], "fn": c["fn"], "tn": c["tn"],
        "sensitivity": _ratio(c["tp"], c["tp"] + c["fn"]), "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
        "precision": _ratio(c["tp"], c["tp"] + c["fp"]),
        "lesions_confirmed": c["conf"], "lesions_false": c["false"], "lesions_unreviewed": c["unrev"],
        "missed_findings": c["missed"], "lesion_sensitivity": _ratio(c["conf"], c["conf"] + c["missed"]),
        "lesion_precision": _ratio(c["conf"], c["conf"] + c["false"]),
        "false_lesions_per_scan": _ratio(c["false"], c["reviewed"]),
    }
