"""Paired statistics over seeds: the numbers every verdict is decided from.

Arms of one seed are paired (same initial matrices, same batches in the same order), so an effect
is measured per seed and summarized over seeds:

- accuracy: the per-seed paired difference ``a_s - b_s``;
- steps and speedups: the per-seed log ratio ``log(steps_b,s / steps_a,s)`` (a ratio is skewed, its
  log is not; the interval is mapped back with ``exp``).

A 95% interval is Student-t on the paired values, ``mean +- t_{0.975, n-1} sd / sqrt(n)``; where a
distribution is skewed or censored a percentile bootstrap is available, seeded and deterministic.
``seeds_needed`` estimates how many seeds an inconclusive interval would likely need to clear its
threshold. Plain NumPy; scipy is not a dependency, so the t quantile is computed here from the
regularized incomplete beta function (accurate to ~1e-10, tested against scipy's values).

Over 300 lines: the t distribution, the intervals, censored steps and the Condition/Verdict
model are one chain (each uses the ones before); Condition and Verdict could move out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


# ---- Student-t distribution -------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (df > 0, 0 < p < 1): bisection then Newton on t_cdf.

    Exact to ~1e-10 for every df (the test checks it against scipy.stats.t.ppf to 1e-6).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):  # bisection to a tight bracket, robust for df < 1
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---- intervals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """An estimate over seeds: mean (or the statistic), its 95% interval and the n it came from.

    low/high None when n < 2 (no spread to measure); method "t" or "bootstrap".
    """

    mean: float | None
    low: float | None
    high: float | None
    n: int
    sd: float | None = None
    method: str = "t"


def finite(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """The finite entries as float64 (None and NaN, i.e. diverged members, dropped)."""
    vals = [np.nan if v is None else float(v) for v in np.asarray(values, dtype=object).ravel()]
    a = np.asarray(vals, dtype=np.float64)
    return a[np.isfinite(a)]


def t_interval(values: Sequence[float | None] | np.ndarray, level: float = LEVEL) -> Interval:
    """Mean and Student-t interval of the finite values (None/NaN dropped)."""
    v = finite(values)
    n = int(v.size)
    if n == 0:
        return Interval(None, None, None, 0)
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, None, None, 1)
    sd = float(v.std(ddof=1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def t_interval_rows(
    x: np.ndarray, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized t_interval over the last axis of a finite (..., n) array: (mean, low, high)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    if n < 2:
        raise ValueError(f"need at least 2 values per row, got {n}")
    mean = x.mean(axis=-1)
    half = t_quantile(0.5 + level / 2, n - 1) * x.std(axis=-1, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def bootstrap_interval(
    values: Sequence[float | None] | np.ndarray,
    *,
    stat: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = 4000,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Percentile bootstrap interval of stat (default: the mean) over the finite values.

    Deterministic: resamples come from ``np.random.default_rng(seed)``. ``stat`` maps a
    (n_boot, n) array to (n_boot,) (e.g. ``lambda a: np.median(a, axis=-1)``). For skewed or
    censored per-seed values, where the t interval's symmetry is wrong.
    """
    v = finite(values)
    n = int(v.size)
    f = stat or (lambda a: a.mean(axis=-1))
    if n == 0:
        return Interval(None, None, None, 0, method="bootstrap")
    point = float(f(v[None, :])[0])
    if n < 2:
        return Interval(point, None, None, 1, method="bootstrap")
    rng = np.random.default_rng(seed)
    draws = f(v[rng.integers(0, n, size=(n_boot, n))])
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(lo), float(hi), n, float(v.std(ddof=1)), "bootstrap")


def proportion_interval(k: int, n: int, level: float = LEVEL) -> Interval:
    """A proportion k / n with its Wilson score interval (for per-seed yes/no outcomes, where a
    t interval on 0/1 values is wrong: it can leave [0, 1] and is degenerate at 0 or n)."""
    if n <= 0:
        return Interval(None, None, None, 0, method="wilson")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = -t_quantile((1 - level) / 2, 1e9)  # the normal quantile (t with infinite df)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    sd = math.sqrt(max(p * (1 - p), 1 / (4 * n)))  # for seeds_needed; floored off 0
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, sd, "wilson")


# ---- paired effects ----------------------------------------------------------------------------


