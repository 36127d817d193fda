"""`init-sensitivity`: BN makes training insensitive to the scale of the initial weights.

Source: Ioffe & Szegedy 2015, Sec. 3.3: BN(aWu) = BN(Wu), so the output of a BN layer does not
depend on the scale of W (and dBN/d(aW) = (1/a) dBN/dW). Without BN, a small init scale shrinks the
signal through the sigmoids and a large one saturates them.

Setup: the paper's MLP; the Gaussian init's std (0.1) is multiplied by each `init_scales` value
(a traced number: the whole grid of one arm is one compiled program). "Nearly flat" means the
spread (max - min) of BN's mean final accuracy across scales is at most `flat_tol`, and the
baseline's spread is larger than both `flat_tol` and BN's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import plots
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

CLAIM = "BN makes training insensitive to the scale of the initial weights"


@dataclass(frozen=True)
class InitConfig(Config):
    init_scales: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    # The claim is about the layers BN normalizes; the output layer has no BN in either arm, so by
    # default its init is left alone (set true to scale every layer, output included).
    scale_output_layer: bool = False
    flat_tol: float = 0.02  # BN's accuracy spread across scales that still counts as flat


PRESETS = {
    "smoke": InitConfig(
        preset="smoke",
        dataset="synthetic",
        seeds=1,
        steps=60,
        eval_every=20,
        init_scales=(0.1, 1.0, 10.0),
    ),
    "quick": InitConfig(preset="quick", steps=2000, eval_every=200, seeds=5),
    "paper": InitConfig(
        preset="paper", dataset="mnist", steps=20_000, eval_every=1000, seeds=5, flat_tol=0.01
    ),
}

ARMS = common.ARMS


def trials(cfg: InitConfig):
    out = []
    for tag, norm in ARMS:
        model = mlp(cfg, norm, scale_output_layer=cfg.scale_output_layer)
        for a in cfg.init_scales:
            out += [
                make_trial(cfg, model, seed=s, tag=f"{tag}@{a:g}", init_scale=a)
                for s in range(cfg.seeds)
            ]
    return out


def validate(cfg: InitConfig) -> None:
    if not cfg.init_scales or any(a <= 0 for a in cfg.init_scales):
        raise ConfigError(f"init_scales must be positive, got {cfg.init_scales}")


def analyze(cfg: InitConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    rows = []
    means: dict[str, list[float]] = {t: [] for t, _ in ARMS}
    for a in cfg.init_scales:
        row: dict[str, Any] = {
            "init_scale": a,
            "init scale": f"{a:g}x",
            "weight std": f"{a * cfg.init_std:g}",
            "bn effective lr": f"{cfg.lr / a**2:.3g}",
        }
        for tag, _ in ARMS:
            rs = by.get(f"{tag}@{a:g}", [])
            nums, text = common.final_cell(rs)
            row[f"{tag}_final_accuracy"] = nums["mean"]
            row[f"{tag}_ci95"] = nums["ci95"]
            row[tag] = text
            # a diverged setting counts as chance accuracy for the spread
            means[tag].append(0.1 if nums["mean"] is None else nums["mean"])
        rows.append(row)
    table = Table(
        "Final test accuracy by init scale (hidden-layer weights scaled)",
        ["init scale", "weight std", "baseline", "bn", "bn effective lr"],
        rows,
    )
    spread = {t: float(np.ptp(v)) for t, v in means.items()}
    ev = (
        f"accuracy spread across init scales {', '.join(f'{a:g}' for a in cfg.init_scales)} "
        f"(seed-mean accuracies): BN {100 * spread['bn']:.2f} pts (flat if <= "
        f"{100 * cfg.flat_tol:.2f}), baseline {100 * spread['baseline']:.2f} pts"
    )
    worst = cfg.init_scales[int(np.argmin(means["bn"]))]
    ev += (
        f"; BN's lowest accuracy is at scale {worst:g}x, where plain SGD's effective step on "
        f"the normalized weights is lr/a^2 = {cfg.lr / worst**2:.3g} (Sec. 3.3: the gradient "
        f"scales as 1/a while the weights scale as a)"
    )
    rows.append(
        {
            "init scale": "spread (max-min)",
            "weight std": "",
            "bn": f"{100 * spread['bn']:.2f} pts",
            "baseline": f"{100 * spread['baseline']:.2f} pts",
            "bn_spread": spread["bn"],
            "baseline_spread": spread["baseline"],
        }
    )
    return Analysis([table], Verdict(CLAIM, conditions(cfg, by), ev))


# The rule, fixed before the runs that judge it (SCIENCE.md: "BN's final accuracy is nearly flat
# across init scales; baseline's is not"), on each seed's spread (max - min over the scales of
# that seed's final accuracy; a diverged member counts as chance accuracy):
FLAT_REASON = (
    "Sec. 3.3: BN(aWu) = BN(Wu), so BN's accuracy should not depend on the init scale; 'nearly "
    "flat' is a spread below flat_tol"
)
SENSITIVE_REASON = (
    "without BN a small init scale shrinks the signal through the sigmoids and a large one "
    "saturates them: the baseline's spread must exceed BN's by more than flat_tol"
)


def _spreads(cfg: InitConfig, by: dict[str, list[TrialResult]], tag: str) -> dict[int, float]:
    """Per seed: max - min over the init scales of the seed's final accuracy (chance if
    diverged); only seeds present at every scale."""
    per = [cond.by_seed(by.get(f"{tag}@{a:g}", [])) for a in cfg.init_scales]
    seeds = set.intersection(*(set(p) for p in per)) if per else set()
    return {s: float(np.ptp([cond.final(p[s], cond.CHANCE) for p in per])) for s in sorted(seeds)}


def conditions(cfg: InitConfig, by: dict[str, list[TrialResult]]) -> tuple:
    bn, base = _spreads(cfg, by, "bn"), _spreads(cfg, by, "baseline")
    seeds = sorted(set(bn) & set(base))
    return (
        cond.values_condition(
            "BN accuracy spread across init scales",
            [bn[s] for s in seeds],
            cfg.flat_tol,
            direction=-1,
            reason=FLAT_REASON,
            unit=cond.ACC,
        ),
        cond.values_condition(
            "spread, baseline - BN",
            [base[s] - bn[s] for s in seeds],
            cfg.flat_tol,
            reason=SENSITIVE_REASON,
            unit=cond.ACC,
        ),
    )


def plot(cfg: InitConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    rows = [r for r in analysis.tables[0].rows if "init_scale" in r]
    scales = np.array([r["init_scale"] for r in rows], float)
    acc = {t: common.column(rows, f"{t}_final_accuracy") for t, _ in ARMS}
    return [plots.accuracy_vs_init_scale(scales, acc, out / "init_sensitivity.png")]


EXPERIMENT = Experiment(
    name="init-sensitivity",
    claim=CLAIM,
    source="Ioffe & Szegedy 2015, Sec. 3.3 (scale invariance of BN)",
    config_type=InitConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    validate=validate,
    paper="no number: an argument (BN(aWu) = BN(Wu), dBN/d(aW) = (1/a) dBN/dW)",
    shows="final accuracy of baseline and BN at each init scale, and the spread across scales",
)
