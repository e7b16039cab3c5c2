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
