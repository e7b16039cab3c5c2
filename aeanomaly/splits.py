"""The one splitter: scans (or patients) into train / validation / calibration sides, never by slice.

* :func:`split_scans` — the detector's three-way split of normal scans by group (patient).
* :func:`stratified_holdout` — a two-way train / validation split stratified by a label (the scan
  class of ``fit-head``, "has abnormal data" of ``data prepare``).
* :func:`split_patients` — :func:`stratified_holdout` over patients, as a ``{patient: side}`` map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Split:
    """Indices into the list of scans for each side; no scan (or group) is on two sides."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    calib: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "calib": list(self.calib)}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(tuple(d["train"]), tuple(d["val"]), tuple(d["calib"]))


def split_scans(
    n_scans: int,
    val_fraction: float = 0.15,
    calib_fraction: float = 0.3,
    seed: int = 0,
    groups: list | None = None,
) -> Split:
    """Random split of ``n_scans`` scans by group (patient; default each scan its own group).

    Training and validation get at least one group and calibration at least two (a calibrator needs
    two scores); the fractions are of groups.

    Parameters
    ----------
    n_scans : int
        Number of scans.
    val_fraction, calib_fraction : float
        Fractions of groups held out for validation and calibration; each in (0, 1), sum < 1.
    seed : int
        Seed of the permutation.
    groups : list, optional
        Group (patient) id per scan.

    Returns
    -------
    Split

    Raises
    ------
    ConfigError
        Fewer than four groups, or fractions that leave no training data.
    """
    if not (0 < val_fraction < 1 and 0 < calib_fraction < 1 and val_fraction + calib_fraction < 1):
        raise ConfigError(
            f"val-fraction ({val_fraction}) and calib-fraction ({calib_fraction}) must be in (0, 1) and sum to < 1"
        )
    groups = list(range(n_scans)) if groups is None else list(groups)
    if len(groups) != n_scans:
        raise ConfigError(f"{len(groups)} group ids given for {n_scans} scans")
    uniq = sorted(set(map(str, groups)))
    g = len(uniq)
    if g < 4:
        raise ConfigError(
            f"too few scans for the train / validation / calibration splits: {g} "
            f"{'patients' if g != n_scans else 'scans'}, need at least 4 (calibration needs about "
            "1/target_fpr held-out normal scans to be exact)"
        )
    order = np.random.default_rng(seed).permutation(g)
    n_val = max(1, int(round(val_fraction * g)))
    n_cal = max(2, int(round(calib_fraction * g)))
    if n_val + n_cal >= g:
        n_val, n_cal = 1, max(2, min(n_cal, g - 2))
    side = np.empty(g, dtype=object)
    side[order[:n_cal]] = "calib"
    side[order[n_cal : n_cal + n_val]] = "val"
    side[order[n_cal + n_val :]] = "train"
    of_group = {u: side[i] for i, u in enumerate(uniq)}
    members: dict[str, list[int]] = {"train": [], "val": [], "calib": []}
    for i, grp in enumerate(groups):
        members[of_group[str(grp)]].append(i)
    return Split(tuple(members["train"]), tuple(members["val"]), tuple(members["calib"]))


def stratified_holdout(strata: Sequence[Hashable], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of a train / validation split stratified by ``strata``.

    Each stratum of ``m ≥ 2`` members gives ``round(fraction · m)`` (half up), at least 1 and at most
    ``m − 1``, to validation; a stratum of one member stays in training. When that leaves validation
    empty (every stratum a singleton), one random item is held out. With ``fraction <= 0`` or fewer
    than two items everything is training.

    Parameters
    ----------
    strata : sequence of hashable
        Stratum of each item (e.g. its class).
    fraction : float
        Fraction held out for validation, in [0, 1).
    seed : int
        Seed of the permutations.

    Returns
    -------
    train, val : list of int
        Sorted indices; disjoint and together ``range(len(strata))``.

    Raises
    ------
    ConfigError
        ``fraction`` outside [0, 1).
    """
    n = len(strata)
    if not 0.0 <= float(fraction) < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    rng = np.random.default_rng(seed)
    keys = sorted(set(strata), key=lambda s: (type(s).__name__, str(s)))
    val: list[int] = []
    for s in keys:
        members = rng.permutation([i for i in range(n) if strata[i] == s])
        m = len(members)
        k = min(max(int(math.floor(fraction * m + 0.5)), 1), m - 1) if m > 1 else 0
        val += [int(i) for i in members[:k]]
    if not val:
        val = [int(rng.integers(n))]
    held = set(val)
    return [i for i in range(n) if i not in held], sorted(val)


def split_patients(has_abnormal: dict, val_fraction: float, seed: int = 0) -> dict:
    """Assign each patient to ``train`` or ``val``, stratified by whether it has abnormal data.

    Parameters
    ----------
    has_abnormal : dict
        Patient id → True when any of its scans / slices is abnormal.
    val_fraction : float
        Fraction of patients held out (see :func:`stratified_holdout`); 0 puts everyone in ``train``.
    seed : int
        Seed of the split.

    Returns
    -------
    dict
        Patient id → ``"train"`` or ``"val"``.
    """
    patients = sorted(has_abnormal, key=str)
    _, val = stratified_holdout([bool(has_abnormal[p]) for p in patients], val_fraction, seed)
    held = {patients[i] for i in val}
    return {p: "val" if p in held else "train" for p in has_abnormal}
