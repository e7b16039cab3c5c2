"""Test B in a whole volume, and the choice of scoring settings on it (real_ct benchmark).

Test B of single held-back slices compares a lesion slice with *other patients'* normal slices, so it
measures the spread between patients and scanners more than the lesion (every method sat at chance
there). Here lesions of each kind (:mod:`real_ct_lesions`, 3-D: a sphere's cross-sections on the
neighbouring slices) are injected into the nodule-free part of a whole LIDC volume, and the lesion
slices are compared with the *same scan's* clean slices, as Test A compares real nodule slices with the
scan's nodule-free ones. The lesion slices are drawn at random among the eligible slices, so the
lesions do not favour mid-lung (where the lungs are large) as real nodules did in these two patients.

**Choosing settings honestly.** Each method's heatmap σ in-plane (:data:`SIGMA_CHOICES_MM`) and across
slices (:data:`SIGMA_Z_CHOICES_MM`) and its blob gate (:data:`BLOB_GATE_CHOICES`), for the maps the
detector makes, and slice score (:data:`SLICE_SCORE_CHOICES`) are chosen on the *tuning kinds*
injected into the *other* fold's patient, scored by the *other* fold's model: the choice for a fold never
sees that fold's patient's lesions (real or injected) nor its own model's output. The criterion is slice
AUROC + pixel AUPRC (the two headline metrics of Test A). A one-fold run (``--folds``, ``--quick``)
can only tune on its own patient and says so (``same_patient``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

import real_ct_data as RD
import real_ct_lesions as RL
import real_ct_maps as RM

SIGMA_CHOICES_MM = (1.5, 3.0, 6.0)
#: The detector's ``sigma_z_mm`` (averaging the heatmap over neighbouring slices): none, or about one or
#: two LIDC slices (2.5 mm apart). Three seeds chose 0 or 2.5 mm, with the held-out parts unchanged
#: (README): a run offers only 0 unless asked (``--sigma-zs``).
SIGMA_Z_CHOICES_MM = (0.0, 2.5, 5.0)
#: The detector's ``blob_gate`` (the residual weighted by its blobness to this power): off, 1, 2.
BLOB_GATE_CHOICES = (0.0, 1.0, 2.0)
#: The detector's ``blob_gate_3d`` (a further weight by the residual's blobness across slices): off, 1, 2.
#: The tune split chose 2 in every fold, but the held-out nodules ranked no better and the calibration
#: normals' single slices (in-plane gate only) no longer matched the volumes (README): a run offers only 0
#: unless asked (``--blob-gates-3d``).
BLOB_GATE_3D_CHOICES = (0.0, 1.0, 2.0)
#: The detector's ``erode_mm`` (the scoring region shrunk by this much before residuals count, against
#: the partial-volume edge of the lungs): fit's 6 mm, or 3 mm (one pixel at 128 px), which keeps more of a
#: juxtapleural nodule (at 6 mm 56 % and 77 % of two of LIDC-IDRI-0003's three consensus nodules are left
#: inside). Three seeds leaned to 3 mm by little (five folds of six) with no gain held out (README): a run
#: offers only 6 unless asked (``--erodes``).
ERODE_CHOICES_MM = (6.0, 3.0)
SLICE_SCORE_CHOICES = ("p99", "p999", "topk")
#: The detector's ``slice_norm``: slice scores standardised against the calibration normals' slices of
#: the same scoring-region size (``area``), their median there subtracted with one spread for all sizes
#: (``location``), or raw (``none``, fit's default since the tune split chose it over ``area`` in four
#: folds of six). A run offers all unless told otherwise (``--slice-norms``).
SLICE_NORM_CHOICES = ("area", "location", "none")
#: The maps the detector smooths with its ``sigma_mm`` (the blob filters and the segmenter's
#: probability are not smoothed, so σ does not apply to them).
SIGMA_METHODS = ("dae", *RM.FUSED, "pca", "intensity")
#: Maps made from the dae's heatmap: they take the dae's σ, not one of their own.
FOLLOWS_DAE = RM.FUSED
LESIONS_PER_VOLUME = 4
#: Lesion centres at least this far apart along z (the largest lesions are 30 mm).
LESION_GAP_MM = 36.0
#: Eligible centre slices keep this far from any reader's outline (the margin plus the largest radius).
CENTRE_MARGIN_MM = RD.LIDC_MARGIN_MM + 15.0
MIN_LUNG_FRACTION = 0.04


def volume_cases(scan, readers, kinds, seed: int, per_volume: int = LESIONS_PER_VOLUME) -> list[dict]:
    """One copy of the LIDC ``scan`` per kind with ``per_volume`` lesions of that kind injected.

    Returns dicts with ``scan`` (a :class:`~aeanomaly.io.Scan`), ``truth`` (bool ``(z, y, x)``),
    ``kind``, ``y`` (per slice: 1 lesion, 0 clean, −1 not counted: near a real nodule or next to a
    lesion slice) and ``size`` (per slice: the size class of its lesion, else "").
    """
    from aeanomaly.io.validate import checked_scan

    rng = np.random.default_rng(seed)
    sz = float(scan.spacing[0])
    marked = readers.reshape(len(readers), -1).max(axis=1) > 0
    z = np.arange(len(readers))
    dist = np.full(len(z), np.inf) if not marked.any() else \
        np.min(np.abs(z[:, None] - np.flatnonzero(marked)[None, :]), axis=1) * sz
    lung_frac = np.array([RL.lung_mask_hu(s).mean() for s in scan.hu])
    centres = np.flatnonzero((dist >= CENTRE_MARGIN_MM) & (lung_frac >= MIN_LUNG_FRACTION))
    clean_base = dist >= RD.LIDC_MARGIN_MM
    classes = list(RL.SIZES)
    cases = []
    for k, kind in enumerate(kinds):
        picked: list[int] = []
        for c in rng.permutation(centres):
            if all(abs(int(c) - p) * sz >= LESION_GAP_MM for p in picked):
                picked.append(int(c))
            if len(picked) == per_volume:
                break
        hu = scan.hu.copy()
        truth = np.zeros(hu.shape, bool)
        size = np.full(len(hu), "", object)
        for j, c in enumerate(sorted(picked)):
            cls = classes[(j + k) % len(classes)]
            before = truth.reshape(len(truth), -1).any(axis=1)
            try:
                RL.inject_in_volume(hu, truth, c, scan.spacing, kind, float(rng.uniform(*RL.SIZES[cls])), rng)
            except ValueError:  # fell outside the lung
                continue
            size[truth.reshape(len(truth), -1).any(axis=1) & ~before] = cls
        pos = truth.reshape(len(truth), -1).any(axis=1)
        near = np.convolve(pos.astype(int), np.ones(3, int), mode="same") > 0
        y = np.where(pos, 1, np.where(clean_base & ~near, 0, -1))
        cases.append({"scan": checked_scan(hu, scan.spacing, scan.affine, f"{scan.source}#{kind}", dict(scan.meta)),
                      "truth": truth, "kind": kind, "y": y, "size": size})
    return cases


class _Pooled:
    """Slice scores and in-region pixels of the lesion volumes, pooled per key."""

    def __init__(self):
        self.y, self.s, self.size, self.kind, self.heat, self.truth = {}, {}, {}, {}, {}, {}

    def add_slices(self, key, y, s, size, kind):
        for d, v in ((self.y, y), (self.s, s), (self.size, size), (self.kind, np.full(len(y), kind, object))):
            d.setdefault(key, []).append(v)

    def add_pixels(self, key, heat, truth, region):
        self.heat.setdefault(key, []).append(heat[region])
        self.truth.setdefault(key, []).append(truth[region])

    def slices(self, key):
        return tuple(np.concatenate(d[key]) for d in (self.y, self.s, self.size, self.kind))

    def pixels(self, key) -> dict:
        return RM.pixel_scores(self.heat[key], self.truth[key], [np.ones(h.shape, bool) for h in self.heat[key]])


def _truth_on_grid(case, size: int) -> np.ndarray:
    """The case's lesion mask on the model grid (cached in the case per grid size)."""
    from aeanomaly.preprocess import mask_to_model_grid

    cache = case.setdefault("truth_on_grid", {})
    if size not in cache:
        cache[size] = mask_to_model_grid(case["truth"], size)
    return cache[size]


