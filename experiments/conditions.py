"""The conditions verdicts are made of, built from paired per-seed results (SCIENCE.md "Verdicts").

Every builder takes the results of arms paired by seed (same initial weights, same batches in the
same order), computes the effect seed by seed, and summarizes it with a 95% interval
(`bnexp.stats`): paired differences of accuracies with a Student-t interval, per-seed log ratios
(drifts, ICS, landscape measures) with a Student-t interval on the logs, censored steps-to-target
with the conservative censored interval. Each returns one `stats.Condition`; the experiment
states the threshold and the reason for it (from the paper) where it calls the builder.

A diverged member has no final accuracy. Where a claim is about *training well*, a diverged
member trained badly: ``chance`` (the accuracy of guessing, 0.1 on ten classes) stands in for it,
so divergence counts against the arm it happened to instead of dropping its seed from the pair.
Where no value can stand in (drifts, probes), the pair is dropped (`stats.paired_differences`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bnexp import stats
from bnexp.stats import Condition
from bnexp.sweep import TrialResult

CHANCE = 0.1  # accuracy of guessing among MNIST's / CIFAR-10's ten classes
ACC = "accuracy difference"  # unit of a paired accuracy difference (a fraction; shown in points)


def by_seed(rs: Sequence[TrialResult]) -> dict[int, TrialResult]:
    return {r.trial.seed: r for r in rs}


def paired(
    a: Sequence[TrialResult], b: Sequence[TrialResult]
) -> list[tuple[TrialResult, TrialResult]]:
    """(a_s, b_s) for every seed s present in both arms, in seed order."""
    sa, sb = by_seed(a), by_seed(b)
    return [(sa[s], sb[s]) for s in sorted(set(sa) & set(sb))]


def final(r: TrialResult, chance: float | None = None) -> float | None:
    """Final eval-mode accuracy; a diverged member gets ``chance`` (None: no value)."""
    v = r.final_test_accuracy
    if v is None or not math.isfinite(v):
        return chance
    return float(v)


def _condition(
    name: str,
    values: np.ndarray,
    threshold: float,
    *,
    direction: int,
    reason: str,
    unit: str,
    log: bool = False,
    negligible: tuple[float, float] | None = None,
) -> Condition:
    iv = stats.t_interval(values)
    return Condition.from_interval(
        name,
        iv,
        threshold,
        direction=direction,
        negligible=negligible,
        reason=reason,
        unit=unit,
        log=log,
    )


def accuracy_difference(
    name: str,
    a: Sequence[TrialResult],
    b: Sequence[TrialResult],
    threshold: float,
    *,
    reason: str,
    direction: int = 1,
    negligible: tuple[float, float] | None = None,
    chance: float | None = CHANCE,
) -> Condition:
    """Final accuracy of arm a minus arm b, seed by seed (direction 0: |a - b| < threshold)."""
    pairs = paired(a, b)
    d = stats.paired_differences(
        [final(x, chance) for x, _ in pairs], [final(y, chance) for _, y in pairs]
    )
    return _condition(
        name, d, threshold, direction=direction, reason=reason, unit=ACC, negligible=negligible
    )


def values_condition(
    name: str,
    values: Sequence[float | None],
    threshold: float,
    *,
    reason: str,
    unit: str,
    direction: int = 1,
    log: bool = False,
    negligible: tuple[float, float] | None = None,
) -> Condition:
    """A condition on per-seed values computed by the experiment (e.g. a spread or a rise)."""
    v = stats.finite(values)
    return _condition(
        name,
        v,
        threshold,
        direction=direction,
        reason=reason,
        unit=unit,
        log=log,
        negligible=negligible,
    )


def log_ratio(
    name: str,
    num: Sequence[float | None],
    den: Sequence[float | None],
    ratio: float,
    *,
    reason: str,
    unit: str,
    direction: int = 1,
    negligible: tuple[float, float] | None = None,
) -> Condition:
    """log(num_s / den_s) per seed against log(ratio): a claim that num is ``ratio`` x den."""
    lr = stats.log_ratios(num, den)
    band = None if negligible is None else (math.log(negligible[0]), math.log(negligible[1]))
    return _condition(
        name,
        lr,
        math.log(ratio),
        direction=direction,
        reason=reason,
        unit=unit,
        log=True,
        negligible=band,
    )


def steps(r: TrialResult, target: float) -> stats.CensoredSteps:
    """Steps to ``target`` as the interval the run's evaluation steps allow."""
    return stats.censored_steps(r.history["step"], r.history["test_acc"], target)


def speedup(
    name: str,
    base: Sequence[TrialResult],
    arm: Sequence[TrialResult],
    target: float,
    *,
    ratio: float = 1.0,
    reason: str,
    negligible: tuple[float, float] | None = (1 / 1.1, 1.1),
    direction: int = 1,
) -> Condition:
    """log speedup steps_base / steps_arm to ``target``, seed by seed, from censored steps
    (direction +1: faster than ``ratio``, -1: slower, 0: within a factor ``ratio`` either way).

    Each seed's log speedup is known only as [log(lb / ha), log(hb / la)] (stats.
    log_speedup_bounds); the interval is the conservative censored-t interval of those bounds
    (a seed whose arm never reaches the target drops out: the claim then lacks that seed). A
    baseline that never reaches the target gives an unbounded upper end, which a "faster" claim
    does not need.
    """
    pairs = paired(base, arm)
    lo, hi = stats.log_speedup_bounds(
        [steps(b, target) for b, _ in pairs], [steps(a, target) for _, a in pairs]
    )
    iv = stats.censored_log_interval(lo, hi)
    band = None if negligible is None else (math.log(negligible[0]), math.log(negligible[1]))
    effect, sd = iv.mean, iv.sd
    if effect is None and lo.size >= 2 and np.isfinite(lo).all():
        # some baseline seed never reached the target: the lower ends are the estimate
        effect, sd = float(lo.mean()), float(lo.std(ddof=1))
    return Condition(
        name,
        effect,
        (iv.low, iv.high),
        math.log(ratio),
        direction=direction,
        negligible=band,
        reason=reason,
        n=iv.n,
        sd=sd,
        unit="log speedup",
        log=True,
    )


def worst_case(
    name: str,
    value: float | None,
    threshold: float,
    *,
    reason: str,
    unit: str,
    direction: int = -1,
    n: int = 0,
) -> Condition:
    """A check of an identity: the worst case over every measurement (no sampling interval: the
    interval is the single worst value), e.g. a float32 invariance."""
    return Condition(
        name,
        value,
        (value, value),
        threshold,
        direction=direction,
        reason=reason,
        n=n,
        unit=unit,
    )
