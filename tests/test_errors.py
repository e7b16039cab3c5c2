"""aeanomaly.errors: one exception family whose str is one line, naming the path when known."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aeanomaly import errors
from aeanomaly.errors import (AeAnomalyError, BundleError, ConfigError, DataManifestError, EmptyInputError,
                              NotFittedError, ScanError, UnsupportedFormatError)


def test_str_is_path_then_reason():
    err = AeAnomalyError("not CT (no HU rescale)", Path("/data/a.dcm"))
    assert str(err) == "/data/a.dcm: not CT (no HU rescale)"
    assert err.reason == "not CT (no HU rescale)" and err.path == "/data/a.dcm" and isinstance(err.path, str)
    assert err.args == ("/data/a.dcm: not CT (no HU rescale)",)


def test_without_a_path_the_str_is_the_reason():
    err = ConfigError("bad window")
    assert str(err) == "bad window" and err.path is None
    assert str(ConfigError("x", path="")) == "x"  # an empty path adds no prefix


def test_reason_newlines_are_folded_into_one_line():
    err = ScanError("first line\nsecond line\n", "scan.nii")
    assert str(err) == "scan.nii: first line second line"
    assert "\n" not in str(err) and err.reason == "first line second line"
    assert str(AeAnomalyError("  padded  ")) == "padded"
    assert str(AeAnomalyError(ValueError("wrapped\nerror"))) == "wrapped error"  # any object, as its str


def test_path_like_objects_are_accepted():
    class P(os.PathLike):
        def __fspath__(self):
            return "/x/y.npy"

    assert BundleError("missing", P()).path == "/x/y.npy"


@pytest.mark.parametrize("cls, parents", [
    (ScanError, (AeAnomalyError,)),
    (UnsupportedFormatError, (ScanError, AeAnomalyError)),
    (EmptyInputError, (AeAnomalyError,)),
    (BundleError, (AeAnomalyError,)),
    (NotFittedError, (AeAnomalyError,)),
    (ConfigError, (AeAnomalyError,)),
    (DataManifestError, (AeAnomalyError,)),
])
def test_subclass_tree(cls, parents):
    for parent in parents:
        assert issubclass(cls, parent)
    assert issubclass(cls, Exception) and not issubclass(cls, (ValueError, OSError))
    err = cls("why", "p")
    assert str(err) == "p: why"
    with pytest.raises(AeAnomalyError, match="^p: why$"):
        raise err


def test_every_public_error_is_in_the_family():
    found = {v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)}
    assert found == {AeAnomalyError, ScanError, UnsupportedFormatError, EmptyInputError, BundleError,
                     NotFittedError, ConfigError, DataManifestError}
    # siblings are unrelated: catching one kind does not swallow another
    assert not issubclass(ConfigError, ScanError) and not issubclass(ScanError, BundleError)
