"""Population statistics (PreciseBN / Algorithm 2) against a float64 NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import models
from bnexp.norms import population

SIZES = (32, 32, 32, 11)  # an unequal last batch
EPS = 1e-5


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np_forward(params, x, state=None):
    """float64 MLP, BN before sigmoid, no hidden bias: batch statistics if state is None, else
    the given running state. Returns (logits, norm inputs)."""
    h, inputs = np.asarray(x, np.float64), []
    for i, p in enumerate(params["hidden"]):
        z = h @ np.asarray(p["w"], np.float64)
        inputs.append(z)
        if state is None:
            mu, var = z.mean(0), z.var(0)
        else:
            mu = np.asarray(state["hidden"][i]["mean"], np.float64)
            var = np.asarray(state["hidden"][i]["var"], np.float64)
        s, b = (np.asarray(p["norm"][k], np.float64) for k in ("scale", "bias"))
        h = _sigmoid(s * (z - mu) / np.sqrt(var + EPS) + b)
    out = params["out"]
    return h @ np.asarray(out["w"], np.float64) + np.asarray(out["b"], np.float64), inputs


def _setup():
    spec = models.ModelSpec(widths=(12, 9, 7, 4), activation="sigmoid", norm="batch")
    params, state = models.init(jax.random.PRNGKey(0), spec)
    # non-trivial affine params, so a wrong layer order or a missed scale shows
    params = jax.tree.map(lambda a: a, params)
    for i, p in enumerate(params["hidden"]):
        k = jax.random.PRNGKey(10 + i)
        p["norm"] = {
            "scale": 1.0 + 0.3 * jax.random.normal(k, p["norm"]["scale"].shape),
            "bias": 0.2 * jax.random.normal(jax.random.fold_in(k, 1), p["norm"]["bias"].shape),
        }
    rng = np.random.default_rng(1)
    batches = [(3.0 + 2.0 * rng.standard_normal((n, 12))).astype(np.float32) for n in SIZES]
    return spec, params, state, batches


def _np_population(params, batches, running_var):
    per = [_np_forward(params, x)[1] for x in batches]
    out = []
    for layer in range(len(per[0])):
        zs = [p[layer] for p in per]
        n = np.array([z.shape[0] for z in zs], np.float64)
        mu = np.stack([z.mean(0) for z in zs])
        var = np.stack([z.var(0) for z in zs])
        if running_var == "unbiased":
            var = var * (n / (n - 1))[:, None]
        w = (n / n.sum())[:, None]
        mean = (w * mu).sum(0)
        v = (w * var).sum(0)
        if running_var == "total":
            allz = np.concatenate(zs)
            np.testing.assert_allclose(v + (w * (mu - mean) ** 2).sum(0), allz.var(0), rtol=1e-12)
            v = allz.var(0)
        out.append((mean, v))
    return out


@pytest.mark.parametrize("running_var", population.RUNNING_VARS)
def test_recompute_matches_numpy_with_an_unequal_last_batch(running_var):
    spec, params, state, batches = _setup()
    new = population.recompute(params, state, spec, batches, running_var=running_var)
    ref = _np_population(params, batches, running_var)
    for got, (mean, var) in zip(new["hidden"], ref, strict=True):
        np.testing.assert_allclose(got["mean"], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["var"], var, rtol=1e-5)
        assert got["count"] == len(SIZES)
        assert got["mean"].dtype == jnp.float32 and got["var"].dtype == jnp.float32
    # the old state is untouched (pure function)
    assert float(state["hidden"][0]["count"]) == 0.0


def test_count_weighting_differs_from_an_unweighted_mean():
    # guards the test above: with equal weights the numbers would be measurably different
    counts, means = [4, 1], [jnp.array([0.0]), jnp.array([5.0])]
    st = population.combine(counts, means, [jnp.array([1.0]), jnp.array([1.0])])
    np.testing.assert_allclose(st["mean"], [1.0], rtol=1e-6)  # (4*0 + 1*5) / 5, not 2.5


def test_algorithm_2_unbiased_correction_on_the_golden_case():
    # x = [1, 2, 3, 4]: biased var 1.25, unbiased 1.6667 (NORMS.md)
    n, mu, var = population.batch_moments(jnp.array([[1.0], [2.0], [3.0], [4.0]]))
    st = population.combine([n], [mu], [var], "unbiased")
    np.testing.assert_allclose(st["mean"], [2.5], rtol=1e-6)
    np.testing.assert_allclose(st["var"], [5.0 / 3.0], rtol=1e-6)
    with pytest.raises(ValueError, match="running_var"):
        population.combine([n], [mu], [var], "sample")


def test_eval_with_recomputed_state_equals_a_numpy_forward_pass():
    spec, params, state, batches = _setup()
    new = population.recompute(params, state, spec, batches)
    rng = np.random.default_rng(2)
    x = (3.0 + 2.0 * rng.standard_normal((200, 12))).astype(np.float32)
    y = rng.integers(0, 4, 200)
    logits, after, _ = models.apply(params, new, jnp.asarray(x), spec, mode="eval")
    ref, _ = _np_forward(params, x, state=new)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)
    pred, ref_pred = np.argmax(np.asarray(logits), 1), np.argmax(ref, 1)
    np.testing.assert_array_equal(pred, ref_pred)  # hence equal accuracy
    assert np.mean(pred == y) == np.mean(ref_pred == y)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), after, new))


def test_stateless_norms_keep_their_state_and_empty_input_is_an_error():
    spec = models.ModelSpec(widths=(6, 5, 3), norm="layer")
    params, state = models.init(jax.random.PRNGKey(0), spec)
    new = population.recompute(params, state, spec, [jnp.ones((4, 6))])
    assert new == state
    with pytest.raises(ValueError, match="at least one batch"):
        population.recompute(params, state, spec, [])
