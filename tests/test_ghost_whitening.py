"""ghost-bn and whitening: their rules on constructed results with a known answer, their trials
and checks, and their smoke presets through the real command line (numbers in --json)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess

import numpy as np
import pytest
from _child import ROOT, child_env, cli

from bnexp.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from bnexp.sweep import Trial, TrialResult
from experiments import common
from experiments import conditions as cond
from experiments import ghost_bn as G
from experiments import whitening as W
from experiments.base import ConfigError

T975_DF2 = 4.302652729911275  # Student-t 97.5% quantile, 2 degrees of freedom
STEPS = np.array([0, 50, 100])


def _t(values):
    v = np.asarray(values, np.float64)
    half = T975_DF2 * v.std(ddof=1) / np.sqrt(v.size)
    return v.mean(), v.mean() - half, v.mean() + half


def _result(tag, seed, final, *, steps=100, extra=None, diverged_at=None):
    h = {"step": STEPS, "test_acc": np.array([0.1, 0.5, final if final is not None else np.nan])}
    t = Trial(seed=seed, tag=tag, steps=steps, eval_every=50)
    return TrialResult(t, h, diverged_at, final, 0.0, dict(extra or {}))


# ---- ghost-bn ---------------------------------------------------------------------------------

GCFG = dataclasses.replace(G.PRESETS["quick"], seeds=3)


def _ghost_results(small, large, ghost):
    out = []
    for arm, accs in (("small", small), ("large", large), ("ghost", ghost)):
        out += [_result(arm, s, a) for s, a in enumerate(accs)]
    return out


def test_ghost_conditions_on_constructed_results():
    small, large, ghost = [0.97, 0.96, 0.97], [0.92, 0.93, 0.91], [0.95, 0.955, 0.94]
    res = _ghost_results(small, large, ghost)
    by = common.arms(res)
    cs = G.conditions(GCFG, by)
    gap = np.subtract(small, large)  # 5, 3, 6 pts
    helped = np.subtract(ghost, large)  # 3, 2.5, 3 pts
    want = [gap, helped, helped - 0.5 * gap]  # 0.5, 1, 0 pts
    outcomes = [REPRODUCED, REPRODUCED, INCONCLUSIVE]
    for c, v, o in zip(cs, want, outcomes, strict=True):
        np.testing.assert_allclose([c.effect, *c.ci95], _t(v), rtol=1e-6, atol=1e-9)
        assert c.outcome == o and c.threshold == 0.0 and c.n == 3 and c.reason
    assert G.share_closed(by) == pytest.approx(helped.mean() / gap.mean())  # 10/14
    a = G.analyze(GCFG, res)
    assert a.verdict.outcome == INCONCLUSIVE and len(a.verdict.conditions) == 3
    assert "closes 61% of it" in a.verdict.evidence  # 8.5 / 14


def test_ghost_short_of_half_the_gap_is_not_reproduced():
    small, large = [0.97, 0.97, 0.97], [0.92, 0.93, 0.91]
    ghost = [0.925, 0.935, 0.915]  # + 0.5 pts: an eighth of each seed's gap, at most
    v = G.analyze(GCFG, _ghost_results(small, large, ghost)).verdict
    assert [c.outcome for c in v.conditions] == [REPRODUCED, REPRODUCED, NOT_REPRODUCED]
    assert v.outcome == NOT_REPRODUCED


def test_ghost_without_a_significant_gap_is_inconclusive_for_that_reason():
    small, large = [0.92, 0.93, 0.91], [0.97, 0.96, 0.97]  # the large batch is better
    ghost = [0.90, 0.90, 0.90]  # far below: would be "not reproduced" if the gap existed
    a = G.analyze(GCFG, _ghost_results(small, large, ghost))
    assert a.verdict.outcome == INCONCLUSIVE and a.verdict.conditions == ()
    assert a.verdict.evidence.startswith("no significant large-batch gap to close (gap: not")
    gap_rows = a.tables[1].rows  # still shown
    assert gap_rows[0]["outcome"] == NOT_REPRODUCED
    assert gap_rows[0]["effect (acc)"] == pytest.approx(-0.0467, abs=1e-4)


def test_ghost_diverged_member_counts_as_chance():
    res = _ghost_results([0.97, 0.96, 0.97], [0.92, 0.93, 0.91], [0.95, 0.95, 0.96])
    res[-1] = _result("ghost", 2, None, diverged_at=40)
    seeds, a = G.per_seed(common.arms(res))
    assert seeds == [0, 1, 2] and a["ghost"][2] == cond.CHANCE


def test_ghost_trials_same_epochs_sqrt_lr_and_ghost_norm():
    cfg = dataclasses.replace(G.PRESETS["smoke"], seeds=2)
    ts = G.trials(cfg)
    by = {(t.tag, t.seed): t for t in ts}
    assert len(ts) == 6
    small, large, ghost = by[("small", 0)], by[("large", 0)], by[("ghost", 1)]
    assert (small.batch_size, large.batch_size, ghost.batch_size) == (16, 256, 256)
    assert small.lr == 0.5 and large.lr == ghost.lr == pytest.approx(0.5 * math.sqrt(16))
    assert (small.steps, large.steps) == (128, 8)  # 2 epochs of 1,024 images
    assert small.steps * small.batch_size == large.steps * large.batch_size
    assert ghost.model.norm == "ghost" and large.model.norm == small.model.norm == "batch"
    assert dict(ghost.model.norm_options) == {"virtual_batch_size": 16}
    assert by[("ghost", 0)].data_seed == by[("large", 0)].data_seed  # paired by seed


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"ghost_size": 48}, "must be >= 2 and divide large_batch"),
        ({"small_batch": 256}, "small_batch < large_batch"),
        ({"share": 0.0}, "share must be in (0, 1]"),
        ({"large_batch": 2048}, "larger than the training set"),
    ],
)
def test_ghost_validate(change, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        G.validate(dataclasses.replace(G.PRESETS["smoke"], **change))


# ---- whitening --------------------------------------------------------------------------------

WCFG = dataclasses.replace(W.PRESETS["quick"], seeds=3, lrs=(0.5,), timing_repeats=3)


def _timed(tag, r, per_step, steps=1000):
    extra = {
        "group_seconds": per_step * (steps + r) + 2.5,  # + compile 2.0 s and eval 0.5 s
        "compile_seconds": 2.0,
        "eval_seconds": 0.5,
    }
    return _result(f"time/{tag}#{r}", 0, 0.9, steps=steps + r, extra=extra)


def _whitening_results(bn, dbn, t_bn, t_dbn):
    out = [_result("bn@0.5", s, a) for s, a in enumerate(bn)]
    out += [_result("dbn@0.5", s, a) for s, a in enumerate(dbn)]
    for r, (b, d) in enumerate(zip(t_bn, t_dbn, strict=True)):
        out += [_timed("bn", r, b), _timed("dbn", r, d)]
    return out


def test_whitening_conditions_on_constructed_results():
    bn, dbn = [0.970, 0.968, 0.972], [0.972, 0.967, 0.975]  # +0.2, -0.1, +0.3 pts
    t_bn = [9.0, 1.0e-3, 1.1e-3, 0.9e-3]  # repeat 0: a warm-up outlier, never counted
    t_dbn = [1.0, 2.0e-3, 2.4e-3, 1.7e-3]
    res = _whitening_results(bn, dbn, t_bn, t_dbn)
    a = W.analyze(WCFG, res)
    acc, cost = a.verdict.conditions
    np.testing.assert_allclose([acc.effect, *acc.ci95], _t(np.subtract(dbn, bn)), atol=1e-9)
    assert acc.direction == 0 and acc.threshold == 0.01 and acc.outcome == REPRODUCED
    logs = np.log(np.divide(t_dbn[1:], t_bn[1:]))
    np.testing.assert_allclose([cost.effect, *cost.ci95], _t(logs), rtol=1e-6)
    assert cost.log and cost.threshold == pytest.approx(math.log(1.5))
    assert cost.outcome == REPRODUCED and a.verdict.outcome == REPRODUCED
    timing = a.tables[1].rows
    assert [r["repeat"] for r in timing] == [1, 2, 3]
    np.testing.assert_allclose([r["bn s/step"] for r in timing], t_bn[1:], rtol=1e-9)
    reported = a.tables[2].rows[0]  # Huang et al.: shown, not part of the verdict
    assert reported["outcome"] == INCONCLUSIVE
    assert reported["effect (acc)"] == pytest.approx(np.mean(np.subtract(dbn, bn)))
    assert all("Huang" not in c.name for c in a.verdict.conditions)
    assert "(2.00x)" in a.verdict.evidence  # median 2.0 ms over median 1.0 ms


def test_whitening_cheap_dbn_or_an_accuracy_loss_is_not_reproduced():
    bn, dbn = [0.970, 0.968, 0.972], [0.940, 0.945, 0.938]  # 3 pts worse
    res = _whitening_results(bn, dbn, [1, 1e-3, 1e-3, 1e-3], [1, 1.1e-3, 1.05e-3, 1.12e-3])
    acc, cost = W.analyze(WCFG, res).verdict.conditions
    assert acc.outcome == NOT_REPRODUCED and cost.outcome == NOT_REPRODUCED


def test_step_seconds_subtracts_compile_and_evaluation():
    r = _timed("bn", 2, 1e-3)
    assert W.step_seconds(r) == pytest.approx(1e-3)
    assert W.step_seconds(_result("bn@0.5", 0, 0.9)) is None  # no engine timings


def test_whitening_trials_interleave_timing_repeats_in_groups_of_their_own():
    from bnexp.sweep import group_trials

    cfg = W.PRESETS["smoke"]
    ts = W.trials(cfg)
    timing = [t for t in ts if t.tag.startswith("time/")]
    assert [t.tag for t in timing[:4]] == ["time/bn#0", "time/dbn#0", "time/bn#1", "time/dbn#1"]
    assert len(timing) == 2 * (cfg.timing_repeats + 1)
    groups = group_trials(ts)
    assert sum(len(g) == 1 for g in groups) == len(timing)  # one group per timing trial
    dbn = next(t for t in ts if t.tag == "dbn@0.5")
    assert dbn.model.norm == "decorrelated" and dict(dbn.model.norm_options) == {"group_size": 16}
    with pytest.raises(ConfigError, match="divide every hidden width"):
        W.validate(dataclasses.replace(cfg, hidden=(20, 20)))
    with pytest.raises(ConfigError, match="judge_lr"):
        W.validate(dataclasses.replace(cfg, judge_lr=0.3))


# ---- the real command line --------------------------------------------------------------------


def _smoke(tmp_path, name):
    p = subprocess.run(
        cli("run", name, "--preset", "smoke", "--out", str(tmp_path), "--json"),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


@pytest.mark.slow
def test_ghost_smoke_through_cli(tmp_path):
    doc = _smoke(tmp_path, "ghost-bn")
    acc = {(t["tag"], t["seed"]): t["final_test_accuracy"] for t in doc["trials"]}
    steps = {t["tag"]: t["config"]["steps"] for t in doc["trials"]}
    assert steps == {"small": 128, "large": 8, "ghost": 8}
    gap = [acc[("small", s)] - acc[("large", s)] for s in (0, 1)]
    rows = doc["tables"][1]["rows"]
    assert rows[0]["effect (acc)"] == pytest.approx(np.mean(gap), abs=1e-6)
    helped = [acc[("ghost", s)] - acc[("large", s)] for s in (0, 1)]
    assert rows[1]["effect (acc)"] == pytest.approx(np.mean(helped), abs=1e-6)
    assert doc["verdict"]["outcome"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


@pytest.mark.slow
def test_whitening_smoke_through_cli(tmp_path):
    doc = _smoke(tmp_path, "whitening")
    acc = {(t["tag"], t["seed"]): t["final_test_accuracy"] for t in doc["trials"]}
    d = [acc[("dbn@0.5", s)] - acc[("bn@0.5", s)] for s in (0, 1)]
    eq, cost = doc["verdict"]["conditions"]
    assert eq["effect"] == pytest.approx(np.mean(d), abs=1e-6) and eq["direction"] == 0
    timing = doc["tables"][1]["rows"]
    assert len(timing) == 2 and all(r["bn s/step"] > 0 and r["dbn s/step"] > 0 for r in timing)
    logs = [math.log(r["dbn s/step"] / r["bn s/step"]) for r in timing]
    assert cost["effect"] == pytest.approx(np.mean(logs), rel=1e-6)
    steps = sorted(t["config"]["steps"] for t in doc["trials"] if t["tag"].startswith("time/"))
    assert steps == [40, 40, 41, 41, 42, 42]
