"""`depth` and `placement` (issue 17): the grad_norms probe against a hand-written model's jax.grad,
each verdict rule on constructed results with a known answer, and both smoke presets through the
real CLI, their numbers checked against the saved trials."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _child import ROOT, child_env, cli

from bnexp import models, probes, results, stats, train
from bnexp.models import ModelSpec
from bnexp.sweep import Trial, TrialResult
from experiments import depth, placement

RTOL = 1e-5  # float32 precision (STYLE.md)


# ---- the grad_norms probe -------------------------------------------------------------------


def _loss_fn(spec):
    def loss_fn(params, norm_state, x, y, *, mode="train", key=None, norm_call=None):
        return train.loss_fn(params, norm_state, x, y, spec, mode=mode, key=key, norm_call={})

    return loss_fn


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_grad_norms_probe_matches_jax_grad_of_the_model_written_by_hand(norm):
    spec = ModelSpec(widths=(6, 5, 4, 3), activation="relu", norm=norm, init="he")
    params, state = models.init(jax.random.key(3), spec)
    x = jax.random.normal(jax.random.key(1), (16, 6), jnp.float32)
    y = jnp.arange(16, dtype=jnp.int32) % 3
    hp = {"norm_call": {}, "key": None}
    out = probes.get("grad_norms")(spec, params, state, (x, y), hp, _loss_fn(spec))["grad_norms"]
    assert out.shape == (3,)  # two hidden layers and the output layer

    eps = 1e-5  # bnexp.norms' default

    def loss(ws, wo):
        h = x
        for w in ws:
            z = h @ w
            if norm == "batch":
                mu = z.mean(0, keepdims=True)
                z = (z - mu) / jnp.sqrt(jnp.square(z - mu).mean(0, keepdims=True) + eps)
            h = jax.nn.relu(z)  # biases are zero at init (none: kept, but 0)
        logits = h @ wo + params["out"]["b"][None, :]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    ws = [layer["w"] for layer in params["hidden"]]
    gw, go = jax.grad(loss, argnums=(0, 1))(ws, params["out"]["w"])
    expect = [float(np.linalg.norm(np.asarray(g))) for g in (*gw, go)]
    np.testing.assert_allclose(np.asarray(out), expect, rtol=RTOL)
    assert all(e > 0 for e in expect)


def test_init_ratio_reads_first_over_last_hidden_layer_at_step_0():
    spec = ModelSpec(widths=(8, 4, 4, 4, 10), norm="batch")
    g = np.array([[6.0, 9.0, 2.0, 7.0], [1.0, 1.0, 1.0, 1.0]])  # (points, hidden 3 + output)
    r = TrialResult(Trial(model=spec), {"step": np.array([0, 10]), "grad_norms": g}, None, 0.5)
    assert depth.init_ratio(r) == pytest.approx(3.0)  # 6 / 2: the output layer's 7 not read
    g[0, 0] = np.nan
    assert depth.init_ratio(r) is None


# ---- depth: the rule on constructed results -------------------------------------------------

CFG = dataclasses.replace(
    depth.PRESETS["smoke"], depths=(2, 10, 20), settings=("relu",), lrs=(0.1, 1.0), seeds=4
)


def _depth_result(arm, d, lr, seed, acc, growth=1.5):
    spec = ModelSpec(widths=(8, *(4,) * d, 10), norm="batch" if arm == "bn" else "none")
    g = np.ones((2, d + 1))
    rate = growth * (1 + 0.002 * (-1) ** seed)  # per seed: growth +-0.2%
    g[0, 0] = 2.0 * rate ** (d - 1) * (1 + 0.01 * seed)  # first / last = 2 rate^(d-1)
    hist = {"step": np.array([0, 40]), "test_acc": np.array([0.1, acc]), "grad_norms": g}
    trial = Trial(model=spec, lr=lr, seed=seed, tag=depth.tag("relu", arm, d, lr))
    return TrialResult(trial, hist, None, acc)


def _depth_by(acc, growth=1.5):
    """acc(arm, depth, lr, seed) -> accuracy; results keyed by tag as common.arms gives them."""
    by: dict[str, list[TrialResult]] = {}
    for d in CFG.depths:
        for arm in ("baseline", "bn"):
            for lr in CFG.lrs:
                by[depth.tag("relu", arm, d, lr)] = [
                    _depth_result(arm, d, lr, s, acc(arm, d, lr, s), growth)
                    for s in range(CFG.seeds)
                ]
    return by


def test_depth_selects_the_lr_on_the_seed_mean_then_pairs_seeds():
    # baseline: lr 0.1 is better on the mean (0.80 vs 0.70) though seed 3 is better at lr 1
    def acc(arm, d, lr, s):
        if arm == "baseline":
            return 0.80 - 0.1 * (s == 3) if lr == 0.1 else 0.70 + 0.2 * (s == 3)
        return 0.95 + 0.002 * s if lr == 1.0 else 0.5

    by = _depth_by(acc)
    assert depth.best_lr(CFG, by, "relu", "baseline", 10) == 0.1
    assert depth.best_lr(CFG, by, "relu", "bn", 10) == 1.0
    conds = depth.conditions(CFG, by)
    names = [c.name for c in conds]
    assert names == [
        "relu depth 10: best-lr accuracy, BN - baseline",
        "relu depth 20: best-lr accuracy, BN - baseline",
        "relu: BN's initial gradient ratio, growth per layer",
    ]  # depth 2 < judged_from: not judged
    d = np.array([0.95 + 0.002 * s - (0.80 - 0.1 * (s == 3)) for s in range(4)])
    iv = stats.t_interval(d)
    assert conds[0].effect == pytest.approx(d.mean()) and conds[0].n == 4
    assert conds[0].ci95 == (pytest.approx(iv.low), pytest.approx(iv.high))
    assert conds[0].threshold == CFG.margin == 0.05 and conds[0].outcome == "reproduced"


def test_depth_margin_not_reached_is_not_reproduced_and_divergence_counts_as_chance():
    by = _depth_by(lambda arm, d, lr, s: 0.90 + 0.01 * (arm == "bn") + 0.001 * s)
    c = depth.conditions(CFG, by)[0]
    assert c.effect == pytest.approx(0.01) and c.outcome == "not reproduced"
    # every baseline seed at depth 10 diverges at both LRs: chance stands in, BN wins by 81 pts
    for lr in CFG.lrs:
        for r in by[depth.tag("relu", "baseline", 10, lr)]:
            r.diverged_at, r.final_test_accuracy = 7, None
    c = depth.conditions(CFG, by)[0]
    assert c.effect == pytest.approx(0.91 + 0.0015 - 0.1) and c.outcome == "reproduced"


@pytest.mark.parametrize(("growth", "outcome"), [(1.5, "reproduced"), (1.0, "not reproduced")])
def test_depth_gradient_ratio_growth_is_the_per_seed_log_slope(growth, outcome):
    by = _depth_by(lambda arm, d, lr, s: 0.9, growth=growth)
    slope = depth.conditions(CFG, by)[-1]
    # ln ratio = ln 2 + (d - 1) ln rate_s + ln(1 + 0.01 s): seed s's slope is ln(rate_s)
    rates = [growth * (1 + 0.002 * (-1) ** s) for s in range(CFG.seeds)]
    iv = stats.t_interval(np.log(rates))
    assert slope.log and slope.threshold == 0.0 and slope.n == CFG.seeds
    assert slope.effect == pytest.approx(iv.mean, abs=1e-9)
    assert slope.ci95 == (pytest.approx(iv.low, abs=1e-9), pytest.approx(iv.high, abs=1e-9))
    assert slope.negligible == (pytest.approx(math.log(0.99)), pytest.approx(math.log(1.01)))
    assert slope.outcome == outcome  # 1.0x per layer: wholly inside the negligible band
    assert depth.log_slope((2, 10, 20), [1.0, None, math.e**18]) == pytest.approx(1.0)


# ---- placement: the rule on constructed results ---------------------------------------------

PCFG = dataclasses.replace(placement.PRESETS["smoke"], lrs=(0.5, 2.5), seeds=4)


def _placement_by(acc, sat):
    by: dict[str, list[TrialResult]] = {}
    for act in PCFG.activations:
        for place in placement.PLACEMENTS:
            for lr in PCFG.lrs:
                rs = []
                for s in range(PCFG.seeds):
                    a = acc(act, place, lr, s)
                    hist = {"step": np.array([0, 60]), "test_acc": np.array([0.1, a])}
                    if act == "sigmoid":
                        v = sat(place, lr, s)
                        hist["saturation"] = np.array([[0.0, 0.0], [v, v + 0.02]])  # 2 layers
                    t = Trial(lr=lr, seed=s, tag=placement.tag(act, place, lr))
                    rs.append(TrialResult(t, hist, None, a))
                by[placement.tag(act, place, lr)] = rs
    return by


@pytest.mark.parametrize(("gap", "outcome"), [(0.003, "reproduced"), (0.02, "not reproduced")])
def test_placement_relu_is_an_equivalence_at_each_best_lr(gap, outcome):
    def acc(act, place, lr, s):  # after's best lr is 2.5, before's 0.5
        best = (lr == 2.5) if place == "after" else (lr == 0.5)
        return (0.95 + 0.001 * s + gap * (place == "after")) if best else 0.6

    by = _placement_by(acc, lambda place, lr, s: 0.1)
    assert placement.best_lr(PCFG, by, "relu", "after") == 2.5
    c = placement.conditions(PCFG, by)[0]
    assert c.direction == 0 and c.threshold == PCFG.equiv_band == 0.01
    assert c.effect == pytest.approx(gap) and c.outcome == outcome


@pytest.mark.parametrize(
    ("after", "jitter", "outcome"),
    [(0.20, 0.0, "reproduced"), (0.05, 0.0, "not reproduced"), (0.102, 0.004, "not reproduced")],
)
def test_placement_sigmoid_saturation_after_minus_before(after, jitter, outcome):
    def sat(place, lr, s):
        if place == "before":
            return 0.10 + 0.003 * s
        return after + 0.003 * s + jitter * (-1) ** s  # jitter: the interval straddles 0

    by = _placement_by(lambda act, place, lr, s: 0.9 + 0.01 * (lr == 0.5), sat)
    c = placement.conditions(PCFG, by)[1]
    # the mean over the two hidden layers (v and v + 0.02): the offsets cancel in the difference
    assert c.effect == pytest.approx(after - 0.10) and c.threshold == 0.0
    assert c.negligible == (-0.01, 0.01)
    if jitter:  # an interval across 0 but wholly inside the +-1% band: negligible
        assert c.ci95[0] < 0 < c.ci95[1] and -0.01 <= c.ci95[0] and c.ci95[1] <= 0.01
    assert c.outcome == outcome


def test_saturation_threshold_is_sigmoid_slope_at_4():
    s = 1 / (1 + math.exp(-4.0))
    assert placement.sigmoid_slope(4.0) == pytest.approx(s * (1 - s))
    t = placement.trials(placement.PRESETS["smoke"])
    sig = [x for x in t if x.model.activation == "sigmoid"]
    assert sig and all(x.probe_options == (("saturation", (("slope", s * (1 - s)),)),) for x in sig)
    assert {x.model.placement for x in t} == {"before", "after"}
    assert all(x.probes == () for x in t if x.model.activation == "relu")


# ---- both smoke presets through the real CLI ------------------------------------------------


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[dict, results.Run]:
    p = subprocess.run(
        cli("run", name, "--preset", "smoke", "--out", str(tmp_path), "--json", *extra),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    return doc, results.load_run(Path(doc["run_dir"]))


def _mean(xs):
    return float(np.mean(xs))


@pytest.mark.slow
def test_depth_smoke_through_the_cli(tmp_path):
    doc, run = _run(tmp_path, "depth")
    cfg = depth.PRESETS["smoke"]
    recs = {}
    for t in run.trials:
        recs.setdefault(t.tag, []).append(t)
    assert len(doc["trials"]) == len(run.trials) == 2 * 2 * 2 * 2  # depths x arms x lrs x seeds
    best = [r for r in doc["rows"] if "bn best lr" in r]
    assert [(r["setting"], r["depth"]) for r in best] == [("relu", 2), ("relu", 4)]
    for row in best:
        d = row["depth"]
        for arm in ("baseline", "bn"):
            # every LR of a seed starts from the same model: the same gradients at step 0
            g0 = {
                lr: {
                    t.seed: t.history["grad_norms"][0] for t in recs[depth.tag("relu", arm, d, lr)]
                }
                for lr in cfg.lrs
            }
            for s in range(cfg.seeds):
                np.testing.assert_allclose(g0[cfg.lrs[0]][s], g0[cfg.lrs[1]][s], rtol=RTOL)
                assert g0[cfg.lrs[0]][s].shape == (d + 1,)
            ratios = [g0[cfg.lrs[0]][s][0] / g0[cfg.lrs[0]][s][d - 1] for s in range(cfg.seeds)]
            assert all(np.isfinite(x) and x > 0 for x in ratios)
            logs = row[f"{arm} log10 grad ratio"]
            assert logs["mean"] == pytest.approx(_mean(np.log10(ratios)), rel=RTOL)
            # the best lr is the one with the highest seed-mean final accuracy (diverged: chance)
            means = {
                lr: _mean(
                    [
                        0.1 if t.diverged_at else t.final_test_accuracy
                        for t in recs[depth.tag("relu", arm, d, lr)]
                    ]
                )
                for lr in cfg.lrs
            }
            assert row[f"{arm} best lr"] == max(means, key=means.get)
    cond = {c["name"]: c for c in doc["verdict"]["conditions"]}
    assert set(cond) == {
        "relu depth 4: best-lr accuracy, BN - baseline",
        "relu: BN's initial gradient ratio, growth per layer",
    }
    slope = cond["relu: BN's initial gradient ratio, growth per layer"]
    per_seed = []
    for s in range(cfg.seeds):
        r = [
            math.log(g[0] / g[d - 1])
            for d in cfg.depths
            for t in recs[depth.tag("relu", "bn", d, cfg.lrs[0])]
            if t.seed == s and (g := t.history["grad_norms"][0]) is not None
        ]
        per_seed.append(np.polyfit(cfg.depths, r, 1)[0])
    assert slope["effect"] == pytest.approx(_mean(per_seed), rel=1e-4) and slope["n"] == 2
    plots = sorted(p.name for p in (Path(doc["run_dir"]) / "plots").glob("*.png"))
    assert {"depth_accuracy.png", "depth_grad_ratio.png"} <= set(plots)


@pytest.mark.slow
def test_placement_smoke_through_the_cli(tmp_path):
    doc, run = _run(tmp_path, "placement")
    recs = {}
    for t in run.trials:
        recs.setdefault(t.tag, []).append(t)
    assert len(run.trials) == 2 * 2 * 2 * 2  # activations x placements x lrs x seeds
    lr_rows = [r for r in doc["rows"] if "lr" in r and "activation" in r]
    for row in lr_rows:
        for place in placement.PLACEMENTS:
            rs = recs[placement.tag(row["activation"], place, row["lr"])]
            acc = [t.final_test_accuracy for t in rs if t.diverged_at is None]
            assert row[f"{place} final acc"]["mean"] == pytest.approx(_mean(acc), rel=RTOL)
            if row["activation"] == "sigmoid":
                sat = [float(np.mean(t.history["saturation"][-1])) for t in rs]
                assert all(0 <= v <= 1 for v in sat)
                assert row[f"{place} saturated end"] == pytest.approx(_mean(sat), rel=RTOL)
            else:
                assert row[f"{place} saturated end"] is None
                assert all("saturation" not in t.history for t in rs)
    names = [c["name"] for c in doc["verdict"]["conditions"]]
    assert names == [
        "relu: best-lr accuracy, after - before",
        "sigmoid: saturated fraction (|z| > 4) at the end, after - before",
    ]
    assert doc["verdict"]["conditions"][0]["direction"] == 0
    assert {"placement_accuracy.png", "placement_saturation.png"} <= {
        p.name for p in (Path(doc["run_dir"]) / "plots").glob("*.png")
    }


def test_panels_vs_draws_every_setting_and_skips_nonpositive_on_a_log_axis(tmp_path):
    from bnexp import plots

    ratios = np.array([[1.0, 10.0, 100.0], [2.0, np.nan, -1.0]])  # a missing and a negative value
    panels = {"sigmoid": {"baseline": ratios, "bn": ratios * 3}, "relu": {"bn": ratios[0]}}
    path = plots.versus_depth(
        [2, 10, 20],
        panels,
        tmp_path / "r.png",
        ylabel="ratio",
        title="t",
        log_y=True,
        reference=1.0,
    )
    assert path.is_file() and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="expected shape"):
        plots.versus_depth([2, 10], panels, tmp_path / "bad.png", ylabel="r", title="t")
