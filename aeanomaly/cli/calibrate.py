"""``aeanomaly calibrate``: refit a bundle's calibration on other normal scans, without retraining."""

from __future__ import annotations

import os

import click

from ..config import BFLOAT16_HARDWARE
from .common import (check_bundle, check_open_unit, check_writable, collect_scans, deprecated_alias, handles_errors,
                     method_in_force, quiet_warnings, say, start_tensorflow)


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--normal-dir", multiple=True, type=click.Path(), help="Normal scans to calibrate on.")
@click.option("--from-feedback", "feedback_db", type=click.Path(), default=None,
              help="Review database (aeanomaly serve): add the scans reviewers confirmed normal to the bundle's "
                   "calibration scans and refit; logged in calibration.json.")
@click.option("--method", type=click.Choice(["auto", "empirical", "gamma", "lognormal", "kde"]), default=None)
@click.option("--target-fpr", type=float, default=None, help="Target false-positive rate (default: the bundle's).")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default=None,
              help=f"Recalibrate in this inference arithmetic (scoring then uses it); bfloat16 needs "
                   f"{BFLOAT16_HARDWARE}.")
@click.option("--strict", is_flag=True)
@click.option("--quiet", is_flag=True)
@deprecated_alias("--fpr", "--target-fpr", "target_fpr", type=float)
@handles_errors
def calibrate(bundle, normal_dir, feedback_db, method, target_fpr, precision, strict, quiet):
    """Refit the calibrator on other normal scans without retraining (updates the bundle atomically).

    \b
    aeanomaly calibrate BUNDLE --normal-dir DIR          # calibrate on these normal scans
    aeanomaly calibrate BUNDLE --from-feedback DB        # the bundle's calibration scans + reviewed normals
    """
    from ..errors import ConfigError

    quiet_warnings(quiet)
    check_open_unit("--target-fpr", target_fpr)
    if not normal_dir and not feedback_db:
        raise ConfigError("give --normal-dir DIR (normal scans to calibrate on) or --from-feedback DB")
    check_bundle(bundle)
    check_writable(f"{bundle}/calibration.json")
    paths = collect_scans(normal_dir) if normal_dir else []
    note = "recalibrate"
    if feedback_db:
        from ..review.feedback import confirmed_normal_reviews

        reviews = confirmed_normal_reviews(feedback_db)
        if not reviews:
            raise ConfigError("no scan in the review database is confirmed normal (verdict 'normal'); nothing to add",
                              feedback_db)
        info = check_bundle(bundle)
        trained = {str(p) for side in ("train", "val") for p in info.get("split", {}).get(side, [])}
        reviews = [r for r in reviews if r["path"] not in trained]  # never calibrate on training scans
        if not normal_dir:
            from ..bundle import read_calibration_json

            paths = [p for p in read_calibration_json(bundle).get("calibration_scans", []) if os.path.exists(p)]
        paths = list(dict.fromkeys([*map(str, paths), *(r["path"] for r in reviews)]))
        note = (f"recalibrate from feedback {feedback_db}: {len(reviews)} confirmed normal scans added "
                f"(reviews {', '.join(str(r['review_id']) for r in reviews)})")

    start_tensorflow()
    from ..bundle import update_calibration
    from ..detector import AnomalyDetector

    det = AnomalyDetector.load(bundle)
    det.recalibrate(paths, method=method, target_fpr=target_fpr, precision=precision, strict=strict,
                    verbose=0 if quiet else 1, note=note)
    update_calibration(bundle, det)
    cal = det.calibrator_
    say(quiet, f"recalibrated {bundle} on {len(det.calibration_sources_)} scans: {method_in_force(cal)} "
               f"threshold {cal.threshold_:.5g} at target FPR {det.target_fpr_}")
