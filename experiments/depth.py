"""`depth`: BN is what lets deep networks (> 10 layers) train, against Yang et al. 2019.

Sources: seeds 001 and 004 ("BN is effective for deep networks (> 10 layers)"; "with BN, VGG's
16 layers train directly", where VGG without BN was trained 11 layers first and deepened); against
Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019, "A Mean Field Theory of Batch
Normalization" (ICLR): in a fully connected network with BN, the gradients *explode* with depth at
initialization, at a rate per layer set by the nonlinearity and the batch size (Thm 3.10 / Fig. 1:
for ReLU and large batches about pi / (pi - 1) = 1.47 per layer; for a linear network
(B - 2) / (B - 3)); so a deep BN network is untrainable at initialization unless the learning rate
is small, and the explosion is BN's own, not the nonlinearity's.

Setup: an MLP of `width` (100) units per hidden layer, `depths` (number of hidden layers) 2, 5, 10,
20, 40 (paper: also 60, 80), in two `settings`: "sigmoid" (Gaussian init, std 0.1, Ioffe &
Szegedy Sec. 4.1: the setting where the unnormalized deep network saturates) and "relu" (He
init: the strong unnormalized baseline, He et al. 2015, with which deep ReLU networks already
train without staged training). Each (setting, depth) has two arms, "baseline" (norm "none") and
"bn" (BN before each nonlinearity), each over the learning-rate grid `lrs` (0.01, 0.1, 1), plain
SGD, batch 60; every (setting, depth, arm) is one compiled program whose members are the learning
rates and seeds. The config fields `hidden`, `activation`, `init` and `init_std` are not read:
`depths`, `width` and `settings` define the models.

Measured: (1) each arm's final eval-mode test accuracy at its own best learning rate; (2) the
gradient ratio at initialization, ||dL/dW_first|| / ||dL/dW_last|| (first and last *hidden*
layer, both normalized in the BN arm), from the "grad_norms" probe at step 0: the gradient of the
mean cross-entropy on one fixed training batch of the training batch size (probe_batch_size =
batch_size: Yang et al.'s explosion rate depends on the batch size) in train mode, before any
update (the same for every learning rate of a seed; the LRs differ only after step 0).

Learning-rate selection (stated before the runs; no per-seed selection): for each (setting, depth,
arm), the LR with the highest *seed-mean* final accuracy (a diverged member counts as chance) is
chosen, then the two arms' selected LRs are compared seed by seed (paired). Per-seed best would take
each seed's maximum of 3 noisy values (an optimistic bias of about one seed standard deviation per
arm, different in every seed); selecting once on the mean keeps one LR for all seeds. Both arms are
selected by the same rule on the same grid, so the remaining max-of-3 optimism applies to both and
is a fraction of the seed spread (tenths of a point), small against the 5-point margin.

Rule (fixed before the runs that judge it; see `conditions`):

(a) for every setting and every depth >= `judged_from` (10): BN's best-LR final accuracy minus
    the baseline's, paired by seed (a diverged member at chance), exceeds `margin` (5 points);
(b) for every setting: BN's gradient ratio at initialization grows with depth: per seed, the
    least-squares slope of ln(ratio) against depth over all `depths`; its exp (the ratio's growth
    per layer) has a 95% t interval above 1x, with a negligible band of +-`slope_band` (1%) per
    layer. This tests Yang et al. and may go against the seeds' story; the baseline's slope is
    reported beside it, not judged.

(Over STYLE.md's ~300 lines, ~430: an experiment is one file in the house form, and this one has
two settings, three tables, two figures and a rule whose reasons and LR-selection argument are
written out here.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import metrics, plots
from bnexp.models import ModelSpec
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
    input_dim,
    make_trial,
)

CLAIM = (
    "BN lets deep networks (> 10 layers) train, well beyond what they reach without it; its "
    "gradients at initialization grow with depth (Yang et al. 2019)"
)
# setting -> (activation, init, init_std): the saturating sigmoid of Sec. 4.1 and He-init ReLU
SETTINGS = {"sigmoid": ("sigmoid", "gaussian", 0.1), "relu": ("relu", "he", 0.1)}
ARMS = common.ARMS


@dataclass(frozen=True)
class DepthConfig(Config):
    depths: tuple[int, ...] = (2, 5, 10, 20, 40)  # hidden layers
    width: int = 100
    settings: tuple[str, ...] = ("sigmoid", "relu")
    lrs: tuple[float, ...] = (0.01, 0.1, 1.0)
    judged_from: int = 10  # depths >= this are judged on accuracy (the claim's "> 10 layers")
    margin: float = 0.05  # BN's best-LR accuracy must beat the baseline's by this (5 pts)
    slope_band: float = 0.01  # |ratio growth per layer - 1| below this is negligible (1%)


PRESETS = {
    "smoke": DepthConfig(
        preset="smoke",
        dataset="synthetic",
        seeds=2,
        steps=40,
        eval_every=20,
        eval_per_decade=0,
        depths=(2, 4),
        width=16,
        settings=("relu",),  # 4 programs: compiling dominates a smoke run (one per group)
        lrs=(0.1, 1.0),
        judged_from=4,
    ),
    # 5 depths x 2 settings x 2 arms = 20 programs of 15 members (3 LRs x 5 seeds): a training
    # step of all of them is ~25 GFLOP, so the quick budget allows ~100 steps; evaluated at step
    # 0 and at the end only. mnist-10k (8,000 training, 2,000 test images, derived from the
    # shipped MNIST): the final evaluation of 10,000 test images in two modes would cost as much
    # as ~85 more training steps at these depths.
    "quick": DepthConfig(
        preset="quick", dataset="mnist-10k", seeds=5, steps=100, eval_every=100, eval_per_decade=0
    ),
    "paper": DepthConfig(
        preset="paper",
        dataset="mnist",
        seeds=5,
        steps=5000,
        eval_every=500,
        depths=(2, 5, 10, 20, 40, 60, 80),
    ),
}


def model(cfg: DepthConfig, setting: str, norm: str, depth: int) -> ModelSpec:
    act, init, std = SETTINGS[setting]
    widths = (input_dim(cfg.dataset), *(cfg.width,) * depth, 10)
    return ModelSpec(widths=widths, activation=act, norm=norm, init=init, init_std=std)


def tag(setting: str, arm: str, depth: int, lr: float) -> str:
    return f"{setting}/{arm}/d{depth}@{lr:g}"


def trials(cfg: DepthConfig):
    out = []
    for setting in cfg.settings:
        for depth in cfg.depths:
            for arm, norm in ARMS:
                spec = model(cfg, setting, norm, depth)
                out += [
                    make_trial(
                        cfg,
                        spec,
                        seed=s,
                        tag=tag(setting, arm, depth, lr),
                        lr=lr,
                        probes=("grad_norms",),
                        probe_batch_size=cfg.batch_size,
                    )
                    for lr in cfg.lrs
                    for s in range(cfg.seeds)
                ]
    return out


def validate(cfg: DepthConfig) -> None:
    if len(cfg.depths) < 2 or list(cfg.depths) != sorted(set(cfg.depths)) or cfg.depths[0] < 2:
        raise ConfigError(f"depths needs at least two increasing depths >= 2, got {cfg.depths}")
    if cfg.width <= 0:
        raise ConfigError(f"width must be positive, got {cfg.width}")
    bad = [s for s in cfg.settings if s not in SETTINGS]
    if bad or not cfg.settings:
        raise ConfigError(f"unknown setting {bad[:1] or cfg.settings}; choose from sigmoid, relu")
    if not cfg.lrs or any(lr <= 0 for lr in cfg.lrs):
        raise ConfigError(f"lrs must be positive learning rates, got {cfg.lrs}")
    if cfg.judged_from > cfg.depths[-1]:
        raise ConfigError(f"judged_from {cfg.judged_from} is deeper than every depth {cfg.depths}")
    if not 0 <= cfg.margin < 1 or not cfg.slope_band > 0:
        raise ConfigError(
            f"need 0 <= margin < 1 and slope_band > 0, got {cfg.margin}, {cfg.slope_band}"
        )


# ---- the measurements -------------------------------------------------------------------------


def best_lr(cfg: DepthConfig, by: dict, setting: str, arm: str, depth: int) -> float | None:
    """The LR of the grid with the highest seed-mean final accuracy (diverged: chance); the first
    (smallest) of a tie. Selected once for all seeds (module docstring)."""
    means = {}
    for lr in cfg.lrs:
        rs = by.get(tag(setting, arm, depth, lr), [])
        if rs:
            means[lr] = float(np.mean([cond.final(r, cond.CHANCE) for r in rs]))
    return max(means, key=lambda lr: means[lr]) if means else None


def init_ratio(r: TrialResult) -> float | None:
    """||dL/dW_first hidden|| / ||dL/dW_last hidden|| at step 0 (None: not measurable)."""
    g = np.asarray(r.history.get("grad_norms", np.full((1, 2), np.nan)), np.float64)[0]
    first, last = g[0], g[r.trial.model.num_hidden - 1]
    ok = np.isfinite(first) and np.isfinite(last) and first > 0 and last > 0
    return float(first / last) if ok else None


def seed_ratios(cfg: DepthConfig, by: dict, setting: str, arm: str) -> dict[int, list]:
    """Per seed, the initial gradient ratio at every depth (from the first LR: step 0 comes before
    any update, so every LR of a seed has the same initial model)."""
    out: dict[int, list] = {}
    for i, depth in enumerate(cfg.depths):
        for r in by.get(tag(setting, arm, depth, cfg.lrs[0]), []):
            out.setdefault(r.trial.seed, [None] * len(cfg.depths))[i] = init_ratio(r)
    return out


def log_slope(depths: tuple[int, ...], ratios: list[float | None]) -> float | None:
    """Least-squares slope of ln(ratio) against depth over the measurable depths (>= 2)."""
    pts = [(d, math.log(x)) for d, x in zip(depths, ratios, strict=True) if x is not None]
    if len(pts) < 2:
        return None
    d, y = np.asarray(pts, np.float64).T
    return float(np.polyfit(d, y, 1)[0])


def slopes(cfg: DepthConfig, by: dict, setting: str, arm: str) -> list[float | None]:
    return [log_slope(cfg.depths, v) for _, v in sorted(seed_ratios(cfg, by, setting, arm).items())]


# ---- the rule (fixed before the runs that judge it) ---------------------------------------------

MARGIN_REASON = (
    "seeds 001/004: BN is effective for deep networks (> 10 layers) and lets VGG's 16 layers train "
    "directly: at every depth >= 10, BN at its best LR must end at least 5 points above the "
    "baseline at its own best LR (paired seeds, a diverged member at chance); 5 points is far "
    "beyond the seed spread and the LR-selection optimism (tenths of a point), and an advantage "
    "smaller than that would not make the difference between a network that trains and one that "
    "does not. Against the He-init ReLU baseline this asks whether BN is what makes depth "
    "trainable when a good init already does (He et al. 2015)"
)
SLOPE_REASON = (
    "Yang et al. 2019 (Thm 3.10, Fig. 1): with BN, gradients explode with depth at initialization "
    "(ReLU, large batch: pi/(pi-1) = 1.47x per layer): per seed, exp of the least-squares slope of "
    "ln(||dL/dW_first|| / ||dL/dW_last||) against depth, at step 0 on one training batch in train "
    "mode, must exceed 1x per layer; within +-1% per layer (under 1.5x over 40 layers, against "
    "Yang et al.'s orders of magnitude) it is negligible"
)


def conditions(cfg: DepthConfig, by: dict[str, list[TrialResult]]) -> tuple:
    out = []
    for setting in cfg.settings:
        for depth in (d for d in cfg.depths if d >= cfg.judged_from):
            lb, ln = (best_lr(cfg, by, setting, a, depth) for a in ("baseline", "bn"))
            out.append(
                cond.accuracy_difference(
                    f"{setting} depth {depth}: best-lr accuracy, BN - baseline",
                    by.get(tag(setting, "bn", depth, ln), []) if ln is not None else [],
                    by.get(tag(setting, "baseline", depth, lb), []) if lb is not None else [],
                    cfg.margin,
                    reason=MARGIN_REASON,
                )
            )
    band = (math.log(1 - cfg.slope_band), math.log(1 + cfg.slope_band))
    for setting in cfg.settings:
        out.append(
            cond.values_condition(
                f"{setting}: BN's initial gradient ratio, growth per layer",
                slopes(cfg, by, setting, "bn"),
                0.0,
                reason=SLOPE_REASON,
                unit="growth per layer",
                log=True,
                negligible=band,
            )
        )
    return tuple(out)


# ---- tables, verdict, plots -------------------------------------------------------------------


def _lr_rows(cfg: DepthConfig, by: dict) -> list[dict[str, Any]]:
    rows = []
    for setting in cfg.settings:
        for depth in cfg.depths:
            for lr in cfg.lrs:
                row: dict[str, Any] = {"setting": setting, "depth": depth, "lr": lr}
                for arm, _ in ARMS:
                    rs = by.get(tag(setting, arm, depth, lr), [])
                    row[f"{arm} final acc"] = metrics.summarize_final_accuracy(rs).to_dict()
                rows.append(row)
    return rows


def _best_row(cfg: DepthConfig, by: dict, setting: str, depth: int) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": setting, "depth": depth, "judged": depth >= cfg.judged_from}
    picked = {}
    for arm, _ in ARMS:
        lr = best_lr(cfg, by, setting, arm, depth)
        picked[arm] = by.get(tag(setting, arm, depth, lr), []) if lr is not None else []
        row[f"{arm} best lr"] = lr
        row[f"{arm} final acc"] = metrics.summarize_final_accuracy(picked[arm]).to_dict()
    pairs = cond.paired(picked["bn"], picked["baseline"])
    diff = [cond.final(b, cond.CHANCE) - cond.final(a, cond.CHANCE) for b, a in pairs]
    row["bn - baseline acc"] = metrics.summarize(diff).to_dict()
    for arm, _ in ARMS:
        rs = by.get(tag(setting, arm, depth, cfg.lrs[0]), [])
        logs = [None if (x := init_ratio(r)) is None else math.log10(x) for r in rs]
        row[f"{arm} log10 grad ratio"] = metrics.summarize(logs).to_dict()
    return row


BEST_COLUMNS = [
    "setting",
    "depth",
    "baseline best lr",
    "baseline final acc",
    "bn best lr",
    "bn final acc",
    "bn - baseline acc",
    "baseline log10 grad ratio",
    "bn log10 grad ratio",
]


def analyze(cfg: DepthConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    best = [_best_row(cfg, by, s, d) for s in cfg.settings for d in cfg.depths]
    growth = [
        {
            "setting": s,
            "arm": arm,
            "log10 ratio per layer": metrics.summarize(
                [None if k is None else k / math.log(10) for k in slopes(cfg, by, s, arm)]
            ).to_dict(),
        }
        for s in cfg.settings
        for arm, _ in ARMS
    ]
    tables = [
        Table(
            "Each arm at its own best learning rate (selected on the seed mean), and the gradient "
            "ratio ||dL/dW_first|| / ||dL/dW_last|| (hidden layers) at initialization, log10",
            BEST_COLUMNS,
            best,
        ),
        Table(
            "Growth of the initial gradient ratio with depth (least-squares slope of log10 ratio "
            "vs depth, per seed; BN judged, baseline reported)",
            ["setting", "arm", "log10 ratio per layer"],
            growth,
        ),
        Table(
            "Final test accuracy at every learning rate",
            ["setting", "depth", "lr", "baseline final acc", "bn final acc"],
            _lr_rows(cfg, by),
        ),
    ]
    return Analysis(tables, Verdict(CLAIM, conditions(cfg, by), _evidence(cfg, best, growth)))


def _evidence(cfg: DepthConfig, best: list[dict], growth: list[dict]) -> str:
    parts = []
    for s in cfg.settings:
        accs = ", ".join(
            f"d{r['depth']} {common.pct(r['bn final acc']['mean'])} vs "
            f"{common.pct(r['baseline final acc']['mean'])}"
            for r in best
            if r["setting"] == s and r["judged"]
        )
        g = next(r for r in growth if r["setting"] == s and r["arm"] == "bn")
        per = g["log10 ratio per layer"]["mean"]
        grow = "n/a" if per is None else f"{10**per:.3g}x per layer"
        parts.append(
            f"{s}: best-lr accuracy BN vs baseline {accs}; BN's initial gradient ratio grows {grow}"
        )
    return f"{cfg.width}-wide MLP, {cfg.steps} steps; " + "; ".join(parts)


def _per_seed(cfg: DepthConfig, value) -> np.ndarray:
    """(seeds, depths) array from value(depth) -> per-seed values in seed order (NaN: none)."""
    cols = []
    for depth in cfg.depths:
        v = value(depth)
        cols.append([np.nan if x is None else x for x in v] or [np.nan] * cfg.seeds)
    n = max(len(c) for c in cols)
    return np.array([c + [np.nan] * (n - len(c)) for c in cols], np.float64).T


def plot(cfg: DepthConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    by = common.arms(results)
    acc, ratio = {}, {}
    for s in cfg.settings:
        acc[s], ratio[s] = {}, {}
        for arm, _ in ARMS:

            def best_acc(d, s=s, arm=arm):
                lr = best_lr(cfg, by, s, arm, d)
                rs = by.get(tag(s, arm, d, lr), []) if lr is not None else []
                return [cond.final(r, cond.CHANCE) for r in rs]

            def ratios(d, s=s, arm=arm):
                return [init_ratio(r) for r in by.get(tag(s, arm, d, cfg.lrs[0]), [])]

            acc[s][arm] = _per_seed(cfg, best_acc)
            ratio[s][arm] = _per_seed(cfg, ratios)
    x = np.asarray(cfg.depths, np.float64)
    return [
        plots.versus_depth(
            x,
            acc,
            out / "depth_accuracy.png",
            percent=True,
            ylabel="final test accuracy at the arm's best lr",
            title=f"Best-LR accuracy vs depth ({cfg.steps} steps; diverged: chance)",
        ),
        plots.versus_depth(
            x,
            ratio,
            out / "depth_grad_ratio.png",
            log_y=True,
            reference=1.0,
            ylabel="||dL/dW_first|| / ||dL/dW_last|| at init",
            title="Gradient ratio at initialization vs depth (Yang et al. 2019)",
        ),
    ]


EXPERIMENT = Experiment(
    name="depth",
    claim=CLAIM,
    source="seeds 001/004; against Yang et al. 2019 (mean field theory of BN)",
    config_type=DepthConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    validate=validate,
    paper="no number for the claim (VGG-16 trains directly with BN); Yang et al.: gradients "
    "explode at init by ~pi/(pi-1) = 1.47x per layer (ReLU, large batch)",
    shows="per setting and depth: each arm's best-LR final accuracy and their paired difference, "
    "the initial gradient ratio first/last hidden layer and its growth per layer; every LR",
)
