"""Synthetic chest and abdominal CT phantoms in Hounsfield units, and phantom data sets on disk.

The phantom is a torso model in millimetres: ``X`` to the patient's left, ``Y`` posterior, ``Z``
superior, with ``Z = 0`` at the top of the right hemidiaphragm. ``region`` picks the axial range
(chest: above the diaphragm, abdomen: liver to kidneys). Volumes come out in the internal
orientation of :mod:`aeanomaly.io.scan` (axes ``(z, y, x)``, anterior at the top of ``hu[k]``,
the patient's right on the image's left).

Label ids (:data:`LABELS`): 0 air, 1 other soft tissue (heart, bowel, stomach, gallbladder, discs,
spinal canal, airway walls), 2 fat, 3 muscle, 4 bone, 5 lung parenchyma, 6 liver, 7 spleen, 8 kidney,
9 vessel or airway lumen, 10 patient table.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import ConfigError
from ..io.scan import Scan, internal_affine
from ..io.writers import atomic_dir, save_nifti
from .lesions import LUNG_KINDS, SOFT_TISSUE_KINDS, check_kinds, inject_lesions

from .anatomy import (  # noqa: F401  (label ids are part of this module's API)
    AIR, BONE, FAT, KIDNEY, LABELS, LIVER, LUNG, MUSCLE, SOFT, SPLEEN, TABLE, VESSEL, render_anatomy,
)
REGIONS = ("chest", "abdomen")
#: Organs where :func:`write_phantom_set` places lesions, with their probabilities, per region.
LESION_ORGANS = {"chest": {"lung": 1.0}, "abdomen": {"liver": 0.7, "spleen": 0.15, "kidney": 0.15}}


@dataclass
class Phantom:
    """One synthetic CT volume.

    Attributes
    ----------
    hu : np.ndarray
        float32 ``(z, y, x)`` in HU, internal LPS orientation (x → Left, y → Posterior, z → Superior).
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in mm.
    affine : np.ndarray
        4×4, internal voxel index ``(x, y, z, 1)`` → RAS mm (:func:`aeanomaly.io.scan.internal_affine`).
    labels : np.ndarray
        uint8 ``(z, y, x)`` organ map, ids in :data:`LABELS`.
    region : str
        ``"chest"`` or ``"abdomen"``.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    labels: np.ndarray
    region: str

    def as_scan(self, source: str = "") -> Scan:
        """The phantom as a :class:`~aeanomaly.io.scan.Scan` (a copy of ``hu``)."""
        return Scan(self.hu.copy(), self.spacing, self.affine.copy(), source or f"phantom:{self.region}",
                    {"hu": True, "format": "phantom"})


