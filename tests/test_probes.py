"""Santurkar et al. probes (bnexp.santurkar_probes) against closed forms, and their contract with the engine:
fixed shapes, run inside the sweep, training untouched."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import metrics, models, norms, probes, train
from bnexp import santurkar_probes as santurkar
from bnexp.models import ModelSpec
from bnexp.sweep import Trial, run_sweep

F32 = np.finfo(np.float32).eps
RTOL = 1e-5  # float32 precision (STYLE.md); never loosened to pass


def f32(a) -> np.ndarray:
    """a rounded to float32, back in float64: the exact inputs the JAX code sees."""
    return np.asarray(a, np.float32).astype(np.float64)


# ---- landscape: quadratic L(theta) = 1/2 theta^T H theta - b^T theta ------------------------


def _quadratic(n: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    h = f32(q @ np.diag(np.linspace(0.5, 2.0, n)) @ q.T)
    h = f32((h + h.T) / 2)
    return h, f32(rng.normal(size=n)), f32(rng.normal(size=n))


def _tree(v):  # a pytree of two differently shaped leaves, to exercise the tree arithmetic
    return {"a": v[:4], "b": v[4:].reshape(1, 2)}


def _flat(t):
    return jnp.concatenate([t["a"], t["b"].reshape(-1)])


def test_landscape_matches_the_quadratic_closed_form():
    h, b, theta = _quadratic()
    hj, bj = jnp.asarray(h, jnp.float32), jnp.asarray(b, jnp.float32)

    def loss(t):
        v = _flat(t)
        return 0.5 * v @ hj @ v - bj @ v

    vg = jax.value_and_grad(loss)
    t = _tree(jnp.asarray(theta, jnp.float32))
    _, g = vg(t)
    etas = f32(0.1 * np.linspace(0.5, 4.0, 8))
    r = jax.jit(santurkar.landscape, static_argnums=0)(vg, t, g, jnp.asarray(etas, jnp.float32))

    g64 = h @ theta - b
    quad = 0.5 * theta @ h @ theta - b @ theta
    losses = quad - etas * (g64 @ g64) + 0.5 * etas**2 * (g64 @ h @ g64)  # exact along -g
    diffs = etas * np.linalg.norm(h @ g64)  # grad(theta) - grad(theta - eta g) = eta H g
    beta = np.linalg.norm(h @ g64) / np.linalg.norm(g64)  # the same for every eta
    # the loss crosses 0 on this grid: its float32 error is relative to the terms' size (~6)
    tol = dict(rtol=RTOL, atol=RTOL * np.abs(losses).max())
    np.testing.assert_allclose(r["loss"], losses, **tol)
    np.testing.assert_allclose(r["loss_band"], [losses.min(), losses.max()], **tol)
    np.testing.assert_allclose(r["grad_diff"], diffs, rtol=RTOL)
    np.testing.assert_allclose(r["grad_pred_band"], [diffs.min(), diffs.max()], rtol=RTOL)
    np.testing.assert_allclose(
        np.asarray(r["grad_diff"]) / (etas * np.linalg.norm(g64)), beta, rtol=RTOL
    )
    np.testing.assert_allclose(r["beta_smooth"], beta, rtol=RTOL)
    np.testing.assert_allclose(r["grad_norm"], np.linalg.norm(g64), rtol=RTOL)
    # no scale factors: the scale-free beta is the raw one
    np.testing.assert_allclose(r["beta_relative"], r["beta_smooth"], rtol=RTOL)


def test_scale_free_beta_is_unchanged_by_the_scale_of_a_scale_invariant_weight():
    """L(w) = 1/2 ||A w/||w|| - c||^2 sees w only through its direction. At a*w with steps
    a^2 * eta the probe walks the path a * (w - eta g) (the gradient there is g / a), so the
    scale-free beta (D = ||w||) is the same exactly, while the raw beta falls as 1 / a^2: the
    confound of the raw beta of BN's weights, whose norm grows in training."""
    rng = np.random.default_rng(3)
    a_mat, c = jnp.asarray(f32(rng.normal(size=(5, 6)))), jnp.asarray(f32(rng.normal(size=5)))

    def loss(t):
        return 0.5 * jnp.sum((a_mat @ (t["w"] / jnp.linalg.norm(t["w"])) - c) ** 2)

    vg = jax.value_and_grad(loss)
    w0 = 3.0 * f32(rng.normal(size=6))
    etas = np.linspace(0.05, 0.4, 8)
    sf, raw = {}, {}
    for a in (1.0, 8.0):  # a power of 2: a * w0 is exact in float32
        t = {"w": jnp.asarray(a * w0, jnp.float32)}
        _, g = vg(t)
        scale = {"w": jnp.linalg.norm(t["w"])}
        r = santurkar.landscape(vg, t, g, jnp.asarray(a * a * etas, jnp.float32), scale)
        sf[a], raw[a] = float(r["beta_relative"]), float(r["beta_smooth"])
    np.testing.assert_allclose(sf[8.0], sf[1.0], rtol=RTOL)
    np.testing.assert_allclose(raw[8.0], raw[1.0] / 64.0, rtol=RTOL)
    # at ||w|| ~ 7 the two differ by ||w||^2 (the step and the gradient change both rescaled)
    np.testing.assert_allclose(sf[1.0], raw[1.0] * float(np.sum(w0**2)), rtol=RTOL)


