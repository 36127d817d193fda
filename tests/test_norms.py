"""Batch norm against NORMS.md: golden case, NumPy closed form, PyTorch golden files, invariants,
and a regression test for each known failure of other frameworks."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import norms

GOLDEN = pathlib.Path(__file__).parent / "golden"
RTOL = 1e-5  # float32; never loosened to pass


def assert_close(actual, expected, rtol: float = RTOL) -> None:
    """Elementwise relative error <= rtol; entries far below the array's scale (e.g. a normalized
    value that is ~0) are judged against rtol * 1e-1 * max|expected| instead of their own size."""
    expected = np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=rtol, atol=0.1 * rtol * scale
    )


def loss_grads(norm, **static):
    """Jitted (params, state, x, g) -> y, new_state, d(sum(g * y)) / d(x, params).

    Tests jit what they run: eager op-by-op dispatch (and its per-op compiles) is ~5x slower."""

    def loss(x, params, state, g):
        y, new_state = norm.apply(params, state, x, **static)
        return jnp.sum(y * g), (y, new_state)

    @jax.jit
    def run(params, state, x, g):
        grad_fn = jax.value_and_grad(loss, (0, 1), has_aux=True)
        (_, (y, new_state)), (dx, dp) = grad_fn(x, params, state, g)
        return y, new_state, dx, dp

    return run


def train_then_eval(norm):
    """One compiled program: a scan of training steps, then eval, all with gradients.

    (params, state, xs, gs, x_eval, g_eval) -> (per-step (y, state, dx, dparams) stacked,
    eval (y, state, dx, dparams)); fewer, larger programs keep the test suite's compile time low.
    """
    train = loss_grads(norm, mode="train").__wrapped__
    evaluate = loss_grads(norm, mode="eval").__wrapped__

    @jax.jit
    def run(params, state, xs, gs, x_eval, g_eval):
        def body(state, xg):
            y, new_state, dx, dp = train(params, state, *xg)
            return new_state, (y, new_state, dx, dp)

        state, steps = jax.lax.scan(body, state, (xs, gs))
        return steps, evaluate(params, state, x_eval, g_eval)

    return run


def jit_apply(norm, **static):
    """Jitted (params, state, x, **traced) -> (y, new_state); `static` holds mode etc."""
    return jax.jit(
        lambda params, state, x, **traced: norm.apply(params, state, x, **static, **traced)
    )


# ---------------------------------------------------------------- NumPy closed form (float64)


def np_normalize(x, mean, var, w, b, eps):
    return w * (x - mean) / np.sqrt(var + eps) + b


def np_bn_grads(x, g, w, eps):
    """Closed-form BN backward (Ioffe & Szegedy Sec. 3) for y = w * xhat + b, batch statistics."""
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    xhat = (x - mean) / np.sqrt(var + eps)
    gh = g * w
    dx = (gh - gh.mean(axes) - xhat * (gh * xhat).mean(axes)) / np.sqrt(var + eps)
    return dx, (g * xhat).sum(axes), g.sum(axes)


def np_running(mean, var, x, rate, count, unbiased):
    axes = tuple(range(x.ndim - 1))
    m = np.prod([x.shape[a] for a in axes])
    bm, bv = x.mean(axes), x.var(axes) * (m / (m - 1) if unbiased else 1.0)
    w = 1.0 / (count + 1) if rate is None else rate
    return (1 - w) * mean + w * bm, (1 - w) * var + w * bv


def random_params(rng, c):
    return {
        "scale": jnp.asarray(1.0 + 0.5 * rng.standard_normal(c), jnp.float32),
        "bias": jnp.asarray(0.5 * rng.standard_normal(c), jnp.float32),
    }


# ---------------------------------------------------------------- registry and contract


def test_registry_names_and_factories():
    assert norms.names() == [
        "batch",
        "group",
        "layer",
        "instance",
        "renorm",
        "ghost",
        "noisy",
        "decorrelated",
        "none",
    ]
    built = {
        "batch": norms.get("batch"),
        "group": norms.get("group", groups=2),
        "layer": norms.get("layer"),
        "instance": norms.get("instance"),
        "renorm": norms.get("renorm", r_max=2.0),
        "ghost": norms.get("ghost", virtual_batch_size=2),
        "noisy": norms.get("noisy"),
        "none": norms.get("none"),
    }
    for name, norm in built.items():
        assert isinstance(norm, norms.Norm) and norm.name == name
    assert built["noisy"].stochastic and not built["batch"].stochastic
    assert [n for n, v in built.items() if v.has_state] == ["batch", "renorm", "ghost", "noisy"]
    assert built["renorm"].options["r_max"] == 2.0
    assert built["renorm"].call_options == ("r_max", "d_max")
    with pytest.raises(ValueError, match="unknown norm"):
        norms.get("batchnorm")
    with pytest.raises(TypeError):
        norms.get("batch", groups=2)


@pytest.mark.parametrize("name", ["batch", "renorm", "ghost", "noisy"])
def test_state_layout_is_float32(name):
    params, state = norms.get(name, **({"virtual_batch_size": 2} if name == "ghost" else {})).init(
        3
    )
    assert set(params) == {"scale", "bias"} and set(state) == {"mean", "var", "count"}
    for v in (*params.values(), *state.values()):
        assert v.dtype == jnp.float32
    assert state["mean"].shape == state["var"].shape == (3,) and state["count"].shape == ()
    np.testing.assert_array_equal(state["mean"], 0.0)
    np.testing.assert_array_equal(state["var"], 1.0)


def test_unknown_call_option_and_bad_arguments():
    bn = norms.batch_norm()
    params, state = bn.init(2)
    x = jnp.ones((4, 2))
    with pytest.raises(TypeError):
        bn.apply(params, state, x, mode="train", r_max=2.0)
    with pytest.raises(ValueError, match="mode"):
        bn.apply(params, state, x, mode="test")
    with pytest.raises(TypeError, match="floating"):
        bn.apply(params, state, jnp.ones((4, 2), jnp.int32), mode="train")
    with pytest.raises(ValueError, match="at least 2 axes"):
        bn.apply(params, state, jnp.ones((2,)), mode="train")
    with pytest.raises(ValueError, match="prefix"):
        bn.apply(params, state, x, mode="train", mask=jnp.ones((3,), bool))


# ---------------------------------------------------------------- the golden case of NORMS.md

GOLDEN_X = jnp.array([[1.0], [2.0], [3.0], [4.0]])


@pytest.mark.parametrize(
    "options, mean, var",
    [
        ({"momentum": 0.1}, 0.25, 1.0 + 0.1 * (5 / 3 - 1)),  # torch: unbiased var 5/3
        ({"momentum": None}, 2.5, 5 / 3),  # torch cumulative average
        ({"momentum": 0.9, "convention": "flax"}, 0.25, 0.9 + 0.1 * 1.25),  # flax: biased var 1.25
        ({"decay": 0.9, "running_var": "biased"}, 0.25, 1.025),
    ],
)
def test_norms_md_golden_case(options, mean, var):
    bn = norms.batch_norm(**options)
    params, state = bn.init(1)
    y, state = jit_apply(bn, mode="train")(params, state, GOLDEN_X)
    assert_close(y[:, 0], [-1.34164, -0.44721, 0.44721, 1.34164], rtol=2e-5)  # 6-digit golden
    assert_close(y[:, 0], (np.arange(1, 5) - 2.5) / np.sqrt(1.25 + 1e-5))
    assert_close(state["mean"], [mean])
    assert_close(state["var"], [var])
    assert float(state["count"]) == 1.0


def test_momentum_spellings_agree_and_conflicts_fail():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 3)), jnp.float32)
    states = []
    for opts in (
        {"momentum": 0.2, "running_var": "biased"},
        {"momentum": 0.8, "convention": "flax"},
        {"decay": 0.8, "running_var": "biased"},
    ):
        bn = norms.batch_norm(**opts)
        params, state = bn.init(3)
        train = jit_apply(bn, mode="train")
        for _ in range(3):
            _, state = train(params, state, x * 2.0 + 1.0)
        states.append(state)
    for s in states[1:]:
        assert_close(s["mean"], states[0]["mean"])
        assert_close(s["var"], states[0]["var"])
    assert norms.batch_norm(convention="flax").options["rate"] == pytest.approx(0.01)
    assert norms.batch_norm().options["running_var"] == "unbiased"
    for bad in (
        {"momentum": 0.1, "decay": 0.9},
        {"decay": 0.9, "convention": "torch"},
        {"momentum": None, "convention": "flax"},
        {"convention": "keras"},
        {"momentum": 1.5},
        {"decay": -0.1},
        {"running_var": "sample"},
        {"eps": -1.0},
    ):
        with pytest.raises(ValueError):
            norms.batch_norm(**bad)


# ---------------------------------------------------------------- NumPy closed-form reference


@pytest.mark.parametrize(
    "shape, momentum, running_var", [((7, 3), 0.3, "biased"), ((2, 3, 4, 3), None, "unbiased")]
)
def test_batch_norm_matches_numpy(shape, momentum, running_var):
    rng = np.random.default_rng(1)
    c, eps = shape[-1], 1e-5
    bn = norms.batch_norm(momentum, eps, running_var)
    params, state = bn.init(c)
    params = random_params(rng, c)
    w, b = np.asarray(params["scale"], np.float64), np.asarray(params["bias"], np.float64)
    ref_mean, ref_var = np.zeros(c), np.ones(c)
    xs = np.stack([(rng.standard_normal(shape) * (1 + step) + 2.0 * step) for step in range(3)])
    xs = xs.astype(np.float32)
    gs = rng.standard_normal(xs.shape).astype(np.float32)
    x_eval = rng.standard_normal(shape).astype(np.float32)
    g_eval = rng.standard_normal(shape).astype(np.float32)
    steps, evaluated = train_then_eval(bn)(params, state, xs, gs, x_eval, g_eval)
    steps = jax.tree.map(np.asarray, steps)
    axes = tuple(range(len(shape) - 1))
    for step in range(3):
        y, state, dx, dp = jax.tree.map(lambda v, step=step: v[step], steps)
        x64, g64 = xs[step].astype(np.float64), gs[step].astype(np.float64)
        assert_close(y, np_normalize(x64, x64.mean(axes), x64.var(axes), w, b, eps))
        rdx, rdw, rdb = np_bn_grads(x64, g64, w, eps)
        assert_close(dx, rdx)
        assert_close(dp["scale"], rdw)
        assert_close(dp["bias"], rdb)
        ref_mean, ref_var = np_running(
            ref_mean, ref_var, x64, momentum, step, running_var == "unbiased"
        )
        assert_close(state["mean"], ref_mean)
        assert_close(state["var"], ref_var)
        assert float(state["count"]) == step + 1
    y, new_state, dx, dp = jax.tree.map(np.asarray, evaluated)
    for k in state:  # eval mode returns the state unchanged
        np.testing.assert_array_equal(new_state[k], state[k])
    x64, g64 = x_eval.astype(np.float64), g_eval.astype(np.float64)
    assert_close(y, np_normalize(x64, ref_mean, ref_var, w, b, eps))
    assert_close(dx, g64 * w / np.sqrt(ref_var + eps))
    assert_close(dp["scale"], (g64 * (x64 - ref_mean) / np.sqrt(ref_var + eps)).sum(axes))
    assert_close(dp["bias"], g64.sum(axes))


# ---------------------------------------------------------------- PyTorch golden files


def load(name):
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_golden_files_are_small_and_complete():
    for name in ("bn1d", "bn1d_cumulative", "bn2d", "gn", "ln_dense", "ln_conv", "in"):
        path = GOLDEN / f"{name}.npz"
        assert path.stat().st_size < 16_000
        assert {"x", "g", "weight", "bias", "y", "dx", "dweight", "dbias"} <= set(load(name))


@pytest.mark.parametrize("name", ["bn1d", "bn1d_cumulative", "bn2d"])
def test_batch_norm_matches_pytorch(name):
    d = load(name)
    momentum = None if np.isnan(d["momentum"]) else float(d["momentum"])
    bn = norms.batch_norm(momentum, float(d["eps"]))
    _, state = bn.init(d["x"].shape[-1])
    params = {"scale": jnp.asarray(d["weight"]), "bias": jnp.asarray(d["bias"])}
    steps, evaluated = train_then_eval(bn)(params, state, d["x"], d["g"], d["x_eval"], d["g_eval"])
    steps = jax.tree.map(np.asarray, steps)
    for t in range(d["x"].shape[0]):
        y, state, dx, dp = jax.tree.map(lambda v, t=t: v[t], steps)
        assert_close(y, d["y"][t])
        assert_close(dx, d["dx"][t])
        assert_close(dp["scale"], d["dweight"][t])
        assert_close(dp["bias"], d["dbias"][t])
        assert_close(state["mean"], d["running_mean"][t])
        assert_close(state["var"], d["running_var"][t])
    y, _, dx, dp = evaluated
    assert_close(y, d["y_eval"])
    assert_close(dx, d["dx_eval"])
    assert_close(dp["scale"], d["dweight_eval"])
    assert_close(dp["bias"], d["dbias_eval"])


@pytest.mark.parametrize(
    "name, norm",
    [
        ("gn", norms.group_norm(2)),
        ("ln_dense", norms.layer_norm()),
        ("ln_conv", norms.layer_norm()),
        ("in", norms.instance_norm()),
    ],
)
def test_per_example_norms_match_pytorch(name, norm):
    d = load(name)
    params = {"scale": jnp.asarray(d["weight"]), "bias": jnp.asarray(d["bias"])}
    _, state = norm.init(d["x"].shape[-1])
    train, evaluate = loss_grads(norm, mode="train"), loss_grads(norm, mode="eval")

    @jax.jit
    def both(params, x, g):
        return train(params, state, x, g), evaluate(params, state, x, g)

    for y, new_state, dx, dp in both(params, d["x"][0], d["g"][0]):  # per-example: modes agree
        assert new_state == {}
        assert_close(y, d["y"][0])
        assert_close(dx, d["dx"][0])
        assert_close(dp["scale"], d["dweight"][0])
        assert_close(dp["bias"], d["dbias"][0])


# ---------------------------------------------------------------- invariants


BATCH_STAT = ["batch", "renorm", "ghost", "noisy"]
# call options that make renorm/noisy plain BN in train mode, so the invariants can be exact
NEUTRAL = {
    "renorm": {"r_max": 1.0, "d_max": 0.0},
    "noisy": {"mu_max": 0.0, "sigma_min": 1.0, "sigma_max": 1.0, "m_spread": 0.0, "s_std": 0.0},
}


def build(name, **options):
    extra = {"ghost": {"virtual_batch_size": 8}, "group": {"groups": 2}}.get(name, {})
    return norms.get(name, **(extra | options))


@pytest.mark.parametrize("name", BATCH_STAT + ["group", "layer", "instance"])
def test_offset_1e4_is_stable(name):
    """float32 inputs 1e4 + N(0, 1): output std within 1e-3 of 1, no NaN (E[x^2] - E[x]^2 fails),
    in train mode (renorm/noisy made plain BN by call options) and batch mode."""
    x = jnp.asarray(1e4 + np.random.default_rng(2).standard_normal((16, 3, 3, 4)), jnp.float32)
    norm = build(name)
    params, state = norm.init(4)

    @jax.jit
    def both(x):
        kw = NEUTRAL.get(name, {})
        return [
            norm.apply(params, state, x, mode="train", key=jax.random.key(0), **kw)[0],
            norm.apply(params, state, x, mode="batch", **kw)[0],  # noisy: E[s] = 1 here
        ]

    for y in both(x):
        y = np.asarray(y, np.float64)
        assert np.all(np.isfinite(y))
        axes = (0, 1, 2) if name in BATCH_STAT else (1, 2, 3)
        if name == "ghost":  # statistics per virtual batch of 8
            y = y.reshape(2, 8, 3, 3, 4)
            axes = (1, 2, 3)
        if name == "instance":
            axes = (1, 2)
        assert np.max(np.abs(y.std(axes) - 1.0)) < 1e-3
        assert np.max(np.abs(y.mean(axes))) < 1e-3


@pytest.mark.parametrize("name", ["batch", "ghost", "group"])
def test_scale_invariance(name):
    """Ioffe & Szegedy Sec. 3.3: BN((aW)u) = BN(Wu) and d/dW at aW is 1/a times that at W
    (exact with eps = 0, which these tests use)."""
    rng = np.random.default_rng(3)
    u = jnp.asarray(rng.standard_normal((16, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    norm = build(name, eps=0.0)  # group: 2 groups of 4 channels
    params, state = norm.init(8)
    params = random_params(rng, 8)

    @jax.jit
    def out_and_grad(w):
        def loss(w):
            y = norm.apply(params, state, u @ w, mode="train")[0]
            return jnp.sum(y * g), y

        return jax.grad(loss, has_aux=True)(w)[::-1]

    y1, g1 = out_and_grad(w)
    for a in (0.01, 0.5, 3.0, 1e3):
        y, gw = out_and_grad(a * w)
        assert_close(y, y1)
        assert_close(gw, g1 / a)


@pytest.mark.parametrize("name", BATCH_STAT)
def test_train_normalizes_and_eval_batch_leave_state(name):
    norm = build(name)
    params, state = norm.init(3)
    x = jnp.asarray(3.0 + 2.0 * np.random.default_rng(4).standard_normal((8, 5, 3)), jnp.float32)
    kw = NEUTRAL.get(name, {})

    @jax.jit
    def train_then_batch(x):
        y, trained = norm.apply(params, state, x, mode="train", key=jax.random.key(1), **kw)
        return (
            y,
            trained,
            norm.apply(params, trained, x, mode="batch", **kw),
            norm.apply(params, trained, x, mode="eval", **kw)[1],
        )

    y, trained, (yb, same), same_eval = train_then_batch(x)
    np.testing.assert_allclose(np.asarray(y, np.float64).mean((0, 1)), 0.0, atol=1e-6)
    v = np.asarray(x, np.float64).var((0, 1))
    assert_close(np.asarray(y, np.float64).var((0, 1)), v / (v + 1e-5))
    assert float(trained["count"]) >= 1.0
    for k in trained:
        np.testing.assert_array_equal(same[k], trained[k])
        np.testing.assert_array_equal(same_eval[k], trained[k])
    assert_close(yb, y)


def test_running_update_carries_no_gradient():
    bn = norms.batch_norm(momentum=0.5)
    params, state = bn.init(3)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((6, 3)), jnp.float32)

    def stat_sum(x, params, state):
        _, s = bn.apply(params, state, x, mode="train")
        return jnp.sum(s["mean"]) + jnp.sum(s["var"])

    dx, dp, ds = jax.jit(jax.grad(stat_sum, (0, 1, 2)))(x, params, state)
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dp["scale"], 0.0)
    np.testing.assert_array_equal(ds["mean"], 0.5)  # old state enters with weight 1 - rate


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_input_keeps_float32_statistics(dtype):
    """Haiku's bf16 state produces NaN; bnexp keeps statistics and state in float32."""
    bn = norms.batch_norm()
    params, state = bn.init(3)
    x64 = 300.0 + np.random.default_rng(6).standard_normal((32, 3))
    x = jnp.asarray(x64, dtype)
    y, state = jit_apply(bn, mode="train")(params, state, x)
    assert y.dtype == dtype and all(v.dtype == jnp.float32 for v in state.values())
    xr = np.asarray(x.astype(jnp.float32), np.float64)  # the values bn actually saw
    assert_close(state["mean"], 0.1 * xr.mean(0))
    assert_close(state["var"], 0.9 + 0.1 * xr.var(0, ddof=1))
    ref = (xr - xr.mean(0)) / np.sqrt(xr.var(0) + 1e-5)
    tol = float(jnp.finfo(dtype).eps)  # only the final cast to the input dtype rounds
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=tol, atol=tol * 2)
    ye, _ = jit_apply(bn, mode="eval")(params, state, x)
    assert ye.dtype == dtype and np.all(np.isfinite(np.asarray(ye, np.float64)))


