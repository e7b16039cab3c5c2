"""Generate notebooks/01_quickstart.ipynb and notebooks/02_threshold_tuning.ipynb (without outputs).

    python notebooks/make_notebooks.py          # rewrite both notebooks
    python notebooks/make_notebooks.py --check  # exit 1 if a committed notebook differs

Edit the cells here, not in the .ipynb files, so the two stay in step; cell ids are stable so that
regenerating gives the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

FAST_SWITCH = '''\
import os
from pathlib import Path

# AEANOMALY_NB_FAST=1: tiny phantoms and a few epochs (CI runs this notebook in about a minute).
FAST = os.environ.get("AEANOMALY_NB_FAST", "0") == "1"'''

QUICKSTART = [
    ("md", """\
# aeanomaly quickstart

Learn what healthy CT looks like from **normal scans only**, then ask of new scans *whether* they look
abnormal (a calibrated label with a p-value) and *where* (a residual heatmap and a lesion table).

Everything here runs on synthetic chest CT phantoms written by `aeanomaly.datasets.synthetic`, so no
download is needed, and uses only the public Python API:

| step | API |
|---|---|
| data | `write_phantom_set(out_dir, n_normal, n_abnormal, ...)`, `find_scans(folder)` |
| train + calibrate | `AnomalyDetector(...).fit(normal_paths)` |
| score | `det.score_scan(path)` → `ScanResult`, `det.score(paths)`, `det.iter_scores(paths)` (one at a time, the next read while this one is scored), `det.decision_function(paths)` |
| look | `aeanomaly.figures.scan_figure(result)` |
| keep | `det.save(bundle)`, `AnomalyDetector.load(bundle)` |

Set `AEANOMALY_NB_FAST=1` for a tiny run (CI); the default is a fuller run (a few minutes on a CPU)."""),
    ("code", FAST_SWITCH + '''

%matplotlib inline
import numpy as np
from IPython.display import display

from aeanomaly.datasets.synthetic import write_phantom_set
from aeanomaly.detector import AnomalyDetector
from aeanomaly.io import find_scans
from aeanomaly.figures import scan_figure

WORK = Path("quickstart_work")           # everything this notebook writes goes here
if FAST:
    N_TRAIN, N_TEST = 10, 3               # normal training scans; normal + abnormal test scans each
    PHANTOM = dict(shape=(6, 64, 64), spacing=(6.0, 5.5, 5.5))
    MODEL = dict(size=64, depth=3, base_filters=8, latent_dim=16, epochs=3, batch_size=8, learning_rate=3e-3,
                 blob_gate=0.0)
else:
    N_TRAIN, N_TEST = 48, 8
    PHANTOM = dict(shape=(24, 128, 128), spacing=(5.0, 2.7, 2.7))
    MODEL = dict(size=64, epochs=12, blob_gate=0.0)
# blob_gate=0: these phantom lesions are 15-30 mm plateaus; the default gate is for lung nodules (README)
print("fast" if FAST else "full", "run in", WORK.resolve())'''),
    ("md", """\
## 1. Data: normal scans to learn from, and new patients to score

`write_phantom_set` writes NIfTI volumes in Hounsfield units with a real affine: `normal/`,
`abnormal/` (with injected lesions), `masks/` and `labels.csv`. Training uses normal scans only."""),
    ("code", '''\
train_dir = WORK / "train"
test_dir = WORK / "test"
write_phantom_set(train_dir, N_TRAIN, 0, region="chest", seed=1, overwrite=True, **PHANTOM)
write_phantom_set(test_dir, N_TEST, N_TEST, region="chest", seed=2, overwrite=True,
                  lesions_per_scan=(2, 3), size_mm=(15, 30), **PHANTOM)
normal_paths = find_scans(train_dir / "normal")
test_paths = find_scans(test_dir / "normal") + find_scans(test_dir / "abnormal")
truth = ["normal"] * N_TEST + ["abnormal"] * N_TEST
print(len(normal_paths), "normal training scans;", len(test_paths), "test scans")'''),
    ("md", """\
## 2. Fit: train the autoencoder and calibrate the threshold

`fit` splits the normal scans into training, validation and **calibration** scans (never seen in
training). The calibrator is fitted on the calibration scans' scores: its `threshold_` is set for
`target_fpr` (here 20 %, since there are only a few calibration scans), and `p_value(score)` says how
unusual a score is among normals. `pixel_threshold_` is the residual level that outlines lesions."""),
    ("code", '''\
det = AnomalyDetector(window="lung", target_fpr=0.2, calib_fraction=0.4, val_fraction=0.15, seed=0, **MODEL)
det.fit(normal_paths, verbose=0 if FAST else 1)
print(det.calibrator_)
print("pixel threshold:", round(det.pixel_threshold_, 4))
print("final training loss:", round(det.history_["loss"][-1], 4))'''),
    ("md", """\
