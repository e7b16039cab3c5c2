"""Splitting scans into train / validation / calibration sets by scan (or patient), never by slice."""

from __future__ import annotations

from dataclasses import dataclass

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
    two scores); the fractions are of groups. Raises ConfigError when there are fewer than four groups
    or the fractions leave no training data.
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
    members = {"train": [], "val": [], "calib": []}
    for i, grp in enumerate(groups):
        members[of_group[str(grp)]].append(i)
    return Split(tuple(members["train"]), tuple(members["val"]), tuple(members["calib"]))
