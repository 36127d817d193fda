"""Metrics against hand-computed values (SCIENCE.md "Metrics")."""

import math

import numpy as np
import pytest

from bnexp import metrics as M

STEPS = np.array([100, 200, 300, 400, 500])


def test_steps_to_target_first_hit():
    acc = np.array([0.5, 0.8, 0.95, 0.90, 0.97])
    assert M.steps_to_target(STEPS, acc, 0.9) == 300
    assert M.steps_to_target(STEPS, acc, 0.95) == 300  # >= counts
    assert M.steps_to_target(STEPS, acc, 0.96) == 500
    assert M.steps_to_target(STEPS, acc, 0.99) is None


def test_steps_to_target_nan_safe():
    acc = np.array([0.5, np.nan, np.nan, np.nan, np.nan])  # diverged after step 100
    assert M.steps_to_target(STEPS, acc, 0.6) is None
    assert M.steps_to_target(STEPS, acc, 0.5) == 100
    assert isinstance(M.steps_to_target(STEPS, acc, 0.5), int)
    with pytest.raises(ValueError):
        M.steps_to_target(STEPS, acc[:3], 0.5)


def test_speedup_both_reach():
    s = M.speedup(3400, 1000, 5000)
    assert s.value == pytest.approx(3.4) and not s.lower_bound and s.text == "3.4x"
    assert M.speedup(12500, 1000, 50000).text == "12x"  # rounds above 10 (12.5 -> "12")
    assert M.speedup(500, 1000, 5000).text == "0.5x"


def test_speedup_lower_bound_never_infinite():
    s = M.speedup(None, 400, 5000)  # baseline never reached the target within 5000 steps
    assert s.lower_bound and s.value == pytest.approx(12.5) and math.isfinite(s.value)
    assert s.text == ">12x"
    # a lower bound is rounded down so the statement stays true: 2.56 -> ">2.5x", not ">2.6x"
    assert M.speedup(None, 1953, 5000).text == ">2.5x"
    assert M.speedup(None, 5000, 5000).text == ">1.0x"


def test_speedup_arm_never_reaches():
    for base in (None, 300):
        s = M.speedup(base, None, 5000)
        assert s.value is None and s.text == "n/a" and not s.lower_bound
    assert M.Speedup.from_dict(M.speedup(None, 400, 5000).to_dict()) == M.speedup(None, 400, 5000)


def test_divergence_rule():
    losses = np.array([2.3, 1.0, 2400.0, np.nan])
    assert M.diverged(losses, 2.3)
    assert M.divergence_step(STEPS[:4], losses, 2.3) == 300  # 2400 > 1e3 * 2.3
    assert M.divergence_step(STEPS[:4], losses, 2.3, factor=1e4) == 400  # only the NaN
    assert not M.diverged([2.3, 1.0, 0.5], 2.3)
    assert M.divergence_step(STEPS[:2], [np.inf, 1.0], 2.3) == 100


def test_t_quantiles():
    assert M.t_quantile_975(2) == pytest.approx(4.303, abs=5e-4)
    assert M.t_quantile_975(1) == pytest.approx(12.706, abs=5e-4)
    assert M.t_quantile_975(30) == pytest.approx(2.042, abs=5e-4)
    assert M.t_quantile_975(1000) == pytest.approx(1.9623, abs=1e-4)
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 29, 30, 31, 45, 120, 10_000):
        assert M.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6)


def test_summarize_three_seeds_uses_t_4303():
    s = M.summarize([0.97, 0.98, 0.99])
    assert s.mean == pytest.approx(0.98) and s.std == pytest.approx(0.01)
    assert s.n == 3 and s.n_diverged == 0
    half = 4.302653 * 0.01 / math.sqrt(3)  # = 0.02484
    assert s.low == pytest.approx(0.98 - half) and s.high == pytest.approx(0.98 + half)
    assert s.half_width == pytest.approx(0.024841, abs=1e-6)


def test_summarize_diverged_and_small_n():
    s = M.summarize([0.9, None, float("nan"), 0.8], diverged_at=[None, 1200, 700, None])
    assert s.n == 2 and s.n_diverged == 2 and s.total == 4
    assert s.mean == pytest.approx(0.85) and s.low is None and s.high is None
    assert s.diverged_at == (700, 1200)
    one = M.summarize([0.9])
    assert one.std is None and one.low is None
    none = M.summarize([None, None], diverged_at=[5, 9])
    assert none.mean is None and none.n == 0 and none.n_diverged == 2
    assert M.Summary.from_dict(s.to_dict()) == s


def test_summarize_final_accuracy_from_results():
    class R:
        def __init__(self, acc, at):
            self.final_test_accuracy, self.diverged_at = acc, at

    s = M.summarize_final_accuracy([R(0.9, None), R(None, 300)])
    assert s.n == 1 and s.n_diverged == 1 and s.diverged_at == (300,)


