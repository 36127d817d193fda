"""Models: shapes for every norm x activation, placement and bias, init scale, eval vs train
statistics, noisy keys per layer, dropout, scale invariance. Shape checks use jax.eval_shape
(tracing only) so the whole file compiles little."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import models, norms
from bnexp.models import ModelSpec

KEY = jax.random.key(0)
# Jitted entry points: one compile per spec instead of one per primitive (eager mode).
init = jax.jit(models.init, static_argnums=1)
apply = jax.jit(models.apply, static_argnums=3, static_argnames=("mode", "capture"))
NORM_OPTIONS = {"ghost": (("virtual_batch_size", 4),), "group": (("groups", 4),)}
DENSE_NORMS = [n for n in norms.names() if n != "instance"]  # instance norm needs (N, H, W, C)


def _normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _spec(norm: str, **kw) -> ModelSpec:
    return ModelSpec(norm=norm, norm_options=NORM_OPTIONS.get(norm, ()), **kw)


def _shapes(spec: ModelSpec, x_shape: tuple[int, ...], mode: str) -> tuple:
    def run(key, x):
        params, state = models.init(key, spec)
        return models.apply(
            params, state, x, spec, mode=mode, key=jax.random.fold_in(key, 1), capture=True
        )

    logits, state, aux = jax.eval_shape(run, KEY, jax.ShapeDtypeStruct(x_shape, jnp.float32))
    return logits.shape, [p.shape for p in aux["preacts"]], state


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "identity"])
@pytest.mark.parametrize("norm", DENSE_NORMS)
@pytest.mark.parametrize("placement", ["before", "after"])
def test_mlp_shapes_every_norm_and_activation(norm, activation, placement):
    spec = _spec(norm, widths=(20, 16, 12, 8, 10), activation=activation, placement=placement)
    for mode in ("train", "eval", "batch"):
        logits, preacts, state = _shapes(spec, (8, 20), mode)
        assert logits == (8, 10)
        assert preacts == [(8, 16), (8, 12), (8, 8)]
        assert len(state["hidden"]) == 3 and state["conv"] == []


@pytest.mark.parametrize("norm", norms.names())
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_cnn_shapes(norm, input_shape):
    spec = _spec(
        norm, kind="cnn", channels=(8, 16), dense=(12,), input_shape=input_shape, activation="relu"
    )
    h, w = input_shape[0], input_shape[1]
    for x_shape in [(4,) + input_shape, (4, h * w * input_shape[2])]:  # nhwc and flat layouts
        logits, preacts, _ = _shapes(spec, x_shape, "train")
        assert logits == (4, 10)
        assert preacts == [(4, h, w, 8), (4, h // 2, w // 2, 16), (4, 12)]


def test_conv_implementations_agree():
    x = _normal(6, (3, 9, 7, 2))
    w = _normal(7, (3, 3, 2, 4))
    ref = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    conv = jax.jit(models._conv3x3, static_argnums=2)
    for impl in ("im2col", "xla", "auto"):
        np.testing.assert_allclose(conv(x, w, impl), ref, rtol=1e-5, atol=1e-5)
    pooled = np.asarray(jax.jit(models._maxpool2)(x))
    np.testing.assert_array_equal(pooled, x[:, :8, :6].reshape(3, 4, 2, 3, 2, 2).max(axis=(2, 4)))


def test_linear_kind_is_linear():
    spec = ModelSpec(kind="linear", widths=(6, 5, 5, 5, 3), norm="none", activation="sigmoid")
    params, state = init(KEY, spec)
    x = _normal(1, (4, 6))
    f = jax.jit(lambda x: apply(params, state, x, spec)[0])
    np.testing.assert_allclose(f(2.0 * x), 2.0 * f(x), rtol=1e-5, atol=1e-6)  # biases start at 0


def test_bias_dropped_before_norm_kept_otherwise():
    before, after, plain = (
        jax.eval_shape(lambda k, s=spec: models.init(k, s), KEY)[0]
        for spec in (
            ModelSpec(norm="batch"),
            ModelSpec(norm="batch", placement="after"),
            ModelSpec(norm="none"),
        )
    )
    assert all("b" not in layer for layer in before["hidden"])
    assert all("b" in layer for layer in after["hidden"] + plain["hidden"])
    assert plain["hidden"][0]["norm"] == {} and "scale" in before["hidden"][0]["norm"]
    for p in (before, after, plain):  # the final layer is a plain dense layer with bias
        assert set(p["out"]) == {"w", "b"} and p["out"]["w"].shape == (100, 10)


def test_init_scale_multiplies_weights_not_biases_and_is_traceable():
    spec = ModelSpec(widths=(30, 20, 10), norm="batch", placement="after")
    p1, _ = init(KEY, spec, 1.0)
    p3, _ = init(KEY, spec, 3.0)  # the same compiled program: init_scale is traced
    np.testing.assert_allclose(p3["hidden"][0]["w"], 3.0 * p1["hidden"][0]["w"], rtol=1e-6)
    np.testing.assert_allclose(p3["out"]["w"], 3.0 * p1["out"]["w"], rtol=1e-6)
    np.testing.assert_array_equal(p3["hidden"][0]["b"], p1["hidden"][0]["b"])
    np.testing.assert_array_equal(
        p3["hidden"][0]["norm"]["scale"], p1["hidden"][0]["norm"]["scale"]
    )
    keep_out = ModelSpec(widths=(30, 20, 10), scale_output_layer=False)
    np.testing.assert_array_equal(
        init(KEY, keep_out, 3.0)[0]["out"]["w"], init(KEY, keep_out, 1.0)[0]["out"]["w"]
    )


@pytest.mark.parametrize(
    "scheme,expected",
    [
        ("gaussian", lambda fi, fo: 0.1),
        ("glorot", lambda fi, fo: (2.0 / (fi + fo)) ** 0.5),
        ("he", lambda fi, fo: (2.0 / fi) ** 0.5),
    ],
)
def test_init_schemes_std(scheme, expected):
    spec = ModelSpec(widths=(400, 300, 10), init=scheme)
    w = np.asarray(init(KEY, spec)[0]["hidden"][0]["w"])
    assert abs(w.std() / expected(400, 300) - 1.0) < 0.02  # 120k samples: ~0.2% sampling error
    assert abs(w.mean()) < 0.01 * expected(400, 300)


def test_preact_is_the_nonlinearity_input():
    x = _normal(2, (64, 20)) * 3.0 + 1.0
    spec = ModelSpec(widths=(20, 16, 10), norm="batch")  # before: preact = BN(Wu), normalized
    params, state = init(KEY, spec)
    _, _, aux = apply(params, state, x, spec, mode="train", capture=True)
    z = np.asarray(aux["preacts"][0])
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(0), 1.0, rtol=1e-3)  # eps=1e-5 relative to var ~ 1
    after = ModelSpec(widths=(20, 16, 10), norm="batch", placement="after")
    params, state = init(KEY, after)
    _, _, aux = apply(params, state, x, after, mode="train", capture=True)
    w, b = params["hidden"][0]["w"], params["hidden"][0]["b"]
    np.testing.assert_allclose(aux["preacts"][0], x @ w + b[None, :], rtol=1e-5, atol=1e-6)


def test_eval_uses_running_statistics_train_does_not():
    spec = ModelSpec(widths=(20, 16, 10), norm="batch")
    params, state = init(KEY, spec)
    x = _normal(3, (32, 20))
    shifted = jax.tree.map(lambda s: s, state)
    shifted["hidden"][0] = {**state["hidden"][0], "mean": state["hidden"][0]["mean"] + 0.5}
    outs = {}
    for mode in ("train", "eval", "batch"):
        a = apply(params, state, x, spec, mode=mode)[0]
        b = apply(params, shifted, x, spec, mode=mode)[0]
        outs[mode] = float(jnp.abs(a - b).max())
    assert outs["eval"] > 1e-3
    assert outs["train"] == 0.0 and outs["batch"] == 0.0
    _, new_state, _ = apply(params, state, x, spec, mode="eval")
    jax.tree.map(np.testing.assert_array_equal, new_state, state)  # eval leaves state alone


def test_scale_invariance_with_batch_norm():
    """Ioffe & Szegedy Sec. 3.3: BN(aWu) = BN(Wu); with the output layer unscaled, logits agree."""
    spec = ModelSpec(
        widths=(20, 16, 16, 10),
        norm="batch",
        scale_output_layer=False,
        norm_options=(("eps", 0.0),),
    )  # exact invariance needs eps = 0
    x = _normal(4, (32, 20))
    logits = [apply(*init(KEY, spec, a), x, spec, mode="train")[0] for a in (1.0, 7.0)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-5)
    plain = ModelSpec(widths=(20, 16, 16, 10), norm="none", scale_output_layer=False)
    unnormed = [apply(*init(KEY, plain, a), x, plain)[0] for a in (1.0, 7.0)]
    assert float(jnp.abs(unnormed[0] - unnormed[1]).max()) > 1e-2


def test_noisy_norm_gets_fold_in_key_per_layer():
    spec = ModelSpec(widths=(12, 8, 8, 5), norm="noisy", activation="tanh")
    params, state = init(KEY, spec)
    x = _normal(5, (16, 12))
    key = jax.random.key(9)
    _, _, aux = apply(params, state, x, spec, mode="train", key=key, capture=True)
    norm = norms.get("noisy")

    @jax.jit
    def by_hand(params, state, x, key):
        h = params["hidden"]
        z0, _ = norm.apply(
            h[0]["norm"],
            state["hidden"][0],
            x @ h[0]["w"],
            mode="train",
            key=jax.random.fold_in(key, 0),
        )
        z1, _ = norm.apply(
            h[1]["norm"],
            state["hidden"][1],
            jnp.tanh(z0) @ h[1]["w"],
            mode="train",
            key=jax.random.fold_in(key, 1),
        )
        return z0, z1

    z0, z1 = by_hand(params, state, x, key)
    np.testing.assert_allclose(aux["preacts"][0], z0, rtol=1e-6)
    np.testing.assert_allclose(aux["preacts"][1], z1, rtol=1e-5, atol=1e-6)
    other = apply(params, state, x, spec, mode="train", key=jax.random.key(10), capture=True)[0]
    same = apply(params, state, x, spec, mode="train", key=key, capture=True)[0]
    assert float(jnp.abs(other - same).max()) > 1e-3
    with pytest.raises(ValueError, match="key"):
        apply(params, state, x, spec, mode="train", capture=True)


def test_dropout_train_only():
    spec = ModelSpec(widths=(12, 64, 5), norm="none", activation="relu", dropout=0.5)
    params, state = init(KEY, spec)
    x = jnp.ones((8, 12))
    with pytest.raises(ValueError, match="key"):
        apply(params, state, x, spec, mode="train")
    a = apply(params, state, x, spec, mode="train", key=jax.random.key(1))[0]
    b = apply(params, state, x, spec, mode="train", key=jax.random.key(2))[0]
    e1 = apply(params, state, x, spec, mode="eval")[0]
    e2 = apply(params, state, x, spec, mode="eval")[0]
    assert float(jnp.abs(a - b).max()) > 1e-4
    np.testing.assert_array_equal(e1, e2)


def test_spec_validation():
    for bad in [
        dict(kind="rnn"),
        dict(activation="gelu"),
        dict(placement="middle"),
        dict(init="orthogonal"),
        dict(dropout=1.0),
    ]:
        with pytest.raises(ValueError):
            ModelSpec(**bad)
    with pytest.raises(ValueError, match="unknown norm"):
        init(KEY, ModelSpec(norm="weird"))


def test_dense_wgrad_matches_autodiff_shared_and_own_inputs():
    """models.dense_wgrad: the value and both gradients of autodiff's h @ w, for one model and
    vmapped over members with a shared input (the engine's lr sweeps) or own inputs."""
    h, w = jnp.asarray(_normal(1, (12, 7))), jnp.asarray(_normal(2, (4, 7, 5)))
    hs = jnp.asarray(_normal(3, (4, 12, 7)))
    cot = jnp.asarray(_normal(4, (12, 5)))

    def loss(mm):
        return lambda h, w: jnp.sum(jnp.tanh(mm(h, w)) * cot)

    for name, in_axes, args in (
        ("one", None, (h, w[0])),
        ("shared", (None, 0), (h, w)),
        ("own", (0, 0), (hs, w)),
    ):

        def grads(mm, in_axes=in_axes, args=args):
            f = jax.grad(loss(mm), argnums=(0, 1))
            f = jax.vmap(f, in_axes=in_axes) if in_axes else f
            return jax.jit(f)(*args)

        want, got = grads(jnp.matmul), grads(models.dense_wgrad)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_allclose(b, a, rtol=2e-6, atol=2e-6, err_msg=name)
    np.testing.assert_array_equal(
        jax.jit(models.dense_wgrad)(h, w[0]), jax.jit(jnp.matmul)(h, w[0])
    )
