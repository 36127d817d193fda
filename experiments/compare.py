"""`compare`: BN reaches a given test accuracy in fewer steps and ends higher (Ioffe & Szegedy 2015,
Sec. 4.1, Fig. 1a).

Setup: the paper's MLP 784-100-100-100-10 with sigmoid units, BN before each sigmoid (bias
dropped), batch 60. The paper states neither optimizer nor learning rate; we use plain SGD at
lr 0.5 and Gaussian init with std 0.1, the values of a third-party reproduction that got 0.980 with
BN vs 0.977 without on full MNIST. Arms are paired: every arm of seed s starts from the same weight
matrices and sees the same batches in the same order. The paper trained on binary images: `--set
binarize=true` thresholds every pixel at 0.5 (> 0.5 -> 1, else 0) once, in the data pipeline
(`bnexp.data.binarize`), for both splits and every arm; the default keeps MNIST's grey levels, as
the third-party reproduction did.

Targets sit below the plateau, where both arms get within the budget (a target at the plateau
turns the speedup into the race to the last digit, or into a lower bound only): the quick preset
(3,000 steps, full MNIST) ends at about 95.8-95.9% in both arms, so its targets are 80%, 90% and
94% (early, middle and late training, the last ~2 points below the end); the paper preset's
(50,000 steps, 98.0% vs 97.7% in the reproduction) are 95%, 96% and 97%. Evaluation starts at
step 0 and is dense in early training (geometric + linear schedule), where BN is ahead.

Rule (fixed before the runs that judge it; SCIENCE.md): one log-speedup condition per target
(censored steps-to-target, paired by seed: reproduced when the interval lies above 0, i.e. > 1x;
within 10% either way is negligible) and the final accuracy as a paired difference BN - baseline
(reproduced when its interval lies above 0; within +-0.1 pt is negligible).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bnexp.sweep import TrialResult
from experiments import common
from experiments import conditions as cond
from experiments.base import Analysis, Config, ConfigError, Experiment, Verdict, make_trial, mlp

CLAIM = "BN reaches a given test accuracy in fewer steps and ends higher"


@dataclass(frozen=True)
class CompareConfig(Config):
    arms: tuple[str, ...] = ("batch", "none")  # norms by name; "none" is the baseline
    # below the quick plateau (~95.8-95.9% at 3,000 steps on full MNIST; see the module doc)
    targets: tuple[float, ...] = (0.80, 0.90, 0.94)
    norm_groups: int = 10  # for group norm arms (must divide every hidden width)
    binarize: bool = False  # the paper's binary images: pixels > 0.5 -> 1, else 0 (data pipeline)

    def accuracy_targets(self) -> tuple[float, ...]:
        return tuple(self.targets)


PRESETS = {
    "smoke": CompareConfig(
        preset="smoke", dataset="synthetic", seeds=1, steps=60, eval_every=20, targets=(0.5, 0.7)
    ),
    "quick": CompareConfig(preset="quick", steps=3000, eval_every=100, seeds=5),
    "paper": CompareConfig(
        preset="paper",
        dataset="mnist",
        steps=50_000,
        eval_every=1000,
        seeds=5,
        targets=(0.95, 0.96, 0.97),  # below the 97.7% / 98.0% the reproduction ended at
    ),
}


def arm_label(norm: str) -> str:
    return {"none": "baseline", "batch": "bn"}.get(norm, norm)


def trials(cfg: CompareConfig):
    out = []
    for norm in cfg.arms:
        opts = (("groups", cfg.norm_groups),) if norm == "group" else ()
        model = mlp(cfg, norm, norm_options=opts)
        out += [
            make_trial(cfg, model, seed=s, tag=arm_label(norm), data_options=data_options(cfg))
            for s in range(cfg.seeds)
        ]
    return out


def data_options(cfg: CompareConfig) -> tuple[tuple[str, bool], ...]:
    """The data pipeline's options: ("binarize", True) for the paper's binary images."""
    return (("binarize", True),) if cfg.binarize else ()


def validate(cfg: CompareConfig) -> None:
    if not cfg.arms:
        raise ConfigError("compare needs at least one arm")
    if "group" in cfg.arms and any(h % cfg.norm_groups for h in cfg.hidden):
        raise ConfigError(
            f"norm_groups={cfg.norm_groups} must divide every hidden width {cfg.hidden}"
        )
    if cfg.binarize and cfg.dataset == "synthetic":
        raise ConfigError("binarize needs an image dataset (mnist, ...), not synthetic features")
    if any(not 0 < t <= 1 for t in cfg.targets):
        raise ConfigError(f"targets must be accuracies in (0, 1], got {cfg.targets}")


# The rule, fixed before the runs that judge it (SCIENCE.md: "BN speedup > 1 to every target, final
# accuracy >= baseline"), as conditions on per-seed paired effects:
SPEEDUP_REASON = (
    "Fig. 1a: BN's curve is ahead of the baseline's from the start; the claim is any speedup "
    "(> 1x), and one within 10% either way is negligible"
)
FINAL_REASON = (
    "Sec. 4.1 / the third-party reproduction: BN ends higher (98.0% vs 97.7%, +0.3 pts); the claim "
    "is a positive difference, and one within +-0.1 pt (a third of that gap) is negligible"
)


def conditions(cfg: CompareConfig, arms: dict[str, list[TrialResult]], arm: str = "bn"):
    """One speedup condition per target and the final accuracy difference, arm vs baseline."""
    out = [
        cond.speedup(f"speedup to {t:.0%}", arms["baseline"], arms[arm], t, reason=SPEEDUP_REASON)
        for t in cfg.targets
    ]
    out.append(
        cond.accuracy_difference(
            f"final accuracy, {arm} - baseline",
            arms[arm],
            arms["baseline"],
            0.0,
            negligible=(-0.001, 0.001),
            reason=FINAL_REASON,
        )
    )
    return tuple(out)


def analyze(cfg: CompareConfig, results: list[TrialResult]) -> Analysis:
    arms = common.arms(results)
    curves = common.curve_table(arms, title="Test accuracy (eval mode) during training")
    targets = common.target_table(arms, cfg.targets, baseline="baseline")
    finals = common.final_table(arms, baseline="baseline")
    tables = [curves, targets, finals]
    if "bn" not in arms or "baseline" not in arms:
        verdict = Verdict(CLAIM, (), "needs both a BN arm and a baseline arm (--bn --baseline)")
        return Analysis(tables, verdict)
    sp = ", ".join(
        f"{t:.0%}: {common.arm_speedup(arms['baseline'], arms['bn'], t).text}" for t in cfg.targets
    )
    ev = (
        f"median-seed BN speedup to targets [{sp}]; final accuracy BN "
        f"{common.pct(common.final_mean(arms['bn']))} vs baseline "
        f"{common.pct(common.final_mean(arms['baseline']))}"
    )
    return Analysis(tables, Verdict(CLAIM, conditions(cfg, arms), ev))


def plot(cfg: CompareConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    return [
        common.plot_curves(
            common.arms(results),
            out / "learning_curves.png",
            title="Test accuracy, paired arms (Ioffe & Szegedy Fig. 1a)",
        )
    ]


EXPERIMENT = Experiment(
    name="compare",
    claim=CLAIM,
    source="Ioffe & Szegedy 2015, Sec. 4.1, Fig. 1a (MNIST, MLP 784-100-100-100-10, sigmoid)",
    config_type=CompareConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    validate=validate,
    paper="BN 0.980 vs 0.977 without (third-party reproduction, full MNIST; the paper's Fig. 1a "
    "is a plot)",
    shows="test accuracy per arm at evaluation points, steps to each target and speedup over the "
    "baseline, final accuracy with 95% interval",
)
