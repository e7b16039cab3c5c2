"""The notebooks run end to end on tiny phantoms (AEANOMALY_NB_FAST=1), so they never rot.

The kernel is this interpreter (``sys.executable``), through a kernelspec written to a temporary
folder: whatever kernelspecs the machine has installed (a ``python3`` one that runs a bare
``python`` from PATH, or none in a fresh CI venv), the notebooks import the aeanomaly under test.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the [notebooks] extra")
nbclient = pytest.importorskip("nbclient", reason="needs the [notebooks] extra")
pytest.importorskip("ipykernel", reason="needs the [notebooks] extra")
pytest.importorskip("ipywidgets", reason="needs the [notebooks] extra")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "aeanomaly-test"


def _kernel_manager(tmp_path: Path):
    """A KernelManager whose only kernelspec runs ipykernel on this very interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "aeanomaly test kernel", "language": "python",
    }))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)


def run_notebook(name: str, cwd: Path, tmp_path: Path, extra_cells: tuple[str, ...] = ()):
    """Execute ``notebooks/<name>`` in ``cwd`` (plus ``extra_cells`` at the end); returns the notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for src in extra_cells:
        nb.cells.append(nbformat.v4.new_code_cell(src))
    client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=600, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _has_png(nb) -> bool:
    return any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.fixture
def fast_env(monkeypatch):
    monkeypatch.setenv("AEANOMALY_NB_FAST", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.delenv("AEANOMALY_NB_BUNDLE", raising=False)
    monkeypatch.delenv("AEANOMALY_NB_LABELS", raising=False)


def test_committed_notebooks_match_the_generator_and_have_no_outputs():
    import subprocess

    res = subprocess.run([sys.executable, str(NOTEBOOKS / "make_notebooks.py"), "--check"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.slow
def test_quickstart_notebook_runs(fast_env, tmp_path):
    cwd = tmp_path / "run"
    cwd.mkdir()
    nb = run_notebook("01_quickstart.ipynb", cwd, tmp_path,
                      extra_cells=("import sys; print('KERNEL', sys.executable)",))
    assert _stdout(nb.cells[-1]).split()[-1] == sys.executable   # the kernel is this interpreter
    assert _has_png(nb), "heatmaps were not shown inline"
    bundle = cwd / "quickstart_work" / "bundle"
    assert (bundle / "calibration.json").is_file() and (bundle / "model.keras").is_file()


@pytest.mark.slow
def test_tuning_notebook_saves_the_threshold_that_score_uses(fast_env, tmp_path):
    from click.testing import CliRunner

    from aeanomaly.cli import main

    cwd = tmp_path / "run"
    cwd.mkdir()
    nb = run_notebook("02_threshold_tuning.ipynb", cwd, tmp_path, extra_cells=(
        "print('RESULT', json.dumps({'bundle': str(BUNDLE.resolve()), 'labels': str(LABELS.resolve()), "
        "'saved': SAVED, 'state': state, 'calibrated': calibrated, 'scores': scores.tolist(), 'y': y.tolist()}))",))
    out = json.loads(_stdout(nb.cells[-1]).split("RESULT", 1)[1])
    assert _has_png(nb)
    # the widget cell displayed its sliders
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
    bundle, saved = Path(out["bundle"]), out["saved"]
    threshold = saved["threshold"]
    assert threshold == pytest.approx(out["state"]["threshold"], rel=0, abs=0)

    # calibration.json records the operating point with when and why
    calib = json.loads((bundle / "calibration.json").read_text())
    entry = calib["log"][-1]
    assert entry["what"] == "set_threshold" and entry["threshold"] == threshold
    assert entry["reason"].startswith("02_threshold_tuning")
    when = dt.datetime.fromisoformat(entry["when"])
    assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 3600
    assert calib["scan"]["threshold"] == threshold and calib["scan"]["manual"] is True
    ev = entry["evidence"]
    assert ev["threshold"] == threshold and ev["n"] == len(out["y"])
    s, y = np.array(out["scores"]), np.array(out["y"], bool)
    assert ev["tp"] == int(np.sum((s > threshold) & y)) and ev["fp"] == int(np.sum((s > threshold) & ~y))
    assert ev["sensitivity"] >= 0.8   # the notebook starts at sensitivity >= MIN_SENSITIVITY = 0.8

    # The saved threshold must change what `aeanomaly score` says, or the check below could pass with
    # the old calibrated threshold still in force: it must differ from it and relabel at least one scan.
    calibrated = out["calibrated"]   # det.calibrator_.threshold_ before the notebook saved (inf allowed)
    assert threshold != calibrated

    def labels_at(t, scores):
        return ["abnormal" if v > t else "normal" for v in scores]   # the package's rule: strictly >

    if labels_at(threshold, s) == labels_at(calibrated, s):
        # the notebook's choice splits the labelled scans like the calibrated threshold: move the
        # operating point, through the same public API, into a gap between two scan scores where the
        # labels must change
        from aeanomaly.bundle import save_operating_point

        u = np.unique(s)
        gaps = (u[:-1] + u[1:]) / 2
        threshold = float(next(g for g in gaps if labels_at(g, s) != labels_at(calibrated, s)))
        entry = save_operating_point(bundle, threshold=threshold, reason="test: a threshold that relabels scans")
        assert entry["threshold"] == threshold
        assert json.loads((bundle / "calibration.json").read_text())["scan"]["threshold"] == threshold
    assert labels_at(threshold, s) != labels_at(calibrated, s)

    # `aeanomaly score` labels with exactly that threshold
    labels_csv = Path(out["labels"])
    res = CliRunner().invoke(main, ["score", str(bundle), str(labels_csv.parent / "normal"),
                                    str(labels_csv.parent / "abnormal"), "--out", str(tmp_path / "scored"),
                                    "--heatmaps", "none", "--overlays", "0", "--no-report", "--quiet"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "scored" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(out["y"])
    labels = [r["label"] for r in rows]
    cli_scores = np.array([float(r["scan_score"]) for r in rows])
    # same scans, same order (normal/, then abnormal/ as in labels.csv), same scores as in the notebook
    np.testing.assert_allclose(cli_scores, s, rtol=1e-4)
    assert labels == labels_at(threshold, cli_scores)
    assert labels == labels_at(threshold, s)
    # ... and not what the old calibrated threshold would have said
    assert labels != labels_at(calibrated, cli_scores)
