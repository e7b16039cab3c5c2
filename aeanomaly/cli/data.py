"""``aeanomaly data``: list the dataset manifests, verify a dataset folder, prepare normal/abnormal sets.

Exit codes: 0 ok; 1 ``verify`` found problems (the report says which); 2 bad input (unknown or
invalid manifest, missing folder, bad option, unwritable output) with one line on stderr.
"""

from __future__ import annotations

import sys

import click

from .common import check_writable, handles_errors, warn


@click.group("data", context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    """Public CT datasets: manifests (source, licence, layout, labels), verification, preparation.

    \b
    aeanomaly data list
    aeanomaly data verify msd-task03-liver ~/data/Task03_Liver
    aeanomaly data prepare msd-task03-liver ~/data/Task03_Liver --out LIVER --unit slice --val-fraction 0.2
    """


@data.command("list")
@click.option("--verbose", "-v", is_flag=True, help="Also print homepage, licence and the normal/abnormal rule.")
@handles_errors
def list_cmd(verbose):
    """List the known dataset manifests."""
    from ..datasets.manifests import list_manifests, manifest_dir

    manifests = list_manifests()
    click.echo(f"{'id':<20} {'dim':<4} {'format':<10} {'rule':<16} name")
    for m in manifests:
        click.echo(f"{m['id']:<20} {m['dimensionality']:<4} {m['format']:<10} {m['normal_abnormal']['rule']:<16} {m['name']}")
        if verbose:
            click.echo(f"    homepage: {m.get('homepage', '-')}")
            click.echo(f"    license:  {m['license']}")
            click.echo(f"    rule:     {m['normal_abnormal']['description']}")
    click.echo(f"({len(manifests)} manifests in {manifest_dir()})")


@data.command("verify")
@click.argument("manifest")
@click.argument("directory", type=click.Path())
@click.option("--layout", default=None, help="Force one of the manifest's layouts.")
@click.option("--subset", is_flag=True, help="Accept a partial copy (fewer files than published).")
@click.option("--deep", is_flag=True, help="Read every image and label: unreadable files, shapes, label values.")
@click.option("--checksums", is_flag=True, help="Hash the files that have published checksums (archives).")
@click.option("--quiet", is_flag=True, help="No progress bar; the report is still printed.")
@handles_errors
def verify_cmd(manifest, directory, layout, subset, deep, checksums, quiet):
    """Check DIRECTORY against MANIFEST (an id from `data list` or a manifest .json).

    Prints the report; exits 0 when everything matches, 1 when something is missing or wrong.
    """
    from ..datasets.verify import verify

    report = verify(manifest, directory, layout=layout, subset=subset, deep=deep, checksums=checksums,
                    progress=not quiet)
    click.echo("\n".join(report.lines()))
    sys.exit(0 if report.ok else 1)


@data.command("prepare")
@click.argument("manifest")
@click.argument("directory", type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to create.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the patient split.")
@click.option("--val-fraction", default=0.0, show_default=True, type=float,
              help="Fraction of patients held out as val (out/*/val, labels_val.csv).")
@click.option("--unit", type=click.Choice(["scan", "slice"]), default="scan", show_default=True,
              help="Label whole scans, or every axial slice on its own (normal slices of tumour patients).")
@click.option("--layout", default=None, help="Force one of the manifest's layouts.")
@click.option("--no-masks", is_flag=True, help="Do not write masks/<scan>_mask for abnormal scans.")
@click.option("--assume-normal", is_flag=True, help="Use every scan of a dataset without abnormality labels as normal.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", is_flag=True)
@handles_errors
def prepare_cmd(manifest, directory, out, seed, val_fraction, unit, layout, no_masks, assume_normal, overwrite, quiet):
    """Split DIRECTORY by patient into OUT/normal and OUT/abnormal (with masks and labels.csv).

    \b
    then: aeanomaly fit --normal-dir OUT/normal/train --out BUNDLE
          aeanomaly evaluate BUNDLE --labels OUT/labels_val.csv --out EVAL
    """
    from ..datasets.prepare import prepare

    check_writable(out)
    res = prepare(manifest, directory, out, seed=seed, val_fraction=val_fraction, overwrite=overwrite, unit=unit,
                  layout=layout, masks=not no_masks, assume_normal=assume_normal, progress=not quiet)
    for s in res.skipped:
        warn(f"skipped {s}")
    if not quiet:
        click.echo(f"prepared {res.out}: {res.summary()}")
        click.echo(f"labels in {res.labels_csv}")
