"""`activations`: with BN, saturating activations train; without, they stall at a high LR.

Source: Ioffe & Szegedy 2015, Sec. 4.2.2: BN-x5-Sigmoid reaches 69.8% where sigmoid Inception
without BN never beats chance.

Setup: the paper's MLP with each activation (sigmoid, tanh, relu), with and without BN, at the
base learning rate and at multiples of it. A setting "trains" when its median seed reaches
`target`; "stalls" when it does not (or diverges). The claim is judged at the grid's highest
learning rate: sigmoid+BN's final accuracy above `target` and sigmoid without BN's below it,
each over seeds with its 95% interval (see `conditions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

CLAIM = "with BN, saturating activations train at a LR where they stall without BN"


@dataclass(frozen=True)
class ActivationsConfig(Config):
    activations: tuple[str, ...] = ("sigmoid", "tanh", "relu")
    lr_multipliers: tuple[float, ...] = (1.0, 5.0, 30.0)
    target: float = 0.90

    def accuracy_targets(self) -> tuple[float, ...]:
        return (self.target,)


PRESETS = {
    "smoke": ActivationsConfig(
        preset="smoke",
        dataset="synthetic",
        seeds=1,
        steps=60,
        eval_every=20,
        activations=("sigmoid", "relu"),
        lr_multipliers=(1.0, 30.0),
        target=0.6,
    ),
    "quick": ActivationsConfig(preset="quick", steps=2000, eval_every=200, seeds=5),
    "paper": ActivationsConfig(
        preset="paper", dataset="mnist", steps=20_000, eval_every=1000, seeds=5, target=0.97
    ),
}

ARMS = common.ARMS


def trials(cfg: ActivationsConfig):
    out = []
    for act in cfg.activations:
        for tag, norm in ARMS:
            model = mlp(cfg, norm, activation=act)
            for m in cfg.lr_multipliers:
                out += [
                    make_trial(cfg, model, seed=s, tag=f"{act}/{tag}@{m:g}", lr=cfg.lr * m)
                    for s in range(cfg.seeds)
                ]
    return out


def validate(cfg: ActivationsConfig) -> None:
    bad = [a for a in cfg.activations if a not in ("sigmoid", "tanh", "relu")]
    if bad:
        raise ConfigError(f"unknown activation {bad[0]!r}; choose sigmoid, tanh or relu")
    if any(m <= 0 for m in cfg.lr_multipliers):
        raise ConfigError(f"lr_multipliers must be positive, got {cfg.lr_multipliers}")


def analyze(cfg: ActivationsConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    rows = []
    for act in cfg.activations:
        for m in cfg.lr_multipliers:
            row: dict[str, Any] = {
                "activation": act,
                "lr": cfg.lr * m,
                "lr (x base)": f"{cfg.lr * m:g} ({m:g}x)",
            }
            for tag, _ in ARMS:
                rs = by.get(f"{act}/{tag}@{m:g}", [])
                nums, text = common.final_cell(rs)
                s = common.arm_steps(rs, cfg.target)
                reached = s is not None and s.reached
                row[f"{tag}_final_accuracy"] = nums["mean"]
                row[f"{tag}_steps_to_target"] = s.high if reached else None
                row[tag] = text
                row[f"{tag} steps"] = common.steps_text(s)
            rows.append(row)
    table = Table(
        f"Final accuracy and steps to {cfg.target:.0%} by activation and LR",
        ["activation", "lr (x base)", "baseline", "bn", "baseline steps", "bn steps"],
        rows,
    )
    sig_rows = {r["lr"]: r for r in rows if r["activation"] == "sigmoid"}
    ev = "; ".join(
        f"lr {lr:g}: sigmoid+BN {common.pct(r['bn_final_accuracy'])}"
        f" ({'trains' if r['bn_steps_to_target'] is not None else 'stalls'}), sigmoid without BN "
        f"{common.pct(r['baseline_final_accuracy'])}"
        f" ({'trains' if r['baseline_steps_to_target'] is not None else 'stalls'})"
        for lr, r in sig_rows.items()
    )
    if "sigmoid" not in cfg.activations:
        return Analysis([table], Verdict(CLAIM, (), "needs the sigmoid activation"))
    return Analysis([table], Verdict(CLAIM, conditions(cfg, by), ev))


# The rule, fixed before the runs that judge it (SCIENCE.md: "sigmoid+BN trains at a LR where
# sigmoid without BN stalls or diverges"), judged at the grid's highest learning rate (the claim
# is about a high learning rate: the paper's BN-x5 / x30; judging the one a priori chosen LR avoids
# picking the best of several), on each seed's final accuracy (a diverged member: chance):
TRAINS_REASON = (
    "Sec. 4.2.2: BN-x5-Sigmoid reaches 69.8%: sigmoid+BN trains, i.e. its final accuracy "
    "exceeds the target"
)
STALLS_REASON = (
    "Sec. 4.2.2: sigmoid Inception without BN never beats chance at that learning rate: its final "
    "accuracy stays below the target"
)


def conditions(cfg: ActivationsConfig, by: dict[str, list[TrialResult]]) -> tuple:
    m = max(cfg.lr_multipliers)

    def accs(tag: str) -> list[float | None]:
        return [cond.final(r, cond.CHANCE) for r in by.get(f"sigmoid/{tag}@{m:g}", [])]

    lr = f"{cfg.lr * m:g}"
    return (
        cond.values_condition(
            f"sigmoid+BN final accuracy at lr {lr}",
            accs("bn"),
            cfg.target,
            reason=TRAINS_REASON,
            unit="accuracy",
        ),
        cond.values_condition(
            f"sigmoid baseline final accuracy at lr {lr}",
            accs("baseline"),
            cfg.target,
            direction=-1,
            reason=STALLS_REASON,
            unit="accuracy",
        ),
    )


def plot(cfg: ActivationsConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    by = common.arms(results)
    top = max(cfg.lr_multipliers)
    sel = {
        f"{act} {tag}": by[f"{act}/{tag}@{top:g}"]
        for act in cfg.activations
        for tag, _ in ARMS
        if f"{act}/{tag}@{top:g}" in by
    }
    return [
        common.plot_curves(
            sel,
            out / "activations.png",
            title=f"Test accuracy at lr {cfg.lr * top:g} ({top:g}x base)",
        )
    ]


EXPERIMENT = Experiment(
    name="activations",
    claim=CLAIM,
    source="Ioffe & Szegedy 2015, Sec. 4.2.2 (BN-x5-Sigmoid)",
    config_type=ActivationsConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    validate=validate,
    paper="BN-x5-Sigmoid reaches 69.8%; sigmoid Inception without BN never beats chance",
    shows="final accuracy and steps to target for each activation, with and without BN, at each "
    "learning-rate multiple",
)