def test_layer_scales_are_the_hidden_weights_norms_in_every_arm():
    for norm in ("batch", "none"):
        spec = ModelSpec(widths=(8, 6, 5, 3), norm=norm)
        params, _ = models.init(jax.random.key(0), spec)
        d = santurkar.layer_scales(params)
        assert jax.tree.structure(d) == jax.tree.structure(params)
        for layer, p in zip(d["hidden"], params["hidden"], strict=True):
            np.testing.assert_allclose(layer["w"], np.linalg.norm(np.asarray(p["w"])), rtol=RTOL)
            others = [v for k, v in layer.items() if k != "w"]
            assert all(float(v) == 1.0 for v in jax.tree.leaves(others))
        assert all(float(v) == 1.0 for v in jax.tree.leaves(d["out"]))  # the output layer: 1


# ---- ICS: a deep linear network, gradients by hand ----------------------------------------


def _linear_net(seed: int = 1):
    rng = np.random.default_rng(seed)
    ws = [f32(rng.normal(size=s) * 0.7) for s in ((3, 4), (3, 3), (2, 3))]  # W1, W2, W3
    return ws, f32(rng.normal(size=(4, 16))), f32(rng.normal(size=(2, 16)))


def _linear_grads(ws, x, y):
    """Gradients of L = 1/(2N) ||W3 W2 W1 X - Y||_F^2 w.r.t. W1, W2, W3 (float64, by hand)."""
    w1, w2, w3 = ws
    r = (w3 @ w2 @ w1 @ x - y) / x.shape[1]
    return [(w3 @ w2).T @ r @ x.T, w3.T @ r @ (w1 @ x).T, r @ (w2 @ w1 @ x).T]


def test_ics_matches_the_deep_linear_closed_form():
    ws, x, y = _linear_net()
    lr = 0.1
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

    def loss(layers):
        w1, w2, w3 = (lay["w"] for lay in layers)
        return 0.5 * jnp.sum((w3 @ w2 @ w1 @ xj - yj) ** 2) / x.shape[1]

    layers = [{"w": jnp.asarray(w, jnp.float32), "extra": jnp.ones(2)} for w in ws]
    r = jax.jit(lambda ls: santurkar.ics(jax.grad(loss), ls, lr, measure=lambda t: t["w"]))(layers)

    g = _linear_grads(ws, x, y)
    want_norm, want_cos = [0.0], [1.0]
    for i in (1, 2):  # layers 1..i-1 (0-based: < i) take their SGD step
        moved = [w - lr * gw if j < i else w for j, (w, gw) in enumerate(zip(ws, g, strict=True))]
        g2 = _linear_grads(moved, x, y)[i]
        want_norm.append(np.linalg.norm(g[i] - g2))
        want_cos.append(np.sum(g[i] * g2) / (np.linalg.norm(g[i]) * np.linalg.norm(g2)))
    scale = np.array([np.linalg.norm(gi) for gi in g])
    np.testing.assert_allclose(r["norm"], want_norm, rtol=RTOL, atol=(10 * F32 * scale).max())
    np.testing.assert_allclose(r["cos"], want_cos, rtol=RTOL)
    np.testing.assert_allclose(r["grad_norm"], scale, rtol=RTOL)
    # layer 1: nothing before it moves, so G' = G exactly; the others really shift
    assert float(r["norm"][0]) == 0.0 and float(r["cos"][0]) == 1.0
    assert np.all(np.asarray(r["norm"][1:]) > 1e-3)


# ---- a small model and the registry adapters ---------------------------------------------------

SPEC = ModelSpec(widths=(8, 6, 5, 3), norm="batch", norm_options=(("eps", 0.0),))


def _model(spec: ModelSpec = SPEC, n: int = 24, seed: int = 0):
    params, state = models.init(jax.random.key(seed), spec)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, spec.widths[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, spec.widths[-1], n), jnp.int32)
    return params, state, (x, y)


