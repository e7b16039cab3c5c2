"""One exception family. The CLI maps :class:`AeAnomalyError` to exit code 2 and one line."""

from __future__ import annotations

import os


class AeAnomalyError(Exception):
    """Base of every error the toolkit raises on purpose.

    ``str(err)`` is one line: ``"<path>: <reason>"`` when a path is known, else the reason.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = str(reason).replace("\n", " ").strip()
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)


class ScanError(AeAnomalyError):
    """A scan cannot be read or is not usable CT (corrupt, unsupported, 4-D, NaN, not CT ...)."""


class UnsupportedFormatError(ScanError):
    """The file extension or content type is not one aeanomaly reads."""


class EmptyInputError(AeAnomalyError):
    """A folder holds no scan."""


class BundleError(AeAnomalyError):
    """A bundle is missing, of an unknown format version, or would be overwritten."""


class NotFittedError(AeAnomalyError):
    """An estimator was used before ``fit``."""


class ConfigError(AeAnomalyError):
    """A parameter value is invalid (bad window, too few scans for the splits ...)."""


class DataManifestError(AeAnomalyError):
    """A dataset manifest is invalid or a dataset tree does not match it."""