def _counted_region(a, truth, y):
    """The scoring region of the counted slices, with the lesions (pixel metrics' denominator)."""
    return (a.region | truth) & (y >= 0)[:, None, None] & a.mask.reshape(len(y), -1).any(axis=1)[:, None, None]


#: The detector parameters a tune setting sets besides σ, and their key tags (:func:`setting_key`).
SMOOTHING = {"sigma_z_mm": "z", "blob_gate": "b", "blob_gate_3d": "v", "erode_mm": "e"}
#: Their values where a key has no tag: what every run scored with before the option existed.
UNTAGGED = {"sigma_z_mm": 0.0, "blob_gate": 0.0, "blob_gate_3d": 0.0, "erode_mm": 6.0}


def setting_key(sigma, score, sigma_z=0.0, blob=0.0, blob_3d=0.0, erode=UNTAGGED["erode_mm"]) -> str:
    """``"σ/score"``, with ``"+zZ"`` (``sigma_z_mm`` Z), ``"+bB"`` (``blob_gate`` B), ``"+vV"``
    (``blob_gate_3d`` V) and ``"+eE"`` (``erode_mm`` E) after σ where they differ from :data:`UNTAGGED`, or
    ``"-/score"`` for a map the detector does not make (σ None)."""
    if sigma is None:
        return f"-/{score}"
    values = (sigma_z, blob, blob_3d, erode)
    tags = "".join(f"+{tag}{v}" for (name, tag), v in zip(SMOOTHING.items(), values) if v != UNTAGGED[name])
    return f"{sigma}{tags}/{score}"