def _hp(lr: float = 0.3) -> dict:
    return {
        "lr": jnp.float32(lr),
        "momentum": jnp.float32(0.9),
        "init_scale": jnp.float32(1.0),
        "seed": jnp.int32(0),
        "step": jnp.int32(0),
        "norm_call": {},
        "key": jax.random.key(7),
    }


def _probe(name: str, spec: ModelSpec = SPEC, options=(), **kw) -> dict[str, np.ndarray]:
    params, state, batch = _model(spec)
    hp = _hp(**kw)

    def loss_fn(p, s, x, y, *, mode="train", key=None, norm_call=None):
        return train.loss_fn(
            p,
            s,
            x,
            y,
            spec,
            mode=mode,
            key=hp["key"] if key is None else key,
            norm_call=hp["norm_call"] if norm_call is None else norm_call,
        )

    out = jax.jit(lambda p, s: probes.get(name, options)(spec, p, s, batch, hp, loss_fn))(
        params, state
    )
    return jax.tree.map(np.asarray, out)


def test_ics_adapter_layers_and_the_step_of_earlier_layers():
    out = _probe("ics")
    assert {k: v.shape for k, v in out.items()} == {
        k: (3,) for k in ("ics_norm", "ics_cos", "ics_grad_norm")
    }
    assert out["ics_norm"][0] == 0.0 and out["ics_cos"][0] == 1.0
    # layer 2 by hand: all of layer 1's parameters (w and the BN scale/bias) take lr * G
    params, state, (x, y) = _model()

    def loss(p):
        return train.loss_fn(p, state, x, y, SPEC, mode="train")[0]

    @jax.jit
    def by_hand(params):
        g = jax.grad(loss)(params)
        moved = {
            **params,
            "hidden": [
                jax.tree.map(lambda p, d: p - 0.3 * d, params["hidden"][0], g["hidden"][0]),
                params["hidden"][1],
            ],
        }
        g2 = jax.grad(loss)(moved)
        return (
            jnp.linalg.norm(g["hidden"][1]["w"] - g2["hidden"][1]["w"]),
            jnp.linalg.norm(g["hidden"][1]["w"]),
        )

    want, g_norm = by_hand(params)
    # G - G' cancels: its float32 error is relative to ||G||
    np.testing.assert_allclose(out["ics_norm"][1], want, rtol=RTOL, atol=10 * F32 * g_norm)
    np.testing.assert_allclose(out["ics_grad_norm"][1], g_norm, rtol=RTOL)


# ---- scale invariance ------------------------------------------------------------------------


def _bn_layer(eps: float, seed: int = 2):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(32, 10)) + 0.5, jnp.float32)
    w = jnp.asarray(rng.normal(size=(10, 6)) * 0.3, jnp.float32)
    cot = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)  # a fixed dL/d(out)
    bn = norms.batch_norm(eps=eps)
    p, s = bn.init(6)

    def fn(w, eps_scale: float = 1.0):
        out, _ = norms.batch_norm(eps=eps * eps_scale).apply(p, s, x @ w, mode="train")
        return jnp.sum(out * cot), out

    return fn, w


SCALES = (0.1, 0.5, 2.0, 10.0)


def test_bn_scale_invariance_holds_to_float32_precision():
    fn, w = _bn_layer(eps=0.0)
    r = jax.tree.map(np.asarray, santurkar.scale_invariance(fn, w, jnp.asarray(SCALES)))
    assert np.all(r["out_diff"] <= RTOL)
    np.testing.assert_allclose(r["grad_ratio"], 1 / np.asarray(SCALES), rtol=RTOL)
    assert np.all(r["grad_err"] <= RTOL)


def test_with_eps_the_identity_is_bn_eps_over_a_squared():
    """BN_eps(aWu) = BN_{eps/a^2}(Wu): exact, so the eps > 0 output change is eps's, not noise."""
    fn, w = _bn_layer(eps=1e-2)
    for a in SCALES:
        np.testing.assert_allclose(fn(a * w)[1], fn(w, 1 / a**2)[1], rtol=RTOL, atol=RTOL)
    r = santurkar.scale_invariance(fn, w, jnp.asarray(SCALES))
    assert float(r["out_diff"][0]) > 100 * RTOL  # a = 0.1 moves the output measurably


