"""``aeanomaly calibrate``: refit a bundle's calibration on other normal scans, or with other scoring
settings (slice normalisation, heatmap σ, blob gates, fusion weight), without retraining."""

from __future__ import annotations

import os

import click

from ..config import BFLOAT16_HARDWARE
from .common import (SCORING_OPTIONS, check_bundle, check_open_unit, check_seg_weight, check_writable, collect_scans,
                     deprecated_alias, handles_errors, method_in_force, quiet_warnings, say, scoring_options,
                     start_tensorflow)


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
@scoring_options(fit=False)
@click.option("--strict", is_flag=True)
@click.option("--quiet", is_flag=True)
@deprecated_alias("--fpr", "--target-fpr", "target_fpr", type=float)
@handles_errors
def calibrate(bundle, normal_dir, feedback_db, method, target_fpr, precision, strict, quiet, **scoring):
    """Refit the calibrator without retraining, on other normal scans or with other scoring settings
    (updates the bundle atomically). A scoring setting changed (--slice-norm, --sigma-mm, --blob-gate,
    ...) changes every score, so it is recalibrated, on the bundle's own calibration scans unless
    --normal-dir or --from-feedback says otherwise, and bundle.json is rewritten with calibration.json.

    \b
    aeanomaly calibrate BUNDLE --normal-dir DIR          # calibrate on these normal scans
    aeanomaly calibrate BUNDLE --from-feedback DB        # the bundle's calibration scans + reviewed normals
    aeanomaly calibrate BUNDLE --slice-norm area         # other scoring settings, on the bundle's calibration scans
    """
    from ..errors import ConfigError

    quiet_warnings(quiet)
    check_open_unit("--target-fpr", target_fpr)
    info = check_bundle(bundle)
    params = info.get("params", {})
    changes = {k: v for k, v in scoring.items() if v is not None and v != params.get(k)}
    check_seg_weight(scoring.get("seg_weight"), params.get("model_kind", "dae"))
    if changes:
        from ..scoring import ScoringParams  # numpy and scipy, no TensorFlow

        known = set(ScoringParams.names())
        ScoringParams(**{**{k: v for k, v in params.items() if k in known}, **changes}).validated()
    given = {k: v for k, v in scoring.items() if v is not None}
    if given and not changes and not normal_dir and not feedback_db:
        say(quiet, f"{bundle} already scores with {', '.join(f'{k} {v}' for k, v in given.items())}: nothing to "
                   "recalibrate")
        return
    if not normal_dir and not feedback_db and not changes:
        raise ConfigError("give --normal-dir DIR (normal scans to calibrate on), --from-feedback DB, or a scoring "
                          f"setting to change ({', '.join(SCORING_OPTIONS)})")
    # a change of scoring settings rewrites bundle.json with calibration.json: the whole bundle, atomically
    check_writable(bundle if changes else f"{bundle}/calibration.json")
    paths = collect_scans(normal_dir) if normal_dir else []
    if not normal_dir and not feedback_db:
        paths = bundle_calibration_scans(bundle)
    note = "recalibrate"
    if feedback_db:
        from ..review.feedback import confirmed_normal_reviews

        reviews = confirmed_normal_reviews(feedback_db)
        if not reviews:
            raise ConfigError("no scan in the review database is confirmed normal (verdict 'normal'); nothing to add",
                              feedback_db)
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
    was = {k: getattr(det, k) for k in changes}
    if changes:
        note += " with " + ", ".join(f"{k} {was[k]} → {v}" for k, v in changes.items())
        det.set_params(**changes)
    det.recalibrate(paths, method=method, target_fpr=target_fpr, precision=precision, strict=strict,
                    verbose=0 if quiet else 1, note=note)
    if changes:
        det.save(bundle, overwrite=True)
    else:
        update_calibration(bundle, det)
    cal = det.calibrator_
    say(quiet, f"recalibrated {bundle} on {len(det.calibration_sources_)} scans"
               + "".join(f", {k} {was[k]} → {v}" for k, v in changes.items())
               + f": {method_in_force(cal)} threshold {cal.threshold_:.5g} at target FPR {det.target_fpr_}")


def bundle_calibration_scans(bundle) -> list[str]:
    """The scans the bundle was calibrated on (calibration.json), every one still on disk."""
    from ..bundle import read_calibration_json
    from ..errors import ConfigError

    paths = [str(p) for p in read_calibration_json(bundle).get("calibration_scans", [])]
    missing = [p for p in paths if not os.path.exists(p)]
    if not paths or missing:
        what = (f"{len(missing)} of its {len(paths)} calibration scans are gone (the first: {missing[0]})" if missing
                else "it lists no calibration scans")
        raise ConfigError(f"cannot recalibrate on the bundle's own calibration scans: {what}; give --normal-dir DIR",
                          bundle)
    return paths