def test_band_skips_nan_without_warnings():
    curves = np.array([[0.1, 0.2, np.nan], [0.3, np.nan, np.nan]])
    mean, lo, hi, count = M.band(curves)
    np.testing.assert_allclose(mean[:2], [0.2, 0.2])
    np.testing.assert_allclose(lo[:2], [0.1, 0.2])
    np.testing.assert_allclose(hi[:2], [0.3, 0.2])
    assert np.isnan(mean[2]) and np.isnan(lo[2]) and list(count) == [2, 1, 0]


def test_percentile_drift_constructed():
    # median walks 0 -> 1 -> 3 -> 2, spread (p85 - p15) 2 -> 2 -> 4 -> 3
    med = np.array([0.0, 1.0, 3.0, 2.0])
    spread = np.array([2.0, 2.0, 4.0, 3.0])
    p = np.stack([med - spread / 2, med, med + spread / 2], axis=1)
    d = M.percentile_drift(p)
    assert d.median_range == pytest.approx(3.0) and d.spread_range == pytest.approx(2.0)
    assert d.value == pytest.approx(5.0)
    assert d.relative == pytest.approx(5.0 / 2.75)
    assert d.median_step == pytest.approx((1 + 2 + 1) / 3)
    assert d.spread_step == pytest.approx((0 + 2 + 1) / 3)
    assert d.points == 4


def test_percentile_drift_stable_is_zero_and_nan_rows_dropped():
    p = np.tile([-1.0, 0.0, 1.0], (5, 1))
    assert M.percentile_drift(p).value == pytest.approx(0.0)
    p[3:] = np.nan  # diverged after the third point
    d = M.percentile_drift(p)
    assert d.points == 3 and d.value == pytest.approx(0.0)
    assert M.percentile_drift(p[:1]).value is None
    with pytest.raises(ValueError, match="one run"):  # seeds are not averaged away
        M.percentile_drift(np.stack([p, p + 1.0]))
    with pytest.raises(ValueError):
        M.percentile_drift(np.zeros((4, 2)))


def _walk(med, spread):
    med, spread = np.asarray(med, float), np.asarray(spread, float)
    return np.stack([med - spread / 2, med, med + spread / 2], axis=-1)


def test_unit_drifts_per_unit_and_median():
    # three units over 4 points: unit 0 median 0 -> 1 -> 3 -> 2 and spread 2 -> 2 -> 4 -> 3
    # (drift 3 + 2 = 5), unit 1 still (0), unit 2 median falls by 4, spread fixed (4)
    med = np.array([[0.0, 0.5, 0.0], [1.0, 0.5, -1.0], [3.0, 0.5, -3.0], [2.0, 0.5, -4.0]])
    spread = np.array([[2.0, 1.0, 1.0], [2.0, 1.0, 1.0], [4.0, 1.0, 1.0], [3.0, 1.0, 1.0]])
    p = _walk(med, spread)  # (E=4, units=3, 3)
    np.testing.assert_allclose(M.unit_drifts(p), [5.0, 0.0, 4.0])
    assert M.median_unit_drift(p) == pytest.approx(4.0)
    for u in range(3):  # the same as the one-unit drift
        assert M.unit_drifts(p)[u] == pytest.approx(M.percentile_drift(p[:, u]).value)
    p[2:, 1] = np.nan  # diverged at the third point: the rows go for every unit
    np.testing.assert_allclose(M.unit_drifts(p), [1.0, 0.0, 1.0])
    assert M.median_unit_drift(p[:1]) is None
    with pytest.raises(ValueError):
        M.unit_drifts(p[:, 0])


def test_opposite_drifts_across_seeds_do_not_cancel():
    """Two seeds whose units drift by +2 and -2 in the median: each seed's drift is 2; the
    seed-mean percentiles (the old estimator) would stand still and give 0."""
    t = np.linspace(0.0, 2.0, 5)[:, None] * np.ones((1, 4))
    up, down = _walk(t, np.ones_like(t)), _walk(-t, np.ones_like(t))
    assert M.median_unit_drift(up) == pytest.approx(2.0)
    assert M.median_unit_drift(down) == pytest.approx(2.0)
    mean_of_seeds = (up + down) / 2
    assert M.median_unit_drift(mean_of_seeds) == pytest.approx(0.0)


def test_train_eval_gap():
    assert M.train_eval_gap(0.95, 0.90) == pytest.approx(0.05)
    assert M.train_eval_gap(np.float32("nan"), 0.9) is None
    assert M.train_eval_gap(None, 0.9) is None
    np.testing.assert_allclose(
        M.train_eval_gap(np.array([0.9, 0.8]), np.array([0.7, 0.8])), [0.2, 0.0], atol=1e-12
    )
    h = {"test_acc": np.array([0.5, 0.7]), "test_acc_batch": np.array([0.6, 0.75])}
    assert M.final_train_eval_gap(h) == pytest.approx(0.05)
