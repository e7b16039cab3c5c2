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


def test_pixel_threshold_from_tails_is_the_quantile_of_all_normal_pixels(rng):
    from aeanomaly.calibrate import heatmap_tail, pixel_threshold

    scans = [rng.random(n) for n in (30000, 45000, 20000)]  # per scan: heatmap values in its mask
    everything = np.sort(np.concatenate(scans))[::-1]
    for q in (0.999, 0.995, 0.99):
        thr = pixel_threshold([heatmap_tail(v) for v in scans], sum(v.size for v in scans), q)
        m = int(np.ceil((1 - q) * everything.size))
        assert thr == pytest.approx(everything[m - 1], abs=1e-6)  # exact: the m-th largest pixel
        assert thr == pytest.approx(q, abs=0.003)  # uniform values: the q-quantile is q
    assert heatmap_tail(np.arange(100.0), 0.02).tolist() == [98.0, 99.0]
    with pytest.raises(ConfigError, match="quantile"):
        pixel_threshold([scans[0]], scans[0].size, 1.0)
    with pytest.raises(ConfigError, match="no normal heatmap values"):
        pixel_threshold([], 0, 0.99)


def test_auto_method_chooses_conformal_only_with_enough_scans_and_says_so(rng):
    from aeanomaly.calibrate import conformal_minimum

    assert conformal_minimum(0.05) == 19 and conformal_minimum(0.2) == 4
    many = Calibrator("auto", 0.05).fit(rng.gamma(2.0, size=40))
    assert many.method_ == "empirical" and many.to_dict()["method"] == "empirical"
    with pytest.warns(UserWarning, match="at least 19 normal scans"):
        few = Calibrator("auto", 0.05).fit(rng.gamma(2.0, size=5) + 0.1)
    assert few.method_ == "gamma" and Calibrator.from_dict(few.to_dict()).method_ == "gamma"


def test_calibration_operating_point_round_trip_and_changes(rng):
    from aeanomaly.calibrate import Calibration, NormalStats

    stats = NormalStats()
    for k in range(25):
        heat = rng.random((3, 16, 16)).astype(np.float32)
        stats.add(f"scan{k}", float(heat.max()), heat.max(axis=(1, 2)), heat, np.ones(heat.shape, bool))
    cal = Calibration.fit(stats, target_fpr=0.1, pixel_quantile=0.99)
    assert cal.scan.method_ == "empirical" and len(cal.sources) == 25 and cal.normal_peaks.size == 75
    again = Calibration.from_dict(cal.to_dict())
    assert again.to_dict() == cal.to_dict()
    looser = cal.with_target_fpr(0.3, "screening")
    assert looser.target_fpr == 0.3 and cal.target_fpr == 0.1  # a new object; the old one is unchanged
    assert looser.log[-1]["reason"] == "screening" and len(looser.log) == len(cal.log) + 1
    manual = cal.with_threshold(0.5, "fixed")
    assert manual.scan.threshold_ == 0.5 and cal.scan.threshold_ != 0.5 and manual.scan.manual_
    with pytest.raises(ConfigError, match="malformed"):
        Calibration.from_dict({"scan": {}})
    # a fused heatmap's residual scale is kept through every change; calibration.json of before: None
    fused = Calibration.fit(stats, target_fpr=0.1, pixel_quantile=0.99, residual_scale=0.03)
    assert Calibration.from_dict(fused.to_dict()).residual_scale == 0.03
    assert fused.with_target_fpr(0.2).residual_scale == fused.with_threshold(0.5).residual_scale == 0.03
    old = {k: v for k, v in cal.to_dict().items() if k != "residual_scale"}
    assert cal.residual_scale is None and Calibration.from_dict(old).residual_scale is None
    with pytest.raises(ConfigError, match="residual_scale"):
        Calibration.fit(stats, target_fpr=0.1, residual_scale=0.0)


@pytest.mark.parametrize("method", ["empirical", "gamma"])
def test_fpr_upper_bound_holds_with_its_probability_over_calibration_sets(method):
    """Over many draws of 27 calibration normals, the threshold's true FPR exceeds the 90 % bound in
    at most about 10 % of the draws (exactly 10 % for the conformal threshold; the bound also holds for a
    parametric threshold, conservatively), and the conformal bound is the Beta(1, 27) quantile."""
    rng = np.random.default_rng(2)
    n, alpha, reps = 27, 0.05, 1500
    over, bounds = 0, []
    dist = stats.gamma(2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(reps):
            cal = Calibrator(method, alpha).fit(dist.rvs(size=n, random_state=rng))
            b = cal.fpr_upper_bound(0.9)
            over += float(dist.sf(cal.threshold_)) > b
            bounds.append(b)
    assert over / reps <= 0.10 + 0.025
    if method == "empirical":
        assert over / reps >= 0.10 - 0.025  # exact, not merely conservative
        assert bounds[0] == pytest.approx(1 - 0.1 ** (1 / 27), rel=1e-9)  # the maximum of 27: Beta(1, 27)
    cal = Calibrator("empirical", alpha).fit(np.arange(27.0))
    assert cal.set_threshold(-1.0).fpr_upper_bound() == 1.0 and cal.set_threshold(np.inf).fpr_upper_bound() == 0.0
    with pytest.raises(ConfigError, match="confidence"):
        cal.fpr_upper_bound(1.0)


@pytest.mark.parametrize("method", ["empirical", "gamma"])
def test_fpr_check_false_alarms_at_most_alpha_and_catches_shifted_normals(method):
    """New normals exchangeable with the calibration ones: 'excess' in at most about 5 % of the draws of
    calibration set and new normals (the beta-binomial tail counts both). Normals from a shifted
    distribution (another scanner): 'excess' in most draws, and the rank test sees the shift."""
    rng = np.random.default_rng(3)
    dist = stats.gamma(2.0)
    reps, alarms, shift_alarms, caught, shift_p = 300, 0, 0, 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(reps):
            cal = Calibrator(method, 0.05).fit(dist.rvs(size=27, random_state=rng))
            same = cal.fpr_check(dist.rvs(size=15, random_state=rng))
            alarms += same["excess"]
            shift_alarms += same["shifted"]
            lo, hi = same["ci95"]
            assert lo <= same["observed_fpr"] <= hi and same["n_normal"] == 15
            moved = cal.fpr_check(dist.rvs(size=15, random_state=rng) + 4.0)
            caught += moved["excess"]
            shift_p.append(moved["p_shift"])
    assert alarms / reps <= 0.05 + 0.02 and shift_alarms / reps <= 0.05 + 0.025
    assert caught / reps >= 0.8 and np.median(shift_p) < 0.01


def test_fpr_check_edge_cases():
    cal = Calibrator("empirical", 0.05).fit(np.arange(40.0))
    empty = cal.fpr_check([np.nan])
    assert empty["n_normal"] == 0 and empty["observed_fpr"] is None and empty["excess"] is False
    none = cal.fpr_check(np.arange(10.0))
    assert none["n_flagged"] == 0 and none["p_excess"] == 1.0 and none["ci95"][0] == 0.0
    allflag = cal.fpr_check(np.full(10, 100.0))
    assert allflag["n_flagged"] == 10 and allflag["excess"] and allflag["p_excess"] < 1e-6
    assert cal.set_threshold(np.inf).fpr_check(np.full(5, 1e9))["n_flagged"] == 0
    low = Calibrator("empirical", 0.05).fit(np.arange(40.0)).set_threshold(-1.0)
    assert low.fpr_check(np.arange(5.0))["p_excess"] == 1.0  # below every calibration score: all flagged, as expected
