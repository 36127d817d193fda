"""`regularization`: BN regularizes (a smaller train-test gap); with BN, dropout does not help,
and dropout before BN shifts BN's test-time variance.

Sources: Ioffe & Szegedy 2015, Sec. 4.2.1 ("Remove Dropout": removing dropout from BN-Inception
"speeds up training, without increasing overfitting"; BN "regularizes the model and reduces the
need for Dropout", Sec. 3.4); seed 000 (MNIST: with BN the validation loss stays stable and the
train-val gap small); seeds 001 and 004 (with BN dropout is often unnecessary; used together they
can hurt); Li, Chen, Hu & Yang 2019, "Understanding the disharmony between dropout and batch
normalization by variance shift" (dropout before BN: at test time the variance of BN's input no
longer matches its running variance).

Setup: the paper's MLP (3 x 100 sigmoid, BN before each sigmoid) in four arms, paired by seed
(same initial matrices, same batches in the same order): none, dropout, BN, BN+dropout, trained
with plain SGD for many epochs on a small stratified subset of the training images (`train_size`)
so that the unnormalized model overfits. Dropout (ModelSpec.dropout, rate `dropout`) follows each
hidden activation, so the dropout of hidden layer l feeds the BN of layer l + 1: Li et al.'s
setting; the last hidden layer's dropout feeds the output layer, which has no BN. At every
evaluation point both the test set and a fixed sample of `train_sample` training images (the
probe batch; all of them when train_size is no larger) are evaluated in eval mode (running
statistics, dropout off), loss and accuracy ("train_sample_eval" probe). The BN arms also measure
the variance shift ("bn_var_ratio": per layer, the mean over units of the BN input's eval-mode
variance over the training sample / BN's running variance).

Dropout rate 0.2: the rate seed 001 recommends when dropout is used with BN ("lower the dropout
probability, e.g. 0.2"), the most favourable a-priori setting for the combination, so that the
"not better" condition is not won by a rate known to clash (0.5 would be).

The rule (fixed before the runs that judge it; per seed, arms paired; a diverged member drops out
of the gap and variance conditions and counts as chance in the accuracy one):
(a) BN's final train-test LOSS gap (test loss minus training-sample loss, eval mode) is smaller
    than the unnormalized baseline's: BN - baseline < 0. Primary is the loss gap, not the
    accuracy gap: seed 000's claim and figure are about loss curves (validation loss stable,
    train-val gap small), and once a model fits its training sample (100% there) the accuracy
    gap is only its test error, a measure of accuracy rather than of overfitting. The accuracy
    gap is reported beside it.
(b) BN+dropout is not better than BN: final test accuracy BN+dropout - BN < margin (0.5 pts),
    one-sided (direction -1): reproduced when the whole 95% interval lies below the margin (the
    combination gains less than half a point, or loses), not reproduced when the whole interval
    lies above it (dropout helps BN by more than half a point), inconclusive otherwise. Half a
    point is a gain too small to add dropout for (Ioffe & Szegedy removed it without giving a
    number; 10 images of MNIST-10k's 2,000 test images).
(c) Variance shift (Li et al. 2019): in training, dropout scales kept units by 1/(1-p), which
    inflates the variance of the next layer's BN input; at test time dropout is off, so that
    variance is smaller than BN's running variance (an average of training batches' variances):
    the ratio Var_test / Var_running is < 1. Judged as the log ratio of BN+dropout's ratio to
    BN's (the same measure without dropout: it absorbs the running average's lag), mean over the
    layers dropout feeds (hidden layers 2..L), per seed: < 0.
Diagnostics, reported beside the verdict, not counted: paired differences of final test accuracy
and loss gap for dropout - baseline (is dropout a regularizer at all here?), BN - baseline and
BN+dropout - BN, and each arm's test-loss rise from its minimum (does the baseline visibly
overfit?).

(Over 300 lines: one claim with three conditions and their reasons, four tables and the plot;
split, the rule would sit apart from the measures it reads.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import data, metrics, plots
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
    "BN regularizes (a smaller train-test loss gap than without it); with BN, dropout does not "
    "help, and dropout before BN shifts BN's test-time variance"
)


@dataclass(frozen=True)
class RegularizationConfig(Config):
    dropout: float = 0.2  # rate after each hidden activation (seed 001's rate for use with BN)
    train_size: int | None = 1000  # training images: a fixed stratified subset (None: all)
    train_sample: int = 1000  # training images evaluated at every point (the probe batch)
    margin: float = 0.005  # (b): BN+dropout - BN final test accuracy below this is "not better"

    def accuracy_targets(self) -> tuple[float, ...]:
        return (0.8, 0.9)


PRESETS = {
    "smoke": RegularizationConfig(
        preset="smoke",
        dataset="synthetic",
        seeds=2,
        steps=80,
        eval_every=20,
        eval_per_decade=0,
        hidden=(16, 16),
        train_size=256,
        train_sample=256,
    ),
    "quick": RegularizationConfig(
        preset="quick",
        dataset="mnist-10k",
        seeds=5,
        steps=3000,
        eval_every=150,
        eval_per_decade=0,
        train_size=1000,
        train_sample=1000,
    ),
    "paper": RegularizationConfig(
        preset="paper",
        dataset="mnist",
        seeds=5,
        steps=30_000,
        eval_every=1000,
        train_size=10_000,
        train_sample=2000,
    ),
}

# (tag, norm, dropout?) in table order; every arm of one seed shares seed and data order
ARMS = (("baseline", "none", False), ("dropout", "none", True), ("bn", "batch", False))
ARMS += (("bn+dropout", "batch", True),)


def _data_options(cfg: RegularizationConfig) -> tuple[tuple[str, Any], ...]:
    return () if cfg.train_size is None else (("n_train", cfg.train_size),)


def trials(cfg: RegularizationConfig):
    out = []
    for tag, norm, drop in ARMS:
        model = mlp(cfg, norm, dropout=cfg.dropout if drop else 0.0)
        probes = (
            ("train_sample_eval", "bn_var_ratio") if norm == "batch" else ("train_sample_eval",)
        )
        out += [
            make_trial(
                cfg,
                model,
                seed=s,
                tag=tag,
                data_options=_data_options(cfg),
                probes=probes,
                probe_batch_size=cfg.train_sample,
            )
            for s in range(cfg.seeds)
        ]
    return out


def validate(cfg: RegularizationConfig) -> None:
    if not 0 < cfg.dropout < 1:
        raise ConfigError(f"dropout must be in (0, 1), got {cfg.dropout}")
    if len(cfg.hidden) < 2:
        raise ConfigError(
            f"hidden needs at least 2 layers (dropout feeds a BN layer from the second on), "
            f"got {cfg.hidden}"
        )
    if cfg.margin < 0:
        raise ConfigError(f"margin must be >= 0, got {cfg.margin}")
    whole = int(data.load(cfg.dataset).x_train.shape[0])
    if cfg.train_size is not None and not 0 < cfg.train_size <= whole:
        raise ConfigError(
            f"train_size must be in [1, {whole}] (the training images of {cfg.dataset}), "
            f"got {cfg.train_size}"
        )
    n = whole if cfg.train_size is None else cfg.train_size
    if cfg.batch_size > n:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({n})")
    if cfg.train_sample < 2:
        raise ConfigError(f"train_sample must be at least 2, got {cfg.train_sample}")


# ---- per-trial measures ---------------------------------------------------------------------


def _curve(r: TrialResult, key: str) -> np.ndarray:
    return np.asarray(r.history[key], np.float64)


def loss_gap(r: TrialResult) -> np.ndarray:
    """Test loss minus training-sample loss (both eval mode) at every evaluation point."""
    return _curve(r, "test_loss") - _curve(r, "train_sample_loss")


def acc_gap(r: TrialResult) -> np.ndarray:
    """Training-sample accuracy minus test accuracy (both eval mode) at every point."""
    return _curve(r, "train_sample_acc") - _curve(r, "test_acc")


def _end(r: TrialResult, values: np.ndarray) -> float | None:
    """The last point's value; None for a diverged member or a non-finite value."""
    v = float(values[-1])
    return None if r.diverged_at is not None or not np.isfinite(v) else v