def test_mask_excludes_padding_from_statistics():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 2, 2, 3)).astype(np.float32)
    mask = np.array([True, True, False, True, False, True])
    bn = norms.batch_norm()
    params, state = bn.init(3)
    garbage = np.where(mask[:, None, None, None], x, np.float32(1e30))  # padding must not matter
    train = jit_apply(bn, mode="train")
    y, s = train(params, state, garbage, mask=mask)
    y_ref, s_ref = train(params, state, x[mask])
    assert_close(np.asarray(y)[mask], y_ref)
    assert_close(s["mean"], s_ref["mean"])
    assert_close(s["var"], s_ref["var"])
    full = np.broadcast_to(mask[:, None, None], (6, 2, 2))  # full-shape mask, same answer
    assert_close(train(params, state, garbage, mask=full)[1]["var"], s_ref["var"])


# ---------------------------------------------------------------- regressions (NORMS.md)


def test_regression_variance_cancellation():
    """E[x^2] - E[x]^2 in float32 at offset 1e4 is off by >1000% (Flax clamps, Haiku NaNs).
    The stored (unbiased, momentum 1) variance must match float64 to float32 precision."""
    x64 = 1e4 + np.random.default_rng(8).standard_normal((256, 4))
    x = jnp.asarray(x64, jnp.float32)
    xr = np.asarray(x, np.float64)
    bn = norms.batch_norm(momentum=1.0)
    params, state = bn.init(4)
    _, state = jit_apply(bn, mode="train")(params, state, x)
    assert_close(state["mean"], xr.mean(0))
    assert_close(state["var"], xr.var(0, ddof=1))
    x32 = np.asarray(x)
    naive = np.mean(x32 * x32, 0) - np.mean(x32, 0) ** 2  # float32: what the test guards against
    assert np.max(np.abs(naive / xr.var(0) - 1.0)) > 1e-2


