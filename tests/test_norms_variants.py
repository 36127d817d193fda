"""Group/layer/instance norm, batch renorm, ghost BN and noisy BN against their definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import norms

RTOL = 1e-5  # float32; never loosened to pass


def assert_close(actual, expected, rtol: float = RTOL) -> None:
    """Elementwise relative error <= rtol, near-zero entries judged at 0.1 * rtol * max|expected|."""
    expected = np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=rtol, atol=0.1 * rtol * scale
    )


def loss_grads(norm, **static):
    """Jitted (params, state, x, g, **traced) -> y, new_state, d(sum(g * y)) / d(x, params)."""

    @jax.jit
    def run(params, state, x, g, **traced):
        def loss(x, params):
            y, new_state = norm.apply(params, state, x, **static, **traced)
            return jnp.sum(y * g), (y, new_state)

        (_, (y, new_state)), (dx, dp) = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, params)
        return y, new_state, dx, dp

    return run


def jit_apply(norm, **static):
    """Jitted (params, state, x, **traced) -> (y, new_state); `static` holds mode etc."""
    return jax.jit(
        lambda params, state, x, **traced: norm.apply(params, state, x, **static, **traced)
    )


def data(seed, shape, loc=0.0, scale=1.0):
    return (loc + scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def params_for(c, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "scale": jnp.asarray(1.0 + 0.5 * rng.standard_normal(c), jnp.float32),
        "bias": jnp.asarray(0.5 * rng.standard_normal(c), jnp.float32),
    }


def np_bn_grads(x, g, w, eps):
    """Closed-form BN backward for y = w * xhat + b with batch statistics (float64)."""
    axes = tuple(range(x.ndim - 1))
    xhat = (x - x.mean(axes)) / np.sqrt(x.var(axes) + eps)
    gh = g * w
    return (gh - gh.mean(axes) - xhat * (gh * xhat).mean(axes)) / np.sqrt(x.var(axes) + eps)


# ---------------------------------------------------------------- group, layer, instance


def test_group_norm_errors_are_clear():
    with pytest.raises(ValueError, match="groups=4 must divide the number of channels C=6"):
        norms.group_norm(4).init(6)
    gn = norms.group_norm(4)
    with pytest.raises(ValueError, match="must divide"):
        gn.apply(*norms.group_norm(2).init(6), jnp.ones((2, 6)), mode="train")
    with pytest.raises(ValueError, match="groups must be >= 1"):
        norms.group_norm(0)
    with pytest.raises(ValueError, match="at least 3 axes"):
        norms.instance_norm().apply(*norms.instance_norm().init(3), jnp.ones((4, 3)), mode="train")
    with pytest.raises(ValueError, match="single value"):
        norms.group_norm(3).apply(*norms.group_norm(3).init(3), jnp.ones((4, 3)), mode="train")


def test_group_norm_reference_and_special_cases():
    x = data(0, (3, 4, 5, 6), loc=2.0, scale=3.0)
    params = params_for(6)
    w, b = np.asarray(params["scale"], np.float64), np.asarray(params["bias"], np.float64)
    x64 = x.astype(np.float64).reshape(3, 4, 5, 3, 2)  # 3 groups of 2 channels
    mu, var = x64.mean((1, 2, 4), keepdims=True), x64.var((1, 2, 4), keepdims=True)
    ref = ((x64 - mu) / np.sqrt(var + 1e-5)).reshape(x.shape) * w + b
    cases = [(norms.group_norm(3), mode) for mode in ("train", "eval", "batch")] + [
        (norm, "train")
        for norm in (
            norms.group_norm(1),
            norms.layer_norm(),
            norms.group_norm(6),
            norms.instance_norm(),
        )
    ]
    outs = jax.jit(lambda p, x: [n.apply(p, {}, x, mode=m) for n, m in cases])(params, x)
    x64 = x.astype(np.float64)
    layer = (x64 - x64.mean((1, 2, 3), keepdims=True)) / np.sqrt(
        x64.var((1, 2, 3), keepdims=True) + 1e-5
    ) * w + b
    inst = (x64 - x64.mean((1, 2), keepdims=True)) / np.sqrt(
        x64.var((1, 2), keepdims=True) + 1e-5
    ) * w + b
    for (y, state), expected in zip(outs, [ref, ref, ref, layer, layer, inst, inst], strict=True):
        assert_close(y, expected)  # groups = 3; 1 is layer norm; C is instance norm
        assert state == {}


# ---------------------------------------------------------------- batch renorm


def test_batch_renorm_matches_numpy():
    """Ioffe 2017 Alg. 1: clipping active in some channels and not others; r, d carry no
    gradient (dx = r * BN's dx); running mean and *std* averaged; eval uses them."""
    eps, rate, r_max, d_max = 1e-5, 0.2, 1.5, 0.5
    rn = norms.batch_renorm(r_max, d_max, momentum=rate, eps=eps)
    params = params_for(3, 1)
    w, b = np.asarray(params["scale"], np.float64), np.asarray(params["bias"], np.float64)
    mu0, var0 = np.array([0.5, -1.0, 3.0]), np.array([0.25, 4.0, 1.0])
    state = {
        "mean": jnp.asarray(mu0, jnp.float32),
        "var": jnp.asarray(var0, jnp.float32),
        "count": jnp.asarray(4.0),
    }
    x = data(2, (16, 3), loc=0.0, scale=1.0) * np.float32([1.0, 1.8, 0.9]) + np.float32(
        [0.6, 1.5, 3.05]
    )
    g = data(3, (16, 3))
    train = loss_grads(rn, mode="train").__wrapped__

    @jax.jit
    def run(params, state, x, g):
        y, new, dx, dp = train(params, state, x, g)
        return (
            (y, new, dx, dp),
            rn.apply(params, new, x, mode="eval")[0],
            rn.apply(params, state, x, mode="batch"),
        )

    (y, new, dx, dp), ye, (yb, same) = run(params, state, x, g)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    mub, sb = x64.mean(0), np.sqrt(x64.var(0) + eps)
    mu0, s0 = np.asarray(state["mean"], np.float64), np.sqrt(np.float32(var0) + eps)
    r = np.clip(sb / s0, 1 / r_max, r_max)
    d = np.clip((mub - mu0) / s0, -d_max, d_max)
    assert np.any(r == r_max) and np.any(r < r_max)  # both regimes are exercised
    assert np.any(np.abs(d) == d_max) and np.any(np.abs(d) < d_max)
    xhat = (x64 - mub) / sb
    assert_close(y, w * (xhat * r + d) + b)
    assert_close(dx, r * np_bn_grads(x64, g64, w, eps))
    assert_close(dp["scale"], (g64 * (xhat * r + d)).sum(0))
    assert_close(dp["bias"], g64.sum(0))
    s1 = s0 + rate * (sb - s0)
    assert_close(new["mean"], mu0 + rate * (mub - mu0))
    assert_close(new["var"], s1**2 - eps)
    assert float(new["count"]) == 5.0
    assert_close(ye, w * (x64 - (mu0 + rate * (mub - mu0))) / s1 + b)
    np.testing.assert_array_equal(same["var"], state["var"])
    assert_close(yb, w * xhat + b)


def test_batch_renorm_default_rate_is_the_papers_alpha():
    """Ioffe 2017 updates the running mean and std with alpha = 0.01 (batch norm's is 0.1)."""
    assert norms.batch_renorm().options["rate"] == 0.01
    assert norms.get("renorm").options["rate"] == 0.01
    assert norms.batch_renorm(convention="flax").options["rate"] == pytest.approx(0.01)
    assert norms.batch_renorm(momentum=0.1).options["rate"] == 0.1
    assert norms.batch_renorm(decay=0.9).options["rate"] == pytest.approx(0.1)
    assert norms.batch_norm().options["rate"] == 0.1


def test_batch_renorm_per_call_limits_are_traced():
    rn = norms.batch_renorm(3.0, 5.0)
    params, state = rn.init(2)
    x = data(4, (8, 2), loc=10.0, scale=4.0)  # far from the initial running stats
    traces = []

    @jax.jit
    def step(r_max, d_max):
        traces.append(1)
        return rn.apply(params, state, x, mode="train", r_max=r_max, d_max=d_max)[0]

    bn_y = jit_apply(norms.batch_norm(), mode="train")(params, state, x)[0]
    assert_close(step(1.0, 0.0), bn_y)  # r_max = 1, d_max = 0: batch norm
    y_wide = step(3.0, 5.0)
    assert np.max(np.abs(np.asarray(y_wide) - np.asarray(bn_y))) > 1.0
    assert_close(y_wide, jit_apply(rn, mode="train")(params, state, x)[0])  # factory defaults
    assert len(traces) == 1  # a schedule does not recompile
    with pytest.raises(ValueError, match="r_max >= 1"):
        norms.batch_renorm(0.5, 1.0)


# ---------------------------------------------------------------- ghost batch norm


@pytest.mark.parametrize("momentum", [0.1, None])
def test_ghost_is_batch_norm_per_virtual_batch(momentum):
    """Output, gradients and running statistics equal batch norm run on each virtual batch in
    turn (Hoffer et al. 2017 Alg. 1), sharing scale, bias and running statistics."""
    gb, bn = norms.ghost_batch_norm(4, momentum), norms.batch_norm(momentum)
    params, state = gb.init(3)
    params = params_for(3, 2)
    x = data(5, (12, 2, 3), loc=1.0, scale=2.0)
    g = data(6, (12, 2, 3))
    bn_step, gb_step = (loss_grads(n, mode="train").__wrapped__ for n in (bn, gb))

    @jax.jit
    def reference(params, state, xs, gs):  # batch norm on each virtual batch in turn
        def body(s, xg):
            y, s, dx, dp = bn_step(params, s, *xg)
            return s, (y, dx, dp, bn.apply(params, s, xg[0], mode="batch")[0])

        return jax.lax.scan(body, state, (xs, gs))

    @jax.jit
    def ghost(params, state, x, g):
        y, new, dx, dp = gb_step(params, state, x, g)
        return y, new, dx, dp, gb.apply(params, new, x, mode="batch")[0]

    s, (ys, dxs, dps, ybs) = reference(params, state, x.reshape(3, 4, 2, 3), g.reshape(3, 4, 2, 3))
    y, new, dx, dp, yb = ghost(params, state, x, g)
    assert_close(y, np.asarray(ys).reshape(x.shape))
    assert_close(dx, np.asarray(dxs).reshape(x.shape))
    assert_close(dp["scale"], np.asarray(dps["scale"], np.float64).sum(0))
    assert_close(dp["bias"], np.asarray(dps["bias"], np.float64).sum(0))
    assert_close(new["mean"], s["mean"])
    assert_close(new["var"], s["var"])
    assert float(new["count"]) == 3.0
    # "batch" mode: virtual-batch statistics, no update (reference: BN batch mode per chunk,
    # evaluated with the state after each chunk, which batch mode ignores)
    assert_close(yb, np.asarray(ybs).reshape(x.shape))


def test_ghost_edge_cases():
    x = data(7, (8, 3), loc=-1.0, scale=0.5)
    gb, bn = norms.ghost_batch_norm(8), norms.batch_norm()
    params, state = gb.init(3)
    with pytest.raises(ValueError, match="virtual_batch_size=3 must divide the batch size 8"):
        norms.ghost_batch_norm(3).apply(params, state, x, mode="train")
    # A masked-out virtual batch is skipped by the running update (it has no statistics).
    mask = np.array([True] * 4 + [False] * 4)
    gb4 = norms.ghost_batch_norm(4)

    @jax.jit
    def run(params, state, x, mask):
        return (
            gb.apply(params, state, x, mode="train"),
            bn.apply(params, state, x, mode="train"),
            gb4.apply(params, state, x, mode="train", mask=mask),
            bn.apply(params, state, x[:4], mode="train"),
        )

    (y, s), (y_ref, s_ref), (ym, sm), (y1, s1) = run(params, state, x, mask)
    assert_close(y, y_ref)  # one virtual batch: batch norm
    assert_close(s["var"], s_ref["var"])
    assert_close(np.asarray(ym)[:4], y1)
    assert_close(sm["mean"], s1["mean"])
    assert_close(sm["var"], s1["var"])
    assert float(sm["count"]) == 1.0


# ---------------------------------------------------------------- noisy batch norm

OFF = {"mu_max": 0.0, "sigma_min": 1.0, "sigma_max": 1.0, "m_spread": 0.0, "s_std": 0.0}


def test_noisy_batch_norm_modes_and_key():
    nb, bn = norms.noisy_batch_norm(), norms.batch_norm()
    params, state = nb.init(4)
    x = data(8, (10, 4), loc=2.0)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        nb.apply(params, state, x, mode="train")
    with pytest.raises(TypeError, match="unknown call options"):
        nb.apply(params, state, x, mode="train", key=jax.random.key(0), sigma=1.0)
    defaults = {k: nb.options[k] for k in OFF}

    @jax.jit
    def run(keys, consts):
        y_bn, s_bn = bn.apply(params, state, x, mode="train")
        noisy = [
            nb.apply(params, state, x, mode="train", key=k, **c)
            for k, c in zip(keys, consts, strict=True)
        ]
        # no noise outside training, and no key needed: the noise's mean scale E[s] instead
        other = [
            (nb.apply(params, s_bn, x, mode=m)[0], 1.125 * bn.apply(params, s_bn, x, mode=m)[0])
            for m in ("eval", "batch")
        ]
        return y_bn, s_bn, noisy, other

    keys = jax.random.split(jax.random.key(0), 2)
    y_bn, s_bn, noisy, other = run(
        [keys[0], keys[0], keys[0], keys[1]], [OFF, defaults, defaults, defaults]
    )
    (y_off, s_off), (y0, s0), (y0_again, _), (y1, _) = noisy
    assert_close(y_off, y_bn)  # all noise switched off per call: batch norm
    assert_close(s_off["var"], s_bn["var"])  # statistics of the clean input
    np.testing.assert_array_equal(y0, y0_again)  # same key, same noise
    assert not np.allclose(y0, y1)  # another key, other noise
    assert not np.allclose(y0, y_bn)
    assert_close(s0["mean"], s_bn["mean"])
    for y_noisy, y_clean in other:
        assert_close(y_noisy, y_clean)


def test_noisy_batch_norm_eval_applies_mean_scale():
    """Eval mode: y = E[s] * BN_eval(x) with E[s] = (sigma_min + sigma_max) / 2, per call too."""
    nb, bn = norms.noisy_batch_norm(), norms.batch_norm()
    params, state = nb.init(4)
    state = {**state, "mean": state["mean"] + 0.5, "var": state["var"] * 2.0}
    x = data(3, (10, 4), loc=2.0)
    ref = np.asarray(bn.apply(params, state, x, mode="eval")[0], np.float64)
    assert_close(nb.apply(params, state, x, mode="eval")[0], 1.125 * ref)
    y = nb.apply(params, state, x, mode="eval", sigma_min=2.0, sigma_max=3.0)[0]
    assert_close(y, 2.5 * ref)
    with pytest.raises(ValueError, match="noise_per"):
        norms.noisy_batch_norm(noise_per="batch")


def test_noisy_batch_norm_per_sample_noise():
    """Default per-sample noise: i.i.d. over rows and units, fresh per key (step), moments of
    m ~ U(mu_t +- 0.1) (sd 0.1 / sqrt(3)) and s ~ N(sigma_t, 0.1^2) within one call."""
    n, c = 512, 64
    nb = norms.noisy_batch_norm()
    assert nb.options["noise_per"] == "sample"
    _, state = nb.init(c)
    x = data(9, (n, c))
    zero = {"scale": jnp.zeros(c), "bias": jnp.zeros(c)}
    one = {"scale": jnp.zeros(c), "bias": jnp.ones(c)}

    @jax.jit
    def draw(key):
        m = nb.apply(zero, state, x, mode="train", key=key)[0]
        return m, nb.apply(one, state, x, mode="train", key=key)[0] - m

    draws = [tuple(np.asarray(v, np.float64) for v in draw(jax.random.key(k))) for k in range(4)]
    for m, s in draws:
        assert m.shape == (n, c)
        assert not np.allclose(m[0], m[1]) and not np.allclose(s[0], s[1])  # rows differ
        mu_t = (m.max() + m.min()) / 2
        assert 0.199 < np.ptp(m) <= 0.2 + 1e-6  # U(mu_t +- 0.1) over n*c draws
        assert abs(m.mean() - mu_t) < 0.002  # sd of the mean: 0.058 / sqrt(n c) = 3e-4
        assert abs(m.std() - 0.1 / np.sqrt(3)) < 0.002
        assert -0.5 - 1e-6 <= mu_t <= 0.5 + 1e-6
        assert 1.0 - 0.005 <= s.mean() <= 1.25 + 0.005
        assert abs(s.std() - 0.1) < 0.003
        # independent of the row and the unit: per-row and per-unit means agree within noise
        assert np.std(s.mean(0)) < 0.1 / np.sqrt(n) * 1.5
        assert np.std(s.mean(1)) < 0.1 / np.sqrt(c) * 1.5
    (m0, s0), (m1, s1) = draws[:2]
    assert not np.allclose(m0, m1) and not np.allclose(s0, s1)  # fresh every step (key)
    np.testing.assert_array_equal(draw(jax.random.key(0))[0], m0)  # seeded


def test_noisy_batch_norm_noise_distribution():
    """Per-unit noise. With scale = 0 and bias = 0 the BN output is 0, so y = m; with bias = 1,
    y = s + m; every row of the batch gets the same (m, s)."""
    c = 4096
    nb = norms.noisy_batch_norm(noise_per="unit")
    _, state = nb.init(c)
    x = data(9, (4, c))
    zero = {"scale": jnp.zeros(c), "bias": jnp.zeros(c)}
    one = {"scale": jnp.zeros(c), "bias": jnp.ones(c)}

    @jax.jit
    def draw(key, consts):
        m = nb.apply(zero, state, x, mode="train", key=key, **consts)[0][0]
        return m, nb.apply(one, state, x, mode="train", key=key, **consts)[0][0] - m

    centers, sigmas = [], []
    rows = nb.apply(zero, state, x, mode="train", key=jax.random.key(0))[0]
    np.testing.assert_array_equal(rows[1:], np.broadcast_to(rows[0], rows[1:].shape))
    for seed in range(6):
        m, s = (np.asarray(v, np.float64) for v in draw(jax.random.key(seed), {}))
        mu_t, sigma_t = (m.max() + m.min()) / 2, s.mean()
        assert m.max() - m.min() <= 0.2 + 1e-6 and m.max() - m.min() > 0.19  # U(mu_t +- 0.1)
        assert abs(m.mean() - mu_t) < 0.01
        assert -0.5 - 1e-6 <= mu_t <= 0.5 + 1e-6
        assert 1.0 - 0.01 <= sigma_t <= 1.25 + 0.01  # mean of N(sigma_t, 0.1^2) over 4096 units
        assert abs(s.std() - 0.1) < 0.01
        centers.append(mu_t)
        sigmas.append(sigma_t)
    assert np.std(centers) > 0.05 and np.std(sigmas) > 0.01  # time-varying per call (key)
    # Per-call constants are traced: a sweep over them is one compiled program.
    consts = {
        "mu_max": jnp.array([0.0, 2.0]),
        "sigma_min": jnp.array([1.0, 3.0]),
        "sigma_max": jnp.array([1.0, 3.0]),
        "m_spread": jnp.array([0.0, 0.5]),
        "s_std": jnp.array([0.0, 0.0]),
    }
    m, s = jax.vmap(draw, in_axes=(None, 0))(jax.random.key(0), consts)
    np.testing.assert_allclose(np.asarray(m[0]), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s[0]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s[1]), 3.0, atol=1e-6)
    assert np.ptp(np.asarray(m[1])) > 0.9 and np.max(np.abs(np.asarray(m[1]))) <= 2.5
