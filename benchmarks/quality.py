"""Detection quality: real lung CT with synthetic lesions, baselines, scoring defaults, lung region, and
a phantom learning curve.

    python benchmarks/quality.py            # full run  → benchmarks/results/quality.json  (~30 min, 2 cores)
    python benchmarks/quality.py --quick    # smoke run → benchmarks/results/quality_quick.json

Real CT (``kmader-lungs-64`` in ``$AEANOMALY_SHARED_DATA``): 213 axial lung slices of LUNA16 scans with
manual lung masks. The source gives no patient ids and repeats some patients, so near-duplicate
slices (pixel correlation ≥ 0.95 and lung-mask Dice ≥ 0.9) are linked into *pseudo-patients* and every
split is by pseudo-patient: ``fit`` (train / validation / calibration, split again inside
``AnomalyDetector.fit`` by pseudo-patient), ``tune`` (chooses the scoring settings) and ``test``
(reported). Lesions (``quality_lesions.py``: six kinds, three size classes) are injected into the tune
and test slices; the scoring settings are chosen on the tune slices with the two *tuning kinds*
only, and the test table reports the four *held-out kinds* separately, so the choice is not fitted to
the lesions it is judged on.

Every detector variant is scored with the package's own code path (``AnomalyDetector.analyse_prepared``,
``find_lesions`` per slice) on the same slices; baselines swap only the reconstruction (PCA, or none
for the intensity threshold) and keep the same region, smoothing and calibration. The chosen bundle
is then run through ``aeanomaly evaluate`` itself as a cross-check. Calibration (scan threshold at the
target FPR, pixel threshold) always uses normal slices of calibration pseudo-patients never trained
on; the observed FPR is measured on the held-out test normals.

Phantoms: the same protocol on chest phantoms, for the learning curve (quality against the number of
normal training slices), through ``aeanomaly fit`` / ``aeanomaly evaluate``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import quality_lesions as QL  # noqa: E402

DUP_CORR, DUP_LUNG_DICE = 0.95, 0.9
TARGET_FPR = 0.05
AEANOMALY = str(Path(sys.executable).with_name("aeanomaly"))


# ------------------------------------------------------------------------------------------------
# data: real slices, pseudo-patients, splits, lesion sets
# ------------------------------------------------------------------------------------------------

def shared_data() -> Path:
    return Path(os.environ.get("AEANOMALY_SHARED_DATA", _common.ROOT.parent / "shared" / "data"))


def load_kmader64(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images float32 ``(n, 64, 64)`` in [0, 1] (through ``aeanomaly.io.load_scan``) and lung masks."""
    from aeanomaly.io import load_label, load_scan

    names = sorted(p.name for p in (root / "images").glob("*.png"))
    imgs = [load_scan(root / "images" / n).hu[0] for n in names]
    lungs = [load_label(root / "masks" / n)[0] > 0 for n in names]
    return np.stack(imgs).astype(np.float32), np.stack(lungs), names


def pseudo_patients(images: np.ndarray, lungs: np.ndarray, corr_min: float = DUP_CORR,
                    dice_min: float = DUP_LUNG_DICE) -> np.ndarray:
    """Group id per slice: connected components of the graph linking near-duplicate slices (pixel
    correlation ≥ ``corr_min`` and lung-mask Dice ≥ ``dice_min``: adjacent slices of one scan)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(images)
    t = images.reshape(n, -1).astype(np.float64)
    t = (t - t.mean(1, keepdims=True)) / (t.std(1, keepdims=True) + 1e-9)
    corr = t @ t.T / t.shape[1]
    m = lungs.reshape(n, -1).astype(np.float64)
    area = m.sum(1)
    dice = 2 * (m @ m.T) / np.maximum(area[:, None] + area[None, :], 1)
    return connected_components(csr_matrix((corr >= corr_min) & (dice >= dice_min)), directed=False)[1]


def split_by_group(groups: np.ndarray, fractions: dict, seed: int) -> dict:
    """Slice indices per side, whole groups to one side, sides filled to their slice fractions."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.unique(groups))
    sides, goal = list(fractions), np.cumsum(list(fractions.values())) * len(groups)
    out, filled, k = {s: [] for s in sides}, 0, 0
    for g in order:
        while k < len(sides) - 1 and filled >= goal[k]:
            k += 1
        members = np.flatnonzero(groups == g).tolist()
        out[sides[k]] += members
        filled += len(members)
    return {s: sorted(v) for s, v in out.items()}


