"""Shared fixtures of the dataset tests: a small MSD-liver-like tree."""

import nibabel as nib
import numpy as np
import pytest

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def save_nii(path, data_xyz, dtype=np.int16):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data_xyz, dtype=dtype), AFFINE), str(path))


def ct_volume(rng, nz=4):
    return rng.integers(-1000, 400, size=(32, 32, nz)).astype(np.int16)


@pytest.fixture
def msd_liver(tmp_path, rng):
    """Task03_Liver-like tree: liver_0 (tumour in slices 1-2), liver_1 (liver only), liver_2 (tumour in slice 3)."""
    root = tmp_path / "Task03_Liver"
    (root / "dataset.json").parent.mkdir(parents=True)
    (root / "dataset.json").write_text("{}")
    tumour_slices = {0: [1, 2], 1: [], 2: [3]}
    for n, zs in tumour_slices.items():
        save_nii(root / "imagesTr" / f"liver_{n}.nii.gz", ct_volume(rng))
        lab = np.zeros((32, 32, 4), np.uint8)
        lab[8:24, 8:24, :] = 1
        for z in zs:
            lab[12:16, 12:16, z] = 2
        save_nii(root / "labelsTr" / f"liver_{n}.nii.gz", lab, np.uint8)
    (root / "labelsTr" / "._liver_0.nii.gz").write_bytes(b"macOS resource fork")  # hidden: ignored
    return root, tumour_slices
