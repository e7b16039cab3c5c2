"""The real-CT benchmark that decides (issue 15): real normals for training, real nodules and injected
lesion kinds at full resolution in HU for testing, every method through the product's public API.

    python benchmarks/real_ct.py                 # → benchmarks/results/real_ct.json
    python benchmarks/real_ct.py --quick         # 64 px, 1 epoch, a few scans (< 3 min on 2 cores)
    python benchmarks/real_ct.py --sizes 128 256 --channels 1 3 --epochs 20 --seg-epochs 8

Protocol (data: :mod:`real_ct_data`; methods and metrics: :mod:`real_ct_maps`; tables: :mod:`real_ct_tables`):

* **Training normals, split by patient**: TCGA-LUAD slices (patient = DICOM PatientID), kmader-lungs-512
  (one LUNA16 scan each), the nodule-free slabs (≥ 10 mm from any reader's outline) of the LIDC patient
  *not* under test, and the chest part of totalseg-examples. 30 % of the TCGA / kmader patients are held
  back (same for every fold): half *tune*, half *test*. ``AnomalyDetector.fit`` splits the training
  normals again (by patient) into train / validation / calibration.
* **Test A, real nodules** (two folds: a model never saw the patient it scores): the whole LIDC volume
  through ``AnomalyDetector.analyse``; slice AUROC (nodule slices vs slices no reader marked),
  pixel AUROC / AUPRC in the lungs against the consensus (≥ 2 readers), nodules hit by a lesion
  (``find_lesions`` at the calibrated pixel threshold), false lesions per scan, time per scan.
  Also the slice AUROC over pairs of like lung size (``slice_area_matched``) and the scoring region's
  size alone as a score (``region_area``): in these two patients the nodule slices are mid-lung slices
  with big lungs, so a score that prefers big lungs ranks them well without seeing a nodule.
* **Test normals**: held-back test patients' scans: observed FPR at the target and false lesions per scan.
* **Test B, lesion kinds** in HU at full resolution (:mod:`real_ct_lesions`, 4–30 mm in three size
  classes), two ways. *In the volume* (:mod:`real_ct_volume`): 3-D lesions injected into the nodule-free
  part of the fold's LIDC volume, lesion slices against the same scan's clean slices. *In single
  slices*: one held-back TCGA / kmader patient's slice with and without a lesion, against other
  patients' slices (measures between-patient spread as much as the lesion). Every kind is reported,
  the held-out kinds apart, per kind and per size.
* **Settings chosen on a tune split**: each method's heatmap σ and slice score are chosen on the
  *tuning kinds* injected into the *other* fold's LIDC volume, scored by the *other* fold's model
  (:func:`real_ct_volume.choose`), never on the patient under test.
* **Methods**: ``dae`` (the product as configured), ``dae+seg`` (the segmenter of model kind ``dae+seg``,
  :mod:`aeanomaly.model.selfsup`, trained here from its public functions beside the same DAE) and its
  fusions with the residual at each weight of ``real_ct_maps.FUSED_WEIGHTS`` (what ``fit --seg-weight``
  computes), baselines ``pca``, ``intensity``, ``log``, ``hessian`` on the same prepared scans and masks.
* **Variants**: model grid (``--sizes``) × channels (``--channels``: 1 or 3 = 2.5-D).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import real_ct_data as RD  # noqa: E402
import real_ct_lesions as RL  # noqa: E402
import real_ct_maps as RM  # noqa: E402
import real_ct_volume as RV  # noqa: E402
from aeanomaly.config import FIT_DEFAULTS, TRAIN_DEFAULTS  # noqa: E402  (stdlib only: no TensorFlow at import)
from aeanomaly.scoring import ScoringParams  # noqa: E402  (numpy and scipy: no TensorFlow at import)
from real_ct_tables import DAE_FAMILY  # noqa: E402

#: Synthetic anomaly radii for the self-supervised training, as a fraction of the model grid's side:
#: ≈ 3–21 mm on a 350 mm field of view (nodules are 3–30 mm across).
SEG_RADIUS_FRACTION = (0.008, 0.06)
GOALS = {"slice_auroc": 0.90, "pixel_auprc": 0.30, "false_lesions_per_normal_scan": 1.0,
         "held_out_kinds_ge8mm_slice_auroc": 0.90, "fpr_tolerance": 0.02}


# ------------------------------------------------------------------------------------------------
# fitting one variant
# ------------------------------------------------------------------------------------------------

def pca_fn(det, paths, variance: float = 0.95, max_slices: int = 2000):
    """PCA on the prepared centre channel of the detector's training slices: (reconstruct, n_components)."""
    from sklearn.decomposition import PCA

    from aeanomaly.io import load_scan

    xs = []
    for p in paths:
        prep = det.prepare(load_scan(p))
        xs.append(prep.x[prep.keep][..., det.channels // 2])
    flat = np.concatenate(xs)[:max_slices].reshape(-1, det.size * det.size)
    pca = PCA(n_components=min(variance, len(flat) - 1) if len(flat) > 2 else 1, svd_solver="full",
              random_state=0).fit(flat)

    def reconstruct(x):
        f = x[..., det.channels // 2].reshape(len(x), -1)
        return np.clip(pca.inverse_transform(pca.transform(f)), 0, 1).reshape(x.shape[:3]).astype(np.float32)

    return reconstruct, int(pca.n_components_)


def seg_training_slices(det, paths, max_slices: int = 3000):
    """Prepared training slices ``(n, s, s, c)`` and their scoring regions (lungs, else body)."""
    from aeanomaly.io import load_scan

    xs, regions = [], []
    for p in paths:
        prep = det.prepare(load_scan(p))
        k = prep.keep
        if not k.any():
            continue
        a = det.analyse_prepared(prep, np.zeros(prep.x.shape[:3], np.float32))
        reg = np.where(a.region.reshape(len(k), -1).any(1)[:, None, None], a.region, prep.body)
        xs.append(prep.x[k])
        regions.append(reg[k])
    return np.concatenate(xs)[:max_slices], np.concatenate(regions)[:max_slices]


def fit_variant(sets, size, channels, cfg, seed, norm=None, noise=None, precision=None) -> tuple:
    """Fit the product's detector on the fold's training normals (``noise``: ``(std, resolution)`` of the
    denoising noise, ``precision`` the inference arithmetic; None: fit's defaults), its segmenter and the
    PCA baseline: ``(det, methods, calibration scans, info)``."""
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.io import load_scan
    from aeanomaly.model.selfsup import train_discriminator

    det = AnomalyDetector(window="lung", size=size, channels=channels, epochs=cfg["epochs"],
                          batch_size=cfg["batch_size"], seed=seed, val_fraction=0.12, calib_fraction=0.3,
                          target_fpr=0.05, **({} if norm is None else {"norm": norm}),
                          **({} if noise is None else {"noise_std": noise[0], "noise_resolution": noise[1]}),
                          **({} if precision is None else {"precision": precision}))
    t0 = time.perf_counter()
    det.fit([i.path for i in sets.train], groups=[i.patient for i in sets.train], verbose=0)
    info = {"fit_s": round(time.perf_counter() - t0, 1), "epochs_run": len(det.history_.get("loss", [])),
            "n_train_slices": det.train_state_.get("n_train_slices"), "n_calib_scans": len(det.split_["calib"]),
            "skipped": det.skipped_}
    seg = None
    if cfg["seg_epochs"] > 0:
        t0 = time.perf_counter()
        x, reg = seg_training_slices(det, det.split_["train"])
        seg, hist = train_discriminator(x, det.reconstruct, epochs=cfg["seg_epochs"], batch_size=cfg["batch_size"],
                                        seed=seed, size=size, region=reg, steps_per_epoch=cfg.get("seg_steps"),
                                        base_filters=cfg["seg_filters"], depth=3,
                                        radius_fraction=SEG_RADIUS_FRACTION)
        info["seg"] = {"fit_s": round(time.perf_counter() - t0, 1), "loss": hist["loss"], "n_slices": int(len(x)),
                       "families": hist["families"]}
    pca, ncomp = pca_fn(det, det.split_["train"])
    info["pca_components"] = ncomp
    methods = RM.Methods(det, seg_model=seg, pca=pca)
    calib_scans = [load_scan(p) for p in det.split_["calib"]]
    if seg is not None:
        methods.fix_residual_scale(calib_scans)
    return det, methods, calib_scans, info


# ------------------------------------------------------------------------------------------------
# Test A: the real nodules of one LIDC patient, whole volume
# ------------------------------------------------------------------------------------------------

def test_a(methods, cal, root, patient) -> dict:
    """Per method (and ``_region_area``: the scoring region's size alone as the slice score)."""
    from aeanomaly.calibrate import region_areas
    from aeanomaly.preprocess import mask_to_model_grid

    det = methods.det
    scan, readers = RD.lidc_volume(root, patient)
    a, maps, times = methods.maps(scan)
    any_m = mask_to_model_grid(readers > 0, det.size)
    cons = mask_to_model_grid(readers >= 2, det.size)
    y = (readers.reshape(len(readers), -1).max(1) > 0).astype(int)
    scored = a.mask.reshape(len(y), -1).any(1)
    region = (a.region | cons) & scored[:, None, None]
    nodules, n_nod = ndi_label(cons)
    near = ndi_dilate(any_m, 2)
    area = region_areas(a.mask)
    out = {"_region_area": {"slice": RM.auroc_pm(y, np.where(scored, area, np.nan)),
                            "slice_area_matched": RM.matched_auroc(y, np.where(scored, area, np.nan), area)}}
    for name, heat in maps.items():
        s, _ = methods.scores(a, heat, name)
        r = {"slice": RM.auroc_pm(y, s), "slice_raw": RM.auroc_pm(y, methods.scores(a, heat, name, raw=True)[0]),
             "slice_area_matched": RM.matched_auroc(y, s, area),
             **RM.pixel_scores([heat], [cons], [region]), "time_s": round(times[name], 2),
             "consensus_in_scoring_mask": float((cons & a.mask).sum() / max(int(cons.sum()), 1))}
        if name in cal:
            c = cal[name]
            lesions, labels = RM.lesions_of(det, heat, a.prepared, c)
            hit = [bool((labels[nodules == k] > 0).any()) for k in range(1, n_nod + 1)]
            false = [lab for lab in np.unique(labels[labels > 0]) if not near[labels == lab].any()]
            pred = np.asarray(c.slice.predict(np.nan_to_num(s, nan=-np.inf)), bool)
            r.update(n_nodules=n_nod, nodules_hit=int(sum(hit)), n_lesions=len(lesions), false_lesions=len(false),
                     slice_sensitivity=float(pred[y == 1].mean()) if (y == 1).any() else None,
                     slice_fpr=float(pred[(y == 0) & scored].mean()) if ((y == 0) & scored).any() else None)
        out[name] = r
    return out


def ndi_label(mask):
    from scipy import ndimage as ndi

    return ndi.label(mask, structure=np.ones((3, 3, 3), bool))


def ndi_dilate(mask, r):
    from scipy import ndimage as ndi

    return ndi.binary_dilation(mask, structure=np.ones((1, 2 * r + 1, 2 * r + 1), bool)) if mask.any() else mask


# ------------------------------------------------------------------------------------------------
# held-back normals and Test B
# ------------------------------------------------------------------------------------------------

def test_normals(methods, cal, items) -> dict:
    from aeanomaly.io import load_scan

    flagged = {n: [] for n in cal}
    false = {n: [] for n in cal}
    scores = {n: [] for n in cal}
    for it in items:
        a, maps, _ = methods.maps(load_scan(it.path))
        for n in cal:
            s, agg = methods.scores(a, maps[n], n)
            if not np.isfinite(agg):
                continue
            scores[n].append(float(agg))
            flagged[n].append(bool(np.asarray(cal[n].scan.predict(agg)).ravel()[0]))
            _, labels = RM.lesions_of(methods.det, maps[n], a.prepared, cal[n])
            false[n].append(int(len(np.unique(labels[labels > 0]))))
    return {n: {"n_scans": len(flagged[n]), "observed_fpr": float(np.mean(flagged[n])) if flagged[n] else None,
                "target_fpr": float(cal[n].target_fpr), "false_lesions_per_scan": float(np.mean(false[n])) if false[n] else None,
                # the product's check of these normals against the calibration normals (Calibrator.fpr_check)
                "fpr_check": cal[n].scan.fpr_check(scores[n])}
            for n in cal}


def lesion_cases(items, kinds, seed, max_hosts=None) -> list[dict]:
    """Clean host slices plus one lesion slice per (host, kind), sizes cycling through :data:`RL.SIZES`."""
    from aeanomaly.io import load_scan
    from aeanomaly.io.validate import checked_scan

    rng = np.random.default_rng(seed)
    classes = list(RL.SIZES)
    cases = []
    for j, it in enumerate(items[:max_hosts] if max_hosts else items):
        scan = load_scan(it.path)
        z = len(scan.hu) // 2
        hu = scan.hu[z]
        lung = RL.lung_mask_hu(hu)
        if lung.sum() < 200:
            continue
        one = lambda v, tag: checked_scan(v[None].astype(np.float32), scan.spacing, scan.affine,  # noqa: E731
                                          f"{it.path}#{tag}", dict(scan.meta))
        cases.append({"scan": one(hu, "clean"), "truth": None, "kind": "normal", "size": "", "host": it.patient})
        for k, kind in enumerate(kinds):
            size = classes[(j + k) % len(classes)]
            try:
                new, mask = RL.inject(hu, lung, scan.spacing[1:], kind, float(rng.uniform(*RL.SIZES[size])), rng)
            except ValueError:
                continue
            cases.append({"scan": one(new, kind), "truth": mask[None], "kind": kind, "size": size, "host": it.patient})
    return cases


def test_b(methods, cal, cases) -> dict:
    from aeanomaly.preprocess import mask_to_model_grid

    det = methods.det
    rows = []
    cal = cal or {}
    for c in cases:
        a, maps, _ = methods.maps(c["scan"])
        truth = np.zeros(a.image.shape, bool) if c["truth"] is None else mask_to_model_grid(c["truth"], det.size)
        rows.append((c, a, maps, truth))
    kinds = np.array([c["kind"] for c, *_ in rows])
    sizes = np.array([c["size"] for c, *_ in rows])
    y = (kinds != "normal").astype(int)
    out = {"n_normal": int((y == 0).sum()), "n_lesion": int(y.sum()), "methods": {},
           "cases": [{"host": c["host"], "kind": c["kind"], "size": c["size"]} for c, *_ in rows]}
    for name in rows[0][2] if rows else ():
        s = np.array([methods.scores(a, maps[name], name)[0][0] for _, a, maps, _ in rows])
        m = {"per_kind": {}, "per_size": {}}
        for kind in sorted(set(kinds) - {"normal"}):
            sel = (kinds == "normal") | (kinds == kind)
            ab = [i for i in np.flatnonzero(kinds == kind)]
            pix = RM.pixel_scores([rows[i][2][name] for i in ab], [rows[i][3] for i in ab],
                                  [(rows[i][1].region | rows[i][3]) for i in ab])
            det_rate = None
            if name in cal:
                hits = [bool((RM.lesions_of(det, rows[i][2][name], rows[i][1].prepared, cal[name])[1][rows[i][3]] > 0).any())
                        for i in ab]
                det_rate = float(np.mean(hits)) if hits else None
            inside = [float((rows[i][3] & rows[i][1].mask).sum() / max(int(rows[i][3].sum()), 1)) for i in ab]
            m["per_kind"][kind] = {**RM.auroc_pm(y[sel], s[sel]), "pixel_auprc": pix["pixel_auprc"],
                                   "lesion_detection_rate": det_rate,
                                   "lesion_in_scoring_mask": float(np.mean(inside)) if inside else None}
        for size in RL.SIZES:
            sel = (kinds == "normal") | (sizes == size)
            m["per_size"][size] = RM.auroc_pm(y[sel], s[sel])
        for group, ks in (("tuning_kinds", RL.TUNING_KINDS), ("held_out_kinds", RL.HELD_OUT_KINDS)):
            sel = (kinds == "normal") | np.isin(kinds, ks)
            m[group] = RM.auroc_pm(y[sel], s[sel])
            big = (kinds == "normal") | (np.isin(kinds, ks) & np.isin(sizes, ("8-15mm", "15-30mm")))
            m[group + "_ge8mm"] = RM.auroc_pm(y[big], s[big])
        # paired: how often a lesion raises the score of its own host slice (blind to between-patient spread)
        clean = {rows[i][0]["host"]: s[i] for i in np.flatnonzero(y == 0)}
        pairs = [(s[i] > clean[rows[i][0]["host"]]) for i in np.flatnonzero(y == 1)
                 if rows[i][0]["host"] in clean and np.isfinite(s[i]) and np.isfinite(clean[rows[i][0]["host"]])]
        m["paired_raise_rate"] = float(np.mean(pairs)) if pairs else None
        m["case_scores"] = [None if not np.isfinite(v) else round(float(v), 6) for v in s]
        ab = np.flatnonzero(y == 1)
        m["pixel"] = RM.pixel_scores([rows[i][2][name] for i in ab], [rows[i][3] for i in ab],
                                     [(rows[i][1].region | rows[i][3]) for i in ab]) if len(ab) else {}
        out["methods"][name] = m
    return out


def choose_seg(chosen: dict) -> str | None:
    """The self-supervised map (alone or fused at one of the weights) with the highest in-volume tune merit
    (tuning kinds)."""
    names = [n for n in ("dae+seg", *RM.FUSED) if n in chosen]
    return max(names, key=lambda n: chosen[n]["merit"]) if names else None


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------

def summary(variants: list[dict]) -> list[dict]:
    """Per (size, channels, norm, method): Test A pooled over folds and the Test B / normals means."""
    rows = {}
    for v in variants:
        for name, r in v["test_a"].items():
            norm = v.get("norm", "group")  # runs before the option trained group-normalised models
            noise = v.get("noise")  # runs before the option: fit's defaults of their time
            precision = v.get("precision", "float32")
            key = (v["size"], v["channels"], norm, noise, precision, name)
            d = rows.setdefault(key, {"size": v["size"], "channels": v["channels"], "norm": norm, "noise": noise,
                                      "precision": precision,
                                      "method": name,
                                      "folds": 0,
                                      "slice_auroc": [], "slice_auroc_pm95": [], "slice_auroc_raw": [], "pixel_auprc": [], "pixel_auroc": [], "nodules": 0,
                                      "nodules_hit": 0, "false_lesions": [], "time_s": [], "fpr": [],
                                      "false_per_normal": [], "b_held": [], "b_held8": [], "b_held8_pm95": [], "b_tune": [],
                                      "slice_auroc_matched": [], "region_area_auroc": [], "bv_tune": [], "bv_held": [],
                                      "bv_held8": [], "bv_held8_pm95": [], "bv_pixel_auprc": [], "bv_lesions_hit": 0,
                                      "bv_lesions": 0, "sigma_mm": [], "sigma_z_mm": [], "blob_gate": [], "blob_gate_3d": [],
                                      "erode_mm": [], "slice_score": [],
                                      "tune_merit": [],
                                      "fpr_p_excess": [], "fpr_p_shift": []})
            d["folds"] += 1
            d["slice_auroc"].append(r["slice"]["auroc"])
            d["slice_auroc_pm95"].append(r["slice"]["auroc_pm95"])
            d["slice_auroc_raw"].append((r.get("slice_raw") or {}).get("auroc"))
            d["pixel_auprc"].append(r["pixel_auprc"])
            d["pixel_auroc"].append(r["pixel_auroc"])
            d["nodules"] += r.get("n_nodules", 0)
            d["nodules_hit"] += r.get("nodules_hit", 0)
            d["false_lesions"].append(r.get("false_lesions"))
            d["time_s"].append(r["time_s"])
            n = v["normals"].get(name, {})
            d["fpr"].append(n.get("observed_fpr"))
            d["false_per_normal"].append(n.get("false_lesions_per_scan"))
            d["fpr_p_excess"].append((n.get("fpr_check") or {}).get("p_excess"))
            d["fpr_p_shift"].append((n.get("fpr_check") or {}).get("p_shift"))
            b = v["test_b"]["test"]["methods"].get(name, {})
            d["b_held"].append((b.get("held_out_kinds") or {}).get("auroc"))
            d["b_held8"].append((b.get("held_out_kinds_ge8mm") or {}).get("auroc"))
            d["b_held8_pm95"].append((b.get("held_out_kinds_ge8mm") or {}).get("auroc_pm95"))
            d["b_tune"].append((b.get("tuning_kinds") or {}).get("auroc"))
            d["slice_auroc_matched"].append((r.get("slice_area_matched") or {}).get("auroc"))
            d["region_area_auroc"].append(((v.get("region_area") or {}).get("slice") or {}).get("auroc"))
            bv = (v.get("test_b_volume") or {}).get(name, {})
            d["bv_tune"].append((bv.get("tuning_kinds") or {}).get("auroc"))
            d["bv_held"].append((bv.get("held_out_kinds") or {}).get("auroc"))
            d["bv_held8"].append((bv.get("held_out_kinds_ge8mm") or {}).get("auroc"))
            d["bv_held8_pm95"].append((bv.get("held_out_kinds_ge8mm") or {}).get("auroc_pm95"))
            d["bv_pixel_auprc"].append((bv.get("pixel") or {}).get("pixel_auprc"))
            d["bv_lesions_hit"] += bv.get("lesions_hit", 0)
            d["bv_lesions"] += bv.get("n_lesions", 0)
            c = ((v.get("tune") or {}).get("chosen") or {}).get(name, {})
            d["sigma_mm"].append(c.get("sigma_mm"))
            d["sigma_z_mm"].append(c.get("sigma_z_mm"))
            d["blob_gate"].append(c.get("blob_gate"))
            d["blob_gate_3d"].append(c.get("blob_gate_3d"))
            d["erode_mm"].append(c.get("erode_mm"))
            d["slice_score"].append(c.get("slice_score"))
            d["tune_merit"].append(c.get("merit"))  # the chosen setting's tune merit (other fold's volume)
    mean = lambda xs: float(np.mean([x for x in xs if x is not None])) if any(x is not None for x in xs) else None  # noqa: E731
    settings = ("sigma_mm", "sigma_z_mm", "blob_gate", "blob_gate_3d", "erode_mm", "slice_score", "fpr_p_excess",
                "fpr_p_shift")  # per fold (not averaged)
    out = []
    for d in rows.values():
        out.append({k: (v if k in settings else mean(v) if isinstance(v, list) else v) for k, v in d.items()})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (64 px, 1 epoch, a few scans)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--channels", type=int, nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seg-epochs", type=int, default=None)
    ap.add_argument("--noises", nargs="+", default=None, metavar="STD@RES",
                    help="the denoising noise of the autoencoder, e.g. 0.2@16 0.5@64 (default: fit's default)")
    ap.add_argument("--norms", nargs="+", default=None, choices=("group", "batch", "none"),
                    help="the autoencoder's normalisation (default: fit's default)")
    ap.add_argument("--precisions", nargs="+", default=None, choices=("float32", "bfloat16"),
                    help="inference arithmetic of the autoencoder's rows (default: fit's default, auto): the first "
                         "is fit's; each other reuses the fold's model and settings, recalibrated in it "
                         "(calibrate --precision)")
    ap.add_argument("--sigma-zs", type=float, nargs="+", default=None, metavar="MM",
                    help="the heatmap σ across slices (sigma_z_mm) the tune split chooses from (default 0 "
                         f"only; the README's runs offered {' '.join(f'{z:g}' for z in RV.SIGMA_Z_CHOICES_MM)})")
    ap.add_argument("--blob-gates", type=float, nargs="+", default=None, metavar="P",
                    help="the blob gate exponents (blob_gate) the tune split chooses from "
                         f"(default {' '.join(f'{b:g}' for b in RV.BLOB_GATE_CHOICES)}; 0: off)")
    ap.add_argument("--blob-gates-3d", type=float, nargs="+", default=None, metavar="Q",
                    help="the exponents of the blob gate across slices (blob_gate_3d) the tune split chooses from "
                         "(default 0 only; the README's runs offered "
                         f"{' '.join(f'{b:g}' for b in RV.BLOB_GATE_3D_CHOICES)})")
    ap.add_argument("--erodes", type=float, nargs="+", default=None, metavar="MM",
                    help="the erosions of the scoring region (erode_mm) the tune split chooses from (default "
                         f"{RV.UNTAGGED['erode_mm']:g} only, fit's; "
                         f"the README's runs offered {' '.join(f'{e:g}' for e in RV.ERODE_CHOICES_MM)})")
    ap.add_argument("--slice-norms", nargs="+", default=None, choices=RV.SLICE_NORM_CHOICES,
                    help="the slice normalisations (slice_norm) the tune split chooses from, per method, at its "
                         "chosen settings (default all of them; one: every method uses it)")
    ap.add_argument("--folds", nargs="+", default=None, help="LIDC patients to test (default both)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = RD.shared_data()
    why = RD.available(root)
    if why:
        print(f"real_ct: {why}", file=sys.stderr)
        return 2
    q = args.quick
    cfg = {"sizes": args.sizes or ([64] if q else [128]), "channels": args.channels or ([1] if q else [3]),
           "epochs": args.epochs or (1 if q else 15),
           "seg_epochs": args.seg_epochs if args.seg_epochs is not None else (1 if q else FIT_DEFAULTS["seg_epochs"]),
           "batch_size": 8 if q else 16, "seg_filters": 8 if q else 16, "seg_steps": 3 if q else None,
           "limit": 4 if q else None, "max_hosts": 3 if q else None, "per_volume": 2 if q else RV.LESIONS_PER_VOLUME,
           # in-volume Test B: the kinds scored, the kinds the settings are tuned on, the σ choices
           "kinds": list(RL.KINDS[3:4] if q else RL.KINDS),
           "tune_kinds": list(RL.TUNING_KINDS[:1] if q else RL.TUNING_KINDS),
           "sigmas": list(RV.SIGMA_CHOICES_MM[1:] if q else RV.SIGMA_CHOICES_MM),
           "sigma_zs": args.sigma_zs if args.sigma_zs is not None else [0.0],
           "blob_gates": args.blob_gates if args.blob_gates is not None else list(RV.BLOB_GATE_CHOICES[::2] if q
                                                                                 else RV.BLOB_GATE_CHOICES),
           "blob_gates_3d": args.blob_gates_3d if args.blob_gates_3d is not None else [0.0],
           "erodes": args.erodes if args.erodes is not None else [RV.UNTAGGED["erode_mm"]],
           "slice_norms": list(dict.fromkeys(args.slice_norms or RV.SLICE_NORM_CHOICES)),
           "folds": args.folds or (["LIDC-IDRI-0001"] if q else list(RD.LIDC_PATIENTS)),
           "norms": args.norms or [TRAIN_DEFAULTS["norm"]],
           "noises": args.noises or [f"{TRAIN_DEFAULTS['noise_std']:g}@{TRAIN_DEFAULTS['noise_resolution']}"],
           # the first is the fit's (None: fit's default, auto); the others recalibrate its model
           "precisions": list(dict.fromkeys(args.precisions or [None])),
           # draws the normal split, the injected lesions and the training (runs of one seed compare)
           "seed": args.seed}
    out_path = args.out or _common.RESULTS / ("real_ct_quick.json" if q else "real_ct.json")
    load_before = _load_avg()
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="aeanomaly-realct-"))
    variants, data = [], {}

    def payload(complete: bool) -> dict:
        return {"benchmark": "real_ct", "quick": q, "complete": complete, "settings": cfg, "goals": GOALS, "data": data,
                "kinds": {"tuning": RL.TUNING_KINDS, "held_out": RL.HELD_OUT_KINDS, "sizes": RL.SIZES},
                "variants": variants, "summary": summary(variants), "total_s": round(time.perf_counter() - t_all, 1),
                "machine": _common.machine_info(),
                "load_note": f"load average before {load_before}, after {_load_avg()} (2 cores shared with other "
                             "agents: times are upper bounds)"}

    try:
        folds = {}
        for fold in cfg["folds"]:
            sets = RD.normal_sets(root, work / fold, fold, seed=args.seed, limit=cfg["limit"])
            data[fold] = sets.summary()
            scan, readers = RD.lidc_volume(root, fold)
            folds[fold] = {"sets": sets,
                           "tune_cases": lesion_cases(sets.tune, RL.TUNING_KINDS, args.seed + 1, cfg["max_hosts"]),
                           "test_cases": lesion_cases(sets.test, RL.KINDS, args.seed + 2, cfg["max_hosts"]),
                           "vol_tune": RV.volume_cases(scan, readers, cfg["tune_kinds"], args.seed + 3, cfg["per_volume"]),
                           "vol_test": RV.volume_cases(scan, readers, cfg["kinds"], args.seed + 4, cfg["per_volume"])}
            del scan, readers
        for size in cfg["sizes"]:
            for ch, norm, noise in [(c, n, z) for c in cfg["channels"] for n in cfg["norms"] for z in cfg["noises"]]:
                fitted = {}
                for fold, f in folds.items():
                    print(f"real_ct: fold {fold}, {size} px, {ch} channel(s), norm {norm}, noise {noise}: fit and tune",
                          flush=True)
                    det, methods, calib_scans, info = fit_variant(f["sets"], size, ch, cfg, args.seed, norm,
                                                                  parse_noise(noise), cfg["precisions"][0])
                    t0 = time.perf_counter()
                    table = RV.tune_table(methods, f["vol_tune"], cfg["sigmas"], cfg["sigma_zs"], cfg["blob_gates"],
                                          cfg["blob_gates_3d"], cfg["erodes"])
                    norm_table = None
                    if len(cfg["slice_norms"]) > 1:
                        # the normalisation at the settings this fold's table chooses, on the same lesions
                        RV.apply(methods, RV.choose(table))
                        norm_table = RV.tune_slice_norm(methods, calib_scans, f["vol_tune"], cfg["slice_norms"])
                    info["tune_s"] = round(time.perf_counter() - t0, 1)
                    fitted[fold] = (det, methods, calib_scans, info, table, norm_table)
                for fold, f in folds.items():
                    det, methods, calib_scans, info, *_ = fitted[fold]
                    # settings from the other fold's patient and model (a one-fold run: its own, flagged)
                    src = next((o for o in folds if o != fold), fold)
                    # a tie (or a single normalisation asked for) keeps fit's default (or that one)
                    chosen = RV.with_slice_norm(RV.choose(fitted[src][4]), fitted[src][5],
                                                ScoringParams().slice_norm if len(cfg["slice_norms"]) > 1
                                                else cfg["slice_norms"][0])
                    RV.apply(methods, chosen)
                    for precision in cfg["precisions"]:
                        if precision != cfg["precisions"][0]:
                            # the same model and settings, recalibrated in this arithmetic (the product's
                            # `calibrate --precision`); only the autoencoder's maps change, so only they are rescored
                            t0 = time.perf_counter()
                            det.recalibrate(det.split_["calib"], precision=precision)
                            info = {**info, "recalibrate_s": round(time.perf_counter() - t0, 1)}
                            methods = methods.subset(DAE_FAMILY)
                        t0 = time.perf_counter()
                        cal = methods.calibrate(calib_scans)
                        info["calibrate_s"] = round(time.perf_counter() - t0, 1)
                        tb_tune = test_b(methods, None, f["tune_cases"])
                        ta = test_a(methods, cal, root, fold)
                        v = {"fold": fold, "size": size, "channels": ch, "norm": norm, "noise": noise,
                             "precision": det.precision_, "slice_norm": det.slice_norm, "fit": info,
                             "scoring": det.scoring_params().to_dict(),
                             "tune": {"source": src, "same_patient": src == fold, "chosen": chosen,
                                      "table": fitted[src][4], "slice_norm_table": fitted[src][5]},
                             "region_area": ta.pop("_region_area"), "test_a": ta,
                             "normals": test_normals(methods, cal, f["sets"].test),
                             "test_b": {"tune": tb_tune, "test": test_b(methods, cal, f["test_cases"])},
                             "test_b_volume": RV.test_b_volume(methods, cal, f["vol_test"]),
                             "chosen_seg": choose_seg(chosen)}
                        variants.append(v)
                        _print_variant(v)
                        # after every variant, so that hours of a long run are not lost to an interruption
                        _common.write_json(out_path, payload(False))
                del fitted
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _common.write_json(out_path, payload(True))
    print(f"real_ct: wrote {out_path} in {round(time.perf_counter() - t_all, 1)} s")
    return 0


def parse_noise(spec: str) -> tuple[float, int]:
    """``"0.5@64"`` → ``(0.5, 64)``: the denoising noise's std and resolution."""
    std, _, res = str(spec).partition("@")
    try:
        return float(std), int(res)
    except ValueError:
        raise SystemExit(f"real_ct: --noises takes STD@RES such as 0.5@64, got {spec!r}") from None


def _load_avg():
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _print_variant(v):
    print(f"  tuned on {v['tune']['source']}; region area alone: sliceAUROC {_f(v['region_area']['slice']['auroc'])}",
          flush=True)
    for name, r in v["test_a"].items():
        bv = v["test_b_volume"].get(name, {})
        c = v["tune"]["chosen"].get(name, {})
        print(f"  {name:15s} σ {c.get('sigma_mm')} z {c.get('sigma_z_mm')} b {c.get('blob_gate')} v {c.get('blob_gate_3d')} e {c.get('erode_mm')} {c.get('slice_score')} {c.get('slice_norm')}  sliceAUROC {_f(r['slice']['auroc'])} "
              f"(like size {_f(r['slice_area_matched']['auroc'])})  pixAUPRC {_f(r['pixel_auprc'])}  "
              f"nodules {r.get('nodules_hit', '-')}/{r.get('n_nodules', '-')}  false {r.get('false_lesions', '-')}  "
              f"B-volume held-out {_f((bv.get('held_out_kinds') or {}).get('auroc'))} "
              f"pixAUPRC {_f((bv.get('pixel') or {}).get('pixel_auprc'))}  {r['time_s']} s", flush=True)


def _f(x):
    return "  -  " if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
