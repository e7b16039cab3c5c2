"""Real-CT data of the real_ct benchmark: the normal training / test sets split by patient, and the two
LIDC-IDRI patients with their readers' nodule outlines.

Sources (``$AEANOMALY_SHARED_DATA``, default ``../shared/data``; see its README for licences):

* ``tcga-luad-slices``: single DICOM slices, patient = ``PatientID`` of the header (read with pydicom).
* ``kmader-lungs-512``: one slice per LUNA16 scan (each its own patient); the TIFFs carry no pixel size,
  so :data:`KMADER_PIXEL_MM` is assumed (LUNA16 scans have 0.55–0.8 mm pixels).
* ``lidc-idri``: for a fold that tests patient P, the *other* patient's nodule-free slabs: contiguous
  runs of slices at least :data:`LIDC_MARGIN_MM` from any slice that any reader outlined.
* ``totalseg-examples/example_ct.nii.gz``: its chest part (slices where the aerated lung (< −400 HU) is at least
  :data:`CHEST_LUNG_FRACTION` of the body).

Derived volumes (slabs, the chest part, kmader slices with their pixel size) are written as NIfTI into
the benchmark's temporary work folder, never into the data folder or the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KMADER_PIXEL_MM = 0.7
LIDC_MARGIN_MM = 10.0
LIDC_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003")
CHEST_LUNG_FRACTION = 0.03  # the example is mostly abdomen: its chest part is the lung bases
MIN_SLAB_SLICES = 3


def shared_data() -> Path:
    here = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("AEANOMALY_SHARED_DATA", here.parent / "shared" / "data"))


def available(root: Path | None = None) -> str | None:
    """None when every folder the benchmark needs is there, else the reason it cannot run."""
    root = root or shared_data()
    need = ["tcga-luad-slices/dicom", "kmader-lungs-512/images", "totalseg-examples/example_ct.nii.gz",
            *(f"lidc-idri/{p}/ct.nii.gz" for p in LIDC_PATIENTS), *(f"lidc-idri/{p}/nodules.nii.gz" for p in LIDC_PATIENTS)]
    missing = [n for n in need if not (root / n).exists()]
    return f"shared real-CT data missing under {root}: {', '.join(missing)}" if missing else None


@dataclass
class Item:
    """One normal scan file: its path, its patient id (split unit) and its source folder."""

    path: str
    patient: str
    source: str


@dataclass
class NormalSets:
    """Normal scans split by patient: ``train`` (given to ``fit``, which splits off validation and
    calibration by patient), ``tune`` and ``test`` (held-back patients: Test B hosts and test normals)."""

    train: list[Item] = field(default_factory=list)
    tune: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)

    def summary(self) -> dict:
        out = {}
        for side in ("train", "tune", "test"):
            items = getattr(self, side)
            out[side] = {"n_scans": len(items), "n_patients": len({i.patient for i in items}),
                         "by_source": {s: sum(i.source == s for i in items) for s in sorted({i.source for i in items})}}
        return out


def write_nifti(path: Path, hu: np.ndarray, spacing_zyx) -> Path:
    """``(z, y, x)`` HU volume as an int16 NIfTI with a diagonal LPS-like affine (atomic write)."""
    import nibabel as nib

    sz, sy, sx = (float(s) for s in spacing_zyx)
    aff = np.diag([-sx, -sy, sz, 1.0])
    data = np.clip(np.round(np.asarray(hu, np.float32)), -2048, 3071).astype(np.int16).transpose(2, 1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    nib.save(nib.Nifti1Image(data, aff), str(tmp))
    os.replace(tmp, path)
    return path


def tcga_items(root: Path) -> list[Item]:
    import pydicom

    out = []
    for p in sorted((root / "tcga-luad-slices" / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        out.append(Item(str(p), f"tcga:{ds.PatientID}", "tcga"))
    return out


def kmader_items(root: Path, work: Path) -> list[Item]:
    """Each kmader-lungs-512 slice as a one-slice NIfTI with :data:`KMADER_PIXEL_MM` pixels."""
    from aeanomaly.io import load_scan

    out = []
    for p in sorted((root / "kmader-lungs-512" / "images").glob("*.tif")):
        hu = load_scan(p).hu
        q = write_nifti(work / "kmader" / f"{p.stem}.nii.gz", hu, (2.5, KMADER_PIXEL_MM, KMADER_PIXEL_MM))
        out.append(Item(str(q), f"kmader:{p.stem.split('_Z_')[0]}", "kmader"))
    return out


def lidc_volume(root: Path, patient: str):
    """``(scan, readers)``: the LIDC scan and the voxel count of readers (uint8, same grid)."""
    from aeanomaly.io import load_label, load_scan

    d = root / "lidc-idri" / patient
    scan = load_scan(d / "ct.nii.gz")
    return scan, np.asarray(load_label(d / "nodules.nii.gz", like=scan), np.uint8)


def nodule_free_slabs(readers: np.ndarray, slice_mm: float, margin_mm: float = LIDC_MARGIN_MM,
                      min_slices: int = MIN_SLAB_SLICES) -> list[tuple[int, int]]:
    """``[(z0, z1), ...]`` half-open runs of slices at least ``margin_mm`` from any outlined slice."""
    marked = np.flatnonzero(readers.reshape(len(readers), -1).max(axis=1) > 0)
    z = np.arange(len(readers))
    far = np.ones(len(readers), bool) if marked.size == 0 else \
        np.min(np.abs(z[:, None] - marked[None, :]), axis=1) * slice_mm >= margin_mm
    runs, start = [], None
    for i, f in enumerate(np.r_[far, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start >= min_slices:
                runs.append((start, i))
            start = None
    return runs


def lidc_slab_items(root: Path, patient: str, work: Path, max_slab: int = 40) -> list[Item]:
    scan, readers = lidc_volume(root, patient)
    out = []
    for z0, z1 in nodule_free_slabs(readers, scan.spacing[0]):
        for a in range(z0, z1, max_slab):
            b = min(z1, a + max_slab)
            if b - a < MIN_SLAB_SLICES:
                continue
            q = write_nifti(work / "lidc" / f"{patient}_{a:03d}_{b:03d}.nii.gz", scan.hu[a:b], scan.spacing)
            out.append(Item(str(q), f"lidc:{patient}", "lidc"))
    return out


def chest_part_item(root: Path, work: Path) -> Item:
    from aeanomaly.io import load_scan
    from aeanomaly.masks import body_mask

    scan = load_scan(root / "totalseg-examples" / "example_ct.nii.gz")
    body = body_mask(scan.hu, is_hu=True)
    lung = body & (scan.hu < -400)
    frac = lung.reshape(len(lung), -1).sum(1) / np.maximum(body.reshape(len(body), -1).sum(1), 1)
    z = np.flatnonzero(frac >= CHEST_LUNG_FRACTION)
    z0, z1 = int(z.min()), int(z.max()) + 1
    q = write_nifti(work / "totalseg" / "example_ct_chest.nii.gz", scan.hu[z0:z1], scan.spacing)
    return Item(str(q), "totalseg:example", "totalseg")


def normal_sets(root: Path, work: Path, test_patient: str, *, seed: int = 0, held_fraction: float = 0.3,
                limit: int | None = None) -> NormalSets:
    """The normal scans of one fold, split by patient.

    TCGA and kmader patients: ``held_fraction`` of them held back (half tune, half test), the same for
    every fold (seeded); the LIDC slabs of the patient not under test and the totalseg chest part are
    training only. ``limit`` caps each source's patients (quick runs).
    """
    rng = np.random.default_rng(seed)
    sets = NormalSets()
    for items in (tcga_items(root), kmader_items(root, work)):
        patients = sorted({i.patient for i in items})
        patients = [patients[k] for k in rng.permutation(len(patients))]
        if limit:
            patients = patients[:limit]
        n_held = max(2, int(round(held_fraction * len(patients))))
        tune, test = set(patients[:n_held // 2]), set(patients[n_held // 2:n_held])
        train = set(patients[n_held:])
        for it in items:
            side = "tune" if it.patient in tune else "test" if it.patient in test else "train" if it.patient in train else None
            if side:
                getattr(sets, side).append(it)
    other = [p for p in LIDC_PATIENTS if p != test_patient]
    for p in other:
        slabs = lidc_slab_items(root, p, work)
        sets.train += slabs[:limit] if limit else slabs
    sets.train.append(chest_part_item(root, work))
    return sets