def parse_setting(key: str) -> dict:
    """:func:`setting_key` back to ``{"sigma_mm", "sigma_z_mm", "blob_gate", "blob_gate_3d", "erode_mm",
    "slice_score"}`` (None for ``-``)."""
    smooth, score = key.split("/")
    sigma, *tags = smooth.split("+")
    if sigma == "-":
        return {"sigma_mm": None, **{k: None for k in SMOOTHING}, "slice_score": score}
    by_tag = {t[0]: float(t[1:]) for t in tags}
    return {"sigma_mm": float(sigma), **{k: by_tag.get(tag, UNTAGGED[k]) for k, tag in SMOOTHING.items()},
            "slice_score": score}


def smoothing_of(chosen: dict) -> tuple:
    """The :data:`SMOOTHING` values of a chosen setting, in order (:data:`UNTAGGED` where absent: JSON of
    runs before an option lacks it)."""
    return tuple(UNTAGGED[k] if chosen.get(k) is None else chosen[k] for k in SMOOTHING)


def tune_table(methods, cases, sigmas=SIGMA_CHOICES_MM, sigma_zs=(0.0,), blob_gates=(0.0,),
               blob_gates_3d=(0.0,), erodes=(UNTAGGED["erode_mm"],)) -> dict:
    """Per method and setting (:func:`setting_key`): slice AUROC and pixel AUPRC over the lesion ``cases``.

    Every combination of σ (``sigmas``), σ_z (``sigma_zs``), blob gate (``blob_gates``), blob gate
    across slices (``blob_gates_3d``) and erosion of the scoring region (``erodes``) is set on the
    detector in turn (``set_params``) and each method uses the detector's; the detector's own settings
    are restored afterwards.
    """
    det = methods.det
    saved = {"sigma_mm": det.sigma_mm, **{k: getattr(det, k) for k in SMOOTHING}}
    saved_methods = dict(methods.sigma)
    combos = [(s, z, b, v, e) for e in erodes for v in blob_gates_3d for b in blob_gates for z in sigma_zs
              for s in sigmas]
    pooled = _Pooled()
    try:
        methods.sigma = {}
        for combo in combos:
            sigma = combo[0]
            det.set_params(sigma_mm=sigma, **dict(zip(SMOOTHING, combo[1:])))
            for c in cases:
                a, maps, _ = methods.maps(c["scan"])
                truth = _truth_on_grid(c, det.size)
                region = _counted_region(a, truth, c["y"])
                for name, heat in maps.items():
                    if name not in SIGMA_METHODS and combo != combos[0]:
                        continue
                    pooled.add_pixels((name, *combo), heat, truth, region)
                    for score in SLICE_SCORE_CHOICES:
                        s, _ = methods.scores(a, heat, method=score, raw=True)
                        pooled.add_slices((name, *combo, score), c["y"], s, c["size"], c["kind"])
    finally:
        det.set_params(**saved)
        methods.sigma = saved_methods
    table = {}
    for name in methods.names:
        for combo in combos if name in SIGMA_METHODS else combos[:1]:
            if (name, *combo) not in pooled.heat:
                continue
            pix = pooled.pixels((name, *combo))["pixel_auprc"]
            for score in SLICE_SCORE_CHOICES:
                y, s, _, _ = pooled.slices((name, *combo, score))
                auc = RM.auroc_pm(y[y >= 0], s[y >= 0])["auroc"]
                key = setting_key(combo[0], score, *combo[1:]) if name in SIGMA_METHODS else setting_key(None, score)
                table.setdefault(name, {})[key] = {"slice_auroc": auc, "pixel_auprc": pix}
    return table