def paired_differences(a: Sequence[float | None], b: Sequence[float | None]) -> np.ndarray:
    """Per-seed a_s - b_s over the seeds where both are finite (a diverged member drops its pair)."""
    if len(a) != len(b):
        raise ValueError(f"paired arms need the same seeds, got {len(a)} and {len(b)} values")
    x = np.array([np.nan if v is None else v for v in a], dtype=np.float64)
    y = np.array([np.nan if v is None else v for v in b], dtype=np.float64)
    d = x - y
    return d[np.isfinite(d)]


def log_ratios(num: Sequence[float | None], den: Sequence[float | None]) -> np.ndarray:
    """Per-seed log(num_s / den_s) over the seeds where both are finite and positive."""
    if len(num) != len(den):
        raise ValueError(f"paired arms need the same seeds, got {len(num)} and {len(den)} values")
    x = np.array([np.nan if v is None else v for v in num], dtype=np.float64)
    y = np.array([np.nan if v is None else v for v in den], dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return np.log(x[ok] / y[ok])


def seeds_needed(
    mean: float | None,
    sd: float | None,
    threshold: float,
    level: float = LEVEL,
    max_seeds: int = 1000,
) -> int | None:
    """Seeds that would likely put the interval wholly on one side of threshold.

    Assumes the mean and spread stay as measured: the smallest n with
    t_{(1+level)/2, n-1} sd / sqrt(n) < |mean - threshold|. None when it cannot be estimated
    (no spread measured, the mean on the threshold) or when more than max_seeds are needed.
    """
    if mean is None or sd is None or not math.isfinite(mean) or not math.isfinite(sd):
        return None
    gap = abs(mean - threshold)
    if gap == 0:
        return None
    if sd == 0:
        return 2
    q = 0.5 + level / 2
    for n in range(2, max_seeds + 1):
        if t_quantile(q, n - 1) * sd / math.sqrt(n) < gap:
            return n
    return None


# ---- censored steps-to-target ------------------------------------------------------------------


@dataclass(frozen=True)
class CensoredSteps:
    """Steps to a target as the interval the evaluation schedule allows: (low, high].

    The target was first seen at evaluation step ``high``; it was not yet reached at the previous
    evaluation ``low``, so the true crossing lies in (low, high]. Never reached: ``high`` None and
    ``low`` the last evaluation step (the steps needed exceed it). Reached at the very first
    evaluation: ``low`` 0 when that evaluation is after step 0 (training starts below any target),
    ``low == high`` when the first evaluation is step 0 itself.
    """

    low: float
    high: float | None

    @property
    def reached(self) -> bool:
        return self.high is not None

    def to_dict(self) -> dict[str, float | None]:
        return {"low": self.low, "high": self.high}


def censored_steps(
    steps: Sequence[int] | np.ndarray, acc: Sequence[float] | np.ndarray, target: float
) -> CensoredSteps:
    """(previous evaluation step, first evaluation step with acc >= target] from a history.

    ``steps`` is the recorded step array (never reconstructed from eval_every); NaN accuracies
    (a diverged member) never count as reaching the target.
    """
    s, a = np.asarray(steps), np.asarray(acc, dtype=np.float64)
    if s.shape != a.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"steps {s.shape} and acc {a.shape} must be equal non-empty 1-D shapes")
    hit = np.flatnonzero(np.nan_to_num(a, nan=-np.inf) >= target)
    if not hit.size:
        return CensoredSteps(float(s[-1]), None)
    i = int(hit[0])
    high = float(s[i])
    low = float(s[i - 1]) if i > 0 else (high if high == 0 else 0.0)
    return CensoredSteps(low, high)


def median_censored(values: Sequence[CensoredSteps]) -> CensoredSteps:
    """The median seed's interval: medians of the lower and of the upper ends (never = +inf).

    Each end is monotone in the true steps, so the true median lies in (median low, median high].
    """
    if not values:
        raise ValueError("need at least one seed")
    low = float(np.median([v.low for v in values]))
    high = float(np.median([np.inf if v.high is None else v.high for v in values]))
    return CensoredSteps(low, None if not math.isfinite(high) else high)


UNRESOLVED = "unresolved"
LOWER_BOUND = "lower bound"
RESOLVED = "resolved"
NOT_REACHED = "n/a"


