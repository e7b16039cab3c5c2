import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.splits import Split, split_scans


def test_split_is_disjoint_complete_and_deterministic():
    s = split_scans(20, 0.15, 0.3, seed=3)
    all_ids = s.train + s.val + s.calib
    assert sorted(all_ids) == list(range(20))
    assert len(s.calib) == 6 and len(s.val) == 3 and len(s.train) == 11
    assert s == split_scans(20, 0.15, 0.3, seed=3)
    assert s != split_scans(20, 0.15, 0.3, seed=4)
    assert Split.from_dict(s.to_dict()) == s


def test_split_by_patient_never_crosses_sides():
    groups = [f"p{i // 3}" for i in range(30)]
    s = split_scans(30, 0.2, 0.3, seed=0, groups=groups)
    side = {}
    for name in ("train", "val", "calib"):
        for i in getattr(s, name):
            assert side.setdefault(groups[i], name) == name


def test_too_few_scans_and_bad_fractions():
    with pytest.raises(ConfigError, match="too few scans.*3 scans"):
        split_scans(3)
    with pytest.raises(ConfigError, match="patients"):
        split_scans(5, groups=["a", "a", "b", "b", "b"])
    with pytest.raises(ConfigError, match="fraction"):
        split_scans(10, 0.6, 0.5)
    s = split_scans(4)
    assert len(s.train) == len(s.val) == 1 and len(s.calib) == 2


# -- the two-way stratified split (fit-head, data prepare) -------------------------------------------

from aeanomaly.splits import split_patients, stratified_holdout  # noqa: E402


def test_stratified_holdout_is_stratified_disjoint_and_seeded():
    strata = [0] * 6 + [1] * 4
    train, val = stratified_holdout(strata, 0.25, seed=0)
    assert sorted(train + val) == list(range(10)) and not set(train) & set(val)
    assert sum(strata[i] == 0 for i in val) == 2 and sum(strata[i] == 1 for i in val) == 1  # 1.5 → 2, 1.0 → 1
    assert stratified_holdout(strata, 0.25, seed=0) == (train, val)
    assert stratified_holdout(strata, 0.25, seed=1) != (train, val)
    assert stratified_holdout([0, 0, 0], 0.0, seed=0) == ([0, 1, 2], [])
    assert stratified_holdout([0], 0.5) == ([0], [])


def test_stratified_holdout_keeps_both_sides_and_refuses_bad_fractions():
    # small strata: at least one of each stratum held out, never a whole stratum
    train, val = stratified_holdout([0, 0, 1, 1], 0.01, seed=3)
    assert len(val) == 2 and len(train) == 2
    train, val = stratified_holdout([0, 0, 1, 1], 0.99, seed=3)
    assert len(val) == 2 and len(train) == 2
    train, val = stratified_holdout(["a", "b", "c"], 0.5, seed=0)  # all singletons: one random item held out
    assert len(val) == 1 and len(train) == 2
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ConfigError, match="fraction"):
            stratified_holdout([0, 0, 1], bad)


def test_split_patients_is_disjoint_stratified_and_seeded():
    has = {f"p{i:02d}": i < 6 for i in range(20)}
    side = split_patients(has, 0.2, seed=4)
    val = {p for p, s in side.items() if s == "val"}
    assert set(side) == set(has)
    assert len(val) == 4 and sum(has[p] for p in val) == 1  # round(.2*6)=1 abnormal, round(.2*14)=3 normal
    assert split_patients(has, 0.2, seed=4) == side and split_patients(has, 0.2, seed=5) != side
    assert set(split_patients(has, 0.0).values()) == {"train"}
    assert sorted(split_patients({"a": True, "b": False}, 0.1).values()) == ["train", "val"]
    assert sorted(split_patients({"a": True, "b": False}, 0.9).values()) == ["train", "val"]
    assert split_patients({"a": True}, 0.5) == {"a": "train"}
    # the order the patients are given in does not change the split
    rev = dict(reversed(list(has.items())))
    assert split_patients(rev, 0.2, seed=4) == side
