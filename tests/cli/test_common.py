"""aeanomaly/cli/common.py: one place maps every user-caused failure to one line and exit 2; early
checks; deprecated aliases; TensorFlow started quietly."""

import errno
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from aeanomaly.cli.common import (check_output_dir, check_writable, collect_scans, deprecated_alias, error_line,
                                  handles_errors)
from aeanomaly.errors import AeAnomalyError, ConfigError, ScanError


@pytest.mark.parametrize("err, line", [
    (ScanError("corrupt", "/d/a.nii"), "/d/a.nii: corrupt"),
    (ConfigError("bad value"), "bad value"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/out"), "/ro/out: Read-only file system"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/x.csv"), "/full/x.csv: No space left on device (disk full)"),
    (OSError(errno.EACCES, os.strerror(errno.EACCES), "/root/x"), "/root/x: Permission denied"),
    (OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "/a/" + "n" * 300), "File name too long"),
    (MemoryError(), "out of memory"),
])
def test_error_line(err, line):
    assert line in error_line(err)
    assert "\n" not in error_line(err)


@pytest.mark.parametrize("exc", [ScanError("corrupt", "/d/a.nii"),
                                 OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/out"),
                                 OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/x"),
                                 MemoryError()])
def test_handles_errors_gives_one_line_and_exit_2(exc):
    @click.command()
    @handles_errors
    def cmd():
        raise exc

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {error_line(exc)}"


def test_deprecated_alias_single_and_multiple():
    @click.command()
    @click.option("--target-fpr", type=float, default=0.05)
    @click.option("--normal-dir", multiple=True)
    @deprecated_alias("--fpr", "--target-fpr", "target_fpr", type=float)
    @deprecated_alias("--normal", "--normal-dir", "normal_dir", multiple=True)
    def cmd(target_fpr, normal_dir):
        click.echo(f"{target_fpr} {list(normal_dir)}")

    run = CliRunner().invoke
    r = run(cmd, [])
    assert r.exit_code == 0 and r.stdout.strip() == "0.05 []" and r.stderr == ""
    r = run(cmd, ["--fpr", "0.1"])
    assert r.stdout.strip() == "0.1 []"
    assert r.stderr.strip() == "warning: --fpr is deprecated; use --target-fpr"
    r = run(cmd, ["--normal", "a", "--normal-dir", "b", "--normal", "c"])
    assert r.exit_code == 0 and r.stdout.strip() == "0.05 ['b', 'a', 'c']"
    assert r.stderr.strip() == "warning: --normal is deprecated; use --normal-dir"
    r = run(cmd, ["--fpr", "0.1", "--target-fpr", "0.2"])
    assert r.exit_code == 2 and "give --target-fpr or --fpr, not both" in r.output
    r = run(cmd, ["--help"])
    assert "--fpr " not in r.stdout and "--normal " not in r.stdout  # hidden


def test_collect_scans(tmp_path):
    with pytest.raises(AeAnomalyError, match="does not exist"):
        collect_scans([tmp_path / "nope"])
    (tmp_path / "a.npy").write_bytes(b"")
    assert collect_scans([tmp_path / "a.npy"]) == [tmp_path / "a.npy"]
    with pytest.raises(AeAnomalyError, match="no scan given"):
        collect_scans([])


def test_check_writable_and_output_dir(tmp_path, read_only_fs):
    check_writable(tmp_path / "new" / "deeper")  # missing folders are fine: they will be created
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty; pass --overwrite"):
        check_output_dir(tmp_path / "full", overwrite=False)
    assert check_output_dir(tmp_path / "full", overwrite=True) == tmp_path / "full"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=True)
    with pytest.raises(OSError) as info:
        check_writable(tmp_path / ("n" * 250))
    assert info.value.errno == errno.ENAMETOOLONG and "File name too long" in error_line(info.value)
    read_only_fs(tmp_path)
    with pytest.raises(OSError) as info:
        check_writable(tmp_path / "out")
    assert info.value.errno == errno.EROFS
    assert error_line(info.value) == f"{tmp_path / 'out'}: Read-only file system"


QUIET_START = """
import sys
from aeanomaly.cli import common
common.set_verbose({verbose})
common.start_tensorflow()
import keras
keras.ops.add(1.0, 1.0)
print("started", file=sys.stderr)
"""


@pytest.mark.slow
def test_tensorflow_starts_without_noise_unless_verbose():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-c", QUIET_START.format(verbose=False)], capture_output=True, text=True,
                       timeout=180, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "started", r.stderr  # not one absl / oneDNN / CUDA line
    r = subprocess.run([sys.executable, "-c", QUIET_START.format(verbose=True)], capture_output=True, text=True,
                       timeout=180, env=env)
    assert r.returncode == 0 and r.stderr.strip().endswith("started")
