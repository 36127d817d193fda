"""Every norm under jit, grad, vmap, scan and eval_shape; synchronized BN over a named axis
(vmap in process, 4 CPU devices with shard_map and pmap in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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


def assert_tree_close(actual, expected) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert_close(a, e)


OPTIONS = {"group": {"groups": 2}, "ghost": {"virtual_batch_size": 3}}
SHAPE = (6, 2, 2, 4)  # (N, H, W, C): every norm accepts it


def model_inputs(name, models, steps):
    """Independent params/states (stacked over `models`), inputs (models, steps, *SHAPE), keys."""
    norm = norms.get(name, **OPTIONS.get(name, {}))
    rng = np.random.default_rng(0)
    inits = [norm.init(SHAPE[-1]) for _ in range(models)]
    params = jax.tree.map(lambda *v: jnp.stack(v), *[p for p, _ in inits])
    params = jax.tree.map(
        lambda v: v + jnp.asarray(0.1 * rng.standard_normal(v.shape), jnp.float32), params
    )
    states = jax.tree.map(lambda *v: jnp.stack(v), *[s for _, s in inits])
    xs = (rng.standard_normal((models, steps) + SHAPE) + 2.0).astype(np.float32)
    # raw key data (numpy), wrapped inside the traced functions: no eager indexing of keys
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(0), (models, steps))))
    return norm, params, states, xs, keys


@pytest.mark.parametrize("name", norms.names())
def test_jit_grad_vmap_scan_eval_shape(name):
    """Compositions jit(vmap(scan(grad))) against jitted single steps. layer and instance are
    group_norm with groups 1 and C (one code path): they get the cheap checks (eval_shape, a
    jitted grad step), keeping the suite's compile time down."""
    models, steps = 3, 3
    norm, params, states, xs, keys = model_inputs(name, models, steps)

    def step(params, state, x, key):
        """One training step's loss, new state and parameter gradients."""

        def loss(params):
            y, new_state = norm.apply(
                params, state, x, mode="train", key=jax.random.wrap_key_data(key)
            )
            return jnp.sum(jnp.sin(y)), new_state

        (value, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return value, new_state, grads

    def pick(tree, i):
        return jax.tree.map(lambda v: np.asarray(v)[i], tree)

    # Reference: each model on its own, a Python loop of jitted steps (jit + grad).
    jstep = jax.jit(step)
    ref = []
    for i in range(models):
        p, s, out = pick(params, i), pick(states, i), []
        for t in range(steps):
            value, s, grads = jax.tree.map(np.asarray, jstep(p, s, xs[i, t], keys[i, t]))
            assert np.isfinite(float(value))
            assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
            out.append((value, s, grads))
        ref.append(out)

    # scan over the steps (state carried) inside vmap over the independent models
    def run_steps(p, s, xs, keys):
        def body(s, xk):
            value, s, grads = step(p, s, *xk)
            return s, (value, s, grads)

        return jax.lax.scan(body, s, (xs, keys))[1]

    if name not in ("layer", "instance"):  # their composition is covered by "group"
        values, new_states, grads = jax.tree.map(
            np.asarray, jax.jit(jax.vmap(run_steps))(params, states, xs, keys)
        )
        for i in range(models):
            for t in range(steps):
                assert_close(values[i, t], ref[i][t][0])
                assert_tree_close(pick(pick(new_states, i), t), ref[i][t][1])
                assert_tree_close(pick(pick(grads, i), t), ref[i][t][2])

    # eval_shape: no computation; bf16 input gives bf16 output and float32 state
    for mode in ("train", "eval", "batch"):
        y, s = jax.eval_shape(
            lambda p, s, x, k, mode=mode: norm.apply(
                p, s, x, mode=mode, key=jax.random.wrap_key_data(k)
            ),
            pick(params, 0),
            pick(states, 0),
            jax.ShapeDtypeStruct(SHAPE, jnp.bfloat16),
            keys[0, 0],
        )
        assert y.shape == SHAPE and y.dtype == jnp.bfloat16
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(s))
        assert jax.tree.structure(s) == jax.tree.structure(pick(states, 0))


# ---------------------------------------------------------------- synchronized BN, vmap axis


