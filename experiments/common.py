"""Analysis pieces shared by the experiments: arms, per-seed summaries, standard tables, plots.

Every metric itself is defined once in `bnexp.metrics`; this module only arranges results into
rows. Rows hold plain numbers (JSON-able) and the formatted cell text the table shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import metrics, plots, stats
from bnexp.sweep import TrialResult, grid_points
from experiments.base import Table

# The two arms most experiments compare, as (tag, norm name): the same seeds, data order and
# initial weight matrices in both (paired).
ARMS = (("baseline", "none"), ("bn", "batch"))


def arms(results: Sequence[TrialResult]) -> dict[str, list[TrialResult]]:
    """Results by arm tag, in first-seen order, seeds sorted."""
    out: dict[str, list[TrialResult]] = {}
    for r in results:
        out.setdefault(r.trial.tag, []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r.trial.seed)
    return out


def pct(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def finals(rs: Sequence[TrialResult]) -> list[float | None]:
    return [r.final_test_accuracy for r in rs]


def final_mean(rs: Sequence[TrialResult]) -> float | None:
    vals = [v for v in finals(rs) if v is not None]
    return float(np.mean(vals)) if vals else None


def summary_cell(values: Sequence[float | None]) -> tuple[dict[str, Any], str]:
    """(numbers, text) for a per-seed quantity: mean and 95% interval when >= 3 seeds."""
    s = metrics.summarize(values)
    ci = None if s.low is None else [s.low, s.high]
    nums = {"mean": s.mean, "std": s.std, "n": s.n, "ci95": ci, "diverged": s.n_diverged}
    if s.mean is None:
        return nums, "diverged"
    text = pct(s.mean)
    if s.half_width is not None:
        text += f" ± {100 * s.half_width:.2f}"
    if s.n_diverged:
        text += f" ({s.n_diverged}/{s.total} diverged)"
    return nums, text


def column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """One numeric column of table rows as floats, NaN where the row holds None."""
    return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=np.float64)


def final_cell(rs: Sequence[TrialResult]) -> tuple[dict[str, Any], str]:
    """Final accuracy over seeds (summary_cell), or 'diverged @ step' when every seed diverged;
    the numbers gain "diverged_at", the sorted divergence steps."""
    nums, text = summary_cell(finals(rs))
    div = sorted(r.diverged_at for r in rs if r.diverged_at is not None)
    nums["diverged_at"] = div
    if div and len(div) == len(rs):
        text = f"diverged @ {int(np.median(div))}"
    return nums, text


def seed_steps(rs: Sequence[TrialResult], target: float) -> list[stats.CensoredSteps]:
    """Each seed's steps to ``target`` as the (previous evaluation, this evaluation] interval."""
    return [stats.censored_steps(r.history["step"], r.history["test_acc"], target) for r in rs]


def arm_steps(rs: Sequence[TrialResult], target: float) -> stats.CensoredSteps | None:
    """The median seed's steps to ``target`` (stats.median_censored; high None: the median seed
    never reached it within the budget); None for an arm with no results."""
    return stats.median_censored(seed_steps(rs, target)) if rs else None


def steps_text(s: stats.CensoredSteps | None) -> str:
    """'(150, 200]' for a crossing between two evaluations, 'never' when not reached."""
    if s is None or not s.reached:
        return "never"
    if s.low == s.high:
        return f"{int(s.high)}"
    return f"({s.low:g}, {s.high:g}]"


def steps_dict(s: stats.CensoredSteps | None) -> dict[str, float | None] | None:
    return None if s is None else s.to_dict()


def arm_speedup(
    base: Sequence[TrialResult], arm: Sequence[TrialResult], target: float
) -> stats.CensoredSpeedup:
    """Speedup of the median arm seed over the median baseline seed, censoring said as such."""
    b, a = arm_steps(base, target), arm_steps(arm, target)
    if a is None or b is None:
        return stats.CensoredSpeedup(stats.NOT_REACHED, None, None, None)
    return stats.censored_speedup(b, a)


