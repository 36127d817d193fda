"""The drift conditions of `distributions` and `noisy-bn` on constructed percentile histories:
per seed the median over units of each unit's drift, paired across seeds as a log ratio."""

import math

import numpy as np
import pytest

from bnexp import stats as S
from bnexp.sweep import Trial, TrialResult
from experiments import distributions, noisy_bn

E, UNITS = 6, 5


def _history(med_walk, spread=1.0):
    """(E, UNITS, 3) percentiles: every unit's median follows med_walk[:, u], spread fixed."""
    med = np.asarray(med_walk, np.float64)
    return np.stack([med - spread / 2, med, med + spread / 2], axis=-1)


def _result(seed, tag, perc, key):
    hist = {"step": np.arange(E), "test_acc": np.full(E, 0.9), key: perc}
    return TrialResult(Trial(seed=seed, tag=tag), hist, None, 0.9)


def _walks(size, sign):
    """Units whose medians move by `size` in direction `sign`, each with another shape
    (the median over units of their drifts is exactly `size`)."""
    t = np.linspace(0.0, 1.0, E)[:, None]
    return sign * size * np.concatenate([t, t**2, np.sqrt(t), t**3, t**0.5], axis=1)


def test_distributions_opposite_seed_drifts_give_a_large_ratio():
    key = distributions.KEY
    sizes = [2.0, 2.2, 1.8]
    base = [
        _result(s, "baseline", _history(_walks(z, (-1) ** s)), key) for s, z in enumerate(sizes)
    ]
    bn = [_result(s, "bn", _history(_walks(0.5, 1)), key) for s in range(3)]
    drifts = distributions.seed_drifts(base)
    assert [drifts[s] for s in range(3)] == [pytest.approx(z) for z in sizes]
    # the seed-mean of the percentile curves would nearly cancel: seeds 0 and 1 go opposite ways
    (c,) = distributions.conditions(distributions.PRESETS["quick"], {"baseline": base, "bn": bn})
    logs = np.log(np.array(sizes) / 0.5)
    iv = S.t_interval(logs)
    assert c.effect == pytest.approx(iv.mean) and c.n == 3
    assert c.ci95 == (pytest.approx(iv.low), pytest.approx(iv.high))
    assert c.threshold == pytest.approx(math.log(2.0))
    assert c.outcome == S.REPRODUCED  # [3.1x, 5.2x] clears 2x


def test_noisy_bn_drift_condition_is_noisy_over_baseline():
    key = noisy_bn.KEY
    base = [_result(s, "baseline", _history(_walks(1.0, (-1) ** s)), key) for s in range(3)]
    noisy = [
        _result(s, "noisy", _history(_walks(z, 1)), key) for s, z in enumerate([0.5, 0.6, 0.4])
    ]
    bn = [_result(s, "bn", _history(_walks(0.1, 1)), key) for s in range(3)]
    conds = noisy_bn.conditions(
        noisy_bn.PRESETS["quick"], {"baseline": base, "noisy": noisy, "bn": bn}
    )
    c = conds[-1]
    assert c.effect == pytest.approx(np.mean(np.log([0.5, 0.6, 0.4])))
    assert c.outcome == S.NOT_REPRODUCED  # noisy drifts less than the baseline in every seed