def choose(table: dict) -> dict:
    """Per method: the setting with the highest slice AUROC + pixel AUPRC, as ``{"sigma_mm", "sigma_z_mm",
    "blob_gate", "blob_gate_3d", "slice_score", "merit"}``."""
    out = {}
    for name in sorted(table, key=lambda n: n in FOLLOWS_DAE):  # the dae's σ first
        rows = table[name]

        def merit(k, rows=rows):
            r = rows[k]
            return (r["slice_auroc"] if r["slice_auroc"] is not None else -1) + (r["pixel_auprc"] or 0)
        keys = list(rows)
        dae = out.get("dae", {})
        if name in FOLLOWS_DAE and dae.get("sigma_mm") is not None:
            own = setting_key(dae["sigma_mm"], "", *smoothing_of(dae))
            keys = [k for k in keys if k.startswith(own)] or keys
        best = max(keys, key=merit)
        out[name] = {**parse_setting(best), "merit": round(merit(best), 4)}
    return out


def tune_slice_norm(methods, calib_scans, cases, norms=SLICE_NORM_CHOICES) -> dict:
    """Per method, at the settings applied to ``methods`` (:func:`apply`): the slice AUROC over the lesion
    ``cases`` with each slice normalisation of ``norms``, ``{name: {norm: auroc}}``.

    For each normalisation but ``none`` the methods are calibrated on ``calib_scans`` with it (their
    region-size references), and the cases' slice scores are taken through those references, or raw
    (``none``); the slice AUROC is the tune merit's part that the normalisation changes (the pixel AUPRC
    is the same for all). The detector's ``slice_norm`` is restored afterwards.
    """
    det = methods.det
    saved, saved_methods = det.slice_norm, dict(methods.slice_norm)
    pooled = _Pooled()
    cases_maps = [(c, *methods.maps(c["scan"])[:2]) for c in cases]
    try:
        methods.slice_norm = {}
        for norm in norms:
            det.set_params(slice_norm=norm)
            if norm != "none":
                methods.calibrate(calib_scans)
            for c, a, maps in cases_maps:
                for name, heat in maps.items():
                    s, _ = methods.scores(a, heat, name, raw=norm == "none")
                    pooled.add_slices((name, norm), c["y"], s, c["size"], c["kind"])
    finally:
        det.set_params(slice_norm=saved)
        methods.slice_norm = saved_methods
        methods.references = {}
    out: dict = {}
    for (name, norm) in pooled.y:
        y, s, _, _ = pooled.slices((name, norm))
        out.setdefault(name, {})[norm] = RM.auroc_pm(y[y >= 0], s[y >= 0])["auroc"]
    return out