def lesion_set(images, lungs, idx, kinds, seed) -> list[dict]:
    """One abnormal slice per (slice, kind); size classes cycle so each kind gets all sizes."""
    rng = np.random.default_rng(seed)
    sizes = list(QL.SIZES)
    out = []
    for j, i in enumerate(idx):
        for k, kind in enumerate(kinds):
            img, mask, rec = QL.inject(images[i], lungs[i], kind, sizes[(j + k) % 3], rng)
            out.append({"image": img, "mask": mask, "lung": lungs[i], "source": int(i), **rec})
    return out


def write_tiff(path: Path, img01: np.ndarray, pixel_mm: float) -> Path:
    """uint16 TIFF with its pixel size (cm resolution tags), read back by ``load_scan`` as not-HU."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    res = 10.0 / pixel_mm
    tifffile.imwrite(path, np.round(np.clip(img01, 0, 1) * 65535).astype(np.uint16),
                     resolution=(res, res), resolutionunit="CENTIMETER")
    return path


def stack_scan(images: np.ndarray, pixel_mm: float):
    """Independent slices as one not-HU Scan (every step of the pipeline is per slice)."""
    from aeanomaly.io.scan import internal_affine
    from aeanomaly.io.validate import checked_scan

    sp = (1.0, pixel_mm, pixel_mm)
    return checked_scan(np.ascontiguousarray(images, np.float32), sp, internal_affine(sp), "stack",
                        {"format": "benchmark", "hu": False})


# ------------------------------------------------------------------------------------------------
# scoring one variant on the same slices
# ------------------------------------------------------------------------------------------------

_RECON_CACHE: dict = {}


def model_reconstruction(det):
    """The detector's own reconstruction, memoised by input content: the scoring variants on one set of
    slices share one inference pass (the reconstruction does not depend on scoring settings)."""
    import hashlib

    def reconstruct(x):
        key = (id(det.model_), hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest())
        if key not in _RECON_CACHE:
            _RECON_CACHE[key] = det.reconstruct(x)
        return _RECON_CACHE[key]

    return reconstruct


def analyse(det, images: np.ndarray, pixel_mm: float, recon=None):
    """The product's scoring stage (``AnomalyDetector.analyse_prepared``) of independent slices, with the
    detector's reconstruction or a baseline's (``recon``: prepared slices → reconstructions)."""
    prep = det.prepare(stack_scan(images, pixel_mm))
    recon_all = np.zeros(prep.x.shape[:3], np.float32)
    if prep.keep.any():
        recon_all[prep.keep] = (recon or model_reconstruction(det))(prep.x[prep.keep])
    a = det.analyse_prepared(prep, recon_all, is_hu=False)
    return prep, a.heatmap, a.mask, a.slice_scores


def calibrate_variant(det, calib_images, pixel_mm, recon=None) -> dict:
    """The product's calibration (``Calibration.fit``) with each normal calibration slice as one scan."""
    from aeanomaly.calibrate import Calibration, NormalStats

    _, heat, mask, scores = analyse(det, calib_images, pixel_mm, recon)
    stats = NormalStats()
    for k in np.flatnonzero(np.isfinite(scores)):
        stats.add(f"slice{k}", scores[k], scores[k:k + 1], heat[k:k + 1], mask[k:k + 1])
    cal = Calibration.fit(stats, target_fpr=TARGET_FPR, pixel_quantile=det.pixel_quantile)
    return {"cal": cal.scan, "pixel_threshold": cal.pixel_threshold, "peaks": cal.normal_peaks,
            "n_calib": len(stats), "scores": np.asarray(stats.scan_scores)}


def labelled_set(images, lungs, idx, kinds, seed) -> dict:
    """Normal slices ``idx`` plus one lesion slice per (slice, kind): arrays and per-slice facts."""
    les = lesion_set(images, lungs, idx, kinds, seed)
    n = len(idx)
    return {
        "x": np.concatenate([images[idx], np.stack([r["image"] for r in les])]),
        "truth": np.concatenate([np.zeros((n, *images.shape[1:]), bool), np.stack([r["mask"] for r in les])]),
        "lung": np.concatenate([lungs[idx], np.stack([r["lung"] for r in les])]),
        "y": np.r_[np.zeros(n, int), np.ones(len(les), int)],
        "kind": ["normal"] * n + [r["kind"] for r in les],
        "size": [""] * n + [r["size"] for r in les],
        "records": [{k: v for k, v in r.items() if k not in ("image", "mask", "lung")} for r in les],
    }


