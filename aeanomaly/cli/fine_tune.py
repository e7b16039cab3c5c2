"""``aeanomaly fine-tune``: continue training a bundle's autoencoder with more normal scans — the scans
reviewers confirmed normal in ``aeanomaly serve`` (``--from-feedback``) and/or a folder — then
recalibrate on the bundle's own calibration scans. The bundle is rewritten atomically, recording which
reviews went in."""

from __future__ import annotations

import click

from .common import (check_bundle, check_writable, collect_scans, handles_errors, quiet_warnings, say,
                     start_tensorflow, warn)


@click.command("fine-tune")
@click.argument("bundle", type=click.Path())
@click.option("--from-feedback", "feedback_db", type=click.Path(), default=None,
              help="Review database: add the scans reviewers confirmed normal.")
@click.option("--normal-dir", multiple=True, type=click.Path(), help="More normal scans to train on.")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1))
@click.option("--learning-rate", type=float, default=None, help="Default: a tenth of the bundle's.")
@click.option("--strict", is_flag=True, help="Stop at an unreadable scan instead of skipping it.")
@click.option("--quiet", is_flag=True)
@handles_errors
def fine_tune(bundle, feedback_db, normal_dir, epochs, learning_rate, strict, quiet):
    """Fine-tune BUNDLE's autoencoder on more normal scans and recalibrate it.

    \b
    aeanomaly fine-tune BUNDLE --from-feedback review.sqlite
    aeanomaly fine-tune BUNDLE --normal-dir MORE_NORMALS --epochs 5
    """
    from ..errors import ConfigError

    quiet_warnings(quiet)
    if not feedback_db and not normal_dir:
        raise ConfigError("give --from-feedback DB (scans reviewers confirmed normal) and/or --normal-dir DIR")
    if learning_rate is not None and not learning_rate > 0:
        raise ConfigError(f"--learning-rate must be > 0, got {learning_rate}")
    info = check_bundle(bundle)
    check_writable(bundle)
    paths = [str(p) for p in collect_scans(normal_dir)] if normal_dir else []
    note = "fine-tune"
    if feedback_db:
        from ..review.feedback import confirmed_normal_reviews

        calib = {str(p) for p in info.get("split", {}).get("calib", [])}
        reviews = [r for r in confirmed_normal_reviews(feedback_db) if r["path"] not in calib]
        if not reviews:
            raise ConfigError("no scan in the review database is confirmed normal (verdict 'normal') outside the "
                              "bundle's calibration scans; nothing to fine-tune on", feedback_db)
        paths += [r["path"] for r in reviews if r["path"] not in paths]
        note = (f"fine-tune from feedback {feedback_db}: reviews "
                f"{', '.join(str(r['review_id']) for r in reviews)} ({len(reviews)} confirmed normal scans)")

    start_tensorflow()
    from ..detector import AnomalyDetector

    det = AnomalyDetector.load(bundle)
    det.fine_tune(paths, epochs=epochs, learning_rate=learning_rate, strict=strict, verbose=0 if quiet else 1,
                  note=note)
    for s in det.train_state_["fine_tuned"][-1]["skipped"]:
        warn(f"skipped {s['error']}")
    det.save(bundle, overwrite=True)
    cal = det.calibrator_
    say(quiet, f"fine-tuned {bundle} on {len(paths)} more normal scans ({det.train_state_['fine_tuned'][-1]['epochs']} "
               f"epochs) and recalibrated on {len(det.calibration_sources_)} scans: threshold {cal.threshold_:.5g} "
               f"at target FPR {det.target_fpr_}")
