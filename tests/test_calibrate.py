import json
import warnings

import numpy as np
import pytest
from scipy import stats

from aeanomaly.calibrate import Calibrator, benjamini_hochberg, conformal_threshold
from aeanomaly.errors import ConfigError, NotFittedError


def test_empirical_threshold_and_p_values_by_hand():
    s = np.arange(1, 20, dtype=float)  # n = 19, alpha 0.05 -> k = ceil(20 * 0.95) = 19 -> the max
    cal = Calibrator("empirical", 0.05).fit(s[::-1])
    assert cal.threshold_ == 19.0 and cal.achievable_
    np.testing.assert_allclose(cal.p_value([19.0, 19.5, 0.0, 10.0]), [2 / 20, 1 / 20, 1.0, 11 / 20])
    np.testing.assert_array_equal(cal.predict([19.0, 19.5]), [False, True])
    cal10 = Calibrator("empirical", 0.1).fit(s)  # k = ceil(20 * 0.9) = 18
    assert cal10.threshold_ == 18.0


def test_too_few_normals_is_unachievable_with_warning():
    with pytest.warns(UserWarning, match="at least 19 normal"):
        cal = Calibrator("empirical", 0.05).fit(np.arange(9.0))
    assert cal.threshold_ == np.inf and not cal.achievable_ and not cal.predict([1e9]).any()
    assert json.loads(json.dumps(cal.to_dict()))["threshold"] is None


def test_predict_iff_p_value_below_alpha_with_ties():
    rng = np.random.default_rng(0)
    normals = np.round(rng.gamma(2.0, size=59), 1)  # many ties
    cal = Calibrator("empirical", 0.05).fit(normals)
    test = np.concatenate([normals, np.round(rng.gamma(2.0, size=500), 1), [cal.threshold_]])
    np.testing.assert_array_equal(cal.predict(test), cal.p_value(test) <= 0.05)


@pytest.mark.parametrize("dist", [stats.gamma(2.0), stats.lognorm(1.2)])
def test_conformal_fpr_guarantee_over_many_draws(dist):
    rng = np.random.default_rng(1)
    reps, n, m, alpha = 2000, 99, 1000, 0.05
    calib = np.sort(dist.rvs(size=(reps, n), random_state=rng), axis=1)
    k = int(np.ceil((n + 1) * (1 - alpha)))
    thr = calib[:, k - 1]
    test = dist.rvs(size=(reps, m), random_state=rng)
    fpr = (test > thr[:, None]).mean()
    assert alpha - 0.02 <= fpr <= alpha + 0.005
    # the class gives the same thresholds
    for i in range(3):
        assert Calibrator("empirical", alpha).fit(calib[i]).threshold_ == thr[i]


@pytest.mark.parametrize("method", ["gamma", "lognormal", "kde"])
def test_parametric_methods_recover_quantile(method):
    rng = np.random.default_rng(2)
    true = stats.lognorm(0.5, scale=1.5) if method == "lognormal" else stats.gamma(3.0, scale=0.5)
    s = true.rvs(size=4000, random_state=rng)
    cal = Calibrator(method, 0.05).fit(s)
    assert cal.threshold_ == pytest.approx(true.isf(0.05), rel=0.03)
    assert cal.p_value(cal.threshold_) == pytest.approx(0.05, abs=0.002)
    assert cal.predict([cal.threshold_ * 1.01])[0] and not cal.predict([cal.threshold_ * 0.99])[0]
    if method != "kde":
        assert 0 <= cal.gof_["ks_statistic"] < 0.1 and "ks_pvalue" in cal.gof_
    assert cal.density(np.array([1.0, 2.0])).shape == (2,)


def test_round_trip_manual_threshold_and_refit():
    rng = np.random.default_rng(3)
    cal = Calibrator("gamma", 0.1).fit(rng.gamma(2.0, size=50))
    cal.set_threshold(7.5, reason="clinic prefers fewer alarms")
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    x = np.linspace(0, 10, 7)
    np.testing.assert_allclose(back.p_value(x), cal.p_value(x), atol=1e-12)
    assert back.threshold_ == 7.5 and back.manual_ and back.reason_.startswith("clinic")
    again = cal.with_target_fpr(0.2)
    assert again.threshold_ < Calibrator("gamma", 0.1).fit(cal.scores_).threshold_ and not again.manual_
    assert cal.observed_fpr(cal.scores_) == pytest.approx(np.mean(cal.scores_ > 7.5))


def test_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        Calibrator().p_value([1.0])
    with pytest.raises(ConfigError, match="method"):
        Calibrator("magic").fit([1.0, 2.0])
    with pytest.raises(ConfigError, match="target_fpr"):
        Calibrator("empirical", 1.5).fit([1.0, 2.0])
    with pytest.raises(ConfigError, match="NaN"):
        Calibrator().fit([1.0, np.nan, 2.0])
    with pytest.raises(ConfigError, match="at least 2"):
        Calibrator().fit([1.0])
    with pytest.raises(ConfigError, match="equal"):
        Calibrator("gamma").fit([1.0, 1.0, 1.0])


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.20, 0.005]
    # sorted: .005 .01 .03 .04 .2 vs q*i/n = .01 .02 .03 .04 .05 -> largest passing i = 4
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.05), [True, True, True, False, True])
    assert not benjamini_hochberg([0.5, 0.9]).any() and benjamini_hochberg([]).size == 0
    assert conformal_threshold([3.0, 1.0, 2.0], 0.5) == 2.0