# ------------------------------------------------------------------------------------------------
# one variant on one labelled set
# ------------------------------------------------------------------------------------------------

def evaluate_variant(det, calib_x, ds, pixel_mm, fixed_mae_rule: bool = False, recon=None) -> dict:
    """Scan (= slice), per-kind, pixel and lesion-detection metrics of ``det`` as it is configured now.

    Calibration on ``calib_x`` (normal slices of calibration pseudo-patients): split-conformal scan
    threshold at TARGET_FPR (or, with ``fixed_mae_rule``, the seed papers' fixed threshold mean + 2 SD
    of the normal scores) and the pixel threshold at ``det.pixel_quantile`` of normal heatmap values.
    Pixel metrics are inside the manual lung mask (the same pixels for every variant).
    """
    from aeanomaly.evaluate import classification_metrics, detection_rate_by_size, lesion_detection, pixel_metrics
    from aeanomaly.localize import find_lesions

    c = calibrate_variant(det, calib_x, pixel_mm, recon)
    prep, heat, mask, scores = analyse(det, ds["x"], pixel_mm, recon)
    s = np.nan_to_num(scores, nan=-np.inf)
    if fixed_mae_rule:
        cs = c["scores"]
        thr = float(cs.mean() + 2 * cs.std())
        pred = s > thr
    else:
        thr = float(c["cal"].threshold_)
        pred = np.asarray(c["cal"].predict(s), bool)
    _, labels = find_lesions(heat, c["pixel_threshold"], prep.spacing, prep.affine, min_size_mm2=det.min_lesion_mm2,
                             opening_px=int(round(det.opening_mm / prep.spacing[1])), normal_peaks=c["peaks"],
                             connectivity3d=False)
    y, kinds = ds["y"], np.array(ds["kind"])
    out = {"scan": classification_metrics(y, scores, pred), "threshold": thr,
           "threshold_rule": "mean + 2 SD of normal scores" if fixed_mae_rule else f"split-conformal at FPR {TARGET_FPR}",
           "n_calibration_slices": c["n_calib"], "per_kind": {}}
    for kind in sorted(set(kinds) - {"normal"}):
        sel = (kinds == "normal") | (kinds == kind)
        m = classification_metrics(y[sel], scores[sel], pred[sel])
        out["per_kind"][kind] = {"auroc": m["auroc"], "auprc": m["auprc"], "sensitivity": m["sensitivity"]}
    held = np.isin(kinds, ("normal",) + QL.HELD_OUT_KINDS)
    tune = np.isin(kinds, ("normal",) + QL.TUNING_KINDS)
    out["held_out_kinds"] = {k: v for k, v in classification_metrics(y[held], scores[held], pred[held]).items()
                             if k in ("auroc", "auprc", "sensitivity")}
    out["tuning_kinds"] = {k: v for k, v in classification_metrics(y[tune], scores[tune], pred[tune]).items()
                           if k in ("auroc", "auprc", "sensitivity")}
    ab = np.flatnonzero(y == 1)
    out["pixel"] = pixel_metrics([heat[k] for k in ab], [ds["truth"][k] for k in ab], [ds["lung"][k] for k in ab],
                                 [labels[k] > 0 for k in ab])
    recs = []
    for k in ab:
        recs += lesion_detection(ds["truth"][k][None], labels[k][None] > 0, prep.spacing)
    out["lesion_detection_by_size"] = detection_rate_by_size(recs)
    nrm = np.flatnonzero(y == 0)
    out["false_lesions_per_normal_slice"] = float(np.mean([len(np.unique(labels[k][labels[k] > 0])) for k in nrm]))
    return out


class Params:
    """Temporarily set detector parameters (restored on exit)."""

    def __init__(self, det, **params):
        self.det, self.params = det, params

    def __enter__(self):
        self.old = {k: getattr(self.det, k) for k in self.params}
        self.det.set_params(**self.params)
        return self.det

    def __exit__(self, *exc):
        self.det.set_params(**self.old)


