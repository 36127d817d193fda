"""batch-size: its rule on constructed results with a known answer, its trials and its checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bnexp.stats import NOT_REPRODUCED, REPRODUCED
from bnexp.sweep import Trial, TrialResult
from experiments import batch_size as B
from experiments import common
from experiments.base import ConfigError

T975_DF2 = 4.302652729911275  # Student-t 97.5% quantile, 2 degrees of freedom
CFG = dataclasses.replace(
    B.PRESETS["quick"], seeds=3, batch_sizes=(2, 32), norms=("batch", "group", "layer", "renorm")
)
STEPS = np.arange(0, 1201, 100)  # a linear grid (eval_every 100): every point is full


def _result(norm, b, seed, final, gap=None, slope=0.0):
    """A result whose accuracy curve ends at ``final`` with ``slope`` per step over the run, and
    (for a batch-statistics norm) train-mode/eval-mode accuracy on the training sample ``gap``
    apart at the end."""
    h = {"step": STEPS, "test_acc": final + slope * (STEPS - STEPS[-1]).astype(np.float64)}
    if gap is not None:
        h["train_acc_eval"] = np.full(STEPS.shape, 0.9)
        h["train_acc_batch"] = np.full(STEPS.shape, 0.9 + gap)
    t = Trial(seed=seed, tag=f"{norm}@{b}", batch_size=b, eval_every=100, steps=1200)
    return TrialResult(t, h, None, final)


# per seed: (accuracy at batch 32, at batch 2); gaps at (2, 32) for BN and BRN
ACC = {
    "batch": [(0.95, 0.90), (0.96, 0.90), (0.95, 0.90)],  # rises 5, 6, 5 pts
    "group": [(0.94, 0.942), (0.94, 0.936), (0.945, 0.946)],  # changes -0.2, +0.4, -0.1 pts
    "layer": [(0.94, 0.90), (0.94, 0.91), (0.94, 0.89)],  # rises 4, 3, 5 pts: not flat
    "renorm": [(0.95, 0.94), (0.95, 0.93), (0.95, 0.935)],  # rises 1, 2, 1.5 pts
}
GAP = {"batch": [(0.05, 0.0), (0.04, 0.01), (0.06, 0.0)], "renorm": [(0.0, 0.0)] * 3}


def _results(**slopes):
    out = []
    for norm, accs in ACC.items():
        for seed, (a32, a2) in enumerate(accs):
            g2, g32 = GAP.get(norm, [(None, None)] * 3)[seed]
            out.append(_result(norm, 2, seed, a2, g2))
            out.append(_result(norm, 32, seed, a32, g32, slopes.get(norm, 0.0)))
    return out


def _t(values):
    v = np.asarray(values, np.float64)
    half = T975_DF2 * v.std(ddof=1) / np.sqrt(v.size)
    return v.mean(), v.mean() - half, v.mean() + half


def test_conditions_on_constructed_results():
    by = B.common.arms(_results())
    got = {c.name: c for c in B.conditions(CFG, by)}
    want = {
        "BN error rise, batch 32 -> 2": ([0.05, 0.06, 0.05], REPRODUCED),
        "GN error change, batch 32 -> 2 (flat)": ([-0.002, 0.004, -0.001], REPRODUCED),
        "LN error change, batch 32 -> 2 (flat)": ([0.04, 0.03, 0.05], NOT_REPRODUCED),
        "error rise, BN - BRN, batch 32 -> 2": ([0.04, 0.04, 0.035], REPRODUCED),
        "BN train/eval gap, batch 2 - batch 32": ([0.05, 0.03, 0.06], REPRODUCED),
    }
    assert list(got) == list(want)
    for name, (values, outcome) in want.items():
        mean, lo, hi = _t(values)
        c = got[name]
        np.testing.assert_allclose([c.effect, *c.ci95], [mean, lo, hi], rtol=1e-6, atol=1e-9)
        assert c.outcome == outcome, name
        assert c.n == 3 and c.reason
    assert got["GN error change, batch 32 -> 2 (flat)"].direction == 0
    assert got["GN error change, batch 32 -> 2 (flat)"].threshold == CFG.flat_band


def test_a_diverged_small_batch_member_counts_as_chance():
    rs = _results()
    i = next(i for i, r in enumerate(rs) if r.trial.tag == "batch@2" and r.trial.seed == 0)
    rs[i] = TrialResult(rs[i].trial, rs[i].history, 500, None)
    (bn, *_) = B.conditions(CFG, B.common.arms(rs))
    mean, _, _ = _t([0.95 - 0.1, 0.06, 0.05])
    np.testing.assert_allclose(bn.effect, mean, rtol=1e-6)


def test_converged_is_the_robust_trend_over_the_last_third():
    # slopes per step over the last third (steps 800..1200, 400 steps): GN +0.8 pts (inside the
    # 1-pt band), LN +2 pts (still rising); every seed the same, so the interval is the point
    by = B.common.arms(_results(group=2e-5, layer=5e-5))
    conv = {c.name: c for c in B.converged(CFG, by)}
    np.testing.assert_allclose(conv["GN @ 32"].effect, 2e-5 * 400, rtol=1e-6)
    np.testing.assert_allclose(conv["LN @ 32"].effect, 5e-5 * 400, rtol=1e-6)
    assert conv["BN @ 32"].effect == pytest.approx(0.0, abs=1e-12)
    assert conv["GN @ 32"].outcome == REPRODUCED and conv["LN @ 32"].outcome == NOT_REPRODUCED
    assert conv["GN @ 32"].direction == 0 and conv["GN @ 32"].threshold == CFG.flat_band
    # one evaluation's dip, wherever it falls in the last third, leaves a flat curve flat
    for at in (8, 10, 12):  # steps 800 (the 2/3 point), 1000, 1200
        r = _result("layer", 32, 0, 0.9)
        r.history["test_acc"] = r.history["test_acc"].copy()
        r.history["test_acc"][at] = 0.6
        assert B._last_third(r) == pytest.approx(0.0, abs=1e-12), at


def test_analysis_tables_and_verdict():
    a = B.analyze(CFG, _results())
    table, conv = a.tables
    rows = {r["batch"]: r for r in table.rows}
    np.testing.assert_allclose(rows[2]["BN error (1-acc)"]["mean"], 1 - np.mean([0.9, 0.9, 0.9]))
    np.testing.assert_allclose(rows[2]["BN train/eval gap (acc)"]["mean"], 0.05)
    assert "GN train/eval gap (acc)" not in rows[2]  # no batch statistics, no gap
    assert [r["arm"] for r in conv.rows] == ["BN @ 32", "GN @ 32", "LN @ 32", "BRN @ 32"]
    # one typed value per cell (issue 13): every key is a displayed column, no text twin
    for t in a.tables:
        assert all(set(r) == set(t.columns) for r in t.rows)
    for c, r in zip(B.converged(CFG, common.arms(_results())), conv.rows, strict=True):
        assert r["change (acc)"] == c.effect
        assert [r["95% low (acc)"], r["95% high (acc)"]] == list(c.ci95)
    assert a.verdict.outcome == NOT_REPRODUCED  # LN is not flat
    assert len(a.verdict.conditions) == 5  # the converged diagnostic is not counted


def test_trials_same_epochs_lr_scaled_renorm_rate_and_gap_probe():
    cfg = dataclasses.replace(CFG, seeds=1)
    ts = {t.tag: t for t in B.trials(cfg)}
    n = cfg.train_size
    for b in (2, 32):
        t = ts[f"batch@{b}"]
        assert abs(t.steps * b - cfg.epochs * n) <= b * t.eval_every  # same epochs, whole grid
        assert t.steps % t.eval_every == 0 and t.steps // t.eval_every == cfg.evals
        assert t.lr == pytest.approx(cfg.lr * b / 32)
        assert t.data_options == (("n_train", n),) and t.probe_batch_size == cfg.gap_sample
    assert ts["batch@2"].probes == ts["renorm@2"].probes == ("train_eval_gap",)
    assert ts["group@2"].probes == ts["layer@2"].probes == ()
    assert dict(ts["renorm@2"].model.norm_options) == {"momentum": 0.01}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"ref_batch": 16}, "ref_batch"),
        ({"ref_batch": 2}, "ref_batch"),
        ({"train_size": 9000}, "train_size"),
        ({"evals": 10}, "multiple of 3"),
        ({"flat_band": 0.0}, "flat_band"),
        ({"gap_sample": 16}, "gap_sample"),
        ({"renorm_rate": 0.0}, "renorm_rate"),
    ],
)
def test_bad_configs_are_config_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        B.validate(dataclasses.replace(CFG, **change))