@dataclass(frozen=True)
class CensoredSpeedup:
    """Speedup steps_baseline / steps_arm from two censored steps-to-target.

    With baseline in (lb, hb] and arm in (la, ha], the true ratio lies in [lb / ha, hb / la]
    (``high`` None: unbounded). ``value`` is the ratio of the evaluation steps hb / ha (None when
    not a point estimate). ``status``:

    - "resolved": both reached in different evaluation intervals;
    - "unresolved": both reached within the same interval: the spacing cannot tell them apart, so
      no number is claimed (never 1.0x), only the bounds;
    - "lower bound": the baseline never reached the target: speedup > low;
    - "n/a": the arm never reached it.
    """

    status: str
    value: float | None
    low: float | None
    high: float | None

    @property
    def text(self) -> str:
        if self.status == NOT_REACHED:
            return "n/a"
        if self.status == LOWER_BOUND:
            return f">{_ratio(self.low, floor=True)}x"
        hi = "inf" if self.high is None else _ratio(self.high, ceil=True)
        if self.status == UNRESOLVED:
            return f"unresolved at this evaluation spacing ({_ratio(self.low, True)}-{hi}x)"
        return f"{_ratio(self.value)}x"

    def to_dict(self) -> dict[str, float | str | None]:
        return {"status": self.status, "value": self.value, "low": self.low, "high": self.high}


def _ratio(x: float | None, floor: bool = False, ceil: bool = False) -> str:
    """'3.4' below 10, '12' above; floor=True rounds down so a lower bound stays true, ceil=True
    up so an upper bound does."""
    if x is None:
        return "?"
    decimals = 1 if x < 10 else 0
    scale = 10**decimals
    if floor:
        x = math.floor(x * scale + 1e-9) / scale
    if ceil:
        x = math.ceil(x * scale - 1e-9) / scale
    return f"{x:.{decimals}f}"


def censored_speedup(base: CensoredSteps, arm: CensoredSteps) -> CensoredSpeedup:
    """CensoredSpeedup of ``arm`` over ``base`` (see its docstring for the four cases)."""
    if not arm.reached:
        return CensoredSpeedup(NOT_REACHED, None, None, None)
    ha, la = float(arm.high), arm.low
    if ha <= 0:  # reached at step 0: no ratio exists
        return CensoredSpeedup(NOT_REACHED, None, None, None)
    low = base.low / ha
    if not base.reached:
        return CensoredSpeedup(LOWER_BOUND, None, low, None)
    hb = float(base.high)
    high = hb / la if la > 0 else None
    if (base.low, hb) == (la, ha):
        return CensoredSpeedup(UNRESOLVED, None, low, high)
    return CensoredSpeedup(RESOLVED, hb / ha, low, high)


