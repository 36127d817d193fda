"""`whitening`: full whitening (decorrelated BN) costs much more per step than BN's per-feature
standardization and buys no accuracy that matters.

Sources: Ioffe & Szegedy 2015, Sec. 2-3 (the seed notes 000 and 002): whitening each layer's
inputs (zero mean, identity covariance) would fix their distributions, but "the full whitening of
each layer's inputs is costly" (a covariance and its inverse square root per step, and their
backward pass), so BN makes a simplification: it standardizes each feature on its own. Huang,
Yang, Lang & Deng 2018 ("Decorrelated Batch Normalization", CVPR) make whitening work inside the
network: ZCA whitening of groups of features (group size 16), backpropagated through the
eigendecomposition; they report DBN slightly better than BN.

Setup: the paper's MLP shape (three sigmoid hidden layers, Gaussian init; widths 128 rather
than 100, so that groups of 16 features divide every layer) with BN and with DBN (norms.decorrelated_batch_norm, group_size 16: ZCA per group, the
gradient through jnp.linalg.eigh) before each sigmoid, plain SGD, batch 60, over a small LR grid
(`lrs`, 0.5 and 2.0). Arms of one seed share initial weights and data order.

Time per step is measured in this process by the engine, on this machine: `timing_repeats`
repeats, each a one-trial group per arm (BN, DBN, BN, DBN, ...: interleaved, so load from
elsewhere hits both alike), each `timing_steps` steps; a repeat's time per step is its group's
wall time minus its compile and evaluation time (sweep.TrialResult.extra: group_seconds,
compile_seconds, eval_seconds) over its steps. Repeat r trains timing_steps + r steps: the engine
groups trials by static signature, so a distinct step count is what puts each repeat in a group
of its own (the programs are the same; the persistent compile cache serves the repeats), and
``timed`` (sweep.Trial.timed) has every program of the group compiled before it trains and no
other group's compiled beside it (the engine otherwise compiles beside the host loop). Repeat
0 of each arm is a warm-up and is not counted. What remains per group besides the steps (the
initial state, batch-index work, the placement of the data) is a few milliseconds to tenths of a
second, the same for both arms: it pulls the ratio towards 1, against the claim. It is a property
of this machine and its load, not of the method: the verdict says so.

The rule (fixed before the quick preset was run):
1. accuracy: at the a-priori learning rate `judge_lr` (0.5, the project's lr for this MLP; no
   LR is selected after the fact, the others are reported), DBN's final accuracy minus BN's, per
   seed, is within +-band (1 pt): an equivalence (direction 0). Ioffe & Szegedy's argument needs
   BN to lose nothing that matters by not whitening; 1 pt is the stated band (100 of MNIST's
   10,000 test images, and the band `batch-size` uses for "flat");
2. cost: DBN's time per step over BN's, per repeat, is more than `cost_ratio` (1.5x), a log
   ratio with a t interval over the repeats. "Costly" is stated as half as much again per step;
3. reported, not counted: Huang et al.'s "DBN is slightly better": acc(DBN) - acc(BN) > 0 at
   judge_lr. Not part of the verdict because it is a different paper's claim than the one
   judged here (BN's simplification loses nothing that matters), and a sub-point improvement
   sits inside the equivalence band: counting both would let one effect decide two conditions.

(The module runs a little past 300 lines: its three tables and each condition's reason, written
out here and beside the condition, as in the other experiments.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import metrics
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

CLAIM = (
    "full whitening (decorrelated BN, ZCA in groups of 16) costs at least 1.5x BN's time per "
    "step and its accuracy is within 1 pt of BN's"
)
NORMS = (("bn", "batch"), ("dbn", "decorrelated"))


@dataclass(frozen=True)
class WhiteningConfig(Config):
    hidden: tuple[int, ...] = (128, 128, 128)  # multiples of group_size
    group_size: int = 16  # Huang et al.'s group size
    lrs: tuple[float, ...] = (0.5, 2.0)
    judge_lr: float = 0.5  # the a-priori LR the accuracy conditions are judged at
    band: float = 0.01  # |acc(DBN) - acc(BN)| < band: no accuracy that matters
    cost_ratio: float = 1.5  # DBN's time per step must exceed this multiple of BN's
    timing_repeats: int = 5  # counted repeats per arm (plus one warm-up)
    timing_steps: int = 1000  # steps per timing repeat


PRESETS = {
    "smoke": WhiteningConfig(
        preset="smoke",
        dataset="synthetic",
        seeds=2,
        steps=60,
        eval_every=20,
        hidden=(16, 16),  # width only costs compile time here: the smoke proves the machinery
        lrs=(0.5,),
        timing_repeats=2,
        timing_steps=40,
    ),
    "quick": WhiteningConfig(preset="quick", seeds=5, steps=2000, eval_every=200),
    "paper": WhiteningConfig(
        preset="paper", seeds=5, steps=10_000, eval_every=500, lrs=(0.1, 0.5, 2.0)
    ),
}


def _model(cfg: WhiteningConfig, norm: str):
    opts = (("group_size", cfg.group_size),) if norm == "decorrelated" else ()
    return mlp(cfg, norm, norm_options=opts)


def trials(cfg: WhiteningConfig):
    out = []
    for tag, norm in NORMS:
        model = _model(cfg, norm)
        for lr in cfg.lrs:
            out += [
                make_trial(cfg, model, seed=s, tag=f"{tag}@{lr:g}", lr=lr) for s in range(cfg.seeds)
            ]
    for r in range(cfg.timing_repeats + 1):  # interleaved by repeat; repeat 0 is the warm-up
        for tag, norm in NORMS:
            out.append(
                make_trial(
                    cfg,
                    _model(cfg, norm),
                    seed=0,
                    tag=f"time/{tag}#{r}",
                    lr=cfg.judge_lr,
                    steps=cfg.timing_steps + r,  # its own group (see the module docstring)
                    eval_every=cfg.timing_steps,
                    eval_per_decade=0,
                    timed=True,  # no compile beside its steps (sweep.Trial.timed)
                )
            )
    return out


def validate(cfg: WhiteningConfig) -> None:
    if cfg.group_size < 2 or any(h % cfg.group_size for h in cfg.hidden):
        raise ConfigError(
            f"group_size {cfg.group_size} must be >= 2 and divide every hidden width {cfg.hidden}"
        )
    if not cfg.lrs or any(lr <= 0 for lr in cfg.lrs):
        raise ConfigError(f"lrs must be positive, got {cfg.lrs}")
    if cfg.judge_lr not in cfg.lrs:
        raise ConfigError(f"judge_lr {cfg.judge_lr:g} must be one of lrs {cfg.lrs}")
    if not cfg.band > 0 or not cfg.cost_ratio > 0:
        raise ConfigError(f"need band > 0 and cost_ratio > 0, got {cfg.band}, {cfg.cost_ratio}")
    if cfg.timing_repeats < 2 or cfg.timing_steps < 1:
        raise ConfigError(
            f"need timing_repeats >= 2 (an interval) and timing_steps >= 1, got "
            f"{cfg.timing_repeats} and {cfg.timing_steps}"
        )


def step_seconds(r: TrialResult) -> float | None:
    """A group's training time per step: wall time minus compile and evaluation time, over its
    steps (None when the engine's timings are missing)."""
    e = r.extra or {}
    if "group_seconds" not in e:
        return None
    train = e["group_seconds"] - e.get("compile_seconds", 0.0) - e.get("eval_seconds", 0.0)
    return train / r.trial.steps if train > 0 else None


def timings(cfg: WhiteningConfig, by: dict[str, list[TrialResult]]) -> dict[str, list]:
    """Per arm, the counted repeats' seconds per step, in repeat order (warm-up left out)."""
    out: dict[str, list] = {}
    for tag, _ in NORMS:
        out[tag] = [
            step_seconds(by[k][0]) if (k := f"time/{tag}#{r}") in by else None
            for r in range(1, cfg.timing_repeats + 1)
        ]
    return out


# The rule, fixed before the quick preset was run (see the module docstring).
EQUIV_REASON = (
    "Ioffe & Szegedy 2015 Sec. 3: BN standardizes each feature instead of whitening, a "
    "simplification that must lose nothing that matters: |acc(DBN) - acc(BN)| < band (1 pt) at "
    "the a-priori lr, paired by seed"
)
COST_REASON = (
    "Ioffe & Szegedy 2015 Sec. 2-3: full whitening is costly (a covariance, its inverse square "
    "root and their backward pass each step): DBN's time per step > cost_ratio (1.5x) BN's, per "
    "interleaved repeat; measured on this machine under its load, not a property of the method"
)
BETTER_REASON = (
    "Huang et al. 2018 report DBN slightly better than BN; reported, not counted in the verdict "
    "(another paper's claim; a sub-point gain sits inside the equivalence band)"
)


def conditions(cfg: WhiteningConfig, by: dict[str, list[TrialResult]]) -> tuple:
    lr = cfg.judge_lr
    t = timings(cfg, by)
    return (
        cond.accuracy_difference(
            f"acc(DBN) - acc(BN) at lr {lr:g} (within +-{100 * cfg.band:g} pts)",
            by.get(f"dbn@{lr:g}", []),
            by.get(f"bn@{lr:g}", []),
            cfg.band,
            direction=0,
            reason=EQUIV_REASON,
        ),
        cond.log_ratio(
            "time per step, DBN / BN (this machine)",
            t["dbn"],
            t["bn"],
            cfg.cost_ratio,
            reason=COST_REASON,
            unit="time-per-step ratio",
        ),
    )


def reported(cfg: WhiteningConfig, by: dict[str, list[TrialResult]]) -> tuple:
    lr = cfg.judge_lr
    return (
        cond.accuracy_difference(
            f"acc(DBN) - acc(BN) at lr {lr:g} > 0 (Huang et al.)",
            by.get(f"dbn@{lr:g}", []),
            by.get(f"bn@{lr:g}", []),
            0.0,
            reason=BETTER_REASON,
        ),
    )


def _cond_rows(cs: tuple) -> list[dict[str, Any]]:
    return [
        {
            "condition": c.name,
            "effect (acc)": c.effect,
            "95% low (acc)": c.ci95[0],
            "95% high (acc)": c.ci95[1],
            "outcome": c.outcome,
        }
        for c in cs
    ]


def _accuracy_table(cfg: WhiteningConfig, by: dict[str, list[TrialResult]]) -> Table:
    rows = []
    for lr in cfg.lrs:
        row: dict[str, Any] = {"lr": lr, "judged": lr == cfg.judge_lr}
        for tag, _ in NORMS:
            rs = by.get(f"{tag}@{lr:g}", [])
            row[f"{tag} final acc"] = metrics.summarize_final_accuracy(rs).to_dict()
            # the whole group's (all its members') training time per step: a cross-check
            row[f"{tag} group s/step"] = step_seconds(rs[0]) if rs else None
        rows.append(row)
    cols = ["lr", "judged", "bn final acc", "dbn final acc", "bn group s/step", "dbn group s/step"]
    return Table(
        f"Final test accuracy (eval mode, over {cfg.seeds} seeds) by lr; group s/step: training "
        "time per step of the engine group these trials ran in (every seed and lr of the norm "
        "at once, vmapped), a cross-check of the timing repeats",
        cols,
        rows,
    )


def _timing_table(cfg: WhiteningConfig, by: dict[str, list[TrialResult]]) -> Table:
    t = timings(cfg, by)
    rows = []
    for i in range(cfg.timing_repeats):
        b, d = t["bn"][i], t["dbn"][i]
        rows.append(
            {
                "repeat": i + 1,
                "bn s/step": b,
                "dbn s/step": d,
                "dbn / bn": None if b is None or d is None else d / b,
            }
        )
    return Table(
        f"Time per step on this machine, one-trial groups of {cfg.timing_steps}+ steps, "
        "interleaved (warm-up repeat left out)",
        ["repeat", "bn s/step", "dbn s/step", "dbn / bn"],
        rows,
    )


def analyze(cfg: WhiteningConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    acc, timing = _accuracy_table(cfg, by), _timing_table(cfg, by)
    extra = Table(
        "Reported, not counted in the verdict (Huang et al. 2018: DBN slightly better)",
        ["condition", "effect (acc)", "95% low (acc)", "95% high (acc)", "outcome"],
        _cond_rows(reported(cfg, by)),
    )
    cs = conditions(cfg, by)
    med = {tag: np.median(common.column(timing.rows, f"{tag} s/step")) for tag, _ in NORMS}
    judged = next(r for r in acc.rows if r["judged"])
    ev = (
        f"lr {cfg.judge_lr:g}: BN {common.pct(judged['bn final acc']['mean'])}, DBN "
        f"{common.pct(judged['dbn final acc']['mean'])} (seed means); median time per step "
        f"BN {1e3 * med['bn']:.3g} ms, DBN {1e3 * med['dbn']:.3g} ms "
        f"({med['dbn'] / med['bn']:.2f}x) over {cfg.timing_repeats} interleaved repeats, "
        "measured on this machine under its load at the time"
    )
    return Analysis([acc, timing, extra], Verdict(CLAIM, cs, ev))


def plot(cfg: WhiteningConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    by = common.arms(results)
    sel = {tag.upper(): by[k] for tag, _ in NORMS if (k := f"{tag}@{cfg.judge_lr:g}") in by}
    return [
        common.plot_curves(
            sel, out / "whitening.png", title=f"Test accuracy at lr {cfg.judge_lr:g}"
        )
    ]


EXPERIMENT = Experiment(
    name="whitening",
    claim=CLAIM,
    source="Ioffe & Szegedy 2015, Sec. 2-3 (whitening is costly); Huang et al. 2018 (DBN)",
    config_type=WhiteningConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    validate=validate,
    paper="'the full whitening of each layer's inputs is costly'; DBN (ZCA, groups of 16) "
    "reported slightly better than BN",
    shows="final accuracy of the MLP with BN and with decorrelated BN at each lr, and each one's "
    "time per step on this machine over interleaved repeats",
)