def test_without_a_norm_the_output_scales_with_a():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    r = santurkar.scale_invariance(lambda w: (jnp.sum(x @ w), x @ w), w, jnp.asarray(SCALES))
    np.testing.assert_allclose(r["out_diff"], np.abs(np.asarray(SCALES) - 1), rtol=RTOL)
    np.testing.assert_allclose(r["grad_ratio"], 1.0, rtol=RTOL)  # a linear loss: not 1/a


def test_scale_invariance_adapter_on_a_bn_mlp():
    out = _probe("scale_invariance")
    assert {k: v.shape for k, v in out.items()} == {
        k: (2, len(santurkar.SCALES)) for k in ("si_out_diff", "si_grad_ratio", "si_grad_err")
    }
    assert np.all(out["si_out_diff"] <= RTOL)
    np.testing.assert_allclose(out["si_grad_ratio"] * np.asarray(santurkar.SCALES), 1.0, atol=1e-4)


def test_configured_landscape_grid_is_an_option_of_the_trial():
    """The step-size grid travels as probe options (like norm_options); nothing registers."""
    before = dict(probes.PROBES)
    grid = (("lo", 0.5), ("hi", 2.0), ("num", 3))
    assert probes.specs(("landscape",), (("landscape", grid),)) == (("landscape", grid),)
    out = _probe("landscape", options=grid, lr=0.2)
    assert probes.PROBES == before
    assert out["landscape_loss"].shape == (3,) and out["loss_band"].shape == (2,)
    np.testing.assert_allclose(
        out["loss_band"], [out["landscape_loss"].min(), out["landscape_loss"].max()]
    )
    beta = out["landscape_grad_diff"] / (
        0.2 * np.linspace(0.5, 2.0, 3) * out["landscape_grad_norm"]
    )
    np.testing.assert_allclose(out["beta_smooth"], beta.max(), rtol=RTOL)
    with pytest.raises(ValueError):
        probes.register("landscape", probes.PROBES["landscape"])  # a duplicate name
    with pytest.raises(ValueError, match="bad options"):
        probes.check(("landscape",), (("landscape", (("width", 3),)),))
    with pytest.raises(ValueError, match="at most once"):  # options for a probe not requested
        probes.specs(("ics",), (("landscape", grid),))


# ---- in the engine: shapes, and training untouched -----------------------------------------

ALL = ("ics", "landscape", "scale_invariance")


@pytest.fixture(scope="module")
def engine_runs():
    """One noisy-BN MLP (randomness in every step and probe) trained with and without the probes;
    two members (different learning rates) so the probes run vmapped."""
    spec = ModelSpec(widths=(32, 16, 16, 10), norm="noisy", norm_options=(("eps", 0.0),))
    base = dict(model=spec, dataset="synthetic", steps=20, eval_every=10, probe_batch_size=60)
    trials = [Trial(lr=lr, probes=p, **base) for p in ((), ALL) for lr in (0.1, 0.5)]
    return run_sweep(trials)


def test_probes_leave_the_training_trajectory_bitwise_unchanged(engine_runs):
    plain, probed = engine_runs[:2], engine_runs[2:]
    for a, b in zip(plain, probed, strict=True):
        for k in ("test_acc", "test_loss", "train_loss", "test_acc_batch"):
            np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)


def test_probe_outputs_in_the_history(engine_runs):
    h = engine_runs[2].history
    e = len(h["step"])
    shapes = {
        "ics_norm": (e, 3),
        "ics_cos": (e, 3),
        "loss_band": (e, 2),
        "grad_pred_band": (e, 2),
        "beta_smooth": (e,),
        "beta_relative": (e,),
        "landscape_loss": (e, 8),
        "si_out_diff": (e, 2, 4),
        "si_grad_ratio": (e, 2, 4),
    }
    for k, s in shapes.items():
        assert h[k].shape == s, k
        assert np.all(np.isfinite(h[k])), k
    assert np.all(h["ics_norm"][:, 0] == 0) and np.all(h["ics_norm"][:, 1:] > 0)
    np.testing.assert_allclose(h["loss_band"][:, 0], h["landscape_loss"].min(axis=1))
    # noisy BN: the noise follows the normalization, so the layer stays scale invariant
    assert np.all(h["si_out_diff"] <= RTOL)
    # each member's own learning rate sets its step sizes: different members, different bands
    assert not np.allclose(h["grad_pred_band"], engine_runs[3].history["grad_pred_band"])


# ---- metrics helpers ----------------------------------------------------------------------


def test_series_summary_and_band_width():
    s = metrics.series_summary([[1.0, 3.0, np.nan], [3.0, 5.0, np.nan]])
    assert (s.mean, s.median, s.min, s.max, s.last, s.points) == (3.0, 3.0, 2.0, 4.0, 4.0, 2)
    assert metrics.series_summary([np.nan, np.nan]).mean is None
    np.testing.assert_array_equal(metrics.band_width([[1.0, 3.0], [0.5, 0.5]]), [2.0, 0.0])
    with pytest.raises(ValueError):
        metrics.band_width([1.0, 2.0, 3.0])