def loss_rise(r: TrialResult) -> float | None:
    """Final test loss minus its minimum over the run (0: still at its lowest). On a test set
    larger than engine.EVAL_SUBSET (full MNIST, the paper preset) the points before the last
    evaluate a fixed 2,000-image subset and the last the whole set, so the minimum and the end
    come from different samples; mnist-10k's 2,000 test images (quick) are whole at every point."""
    t = _curve(r, "test_loss")
    return _end(r, t - np.nanmin(t)) if np.isfinite(t).any() else None


def var_ratio_fed(r: TrialResult) -> float | None:
    """Final mean variance ratio over the hidden layers dropout feeds (2..L), None without it."""
    if "bn_var_ratio" not in r.history:
        return None
    return _end(r, np.asarray(r.history["bn_var_ratio"], np.float64)[:, 1:].mean(axis=1))


def _summary(rs: list[TrialResult], fn) -> dict[str, Any]:
    return metrics.summarize([fn(r) for r in rs], [r.diverged_at for r in rs]).to_dict()


FINAL_COLUMNS = [
    "arm",
    "final test acc",
    "train-sample acc",
    "test loss",
    "train-sample loss",
    "loss gap",
    "acc gap",
    "test loss rise",
]


def final_table(cfg: RegularizationConfig, by: dict[str, list[TrialResult]]) -> Table:
    rows = []
    for tag, _, _ in ARMS:
        rs = by.get(tag, [])
        rows.append(
            {
                "arm": tag,
                "final test acc": metrics.summarize_final_accuracy(rs).to_dict(),
                "train-sample acc": _summary(rs, lambda r: _end(r, _curve(r, "train_sample_acc"))),
                "test loss": _summary(rs, lambda r: _end(r, _curve(r, "test_loss"))),
                "train-sample loss": _summary(
                    rs, lambda r: _end(r, _curve(r, "train_sample_loss"))
                ),
                "loss gap": _summary(rs, lambda r: _end(r, loss_gap(r))),
                "acc gap": _summary(rs, lambda r: _end(r, acc_gap(r))),
                "test loss rise": _summary(rs, loss_rise),
            }
        )
    return Table(
        f"End of training ({cfg.steps} steps, eval mode, over {cfg.seeds} seeds): loss gap = test "
        f"minus training-sample loss, acc gap = training-sample minus test accuracy "
        f"({cfg.train_sample} training images); test loss rise = final minus minimum test loss",
        FINAL_COLUMNS,
        rows,
    )