## 3. Score new scans

`score_scan` returns a `ScanResult`: `scan_score` (higher = more anomalous), `p_value`, `label`
(`abnormal` when `scan_score > det.calibrator_.threshold_`), per-slice scores, the residual `heatmap`
`(z, size, size)` on the model grid and a list of `lesions` (size in mm, position in RAS mm)."""),
    ("code", '''\
results = det.score(test_paths)
print(f"{'scan':<24}{'truth':<10}{'score':>9}{'p':>7}  label     lesions")
for r, t in zip(results, truth):
    print(f"{Path(r.source).name:<24}{t:<10}{r.scan_score:9.4f}{r.p_value:7.3f}  {r.label:<9} {len(r.lesions)}")'''),
    ("md", """\
## 4. Where: heatmaps inline

The top-scoring slices of the most anomalous scan and of the least anomalous one: CT on top; below,
residuals above the pixel threshold (inferno) and detected lesions (cyan outlines)."""),
    ("code", '''\
order = np.argsort([r.scan_score for r in results])
for i in (order[-1], order[0]):
    display(scan_figure(results[i], pixel_threshold=det.pixel_threshold_))'''),
    ("code", '''\
top = results[order[-1]]
print("heatmap on the model grid:", top.heatmap.shape, "-> in the input's grid:", top.heatmap_in_input_grid().shape)
for lesion in top.lesions[:3]:
    print({k: lesion[k] for k in ("id", "slice_start", "slice_end", "equivalent_diameter_mm", "p_value", "severity") if k in lesion})'''),
    ("md", """\
## 5. Keep the detector: a bundle

A bundle is a folder (JSON + `.keras`, nothing pickled) that the CLI reads too:
`aeanomaly score quickstart_work/bundle SCANS --out results`. Tune its threshold in
`02_threshold_tuning.ipynb`."""),
    ("code", '''\
bundle = det.save(WORK / "bundle", overwrite=True)
again = AnomalyDetector.load(bundle)
same = np.allclose(again.decision_function(test_paths[:2]), [r.scan_score for r in results[:2]], rtol=1e-5)
print("saved", bundle, "- reloaded scores match:", same)
assert same'''),
]

TUNING = [
    ("md", """\
# Threshold tuning

A detector's scan threshold is first set on held-out **normal** scans for a target false-positive
rate. With a few **labelled** scans (normal and abnormal) you can see what that costs in
sensitivity, and move the operating point where your use needs it. This notebook:

1. loads a bundle and a labelled set (a `labels.csv` with `scan,label` columns);
2. plots the score distributions of normals and abnormals with the calibrator's fitted density;
3. draws ROC and PR curves with the operating point;
4. gives a slider over the threshold and the target FPR that updates the confusion matrix,
   sensitivity, specificity and example overlays live;
5. saves the chosen operating point into the bundle, recording when and why in `calibration.json`;
   `aeanomaly score` then uses exactly that threshold.

Environment: `AEANOMALY_NB_BUNDLE` (a bundle to tune; default: fit a small one here),
`AEANOMALY_NB_LABELS` (a `labels.csv`; default: write labelled phantoms), `AEANOMALY_NB_FAST=1`
(tiny, for CI).

A scan is abnormal when `scan_score > threshold` (strictly), in the notebook and in the CLI alike."""),
    ("code", FAST_SWITCH + '''
BUNDLE = os.environ.get("AEANOMALY_NB_BUNDLE")   # None: fit a small bundle below
LABELS = os.environ.get("AEANOMALY_NB_LABELS")   # None: write a labelled phantom set below
MIN_SENSITIVITY = 0.8                            # the starting operating point: sensitivity >= this

%matplotlib inline
import csv
import json

import numpy as np
from IPython.display import display

from aeanomaly.detector import AnomalyDetector
from aeanomaly.bundle import save_operating_point
from aeanomaly.tuning import ThresholdTuner, labels_as_bool
from aeanomaly.figures import examples_figure, roc_pr_figure, score_distribution_figure, tuning_figure

WORK = Path("tuning_work")
PHANTOM = dict(shape=(6, 64, 64), spacing=(6.0, 5.5, 5.5)) if FAST else dict(shape=(24, 128, 128), spacing=(5.0, 2.7, 2.7))'''),
    ("md", """\
## A bundle and a labelled set