def curve_table(
    arm_results: dict[str, list[TrialResult]], *, title: str, max_rows: int = 12
) -> Table:
    """Eval-mode test accuracy per arm at (a subsample of) step 0 and the linear grid
    (sweep.grid_points; the test subset of engine.eval_subset except at the last point). Each
    cell is the metrics.Summary over seeds (the renderers format it)."""
    first = next(iter(arm_results.values()))[0]
    steps = np.asarray(first.history["step"])
    full = np.flatnonzero(grid_points(steps, first.trial.eval_every))
    pick = np.linspace(0, len(full) - 1, min(max_rows, len(full))).round().astype(int)
    idx = full[np.unique(pick)]
    rows = []
    for i in idx:
        row: dict[str, Any] = {"step": int(steps[i])}
        for arm, rs in arm_results.items():
            vals = [float(r.history["test_acc"][i]) for r in rs]
            row[f"{arm} acc"] = metrics.summarize(
                [v if np.isfinite(v) else None for v in vals]
            ).to_dict()
        rows.append(row)
    return Table(title, ["step", *(f"{a} acc" for a in arm_results)], rows)


def target_table(
    arm_results: dict[str, list[TrialResult]],
    targets: Sequence[float],
    *,
    baseline: str,
) -> Table:
    """Steps to each target per arm (the median seed's (previous, first] evaluation interval,
    a stats.CensoredSteps dict) and the speedup of each arm over the baseline (a
    stats.CensoredSpeedup dict: "unresolved at this evaluation spacing" when both cross within the
    same interval, a lower bound when the baseline never gets there)."""
    rows = []
    others = [a for a in arm_results if a != baseline]
    for t in targets:
        row: dict[str, Any] = {"target acc": t}
        for arm, rs in arm_results.items():
            row[f"{arm} steps"] = steps_dict(arm_steps(rs, t))
        for arm in others:
            if baseline in arm_results:
                sp = arm_speedup(arm_results[baseline], arm_results[arm], t)
                row[f"{arm} speedup"] = sp.to_dict()
        rows.append(row)
    cols = ["target acc", *(f"{a} steps" for a in arm_results)]
    if baseline in arm_results:
        cols += [f"{a} speedup" for a in others]
    return Table(
        f"Steps to target accuracy (median seed; (a, b]: crossed between evaluations a and b; "
        f"speedup over {baseline})",
        cols,
        rows,
    )


def final_table(
    arm_results: dict[str, list[TrialResult]], *, baseline: str | None = None, gap: bool = True
) -> Table:
    """Final eval-mode accuracy per arm (a metrics.Summary over seeds: mean, 95% interval, the
    diverged members and where) and the train/eval gap (accuracy with batch statistics minus
    with running statistics, over the seeds that did not diverge)."""
    rows = []
    for arm, rs in arm_results.items():
        row: dict[str, Any] = {
            "arm": arm,
            "final accuracy": metrics.summarize_final_accuracy(rs).to_dict(),
            "seeds": len(rs),
        }
        if gap:
            row["train/eval gap (acc)"] = metrics.summarize(
                [train_eval_gap(r) for r in rs if r.diverged_at is None]
            ).to_dict()
        rows.append(row)
    cols = ["arm", "final accuracy", "seeds"] + (["train/eval gap (acc)"] if gap else [])
    return Table("Final test accuracy (eval mode, running statistics)", cols, rows)


def train_eval_gap(r: TrialResult) -> float | None:
    """Accuracy with batch statistics minus accuracy with running statistics, at the end."""
    if r.diverged_at is not None or "test_acc_batch" not in r.history:
        return None
    return metrics.train_eval_gap(
        float(r.history["test_acc_batch"][-1]), float(r.history["test_acc"][-1])
    )


def plot_curves(arm_results: dict[str, list[TrialResult]], path: Path, *, title: str) -> Path:
    first = next(iter(arm_results.values()))[0]
    steps = np.asarray(first.history["step"])
    curves = {
        arm: np.stack([np.asarray(r.history["test_acc"], float) for r in rs])
        for arm, rs in arm_results.items()
    }
    return plots.learning_curves(steps, curves, path, title=title)
