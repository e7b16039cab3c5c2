"""What every sub-command shares: error mapping, output, input collection, early checks, aliases.

Imports no sub-command (each sub-command imports this module, never another sub-command), and
nothing heavy: TensorFlow is imported only by :func:`start_tensorflow`, after a command has checked
its arguments and paths, with its start-up noise silenced unless ``aeanomaly --verbose``.

Every failure a user can cause — an :class:`~aeanomaly.errors.AeAnomalyError`, an ``OSError``
(read-only file system, permission, full disk, path too long ...) or a ``MemoryError`` — becomes one
stderr line ``error: <path>: <reason>`` and exit code 2 here (:func:`handles_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, NoReturn

import click
from click.core import ParameterSource

from ..errors import AeAnomalyError, ConfigError, EmptyInputError

#: Exit code of bad input or usage.
EXIT_BAD_INPUT = 2

_state = {"verbose": False}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def set_verbose(verbose: bool) -> None:
    """``aeanomaly --verbose``: show TensorFlow's start-up messages and every Python warning."""
    _state["verbose"] = bool(verbose)
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def is_verbose() -> bool:
    return _state["verbose"]


def say(quiet: bool, message: str) -> None:
    """A progress or result line on stdout (nothing with ``--quiet``)."""
    if not quiet:
        click.echo(message)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr (also with ``--quiet``)."""
    click.echo(f"warning: {message}", err=True)


def report_unscored(errors: list[str], n_total: int, table: str) -> None:
    """Some inputs could not be scored: how many, and the first reason, on stderr (one line)."""
    if errors:
        warn(f"{len(errors)} of {n_total} scans could not be scored (error rows in {table}); first: {errors[0]}")


def fail(message: str) -> NoReturn:
    """One ``error: ...`` line on stderr and exit code 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def quiet_warnings(quiet: bool) -> None:
    """Python warnings as ``warning: <message>`` lines on stderr, or none with ``--quiet``."""
    if quiet and not is_verbose():
        warnings.simplefilter("ignore")
    else:
        warnings.showwarning = lambda msg, *a, **k: click.echo(f"warning: {msg}", err=True)


def method_in_force(calibrator) -> str:
    """The calibration method in force (the one ``auto`` chose), for messages and reports."""
    return getattr(calibrator, "method_", None) or calibrator.method


# ---------------------------------------------------------------------------------------------
# Errors: one place
# ---------------------------------------------------------------------------------------------

def error_line(err: BaseException) -> str:
    """``<path>: <reason>`` (or the reason alone) of a failure a user can cause."""
    if isinstance(err, AeAnomalyError):
        return str(err)
    if isinstance(err, MemoryError):
        return "out of memory (MemoryError): the input is too large for this machine's memory"
    if isinstance(err, OSError):
        reason = err.strerror or str(err) or errno.errorcode.get(err.errno or 0, "OS error")
        if err.errno == errno.ENOSPC:
            reason = f"{reason} (disk full)"
        path = err.filename if err.filename is not None else None
        return f"{os.fspath(path)}: {reason}" if path is not None else reason
    return f"{type(err).__name__}: {err}"


USER_ERRORS = (AeAnomalyError, OSError, MemoryError)


