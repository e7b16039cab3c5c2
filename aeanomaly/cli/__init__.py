"""Command line: thin click commands that check arguments, call the library, print and set the exit code.

One module per command (group); the shared helpers live in :mod:`aeanomaly.cli.common`, which imports
no sub-command, and no sub-command imports another or this package. Nothing here imports TensorFlow
at import time: ``--help``, ``--version`` and argument errors answer at once, and a command loads
TensorFlow only after its arguments and paths are checked, with its start-up noise silenced unless
``aeanomaly --verbose``.

Exit codes: 0 ok; 1 only where a command documents it (``score --fail-on-anomaly``, ``data verify``);
2 bad input or usage (one line on stderr, ``error: <path>: <reason>``), also when ``score`` or
``evaluate`` could score no input at all; 130 an interrupted ``fit`` (resume with ``--resume``).
"""

from __future__ import annotations

import os

import click

from .. import __version__
from .calibrate import calibrate
from .common import set_verbose
from .data import data
from .evaluate import evaluate
from .feedback import feedback
from .fine_tune import fine_tune
from .fit import fit, parse_augment
from .head import fit_head
from .info import info
from .phantoms import make_phantoms
from .score import score
from .serve import serve

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["main", "parse_augment"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aeanomaly")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's start-up messages and every warning.")
def main(verbose: bool = False) -> None:
    """Unsupervised anomaly detection in CT with convolutional autoencoders.

    \b
    aeanomaly make-phantoms --out DATA --normal 40 --abnormal 10
    aeanomaly fit --normal-dir DATA/normal --out BUNDLE
    aeanomaly score BUNDLE SCANS... --out RESULTS --report
    """
    set_verbose(verbose)


for _command in (make_phantoms, fit, info, calibrate, score, evaluate, fit_head, data, serve, feedback, fine_tune):
    main.add_command(_command)

