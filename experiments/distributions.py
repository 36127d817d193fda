"""`distributions`: without BN the input distribution of a sigmoid drifts; with BN it is stable.

Source: Ioffe & Szegedy 2015, Fig. 1b,c: the 15th, 50th and 85th percentiles of the input to one
sigmoid of the last hidden layer over training, without and with BN.

Setup: the `compare` network; the engine's "unit_percentiles_train" probe records, at every
evaluation point (step 0 included, where Fig. 1b moves most) and inside the compiled program, the
percentiles of every unit of the last hidden layer's pre-activation over a fixed probe batch of
training images: (E, units, 3) per run. Train mode (BN normalizes with the probe batch's own
statistics; the running statistics are not touched), because the claim is about the input a
sigmoid receives while training; in eval mode BN's step-0 point would show the running
statistics' initial values (mean 0, var 1: the raw, unnormalized pre-activation), which no
training step sees, and BN's "drift" would be the running averages warming up. For the baseline
the two modes are the same.

Drift of one unit: `bnexp.metrics` Drift, the range over training of its median plus the range of
its 85-15 spread, in sigmoid-input units. Drift of one run: the median over the layer's units
(`metrics.median_unit_drift`; one unit is one sample, and unit 0 is a different unit in every
seed, so neither one unit nor a seed-mean of percentile curves measures the layer). Drift is
measured per seed and paired across seeds: "much more" means the baseline's drift is at least
`ratio` x BN's, judged on each seed's log ratio with its 95% interval (see `conditions`).
The figure shows unit 0 of seed 0 of each arm (one unit's bands, as Fig. 1b,c).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import metrics, plots
from bnexp.sweep import TrialResult
from experiments import common
from experiments import conditions as cond
from experiments.base import Analysis, Config, Experiment, Table, Verdict, make_trial, mlp

CLAIM = "without BN the input distribution of a sigmoid drifts; with BN it is stable"
KEY = "unit_percentiles_train"  # history key: (E, units, 3) per run, train mode


@dataclass(frozen=True)
class DistributionsConfig(Config):
    ratio: float = 2.0  # baseline drift must be at least this multiple of BN's


PRESETS = {
    "smoke": DistributionsConfig(
        preset="smoke", dataset="synthetic", seeds=1, steps=60, eval_every=20
    ),
    "quick": DistributionsConfig(preset="quick", steps=3000, eval_every=100, seeds=5),
    "paper": DistributionsConfig(
        preset="paper", dataset="mnist", steps=50_000, eval_every=1000, seeds=5
    ),
}

ARMS = common.ARMS


def trials(cfg: DistributionsConfig):
    return [
        make_trial(cfg, mlp(cfg, norm), seed=s, tag=tag, probes=(KEY,))
        for tag, norm in ARMS
        for s in range(cfg.seeds)
    ]


def seed_drifts(rs: list[TrialResult], key: str = KEY) -> dict[int, float | None]:
    """Each seed's drift: the median over units of each unit's drift (metrics.median_unit_drift
    of its own (E, units, 3) history); None when fewer than 2 points are finite."""
    return {r.trial.seed: metrics.median_unit_drift(np.asarray(r.history[key], float)) for r in rs}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def drift_table(by: dict[str, list[TrialResult]], arms: tuple, key: str, title: str) -> Table:
    """Per arm: the seeds' median-over-units drift (a metrics.Summary over seeds, and its
    smallest and largest seed), the seed-means of its two parts, and unit 0 of seed 0 at the
    first and last point (the plotted unit, 15/50/85 as one label). One typed value per cell."""
    rows = []
    for tag, _ in arms:
        rs = by.get(tag, [])
        per_seed = []
        for r in rs:
            m_range, s_range = metrics.unit_drift_parts(np.asarray(r.history[key], float))
            per_seed.append((np.median(m_range + s_range), np.median(m_range), np.median(s_range)))
        d = np.asarray(per_seed, np.float64).reshape(-1, 3)
        ok = d[np.isfinite(d).all(axis=1)]
        mean = ok.mean(axis=0) if len(ok) else np.full(3, np.nan)
        p0 = np.asarray(rs[0].history[key], float)[:, 0] if rs else np.full((1, 3), np.nan)
        rows.append(
            {
                "arm": tag,
                "units": int(np.asarray(rs[0].history[key]).shape[1]) if rs else 0,
                "median range": None if not len(ok) else float(mean[1]),
                "spread range": None if not len(ok) else float(mean[2]),
                # over the seeds whose drift is finite (exactly those whose two parts are: ok),
                # the others counted as diverged
                "drift": metrics.summarize(d[:, 0].tolist()).to_dict(),
                "drift, lowest seed": None if not len(ok) else float(ok[:, 0].min()),
                "drift, highest seed": None if not len(ok) else float(ok[:, 0].max()),
                "unit 0, first": "/".join(f"{v:+.2f}" for v in p0[0]),
                "unit 0, last": "/".join(f"{v:+.2f}" for v in p0[-1]),
            }
        )
    return Table(
        title,
        [
            "arm",
            "units",
            "median range",
            "spread range",
            "drift",
            "drift, lowest seed",
            "drift, highest seed",
            "unit 0, first",
            "unit 0, last",
        ],
        rows,
    )


def drift_mean(row: dict[str, Any]) -> float | None:
    """The seed-mean drift of one drift_table row (None: no seed with a finite drift)."""
    return row["drift"]["mean"]


def analyze(cfg: DistributionsConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    table = drift_table(
        by,
        ARMS,
        KEY,
        "Sigmoid input percentile drift, last hidden layer (train mode): per seed the median over "
        "units of (median range + 15-85 spread range), mean over seeds; 15/50/85 of unit 0 of "
        "seed 0",
    )
    final = common.final_table(by, gap=False)
    db, dn = (drift_mean(table.rows[i]) for i in range(2))
    ev = (
        f"drift (median over units, mean over seeds; sigmoid-input units): baseline {_fmt(db)}, "
        f"BN {_fmt(dn)}; the verdict pairs the seeds' ratios (needs >= {cfg.ratio:g}x)"
    )
    return Analysis([table, final], Verdict(CLAIM, conditions(cfg, by), ev))


# The rule, fixed before the runs that judge it (SCIENCE.md: "baseline percentiles move in mean
# and spread much more than BN's"), on each seed's drift ratio, baseline / BN:
DRIFT_REASON = (
    "Fig. 1b,c: without BN the percentiles of a sigmoid input wander over training, with BN they "
    "stay put; 'much more' is a drift (per seed, the median over the last hidden layer's units) "
    "at least `ratio` x BN's, paired by seed on the log scale"
)


def conditions(cfg: DistributionsConfig, by: dict[str, list[TrialResult]]) -> tuple:
    base, bn = seed_drifts(by.get("baseline", [])), seed_drifts(by.get("bn", []))
    seeds = sorted(set(base) & set(bn))
    return (
        cond.log_ratio(
            "percentile drift, baseline / BN",
            [base[s] for s in seeds],
            [bn[s] for s in seeds],
            cfg.ratio,
            reason=DRIFT_REASON,
            unit="drift ratio",
        ),
    )


def plot(cfg: DistributionsConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    by = common.arms(results)
    steps = np.asarray(by["baseline"][0].history["step"])
    bands = {tag: np.asarray(by[tag][0].history[KEY], float)[:, 0] for tag, _ in ARMS}
    return [
        plots.percentile_bands(
            steps,
            bands,
            out / "distributions.png",
            title="Sigmoid input, unit 0 of seed 0: 15/50/85th percentiles (Fig. 1b,c)",
        ),
        common.plot_curves(by, out / "learning_curves.png", title="Test accuracy"),
    ]


EXPERIMENT = Experiment(
    name="distributions",
    claim=CLAIM,
    source="Ioffe & Szegedy 2015, Fig. 1b,c",
    config_type=DistributionsConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    paper="no number (Fig. 1b,c plot): without BN the percentiles drift over training, with BN "
    "they stay stable",
    shows="per arm the drift of the last hidden layer's sigmoid inputs (per seed the median over "
    "units, mean over seeds) and unit 0's first/last 15/50/85th percentiles",
)
