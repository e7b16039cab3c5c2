"""``aeanomaly feedback export|stats``: the reviewers' verdicts as a dataset, and how far the tool
agrees with them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError
from .common import check_bundle, check_output_dir, handles_errors, say


@click.group()
def feedback():
    """Use the review database of `aeanomaly serve`."""


def _db_path(db: str) -> Path:
    p = Path(db)
    if not p.is_file():
        raise ConfigError("feedback database does not exist", p)
    return p


@feedback.command("export")
@click.option("--db", "db", required=True, type=click.Path(dir_okay=False), help="Feedback database.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to create.")
@click.option("--copy-scans", is_flag=True, help="Copy the scans into OUT/scans (a self-contained dataset).")
@click.option("--point-radius-mm", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Radius of the disc drawn at each missed finding in the masks.")
@click.option("--overwrite", is_flag=True, help="Replace an existing folder.")
@click.option("--quiet", is_flag=True)
@handles_errors
def export(db, out, copy_scans, point_radius_mm, overwrite, quiet):
    """Write the reviewed scans as labels.csv + masks + points.csv + notes, which `evaluate --labels`
    and `fit-head --labels` read as they are."""
    from ..review.feedback import export_dataset

    path = _db_path(db)
    check_output_dir(out, overwrite, "export folder")
    summary = export_dataset(path, out, overwrite=True, copy_scans=copy_scans, point_radius_mm=point_radius_mm)
    say(quiet, f"exported {summary['n_normal']} normal and {summary['n_abnormal']} abnormal scans "
               f"({summary['n_masks']} masks) to {out}/labels.csv")
    for item in summary["left_out"]:
        click.echo(f"warning: left out {item['scan']}: {item['reason']}", err=True)


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


@feedback.command("stats")
@click.option("--db", "db", required=True, type=click.Path(dir_okay=False), help="Feedback database.")
@click.option("--bundle", type=click.Path(), help="Judge the tool's labels at this bundle's current threshold.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@handles_errors
def stats(db, bundle, as_json):
    """Agreement between the tool and the reviewers: sensitivity, precision, false lesions per scan."""
    from ..review.feedback import agreement_stats

    path = _db_path(db)
    threshold = None
    if bundle:
        from ..bundle import read_calibration_json

        check_bundle(bundle)
        threshold = read_calibration_json(bundle)["scan"].get("threshold")
        if threshold is None:
            threshold = float("inf")
    s = agreement_stats(path, threshold=threshold)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    where = f"bundle threshold {threshold:.5g}" if threshold is not None else "labels as scored"
    click.echo(f"reviewed scans       {s['n_reviewed']} of {s['n_scans']} scored ({s['n_conflict']} conflicting)")
    click.echo(f"scan level ({where}): tp {s['tp']}  fp {s['fp']}  fn {s['fn']}  tn {s['tn']}")
    click.echo(f"  sensitivity {_fmt(s['sensitivity'])}  specificity {_fmt(s['specificity'])}  "
               f"precision {_fmt(s['precision'])}")
    click.echo(f"lesions: {s['lesions_confirmed']} confirmed, {s['lesions_false']} false, "
               f"{s['lesions_unreviewed']} unreviewed, {s['missed_findings']} missed")
    click.echo(f"  lesion sensitivity {_fmt(s['lesion_sensitivity'])}  lesion precision "
               f"{_fmt(s['lesion_precision'])}  false lesions per scan {_fmt(s['false_lesions_per_scan'])}")