def log_speedup_bounds(
    base: Sequence[CensoredSteps], arm: Sequence[CensoredSteps]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed bounds on log(steps_base / steps_arm) over the seeds where the arm reached it.

    Lower ends log(lb / ha) (-inf when lb is 0), upper ends log(hb / la) (+inf when the baseline
    never reached it or la is 0). A seed resolved to one point has equal ends only when both
    crossings are exactly at evaluation steps, which the schedule cannot show: the ends are the
    honest bounds.
    """
    if len(base) != len(arm):
        raise ValueError(f"paired arms need the same seeds, got {len(base)} and {len(arm)}")
    lo, hi = [], []
    for b, a in zip(base, arm, strict=True):
        if not a.reached or a.high <= 0:
            continue
        lo.append(math.log(b.low / a.high) if b.low > 0 else -math.inf)
        hi.append(math.log(b.high / a.low) if b.reached and a.low > 0 else math.inf)
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def censored_log_interval(lo: np.ndarray, hi: np.ndarray, level: float = LEVEL) -> Interval:
    """A conservative interval for paired censored values known only as per-seed [lo, hi].

    The low end is the Student-t low end of the per-seed lower bounds, the high end the t high end
    of the per-seed upper bounds (-inf/+inf when any seed's bound is unbounded); the estimate is
    the mean of the midpoints where every seed is bounded. A claim clears it only when even the
    pessimistic values do.
    """
    n = int(lo.size)
    if n < 2:
        return Interval(None, None, None, n)
    low = t_interval(lo).low if np.isfinite(lo).all() else -math.inf
    high = t_interval(hi).high if np.isfinite(hi).all() else math.inf
    mid = (lo + hi) / 2
    mean = float(mid.mean()) if np.isfinite(mid).all() else None
    sd = float(mid.std(ddof=1)) if mean is not None else None
    return Interval(mean, low, high, n, sd, "censored-t")


# ---- conditions and verdicts -------------------------------------------------------------------

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"


def _json_num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class Condition:
    """One testable part of a claim, decided from a 95% interval.

    ``direction`` +1: the claim predicts effect > threshold; -1: effect < threshold; 0: the claim
    predicts no effect that matters, |effect| < threshold (an equivalence claim, e.g. "at a tiny
    learning rate BN gives no advantage"): REPRODUCED when the interval lies wholly inside
    (-threshold, threshold), NOT REPRODUCED when wholly outside it, INCONCLUSIVE otherwise.
    ``negligible`` (low, high): the band of effects too small to matter; used only when the
    claim asserts an effect. The reason for the threshold and band (from the paper) is in
    ``reason``.

    - REPRODUCED: the interval lies wholly beyond the threshold on the claimed side;
    - NOT REPRODUCED: wholly on the other side, or wholly inside the negligible band;
    - INCONCLUSIVE otherwise (or with no interval), with ``seeds_to_settle`` estimated.
    """

    name: str
    effect: float | None
    ci95: tuple[float | None, float | None]
    threshold: float
    direction: int = 1
    negligible: tuple[float, float] | None = None
    reason: str = ""
    n: int = 0
    sd: float | None = None
    unit: str = ""  # what the effect measures, e.g. "accuracy difference" or "log speedup"
    log: bool = False  # the effect is a natural log of a ratio: shown as exp(effect) "x"

    def __post_init__(self) -> None:
        if self.direction not in (1, 0, -1):
            raise ValueError(f"direction must be +1, 0 or -1, got {self.direction}")
        if self.direction == 0 and not self.threshold > 0:
            raise ValueError(
                f"an equivalence condition needs a threshold > 0, got {self.threshold}"
            )

    @classmethod
    def from_interval(cls, name: str, iv: Interval, threshold: float, **kw) -> Condition:
        return cls(name, iv.mean, (iv.low, iv.high), threshold, n=iv.n, sd=iv.sd, **kw)

    @property
    def outcome(self) -> str:
        lo, hi = self.ci95
        if lo is None or hi is None:
            return INCONCLUSIVE
        t = self.threshold
        if self.direction == 0:
            if -t < lo and hi < t:
                return REPRODUCED
            return NOT_REPRODUCED if hi <= -t or lo >= t else INCONCLUSIVE
        if (self.direction > 0 and lo > t) or (self.direction < 0 and hi < t):
            return REPRODUCED
        if (self.direction > 0 and hi < t) or (self.direction < 0 and lo > t):
            return NOT_REPRODUCED
        if self.negligible is not None and self.negligible[0] <= lo and hi <= self.negligible[1]:
            return NOT_REPRODUCED
        return INCONCLUSIVE

    @property
    def seeds_to_settle(self) -> int | None:
        """For an inconclusive condition: seeds that would likely clear the threshold."""
        if self.outcome != INCONCLUSIVE:
            return None
        if self.direction == 0 and self.effect is not None:  # the nearer edge of the band
            edge = self.threshold if self.effect >= 0 else -self.threshold
            return seeds_needed(self.effect, self.sd, edge)
        return seeds_needed(self.effect, self.sd, self.threshold)

    def to_json(self) -> dict:
        lo, hi = self.ci95
        return {
            "name": self.name,
            "effect": _json_num(self.effect),
            "ci95": [_json_num(lo), _json_num(hi)],
            "threshold": self.threshold,
            "outcome": self.outcome,
            "direction": self.direction,
            "negligible": None if self.negligible is None else list(self.negligible),
            "n": self.n,
            "seeds_to_settle": self.seeds_to_settle,
            "unit": self.unit,
            "log": self.log,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Verdict:
    """The judgement on one claim: the combination of its conditions.

    All reproduced -> reproduced; any not reproduced -> not reproduced; else (or no condition)
    inconclusive. ``reproduced`` is True / False / None accordingly.
    """

    claim: str
    conditions: tuple[Condition, ...] = ()
    evidence: str = ""

    @property
    def outcome(self) -> str:
        outs = [c.outcome for c in self.conditions]
        if not outs:
            return INCONCLUSIVE
        if NOT_REPRODUCED in outs:
            return NOT_REPRODUCED
        if all(o == REPRODUCED for o in outs):
            return REPRODUCED
        return INCONCLUSIVE

    @property
    def reproduced(self) -> bool | None:
        return {REPRODUCED: True, NOT_REPRODUCED: False, INCONCLUSIVE: None}[self.outcome]

    def to_json(self) -> dict:
        return {
            "claim": self.claim,
            "reproduced": self.reproduced,
            "evidence": self.evidence,
            "outcome": self.outcome,
            "conditions": [c.to_json() for c in self.conditions],
        }