def _check_grid(shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    try:
        shp = tuple(int(s) for s in shape)
        spc = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(f"shape {shape!r} and spacing {spacing!r} must be three numbers each") from None
    if len(shp) != 3 or len(spc) != 3 or min(shp) < 1 or not all(np.isfinite(spc)) or min(spc) <= 0:
        raise ConfigError(f"shape {shape!r} must be 3 positive ints and spacing {spacing!r} 3 positive mm")
    return shp, spc  # type: ignore[return-value]


def make_phantom(region: str = "chest", shape=(24, 128, 128), spacing=(5.0, 2.7, 2.7),
                 rng: np.random.Generator | int | None = None) -> Phantom:
    """Generate one synthetic CT volume in HU with its organ labels.

    Parameters
    ----------
    region : {"chest", "abdomen"}
        Chest: lungs with vessel and airway trees, heart, mediastinum, ribs. Abdomen: liver (patient's
        right = image left), spleen, stomach, kidneys, bowel.
    shape : tuple of int
        ``(z, y, x)`` voxels.
    spacing : tuple of float
        ``(z, y, x)`` voxel size in mm; the anatomy is built in mm, so any grid works.
    rng : np.random.Generator, int or None
        Source of the subject's anatomy and noise (an int is a seed).

    Returns
    -------
    Phantom
        ``hu`` float32 ``(z, y, x)`` HU, ``labels`` uint8 (ids in :data:`LABELS`), spacing, affine.
    """
    if region not in REGIONS:
        raise ConfigError(f"unknown phantom region {region!r}; expected one of {', '.join(REGIONS)}")
    shape, spacing = _check_grid(shape, spacing)
    rng = np.random.default_rng(rng)
    hu, labels, z0 = render_anatomy(region, shape, spacing, rng)
    nz, ny, nx = shape
    origin = ((nx - 1) / 2 * spacing[2], (ny - 1) / 2 * spacing[1], z0)
    return Phantom(hu, spacing, internal_affine(spacing, origin), labels, region)


def organ_mask(labels: np.ndarray, organ: str) -> np.ndarray:
    """Bool ``(z, y, x)`` mask of one organ of a phantom label map, for lesion placement.

    ``"lung"`` includes the vessels and airways inside the lungs (so nodules can engulf them);
    ``"liver"``, ``"spleen"`` and ``"kidney"`` are the organ labels.
    """
    ids = {"lung": LUNG, "liver": LIVER, "spleen": SPLEEN, "kidney": KIDNEY}
    if organ not in ids:
        raise ConfigError(f"unknown organ {organ!r}; expected one of {', '.join(ids)}")
    lab = np.asarray(labels)
    m = lab == ids[organ]
    if organ == "lung":
        closed = ndi.binary_closing(m, np.ones((1, 3, 3), bool), iterations=2, border_value=0)
        m |= closed & (lab == VESSEL)
    return m


def subject_rng(seed: int, group: int, index: int) -> np.random.Generator:
    """The random generator of phantom subject ``index`` of ``group`` (0 normal, 1 abnormal) of a set."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(group, index)))


def _abnormal(ph: Phantom, rng, lesions_per_scan, kinds, size_mm):
    """Inject lesions into a phantom; returns (hu, mask, records with an ``organ`` entry)."""
    n = int(rng.integers(lesions_per_scan[0], lesions_per_scan[1] + 1))
    hu, mask, records = ph.hu, np.zeros(ph.hu.shape, np.uint8), []
    organs = LESION_ORGANS[ph.region]
    for _ in range(n):
        organ = str(rng.choice(list(organs), p=list(organs.values())))
        region = organ_mask(ph.labels, organ) & (ndi.binary_dilation(mask > 0, iterations=2) == 0)
        if region.sum() < 20:
            region = organ_mask(ph.labels, "lung" if ph.region == "chest" else "liver") & (mask == 0)
        if not region.any():
            break
        use = kinds or (LUNG_KINDS if organ == "lung" else SOFT_TISSUE_KINDS)
        hu, m, rec = inject_lesions(hu, region, ph.spacing, 1, kinds=use, size_mm=size_mm, rng=rng)
        if rec[0]["voxels"]:
            mask[(m > 0) & (mask == 0)] = len(records) + 1
            records.append(dict(rec[0], organ=organ))
    return hu, mask, records


def write_phantom_set(out_dir: str | os.PathLike, n_normal: int, n_abnormal: int, region: str = "chest",
                      seed: int = 0, shape=(24, 128, 128), spacing=(5.0, 2.7, 2.7), lesions_per_scan=(1, 3),
                      kinds=None, size_mm=(5, 20), overwrite: bool = False, progress: bool = False) -> Path:
    """Write a labelled phantom data set as NIfTI (HU as int16) with lesion masks.

    Layout: ``normal/phantom_NNNN.nii.gz``, ``abnormal/phantom_NNNN.nii.gz`` (numbered after the
    normal ones), ``masks/phantom_NNNN_mask.nii.gz`` (uint8 lesion ids, same grid and affine),
    ``labels.csv`` (scan, label, region, n_lesions, kinds, mask; paths relative to ``out_dir``) and
    ``lesions.csv`` (one row per lesion: scan, lesion, kind, organ, centre_z/y/x voxel, diameter_mm,
    delta_hu, voxels). The whole folder is built beside ``out_dir`` and renamed into place.

    Deterministic for ``seed``: normal scan ``i`` is ``make_phantom(region, shape, spacing, rng)`` with
    ``rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, i)))``; abnormal scan ``j``
    uses ``spawn_key=(1, j)`` (its lesions come from the same generator after the anatomy), so no
    scan changes when the other counts change.

    Parameters
    ----------
    out_dir : path
        Folder to create; an existing non-empty one is refused unless ``overwrite``.
    n_normal, n_abnormal : int
        Numbers of scans without and with lesions.
    region : {"chest", "abdomen"}
        Chest lesions go in the lungs; abdominal ones in the liver (some in the spleen or kidneys).
    seed : int
        Seed of the whole set.
    shape, spacing : tuple
        ``(z, y, x)`` voxels and voxel size in mm.
    lesions_per_scan : (int, int)
        Inclusive range of lesions per abnormal scan.
    kinds : sequence of str or None
        Lesion kinds to use (see :func:`~aeanomaly.datasets.lesions.inject_lesions`); None picks the
        kinds that suit each organ. Restricting it lets a benchmark hold kinds out.
    size_mm : (float, float)
        Range of lesion diameters in mm.
    progress : bool
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        The written ``labels.csv``.
    """
    out_dir = Path(out_dir)
    if region not in REGIONS:
        raise ConfigError(f"unknown phantom region {region!r}; expected one of {', '.join(REGIONS)}", out_dir)
    shape, spacing = _check_grid(shape, spacing)
    kinds = check_kinds(kinds)
    n_normal, n_abnormal = int(n_normal), int(n_abnormal)
    lo, hi = (int(v) for v in lesions_per_scan)
    if n_normal < 0 or n_abnormal < 0 or n_normal + n_abnormal == 0:
        raise ConfigError(f"need a positive number of scans, got n_normal={n_normal}, n_abnormal={n_abnormal}", out_dir)
    if not 1 <= lo <= hi:
        raise ConfigError(f"lesions_per_scan must be (min, max) with 1 <= min <= max, got {lesions_per_scan}", out_dir)
    exists = out_dir.exists()
    if exists and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise ConfigError("already exists and is not empty (use overwrite=True to replace it)", out_dir)
    jobs = [("normal", i, i) for i in range(n_normal)] + [("abnormal", j, n_normal + j) for j in range(n_abnormal)]
    if progress:
        from tqdm import tqdm
        jobs = tqdm(jobs, desc=f"phantoms ({region})", unit="scan")
    rows, lesion_rows = [], []
    with atomic_dir(out_dir, overwrite=exists) as tmp:
        for label, j, number in jobs:
            rng = subject_rng(seed, int(label == "abnormal"), j)
            ph = make_phantom(region, shape, spacing, rng)
            name = f"phantom_{number:04d}"
            scan = f"{label}/{name}.nii.gz"
            hu, mask_rel, records = ph.hu, "", []
            if label == "abnormal":
                hu, mask, records = _abnormal(ph, rng, (lo, hi), kinds, size_mm)
                mask_rel = f"masks/{name}_mask.nii.gz"
                save_nifti(tmp / mask_rel, mask, ph.affine)
            save_nifti(tmp / scan, np.clip(np.rint(hu), -32768, 32767).astype(np.int16), ph.affine)
            rows.append([scan, label, region, len(records), ";".join(r["kind"] for r in records), mask_rel])
            lesion_rows += [[scan, k + 1, r["kind"], r["organ"], *r["centre_zyx"], r["diameter_mm"], r["delta_hu"],
                             r["voxels"]] for k, r in enumerate(records)]
        for fname, header, body in (
                ("labels.csv", ["scan", "label", "region", "n_lesions", "kinds", "mask"], rows),
                ("lesions.csv", ["scan", "lesion", "kind", "organ", "centre_z", "centre_y", "centre_x",
                                 "diameter_mm", "delta_hu", "voxels"], lesion_rows)):
            with open(tmp / fname, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(header)
                writer.writerows(body)
    return out_dir / "labels.csv"
