"""aeanomaly/cli/__init__.py: the command group, its registration, and a start that needs no TensorFlow."""

import subprocess
import sys
import time

import pytest

from aeanomaly import __version__

COMMANDS = ("fit", "score", "calibrate", "info", "evaluate", "make-phantoms", "fit-head", "data")

PROBE = r"""
import sys, time
t = time.time()
from aeanomaly.cli import main
try:
    main(sys.argv[1:], prog_name="aeanomaly")
except SystemExit as e:
    code = e.code
print("TF_LOADED=%s KERAS_LOADED=%s CODE=%s SECONDS=%.2f" % ("tensorflow" in sys.modules, "keras" in sys.modules,
      code, time.time() - t), file=sys.stderr)
"""


def probe(*args):
    r = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=120)
    facts = dict(kv.split("=") for kv in r.stderr.strip().splitlines()[-1].split())
    return r, facts


def test_version_and_help_list_every_command(cli):
    r = cli("--version")
    assert r.exit_code == 0 and __version__ in r.output
    r = cli("--help")
    assert r.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in r.output
    assert "--verbose" in r.output


@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["--version"], 0),
    (["fit", "--help"], 0),
    (["score", "--help"], 0),
    (["fit", "--out", "x"], 2),  # missing --normal-dir: a usage error
    (["score", "B"], 2),  # no scans
    (["fit", "--normal-dir", "/nonexistent/dir", "--out", "/tmp/never-written"], 2),  # a path error
    (["score", "/no/bundle", "/no/scan.nii.gz", "--out", "/tmp/never-written-2"], 2),
])
def test_help_version_and_argument_errors_answer_without_tensorflow(args, code):
    r, facts = probe(*args)
    assert facts["CODE"] in (str(code), "None" if code == 0 else str(code)), r.stderr
    assert facts["TF_LOADED"] == "False" and facts["KERAS_LOADED"] == "False", (args, r.stderr)
    assert float(facts["SECONDS"]) < 3.0, (args, facts)  # in-process time of the CLI, imports included
    if code == 2 and args[-2:] != ["--out", "x"] and "--help" not in args and len(args) > 2:
        first = r.stderr.splitlines()[0]
        assert first.startswith("error: "), r.stderr  # the first stderr line is the error


def test_no_cli_module_imports_tensorflow_or_another_subcommand():
    import ast
    from pathlib import Path

    import aeanomaly.cli as pkg

    root = Path(pkg.__file__).parent
    subcommands = {p.stem for p in root.glob("*.py")} - {"__init__", "__main__", "common"}
    for path in root.glob("*.py"):
        if path.stem in ("__init__", "__main__"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module not in subcommands and node.module is not None, (path.name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
                raise AssertionError(f"{path.name} imports the cli package itself")
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for n in top:  # module-level imports: nothing heavy
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
            assert not any(x.split(".")[0] in ("tensorflow", "keras") for x in names), (path.name, names)
            assert not (isinstance(n, ast.ImportFrom) and n.module in ("..detector", "detector")), path.name


def test_python_dash_m_runs_the_cli():
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "aeanomaly.cli", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and __version__ in r.stdout and r.stderr == ""
    assert time.time() - t < 10