def pca_reconstruction(det, train_x, pixel_mm, variance: float = 0.95):
    """PCA fitted on the prepared training slices; returns (reconstruct function, n_components)."""
    from sklearn.decomposition import PCA

    prep = det.prepare(stack_scan(train_x, pixel_mm))
    flat = prep.x[prep.keep][..., 0].reshape(int(prep.keep.sum()), -1)
    pca = PCA(n_components=variance, svd_solver="full", random_state=0).fit(flat)

    def reconstruct(x):
        f = x[..., det.channels // 2].reshape(len(x), -1)
        return np.clip(pca.inverse_transform(pca.transform(f)), 0, 1).reshape(x.shape[:3]).astype(np.float32)

    return reconstruct, int(pca.n_components_)


def no_reconstruction(x):
    return np.zeros(x.shape[:3], np.float32)


# ------------------------------------------------------------------------------------------------
# real CT
# ------------------------------------------------------------------------------------------------

GRID = {"roi": ("body", "lung"), "residual_sign": ("abs", "positive"), "slice_score": ("mae", "p99", "p999", "topk"),
        "sigma_mm": (0.0, 5.5, 11.0)}


def fit_detector(work: Path, images, groups, idx, pixel_mm, epochs, seed, **params):
    from aeanomaly.detector import AnomalyDetector

    paths = [write_tiff(work / f"slice_{i:03d}.tif", images[i], pixel_mm) for i in idx]
    det = AnomalyDetector(window="lung", size=images.shape[1], epochs=epochs, val_fraction=0.12, calib_fraction=0.3,
                          target_fpr=TARGET_FPR, seed=seed, **params)
    t0 = time.perf_counter()
    det.fit(paths, groups=[int(groups[i]) for i in idx], verbose=0)
    ids = {p.name: i for p, i in zip(paths, idx)}
    split = {side: [ids[Path(p).name] for p in v] for side, v in det.split_.items()}
    return det, split, {"fit_s": round(time.perf_counter() - t0, 1), "epochs_run": len(det.history_.get("loss", [])),
                        "best_val_loss": float(np.min(det.history_["val_loss"])) if det.history_.get("val_loss") else None}


def tune_scoring(det, calib_x, tune, pixel_mm) -> tuple[dict, list[dict]]:
    """Scoring settings that maximise tune-set scan AUROC + pixel AUPRC (tuning kinds only)."""
    import itertools

    rows = []
    for values in itertools.product(*GRID.values()):
        p = dict(zip(GRID, values))
        with Params(det, **p):
            m = evaluate_variant(det, calib_x, tune, pixel_mm)
        rows.append({**p, "scan_auroc": m["scan"]["auroc"], "pixel_auprc": m["pixel"].get("pixel_auprc"),
                     "pixel_auroc": m["pixel"].get("pixel_auroc"), "dice": m["pixel"].get("dice")})
    best = max(rows, key=lambda r: (r["scan_auroc"] or 0) + (r["pixel_auprc"] or 0))
    return {k: best[k] for k in GRID}, rows


def unet_lung_head(det, images, lungs, train_idx, val_idx, epochs, seed):
    from aeanomaly.model.heads import SupervisedHead

    head = SupervisedHead(kind="unet", classes=["lung"], size=det.size, channels=det.channels,
                          window=det.window_.to_spec(), label_values=None, epochs=epochs, batch_size=16,
                          seed=seed, verbose=0, jit_compile=False)
    x = lambda idx: images[idx][..., None]  # noqa: E731  (64 px, not HU: the prepared slice is the image)
    head.fit(x(train_idx), lungs[train_idx].astype(np.int64), val=(x(val_idx), lungs[val_idx].astype(np.int64)))
    return head


def real_ct(work: Path, quick: bool, seed: int = 0) -> dict:
    root = shared_data() / "kmader-lungs-64"
    if not root.is_dir():
        return {"skipped": f"{root} is absent"}
    images, lungs, names = load_kmader64(root)
    pixel_mm = QL.PIXEL_MM
    groups = pseudo_patients(images, lungs)
    sides = split_by_group(groups, {"fit": 0.6, "tune": 0.15, "test": 0.25}, seed)
    tune = labelled_set(images, lungs, sides["tune"], QL.TUNING_KINDS, seed + 1)
    test = labelled_set(images, lungs, sides["test"], QL.KINDS, seed + 2)
    epochs = 3 if quick else 40
    res = {"data": {"set": "kmader-lungs-64", "n_slices": len(names), "n_pseudo_patients": int(groups.max() + 1),
                    "duplicate_link": {"pixel_correlation_min": DUP_CORR, "lung_dice_min": DUP_LUNG_DICE}, "pixel_mm_assumed": pixel_mm,
                    "n_slices_per_side": {k: len(v) for k, v in sides.items()},
                    "n_test_normal": int((test["y"] == 0).sum()), "n_test_abnormal": int(test["y"].sum()),
                    "n_tune_abnormal": int(tune["y"].sum()), "lesion_kinds": QL.KIND_DOC, "sizes_mm": QL.SIZES,
                    "tuning_kinds": QL.TUNING_KINDS, "held_out_kinds": QL.HELD_OUT_KINDS}, "models": {}, "test": {}}
    dets = {}
    for name, params in (("dae", {}), ("dae_ssim", {"loss": "mae_ssim"}), ("ae", {"skip": False, "noise_std": 0.0})):
        if quick and name == "dae_ssim":
            continue
        det, split, info = fit_detector(work / name, images, groups, sides["fit"], pixel_mm, epochs, seed, **params)
        dets[name] = det
        res["models"][name] = {"params": params, **info, "split_slices": {k: len(v) for k, v in split.items()}}
        print(f"[real] fitted {name}: {info}", flush=True)
    calib_x, train_idx = images[split["calib"]], split["train"]
    defaults = {k: getattr(dets["dae"], k) for k in GRID}
    chosen, grid_rows = tune_scoring(dets["dae"], calib_x, tune, pixel_mm)
    res["tuning"] = {"criterion": "tune-set scan AUROC + pixel AUPRC, tuning kinds only", "defaults_before": defaults,
                     "chosen": chosen, "grid": grid_rows}
    print(f"[real] chosen scoring {chosen} (defaults {defaults})", flush=True)
    T = res["test"]
    for name, det in dets.items():
        with Params(det, **defaults):
            T[f"{name} / package defaults"] = evaluate_variant(det, calib_x, test, pixel_mm)
        with Params(det, **chosen):
            T[f"{name} / tuned scoring"] = evaluate_variant(det, calib_x, test, pixel_mm)
    with Params(dets["ae"], roi="body", residual_sign="abs", slice_score="mae", sigma_mm=0.0):
        T["seed paper: AE, image MAE, fixed threshold"] = evaluate_variant(dets["ae"], calib_x, test, pixel_mm,
                                                                          fixed_mae_rule=True)
    det = dets["dae"]
    with Params(det, **chosen):
        fn, ncomp = pca_reconstruction(det, images[train_idx], pixel_mm)
        T[f"baseline: PCA ({ncomp} components)"] = evaluate_variant(det, calib_x, test, pixel_mm, recon=fn)
        T["baseline: intensity threshold"] = evaluate_variant(det, calib_x, test, pixel_mm, recon=no_reconstruction)
    res["lung_region"] = lung_region_comparison(det, chosen, images, lungs, split, calib_x, test, pixel_mm,
                                                3 if quick else 30, seed)
    return res


def lung_region_comparison(det, chosen, images, lungs, split, calib_x, test, pixel_mm, epochs, seed) -> dict:
    """Residuals in the body, in the unsupervised lung region, and in the U-Net's predicted lungs."""
    from aeanomaly.evaluate import dice_iou

    head = unet_lung_head(det, images, lungs, split["train"], split["val"], epochs, seed)
    n = int((test["y"] == 0).sum())  # the normal test slices (the lesion slices are copies of them)
    pred = head.predict_labels(test["x"][:n][..., None])
    dice, _ = dice_iou(pred, test["lung"][:n].astype(np.int16), 1)
    out = {"unet_test_dice": float(dice[0]), "sign": chosen["residual_sign"], "rows": {}}
    base = {k: v for k, v in chosen.items() if k != "roi"}
    for roi in ("body", "lung"):
        with Params(det, roi=roi, **base):
            out["rows"][f"roi={roi}" + (" (unsupervised lung mask)" if roi == "lung" else "")] = \
                evaluate_variant(det, calib_x, test, pixel_mm)
    det.set_head(head)
    try:
        with Params(det, **base):
            out["rows"]["U-Net predicted lungs"] = evaluate_variant(det, calib_x, test, pixel_mm)
    finally:
        det.set_head(None)
    return out


# ------------------------------------------------------------------------------------------------
# phantoms: learning curve through the CLI, scan aggregation
# ------------------------------------------------------------------------------------------------

PHANTOM_SHAPE, PHANTOM_SPACING = (16, 96, 96), (5.0, 3.6, 3.6)


def cli(*args) -> None:
    r = subprocess.run([AEANOMALY, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"aeanomaly {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr[-2000:]}")


def phantoms(work: Path, quick: bool) -> dict:
    import json

    from aeanomaly.datasets.synthetic import write_phantom_set
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.scoring import SCAN_AGGREGATIONS, scan_score
    from sklearn.metrics import roc_auc_score

    counts = (4, 8) if quick else (6, 12, 24, 48)
    epochs = 2 if quick else 20
    n_test = 4 if quick else 20
    train, test = work / "train", work / "test"
    write_phantom_set(train, max(counts), 0, "chest", seed=11, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
    write_phantom_set(test, n_test, n_test, "chest", seed=12, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
    all_train = sorted((train / "normal").glob("*.nii.gz"))
    rows = []
    for n in counts:
        d = work / f"normal_{n}"
        d.mkdir()
        for p in all_train[:n]:
            (d / p.name).symlink_to(p)
        bundle, ev = work / f"bundle_{n}", work / f"eval_{n}"
        t0 = time.perf_counter()
        cli("fit", "--normal-dir", d, "--out", bundle, "--size", 64, "--epochs", epochs, "--seed", 0, "--quiet")
        fit_s = time.perf_counter() - t0
        cli("evaluate", bundle, "--normal-dir", test / "normal", "--abnormal-dir", test / "abnormal", "--masks", test / "masks",
            "--out", ev, "--overlays", 0, "--quiet")
        m = json.loads((ev / "metrics.json").read_text())
        info = json.loads((bundle / "bundle.json").read_text())
        n_train = len(info.get("split", {}).get("train", []))
        rows.append({"n_scans": n, "n_train_scans": n_train, "n_train_slices": n_train * PHANTOM_SHAPE[0],
                     "fit_s": round(fit_s, 1),
                     "scan": {k: m["scan"].get(k) for k in ("auroc", "auprc", "sensitivity", "specificity",
                                                            "observed_fpr")},
                     "slice": {k: m.get("slice", {}).get(k) for k in ("auroc", "auprc")},
                     "pixel": {k: m.get("pixel", {}).get(k) for k in ("pixel_auroc", "pixel_auprc", "dice", "iou")},
                     "lesion_detection_all": next((r for r in m.get("lesion_detection_by_size", []) if r.get("all")),
                                                  None)})
        print(f"[phantoms] n={n}: {rows[-1]['scan']} {rows[-1]['pixel']}", flush=True)
    det = AnomalyDetector.load(work / f"bundle_{max(counts)}")
    scans = sorted((test / "normal").glob("*.nii.gz")) + sorted((test / "abnormal").glob("*.nii.gz"))
    y = np.r_[np.zeros(n_test), np.ones(n_test)]
    sl = [det.score_scan(p).slice_scores for p in scans]
    agg = {a: float(roc_auc_score(y, [scan_score(s, a) for s in sl])) for a in SCAN_AGGREGATIONS}
    return {"shape_zyx": PHANTOM_SHAPE, "spacing_mm": PHANTOM_SPACING, "model_size_px": 64, "epochs": epochs,
            "n_test_normal": n_test, "n_test_abnormal": n_test, "learning_curve": rows,
            "scan_aggregation_auroc": agg}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (a few epochs)")
    ap.add_argument("--only", choices=("real", "phantoms"), help="run one part")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.perf_counter()
    out = {"benchmark": "quality", "quick": args.quick, "machine": _common.machine_info(),
           "target_fpr": TARGET_FPR}
    name = "quality_quick.json" if args.quick else "quality.json"
    if args.only:
        name = name.replace(".json", f"_{args.only}.json")
    path = _common.RESULTS / name
    with tempfile.TemporaryDirectory(prefix="aeanomaly-quality-") as tmp:
        for part, fn in (("real_ct", real_ct), ("phantoms", phantoms)):
            if args.only in (None, part.split("_")[0]):
                t1 = time.perf_counter()
                out[part] = fn(Path(tmp) / part, args.quick)
                out.setdefault("part_wall_s", {})[part] = round(time.perf_counter() - t1, 1)
                out["wall_s"] = round(time.perf_counter() - t0, 1)
                _common.write_json(path, out)  # after each part, so a later failure keeps what was measured
    print(f"wrote {path} in {out['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