def gap_curve_table(by: dict[str, list[TrialResult]], max_rows: int = 8) -> Table:
    """The loss gap per arm over training, at (a subsample of) the evaluation points."""
    first = next(iter(by.values()))[0]
    steps = np.asarray(first.history["step"])
    idx = np.unique(np.linspace(0, len(steps) - 1, min(max_rows, len(steps))).round().astype(int))
    rows = []
    for i in idx:
        row: dict[str, Any] = {"step": int(steps[i])}
        for tag, rs in by.items():
            row[f"{tag} loss gap"] = metrics.summarize(
                [float(v) if np.isfinite(v := loss_gap(r)[i]) else None for r in rs]
            ).to_dict()
        rows.append(row)
    return Table(
        "Train-test loss gap over training (test minus training-sample loss, eval mode)",
        ["step", *(f"{t} loss gap" for t in by)],
        rows,
    )


def variance_table(cfg: RegularizationConfig, by: dict[str, list[TrialResult]]) -> Table:
    """Per hidden layer, the final BN variance ratio (eval-mode variance of the BN input over
    the training sample / running variance, mean over units) of each BN arm."""
    rows = []
    for layer in range(len(cfg.hidden)):
        row: dict[str, Any] = {"layer": layer + 1, "fed by dropout": layer >= 1}
        for tag in ("bn", "bn+dropout"):
            vals = [
                _end(r, np.asarray(r.history["bn_var_ratio"], np.float64)[:, layer])
                for r in by.get(tag, [])
                if "bn_var_ratio" in r.history
            ]
            row[f"{tag} var ratio"] = metrics.summarize(vals).to_dict()
        rows.append(row)
    return Table(
        f"Variance shift (Li et al. 2019) at the end: BN input variance in eval mode over "
        f"{cfg.train_sample} training images / BN running variance, mean over units (< 1: the "
        "test-time variance is smaller than the running one)",
        ["layer", "fed by dropout", "bn var ratio", "bn+dropout var ratio"],
        rows,
    )


PAIRS = (("dropout", "baseline"), ("bn", "baseline"), ("bn+dropout", "bn"))


def differences_table(by: dict[str, list[TrialResult]]) -> Table:
    """Paired per-seed differences of final test accuracy (a diverged member at chance) and of
    the final loss gap, for each pair of arms: diagnostics beside the verdict (is dropout a
    regularizer here at all? what does BN do to test accuracy?), not counted in it."""
    rows = []
    for a, b in PAIRS:
        ra, rb = by.get(a, []), by.get(b, [])
        acc = _paired(ra, rb, lambda r: cond.final(r, cond.CHANCE), lambda x, y: x - y)
        gap = _paired(ra, rb, lambda r: _end(r, loss_gap(r)), lambda x, y: x - y)
        rows.append(
            {
                "pair": f"{a} - {b}",
                "test acc difference": metrics.summarize(acc).to_dict(),
                "loss gap difference": metrics.summarize(gap).to_dict(),
            }
        )
    return Table(
        "Paired differences at the end, per seed (mean and 95% interval over seeds)",
        ["pair", "test acc difference", "loss gap difference"],
        rows,
    )


def _paired(a: list[TrialResult], b: list[TrialResult], value, combine) -> list[float]:
    """combine(value(a_s), value(b_s)) per seed present in both with both values finite."""
    out = []
    for x, y in cond.paired(a, b):
        va, vb = value(x), value(y)
        if va is not None and vb is not None:
            out.append(float(combine(va, vb)))
    return out


