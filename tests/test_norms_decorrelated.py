"""Decorrelated BN (Huang et al. 2018): whitening, gradients, transforms, eval, training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import models, norms


def _x(n=256, c=32, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((c, c)) * 0.5 + np.eye(c)  # correlated features
    return jnp.asarray((rng.standard_normal((n, c)) @ mix + 3.0).astype(np.float32))


def test_whitened_covariance_is_identity_per_group():
    norm = norms.get("decorrelated", group_size=16, eps=0.0)
    params, state = norm.init(32)
    x = _x()
    y, _ = norm.apply(params, state, x, mode="batch")
    y64 = np.asarray(y, np.float64).reshape(-1, 2, 16)
    for g in range(2):
        d = y64[:, g] - y64[:, g].mean(0)
        cov = d.T @ d / d.shape[0]
        # float32: the input's condition number is < 1e2, so whitening loses at most ~1e2 ulps
        # (1e-5 relative); 1e-4 absolute on entries of size 1 allows that and fails any bug.
        np.testing.assert_allclose(cov, np.eye(16), atol=1e-4)
    # across groups the features are *not* decorrelated (only within a group)
    cross = (y64[:, 0] - y64[:, 0].mean(0)).T @ (y64[:, 1] - y64[:, 1].mean(0)) / 256
    assert np.abs(cross).max() > 1e-2


def test_gradient_matches_finite_differences():
    norm = norms.get("decorrelated", group_size=4)
    params, state = norm.init(8)
    x = _x(32, 8, 3)
    t = jnp.asarray(np.random.default_rng(4).standard_normal((32, 8)).astype(np.float32))

    def loss(x):
        y, _ = norm.apply(params, state, x, mode="batch")
        return jnp.sum(jnp.sin(y) * t)

    g = jax.grad(loss)(x)
    rng = np.random.default_rng(5)
    for _ in range(3):
        v = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))
        h = 1e-2
        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=2e-2, atol=2e-3)


def test_transforms_and_eval_uses_running_statistics():
    norm = norms.get("decorrelated", group_size=8, momentum=0.5)
    params, state = norm.init(16)
    x = _x(64, 16)
    y, s1 = jax.jit(lambda p, s, x: norm.apply(p, s, x, mode="train"))(params, state, x)
    assert s1["whiten"].shape == (2, 8, 8) and s1["whiten"].dtype == jnp.float32
    ye, s2 = norm.apply(params, s1, x, mode="eval")
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), s1, s2))
    ref = (np.asarray(x) - np.asarray(s1["mean"])).reshape(64, 2, 8)
    ref = np.einsum("gij,mgj->mgi", np.asarray(s1["whiten"]), ref).reshape(64, 16)
    np.testing.assert_allclose(ye, ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(ye, y, atol=1e-2)  # eval differs from batch statistics here
    out = jax.eval_shape(lambda x: norm.apply(params, state, x)[0], x)
    assert out.shape == x.shape
    yv, _ = jax.vmap(lambda x: norm.apply(params, state, x, mode="batch"))(x.reshape(4, 16, 16))
    y0, _ = norm.apply(params, state, x[:16], mode="batch")
    np.testing.assert_allclose(yv[0], y0, rtol=1e-5, atol=1e-5)
    assert jnp.all(jnp.isfinite(jax.grad(lambda x: norm.apply(params, state, x)[0].sum())(x)))


def test_mlp_with_decorrelated_bn_trains_without_nan():
    spec = models.ModelSpec(widths=(20, 32, 32, 3), activation="relu", norm="decorrelated")
    params, state = models.init(jax.random.PRNGKey(0), spec)
    x, y = _x(64, 20, 7), jnp.arange(64) % 3

    def loss(p, s):
        logits, s, _ = models.apply(p, s, x, spec, mode="train")
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(64), y]), s

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    losses = []
    for _ in range(5):
        (val, state), g = step(params, state)
        params = jax.tree.map(lambda a, b: a - 0.1 * b, params, g)
        losses.append(float(val))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_group_size_falls_back_to_a_divisor():
    _, state = norms.get("decorrelated").init(100)
    assert state["whiten"].shape == (10, 10, 10)
    with pytest.raises(ValueError, match="group_size"):
        norms.get("decorrelated", group_size=0)


def test_zca_in_groups_of_16_is_the_symmetric_inverse_square_root():
    """Huang et al.'s ZCA (not PCA or Cholesky whitening): per group of 16 features the running
    whitening matrix after one cumulative step is W = Sigma^(-1/2), symmetric positive definite,
    so W Sigma W = I and W^2 = Sigma^-1 (Sigma: the biased batch covariance, float64 here)."""
    norm = norms.get("decorrelated", momentum=None, eps=0.0)  # rate 1/count: W of this batch
    params, state = norm.init(128)
    assert state["whiten"].shape == (8, 16, 16)  # 128 features: 8 groups of 16
    x = _x(512, 128, 11)
    _, s1 = norm.apply(params, state, x, mode="train")
    w = np.asarray(s1["whiten"], np.float64)
    xg = np.asarray(x, np.float64).reshape(512, 8, 16)
    for g in range(8):
        d = xg[:, g] - xg[:, g].mean(0)
        sigma = d.T @ d / 512
        np.testing.assert_allclose(w[g], w[g].T, atol=1e-5 * np.abs(w[g]).max())
        assert np.linalg.eigvalsh(w[g]).min() > 0
        np.testing.assert_allclose(w[g] @ sigma @ w[g], np.eye(16), atol=1e-4)


def test_conv_input_is_whitened_over_batch_and_space_with_the_common_call_shape():
    """(N, H, W, C) channels-last: statistics over N*H*W per group; y keeps x's shape and dtype;
    key is accepted and ignored (the zoo's call shape)."""
    norm = norms.get("decorrelated", group_size=16, eps=0.0)
    params, state = norm.init(16)
    x = _x(8 * 5 * 5, 16, 12).reshape(8, 5, 5, 16)
    y, s = norm.apply(params, state, x, mode="batch", key=jax.random.key(0))
    assert y.shape == x.shape and y.dtype == x.dtype and s is state
    f = np.asarray(y, np.float64).reshape(-1, 16)
    d = f - f.mean(0)
    # float32: a covariance computed with relative error eps gives W Sigma W = I - W E W, and
    # ||W E W|| <= eps ||Sigma|| / lambda_min = eps * kappa. This input (200 rows of 16 mixed
    # features) has kappa ~6.2e3, so the bound is ~7e-4 (an Intel Xeon measured 1.004e-4, just
    # past the 1e-4 this test used to assume); a per-feature BN leaves off-diagonals of ~0.3.
    xs = np.asarray(x, np.float64).reshape(-1, 16)
    lam = np.linalg.eigvalsh(np.cov(xs.T, bias=True))
    tol = np.finfo(np.float32).eps * lam.max() / lam.min()
    np.testing.assert_allclose(d.T @ d / f.shape[0], np.eye(16), atol=tol)
    y16, _ = norm.apply(params, state, x.astype(jnp.bfloat16), mode="batch")
    assert y16.dtype == jnp.bfloat16


def test_gradient_through_the_eigendecomposition_at_group_16_matches_finite_differences():
    norm = norms.get("decorrelated", group_size=16)
    params, state = norm.init(16)
    x = _x(64, 16, 13)
    t = jnp.asarray(np.random.default_rng(14).standard_normal((64, 16)).astype(np.float32))

    def loss(x):
        return jnp.sum(jnp.sin(norm.apply(params, state, x, mode="batch")[0]) * t)

    g = jax.grad(loss)(x)
    rng = np.random.default_rng(15)
    for _ in range(3):
        v = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))
        h = 1e-2
        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=2e-2, atol=2e-3)
