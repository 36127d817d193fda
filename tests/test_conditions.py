"""The conditions experiments build their verdicts from: paired by seed, censoring said as such."""

import math

import numpy as np
import pytest

from bnexp import stats as S
from bnexp.sweep import Trial, TrialResult
from experiments import conditions as C

STEPS = np.array([0, 1, 2, 3, 4, 6, 8, 10, 13, 18, 24, 32, 42, 56, 75, 100, 200, 300])


def _result(seed, acc_curve, tag="x", diverged_at=None):
    acc = np.asarray(acc_curve, np.float64)
    final = None if diverged_at is not None else float(acc[-1])
    hist = {"step": STEPS[: acc.size], "test_acc": acc}
    return TrialResult(Trial(seed=seed, tag=tag), hist, diverged_at, final)


def _crossing(at):
    """A curve that first reaches 0.9 at evaluation step ``at`` (0.5 before, 0.95 from there)."""
    return np.where(STEPS >= at, 0.95, 0.5)


def test_accuracy_difference_is_paired_by_seed_and_diverged_counts_as_chance():
    a = [_result(s, [0.5, 0.9 + 0.01 * s]) for s in range(5)]
    b = [_result(s, [0.5, 0.88 + 0.01 * s]) for s in reversed(range(5))]  # order does not matter
    c = C.accuracy_difference("a - b", a, b, 0.0, reason="r")
    assert c.effect == pytest.approx(0.02) and c.sd == pytest.approx(0.0, abs=1e-12)
    assert c.n == 5 and c.outcome == S.REPRODUCED  # identical per-seed gaps: no spread
    b[0] = _result(4, [0.5, 0.0], diverged_at=7)  # seed 4 of b diverged: chance accuracy
    c = C.accuracy_difference("a - b", a, b, 0.0, reason="r")
    d = np.array([0.02] * 4 + [0.94 - C.CHANCE])
    assert c.effect == pytest.approx(d.mean()) and c.sd == pytest.approx(d.std(ddof=1))
    iv = S.t_interval(d)
    assert c.ci95 == (pytest.approx(iv.low), pytest.approx(iv.high))
    c = C.accuracy_difference("a - b", a, b, 0.0, reason="r", chance=None)  # pair dropped
    assert c.n == 4


def test_equivalence_condition_from_results():
    a = [_result(s, [0.5, 0.90 + 0.002 * (s % 2)]) for s in range(6)]
    b = [_result(s, [0.5, 0.90]) for s in range(6)]
    c = C.accuracy_difference("a ~ b", a, b, 0.02, direction=0, reason="r")
    assert c.outcome == S.REPRODUCED and c.to_json()["direction"] == 0


def test_speedup_condition_uses_censored_bounds():
    """Baseline crosses at step 100, BN at 10: per seed log speedup lies in
    [log(75 / 10), log(100 / 8)], never a point; the interval uses the bounds."""
    base = [_result(s, _crossing(100)) for s in range(5)]
    bn = [_result(s, _crossing(10)) for s in range(5)]
    c = C.speedup("speedup", base, bn, 0.9, reason="r")
    assert c.log and c.threshold == 0.0 and c.n == 5
    assert c.ci95[0] == pytest.approx(math.log(75 / 10)) and c.ci95[1] == pytest.approx(
        math.log(100 / 8)
    )
    assert c.effect == pytest.approx((math.log(75 / 10) + math.log(100 / 8)) / 2)
    assert c.outcome == S.REPRODUCED
    # both arms cross within the same evaluation interval: bounds straddle 1x, no speedup claimed
    same = [_result(s, _crossing(100)) for s in range(5)]
    c = C.speedup("speedup", base, same, 0.9, reason="r")
    assert c.ci95[0] < 0 < c.ci95[1] and c.outcome == S.INCONCLUSIVE


def test_speedup_condition_baseline_never_reaches_is_a_lower_bound():
    base = [_result(s, np.full(STEPS.size, 0.5)) for s in range(4)]
    bn = [_result(s, _crossing(42)) for s in range(4)]
    c = C.speedup("speedup", base, bn, 0.9, reason="r")
    assert c.ci95[1] is None or math.isinf(c.ci95[1])
    assert c.ci95[0] == pytest.approx(math.log(300 / 42))  # last evaluation / first crossing
    assert c.effect == pytest.approx(math.log(300 / 42)) and c.outcome == S.REPRODUCED
    assert c.to_json()["ci95"][1] is None  # JSON has no infinity


def test_log_ratio_and_worst_case():
    c = C.log_ratio("drift", [4.0, 4.4, 3.6], [1.0, 1.1, 0.9], 2.0, reason="r", unit="ratio")
    assert c.effect == pytest.approx(math.log(4.0)) and c.threshold == pytest.approx(math.log(2))
    assert c.outcome == S.REPRODUCED
    w = C.worst_case("identity", 3e-7, 1e-5, reason="r", unit="rel")
    assert w.ci95 == (3e-7, 3e-7) and w.outcome == S.REPRODUCED
    assert C.worst_case("identity", 3e-4, 1e-5, reason="r", unit="rel").outcome == (
        S.NOT_REPRODUCED
    )
    assert C.worst_case("none", None, 1e-5, reason="r", unit="rel").outcome == S.INCONCLUSIVE


def test_proportion_interval_wilson():
    iv = S.proportion_interval(10, 20)  # the textbook Wilson interval
    assert (iv.low, iv.high) == (pytest.approx(0.2993, abs=1e-4), pytest.approx(0.7007, abs=1e-4))
    iv = S.proportion_interval(5, 5)
    assert iv.mean == 1.0 and iv.high == 1.0 and iv.low == pytest.approx(0.5655, abs=1e-4)
    assert S.proportion_interval(0, 0).mean is None
    with pytest.raises(ValueError):
        S.proportion_interval(3, 2)
