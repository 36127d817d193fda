"""The metrics of SCIENCE.md, defined once and used everywhere (experiments, report, tests).

Plain NumPy on finished histories; nothing here trains, draws or prints.

- steps-to-target: first evaluation step whose eval-mode test accuracy >= target.
- speedup of arm A over baseline B = steps_B / steps_A; when B never reaches the target within the
  budget of T steps, B needs more than T steps, so the honest statement is the lower bound
  ``> T / steps_A`` (never infinity, never a made-up number).
- diverged: loss non-finite or > factor x the initial loss (the engine's rule, factor 1e3).
- final accuracy over seeds: mean, sample std and a 95% Student-t interval when n >= 3; diverged
  members (None / NaN) are excluded from the statistics and counted.
- percentile drift: how far the 15/50/85th percentiles of a sigmoid input wander during training
  (Ioffe & Szegedy Fig. 1b,c).
- train/eval gap: accuracy with batch statistics minus accuracy with running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf, 6 decimals).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: table for df <= 30, Cornish-Fisher expansion (error < 3e-8) above."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975  # Abramowitz & Stegun 26.7.5
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


# ---- steps-to-target and speedup ------------------------------------------------------------


def steps_to_target(
    steps: Sequence[int] | np.ndarray, acc: Sequence[float] | np.ndarray, target: float
) -> int | None:
    """First evaluation step whose (eval-mode) accuracy is >= target; None if never.

    NaN accuracies (a diverged member's history) never count as reaching the target.
    """
    steps, acc = np.asarray(steps), np.asarray(acc, dtype=np.float64)
    if steps.shape != acc.shape or steps.ndim != 1:
        raise ValueError(f"steps {steps.shape} and acc {acc.shape} must be equal 1-D shapes")
    hit = np.flatnonzero(np.nan_to_num(acc, nan=-np.inf) >= target)
    return int(steps[hit[0]]) if hit.size else None


@dataclass(frozen=True)
class Speedup:
    """steps_baseline / steps_arm. ``value`` is the bound itself when ``lower_bound`` is True.

    value None (text "n/a") when the arm never reaches the target (or neither does).
    """

    value: float | None
    lower_bound: bool
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Speedup:
        return cls(d.get("value"), bool(d.get("lower_bound", False)), str(d.get("text", "n/a")))


def _format_ratio(x: float, floor: bool) -> str:
    """'3.4' below 10, '12' above; floor=True rounds down so a lower bound stays true."""
    decimals = 1 if x < 10 else 0
    scale = 10**decimals
    if floor:
        x = math.floor(x * scale + 1e-9) / scale
    return f"{x:.{decimals}f}"


def speedup(steps_baseline: int | None, steps_arm: int | None, total_steps: int) -> Speedup:
    """Speedup of an arm over the baseline at one target (SCIENCE.md "Speedup").

    - both reach the target: steps_baseline / steps_arm, text "3.4x";
    - baseline never reaches it within total_steps: lower bound total_steps / steps_arm, text ">12x";
    - arm never reaches it: value None, text "n/a".
    """
    if steps_arm is None:
        return Speedup(None, False, "n/a")
    if steps_arm <= 0:
        raise ValueError(f"steps_arm must be positive, got {steps_arm}")
    if steps_baseline is None:
        bound = total_steps / steps_arm
        return Speedup(bound, True, f">{_format_ratio(bound, floor=True)}x")
    value = steps_baseline / steps_arm
    return Speedup(value, False, f"{_format_ratio(value, floor=False)}x")


# ---- divergence ------------------------------------------------------------------------------


def divergence_mask(
    losses: np.ndarray | Sequence[float], initial_loss: float, factor: float = 1e3
) -> np.ndarray:
    """Elementwise: loss non-finite or > factor * initial_loss (the engine's rule)."""
    losses = np.asarray(losses, dtype=np.float64)
    if not math.isfinite(initial_loss):
        return np.ones(losses.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(losses) | (losses > factor * initial_loss)


def diverged(
    losses: np.ndarray | Sequence[float], initial_loss: float, factor: float = 1e3
) -> bool:
    """True when any loss is non-finite or exceeds factor x the initial loss."""
    return bool(divergence_mask(losses, initial_loss, factor).any())


def divergence_step(
    steps: np.ndarray | Sequence[int],
    losses: np.ndarray | Sequence[float],
    initial_loss: float,
    factor: float = 1e3,
) -> int | None:
    """The first step at which the divergence rule fires, None if it never does."""
    hit = np.flatnonzero(divergence_mask(losses, initial_loss, factor))
    return int(np.asarray(steps)[hit[0]]) if hit.size else None


# ---- statistics over seeds -------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Statistics of one quantity over seeds; diverged members (None/NaN) are excluded and counted.

    mean None when every member diverged; std None when n < 2 (sample std, ddof=1);
    low/high: 95% Student-t interval mean +- t_{0.975,n-1} std/sqrt(n), only when n >= 3.
    """

    mean: float | None
    std: float | None
    n: int  # finite members used
    n_diverged: int  # members that were None / NaN
    low: float | None = None
    high: float | None = None
    diverged_at: tuple[int, ...] = ()  # divergence steps of the excluded members, when known

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    @property
    def total(self) -> int:
        return self.n + self.n_diverged

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diverged_at"] = list(self.diverged_at)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        return cls(
            d.get("mean"),
            d.get("std"),
            int(d.get("n", 0)),
            int(d.get("n_diverged", 0)),
            d.get("low"),
            d.get("high"),
            tuple(int(s) for s in d.get("diverged_at") or ()),
        )


def summarize(values: Iterable[float | None], diverged_at: Iterable[int | None] = ()) -> Summary:
    """Mean, std, n and the 95% interval over seeds. None or NaN means a diverged member.

    diverged_at (optional): the members' divergence steps (None for the healthy ones), kept so
    a report can say "diverged @ 1200".
    """
    vals = [None if v is None else float(v) for v in values]
    good = np.array([v for v in vals if v is not None and math.isfinite(v)], dtype=np.float64)
    n, n_div = int(good.size), len(vals) - int(good.size)
    steps = tuple(sorted(int(s) for s in diverged_at if s is not None))
    if n == 0:
        return Summary(None, None, 0, n_div, diverged_at=steps)
    mean = float(good.mean())
    std = float(good.std(ddof=1)) if n >= 2 else None
    low = high = None
    if n >= 3:
        half = t_quantile_975(n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return Summary(mean, std, n, n_div, low, high, steps)


def summarize_final_accuracy(results: Iterable[Any]) -> Summary:
    """summarize() of TrialResult-like objects' final_test_accuracy, keeping diverged_at."""
    results = list(results)
    return summarize([r.final_test_accuracy for r in results], [r.diverged_at for r in results])


def band(
    curves: np.ndarray | Sequence[Sequence[float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean, min, max and finite count over the rows of a (members, E) array.

    NaN entries (diverged members) are skipped; a column with no finite entry gives NaN (and no
    RuntimeWarning). A 1-D input is one member.
    """
    a = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    ok = np.isfinite(a)
    count = ok.sum(axis=0)
    safe = np.maximum(count, 1)
    mean = np.where(count > 0, np.where(ok, a, 0.0).sum(axis=0) / safe, np.nan)
    lo = np.where(count > 0, np.where(ok, a, np.inf).min(axis=0), np.nan)
    hi = np.where(count > 0, np.where(ok, a, -np.inf).max(axis=0), np.nan)
    return mean, lo, hi, count


# ---- percentile drift ------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """How much the (15, 50, 85)th percentiles of a sigmoid input move over training.

    In the units of the sigmoid input (absolute units are meaningful: with or without BN, the
    same sigmoid saturates at the same |x|). With median m_t and spread s_t = p85_t - p15_t over
    the finite evaluation points t:

        median_range = max_t m_t - min_t m_t        spread_range = max_t s_t - min_t s_t
        value        = median_range + spread_range  (the headline drift number)
        relative     = value / mean_t s_t           (scale-free variant)
        median_step  = mean_t |m_{t+1} - m_t|       spread_step = mean_t |s_{t+1} - s_t|

    Ranges, not summed steps, are the headline because they do not grow with the number of
    evaluation points. All fields are None when fewer than 2 evaluation points are finite.
    """

    value: float | None
    median_range: float | None
    spread_range: float | None
    relative: float | None
    median_step: float | None
    spread_step: float | None
    points: int  # finite evaluation points used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile_drift(percentiles: np.ndarray | Sequence[Sequence[float]]) -> Drift:
    """Drift (see Drift) of an (E, 3) array of 15/50/85th percentiles, one row per eval point.

    One unit of one run: seeds are not averaged first (drifts in different directions would
    cancel; pair per-seed drifts instead). Rows with a NaN (after divergence) are dropped.
    """
    p = np.asarray(percentiles, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"percentiles must have shape (E, 3) (one run, one unit), got {p.shape}")
    p = p[np.isfinite(p).all(axis=1)]
    if p.shape[0] < 2:
        return Drift(None, None, None, None, None, None, int(p.shape[0]))
    med, spread = p[:, 1], p[:, 2] - p[:, 0]
    m_range, s_range = float(np.ptp(med)), float(np.ptp(spread))
    value = m_range + s_range
    mean_spread = float(spread.mean())
    relative = value / mean_spread if mean_spread > 0 else None
    return Drift(
        value,
        m_range,
        s_range,
        relative,
        float(np.abs(np.diff(med)).mean()),
        float(np.abs(np.diff(spread)).mean()),
        int(p.shape[0]),
    )


def unit_drift_parts(percentiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median_range, spread_range) of every unit of one run (see Drift), each (units,).

    From (E, units, 3) percentiles. Evaluation points where any unit is non-finite (after
    divergence) are dropped for all units; all NaN when fewer than 2 points remain.
    """
    p = np.asarray(percentiles, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 3:
        raise ValueError(f"percentiles must have shape (E, units, 3), got {p.shape}")
    p = p[np.isfinite(p).all(axis=(1, 2))]
    if p.shape[0] < 2:
        return np.full(p.shape[1], np.nan), np.full(p.shape[1], np.nan)
    return np.ptp(p[..., 1], axis=0), np.ptp(p[..., 2] - p[..., 0], axis=0)


def unit_drifts(percentiles: np.ndarray) -> np.ndarray:
    """Drift.value of every unit of one run: (E, units, 3) percentiles -> (units,) drifts."""
    m_range, s_range = unit_drift_parts(percentiles)
    return m_range + s_range


def median_unit_drift(percentiles: np.ndarray) -> float | None:
    """Median over units of ``unit_drifts``: one run's drift of the layer (None: < 2 points).

    The median, not the mean: a layer's typical unit, not its few saturated or dead ones."""
    d = unit_drifts(percentiles)
    return None if not np.isfinite(d).all() else float(np.median(d))


# ---- train/eval gap --------------------------------------------------------------------------


def train_eval_gap(acc_batch_stats: Any, acc_running_stats: Any) -> Any:
    """Accuracy with batch statistics minus accuracy with running statistics.

    Scalars: a float, or None when either side is None/NaN (diverged). Arrays: elementwise, NaN
    where either side is NaN.
    """
    if np.ndim(acc_batch_stats) == 0 and np.ndim(acc_running_stats) == 0:
        if not (_finite(acc_batch_stats) and _finite(acc_running_stats)):
            return None
        return float(acc_batch_stats) - float(acc_running_stats)
    return np.asarray(acc_batch_stats, np.float64) - np.asarray(acc_running_stats, np.float64)


def final_train_eval_gap(history: Mapping[str, np.ndarray]) -> float | None:
    """train_eval_gap at the last evaluation point of a history ("test_acc_batch" - "test_acc")."""
    return train_eval_gap(history["test_acc_batch"][-1], history["test_acc"][-1])


# ---- series over training (Santurkar et al. probes) ------------------------------------------


@dataclass(frozen=True)
class SeriesSummary:
    """One quantity measured at every evaluation point, summarized over training.

    From an (E,) series or an (S, E) array of seeds (averaged over the finite seeds at each point
    first, as ``band``): mean, median, min, max and last value over the finite evaluation points.
    All None when no point is finite (every member diverged before the first point).
    """

    mean: float | None
    median: float | None
    min: float | None
    max: float | None
    last: float | None
    points: int  # finite evaluation points used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def series_summary(
    values: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
) -> SeriesSummary:
    """SeriesSummary of an (E,) or (S, E) series (seeds averaged first, NaN skipped)."""
    mean_curve = band(values)[0]
    v = mean_curve[np.isfinite(mean_curve)]
    if v.size == 0:
        return SeriesSummary(None, None, None, None, None, 0)
    return SeriesSummary(
        float(v.mean()),
        float(np.median(v)),
        float(v.min()),
        float(v.max()),
        float(v[-1]),
        int(v.size),
    )


def band_width(bands: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Upper minus lower edge of [..., 2] bands (Santurkar et al.'s loss and gradient bands)."""
    b = np.asarray(bands, dtype=np.float64)
    if b.shape[-1:] != (2,):
        raise ValueError(f"bands must have a last axis of 2 (min, max), got {b.shape}")
    return b[..., 1] - b[..., 0]