def with_slice_norm(chosen: dict, table: dict | None, default: str = "area") -> dict:
    """``chosen`` (:func:`choose`) with each method's ``slice_norm``: the normalisation of the highest slice
    AUROC in ``table`` (:func:`tune_slice_norm`), ``default`` on a tie or without a table.
    :func:`tune_table`'s merit holds the raw slice AUROC (``none``), so the merit becomes that of the chosen
    normalisation."""
    out = {}
    for name, c in chosen.items():
        aucs = {k: v for k, v in ((table or {}).get(name) or {}).items() if v is not None}
        norm = max(aucs, key=lambda k: (aucs[k], k == default)) if aucs else default
        gain = aucs[norm] - aucs.get("none", aucs[norm]) if aucs else 0.0
        out[name] = {**c, "slice_norm": norm, "merit": round(c["merit"] + gain, 4)}
    return out


def apply(methods, chosen: dict) -> None:
    """Set the chosen σ, σ_z and blob gates (the dae's on the detector itself: the product as configured),
    slice scores and slice normalisations (the dae's on the detector)."""
    for name, c in chosen.items():
        methods.slice_score[name] = c["slice_score"]
    methods.slice_norm = {n: c["slice_norm"] for n, c in chosen.items() if c.get("slice_norm") and n != "dae"}
    if chosen.get("dae", {}).get("slice_norm"):
        methods.det.set_params(slice_norm=chosen["dae"]["slice_norm"])

    def params(c):  # JSON of runs before an option lacks it: UNTAGGED, as those runs scored
        return {"sigma_mm": c["sigma_mm"], **dict(zip(SMOOTHING, smoothing_of(c)))}
    dae = chosen.get("dae", {})
    if dae.get("sigma_mm") is not None:
        methods.det.set_params(**params(dae))
    methods.sigma = {n: params(c) for n, c in chosen.items()
                     if c["sigma_mm"] is not None and n != "dae" and n not in FOLLOWS_DAE}


def test_b_volume(methods, cal, cases) -> dict:
    """Per method, with its chosen settings: slice AUROC of lesion vs clean slices of the same scan per
    kind, per size and for the tuning / held-out kinds (all, ≥ 8 mm), pixel AUPRC, lesions found."""
    pooled = _Pooled()
    found: dict = {}
    for c in cases:
        a, maps, _ = methods.maps(c["scan"])
        truth = _truth_on_grid(c, methods.det.size)
        region = _counted_region(a, truth, c["y"])
        lab_s, n_s = ndi.label(truth, structure=np.ones((3, 3, 3), bool))
        for name, heat in maps.items():
            s, _ = methods.scores(a, heat, name)
            pooled.add_slices(name, c["y"], s, c["size"], c["kind"])
            pooled.add_pixels(name, heat, truth, region)
            if name in (cal or {}) and n_s:
                _, labels = RM.lesions_of(methods.det, heat, a.prepared, cal[name])
                hits = [bool((labels[lab_s == k] > 0).any()) for k in range(1, n_s + 1)]
                f = found.setdefault(name, [0, 0])
                f[0] += sum(hits)
                f[1] += n_s
    out = {}
    for name in methods.names:
        if name not in pooled.y:
            continue
        y, s, size, kind = pooled.slices(name)
        ok = y >= 0
        m = {"per_kind": {}, "per_size": {}, "pixel": pooled.pixels(name)}
        # each kind's lesion slices against the clean slices of its own copy of the scan
        for k in sorted(set(kind[y == 1])):
            sel = ok & (kind == k)
            m["per_kind"][k] = RM.auroc_pm(y[sel], s[sel])
        for cls in RL.SIZES:  # clean slices of every copy (a weighting of nearly equal scores)
            sel = ok & ((y == 0) | (size == cls))
            m["per_size"][cls] = {k: v for k, v in RM.auroc_pm(y[sel], s[sel]).items() if k != "auroc_pm95"}
        for group, ks in (("tuning_kinds", RL.TUNING_KINDS), ("held_out_kinds", RL.HELD_OUT_KINDS)):
            sel = ok & np.isin(kind, ks)
            if not (y[sel] == 1).any():  # a run that scored none of these kinds
                continue
            m[group] = RM.auroc_pm(y[sel], s[sel])
            big = sel & ((y == 0) | np.isin(size, ("8-15mm", "15-30mm")))
            m[group + "_ge8mm"] = RM.auroc_pm(y[big], s[big])
        if name in found:
            m["lesions_hit"], m["n_lesions"] = found[name]
        out[name] = m
    return out
