"""The "weight_norms" and "saturation" probes on constructed weights with a known answer, and in
the engine (shapes, finite, training untouched)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import models, probes
from bnexp.models import ModelSpec
from bnexp.sweep import Trial, run_sweep

RTOL = 1e-5  # float32 precision (STYLE.md)


def _call(name, spec, params, state, x):
    hp = {"norm_call": {}, "key": None}
    return probes.get(name)(spec, params, state, (x, jnp.zeros((x.shape[0],), jnp.int32)), hp, None)


def _one_layer(activation: str, w_row):
    """A 1-input MLP whose hidden pre-activations on x = +-1 are exactly +-w_row (no norm, bias 0)."""
    spec = ModelSpec(widths=(1, len(w_row), 2), activation=activation, norm="none")
    params, state = models.init(jnp.zeros((2,), jnp.uint32), spec)
    params["hidden"][0]["w"] = jnp.asarray([w_row], jnp.float32)
    return spec, params, state


def test_sigmoid_saturation_threshold_is_2_arccosh_5():
    """sigmoid'(z) = 1 / (4 cosh^2(z / 2)) < 0.01 exactly where |z| > 2 arccosh(5) = 4.5848."""
    edge = 2 * math.acosh(5.0)
    spec, params, state = _one_layer("sigmoid", [0.0, 4.5, edge - 0.01, edge + 0.01, -5.0, 8.0])
    x = jnp.asarray([[1.0], [-1.0]], jnp.float32)
    out = _call("saturation", spec, params, state, x)["saturation"]
    assert out.shape == (1,)
    assert float(out[0]) == pytest.approx(3 / 6)  # edge + 0.01, -5 and 8, at both signs of x


def test_tanh_saturation_and_weight_norms():
    """tanh'(z) = 1 - tanh^2(z) < 0.01 where |z| > arctanh(sqrt(0.99)) = 2.9932."""
    edge = math.atanh(math.sqrt(0.99))
    w = [1.0, edge - 0.01, edge + 0.01, -4.0]
    spec, params, state = _one_layer("tanh", w)
    x = jnp.asarray([[1.0]], jnp.float32)
    assert float(_call("saturation", spec, params, state, x)["saturation"][0]) == pytest.approx(0.5)
    norms = _call("weight_norms", spec, params, state, x)["weight_norms"]
    np.testing.assert_allclose(np.asarray(norms), [np.linalg.norm(w)], rtol=RTOL)


def test_weight_norms_scale_with_the_init_scale():
    spec = ModelSpec(widths=(8, 6, 5, 3), norm="batch")
    x = jnp.ones((4, 8), jnp.float32)
    p1, s1 = models.init(jnp.zeros((2,), jnp.uint32), spec, 1.0)
    p3, s3 = models.init(jnp.zeros((2,), jnp.uint32), spec, 3.0)
    n1 = np.asarray(_call("weight_norms", spec, p1, s1, x)["weight_norms"])
    n3 = np.asarray(_call("weight_norms", spec, p3, s3, x)["weight_norms"])
    assert n1.shape == (2,)
    expect = [np.linalg.norm(np.asarray(p1["hidden"][i]["w"])) for i in range(2)]
    np.testing.assert_allclose(n1, expect, rtol=RTOL)
    np.testing.assert_allclose(n3, 3 * n1, rtol=RTOL)


def test_probes_in_the_engine_leave_training_unchanged():
    spec = ModelSpec(widths=(32, 16, 16, 10), norm="batch")
    base = dict(model=spec, dataset="synthetic", steps=20, eval_every=10, probe_batch_size=60)
    trials = [Trial(lr=0.5, probes=p, **base) for p in ((), ("weight_norms", "saturation"))]
    plain, probed = run_sweep(trials)
    for k in ("test_acc", "test_loss", "train_loss"):
        np.testing.assert_array_equal(plain.history[k], probed.history[k], err_msg=k)
    e = len(probed.history["step"])
    for k in ("weight_norms", "saturation"):
        assert probed.history[k].shape == (e, 2) and np.isfinite(probed.history[k]).all(), k
    sat = probed.history["saturation"]
    assert ((0 <= sat) & (sat <= 1)).all()