def analyze(cfg: RegularizationConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    tables = [final_table(cfg, by), gap_curve_table(by), variance_table(cfg, by)]
    tables.append(differences_table(by))
    rows = {r["arm"]: r for r in tables[0].rows}

    def mean(tag: str, col: str) -> str:
        m = rows[tag][col]["mean"]
        return "n/a" if m is None else (common.pct(m) if "acc" in col else f"{m:.3f}")

    ev = (
        f"{cfg.train_size or 'all'} training images, {cfg.steps} steps, dropout {cfg.dropout:g}; "
        "final loss gap (nats): "
        + ", ".join(f"{t} {mean(t, 'loss gap')}" for t, _, _ in ARMS)
        + "; final test accuracy: "
        + ", ".join(f"{t} {mean(t, 'final test acc')}" for t, _, _ in ARMS)
    )
    return Analysis(tables, Verdict(CLAIM, conditions(cfg, by), ev))


# The rule, fixed before the runs that judge it (see the module docstring).
GAP_REASON = (
    "Ioffe & Szegedy 2015 Sec. 3.4/4.2.1 and seed 000 (MNIST: with BN the validation loss stays "
    "stable and the train-val gap small): BN's final train-test loss gap (test minus "
    "training-sample loss, eval mode) is smaller than the unnormalized baseline's, per seed"
)
NOT_BETTER_REASON = (
    "Ioffe & Szegedy 2015 Sec. 4.2.1 (dropout removed from BN-Inception without more "
    "overfitting) and seeds 001/004 (with BN dropout is unnecessary; together they can hurt): "
    "BN+dropout's final test accuracy minus BN's stays below a margin of 0.5 pts (one-sided: "
    "not better; a loss counts for the claim), per seed, a diverged member at chance"
)
SHIFT_REASON = (
    "Li et al. 2019: dropout before BN scales kept units by 1/(1-p) in training, inflating the "
    "variance of BN's input; at test time (dropout off) that variance is below BN's running "
    "variance, Var_test / Var_running < 1. Judged against BN without dropout (the same measure, "
    "which absorbs the running average's lag): log(ratio BN+dropout / ratio BN) < 0, mean over "
    "the hidden layers dropout feeds, per seed"
)


def conditions(cfg: RegularizationConfig, by: dict[str, list[TrialResult]]) -> tuple:
    base, bn, bnd = by.get("baseline", []), by.get("bn", []), by.get("bn+dropout", [])
    final_gap = lambda r: _end(r, loss_gap(r))  # noqa: E731
    ratios = cond.paired(bnd, bn)
    return (
        cond.values_condition(
            "final loss gap, BN - baseline",
            _paired(bn, base, final_gap, lambda a, b: a - b),
            0.0,
            direction=-1,
            reason=GAP_REASON,
            unit="loss",
        ),
        cond.accuracy_difference(
            "final test accuracy, BN+dropout - BN (not better)",
            bnd,
            bn,
            cfg.margin,
            direction=-1,
            reason=NOT_BETTER_REASON,
        ),
        cond.log_ratio(
            "BN variance ratio (eval var / running var), BN+dropout / BN",
            [var_ratio_fed(x) for x, _ in ratios],
            [var_ratio_fed(y) for _, y in ratios],
            1.0,
            direction=-1,
            reason=SHIFT_REASON,
            unit="variance ratio",
        ),
    )


def plot(cfg: RegularizationConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    by = common.arms(results)
    steps = np.asarray(next(iter(by.values()))[0].history["step"])
    train = {t: np.stack([_curve(r, "train_sample_loss") for r in rs]) for t, rs in by.items()}
    test = {t: np.stack([_curve(r, "test_loss") for r in rs]) for t, rs in by.items()}
    return [
        plots.train_test_curves(
            steps,
            train,
            test,
            out / "regularization.png",
            title=f"Train (sample of {cfg.train_sample}) and test loss, eval mode",
        )
    ]


EXPERIMENT = Experiment(
    name="regularization",
    claim=CLAIM,
    source="Ioffe & Szegedy 2015, Sec. 3.4 and 4.2.1 (BN regularizes; dropout removed); "
    "Li et al. 2019 (dropout/BN variance shift)",
    config_type=RegularizationConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    validate=validate,
    paper="no number: dropout removed from BN-Inception 'without increasing overfitting'; Li et "
    "al.: Var_test / Var_train < 1 for BN after dropout",
    shows="final train-sample and test loss and accuracy of none/dropout/BN/BN+dropout, their "
    "train-test loss gap over training, and BN's variance ratio per layer (variance shift)",
)
