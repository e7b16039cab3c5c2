"""``aeanomaly fit``: train the autoencoder on normal scans, calibrate on held-out normals, write a bundle."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import click

from ..config import BFLOAT16_HARDWARE, FIT_DEFAULTS as F, SEG_MIN_STEPS_PER_EPOCH, TRAIN_DEFAULTS as T
from ..errors import AeAnomalyError, BundleError, ConfigError
from .common import (check_open_unit, check_seg_weight, check_writable, collect_scans, deprecated_alias,
                     handles_errors, method_in_force, quiet_warnings, say, scoring_options, start_tensorflow, warn)

#: Region → default HU window preset (the same table as ``aeanomaly.preprocess.REGION_WINDOWS``,
#: repeated here only as choices so that ``--help`` does not import the preprocessing stack).
REGIONS = ("lung", "chest", "abdomen", "liver")


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


def conformal_shortfall(n_calibration: int, target_fpr: float) -> int:
    """How many more normal calibration scans the split-conformal guarantee at ``target_fpr`` needs
    (0 when there are enough): it needs ⌈1/α − 1⌉ scans."""
    from ..calibrate import conformal_minimum

    return max(conformal_minimum(float(target_fpr)) - int(n_calibration), 0)


@click.command()
@click.option("--normal-dir", required=True, multiple=True, type=click.Path(), help="Folder(s) of normal scans.")
@click.option("--out", "out", required=True, type=click.Path(), help="Bundle directory to write.")
@click.option("--region", type=click.Choice(REGIONS), default="lung", show_default=True, help="Sets the default window.")
@click.option("--window", default=None, help="Window preset or 'W,L' in HU (overrides --region).")
@click.option("--size", default=T["size"], show_default=True, type=click.IntRange(32, 512), help="Model grid in pixels.")
@click.option("--channels", default=T["channels"], show_default=True, type=int, help="Slices per input (odd; >1 is 2.5-D).")
@click.option("--model", "model_kind", type=click.Choice(["dae", "dae+seg", "ae"]), default=F["model_kind"],
              show_default=True,
              help="dae: coarse-noise denoising AE with skips, heatmap = residual; dae+seg: the same AE plus a "
                   "self-supervised segmenter of synthetic anomalies, heatmap = its anomaly probability; ae: "
                   "bottleneck AE of the seed papers.")
@click.option("--seg-epochs", default=F["seg_epochs"], show_default=True, type=click.IntRange(1),
              help=f"Training epochs of the dae+seg segmenter (each at least {SEG_MIN_STEPS_PER_EPOCH} steps of "
                   "freshly corrupted batches).")
@click.option("--noise-std", default=T["noise_std"], show_default=True, type=click.FloatRange(0),
              help="Std of the dae's denoising noise, in units of the [0, 1] windowed image (0: a plain "
                   "autoencoder with skips, which copies anomalies; --model ae always trains without noise).")
@click.option("--noise-resolution", default=T["noise_resolution"], show_default=True, type=click.IntRange(2),
              help="The noise is drawn on an N x N grid over the field of view and upsampled: its blobs are about "
                   "1/N of the field of view across (about 11 mm for 32 on a 350 mm chest).")
@click.option("--depth", default=T["depth"], show_default=True, type=click.IntRange(1, 7))
@click.option("--base-filters", default=T["base_filters"], show_default=True, type=click.IntRange(1))
@click.option("--latent-dim", default=T["latent_dim"], show_default=True, type=click.IntRange(1),
              help="Latent channels (spatial) or units (dense).")
@click.option("--latent-kind", type=click.Choice(["spatial", "dense"]), default=T["latent"], show_default=True,
              help="Spatial latent feature map or a dense vector.")
@click.option("--loss", type=click.Choice(["mae", "mse", "mae_ssim"]), default=T["loss"], show_default=True)
@click.option("--norm", type=click.Choice(["group", "batch", "none"]), default=T["norm"], show_default=True,
              help="Normalisation after each convolution (batch is folded into the convolutions at inference).")
@click.option("--epochs", default=T["epochs"], show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=T["batch_size"], show_default=True, type=click.IntRange(1))
@click.option("--learning-rate", default=T["learning_rate"], show_default=True, type=float)
@click.option("--patience", default=T["patience"], show_default=True, type=click.IntRange(1))
@click.option("--no-augment", is_flag=True, help="Disable augmentation of training slices.")
@click.option("--augment", "augment_spec", default=None, metavar="K=V,...",
              help="Augmentation settings, e.g. 'flip=0,rotate_deg=15,scale=0.1,shift=0.05,gain=0.05,offset=0.02'.")
@click.option("--val-fraction", default=F["val_fraction"], show_default=True, type=float)
@click.option("--calib-fraction", default=F["calib_fraction"], show_default=True, type=float)
@click.option("--target-fpr", default=F["target_fpr"], show_default=True, type=float,
              help="Scan-level false-positive rate the threshold is calibrated for.")
@click.option("--calib-method", type=click.Choice(["auto", "empirical", "gamma", "lognormal", "kde"]), default=F["calib_method"],
              show_default=True)
@scoring_options(fit=True)
@click.option("--seed", default=T["seed"], show_default=True, type=int)
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default=F["precision"],
              show_default=True,
              help="Inference arithmetic for calibration and scoring (training is float32). auto: bfloat16 where "
                   f"the machine has it ({BFLOAT16_HARDWARE}), else float32; 'aeanomaly info' says which.")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]), default="default",
              show_default=True, help="tf.distribute: mirrored = every GPU of this machine; multiworker = several "
                                      "machines, cluster from TF_CONFIG (see README 'Scaling out').")
@click.option("--resume", is_flag=True, help="Continue an interrupted fit from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@click.option("--strict", is_flag=True, help="Stop at an unreadable scan instead of skipping it.")
@click.option("--quiet", is_flag=True)
@deprecated_alias("--latent", "--latent-dim", "latent_dim", type=click.IntRange(1))
@deprecated_alias("--fpr", "--target-fpr", "target_fpr", type=float)
@handles_errors
def fit(normal_dir, out, region, window, size, channels, model_kind, seg_epochs, seg_weight, noise_std, noise_resolution,
        depth, base_filters, latent_dim, latent_kind, loss, norm, epochs, batch_size, learning_rate, patience, no_augment,
        augment_spec, val_fraction, calib_fraction, target_fpr, calib_method, slice_norm, sigma_mm, sigma_z_mm, erode_mm,
        blob_gate, blob_gate_3d, seed, precision, strategy,
        resume, overwrite, strict, quiet):
    """Train the autoencoder on normal scans, calibrate on held-out normals, write a bundle.

    Prints every input it skipped and how many slices it trained on (with --quiet too when more than
    a tenth of the inputs were skipped), and warns when the calibration set is too small for the
    conformal guarantee at --target-fpr.
    """
    quiet_warnings(quiet)
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError("already exists; pass --overwrite to replace it", out)
    check_open_unit("--target-fpr", target_fpr)
    given = click.get_current_context().get_parameter_source("seg_weight") != click.core.ParameterSource.DEFAULT
    check_seg_weight(seg_weight if given else None, model_kind)
    augment = False if no_augment else parse_augment(augment_spec)
    from ..preprocess import REGION_WINDOWS, HUWindow
    from ..splits import split_scans

    window_spec = HUWindow.parse(window or REGION_WINDOWS[region]).to_spec()
    check_writable(out)
    paths = collect_scans(normal_dir)
    try:
        split_scans(len(paths), val_fraction, calib_fraction, seed)  # the split fit will make: checked now
    except ConfigError as err:
        raise ConfigError(err.reason, ", ".join(normal_dir)) from None

    from ..detector import AnomalyDetector

    det = AnomalyDetector(
        window=window or REGION_WINDOWS[region], size=size, channels=channels, depth=depth, base_filters=base_filters,
        latent=latent_kind, latent_dim=latent_dim, skip=model_kind != "ae",
        model_kind="dae+seg" if model_kind == "dae+seg" else "dae", seg_epochs=seg_epochs, seg_weight=seg_weight,
        noise_std=noise_std if model_kind != "ae" else 0.0, noise_resolution=noise_resolution, norm=norm, loss=loss,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience, augment=augment,
        val_fraction=val_fraction, calib_fraction=calib_fraction, target_fpr=target_fpr, calib_method=calib_method,
        slice_norm=slice_norm, sigma_mm=sigma_mm, sigma_z_mm=sigma_z_mm, erode_mm=erode_mm, blob_gate=blob_gate,
        blob_gate_3d=blob_gate_3d, seed=seed, precision=precision,
    )
    work = out.with_name(out.name + ".partial")
    if work.exists() and not resume:
        shutil.rmtree(work)
    if strategy == "multiworker":
        from ..distributed.strategy import parse_tf_config

        parse_tf_config()  # before TensorFlow: a bad or missing TF_CONFIG is one line, exit 2
    start_tensorflow()
    from ..distributed.strategy import is_chief, make_strategy

    strat = make_strategy(strategy)  # the first TensorFlow call of the command
    say(quiet, f"fitting on {len(paths)} normal scans (window {window_spec}, {size} px)")
    try:
        with warnings.catch_warnings():
            # both are reported below, once: the skipped inputs and the calibration-set shortfall
            warnings.filterwarnings("ignore", message="skipped unreadable scan")
            warnings.filterwarnings("ignore", message=".*too few for the conformal guarantee")
            warnings.filterwarnings("ignore", message=".*cannot reach a false-positive rate")
            det.fit(paths, work_dir=work, resume=resume, strict=strict, verbose=0 if quiet else 1, strategy=strat)
    except KeyboardInterrupt:
        click.echo(f"interrupted: resume with the same command and --resume (state in {work})", err=True)
        sys.exit(130)
    except (AeAnomalyError, OSError, MemoryError) as err:
        shutil.rmtree(work, ignore_errors=True)  # leave nothing half-written
        if isinstance(err, AeAnomalyError) and err.path is None:  # a problem of the whole set: name the folder(s)
            raise type(err)(err.reason, ", ".join(normal_dir)) from None
        raise
    if det.train_state_.get("resumed_from"):
        say(quiet, f"resumed from epoch {det.train_state_['resumed_from']}")
    if not is_chief():  # multiworker: the chief (worker 0) writes the bundle
        say(quiet, "trained as a non-chief worker; the chief writes the bundle")
        return
    try:
        det.save(out, overwrite=overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report_fit(det, len(paths), quiet)
    cal = det.calibrator_
    say(quiet, f"bundle written to {out}: {det.train_state_['epoch']} epochs, "
               f"{len(det.calibration_sources_)} calibration scans, {method_in_force(cal)} threshold "
               f"{cal.threshold_:.5g} at target FPR {det.target_fpr_}")


def report_fit(det, n_inputs: int, quiet: bool) -> None:
    """The skipped inputs, the slices trained on and the calibration-set shortfall of a finished fit."""
    skipped = list(det.skipped_)
    many_skipped = len(skipped) * 10 > n_inputs
    for s in skipped:
        if not quiet or many_skipped:
            warn(f"skipped {s['error']}")
    n_train, n_val = det.train_state_.get("n_train_slices"), det.train_state_.get("n_val_slices")
    if n_train is not None and (not quiet or many_skipped):
        click.echo(f"trained on {n_train} slices ({n_val} validation slices); "
                   + (f"{len(skipped)} of {n_inputs} inputs skipped" if skipped else f"all {n_inputs} inputs read"),
                   err=quiet)
    n_cal = len(det.calibration_sources_)
    short = conformal_shortfall(n_cal, det.target_fpr_)
    if short:
        need, method = n_cal + short, method_in_force(det.calibrator_)
        consequence = ("the empirical threshold cannot reach it, nothing will be flagged" if method == "empirical"
                       else f"the {method} threshold is only as good as its fit")
        warn(f"{n_cal} normal calibration scans are too few for the conformal guarantee at target FPR "
             f"{det.target_fpr_}: {consequence}; calibrate on at least {need} normal scans "
             "(aeanomaly calibrate BUNDLE --normal-dir DIR)")
