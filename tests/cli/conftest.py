"""Fixtures of the CLI tests (the phantoms and the tiny fitted bundle come from tests/conftest.py)."""

from __future__ import annotations

import errno
import os

import pytest
from click.testing import CliRunner

#: Tiny fit settings for `aeanomaly fit` (as tests/conftest.py TINY, on the command line).
TINY_ARGS = ["--size", "64", "--depth", "3", "--base-filters", "8", "--latent-dim", "16", "--epochs", "2",
             "--calib-fraction", "0.4", "--target-fpr", "0.2", "--precision", "float32", "--quiet"]


@pytest.fixture
def cli():
    """Invoke ``aeanomaly ARGS...`` in-process; returns click's Result (stdout / stderr apart)."""
    from aeanomaly.cli import main

    def invoke(*args, catch_exceptions=False):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=catch_exceptions)

    return invoke


@pytest.fixture
def tiny_args():
    return list(TINY_ARGS)


def error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.strip()]


@pytest.fixture
def one_error_line():
    """Assert exit code 2 and exactly one stderr line ``error: ...`` containing every text given."""

    def check(result, *texts, starts=None):
        assert result.exit_code == 2, (result.exit_code, result.output)
        lines = error_lines(result)
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        if starts is not None:
            assert lines[0].startswith(f"error: {starts}: "), lines[0]
        for t in texts:
            assert t in lines[0], (t, lines[0])
        return lines[0]

    return check


@pytest.fixture
def read_only_fs(monkeypatch):
    """Make every new temporary file or folder under ``root`` fail as on a read-only file system
    (we run as root, where chmod does not stop writes): call the fixture with the root."""
    import tempfile

    def install(root):
        root = os.fspath(root)
        real_mkstemp, real_mkdtemp = tempfile.mkstemp, tempfile.mkdtemp

        def refuse(dir):
            if dir is not None and os.path.abspath(os.fspath(dir)).startswith(os.path.abspath(root)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(dir))

        def mkstemp(*a, dir=None, **k):
            refuse(dir)
            return real_mkstemp(*a, dir=dir, **k)

        def mkdtemp(*a, dir=None, **k):
            refuse(dir)
            return real_mkdtemp(*a, dir=dir, **k)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)

    return install


@pytest.fixture
def disk_full(monkeypatch):
    """Make every atomic rename (``os.replace``) fail with ENOSPC, as when the disk fills up while
    the results are written: the files exist in their temporary place, the final step fails."""

    def replace(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dst))

    monkeypatch.setattr(os, "replace", replace)
