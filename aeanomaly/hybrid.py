"""Hybrid scoring: what the optional supervised head of a bundle adds to the autoencoder's result.

* U-Net head — an organ label map on the model grid (:func:`organ_label_map`): the head's labels,
  kept only inside the cleaned organ region (largest components, holes filled) and with the filled
  holes given the nearest organ's label. Its non-zero part is the region the residuals are restricted
  to (:func:`aeanomaly.masks.scoring_region`); each lesion is named after the organ most of its
  voxels lie in (:func:`lesion_organs`).
* CNN head — the per-slice and scan-level classifier probability of abnormal and, when the head holds
  a fitted fusion, the fused probability (logistic stacking of the scan p-value and the classifier
  probability) (:func:`classifier_outputs`).

Pure functions of a head and arrays; nothing here touches files or a detector.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .masks import clean_region_mask
from .preprocess import mask_to_model_grid

#: Minimum area of a kept region component, as a fraction of the slice (see ``clean_region_mask``).
REGION_MIN_FRACTION = 0.01


def organ_label_map(head, x: np.ndarray, min_fraction: float = REGION_MIN_FRACTION) -> np.ndarray:
    """The U-Net head's cleaned organ labels of slices ``x``.

    Parameters
    ----------
    head : SupervisedHead
        A fitted ``kind="unet"`` head.
    x : np.ndarray
        float32 ``(z, size, size, channels)`` model-grid slices in [0, 1].
    min_fraction : float
        Region components smaller than this fraction of a slice are dropped.

    Returns
    -------
    np.ndarray
        int16 ``(z, size, size)``: 0 outside the cleaned region, ``k`` = ``head.classes_[k - 1]``
        inside. ``labels > 0`` equals ``head.region_mask(x, min_fraction)``.
    """
    raw = head.predict_labels(x)
    return fill_region_labels(raw, clean_region_mask(raw > 0, min_fraction))


def fill_region_labels(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Labels restricted to ``region``; region pixels labelled 0 (filled holes) take the label of the
    nearest labelled pixel of their slice.

    Parameters
    ----------
    labels : np.ndarray
        int ``(z, y, x)`` label map (0 = background).
    region : np.ndarray
        bool ``(z, y, x)``.

    Returns
    -------
    np.ndarray
        int16 ``(z, y, x)``, a new array; non-zero exactly on ``region`` (where a slice has labels).
    """
    lab = np.asarray(labels)
    reg = np.asarray(region, dtype=bool)
    out = np.where(reg, lab, 0).astype(np.int16)
    for k in range(out.shape[0]):
        holes = reg[k] & (out[k] == 0)
        if holes.any() and (out[k] > 0).any():
            _, (iy, ix) = ndimage.distance_transform_edt(out[k] == 0, return_indices=True)
            out[k][holes] = out[k][iy[holes], ix[holes]]
    return out


def lesion_organs(head, organ_labels: np.ndarray, lesion_labels: np.ndarray, lesions: list) -> list:
    """Lesions with their ``organ``: the class most of the lesion's voxels lie in
    (``"background"`` when none lies in an organ).

    Parameters
    ----------
    head : SupervisedHead
        The U-Net head (for the class names).
    organ_labels : np.ndarray
        int ``(z, size, size)`` from :func:`organ_label_map`.
    lesion_labels : np.ndarray
        int ``(z, size, size)``: lesion ``id`` ``k`` is the voxels equal to ``k``.
    lesions : list of Lesion
        From :func:`aeanomaly.localize.find_lesions`.

    Returns
    -------
    list of Lesion
        New lesions (the inputs are not modified).
    """
    out = []
    for les in lesions:
        inside = (lesion_labels == les.id) & (organ_labels > 0)
        out.append(les.with_(organ=head.organ_of(organ_labels, inside)))
    return out


def classifier_outputs(head, prep, p_value: float) -> tuple[np.ndarray, float | None, float | None]:
    """The CNN head's view of one scan.

    Parameters
    ----------
    head : SupervisedHead
        A fitted ``kind="cnn"`` head.
    prep : PreparedScan
        The scan on the model grid; only slices with ``prep.keep`` are classified.
    p_value : float
        The autoencoder's scan p-value.

    Returns
    -------
    slice_proba : np.ndarray
        float ``(z,)`` probability of abnormal per slice, NaN where not kept.
    head_proba : float or None
        Scan probability of abnormal (max over kept slices); None when no slice is kept.
    fused_proba : float or None
        Fused probability of abnormal; None without a fitted fusion or a finite ``head_proba``.
    """
    keep = np.asarray(prep.keep, dtype=bool)
    slice_proba = np.full(keep.shape, np.nan)
    if keep.any():
        slice_proba[keep] = head.abnormal_proba(prep.x[keep])
    head_proba = float(np.max(slice_proba[keep])) if keep.any() else None
    fused = None
    if getattr(head, "fusion_", None) is not None and head_proba is not None and math.isfinite(p_value):
        fused = float(head.fused_proba([p_value], [head_proba])[0])
    return slice_proba, head_proba, fused


def head_outputs(head, prep, p_value: float, lesions: list, lesion_labels: np.ndarray,
                 organ_labels: np.ndarray | None = None) -> dict:
    """Everything a supervised head adds to a :class:`~aeanomaly.detector.ScanResult`.

    Parameters
    ----------
    head : SupervisedHead or None
    prep : PreparedScan
    p_value : float
        The autoencoder's scan p-value.
    lesions, lesion_labels
        From :func:`aeanomaly.localize.find_lesions`.
    organ_labels : np.ndarray, optional
        A U-Net head's :func:`organ_label_map` of ``prep`` when already computed (it is computed here
        otherwise).

    Returns
    -------
    dict
        ``lesions`` (with ``organ`` for a U-Net head), ``organ_labels`` (int16 ``(z, size, size)`` or
        None), ``head_proba``, ``fused_proba`` (float or None) and ``slice_head_proba`` (``(z,)`` or
        None). Without a head: the lesions unchanged and None elsewhere.
    """
    out = dict(lesions=lesions, organ_labels=None, head_proba=None, fused_proba=None, slice_head_proba=None)
    if head is None:
        return out
    if head.kind == "unet":
        organs = organ_labels if organ_labels is not None else organ_label_map(head, prep.x)
        out.update(organ_labels=organs, lesions=lesion_organs(head, organs, lesion_labels, lesions))
    else:
        sp, hp, fp = classifier_outputs(head, prep, p_value)
        out.update(slice_head_proba=sp, head_proba=hp, fused_proba=fp)
    return out


def label_map_to_model_grid(labels: np.ndarray, label_values, size: int) -> np.ndarray:
    """A source organ label map on the model grid, in the head's class numbering.

    Parameters
    ----------
    labels : np.ndarray
        int ``(z, y, x)`` label map in the scan's geometry.
    label_values : list of list of int, or None
        Per class ``k`` (1-based), the source values that mean it (``head.label_values``); None: every
        non-zero value is class 1.
    size : int
        Model grid size in pixels.

    Returns
    -------
    np.ndarray
        int16 ``(z, size, size)``, 0 = background.
    """
    if label_values is None:
        return mask_to_model_grid(np.asarray(labels) > 0, size).astype(np.int16)
    out = None
    for k, vals in enumerate(label_values, start=1):
        m = mask_to_model_grid(np.isin(labels, vals), size)
        if out is None:
            out = np.zeros(m.shape, np.int16)
        out[m] = k
    return out
