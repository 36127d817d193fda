"""bnexp.stats: the t quantile against scipy's values, intervals, bootstrap, seeds needed, and a
simulation of thousands of paired experiments (false-positive rate, power, coverage)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnexp import stats as S

# scipy.stats.t.ppf(p, df), 6 decimals
KNOWN = [
    (0.975, 1, 12.706205),
    (0.975, 2, 4.302653),
    (0.975, 4, 2.776445),
    (0.975, 10, 2.228139),
    (0.975, 30, 2.042272),
    (0.975, 100, 1.983972),
    (0.975, 1000, 1.962339),
    (0.95, 5, 2.015048),
    (0.995, 3, 5.840909),
]


@pytest.mark.parametrize("p,df,ref", KNOWN)
def test_t_quantile_matches_scipy(p, df, ref):
    assert S.t_quantile(p, df) == pytest.approx(ref, abs=1e-6)
    assert S.t_quantile(1 - p, df) == pytest.approx(-ref, abs=1e-6)
    assert S.t_cdf(S.t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_quantile_rejects_bad_input():
    with pytest.raises(ValueError):
        S.t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        S.t_quantile(0.9, 0)


def test_t_interval_closed_form():
    v = [1.0, 2.0, 3.0, 4.0, None, float("nan")]
    iv = S.t_interval(v)
    sd = float(np.std([1, 2, 3, 4], ddof=1))
    half = 3.182446 * sd / 2
    assert (iv.mean, iv.n) == (2.5, 4)
    assert iv.low == pytest.approx(2.5 - half, abs=1e-5)
    assert iv.high == pytest.approx(2.5 + half, abs=1e-5)
    one = S.t_interval([0.9])
    assert (one.mean, one.low, one.high, one.n) == (0.9, None, None, 1)


def test_paired_differences_and_log_ratios_drop_broken_pairs():
    d = S.paired_differences([0.9, None, 0.8], [0.85, 0.8, 0.7])
    np.testing.assert_allclose(d, [0.05, 0.1])
    r = S.log_ratios([200, 400, None], [100, 100, 50])
    np.testing.assert_allclose(r, [math.log(2), math.log(4)])
    with pytest.raises(ValueError):
        S.paired_differences([1.0], [1.0, 2.0])


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    v = np.random.default_rng(1).lognormal(size=12)
    a = S.bootstrap_interval(v, seed=3)
    b = S.bootstrap_interval(v, seed=3)
    assert a == b
    assert a.low < a.mean < a.high
    assert a.method == "bootstrap"


def test_seeds_needed():
    # mean 1, sd 1, threshold 0: smallest n with t_{n-1} / sqrt(n) < 1 is n = 7
    assert S.seeds_needed(1.0, 1.0, 0.0) == 7
    assert S.t_quantile(0.975, 5) / math.sqrt(6) > 1 > S.t_quantile(0.975, 6) / math.sqrt(7)
    assert S.seeds_needed(0.0, 1.0, 0.0) is None
    assert S.seeds_needed(1.0, None, 0.0) is None


def test_simulation_false_positives_power_and_coverage():
    """20,000 synthetic paired experiments of 5 seeds each, vectorized."""
    rng = np.random.default_rng(0)
    trials, n = 20_000, 5
    null = rng.normal(0.0, 1.0, size=(trials, n))
    _, lo, hi = S.t_interval_rows(null)
    # REPRODUCED needs the whole interval above a threshold of 0: one-sided 2.5% when the truth is 0
    false_pos = float(np.mean(lo > 0))
    assert false_pos <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert false_pos == pytest.approx(0.025, abs=0.005)
    coverage = float(np.mean((lo <= 0) & (hi >= 0)))
    assert 0.93 <= coverage <= 0.97
    # a large true effect (2 sd) with 10 seeds is found nearly always
    big = rng.normal(2.0, 1.0, size=(trials, 10))
    _, lo_b, hi_b = S.t_interval_rows(big)
    assert float(np.mean(lo_b > 0)) >= 0.99
    assert 0.93 <= float(np.mean((lo_b <= 2) & (hi_b >= 2))) <= 0.97


# ---- censoring -----------------------------------------------------------------------------


def test_censored_steps_is_the_interval_between_evaluations():
    steps = np.array([0, 100, 200, 300])
    acc = np.array([0.1, 0.5, 0.9, 0.95])
    assert S.censored_steps(steps, acc, 0.9) == S.CensoredSteps(100.0, 200.0)
    assert S.censored_steps(steps, acc, 0.99) == S.CensoredSteps(300.0, None)
    assert S.censored_steps(steps, acc, 0.05) == S.CensoredSteps(0.0, 0.0)
    # a diverged member (NaN) never reaches a target; first evaluation after step 0 -> low 0
    assert S.censored_steps([50, 100], [np.nan, 0.95], 0.9) == S.CensoredSteps(50.0, 100.0)
    assert S.censored_steps([50, 100], [0.95, 0.96], 0.9) == S.CensoredSteps(0.0, 50.0)
    with pytest.raises(ValueError):
        S.censored_steps([0, 1], [0.5], 0.9)


def test_both_arms_in_one_interval_is_unresolved_never_one():
    tied = S.censored_speedup(S.CensoredSteps(100, 200), S.CensoredSteps(100, 200))
    assert tied.status == S.UNRESOLVED and tied.value is None
    assert (tied.low, tied.high) == (0.5, 2.0)
    assert "unresolved at this evaluation spacing" in tied.text and "1.0x" not in tied.text
    # the baseline never reached it: a lower bound (its last evaluation / the arm's crossing)
    lb = S.censored_speedup(S.CensoredSteps(3000, None), S.CensoredSteps(100, 200))
    assert lb.status == S.LOWER_BOUND and lb.low == 15.0 and lb.text == ">15x"
    # different intervals: a value, with bounds (unbounded above when the arm's low end is 0)
    res = S.censored_speedup(S.CensoredSteps(200, 300), S.CensoredSteps(0, 100))
    assert res.status == S.RESOLVED and res.value == 3.0 and res.text == "3.0x"
    assert (res.low, res.high) == (2.0, None)
    na = S.censored_speedup(S.CensoredSteps(200, 300), S.CensoredSteps(300, None))
    assert na.status == S.NOT_REACHED and na.text == "n/a"


def test_median_and_log_bounds_of_censored_seeds():
    seeds = [
        S.CensoredSteps(100, 200),
        S.CensoredSteps(200, 300),
        S.CensoredSteps(900, None),
    ]
    assert S.median_censored(seeds) == S.CensoredSteps(200.0, 300.0)
    base = [S.CensoredSteps(200, 300), S.CensoredSteps(300, None)]
    arm = [S.CensoredSteps(50, 100), S.CensoredSteps(100, 200)]
    lo, hi = S.log_speedup_bounds(base, arm)
    np.testing.assert_allclose(lo, np.log([2.0, 1.5]))
    np.testing.assert_allclose(hi[0], np.log(6.0))
    assert hi[1] == np.inf
    iv = S.censored_log_interval(lo, hi)
    assert iv.high == np.inf and iv.mean is None and iv.n == 2
    assert iv.low == pytest.approx(S.t_interval(lo).low)


# ---- conditions and verdicts ---------------------------------------------------------------


def _cond(lo, hi, **kw):
    return S.Condition("c", (lo + hi) / 2, (lo, hi), kw.pop("threshold", 0.0), **kw)


def test_condition_outcomes_from_the_interval():
    assert _cond(0.5, 1.5).outcome == S.REPRODUCED
    assert _cond(-2.0, -1.0).outcome == S.NOT_REPRODUCED
    assert _cond(-0.5, 0.5).outcome == S.INCONCLUSIVE
    # a claim of an effect: an interval wholly inside the negligible band is a finding against it
    assert _cond(-0.5, 0.5, negligible=(-1.0, 1.0)).outcome == S.NOT_REPRODUCED
    assert _cond(-0.5, 1.5, negligible=(-1.0, 1.0)).outcome == S.INCONCLUSIVE
    # the claim predicts a smaller value: direction -1
    assert _cond(-2.0, -1.0, direction=-1).outcome == S.REPRODUCED
    assert _cond(1.0, 2.0, threshold=0.5, direction=-1).outcome == S.NOT_REPRODUCED
    assert S.Condition("x", None, (None, None), 0.0).outcome == S.INCONCLUSIVE
    with pytest.raises(ValueError):
        S.Condition("x", 0.0, (0.0, 1.0), 0.0, direction=2)
    with pytest.raises(ValueError):  # an equivalence band needs a width
        S.Condition("x", 0.0, (0.0, 1.0), 0.0, direction=0)


def test_equivalence_condition_outcomes():
    """direction 0: the claim is |effect| < threshold (e.g. BN gives no advantage at a tiny lr)."""
    assert _cond(-0.01, 0.02, threshold=0.05, direction=0).outcome == S.REPRODUCED
    assert _cond(0.06, 0.09, threshold=0.05, direction=0).outcome == S.NOT_REPRODUCED
    assert _cond(-0.09, -0.05, threshold=0.05, direction=0).outcome == S.NOT_REPRODUCED
    assert _cond(0.01, 0.08, threshold=0.05, direction=0).outcome == S.INCONCLUSIVE
    # seeds to settle are counted to the nearer edge of the band: 0.045 +- sd 0.01 vs edge 0.05
    c = S.Condition("x", 0.03, (0.01, 0.08), 0.05, direction=0, sd=0.01, n=2)
    assert c.seeds_to_settle == S.seeds_needed(0.03, 0.01, 0.05)
    row = _cond(0.5, 1.5, threshold=0.25).to_json()
    assert row["ci95"] == [0.5, 1.5] and row["threshold"] == 0.25 and row["outcome"] == "reproduced"


def test_verdict_combines_its_conditions():
    yes, no, maybe = _cond(0.5, 1.5), _cond(-2.0, -1.0), _cond(-0.5, 0.5)
    assert S.Verdict("v", (yes, yes)).reproduced is True
    assert S.Verdict("v", (yes, maybe)).reproduced is None
    assert S.Verdict("v", (yes, maybe, no)).reproduced is False
    assert S.Verdict("v", ()).outcome == S.INCONCLUSIVE
    doc = S.Verdict("claim", (yes, no), "because").to_json()
    assert doc["claim"] == "claim" and doc["reproduced"] is False and doc["evidence"] == "because"
    assert doc["outcome"] == "not reproduced" and [c["outcome"] for c in doc["conditions"]] == [
        "reproduced",
        "not reproduced",
    ]