def test_regression_equinox_early_eval_variance():
    """Equinox's mode="batch" started the variance at 1 but debiased as if from 0: one step at
    momentum 0.99 with true variance 4 gave 103.5. Here: 0.99 * 1 + 0.01 * 4."""
    x = jnp.asarray(np.array([[-2.0], [2.0]] * 8), jnp.float32)  # biased variance exactly 4
    for running_var, v in (("biased", 4.0), ("unbiased", 4.0 * 16 / 15)):
        bn = norms.batch_norm(0.99, convention="flax", running_var=running_var)
        params, state = bn.init(1)

        @jax.jit
        def train_then_eval(params, state, x, bn=bn):
            _, state = bn.apply(params, state, x, mode="train")
            return state, bn.apply(params, state, x, mode="eval")[0]

        state, y = train_then_eval(params, state, x)
        assert_close(state["var"], [0.99 + 0.01 * v])
        assert_close(y, np.asarray(x) / np.sqrt(0.99 + 0.01 * v + 1e-5))


@pytest.mark.parametrize("name", BATCH_STAT)
def test_regression_eval_before_training(name):
    """Haiku crashes evaluating before any training step; here mean 0, var 1 are used."""
    norm = build(name)
    params, state = norm.init(3)
    params = random_params(np.random.default_rng(9), 3)
    x = jnp.asarray(np.random.default_rng(10).standard_normal((4, 3)), jnp.float32)
    y, same = norm.apply(params, state, x, mode="eval", **NEUTRAL.get(name, {}))  # noisy: E[s]=1
    assert same is state
    assert_close(
        y,
        np.asarray(x) / np.sqrt(1 + 1e-5) * np.asarray(params["scale"])
        + np.asarray(params["bias"]),
    )


