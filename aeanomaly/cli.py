"""Command line: thin click commands that parse, call the detector, print and set the exit code.

Exit codes: 0 ok; 1 only where a command documents it (``score --fail-on-anomaly``, ``data verify``);
2 bad input or usage (one line on stderr naming the file and the reason).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .errors import AeAnomalyError, ConfigError, EmptyInputError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def handles_errors(fn):
    """Map the toolkit's errors to one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AeAnomalyError as err:
            _fail(str(err))

    return wrapper


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message)


def _quiet_warnings(quiet: bool):
    if quiet:
        warnings.simplefilter("ignore")
    else:
        warnings.showwarning = lambda msg, *a, **k: click.echo(f"warning: {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aeanomaly")
def main() -> None:
    """Unsupervised anomaly detection in CT with convolutional autoencoders.

    \b
    aeanomaly make-phantoms --out DATA --normal 40 --abnormal 10
    aeanomaly fit --normal-dir DATA/normal --out BUNDLE
    aeanomaly score BUNDLE SCANS... --out RESULTS --report
    """


@main.command("make-phantoms")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to create.")
@click.option("--normal", "n_normal", default=20, show_default=True, type=click.IntRange(0))
@click.option("--abnormal", "n_abnormal", default=10, show_default=True, type=click.IntRange(0))
@click.option("--region", type=click.Choice(["chest", "abdomen"]), default="chest", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--slices", default=24, show_default=True, type=click.IntRange(1), help="Axial slices per volume.")
@click.option("--matrix", default=128, show_default=True, type=click.IntRange(32), help="In-plane pixels.")
@click.option("--lesion-mm", "lesion_mm", nargs=2, type=float, default=(5.0, 20.0), show_default=True,
              metavar="MIN MAX", help="Range of lesion diameters in mm.")
@click.option("--lesions-per-scan", "per_scan", nargs=2, type=int, default=(1, 3), show_default=True,
              metavar="MIN MAX", help="Range of lesions per abnormal scan.")
@click.option("--kinds", default=None, metavar="K1,K2", help="Lesion kinds to use (default: those that suit the organ).")
@click.option("--overwrite", is_flag=True, help="Replace an existing folder.")
@click.option("--quiet", is_flag=True)
@handles_errors
def make_phantoms(out, n_normal, n_abnormal, region, seed, slices, matrix, lesion_mm, per_scan, kinds, overwrite, quiet):
    """Write synthetic CT phantoms (NIfTI in HU), lesion masks and labels.csv."""
    from .datasets.synthetic import write_phantom_set

    if n_normal + n_abnormal == 0:
        raise ConfigError("nothing to write: --normal and --abnormal are both 0")
    spacing_xy = 350.0 / matrix
    labels = write_phantom_set(
        out, n_normal, n_abnormal, region=region, seed=seed, shape=(slices, matrix, matrix),
        spacing=(5.0, spacing_xy, spacing_xy), lesions_per_scan=per_scan, size_mm=lesion_mm,
        kinds=[k.strip() for k in kinds.split(",") if k.strip()] if kinds else None, overwrite=overwrite,
    )
    _say(quiet, f"wrote {n_normal} normal and {n_abnormal} abnormal {region} phantoms; labels in {labels}")


def _collect_scans(inputs) -> list[Path]:
    from .io import find_scans

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise AeAnomalyError("does not exist", p)
        paths.extend(find_scans(p) if p.is_dir() else [p])
    if not paths:
        raise EmptyInputError("no scan given")
    return paths


def parse_augment(spec: str | None) -> bool | dict:
    """``--augment 'flip=0,rotate_deg=15'`` → ``{"flip": 0.0, "rotate_deg": 15.0}`` (True when None)."""
    if spec is None:
        return True
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, eq, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            eq = ""
        if not eq:
            raise ConfigError(f"--augment: expected KEY=NUMBER, got {part!r}")
    return out


@main.command()
@click.option("--normal-dir", required=True, multiple=True, type=click.Path(), help="Folder(s) of normal scans.")
@click.option("--out", "out", required=True, type=click.Path(), help="Bundle directory to write.")
@click.option("--region", type=click.Choice(["lung", "chest", "abdomen", "liver"]), default="lung", show_default=True,
              help="Sets the default window.")
@click.option("--window", default=None, help="Window preset or 'W,L' in HU (overrides --region).")
@click.option("--size", default=128, show_default=True, type=click.IntRange(32, 512), help="Model grid in pixels.")
@click.option("--channels", default=1, show_default=True, type=int, help="Slices per input (odd; >1 is 2.5-D).")
@click.option("--model", "model_kind", type=click.Choice(["dae", "ae"]), default="dae", show_default=True,
              help="dae: coarse-noise denoising AE with skips; ae: bottleneck AE of the seed papers.")
@click.option("--depth", default=4, show_default=True, type=click.IntRange(1, 7))
@click.option("--base-filters", default=16, show_default=True, type=click.IntRange(1))
@click.option("--latent", default=64, show_default=True, type=click.IntRange(1), help="Latent channels/units.")
@click.option("--latent-kind", type=click.Choice(["spatial", "dense"]), default="spatial", show_default=True)
@click.option("--loss", type=click.Choice(["mae", "mse", "mae_ssim"]), default="mae", show_default=True)
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--learning-rate", default=1e-3, show_default=True, type=float)
@click.option("--patience", default=8, show_default=True, type=click.IntRange(1))
@click.option("--no-augment", is_flag=True, help="Disable augmentation of training slices.")
@click.option("--augment", "augment_spec", default=None, metavar="K=V,...",
              help="Augmentation settings, e.g. 'flip=0,rotate_deg=15,scale=0.1,shift=0.05,gain=0.05,offset=0.02'.")
@click.option("--val-fraction", default=0.15, show_default=True, type=float)
@click.option("--calib-fraction", default=0.3, show_default=True, type=float)
@click.option("--target-fpr", default=0.05, show_default=True, type=float)
@click.option("--calib-method", type=click.Choice(["auto", "empirical", "gamma", "lognormal", "kde"]), default="auto",
              show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Inference arithmetic for calibration and scoring (training is float32).")
@click.option("--resume", is_flag=True, help="Continue an interrupted fit from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@click.option("--strict", is_flag=True, help="Stop at an unreadable scan instead of skipping it.")
@click.option("--quiet", is_flag=True)
@handles_errors
def fit(normal_dir, out, region, window, size, channels, model_kind, depth, base_filters, latent, latent_kind, loss,
        epochs, batch_size, learning_rate, patience, no_augment, augment_spec, val_fraction, calib_fraction, target_fpr,
        calib_method, seed, precision, resume, overwrite, strict, quiet):
    """Train the autoencoder on normal scans, calibrate on held-out normals, write a bundle."""
    from .detector import AnomalyDetector
    from .errors import BundleError
    from .preprocess import REGION_WINDOWS

    _quiet_warnings(quiet)
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError("already exists; pass --overwrite to replace it", out)
    if not 0 < target_fpr < 1:
        raise ConfigError(f"--target-fpr must be in (0, 1), got {target_fpr}")
    paths = _collect_scans(normal_dir)
    det = AnomalyDetector(
        window=window or REGION_WINDOWS[region], size=size, channels=channels, depth=depth, base_filters=base_filters,
        latent=latent_kind, latent_dim=latent, skip=model_kind == "dae", noise_std=0.2 if model_kind == "dae" else 0.0,
        loss=loss, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience,
        augment=False if no_augment else parse_augment(augment_spec), val_fraction=val_fraction, calib_fraction=calib_fraction, target_fpr=target_fpr,
        calib_method=calib_method, seed=seed, precision=precision,
    )
    work = out.with_name(out.name + ".partial")
    if work.exists() and not resume:
        shutil.rmtree(work)
    _say(quiet, f"fitting on {len(paths)} normal scans (window {det.window_.to_spec()}, {size} px)")
    try:
        det.fit(paths, work_dir=work, resume=resume, strict=strict, verbose=0 if quiet else 1)
    except KeyboardInterrupt:
        click.echo(f"interrupted: resume with the same command and --resume (state in {work})", err=True)
        sys.exit(130)
    except AeAnomalyError as err:
        shutil.rmtree(work, ignore_errors=True)  # bad input: leave nothing half-written
        if err.path is None:  # a problem of the whole set (too few scans ...): name the folder(s)
            raise type(err)(err.reason, ", ".join(normal_dir)) from None
        raise
    if det.train_state_.get("resumed_from"):
        _say(quiet, f"resumed from epoch {det.train_state_['resumed_from']}")
    det.save(out, overwrite=overwrite)
    shutil.rmtree(work, ignore_errors=True)
    for s in det.skipped_:
        click.echo(f"warning: skipped {s['error']}", err=True)
    cal = det.calibrator_
    _say(quiet, f"bundle written to {out}: {det.train_state_['epoch']} epochs, "
                f"{len(det.calibration_sources_)} calibration scans, {cal.method} threshold {cal.threshold_:.5g} "
                f"at target FPR {det.target_fpr}")


@main.command()
@click.argument("bundle", type=click.Path())
@handles_errors
def info(bundle):
    """Print what a bundle holds."""
    from .bundle import read_bundle_json
    import json

    meta = read_bundle_json(bundle)
    calib = json.loads((Path(bundle) / "calibration.json").read_text())
    inp, tr = meta["input"], meta.get("training", {})
    p = meta["params"]
    click.echo(f"bundle        {bundle}")
    click.echo(f"format        {meta['format_version']} (aeanomaly {meta['aeanomaly_version']}, created {meta['created']})")
    click.echo(f"input         window {inp['window']}, {inp['size']} px, {inp['channels']} channel(s)")
    click.echo(f"model         {'denoising AE with skips' if p['skip'] else 'bottleneck AE'}, depth {p['depth']}, "
               f"base filters {p['base_filters']}, latent {p['latent']} {p['latent_dim']}")
    click.echo(f"training      {tr.get('epoch')} epochs, best val loss {tr.get('best')}, "
               f"{len(meta.get('split', {}).get('train', []))} train / {len(meta.get('split', {}).get('val', []))} val scans")
    sc = calib["scan"]
    click.echo(f"calibration   {sc['method']} on {len(calib.get('calibration_scans', []))} normal scans, "
               f"target FPR {calib['target_fpr']}, threshold {sc['threshold']}, "
               f"inference {calib.get('precision', 'float32')}")
    click.echo(f"scoring       slice {p['slice_score']}, scan {p['scan_aggregation']}, "
               f"pixel threshold {calib['pixel_threshold']:.4g} (q={calib['pixel_quantile']})")
    if (Path(bundle) / "head.json").is_file():
        head = json.loads((Path(bundle) / "head.json").read_text())
        click.echo(f"head          {head.get('kind')} {head.get('classes', '')}")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--normal-dir", required=True, multiple=True, type=click.Path(), help="Normal scans to calibrate on.")
@click.option("--method", type=click.Choice(["auto", "empirical", "gamma", "lognormal", "kde"]), default=None)
@click.option("--fpr", "fpr", type=float, default=None, help="Target false-positive rate.")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="Recalibrate in this inference arithmetic (scoring then uses it).")
@click.option("--strict", is_flag=True)
@click.option("--quiet", is_flag=True)
@handles_errors
def calibrate(bundle, normal_dir, method, fpr, precision, strict, quiet):
    """Refit the calibrator on other normal scans without retraining (updates the bundle atomically)."""
    from .bundle import update_calibration
    from .detector import AnomalyDetector

    _quiet_warnings(quiet)
    if fpr is not None and not 0 < fpr < 1:
        raise ConfigError(f"--fpr must be in (0, 1), got {fpr}")
    det = AnomalyDetector.load(bundle)
    det.recalibrate(_collect_scans(normal_dir), method=method, target_fpr=fpr, precision=precision, strict=strict,
                    verbose=0 if quiet else 1)
    update_calibration(bundle, det)
    cal = det.calibrator_
    _say(quiet, f"recalibrated {bundle} on {len(det.calibration_sources_)} scans: {cal.method} threshold "
                f"{cal.threshold_:.5g} at target FPR {det.target_fpr}")


from .cli_data import data  # noqa: E402
from .cli_evaluate import evaluate  # noqa: E402
from .cli_head import fit_head  # noqa: E402
from .cli_score import score  # noqa: E402

for _command in (score, evaluate, fit_head, data):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
