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
    "quick": InitConfig(preset="quick", steps=2000, eval_every=200, seeds=2),
    "paper": InitConfig(
        preset="paper", dataset="mnist", steps=20_000, eval_every=1000, seeds=3, flat_tol=0.01
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
    flat = spread["bn"] <= cfg.flat_tol
    sensitive = spread["baseline"] > cfg.flat_tol and spread["baseline"] > spread["bn"]
    ev = (
        f"accuracy spread across init scales {', '.join(f'{a:g}' for a in cfg.init_scales)}: "
        f"BN {100 * spread['bn']:.2f} pts (flat if <= {100 * cfg.flat_tol:.2f}), baseline "
        f"{100 * spread['baseline']:.2f} pts"
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
    return Analysis([table], Verdict(CLAIM, bool(flat and sensitive), ev))


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
