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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import metrics, plots
from bnexp.sweep import TrialResult
from experiments import common
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
    close_tol: float = 0.05  # at the smallest LR, final accuracies within this are "close"

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
    "quick": LRSweepConfig(preset="quick", steps=2000, eval_every=100, seeds=2),
    "paper": LRSweepConfig(
        preset="paper", dataset="mnist", steps=20_000, eval_every=500, seeds=3, target=0.97
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


def _best(steps: dict[float, float | None], final: dict[float, float | None]) -> float | None:
    """The learning rate that reaches the target in the fewest steps (ties: higher final)."""
    ok = [lr for lr, s in steps.items() if s is not None]
    if not ok:
        return None
    return min(ok, key=lambda lr: (steps[lr], -(final[lr] or 0.0)))


def analyze(cfg: LRSweepConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    rows, steps, final, diverged = [], {}, {}, {}
    for lr in cfg.lrs:
        row: dict[str, Any] = {"lr": lr}
        for tag, _ in ARMS:
            rs = by.get(f"{tag}@{lr:g}", [])
            nums, text = common.final_cell(rs)
            s = common.arm_steps(rs, cfg.target)
            steps[tag, lr], final[tag, lr] = s, nums["mean"]
            diverged[tag, lr] = len(nums["diverged_at"]) > len(rs) / 2
            row[f"{tag}_final_accuracy"] = nums["mean"]
            row[f"{tag}_ci95"] = nums["ci95"]
            row[f"{tag}_diverged_at"] = nums["diverged_at"] or None
            row[f"{tag}_steps_to_target"] = s
            row[f"{tag} final"] = text
            row[f"{tag} steps"] = "never" if s is None else str(int(s))
        sp = metrics.speedup(steps["baseline", lr], steps["bn", lr], cfg.steps)
        row["speedup"], row["speedup_lower_bound"], row["bn speedup"] = (
            sp.value,
            sp.lower_bound,
            sp.text,
        )
        rows.append(row)
    cols = ["lr", "baseline final", "bn final", "baseline steps", "bn steps", "bn speedup"]
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
                "steps": None if lr is None else steps[tag, lr],
                "steps to target": "never" if lr is None else str(int(steps[tag, lr])),
                "final": common.pct(None if lr is None else final[tag, lr]),
            }
        )
    b, n = best["baseline"], best["bn"]
    sp_best = metrics.speedup(
        None if b is None else steps["baseline", b],
        None if n is None else steps["bn", n],
        cfg.steps,
    )
    best_rows[1]["speedup over best baseline"] = sp_best.text
    best_rows[1]["speedup_best"] = sp_best.value
    summary = Table(
        "Best learning rate per arm",
        ["arm", "best lr", "steps to target", "final", "speedup over best baseline"],
        best_rows,
    )

    # The four conditions of SCIENCE.md, each from the measured numbers.
    ref = b if b is not None else max(cfg.lrs)
    base_div = [lr for lr in cfg.lrs if diverged["baseline", lr]]
    c_div = any(lr > ref for lr in base_div) if b is not None else bool(base_div)
    bn_high = [lr for lr in cfg.lrs if lr >= cfg.high_lr_factor * ref and steps["bn", lr]]
    c_high = b is not None and bool(bn_high)
    c_fast = sp_best.value is not None and sp_best.value > 1
    lo = min(cfg.lrs)
    fb, fn = final["baseline", lo], final["bn", lo]
    c_close = fb is not None and fn is not None and abs(fn - fb) <= cfg.close_tol
    ev = (
        f"baseline diverges above its best LR: {'yes' if c_div else 'no'}"
        f" (diverged at lr {', '.join(f'{x:g}' for x in base_div) or 'none'}); "
        f"BN trains at >= {cfg.high_lr_factor:g}x the baseline's best LR ({ref:g}): "
        f"{'yes, lr ' + ', '.join(f'{x:g}' for x in bn_high) if bn_high else 'no'}; "
        f"best-BN speedup over best-baseline {sp_best.text}; at the smallest LR ({lo:g}) "
        f"BN {common.pct(fn)} vs baseline {common.pct(fb)} "
        f"({'close' if c_close else 'not close'}, tolerance {100 * cfg.close_tol:.0f} pts)"
    )
    reproduced = bool(c_div and c_high and c_fast and c_close)
    return Analysis([sweep, summary], Verdict(CLAIM, reproduced, ev))


def plot(cfg: LRSweepConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    rows = analysis.tables[0].rows
    lrs = np.array([r["lr"] for r in rows], float)
    tags = [t for t, _ in ARMS]
    final = {t: common.column(rows, f"{t}_final_accuracy") for t in tags}
    steps = {t: common.column(rows, f"{t}_steps_to_target") for t in tags}
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