def sharded_vs_whole(name, sizes, seed=0, opts=None):
    """Shards of `sizes` rows padded to one size, normalized with axis_name under a named vmap,
    against the same norm on the concatenated batch. Returns both (y, state, dx, dparams)."""
    opts = opts or ({"virtual_batch_size": 2} if name == "ghost" else {})
    synced = norms.get(name, axis_name="shards", **opts)
    whole = norms.get(name, **opts)
    rng = np.random.default_rng(seed)
    params, state = whole.init(3)
    params = {"scale": params["scale"] + 0.5, "bias": params["bias"] - 0.2}
    state = {"mean": state["mean"] + 0.3, "var": state["var"] * 2.0, "count": state["count"] + 2}
    xs = [
        (rng.standard_normal((n, 3)) * [1.0, 2.0, 0.5] + [1.0, -2.0, 4.0]).astype(np.float32)
        for n in sizes
    ]
    gs = [rng.standard_normal((n, 3)).astype(np.float32) for n in sizes]
    pad = max(sizes)
    xp = np.stack([np.pad(x, ((0, pad - len(x)), (0, 0)), constant_values=1e30) for x in xs])
    gp = np.stack([np.pad(g, ((0, pad - len(g)), (0, 0))) for g in gs])
    mask = np.stack([np.arange(pad) < n for n in sizes])
    key = jax.random.key(3)

    def shard(params, x, g, m):
        y, s = synced.apply(
            params, state, x, mode="train", key=key, mask=None if len(set(sizes)) == 1 else m
        )
        return jnp.sum(jnp.where(m[:, None], y * g, 0)), (y, s)

    def run_sharded(params, x, g, m):
        def loss(x, params):
            values, (y, s) = jax.vmap(shard, (None, 0, 0, 0), axis_name="shards")(params, x, g, m)
            return jnp.sum(values), (y, jax.tree.map(lambda v: v[0], s))

        (_, (y, s)), (dx, dp) = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, params)
        return y, s, dx, dp

    def run_whole(params, x, g):
        def loss(x, params):
            y, s = whole.apply(params, state, x, mode="train", key=key)
            return jnp.sum(y * g), (y, s)

        (_, (y, s)), (dx, dp) = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, params)
        return y, s, dx, dp

    (y, s, dx, dp), whole_out = jax.jit(lambda *a: (run_sharded(*a[:4]), run_whole(a[0], *a[4:])))(
        params, xp, gp, mask, np.concatenate(xs), np.concatenate(gs)
    )
    sharded = (np.asarray(y)[mask], s, np.asarray(dx)[mask], dp)  # valid rows, in order
    return sharded, whole_out, xs


def test_sync_noisy_over_named_vmap_axis_equals_whole_batch():
    """(batch, renorm and ghost: the 4-device test below.) Per-unit noise, one key for all
    shards: one noise. (Per-sample noise is drawn per device: not the whole batch's draw.)"""
    sharded, whole, _ = sharded_vs_whole("noisy", [4, 4, 4, 4], opts={"noise_per": "unit"})
    for a, b in zip(sharded, whole, strict=True):
        assert_tree_close(a, b)


def test_sync_unequal_counts_is_count_weighted():
    """Flax averages per-device means, wrong for unequal counts; bnexp sums sums and counts."""
    sharded, whole, xs = sharded_vs_whole("batch", [5, 3, 1, 7])
    for a, b in zip(sharded, whole, strict=True):
        assert_tree_close(a, b)
    true_mean = np.concatenate(xs).astype(np.float64).mean(0)
    mean_of_means = np.mean([x.astype(np.float64).mean(0) for x in xs], 0)
    assert np.max(np.abs(mean_of_means - true_mean)) > 0.05  # the data tell the two apart
    assert_close(np.asarray(sharded[1]["mean"]) - 0.9 * 0.3, 0.1 * true_mean)


# ---------------------------------------------------------------- 4 CPU devices (subprocess)

DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from bnexp import norms

    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(0)

    def close(a, b):
        b = np.asarray(b, np.float64)
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-5,
                                   atol=1e-6 * np.max(np.abs(b)))

    def check(name, sizes, grads, **opts):
        synced, whole = norms.get(name, axis_name="d", **opts), norms.get(name, **opts)
        params, state = whole.init(3)
        params = {"scale": params["scale"] * 1.5, "bias": params["bias"] + 0.25}
        xs = [(rng.standard_normal((n, 2, 3)) * 2 + 1).astype(np.float32) for n in sizes]
        gs = [rng.standard_normal((n, 2, 3)).astype(np.float32) for n in sizes]
        pad = max(sizes)
        xp = np.concatenate([np.pad(x, ((0, pad - len(x)), (0, 0), (0, 0)),
                                    constant_values=1e30) for x in xs])
        gp = np.concatenate([np.pad(g, ((0, pad - len(g)), (0, 0), (0, 0))) for g in gs])
        mask = np.concatenate([np.arange(pad) < n for n in sizes])
        masked = len(set(sizes)) > 1

        def body(params, x, g, m):
            y, s = synced.apply(params, state, x, mode="train", mask=m if masked else None)
            value = jnp.sum(jnp.where(m[:, None, None], y * g, 0))
            return y, s, jax.lax.psum(value, "d")

        sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("d"), P("d"), P("d")),
                                out_specs=(P("d"), P(), P()))

        def loss_sharded(x, params):
            y, s, value = sharded(params, x, gp, mask)
            return value, (y, s)

        def loss_whole(x, params):
            y, s = whole.apply(params, state, x, mode="train")
            return jnp.sum(y * np.concatenate(gs)), (y, s)

        @jax.jit
        def run(xp, x_whole, params):  # one compiled program per check
            if not grads:
                return loss_sharded(xp, params)[1], loss_whole(x_whole, params)[1]
            return [jax.value_and_grad(f, (0, 1), has_aux=True)(x, params)
                    for f, x in ((loss_sharded, xp), (loss_whole, x_whole))]

        out = run(xp, np.concatenate(xs), params)
        if grads:
            ((_, (y, s)), (dx, dp)), ((_, (yw, sw)), (dxw, dpw)) = out
            close(np.asarray(dx)[mask], dxw)
            for k in dp:
                close(dp[k], dpw[k])
        else:
            (y, s), (yw, sw) = out
        close(np.asarray(y)[mask], yw)
        for k in s:
            close(s[k], sw[k])

    check("batch", [4, 4, 4, 4], grads=False)
    check("batch", [5, 3, 1, 7], grads=True)  # unequal shards, padded and masked
    check("renorm", [2, 6, 3, 5], grads=False)
    check("ghost", [4, 4, 4, 4], grads=False, virtual_batch_size=2)

    # pmap with axis_index_groups: devices {0, 1} and {2, 3} are synchronized separately.
    bn = norms.batch_norm(axis_name="d", axis_index_groups=[[0, 1], [2, 3]])
    params, state = bn.init(3)
    x = (rng.standard_normal((4, 5, 3)) * 3 - 1).astype(np.float32)
    y, s = jax.pmap(lambda x: bn.apply(params, state, x, mode="train"), axis_name="d")(x)
    whole = jax.jit(lambda x: norms.batch_norm().apply(params, state, x, mode="train"))
    for group in ([0, 1], [2, 3]):
        yw, sw = whole(x[group].reshape(10, 3))
        close(np.asarray(y)[group].reshape(10, 3), yw)
        close(s["var"][group[0]], sw["var"])
        close(s["var"][group[1]], sw["var"])
    print("SYNC-OK")
""")


def test_sync_batch_norm_on_four_devices():
    """shard_map over 4 CPU devices (equal and unequal shards, with gradients), pmap with
    axis_index_groups. XLA_FLAGS must be set before JAX starts, hence the subprocess."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SYNC-OK" in result.stdout


def test_sync_noisy_per_sample_noise_differs_across_shards():
    """Per-sample noise under axis_name: each device draws its own rows (fold_in of its index),
    so identical shards get different noise but the same per-step mu_t (shared key)."""
    synced = norms.get("noisy", axis_name="shards")
    params, state = synced.init(3)
    zero = {"scale": jnp.zeros(3), "bias": jnp.zeros(3)}
    x = np.tile(np.random.default_rng(0).standard_normal((1, 8, 3)).astype(np.float32), (4, 1, 1))
    m = jax.vmap(
        lambda x: synced.apply(zero, state, x, mode="train", key=jax.random.key(3))[0],
        axis_name="shards",
    )(x)
    m = np.asarray(m, np.float64)
    assert not np.allclose(m[0], m[1])
    centers = (m.max(axis=(1, 2)) + m.min(axis=(1, 2))) / 2
    assert np.ptp(centers) < 0.05  # mu_t shared: each shard's values lie in mu_t +- 0.1