# ---- train/eval gap: per-batch statistics against a NumPy forward ----------------------------


def _bn_mlp_numpy(params, state, x, *, batch: int | None, eps: float = 1e-5) -> np.ndarray:
    """Logits of a one-hidden-layer BN-before-ReLU MLP: batch statistics over consecutive
    batches of ``batch`` rows (biased variance), or running statistics (batch None)."""
    (hid,), out = params["hidden"], params["out"]
    z = x @ f32(hid["w"])
    if batch is None:
        mu, var = f32(state["hidden"][0]["mean"]), f32(state["hidden"][0]["var"])
    else:
        zb = z.reshape(-1, batch, z.shape[-1])
        mu = np.repeat(zb.mean(1), batch, 0)
        var = np.repeat(zb.var(1), batch, 0)
    y = (z - mu) / np.sqrt(var + eps) * f32(hid["norm"]["scale"]) + f32(hid["norm"]["bias"])
    return np.maximum(y, 0.0) @ f32(out["w"]) + f32(out["b"])


def _gap_inputs(norm: str, b: int, n: int = 25, seed: int = 3):
    spec = ModelSpec(widths=(5, 6, 3), activation="relu", norm=norm, init_std=0.8)
    params, state = models.init(jax.random.key(seed), spec, 1.0)
    rng = np.random.default_rng(seed)
    if state["hidden"][0]:  # running statistics far from any batch's: a visible gap
        state = {**state, "hidden": [{**state["hidden"][0], "mean": jnp.full(6, 0.7)}]}
    x = f32(rng.normal(size=(n, 5)))
    y = rng.integers(0, 3, n).astype(np.int32)
    hp = {"batch_size": b, "norm_call": {}, "key": jax.random.key(0)}

    def loss_fn(p, s, xx, yy, *, mode="train", key=None, norm_call=None):
        return train.loss_fn(p, s, xx, yy, spec, mode=mode, key=key, norm_call=norm_call)

    batch = (jnp.asarray(x, jnp.float32), jnp.asarray(y))
    return spec, params, state, x, y, hp, batch, loss_fn


@pytest.mark.parametrize("b", [2, 4, 25])
def test_train_eval_gap_probe_matches_per_batch_statistics(b):
    spec, params, state, x, y, hp, batch, loss_fn = _gap_inputs("batch", b)
    out = jax.jit(lambda p, s: probes.get("train_eval_gap")(spec, p, s, batch, hp, loss_fn))(
        params, state
    )
    m = (len(y) // b) * b  # a partial last batch is dropped, from both modes
    want_batch = (_bn_mlp_numpy(params, state, x[:m], batch=b).argmax(-1) == y[:m]).mean()
    want_eval = (_bn_mlp_numpy(params, state, x[:m], batch=None).argmax(-1) == y[:m]).mean()
    np.testing.assert_allclose(out["train_acc_batch"], want_batch, rtol=RTOL)
    np.testing.assert_allclose(out["train_acc_eval"], want_eval, rtol=RTOL)
    if b == 2:  # the construction makes the two modes differ (not a property of every b)
        assert want_batch != want_eval


def test_train_eval_gap_is_zero_without_batch_statistics():
    for norm in ("none", "layer"):
        spec, params, state, _, _, hp, batch, loss_fn = _gap_inputs(norm, 4)
        out = probes.get("train_eval_gap")(spec, params, state, batch, hp, loss_fn)
        assert float(out["train_acc_batch"]) == float(out["train_acc_eval"])


def test_train_eval_gap_probe_sees_the_trials_batch_size():
    spec = ModelSpec(widths=(32, 16, 10), norm="batch")
    base = dict(model=spec, dataset="synthetic", steps=6, eval_every=3, probe_batch_size=40)
    runs = run_sweep([Trial(batch_size=b, probes=("train_eval_gap",), **base) for b in (2, 40)])
    for r in runs:
        h = r.history
        assert h["train_acc_batch"].shape == h["step"].shape
        assert np.all(np.isfinite(h["train_acc_batch"])) and np.all(
            np.isfinite(h["train_acc_eval"])
        )
    # one batch of all 40 probe images vs 20 batches of 2: different statistics, different accuracy
    assert not np.array_equal(
        runs[0].history["train_acc_batch"], runs[1].history["train_acc_batch"]
    )
