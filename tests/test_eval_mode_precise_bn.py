"""eval-mode and precise-bn: the inference probes against a float64 NumPy forward pass on a tiny
model, traceable PreciseBN against `population.recompute`, the rules on constructed results, and
both smoke presets through the real CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _child import ROOT, cli
from test_population import _np_forward, _np_population, _setup

from bnexp import data, results
from bnexp import inference_probes as IP
from bnexp.norms import population
from bnexp.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from bnexp.sweep import Trial, TrialResult
from experiments import common
from experiments import eval_mode as EM
from experiments import precise_bn as PB

T975_DF2 = 4.302652729911275  # Student-t 97.5% quantile, 2 degrees of freedom


def _model_with_state():
    """The tiny BN MLP of test_population with a non-trivial running state, and test data."""
    spec, params, state, _ = _setup()
    params["out"] = {**params["out"], "w": 30.0 * params["out"]["w"]}  # predictions vary by row
    rng = np.random.default_rng(5)
    x = (3.0 + 2.0 * rng.standard_normal((120, 12))).astype(np.float32)
    # a running state near the data's statistics but off by a fraction of each unit's spread
    hidden = []
    for s, z in zip(state["hidden"], _np_forward(params, x)[1], strict=True):
        mean = z.mean(0) + 0.5 * z.std(0) * rng.standard_normal(z.shape[1])
        var = z.var(0) * rng.uniform(0.5, 2.0, z.shape[1])
        hidden.append({**s, "mean": jnp.asarray(mean, jnp.float32),
                       "var": jnp.asarray(var, jnp.float32), "count": jnp.ones((), jnp.float32)})  # fmt: skip
    state = {"conv": [], "hidden": hidden}
    logits = _np_forward(params, x, state)[0]  # centred per class: every class is predicted
    params["out"] = {**params["out"], "b": jnp.asarray(-logits.mean(0), jnp.float32)}
    # labels: the float64 eval-mode prediction with 1 in 4 rows relabelled, so that every way of
    # normalizing scores differently (random labels would score any constant network alike)
    y = np.argmax(_np_forward(params, x, state)[0], 1).astype(np.int32)
    y[::4] = (y[::4] + 1) % 4
    return spec, params, state, x, y


def _np_acc(params, x, y, b=None, state=None):
    """Accuracy over batches of b rows (a partial last batch dropped) in float64."""
    b = len(x) if b is None else b
    nb = len(x) // b
    pred = [np.argmax(_np_forward(params, x[i * b : (i + 1) * b], state)[0], 1) for i in range(nb)]
    return float(np.mean(np.concatenate(pred) == y[: nb * b])) if nb else float("nan")


def test_eval_mode_probe_matches_numpy():
    spec, params, state, x, y = _model_with_state()
    sizes = (1, 2, 3, 7, 64, 200)  # 200 > 120 rows: NaN
    hp = {"test": (jnp.asarray(x), jnp.asarray(y)), "norm_call": {}, "batch_size": 8}
    out = jax.jit(lambda p, s: IP.eval_mode_probe(sizes=sizes)(spec, p, s, None, hp, None))(
        params, state
    )
    out = jax.tree.map(np.asarray, out)
    order = np.random.default_rng(IP.EVAL_ORDER_SEED).permutation(len(y))
    srt = np.argsort(y, kind="stable")
    want_eval = _np_acc(params, x, y, state=state)
    for k, b in enumerate(sizes):
        if b > len(y):
            for key in ("bs_acc", "bs_acc_sorted", "eval_acc_bs", "eval_flip_bs"):
                assert np.isnan(out[key][k])
            continue
        assert out["bs_acc"][k] == pytest.approx(_np_acc(params, x[order], y[order], b), abs=1e-6)
        assert out["bs_acc_sorted"][k] == pytest.approx(
            _np_acc(params, x[srt], y[srt], b), abs=1e-6
        )
        m = (len(y) // b) * b
        rows = order[:m]
        assert out["eval_acc_bs"][k] == pytest.approx(
            _np_acc(params, x[rows], y[rows], state=state), abs=1e-6
        )
        assert out["eval_flip_bs"][k] == 0.0
    assert out["eval_acc"] == pytest.approx(want_eval, abs=1e-6)
    stale = {"hidden": [{"mean": np.zeros(s["mean"].shape), "var": np.ones(s["var"].shape)}
                        for s in state["hidden"]]}  # fmt: skip
    assert out["stale_acc"] == pytest.approx(_np_acc(params, x, y, state=stale), abs=1e-6)
    assert out["one_batch_acc"] == pytest.approx(_np_acc(params, x, y), abs=1e-6)
    # batch 1: every feature is its own batch mean, BN outputs its bias: one class for all
    const = np.argmax(_np_forward(params, x[:1])[0], 1)[0]
    assert out["bs_acc"][0] == pytest.approx(np.mean(y == const), abs=1e-6)
    assert out["eval_acc"] == pytest.approx(0.75, abs=1e-6)  # the labels' construction
    assert out["stale_acc"] < 0.7 and out["bs_acc"][0] < 0.7  # the statistics matter here


def test_recompute_stacked_equals_recompute_under_jit_and_vmap():
    spec, params, state, _ = _setup()
    rng = np.random.default_rng(3)
    xs = (3.0 + 2.0 * rng.standard_normal((5, 16, 12))).astype(np.float32)
    fn = jax.jit(
        lambda p: population.recompute_stacked(
            p, state, spec, jnp.asarray(xs), running_vars=population.RUNNING_VARS
        )
    )
    got = fn(params)
    for rv, new in zip(population.RUNNING_VARS, got, strict=True):
        ref = population.recompute(params, state, spec, list(xs), running_var=rv)
        for a, b in zip(new["hidden"], ref["hidden"], strict=True):
            np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a["var"], b["var"], rtol=1e-5)
            assert float(a["count"]) == 5.0
    # over a member axis (as the engine calls probes): two members, the second with scaled
    # first-layer weights (its population mean and variance scale by 2 and 4)
    p2 = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, params)
    p2["hidden"][0]["w"] = p2["hidden"][0]["w"].at[1].multiply(2.0)
    vm = jax.vmap(lambda p: population.recompute_stacked(p, state, spec, jnp.asarray(xs))[0])(p2)
    base = got[0]["hidden"][0]
    np.testing.assert_allclose(vm["hidden"][0]["mean"][1], 2 * base["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vm["hidden"][0]["var"][1], 4 * base["var"], rtol=1e-5)
    with pytest.raises(ValueError, match="running_var"):
        population.recompute_stacked(params, state, spec, jnp.asarray(xs), running_vars=("x",))


def test_precise_bn_probe_matches_numpy():
    spec, params, ema, x, y = _model_with_state()
    b, nb = 8, 4
    rng = np.random.default_rng(9)
    xp = (3.0 + 2.0 * rng.standard_normal((nb * b + 3, 12))).astype(np.float32)  # 3 spare rows
    hp = {"test": (jnp.asarray(x), jnp.asarray(y)), "norm_call": {}, "batch_size": b}
    probe = IP.precise_bn_probe(batches=nb)
    out = jax.jit(lambda p, s: probe(spec, p, s, (jnp.asarray(xp), None), hp, None))(params, ema)
    out = jax.tree.map(np.asarray, out)
    batches = [xp[i * b : (i + 1) * b] for i in range(nb)]
    for k, rv in enumerate(population.RUNNING_VARS):
        pop = _np_population(params, batches, rv)
        st = {"hidden": [{"mean": m, "var": v} for m, v in pop]}
        assert out["precise_acc"][k] == pytest.approx(_np_acc(params, x, y, state=st), abs=1e-6)
    assert out["ema_acc"] == pytest.approx(_np_acc(params, x, y, state=ema), abs=1e-6)
    pop = _np_population(params, batches, "unbiased")
    for layer, (m, v) in enumerate(pop):
        e = ema["hidden"][layer]
        em, ev = np.asarray(e["mean"], np.float64), np.asarray(e["var"], np.float64)
        gap = np.mean(np.abs(em - m) / np.sqrt(v + 1e-5))
        vgap = np.mean(np.abs(np.log((ev + 1e-5) / (v + 1e-5))))
        assert out["ema_mean_gap"][layer] == pytest.approx(gap, rel=1e-5)
        assert out["ema_var_gap"][layer] == pytest.approx(vgap, rel=1e-5)
    with pytest.raises(ValueError, match="probe batch"):
        probe(spec, params, ema, (jnp.asarray(xp[:10]), None), hp, None)


# ---- the rules on constructed results ------------------------------------------------------


def _t(values):
    v = np.asarray(values, np.float64)
    half = T975_DF2 * v.std(ddof=1) / np.sqrt(v.size)
    return v.mean(), v.mean() - half, v.mean() + half


EM_CFG = dataclasses.replace(EM.PRESETS["quick"], seeds=3, test_sizes=(1, 2, 4, 64, 256))


def _em_result(seed, bs, srt, ev, flip):
    h = {"step": np.array([0, 2000])}
    for key, v in (("bs_acc", bs), ("bs_acc_sorted", srt), ("eval_acc_bs", ev)):
        h[key] = np.stack([np.full(5, 0.1), np.asarray(v, np.float64)])
    h["eval_flip_bs"] = np.stack([np.zeros(5), np.asarray(flip, np.float64)])
    for key in ("eval_acc", "stale_acc", "one_batch_acc", "test_acc"):
        h[key] = np.array([0.1, 0.95])
    return TrialResult(Trial(seed=seed, tag=EM.TAG, steps=2000, eval_every=2000), h, None, 0.95)


def test_eval_mode_rules_on_constructed_results():
    ev = [0.95] * 5
    rs = [  # per seed: best small gap -0.20, -0.25, -0.30; large +0.002, -0.001, +0.004;
        # sorted -0.6, -0.55, -0.5; flips at most 0, 0.0002, 0
        _em_result(0, [0.1, 0.6, 0.75, 0.94, 0.952], [0.1, 0.1, 0.1, 0.35, 0.9], ev, [0] * 5),
        _em_result(
            1, [0.1, 0.6, 0.70, 0.94, 0.949], [0.1, 0.1, 0.1, 0.40, 0.9], ev, [0, 0, 0, 0.0002, 0]
        ),  # fmt: skip
        _em_result(2, [0.1, 0.5, 0.65, 0.94, 0.954], [0.1, 0.1, 0.1, 0.45, 0.9], ev, [0] * 5),
    ]
    got = EM.conditions(EM_CFG, [EM.seed_values(EM_CFG, r) for r in rs])
    want = [
        ([-0.20, -0.25, -0.30], REPRODUCED),
        ([0.002, -0.001, 0.004], REPRODUCED),
        ([-0.6, -0.55, -0.5], REPRODUCED),
    ]
    for c, (values, outcome) in zip(got[:3], want, strict=True):
        mean, lo, hi = _t(values)
        np.testing.assert_allclose([c.effect, *c.ci95], [mean, lo, hi], rtol=1e-6, atol=1e-9)
        assert c.outcome == outcome and c.n == 3 and c.reason, c.name
    assert got[3].effect == pytest.approx(0.0002) and got[3].outcome == REPRODUCED
    # a sorted collapse of only 20 points is not the claimed 30; a flip above tolerance fails
    bad = [EM.seed_values(EM_CFG, r) for r in rs]
    bad = [{**v, "sorted": -0.2 + 0.01 * i, "flip": 0.002 * (i == 1)} for i, v in enumerate(bad)]
    c = EM.conditions(EM_CFG, bad)
    assert c[2].outcome == NOT_REPRODUCED and c[3].outcome == NOT_REPRODUCED
    table = EM.size_table(EM_CFG, rs)
    assert [r["test batch"] for r in table.rows] == [1, 2, 4, 64, 256]
    assert table.rows[2]["batch stats - eval acc"]["mean"] == pytest.approx(-0.25)


PB_CFG = dataclasses.replace(PB.PRESETS["quick"], seeds=3, rates=(0.001, 0.1))
STEPS = np.array([0, 10, 100, 400, 800, 1200])


def _pb_result(rate, mult, seed, gain, ema=0.9):
    """A run whose PreciseBN - EMA gain at each point of STEPS is ``gain``."""
    e = len(STEPS)
    h = {"step": STEPS, "ema_acc": np.full(e, ema), "test_acc": np.full(e, ema)}
    h["precise_acc"] = np.stack([np.full(e, ema), ema + np.asarray(gain), np.full(e, ema)], 1)
    h["ema_mean_gap"] = np.ones((e, 3))
    t = Trial(seed=seed, tag=PB.tag(rate, mult), steps=1200, eval_every=400)
    return TrialResult(t, h, None, ema)


def test_precise_bn_rules_on_constructed_results():
    rs = []
    for s in range(3):
        # early (step 100) gain at rate 0.001, lr 1x: 0.30, 0.25, 0.20; a -0.5 at step 10 is
        # before early_step and not judged
        rs.append(_pb_result(0.001, 1.0, s, [0, -0.5, 0.30 - 0.05 * s, 0.1, 0.05, 0.02]))
        # end gain at rate 0.1: 0.001, -0.002, 0.0 (the worst over points: -0.002 for seed 1)
        rs.append(_pb_result(0.1, 1.0, s, [0, 0, 0.01, 0.003, 0.002, [0.001, -0.002, 0.0][s]]))
        rs += [_pb_result(r, 5.0, s, [0, 0, 0.2, 0.1, 0.01, 0.001]) for r in PB_CFG.rates]
    by = common.arms(rs)
    assert PB.worst_gain(PB_CFG, by) == pytest.approx([0.001, -0.002, 0.0])
    c1, c2 = PB.conditions(PB_CFG, by)
    mean, lo, hi = _t([0.001, -0.002, 0.0])
    np.testing.assert_allclose([c1.effect, *c1.ci95], [mean, lo, hi], rtol=1e-6, atol=1e-9)
    assert c1.threshold == -PB_CFG.tol and c1.outcome == REPRODUCED
    mean, lo, hi = _t([0.299, 0.252, 0.2])
    np.testing.assert_allclose([c2.effect, *c2.ci95], [mean, lo, hi], rtol=1e-6, atol=1e-9)
    assert c2.outcome == REPRODUCED
    # one seed 3 points worse with PreciseBN somewhere judged: the worst-case rule cannot pass
    rs[1] = _pb_result(0.1, 1.0, 0, [0, 0, 0.01, -0.03, 0.002, 0.001])
    c1, _ = PB.conditions(PB_CFG, common.arms(rs))
    assert c1.outcome in (INCONCLUSIVE, NOT_REPRODUCED) and c1.effect == pytest.approx(-0.032 / 3)
    table = PB.lag_table(PB_CFG, common.arms(rs))
    assert len(table.rows) == 4 and table.rows[0]["PreciseBN - EMA acc early"]["mean"] == (
        pytest.approx(0.25)
    )


# ---- through the real CLI -------------------------------------------------------------------


def _smoke(tmp_path: Path, name: str) -> tuple[dict, dict[str, dict]]:
    env = dict(os.environ, NO_COLOR="1")
    args = ("run", name, "--preset", "smoke", "--out", str(tmp_path / "runs"), "--json")
    p = subprocess.run(cli(*args), capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    hist = {f.stem: results.read_npz(f) for f in (Path(doc["run_dir"]) / "trials").glob("*.npz")}
    return doc, hist


@pytest.mark.slow
def test_eval_mode_smoke_through_cli(tmp_path):
    doc, hist = _smoke(tmp_path, "eval-mode")
    y = data.load("synthetic").y_test
    shares = np.bincount(y, minlength=10) / len(y)
    finals = [t["final_test_accuracy"] for t in doc["trials"]]
    rows = {r["test batch"]: r for r in doc["rows"] if "test batch" in r}
    assert sorted(rows) == [1, 2, 4, 16, 64, 256]
    # every size divides the 256 test rows: eval mode in batches of b is the final accuracy
    for r in rows.values():
        assert r["eval mode acc"]["mean"] == pytest.approx(np.mean(finals), abs=1e-6)
        assert r["eval flips (max)"] == 0.0
    for h in hist.values():
        assert h["eval_acc"][-1] == pytest.approx(h["test_acc"][-1], abs=1e-6)
        # batch 1: BN outputs its bias, one class for every row: that class's share of the rows
        assert any(h["bs_acc"][-1, 0] == pytest.approx(f, abs=1e-6) for f in shares)
    assert len(doc["verdict"]["conditions"]) == 4


@pytest.mark.slow
def test_precise_bn_smoke_through_cli(tmp_path):
    doc, hist = _smoke(tmp_path, "precise-bn")
    assert len(hist) == len(doc["trials"]) == 8  # 2 rates x 2 lrs x 2 seeds
    finals = {t["final_test_accuracy"] for t in doc["trials"]}
    for h in hist.values():
        assert h["precise_acc"].shape == (len(h["step"]), 3)
        np.testing.assert_allclose(h["ema_acc"], h["test_acc"], atol=1e-6)  # same rows
        assert any(h["ema_acc"][-1] == pytest.approx(f, abs=1e-6) for f in finals)
    lag = [r for r in doc["rows"] if "PreciseBN - EMA acc early" in r]
    assert len(lag) == 4
    names = [c["name"] for c in doc["verdict"]["conditions"]]
    assert names[0].startswith("worst PreciseBN - EMA") and names[1].startswith("gain at step")
