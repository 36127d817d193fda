"""`lr-sweep`: BN allows much higher learning rates and trains faster there.

Sources: Ioffe & Szegedy 2015, Sec. 4.2.2 (Inception: BN-x5 reaches 72.2% in 14x fewer steps; plain
Inception at 5x LR diverges) and Bjorck et al. 2018 (BN's benefit comes from the larger learning
rate it allows; at a tiny learning rate BN gives no advantage).

Setup: the paper's MLP 784-100-100-100-10 with BN before each nonlinearity, on a log-spaced
learning-rate grid, every (norm, learning rate, seed) trained together: one compiled program per
norm, members vmapped. The nonlinearity is ReLU by default, as in the networks the claim comes from
(Inception, and Bjorck et al.'s ResNets): with sigmoid units the unnormalized baseline does not
diverge at a high learning rate but saturates and stalls at chance (10%), which the divergence rule
of SCIENCE.md (non-finite loss or 1e3 x the initial loss) does not count; `--set
activation=sigmoid` runs that variant (the `activations` experiment covers it). A setting "trains"
when its median seed reaches `target` eval-mode accuracy within the budget.

Rule (fixed before the runs that judge it; SCIENCE.md): the share of seeds in which the baseline
diverges above its best learning rate exceeds 0.5 (Wilson interval); the highest learning rate at
which BN trains over the baseline's best exceeds `high_lr_factor` (5x; per-seed log ratio); BN at
its best learning rate is faster than the baseline at its own (censored log speedup > 0); and at
the smallest learning rate the paired final-accuracy difference BN - baseline lies wholly inside
(-close_tol, +close_tol) with close_tol = 1 point (an equivalence claim; see CLOSE_REASON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import metrics, plots, stats
from bnexp.sweep import TrialResult
from experiments import common
from experiments import conditions as cond
from experiments.base import (
    Analysis,
    Config,
    ConfigError,
    Experiment,
    Table,
    Verdict,
    make_trial,
    mlp,
)

CLAIM = "BN allows much higher learning rates and trains faster there"


@dataclass(frozen=True)
class LRSweepConfig(Config):
    activation: str = "relu"
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    target: float = 0.90  # eval-mode test accuracy that counts as "trains"
    high_lr_factor: float = 5.0  # BN must train at >= this x the baseline's best LR
    close_tol: float = 0.01  # at the smallest LR, |BN - baseline| below this is "close" (1 pt)

    def accuracy_targets(self) -> tuple[float, ...]:
        return (self.target,)


PRESETS = {
    "smoke": LRSweepConfig(
        preset="smoke",
        dataset="synthetic",
        seeds=1,
        steps=60,
        eval_every=20,
        lrs=(0.1, 1.0, 100.0),
        target=0.6,
    ),
    "quick": LRSweepConfig(preset="quick", steps=2000, eval_every=100, seeds=5),
    "paper": LRSweepConfig(
        preset="paper", dataset="mnist", steps=20_000, eval_every=500, seeds=5, target=0.97
    ),
}

ARMS = common.ARMS


def trials(cfg: LRSweepConfig):
    out = []
    for tag, norm in ARMS:
        model = mlp(cfg, norm)
        for lr in cfg.lrs:
            out += [
                make_trial(cfg, model, seed=s, tag=f"{tag}@{lr:g}", lr=lr) for s in range(cfg.seeds)
            ]
    return out


def validate(cfg: LRSweepConfig) -> None:
    if not cfg.lrs or any(lr <= 0 for lr in cfg.lrs):
        raise ConfigError(f"lrs must be positive learning rates, got {cfg.lrs}")
    if not 0 < cfg.target <= 1:
        raise ConfigError(f"target must be an accuracy in (0, 1], got {cfg.target}")
    if not 0 < cfg.close_tol < 1:
        raise ConfigError(
            f"close_tol must be an accuracy difference in (0, 1), got {cfg.close_tol}"
        )


def _best(steps: dict[float, Any], final: dict[float, float | None]) -> float | None:
    """The learning rate whose median seed reaches the target first (ties: higher final)."""
    ok = [lr for lr, s in steps.items() if s is not None and s.reached]
    if not ok:
        return None
    return min(ok, key=lambda lr: (steps[lr].high, steps[lr].low, -(final[lr] or 0.0)))


# The rule, fixed before the runs that judge it (SCIENCE.md: "baseline diverges above some LR; BN
# trains at >= 5x the baseline's best LR; best-BN speedup over best-baseline > 1; at the smallest
# LR the two are close"), as four conditions on per-seed effects:
DIVERGE_REASON = (
    "Sec. 4.2.2: plain Inception at 5x the learning rate diverges; here the baseline must diverge "
    "at some learning rate above its best in most seeds (proportion > 0.5, Wilson interval)"
)
HIGH_REASON = (
    "Sec. 4.2.2: BN-x5 and BN-x30 train at 5x and 30x the baseline's learning rate; the highest "
    "learning rate at which BN reaches the target, over the baseline's best, must exceed the "
    "factor (per seed, on the log scale; the grid spacing limits the resolution)"
)
FAST_REASON = (
    "Sec. 4.2.2: BN-x5 reaches 72.2% in 14x fewer steps than Inception; the claim is any "
    "speedup of BN at its best learning rate over the baseline at its own (> 1x)"
)
CLOSE_REASON = (
    "Bjorck et al. 2018: at a tiny learning rate BN gives no advantage (an equivalence claim): "
    "the paired final-accuracy difference at the smallest learning rate must lie wholly inside "
    "+-close_tol (default 1 point: 100 of MNIST's 10,000 test images), small against what BN changes "
    "elsewhere in this sweep (tens of points where the baseline diverges), and not tighter, "
    "because at the smallest learning rate both arms are still climbing at the end of the "
    "budget, where a few tenths of a point measure only how far an unfinished run has got"
)


def conditions(cfg: LRSweepConfig, by: dict[str, list[TrialResult]], best: dict) -> tuple:
    lrs = sorted(cfg.lrs)

    def rs(tag: str, lr: float) -> list[TrialResult]:
        return by.get(f"{tag}@{lr:g}", [])

    seeds = sorted({r.trial.seed for r in results_of(by)})
    per_seed = {(tag, lr): cond.by_seed(rs(tag, lr)) for tag, _ in ARMS for lr in lrs}

    def trains(tag: str, lr: float, seed: int) -> bool:
        r = per_seed[tag, lr].get(seed)
        return r is not None and cond.steps(r, cfg.target).reached

    def seed_best(seed: int) -> float | None:  # the baseline's fastest learning rate in a seed
        ok = [lr for lr in lrs if trains("baseline", lr, seed)]
        return (
            min(ok, key=lambda lr: cond.steps(per_seed["baseline", lr][seed], cfg.target).high)
            if ok
            else None
        )

    diverges, high_ratio = [], []
    for seed in seeds:
        b = seed_best(seed)
        above = [lr for lr in lrs if b is None or lr > b]
        diverges.append(
            any(
                (r := per_seed["baseline", lr].get(seed)) is not None and r.diverged_at is not None
                for lr in above
            )
        )
        bn_top = max((lr for lr in lrs if trains("bn", lr, seed)), default=None)
        high_ratio.append(None if b is None or bn_top is None else bn_top / b)
    p = stats.proportion_interval(sum(diverges), len(diverges))
    out = [
        stats.Condition.from_interval(
            "baseline diverges above its best lr (share of seeds)",
            p,
            0.5,
            reason=DIVERGE_REASON,
            unit="proportion",
        ),
        cond.log_ratio(
            "highest lr where BN trains / baseline's best lr",
            high_ratio,
            [1.0] * len(high_ratio),
            cfg.high_lr_factor,
            reason=HIGH_REASON,
            unit="lr ratio",
        ),
    ]
    b, n = best["baseline"], best["bn"]
    if b is not None and n is not None:
        out.append(
            cond.speedup(
                "speedup, best BN lr over best baseline lr",
                rs("baseline", b),
                rs("bn", n),
                cfg.target,
                reason=FAST_REASON,
            )
        )
    else:
        out.append(
            stats.Condition(
                "speedup, best BN lr over best baseline lr",
                None,
                (None, None),
                0.0,
                reason=FAST_REASON + " (an arm never reaches the target: not measurable)",
                unit="log speedup",
                log=True,
            )
        )
    lo = lrs[0]
    out.append(
        cond.accuracy_difference(
            f"final accuracy at lr {lo:g}, BN - baseline",
            rs("bn", lo),
            rs("baseline", lo),
            cfg.close_tol,
            direction=0,
            reason=CLOSE_REASON,
        )
    )
    return tuple(out)


def results_of(by: dict[str, list[TrialResult]]) -> list[TrialResult]:
    return [r for rs in by.values() for r in rs]


def analyze(cfg: LRSweepConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    rows, steps, final = [], {}, {}
    for lr in cfg.lrs:
        row: dict[str, Any] = {"lr": lr}
        for tag, _ in ARMS:
            rs = by.get(f"{tag}@{lr:g}", [])
            summary = metrics.summarize_final_accuracy(rs)
            s = common.arm_steps(rs, cfg.target)
            steps[tag, lr], final[tag, lr] = s, summary.mean
            row[f"{tag} final acc"] = summary.to_dict()
            row[f"{tag} steps"] = common.steps_dict(s)
        sp = common.arm_speedup(
            by.get(f"baseline@{lr:g}", []), by.get(f"bn@{lr:g}", []), cfg.target
        )
        row["bn speedup"] = sp.to_dict()
        rows.append(row)
    cols = ["lr", "baseline final acc", "bn final acc", "baseline steps", "bn steps", "bn speedup"]
    sweep = Table(f"Final accuracy and steps to {cfg.target:.0%} by learning rate", cols, rows)

    best = {
        tag: _best({lr: steps[tag, lr] for lr in cfg.lrs}, {lr: final[tag, lr] for lr in cfg.lrs})
        for tag, _ in ARMS
    }
    best_rows = []
    for tag, _ in ARMS:
        lr = best[tag]
        best_rows.append(
            {
                "arm": tag,
                "best lr": "none trains" if lr is None else f"{lr:g}",
                "best_lr": lr,
                "steps": None if lr is None else common.steps_dict(steps[tag, lr]),
                "steps to target": "never" if lr is None else common.steps_text(steps[tag, lr]),
                "final": common.pct(None if lr is None else final[tag, lr]),
            }
        )
    b, n = best["baseline"], best["bn"]
    sp_best = (
        common.arm_speedup(by[f"baseline@{b:g}"], by[f"bn@{n:g}"], cfg.target)
        if b is not None and n is not None
        else stats.CensoredSpeedup(stats.NOT_REACHED, None, None, None)
    )
    best_rows[1]["speedup over best baseline"] = sp_best.text
    best_rows[1]["speedup_best"] = sp_best.to_dict()
    summary = Table(
        "Best learning rate per arm (median seed)",
        ["arm", "best lr", "steps to target", "final", "speedup over best baseline"],
        best_rows,
    )
    lo = min(cfg.lrs)
    ev = (
        f"best lr: baseline {'none' if b is None else f'{b:g}'}, BN "
        f"{'none' if n is None else f'{n:g}'}; median-seed speedup best vs best {sp_best.text}; "
        f"at the smallest lr ({lo:g}) BN {common.pct(final['bn', lo])} vs baseline "
        f"{common.pct(final['baseline', lo])}"
    )
    return Analysis([sweep, summary], Verdict(CLAIM, conditions(cfg, by, best), ev))


def plot(cfg: LRSweepConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    rows = analysis.tables[0].rows
    lrs = np.array([r["lr"] for r in rows], float)
    tags = [t for t, _ in ARMS]
    final = {t: common.column([r[f"{t} final acc"] for r in rows], "mean") for t in tags}
    steps = {
        t: common.column([r[f"{t} steps"] or {"high": None} for r in rows], "high") for t in tags
    }
    return [
        plots.lr_sweep(
            lrs, steps, final, out / "lr_sweep.png", target=cfg.target, total_steps=cfg.steps
        )
    ]


EXPERIMENT = Experiment(
    name="lr-sweep",
    claim=CLAIM,
    source="Ioffe & Szegedy 2015 Sec. 4.2.2 (Inception table); Bjorck et al. 2018",
    config_type=LRSweepConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    validate=validate,
    paper="steps to 72.2%: Inception 31.0M, BN-Baseline 13.3M, BN-x5 2.1M (14x fewer), BN-x30 "
    "2.7M; Inception at 5x LR diverges",
    shows="per learning rate: final accuracy and steps to target for baseline and BN, speedup; "
    "best learning rate per arm and best-vs-best speedup",
)