@pytest.mark.parametrize("name", BATCH_STAT)
@pytest.mark.parametrize("shape", [(1, 3), (1, 1, 1, 3)])
def test_regression_batch_of_one_fails_clearly(name, shape):
    norm = build(name, **({"virtual_batch_size": 1} if name == "ghost" else {}))
    params, state = norm.init(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        norm.apply(params, state, jnp.ones(shape), mode="train", key=jax.random.key(0))
    y, _ = norm.apply(params, state, jnp.ones(shape), mode="eval")  # eval of one example works
    assert y.shape == shape


# ------------------------------------------- BN's closed-form gradient (norms._core.batch_normalize)


def _autodiff_bn(xf, params, axes, eps):
    """The same values as batch_normalize, differentiated step by step through moments."""
    from bnexp.norms import _core

    st = _core.moments(xf, axes)
    return _core.affine(params, st.center(xf) * jax.lax.rsqrt(st.var + eps)), st


@pytest.mark.parametrize(
    "shape, offset", [((60, 100), 0.0), ((60, 100), 30.0), ((4, 5, 5, 8), 3.0)]
)
def test_closed_form_gradient_matches_float64(shape, offset):
    """batch_normalize's VJP (two sums a channel for dx, dscale and dbias), with the returned
    mean and variance differentiated too or not, against the float64 closed form; its values
    against the step-by-step formulation it replaces. (Offsets as large as 1e3 put dx's float32
    reductions at about 1e-6 of its scale from float64, for either formulation and for NumPy's
    float32 closed form: beyond RTOL's atol, a floor of float32, not of this VJP.)"""
    from bnexp.norms import _core

    rng = np.random.default_rng(11)
    x = jnp.asarray(offset + 2.0 * rng.standard_normal(shape), jnp.float32)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    c_mean, c_var = (jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32) for _ in range(2))
    params = random_params(rng, shape[-1])
    axes = tuple(range(len(shape) - 1))
    x64, n = np.asarray(x, np.float64), np.prod(shape[:-1])

    def grads(bn, with_stats):
        def f(x, params):
            y, st = bn(x, params, axes, 1e-5)
            extra = jnp.sum(c_mean * st.mean.reshape(-1)) + jnp.sum(c_var * st.var.reshape(-1))
            return jnp.sum(g * y) + (extra if with_stats else 0.0), (y, st.mean, st.var)

        return jax.jit(jax.grad(f, (0, 1), has_aux=True))(x, params)

    for with_stats in (False, True):
        (dx, dp), (y, mean, var) = grads(_core.batch_normalize, with_stats)
        _, (ry, rmean, rvar) = grads(_autodiff_bn, with_stats)
        for got, want in ((y, ry), (mean, rmean), (var, rvar)):
            assert_close(got, want)
        want_dx, want_dscale, want_dbias = np_bn_grads(
            x64, np.asarray(g, np.float64), np.asarray(params["scale"], np.float64), 1e-5
        )
        if with_stats:  # d mean / dx = 1/n, d var / dx = 2 (x - mean) / n
            c_mean64, c_var64 = np.asarray(c_mean, np.float64), np.asarray(c_var, np.float64)
            want_dx = want_dx + c_mean64 / n + 2.0 * c_var64 * (x64 - x64.mean(axes)) / n
        assert_close(dx, want_dx)
        assert_close(dp["scale"], want_dscale)
        assert_close(dp["bias"], want_dbias)


def test_closed_form_gradient_reduces_over_the_batch_fewer_times():
    """The point of batch_normalize: the compiled gradient of a BN layer has fewer reductions
    than autodiff through moments and affine (whose scale/bias sums XLA cannot share with dx's)."""
    from bnexp.norms import _core

    x, g = jnp.ones((60, 100)), jnp.ones((60, 100))
    params = random_params(np.random.default_rng(0), 100)

    def reductions(bn):
        def f(x, params):
            return jnp.sum(g * bn(x, params, (0,), 1e-5)[0])

        hlo = jax.jit(jax.grad(f, (0, 1))).lower(x, params).compile().as_text()
        return hlo.count(" reduce(")

    fused, autodiff = reductions(_core.batch_normalize), reductions(_autodiff_bn)
    assert fused < autodiff, (fused, autodiff)
