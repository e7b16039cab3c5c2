"""``aeanomaly info``: what a bundle holds (reads its JSON files only; no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import BundleError
from .common import check_bundle, handles_errors


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"{path.name} is unreadable: {getattr(err, 'strerror', None) or err}", path.parent) from None


@click.command()
@click.argument("bundle", type=click.Path())
@handles_errors
def info(bundle):
    """Print what a bundle holds."""
    meta = check_bundle(bundle)
    calib = _json(Path(bundle) / "calibration.json")
    try:
        inp, tr, p = meta["input"], meta.get("training", {}), meta["params"]
        click.echo(f"bundle        {bundle}")
        click.echo(f"format        {meta['format_version']} (aeanomaly {meta['aeanomaly_version']}, "
                   f"created {meta['created']})")
        click.echo(f"input         window {inp['window']}, {inp['size']} px, {inp['channels']} channel(s)")
        kind = p.get("model_kind", "dae") if p["skip"] else "ae"
        what = "denoising AE with skips" if p["skip"] else "bottleneck AE"
        if kind == "dae+seg":
            w = float(p.get("seg_weight", 1.0))  # bundles written before the option: the probability alone
            scale = calib.get("residual_scale")
            heat = ("its probability" if w >= 1.0 else
                    f"{w:g} × its probability + {1 - w:g} × the residual / {scale:.4g} (clipped to 1)" if scale else
                    f"{w:g} × its probability + {1 - w:g} × the residual, without a residual scale: recalibrate")
            what += f" + self-supervised anomaly segmenter ({p.get('seg_epochs')} epochs): heatmap = {heat}"
        click.echo(f"model         {kind}: {what}, depth {p['depth']}, "
                   f"base filters {p['base_filters']}, latent {p['latent']} {p['latent_dim']}")
        click.echo(f"training      {tr.get('epoch')} epochs, best val loss {tr.get('best')}, "
                   f"{len(meta.get('split', {}).get('train', []))} train / "
                   f"{len(meta.get('split', {}).get('val', []))} val scans")
        sc = calib["scan"]
        click.echo(f"calibration   {sc['method']} on {len(calib.get('calibration_scans', []))} normal scans, "
                   f"target FPR {calib['target_fpr']}, threshold {sc['threshold']}, "
                   f"inference {calib.get('precision', 'float32')}")
        from ..calibrate import Calibrator  # numpy and scipy, no TensorFlow

        bound = Calibrator.from_dict(sc).fpr_upper_bound(0.9)
        mean = ("set by hand" if sc.get("manual") else
                f"≤ {calib['target_fpr']} on average over calibration sets" if sc["method"] == "empirical"
                else f"{calib['target_fpr']} if the {sc['method']} fit is right")
        click.echo(f"              FPR at this threshold {mean}, ≤ {bound:.3f} with 90 % probability "
                   f"({len(sc['scores'])} normal scores, distribution-free; README 'score')")
        ref = calib.get("slice_reference")
        against = (f", against normal slices of the same region size ({len(ref['median'])} bins, "
                   f"{ref['n_slices']} slices)" if ref else ", raw")
        z = p.get("sigma_z_mm") or 0.0  # bundles written before the option: none
        smooth = f"heatmap σ {p['sigma_mm']:g} mm in-plane" + (f", {z:g} mm across slices" if z else "")
        gates = [f"{name}^{p[key]:g}" for key, name in (("blob_gate", "blobness"), ("blob_gate_3d", "3-D blobness"))
                 if p.get(key)]  # bundles written before an option: none
        if gates:
            smooth = f"residual × {' × '.join(gates)}, " + smooth
        click.echo(f"scoring       slice {p['slice_score']}{against}, scan {p['scan_aggregation']}, {smooth}, "
                   f"pixel threshold {calib['pixel_threshold']:.4g} (q={calib['pixel_quantile']})")
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"bundle.json or calibration.json lacks {err}", bundle) from None
    if (Path(bundle) / "head.json").is_file():
        head = _json(Path(bundle) / "head.json")
        click.echo(f"head          {head.get('kind')} {head.get('classes', '')}")