Only when none is given: fit a small detector on normal phantoms, and write a labelled set of other
phantom patients (normal and abnormal, with `labels.csv`)."""),
    ("code", '''\
from aeanomaly.datasets.synthetic import write_phantom_set
from aeanomaly.io import find_scans

if BUNDLE is None:
    n_train, model = (10, dict(size=64, depth=3, base_filters=8, latent_dim=16, epochs=3, batch_size=8,
                               learning_rate=3e-3)) if FAST else (48, dict(size=64, epochs=12))
    write_phantom_set(WORK / "train", n_train, 0, region="chest", seed=1, overwrite=True, **PHANTOM)
    fitted = AnomalyDetector(window="lung", target_fpr=0.2, calib_fraction=0.4, val_fraction=0.15, seed=0, **model)
    fitted.fit(find_scans(WORK / "train" / "normal"), verbose=0 if FAST else 1)
    BUNDLE = fitted.save(WORK / "bundle", overwrite=True)
if LABELS is None:
    n = 5 if FAST else 16
    LABELS = write_phantom_set(WORK / "labelled", n, n, region="chest", seed=3, overwrite=True,
                               lesions_per_scan=(1, 3), size_mm=(10, 30), **PHANTOM)
BUNDLE, LABELS = Path(BUNDLE), Path(LABELS)
print("bundle:", BUNDLE, "\\nlabels:", LABELS)'''),
    ("code", '''\
det = AnomalyDetector.load(BUNDLE)
with open(LABELS, newline="", encoding="utf-8") as fh:
    rows = list(csv.DictReader(fh))
paths = [LABELS.parent / r["scan"] for r in rows]       # paths in labels.csv are relative to it
y = labels_as_bool([r["label"] for r in rows])          # True = abnormal
print(det.calibrator_, f"\\n{len(paths)} labelled scans: {int(y.sum())} abnormal, {int((~y).sum())} normal")'''),
    ("md", """\
## Score the labelled scans

`det.score(paths)` keeps the heatmaps for the example overlays below (for a large set, use
`det.decision_function(paths)`, which returns only the scan scores, or loop over
`det.iter_scores(paths)`, which holds one result at a time and reads the next scan meanwhile)."""),
    ("code", '''\
results = det.score(paths)
scores = np.array([r.scan_score for r in results])
tuner = ThresholdTuner(y, scores, det.calibrator_, names=[p.name for p in paths])
calibrated = tuner.calibrated
print(f"AUROC {tuner.curves_.auroc:.3f}, AUPRC {tuner.curves_.auprc:.3f}")
print("at the calibrated threshold:", tuner.at(calibrated))'''),
    ("md", """\
## Score distributions and the calibrator's fitted density

Histograms of the labelled normals (blue) and abnormals (red); the black curve is the density the
calibrator fitted to the bundle's held-out normal scores (the rug marks those scores); the gray dotted
line is the calibrated threshold."""),
    ("code", '''\
display(score_distribution_figure(tuner.normal_scores, tuner.abnormal_scores, threshold=calibrated,
                                  calibrator=det.calibrator_, calibrated_threshold=calibrated))'''),
    ("md", """\
## ROC and PR curves with the operating point

Every distinct operating point of the labelled set is a row of `tuner.table_`; thresholds sit midway
between neighbouring scores, so a label never hinges on rounding."""),
    ("code", '''\
display(roc_pr_figure(tuner.curves_, tuner.at(calibrated)))
tab = tuner.table_
print(f"{'threshold':>10} {'TP':>3} {'FP':>3} {'TN':>3} {'FN':>3} {'sens':>5} {'spec':>5} {'prec':>5}")
for i in range(len(tab)):
    print(f"{tab.threshold[i]:10.5f} {tab.tp[i]:3d} {tab.fp[i]:3d} {tab.tn[i]:3d} {tab.fn[i]:3d} "
          f"{tab.sensitivity[i]:5.2f} {tab.specificity[i]:5.2f} {tab.precision[i]:5.2f}")'''),
    ("md", """\
## Choose the operating point, live

Start from the most specific threshold that keeps sensitivity ≥ `MIN_SENSITIVITY` on the labelled set.
Move **threshold** directly, or **target FPR**, which refits the calibrator's threshold on the bundle's
normal calibration scores (what `aeanomaly score --target-fpr` does). The dashboard shows the confusion
matrix, sensitivity and specificity on the labelled set, and the scans nearest the threshold (the
ones whose label changes next), coloured TP / FP / TN / FN.

