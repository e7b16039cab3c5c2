"""``aeanomaly make-phantoms``: synthetic CT phantoms (NIfTI in HU), lesion masks and labels.csv."""

from __future__ import annotations

import click

from ..errors import ConfigError
from .common import check_writable, handles_errors, say


@click.command("make-phantoms")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to create.")
@click.option("--normal", "n_normal", default=20, show_default=True, type=click.IntRange(0),
              help="Number of normal phantoms.")
@click.option("--abnormal", "n_abnormal", default=10, show_default=True, type=click.IntRange(0),
              help="Number of abnormal phantoms (with lesions).")
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
    if n_normal + n_abnormal == 0:
        raise ConfigError("nothing to write: --normal and --abnormal are both 0")
    check_writable(out)
    from ..datasets.synthetic import write_phantom_set

    spacing_xy = 350.0 / matrix
    labels = write_phantom_set(
        out, n_normal, n_abnormal, region=region, seed=seed, shape=(slices, matrix, matrix),
        spacing=(5.0, spacing_xy, spacing_xy), lesions_per_scan=per_scan, size_mm=lesion_mm,
        kinds=[k.strip() for k in kinds.split(",") if k.strip()] if kinds else None, overwrite=overwrite,
    )
    say(quiet, f"wrote {n_normal} normal and {n_abnormal} abnormal {region} phantoms; labels in {labels}")