def handles_errors(fn: Callable) -> Callable:
    """Map every failure a user can cause to one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            fail(error_line(err))

    return wrapper


# ---------------------------------------------------------------------------------------------
# Deprecated spellings
# ---------------------------------------------------------------------------------------------

def deprecated_alias(old_flag: str, new_flag: str, dest: str, **option_kwargs) -> Callable:
    """A hidden option ``old_flag`` that feeds the parameter ``dest`` of the option ``new_flag``.

    Using it prints one ``warning: <old> is deprecated; use <new>`` line. For a ``multiple`` option
    the values are added to those of ``new_flag``; for a single value, giving both is a usage error.
    Put it below ``@click.command`` (it wraps the command's function).
    """
    key = f"deprecated_{dest}_{old_flag.lstrip('-').replace('-', '_')}"
    multiple = bool(option_kwargs.get("multiple"))

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            old = kwargs.pop(key, None)
            if old is not None and old != ():
                warn(f"{old_flag} is deprecated; use {new_flag}")
                if multiple:
                    kwargs[dest] = tuple(kwargs.get(dest) or ()) + tuple(old)
                else:
                    ctx = click.get_current_context(silent=True)
                    if ctx is not None and ctx.get_parameter_source(dest) == ParameterSource.COMMANDLINE:
                        raise click.UsageError(f"give {new_flag} or {old_flag}, not both")
                    kwargs[dest] = old
            return fn(*args, **kwargs)

        return click.option(old_flag, key, hidden=True, default=None, **option_kwargs)(wrapper)

    return decorate


# ---------------------------------------------------------------------------------------------
# Early checks (before TensorFlow)
# ---------------------------------------------------------------------------------------------

def check_open_unit(name: str, value: float | None) -> None:
    """``value`` is None or in (0, 1)."""
    if value is not None and not 0 < value < 1:
        raise ConfigError(f"{name} must be in (0, 1), got {value}")


def collect_scans(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The scans of files and folders given on the command line (folders searched recursively; a
    folder of several DICOM series gives one scan per series, and a series' name selects it).

    Raises
    ------
    AeAnomalyError
        An input does not exist; a folder holds no scan; nothing was given.
    """
    items = [Path(item) for item in inputs]
    for p in items:  # before the readers are imported: a typo is reported at once
        if not p.exists() and not p.parent.is_dir():
            raise AeAnomalyError("does not exist", p)
    from ..io import find_scans

    paths: list = []
    for p in items:
        if p.is_file():
            paths.append(p)
        elif p.is_dir():
            paths.extend(find_scans(p))
        else:  # not on disk: the name of one series of a DICOM folder (find_scans knows), or a typo
            try:
                paths.extend(find_scans(p))
            except AeAnomalyError:
                raise AeAnomalyError("does not exist", p) from None
    if not paths:
        raise EmptyInputError("no scan given")
    return paths


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


#: Room left in a file name for the temporary names the atomic writers use (``.<name>.tmp-XXXXXXXX``).
_TEMP_NAME_ROOM = 24


def check_writable(out: str | os.PathLike) -> None:
    """Fail early (before any work) when ``out`` cannot be created or replaced.

    Checks that the nearest existing folder above ``out`` takes a new file (a read-only file system,
    missing permission or a full disk fail here, as an ``OSError`` naming ``out``) and that no part
    of the name is too long for the file system.
    """
    out = Path(out)
    base = _existing_ancestor(out.parent if out.exists() else out)
    if not base.is_dir():
        raise ConfigError("is not a folder", base)
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    rest = out.absolute().relative_to(base.absolute()).parts if out.absolute() != base.absolute() else ()
    for part in (*rest, out.name):
        if len(os.fsencode(part)) + _TEMP_NAME_ROOM > name_max:
            raise OSError(errno.ENAMETOOLONG, f"{os.strerror(errno.ENAMETOOLONG)} (a name part has "
                          f"{len(os.fsencode(part))} bytes, at most {name_max - _TEMP_NAME_ROOM} fit)", str(out))
    try:
        fd, probe = tempfile.mkstemp(prefix=".aeanomaly-probe-", dir=base)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(out)) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_dir(out: str | os.PathLike, overwrite: bool, what: str = "results folder") -> Path:
    """``out`` may be written: absent or empty (or ``overwrite``), not a file, writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} is a file", out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{what} exists and is not empty; pass --overwrite to replace it", out)
    check_writable(out)
    return out


def check_bundle(bundle: str | os.PathLike) -> dict:
    """bundle.json of ``bundle`` (present, complete, known format) — read before TensorFlow loads."""
    from ..bundle import read_bundle_json

    return read_bundle_json(bundle)


# ---------------------------------------------------------------------------------------------
# Scoring settings: fit sets them, calibrate changes them
# ---------------------------------------------------------------------------------------------

#: The scoring settings of a bundle that ``fit`` sets and ``calibrate`` can change: option →
#: (parameter, click type, fit's default, help). Each changes the scores, so a change recalibrates.
#: The defaults repeat :class:`aeanomaly.scoring.ScoringParams`' (tested) so that ``--help`` does not
#: import the scoring stack.
SCORING_OPTIONS = {
    "--slice-norm": ("slice_norm", click.Choice(["area", "location", "none"]), "none",
                     "area: slice scores are compared with the calibration normals' slices of the same scoring-region "
                     "size (the small lungs of the apex and base are not flagged for where they lie); location: "
                     "their median at that size subtracted, one spread for all sizes; none: raw (the real-CT "
                     "benchmark's choice with the blob gate)."),
    "--sigma-mm": ("sigma_mm", click.FloatRange(0), 6.0,
                   "In-plane Gaussian σ of the heatmap in mm (6 mm with the blob gate at 128 px on a chest: the "
                   "real-CT tune split's choice; 3 mm without it)."),
    "--sigma-z-mm": ("sigma_z_mm", click.FloatRange(0), 0.0,
                     "Gaussian σ in mm of an average of the heatmap over neighbouring slices of a volume (a lesion "
                     "persists there, a vessel cut across moves); 0: each slice its own."),
    "--erode-mm": ("erode_mm", click.FloatRange(0), 6.0,
                   "The scoring region is shrunk by this much (mm) before residuals count, against the "
                   "partial-volume edge of the lungs; less keeps more of a lesion against the pleura."),
    "--blob-gate": ("blob_gate", click.FloatRange(0), 2.0,
                    "Weight the residual by its own blobness to this power before smoothing: blob-shaped residual "
                    "(a nodule) keeps its height, tube- and edge-shaped residual (vessels, fissures) loses it; 0: off "
                    "(lesions much wider than 25 mm)."),
    "--blob-gate-3d": ("blob_gate_3d", click.FloatRange(0), 0.0,
                       "Weight the residual further by its blobness across slices (3-D Hessian) to this power: a "
                       "vessel cut across, round on its slice but a tube along the next ones, loses its height. "
                       "Volumes of 3 slices or more only (single slices keep the in-plane gate), so normals and "
                       "scans must all be volumes; 0: off (README 'Detection on real CT')."),
    "--seg-weight": ("seg_weight", click.FloatRange(0, 1), 0.25,
                     "dae+seg only: heatmap = this weight × the segmenter's probability + the rest × the residual "
                     "heatmap over its pixel threshold on the calibration normals (0.25: the real-CT tune split's "
                     "choice); 1: the probability alone."),
}


def scoring_options(fit: bool) -> Callable:
    """The options of :data:`SCORING_OPTIONS`: with fit's defaults (``fit``), or with none, for a
    command that changes a fitted bundle's settings (an option not given keeps the bundle's)."""

    def decorate(fn: Callable) -> Callable:
        for flag, (dest, kind, default, text) in reversed(SCORING_OPTIONS.items()):
            if fit:
                fn = click.option(flag, dest, type=kind, default=default, show_default=True, help=text)(fn)
            else:
                fn = click.option(flag, dest, type=kind, default=None, help=f"{text} Default: the bundle's.")(fn)
        return fn

    return decorate


def check_seg_weight(seg_weight: float | None, model_kind: str) -> None:
    """``--seg-weight`` weighs a segmenter's probability: refused for a model without one."""
    if seg_weight is not None and model_kind != "dae+seg":
        raise ConfigError(f"--seg-weight {seg_weight:g} weighs a segmenter's probability, which only --model dae+seg "
                          f"trains (this is --model {model_kind})")