`show(threshold)` is the callback; it runs once here so that the cell works without a live kernel
front-end (e.g. in CI), then the sliders are displayed."""),
    ("code", '''\
import ipywidgets as widgets
from IPython.display import clear_output

start = tuner.threshold_for_sensitivity(MIN_SENSITIVITY)
state = {"threshold": start, "target_fpr": None}   # the current operating point and how it was chosen
dashboard = widgets.Output()


def show(threshold, target_fpr=None):
    """Redraw the dashboard for ``threshold``; remember it (and the target FPR it came from, if any)."""
    state.update(threshold=float(threshold), target_fpr=target_fpr)
    point = tuner.at(threshold)
    with dashboard:
        clear_output(wait=True)
        how = f"target FPR {target_fpr:.3g} (calibrated)" if target_fpr is not None else "threshold"
        print(f"chosen by {how}: {point}")
        display(tuning_figure(tuner, threshold))
        display(examples_figure(results, y, threshold, max_examples=6, pixel_threshold=det.pixel_threshold_))


lo, hi = tuner.score_range()
threshold_slider = widgets.FloatSlider(value=start, min=lo, max=hi, step=(hi - lo) / 500, readout_format=".5f",
                                       description="threshold", continuous_update=False,
                                       layout=widgets.Layout(width="600px"))
fpr_slider = widgets.FloatLogSlider(value=det.target_fpr_, base=10, min=-3, max=np.log10(0.5), step=0.02,
                                    readout_format=".3f", description="target FPR", continuous_update=False,
                                    layout=widgets.Layout(width="600px"))
_syncing = False


def on_threshold(change):
    if not _syncing:
        show(change["new"])


def on_fpr(change):
    global _syncing
    t = tuner.threshold_for_target_fpr(change["new"])
    _syncing = True
    try:
        threshold_slider.value = float(np.clip(t, threshold_slider.min, threshold_slider.max))
    finally:
        _syncing = False
    show(t, target_fpr=change["new"])


threshold_slider.observe(on_threshold, names="value")
fpr_slider.observe(on_fpr, names="value")
show(start)                                      # runs headless too
display(widgets.VBox([threshold_slider, fpr_slider, dashboard]))'''),
    ("md", """\
## Save the chosen operating point into the bundle

`save_operating_point` applies it with `AnomalyDetector.set_threshold` (a threshold, or a target FPR
refitted on the bundle's normal scores) and rewrites `calibration.json` atomically. The log entry
records **when** (UTC), **why** (`reason`) and the evidence (confusion matrix and rates on the
labelled set). The button saves whatever the sliders show; the line below saves it when the notebook
runs top to bottom."""),
    ("code", '''\
def save_now(reason):
    point = tuner.at(state["threshold"])
    if state["target_fpr"] is not None:
        return save_operating_point(BUNDLE, target_fpr=state["target_fpr"], reason=reason, evidence=point,
                                    detector=det)
    return save_operating_point(BUNDLE, threshold=state["threshold"], reason=reason, evidence=point, detector=det)


reason_box = widgets.Text(value=f"02_threshold_tuning: sensitivity >= {MIN_SENSITIVITY} on {len(paths)} labelled scans "
                                f"({LABELS.name})", description="reason", layout=widgets.Layout(width="600px"))
save_button = widgets.Button(description="save to bundle", button_style="warning")
saved_out = widgets.Output()


def on_save(_):
    with saved_out:
        clear_output()
        entry = save_now(reason_box.value)
        print(f"saved threshold {entry['threshold']} at {entry['when']}: {entry['reason']}")


save_button.on_click(on_save)
display(widgets.VBox([reason_box, save_button, saved_out]))'''),
    ("code", '''\
SAVED = save_now(reason_box.value)          # the operating point the sliders show
print(json.dumps(SAVED, indent=1))'''),
    ("md", """\
## Check: the bundle now labels scans with that threshold

A fresh load of the bundle (what `aeanomaly score` does) has the saved threshold, and its labels are
`scan_score > threshold`. From a shell: `aeanomaly score BUNDLE SCANS --out results`."""),
    ("code", '''\
fresh = AnomalyDetector.load(BUNDLE)
assert fresh.calibrator_.threshold_ == SAVED["threshold"], (fresh.calibrator_.threshold_, SAVED["threshold"])
log = json.loads((BUNDLE / "calibration.json").read_text())["log"]
print("last calibration.json log entry:", json.dumps(log[-1], indent=1))
check = fresh.score_scan(paths[0])
assert (check.label == "abnormal") == (check.scan_score > SAVED["threshold"])
print(f"{paths[0].name}: score {check.scan_score:.5f} -> {check.label}")
print(f"now run: aeanomaly score {BUNDLE} {LABELS.parent} --out results")'''),
]


def build(cells: list[tuple[str, str]], prefix: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(cells):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"{prefix}-{i:02d}"
        nb.cells.append(cell)
    return nb


NOTEBOOKS = {"01_quickstart.ipynb": (QUICKSTART, "quickstart"), "02_threshold_tuning.ipynb": (TUNING, "tuning")}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, (cells, prefix) in NOTEBOOKS.items():
        text = nbformat.writes(build(cells, prefix)) + "\n"
        path = HERE / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print("wrote", path)
    if stale:
        print("out of date (run python notebooks/make_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
