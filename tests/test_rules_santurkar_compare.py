"""Rules of compare, lr-sweep, landscape and ics on constructed results with a known answer, and
their config options (compare's binary images, ics's deep linear setting)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bnexp.sweep import Trial, TrialResult
from experiments import compare, lr_sweep
from experiments.base import ConfigError

STEPS = np.array([0, 1, 2, 3, 4, 6, 8, 10, 13, 18, 24, 32, 42, 56, 75, 100, 200, 300])


def _result(seed, acc, tag, diverged_at=None, lr=0.5):
    acc = np.asarray(acc, np.float64)
    final = None if diverged_at is not None else float(acc[-1])
    hist = {"step": STEPS[: acc.size], "test_acc": acc}
    return TrialResult(Trial(seed=seed, tag=tag, lr=lr), hist, diverged_at, final)


def test_compare_binarize_reaches_the_data_pipeline_and_needs_images():
    cfg = dataclasses.replace(compare.PRESETS["quick"], binarize=True, seeds=2)
    assert compare.data_options(cfg) == (("binarize", True),)
    assert compare.data_options(compare.PRESETS["quick"]) == ()
    smoke = compare.PRESETS["smoke"]
    ts = compare.trials(dataclasses.replace(smoke, seeds=2))
    assert {t.data_options for t in ts} == {()}
    with pytest.raises(ConfigError, match="binarize needs an image dataset"):
        compare.validate(dataclasses.replace(smoke, binarize=True))


def test_compare_quick_targets_sit_below_its_plateau():
    # the quick run ends at ~95.8-95.9% (full MNIST, 3,000 steps): every target below it
    assert max(compare.PRESETS["quick"].targets) <= 0.94
    assert max(compare.PRESETS["paper"].targets) < 0.977  # the reproduction's baseline end


def test_compare_final_accuracy_is_a_paired_difference():
    base = [_result(s, [0.1, 0.5, 0.6, 0.95 + 0.01 * s], "baseline") for s in range(4)]
    bn = [_result(s, [0.1, 0.5, 0.9, 0.952 + 0.01 * s], "bn") for s in range(4)]
    cfg = dataclasses.replace(compare.PRESETS["smoke"], targets=(0.8,))
    speed, final = compare.conditions(cfg, {"baseline": base, "bn": bn})
    assert final.effect == pytest.approx(0.002, abs=1e-6)
    assert final.ci95[0] == pytest.approx(0.002, abs=1e-6)  # identical per-seed differences
    assert final.outcome == "reproduced"
    # BN crosses 80% in (1, 2], the baseline in (2, 3]: log speedup in [log(2/2), log(3/1)]
    assert speed.effect == pytest.approx(np.log(3.0) / 2)
    assert speed.ci95 == (pytest.approx(0.0), pytest.approx(np.log(3.0)))


@pytest.mark.parametrize(("gap", "outcome"), [(0.004, "reproduced"), (0.02, "not reproduced")])
def test_lr_sweep_close_at_the_smallest_lr_is_a_paired_equivalence(gap, outcome):
    cfg = dataclasses.replace(lr_sweep.PRESETS["smoke"], lrs=(0.01,), target=0.99)
    by = {
        "baseline@0.01": [_result(s, [0.1, 0.9 + 0.01 * s], "baseline@0.01") for s in range(4)],
        "bn@0.01": [_result(s, [0.1, 0.9 + 0.01 * s + gap], "bn@0.01") for s in range(4)],
    }
    close = lr_sweep.conditions(cfg, by, {"baseline": None, "bn": None})[-1]
    assert cfg.close_tol == 0.01 and close.direction == 0 and close.threshold == 0.01
    assert close.effect == pytest.approx(gap, abs=1e-6)
    assert close.outcome == outcome


def test_lr_sweep_close_tol_must_be_a_positive_band():
    with pytest.raises(ConfigError, match="close_tol"):
        lr_sweep.validate(dataclasses.replace(lr_sweep.PRESETS["smoke"], close_tol=0.0))


def _landscape(seed, tag, beta, width=0.5, grad=1.0):
    """A constructed landscape history: beta over the points, constant bands."""
    beta = np.asarray(beta, np.float64)
    e = beta.size
    hist = {
        "step": STEPS[:e],
        "test_acc": np.full(e, 0.9),
        "beta_relative": beta,
        "beta_smooth": beta / 100.0,  # reported, not judged: any scale
        "loss_band": np.stack([np.zeros(e), np.full(e, width)], -1),
        "grad_pred_band": np.stack([np.zeros(e), np.full(e, grad)], -1),
    }
    return TrialResult(Trial(seed=seed, tag=tag), hist, None, 0.9)


def test_landscape_judges_peaks_and_the_spread_of_log_beta():
    from experiments import landscape

    assert landscape.peak(np.array([1.0, 5.0, 2.0])) == 5.0
    assert landscape.log_spread(np.array([1.0, np.e, np.e**2])) == pytest.approx(1.0)  # sd of 0,1,2
    assert landscape.log_spread(np.array([3.0])) is None
    # baseline swings (beta 1 <-> e^2: log sd 1 x k), BN flat at 1.5 with a small wiggle
    base = [_landscape(s, "baseline", [1, np.e**2, 1, np.e**2], 1.0, 4.0) for s in range(4)]
    bn = [
        _landscape(s, "bn", [1.5, 1.5 * (1 + 0.01 * (s + 1)), 1.5, 1.5], 0.5, 1.0) for s in range(4)
    ]
    cfg = landscape.PRESETS["smoke"]
    width, grad, peak, spread = landscape.conditions(cfg, {"baseline": base, "bn": bn})
    assert width.effect == pytest.approx(np.log(0.5)) and width.outcome == "reproduced"
    assert grad.effect == pytest.approx(np.log(0.25)) and grad.outcome == "reproduced"
    want = np.mean([np.log(1.5 * (1 + 0.01 * (s + 1)) / np.e**2) for s in range(4)])
    assert peak.effect == pytest.approx(want) and peak.outcome == "reproduced"
    assert spread.direction == -1 and spread.outcome == "reproduced"
    # a flat baseline and a swinging BN: the spread condition is not reproduced
    _, _, _, rev = landscape.conditions(cfg, {"baseline": bn, "bn": base})
    assert rev.outcome == "not reproduced"
    # beta is judged in relative units: a raw beta that says the opposite changes nothing
    for r in bn:
        r.history["beta_smooth"] = 1e3 * np.asarray([1, np.e**2, 1, np.e**2], np.float64)
    again = landscape.conditions(cfg, {"baseline": base, "bn": bn})
    assert [c.outcome for c in again] == ["reproduced"] * 4
    assert again[2].effect == pytest.approx(want)
    rows = landscape.analyze(cfg, base + bn).tables[0].rows
    assert [r["measure"] for r in rows][-2:] == [
        "raw beta, peak over training",
        "raw beta, spread over training",
    ]
    assert rows[-2]["bn"] == pytest.approx(1e3 * np.e**2)  # reported as measured


def test_landscape_step_grid_is_absolute():
    from experiments import landscape

    q = landscape.PRESETS["quick"]
    assert (q.step_min, q.step_max) == (0.05, 0.4)  # the paper's range, whatever the lr
    assert landscape.probe_options(q) == (("lo", 0.05 / q.lr), ("hi", 0.4 / q.lr), ("num", 8))
    paper = landscape.probe_options(landscape.PRESETS["paper"])  # 0.5..4 x lr 0.1
    assert paper == (("lo", pytest.approx(0.5)), ("hi", pytest.approx(4.0)), ("num", 8))


def test_squared_error_loss_and_evaluation_of_a_linear_model_without_bias():
    import jax
    import jax.numpy as jnp

    from bnexp import models, train

    spec = models.ModelSpec(kind="linear", widths=(3, 3, 3), norm="none", bias=False, loss="mse")
    params, state = models.init(jax.random.key(0), spec)
    assert "b" not in params["out"] and all("b" not in p for p in params["hidden"])
    params = {**params, "hidden": [{**params["hidden"][0], "w": 2 * jnp.eye(3)}]}
    params["out"] = {"w": jnp.eye(3)}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3)).astype(np.float32)
    y = rng.standard_normal((7, 3)).astype(np.float32)
    want = np.mean(np.sum((2 * x - y) ** 2, axis=1))
    loss, _ = train.loss_fn(params, state, jnp.asarray(x), jnp.asarray(y), spec)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    acc, test_loss = train.evaluate(params, state, jnp.asarray(x), jnp.asarray(y), spec)
    assert np.isnan(float(acc))  # a regression has no accuracy
    np.testing.assert_allclose(float(test_loss), want, rtol=1e-5)
    _, batch_loss = train.evaluate(
        params, state, jnp.asarray(x), jnp.asarray(y), spec, mode="batch", batch_size=3
    )
    np.testing.assert_allclose(float(batch_loss), np.mean(np.sum((2 * x - y) ** 2, 1)[:6]), 1e-5)
    with pytest.raises(ValueError, match="loss"):
        models.ModelSpec(loss="hinge")


def test_synthetic_linear_regression_targets_are_a_x():
    from bnexp import data

    d = data.load("synthetic", task="linear", dim=10, n_train=50, n_test=20, noise=0.0, seed=3)
    assert d.y_train.dtype == np.float32 and d.y_train.shape == (50, 10) and d.num_classes == 10
    a, *_ = np.linalg.lstsq(d.x_train.astype(np.float64), d.y_train.astype(np.float64), rcond=None)
    np.testing.assert_allclose(d.x_test @ a, d.y_test, rtol=1e-4, atol=1e-4)  # one A for both


def test_ics_deep_linear_setting_builds_santurkars_network():
    from experiments import ics

    cfg = dataclasses.replace(ics.PRESETS["smoke"], setting="deep-linear", seeds=2)
    ics.validate(cfg)
    ts = ics.trials(cfg)
    assert len(ts) == 4 and {t.tag for t in ts} == {"baseline", "bn"}
    t = ts[0]
    assert t.model.kind == "linear" and t.model.widths == (10,) * 26  # 25 weight layers
    assert not t.model.bias and t.model.loss == "mse"
    assert t.batch_size == cfg.n_examples and t.lr == 1e-7 and t.optimizer == "sgd"
    assert dict(t.data_options)["task"] == "linear"
    assert ics.trials(dataclasses.replace(cfg, deep_lr=1e-6))[0].lr == pytest.approx(1e-6)
    assert ics._layer_names(25, cfg)[-1] == "layer 25 (output)"
    with pytest.raises(ConfigError, match="setting"):
        ics.validate(dataclasses.replace(cfg, setting="vgg"))