# ---------------------------------------------------------------------------------------------
# TensorFlow, quietly
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _stderr_fd_silenced(enabled: bool):
    """Send file descriptor 2 (C++ logging of TensorFlow / absl / CUDA) to /dev/null meanwhile."""
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _keep_python_stderr_only() -> None:
    """From now on, send what C++ code writes to file descriptor 2 (TensorFlow's runtime log lines,
    e.g. grappler or CUDA messages during training) to /dev/null, while Python's ``sys.stderr`` (our
    warnings and errors, progress bars, tracebacks) keeps writing to the terminal through a copy of
    the descriptor. Only when ``sys.stderr`` is the process's own descriptor 2."""
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return
        sys.stderr.flush()
        keep = os.dup(2)
    except (AttributeError, ValueError, OSError):
        return
    encoding, errors = getattr(sys.stderr, "encoding", None), getattr(sys.stderr, "errors", None)
    sys.stderr = os.fdopen(keep, "w", buffering=1, encoding=encoding, errors=errors)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def start_tensorflow() -> None:
    """Import Keras and its TensorFlow backend and initialise the devices, with the noise (absl,
    oneDNN, CUDA, CPU-feature and runtime log lines, Python warnings of the import) silenced unless
    ``--verbose``.

    Call it after the arguments and paths are checked, before anything that builds or loads a model.
    """
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        return
    quiet = not is_verbose()
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_fd_silenced(quiet), warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR" if quiet else "INFO")
            tf.config.list_physical_devices()  # CUDA initialisation logs now, while silenced
        with contextlib.suppress(ImportError):
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR if quiet else absl.logging.INFO)
    if quiet:
        _keep_python_stderr_only()
