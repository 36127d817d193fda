"""regularization: its probes against NumPy, its rule on constructed results, its CLI run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _child import ROOT, child_env, cli

from bnexp import data, models, plots, results, train
from bnexp import regularization_probes as rp
from bnexp.models import ModelSpec
from bnexp.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from bnexp.sweep import PROBE_SEED, Trial, TrialResult, run_sweep
from experiments import common
from experiments import regularization as R
from experiments.base import ConfigError

RTOL = 1e-5  # float32 precision (STYLE.md); never loosened to pass
T975_DF2 = 4.302652729911275  # Student-t 97.5% quantile, 2 degrees of freedom
EPS = 1e-5  # batch_norm's default eps


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_forward(params, state, x, spec: ModelSpec):
    """Eval-mode logits and each hidden layer's norm input, in float64 (dropout off; BN with
    its running statistics, placement "before"; or no norm with biases)."""
    h, inputs = np.asarray(x, np.float64), []
    for p, s in zip(params["hidden"], state["hidden"], strict=True):
        z = h @ np.asarray(p["w"], np.float64)
        if "b" in p:
            z = z + np.asarray(p["b"], np.float64)
        inputs.append(z)
        if spec.norm == "batch":
            mean, var = np.asarray(s["mean"], np.float64), np.asarray(s["var"], np.float64)
            scale, bias = (np.asarray(p["norm"][k], np.float64) for k in ("scale", "bias"))
            z = scale * (z - mean) / np.sqrt(var + EPS) + bias
        h = _sigmoid(z)
    out = params["out"]
    return h @ np.asarray(out["w"], np.float64) + np.asarray(out["b"], np.float64), inputs


def numpy_loss_acc(logits, y):
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean(), (logits.argmax(-1) == y).mean()


def _tiny(norm: str = "batch", dropout: float = 0.3, seed: int = 0):
    """A 6-5-4-3 sigmoid MLP with perturbed norm parameters and running statistics, so that
    eval mode differs from the identity and from train mode."""
    spec = ModelSpec(widths=(6, 5, 4, 3), norm=norm, dropout=dropout, init_std=0.7)
    params, state = models.init(jax.random.key(seed), spec)
    rng = np.random.default_rng(seed)
    for p, s in zip(params["hidden"], state["hidden"], strict=True):
        if norm == "batch":
            n = p["w"].shape[1]
            p["norm"] = {"scale": jnp.asarray(rng.uniform(0.5, 2, n), jnp.float32)}
            p["norm"]["bias"] = jnp.asarray(rng.normal(size=n), jnp.float32)
            s["mean"] = jnp.asarray(rng.normal(size=n), jnp.float32)
            s["var"] = jnp.asarray(rng.uniform(0.3, 3, n), jnp.float32)
    params["out"]["b"] = jnp.asarray(rng.normal(size=3), jnp.float32)
    x = jnp.asarray(rng.normal(size=(40, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 40), jnp.int32)
    return spec, params, state, x, y


def _loss_fn(spec):
    def loss_fn(params, norm_state, x, y, *, mode="train", key=None, norm_call=None):
        return train.loss_fn(params, norm_state, x, y, spec, mode=mode, key=key, norm_call={})

    return loss_fn


HP = {"norm_call": {}, "key": jax.random.key(3), "batch_size": 8}


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_train_sample_eval_is_the_numpy_eval_forward(norm):
    spec, params, state, x, y = _tiny(norm)
    out = jax.jit(lambda p, s: rp.train_sample_eval_probe(spec, p, s, (x, y), HP, _loss_fn(spec)))(
        params, state
    )
    logits, _ = numpy_forward(params, state, x, spec)
    loss, acc = numpy_loss_acc(logits, np.asarray(y))
    assert 0.2 < acc < 0.9  # a case where the accuracy is not trivially 0 or 1
    np.testing.assert_allclose(float(out["train_sample_loss"]), loss, rtol=RTOL)
    assert float(out["train_sample_acc"]) == pytest.approx(acc, abs=1e-7)


def test_train_sample_eval_in_the_sweep_is_the_fixed_training_sample():
    """Through run_sweep: at step 0 (the initial weights) the probe's loss and accuracy are the
    NumPy eval forward on the seeded sample of training rows the sweep fixes, and the test
    metrics the same forward on the test set."""
    opts = (("n_train", 300), ("n_test", 120), ("dim", 6), ("num_classes", 3))
    spec = ModelSpec(widths=(6, 5, 4, 3), norm="batch", dropout=0.3, init_std=0.7)
    t = Trial(spec, "synthetic", batch_size=20, steps=30, eval_every=10, eval_per_decade=0)
    t = dataclasses.replace(
        t, lr=0.1, seed=4, data_options=opts, probes=("train_sample_eval",), probe_batch_size=100
    )
    (r,) = run_sweep([t])
    ds = data.load("synthetic", **dict(opts))
    rows = np.sort(np.random.default_rng(PROBE_SEED).choice(300, 100, replace=False))
    params, state = models.init(jax.random.fold_in(jax.random.key(4), 0), spec)
    logits, _ = numpy_forward(params, state, ds.x_train[rows], spec)
    loss, acc = numpy_loss_acc(logits, ds.y_train[rows])
    np.testing.assert_allclose(r.history["train_sample_loss"][0], loss, rtol=RTOL)
    assert r.history["train_sample_acc"][0] == pytest.approx(acc, abs=1e-6)
    tl, ta = numpy_loss_acc(numpy_forward(params, state, ds.x_test, spec)[0], ds.y_test)
    np.testing.assert_allclose(r.history["test_loss"][0], tl, rtol=RTOL)
    assert r.history["test_acc"][0] == pytest.approx(ta, abs=1e-6)
    assert r.history["train_sample_loss"].shape == (4,)
    assert np.isfinite(r.history["train_sample_loss"]).all()
    assert r.history["train_sample_loss"][-1] < loss  # it trained, and the probe followed


def test_variance_ratio_by_hand():
    # column 0: values 1, 3 (mean 2, variance 1/N = 1); column 1: 0, 4 (variance 4)
    u = jnp.asarray([[1.0, 0.0], [3.0, 4.0]], jnp.float32)
    got = rp.variance_ratio(u, jnp.asarray([4.0, 2.0], jnp.float32))
    assert float(got) == pytest.approx((1 / 4 + 4 / 2) / 2, rel=1e-7)  # 1.125


def test_bn_var_ratio_probe_is_the_numpy_ratio_per_layer():
    spec, params, state, x, y = _tiny("batch")
    out = rp.bn_var_ratio_probe(spec, params, state, (x, y), HP, _loss_fn(spec))["bn_var_ratio"]
    _, inputs = numpy_forward(params, state, x, spec)
    want = [
        np.mean(u.var(axis=0) / np.asarray(s["var"], np.float64))
        for u, s in zip(inputs, state["hidden"], strict=True)
    ]
    assert out.shape == (2,)
    np.testing.assert_allclose(out, want, rtol=RTOL)
    # no norm, no running variance: NaN per layer
    spec0, params0, state0, _, _ = _tiny("none")
    out0 = rp.bn_var_ratio_probe(spec0, params0, state0, (x, y), HP, _loss_fn(spec0))
    assert np.isnan(np.asarray(out0["bn_var_ratio"])).all()


# ---- the rule on constructed results ---------------------------------------------------------

STEPS = np.array([0, 100, 200])
CFG = dataclasses.replace(R.PRESETS["quick"], seeds=3)


def _result(tag, seed, gap, acc, ratios=None, diverged_at=None):
    """A result whose final loss gap is ``gap`` (test 0.1 + gap, training sample 0.1), final test
    accuracy ``acc`` and, for a BN arm, per-layer variance ratios ``ratios`` at every point."""
    h = {
        "step": STEPS,
        "train_sample_loss": np.full(3, 0.1),
        "test_loss": np.array([2.3, 0.1 + gap / 2, 0.1 + gap]),
        "train_sample_acc": np.array([0.1, 0.9, 1.0]),
        "test_acc": np.array([0.1, acc - 0.01, acc]),
    }
    if ratios is not None:
        h["bn_var_ratio"] = np.tile(np.asarray(ratios, np.float64), (3, 1))
    if diverged_at is not None:
        h = {k: (v if k == "step" else np.where(STEPS[:, None] >= diverged_at, np.nan, v.T).T)
             for k, v in h.items()}  # fmt: skip
    t = Trial(seed=seed, tag=tag, steps=200, eval_every=100)
    return TrialResult(t, h, diverged_at, None if diverged_at else acc)


GAPS = {"baseline": [0.5, 0.6, 0.55], "dropout": [0.4, 0.5, 0.5], "bn": [0.2, 0.25, 0.3]}
GAPS["bn+dropout"] = [0.15, 0.2, 0.2]
ACCS = {"baseline": [0.90, 0.91, 0.90], "dropout": [0.91, 0.91, 0.92], "bn": [0.95, 0.96, 0.95]}
ACCS["bn+dropout"] = [0.93, 0.942, 0.928]  # BN+dropout - BN: -2, -1.8, -2.2 pts
RATIOS = {"bn": [[1.0, 1.02, 0.98], [1.0, 1.03, 1.01], [0.99, 1.01, 0.99]]}
RATIOS["bn+dropout"] = [[1.0, 0.7, 0.8], [1.01, 0.6, 0.9], [1.0, 0.7, 0.7]]  # fed: 0.75, 0.75, 0.7


def _results(accs=ACCS, gaps=GAPS, diverged=()):
    return [
        _result(tag, s, gaps[tag][s], accs[tag][s], RATIOS.get(tag, [None] * 3)[s],
                100 if (tag, s) in diverged else None)
        for tag in GAPS for s in range(3)
    ]  # fmt: skip


def _t(values):
    v = np.asarray(values, np.float64)
    half = T975_DF2 * v.std(ddof=1) / np.sqrt(v.size)
    return v.mean(), v.mean() - half, v.mean() + half


NAMES = (
    "final loss gap, BN - baseline",
    "final test accuracy, BN+dropout - BN (not better)",
    "BN variance ratio (eval var / running var), BN+dropout / BN",
)


def test_conditions_reproduced_on_constructed_results():
    got = {c.name: c for c in R.conditions(CFG, common.arms(_results()))}
    assert tuple(got) == NAMES
    shift = [np.log(np.mean(d[1:]) / np.mean(b[1:])) for b, d in zip(*RATIOS.values(), strict=True)]
    want = {
        NAMES[0]: ([-0.3, -0.35, -0.25], 0.0, -1),
        NAMES[1]: ([-0.02, -0.018, -0.022], CFG.margin, -1),
        NAMES[2]: (shift, 0.0, -1),
    }
    for name, (values, threshold, direction) in want.items():
        c = got[name]
        np.testing.assert_allclose([c.effect, *c.ci95], _t(values), rtol=1e-6, atol=1e-9)
        assert (c.threshold, c.direction, c.n, c.outcome) == (threshold, direction, 3, REPRODUCED)
        assert c.reason


def test_not_better_is_one_sided_with_a_margin():
    def outcome(deltas):
        accs = dict(
            ACCS, **{"bn+dropout": [a + d for a, d in zip(ACCS["bn"], deltas, strict=True)]}
        )
        (c,) = [c for c in R.conditions(CFG, common.arms(_results(accs))) if c.name == NAMES[1]]
        return c.outcome

    assert outcome([0.02, 0.021, 0.019]) == NOT_REPRODUCED  # dropout helps BN by ~2 pts
    assert outcome([0.0, 0.001, -0.001]) == REPRODUCED  # no gain: within the margin
    assert outcome([0.004, 0.008, 0.006]) == INCONCLUSIVE  # around the 0.5-pt margin


def test_larger_bn_gap_is_not_reproduced_and_a_diverged_member_counts_as_chance():
    gaps = dict(GAPS, bn=[0.7, 0.8, 0.75])
    got = {c.name: c for c in R.conditions(CFG, common.arms(_results(gaps=gaps)))}
    assert got[NAMES[0]].outcome == NOT_REPRODUCED
    got = {
        c.name: c for c in R.conditions(CFG, common.arms(_results(diverged={("bn+dropout", 1)})))
    }
    np.testing.assert_allclose(got[NAMES[1]].effect, np.mean([-0.02, 0.1 - 0.96, -0.022]))
    assert got[NAMES[2]].n == 2 and got[NAMES[0]].n == 3  # no ratio for the diverged member


def test_analysis_tables_and_measures():
    a = R.analyze(CFG, _results())
    final = {r["arm"]: r for r in a.tables[0].rows}
    np.testing.assert_allclose(final["bn"]["loss gap"]["mean"], np.mean(GAPS["bn"]))
    np.testing.assert_allclose(final["baseline"]["acc gap"]["mean"], 1 - np.mean(ACCS["baseline"]))
    # test loss 0.1 + gap/2 at step 100, 0.1 + gap at the end: it rose gap/2 from its minimum
    np.testing.assert_allclose(final["baseline"]["test loss rise"]["mean"], 0.55 / 2)
    var = a.tables[2].rows
    assert [r["fed by dropout"] for r in var] == [False, True, True]
    np.testing.assert_allclose(var[1]["bn+dropout var ratio"]["mean"], np.mean([0.7, 0.6, 0.7]))
    diff = {r["pair"]: r for r in a.tables[3].rows}
    want = _t([0.01, 0.0, 0.02])  # dropout - baseline final test accuracy
    got = diff["dropout - baseline"]["test acc difference"]
    np.testing.assert_allclose([got["mean"], got["low"], got["high"]], want, rtol=1e-6)
    got = diff["bn+dropout - bn"]["loss gap difference"]
    np.testing.assert_allclose(got["mean"], np.mean([-0.05, -0.05, -0.1]))
    assert a.verdict.outcome == REPRODUCED


def test_trials_arms_probes_and_sample():
    ts = R.trials(R.PRESETS["quick"])
    assert [t.tag for t in ts[::5]] == ["baseline", "dropout", "bn", "bn+dropout"]
    for t in ts:
        bn, drop = t.tag.startswith("bn"), t.tag.endswith("dropout")
        assert t.model.norm == ("batch" if bn else "none")
        assert t.model.dropout == (0.2 if drop else 0.0)
        assert t.probes == (("train_sample_eval", "bn_var_ratio") if bn else ("train_sample_eval",))
        assert t.probe_batch_size == 1000 and t.data_options == (("n_train", 1000),)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dropout": 0.0}, "dropout must be in"),
        ({"hidden": (100,)}, "at least 2 layers"),
        ({"train_size": 9000}, "train_size must be in"),
        ({"train_size": 50}, "larger than the training set"),
        ({"margin": -0.1}, "margin must be"),
    ],
)
def test_bad_configs_are_config_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        R.validate(dataclasses.replace(R.PRESETS["quick"], **change))


def test_train_test_curves_draws_train_solid_and_test_dashed(tmp_path, monkeypatch):
    steps = np.arange(0, 301, 50)
    train_loss = np.stack([2.3 * np.exp(-steps / 60.0) + 1e-3] * 2)
    test_loss = train_loss + 0.3 * steps / 300
    test_loss[1, 4:] = np.nan  # a diverged seed: its NaNs are skipped, never drawn
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    path = tmp_path / "loss.png"
    plots.train_test_curves(steps, {"bn": train_loss}, {"bn": test_loss}, path)
    (ax,) = drawn[0].axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert lines["bn train"].get_linestyle() == "-" and lines["bn test"].get_linestyle() == "--"
    assert lines["bn train"].get_color() == lines["bn test"].get_color()
    np.testing.assert_allclose(lines["bn test"].get_ydata()[4:], test_loss[0, 4:])
    assert ax.get_yscale() == "log"


# ---- the real command line ------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_through_cli_numbers(tmp_path):
    args = ["run", "regularization", "--preset", "smoke", "--out", str(tmp_path), "--json"]
    p = subprocess.run(cli(*args), capture_output=True, text=True, env=child_env(), cwd=ROOT,
                       timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    run = results.load_run(Path(doc["run_dir"]))
    hist = {(t.tag, t.seed): t.history for t in run.trials}
    assert len(hist) == 8  # four arms, two seeds
    for (tag, _), h in hist.items():
        assert h["train_sample_loss"].shape == h["test_loss"].shape == (5,)  # steps 0..80 by 20
        assert np.isfinite(h["train_sample_loss"]).all()
        assert ((h["train_sample_acc"] >= 0) & (h["train_sample_acc"] <= 1)).all()
        assert ("bn_var_ratio" in h) == tag.startswith("bn")
    rows = {r["arm"]: r for r in doc["rows"] if "arm" in r}
    for tag in ("baseline", "bn"):
        gaps = [
            hist[tag, s]["test_loss"][-1] - hist[tag, s]["train_sample_loss"][-1] for s in (0, 1)
        ]
        np.testing.assert_allclose(rows[tag]["loss gap"]["mean"], np.mean(gaps), rtol=RTOL)
    (c,) = [c for c in doc["verdict"]["conditions"] if c["name"] == NAMES[0]]
    diffs = [
        (hist["bn", s]["test_loss"][-1] - hist["bn", s]["train_sample_loss"][-1])
        - (hist["baseline", s]["test_loss"][-1] - hist["baseline", s]["train_sample_loss"][-1])
        for s in (0, 1)
    ]
    np.testing.assert_allclose(c["effect"], np.mean(diffs), rtol=RTOL)
    assert [c["name"] for c in doc["verdict"]["conditions"]] == list(NAMES)
    assert (Path(doc["run_dir"]) / "plots" / "regularization.png").stat().st_size > 5000
