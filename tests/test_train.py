"""Training: loss goes down, divergence freezes a member, renorm schedule, evaluation modes,
optimizers with traced hyperparameters, per-step noise keys. Tiny models; every jitted function is
compiled once per test."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import data, models, train
from bnexp.models import ModelSpec
from bnexp.train import StepConfig

SPEC = ModelSpec(widths=(16, 32, 32, 10), norm="batch", activation="sigmoid")


def _hp(lr: float, seed: int = 0, **norm_call: float) -> dict:
    return {
        "lr": np.float32(lr),
        "momentum": np.float32(0.9),
        "init_scale": np.float32(1.0),
        "seed": np.int32(seed),
        "norm_call": {k: np.float32(v) for k, v in norm_call.items()},
    }


def _stack(*hps: dict) -> dict:
    return jax.tree.map(lambda *v: np.stack(v), *hps)


@pytest.fixture(scope="module")
def ds():
    return data.load("synthetic", n_train=512, n_test=300, dim=16, seed=1)


def _chunk_fn(cfg: StepConfig, ds):
    """A jitted, member-vmapped chunk (the engine's structure without sharding)."""
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    def chunk(carry, hp, idx):
        return train.train_chunk(cfg, hp, carry, idx, x, y)

    init = jax.jit(jax.vmap(functools.partial(train.init_carry, cfg)))
    return init, jax.jit(jax.vmap(chunk, in_axes=(0, 0, None)))


def test_training_reduces_loss_and_divergence_freezes_one_member(ds):
    cfg = StepConfig(SPEC, "sgd", total_steps=240)
    init, chunk = _chunk_fn(cfg, ds)
    hp = _stack(_hp(0.5), _hp(1e7), _hp(0.5, seed=1))
    idx = data.batch_indices(0, 0, 120, 512, 32)
    carry, losses = chunk(init(hp), hp, idx)
    losses = np.asarray(losses)
    for m in (0, 2):  # healthy members learn
        assert np.isfinite(losses[m]).all()
        assert losses[m, -10:].mean() < 0.5 * losses[m, :10].mean()
    div = int(carry.diverged_at[1])
    assert 1 <= div <= 120 and int(carry.diverged_at[0]) == 0 == int(carry.diverged_at[2])
    assert np.isnan(losses[1, div - 1 :]).all() and np.isfinite(losses[1, : div - 1]).all()
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(carry.state.params))
    frozen = jax.tree.map(lambda a: np.asarray(a[1]), carry.state.params)
    healthy = jax.tree.map(lambda a: np.asarray(a[0]), carry.state.params)
    carry2, _ = chunk(carry, hp, data.batch_indices(0, 120, 120, 512, 32))
    jax.tree.map(
        np.testing.assert_array_equal,
        frozen,  # the diverged member stays frozen
        jax.tree.map(lambda a: np.asarray(a[1]), carry2.state.params),
    )
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a[0]) - b).max()), carry2.state.params, healthy
    )
    assert max(jax.tree.leaves(moved)) > 0.0  # ... while the others keep training
    assert np.asarray(carry2.state.step).tolist() == [240, 240, 240]
    acc, _ = jax.jit(jax.vmap(lambda p, s: train.evaluate(p, s, ds.x_test, ds.y_test, SPEC)))(
        carry2.state.params, carry2.state.norm_state
    )
    assert float(acc[0]) > 0.5  # 10 classes: chance is 0.1


def test_step_key_is_fold_in_of_member_key_and_step(ds):
    """Noisy BN: step s (state.step = s - 1) trains with fold_in(member_key, s - 1); layer l gets
    fold_in of that (checked in test_models)."""
    spec = ModelSpec(widths=(16, 8, 10), norm="noisy")
    cfg = StepConfig(spec)
    x, y = ds.x_train[:32], ds.y_train[:32]

    @jax.jit
    def both(hp):
        carry = train.init_carry(cfg, hp)
        _, loss = train.train_step(cfg, hp, carry, x, y)
        st = carry.state
        member_key = jax.random.fold_in(jax.random.key(hp["seed"]), 1)
        ref, _ = train.loss_fn(
            st.params,
            st.norm_state,
            x,
            y,
            spec,
            mode="train",
            key=jax.random.fold_in(member_key, 0),
        )
        wrong, _ = train.loss_fn(
            st.params,
            st.norm_state,
            x,
            y,
            spec,
            mode="train",
            key=jax.random.fold_in(member_key, 1),
        )
        return loss, ref, wrong

    loss, ref, wrong = both(_hp(0.1, seed=3))
    assert float(loss) == float(ref) and float(loss) != float(wrong)


def test_renorm_schedule_scaled_to_run():
    steps = np.arange(0, 1001)
    r, d = (np.asarray(v) for v in train.renorm_schedule(steps, 1000))
    assert (r[:51] == 1.0).all() and (d[:51] == 0.0).all()  # 5% plain BN warm-up
    assert np.isclose(d[250], 5.0) and d[249] < 5.0 and np.isclose(r[400], 3.0) and r[399] < 3.0
    assert (np.diff(r) >= 0).all() and (np.diff(d) >= 0).all()
    assert np.isclose(r[-1], 3.0) and np.isclose(d[-1], 5.0)
    cfg = StepConfig(ModelSpec(norm="renorm"), total_steps=1000)
    call = train.norm_call_at(cfg, _hp(0.1), 250)
    assert set(call) == {"r_max", "d_max"} and np.isclose(call["d_max"], 5.0)
    fixed = StepConfig(ModelSpec(norm="renorm"), total_steps=1000, norm_call_names=("r_max",))
    call = train.norm_call_at(fixed, _hp(0.1, r_max=1.5), 900)
    assert call["r_max"] == np.float32(1.5) and np.isclose(call["d_max"], 5.0)
    assert train.norm_call_at(StepConfig(SPEC), _hp(0.1), 3) == {}


def test_evaluate_eval_and_batch_modes(ds):
    n = 300
    params, state = models.init(jax.random.key(0), SPEC)
    state = jax.tree.map(lambda s: s + 0.3, state)  # running stats that differ from batch stats
    ev = jax.jit(
        functools.partial(train.evaluate, spec=SPEC), static_argnames=("mode", "batch_size")
    )
    logits = np.asarray(
        jax.jit(lambda p, s, x: models.apply(p, s, x, SPEC, mode="eval")[0])(
            params, state, ds.x_test
        )
    )
    acc, loss = ev(params, state, ds.x_test, ds.y_test, mode="eval")
    np.testing.assert_allclose(acc, (logits.argmax(-1) == ds.y_test).mean(), rtol=1e-6)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(loss, -logp[np.arange(n), ds.y_test].mean(), rtol=1e-5)
    with pytest.MonkeyPatch.context() as mp:  # chunked + padded evaluation gives the same numbers
        mp.setattr(train, "EVAL_CHUNK", 128)
        acc_c, loss_c = jax.jit(lambda p, s: train.evaluate(p, s, ds.x_test, ds.y_test, SPEC))(
            params, state
        )
    np.testing.assert_allclose([acc_c, loss_c], [acc, loss], rtol=1e-5)
    # batch mode: batches of batch_size, the partial last batch (300 = 4 x 64 + 44) dropped
    acc_b, _ = ev(params, state, ds.x_test, ds.y_test, mode="batch", batch_size=64)
    apply_b = jax.jit(lambda p, s, x: models.apply(p, s, x, SPEC, mode="batch")[0])
    correct = [
        np.asarray(apply_b(params, state, ds.x_test[i : i + 64])).argmax(-1)
        == ds.y_test[i : i + 64]
        for i in range(0, 256, 64)
    ]
    np.testing.assert_allclose(acc_b, np.mean(correct), rtol=1e-6)
    assert abs(float(acc_b) - float(acc)) > 0  # running vs batch statistics differ here
    assert np.isnan(ev(params, state, ds.x_test, ds.y_test, mode="batch", batch_size=1)[0])


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_optimizers_take_traced_hyperparameters(name):
    grads = {"w": jnp.ones((3,))}

    @jax.jit
    @jax.vmap
    def two_updates(lr, mom):
        opt = train.make_optimizer(name, lr, mom)
        params = {"w": jnp.zeros((3,))}
        state = opt.init(params)
        u1, state = train.make_optimizer(name).update(grads, state, params)
        u2, _ = train.make_optimizer(name).update(grads, state, params)
        return u1["w"][0], u2["w"][0], state.hyperparams["learning_rate"]

    u1, u2, lr = (np.asarray(v) for v in two_updates(jnp.array([0.1, 0.2]), jnp.array([0.9, 0.5])))
    np.testing.assert_allclose(lr, [0.1, 0.2])
    np.testing.assert_allclose(u1, [-0.1, -0.2], rtol=1e-3)  # adam's first step is lr*sign
    if name == "momentum":
        np.testing.assert_allclose(u2, [-0.1 * 1.9, -0.2 * 1.5], rtol=1e-6)
    else:
        np.testing.assert_allclose(u2, u1, rtol=1e-3)
    with pytest.raises(ValueError, match="optimizer"):
        train.make_optimizer("rmsprop")


@pytest.mark.parametrize("unroll", [1, True])
def test_chunk_of_n_traced_steps_equals_the_first_n_steps(ds, unroll):
    """train_chunk(n=k) on rows padded to T runs exactly the first k steps (rolled: a loop of
    traced trip count; unrolled: all T steps, those past k masked), losses NaN past k, one
    compiled program for every k."""
    cfg = StepConfig(SPEC, "sgd", total_steps=100)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    hp = _hp(0.5)
    carry0 = jax.jit(functools.partial(train.init_carry, cfg))(hp)
    idx = jnp.asarray(data.batch_indices(0, 0, 6, 512, 32))
    fixed = jax.jit(lambda c, i, n: train.train_chunk(cfg, hp, c, i, x, y, unroll=unroll, n=n))
    for k in (0, 1, 4, 6):
        padded = jnp.where(jnp.arange(6)[:, None] < k, idx, 0)
        got, got_loss = fixed(carry0, padded, jnp.int32(k))
        if k:
            want, want_loss = jax.jit(lambda c, i: train.train_chunk(cfg, hp, c, i, x, y))(
                carry0, idx[:k]
            )
        else:
            want, want_loss = carry0, jnp.zeros((0,))
        np.testing.assert_allclose(np.asarray(got_loss)[:k], np.asarray(want_loss), rtol=1e-6)
        assert np.isnan(np.asarray(got_loss)[k:]).all()
        assert int(got.state.step) == k
        pairs = zip(
            jax.tree.leaves(got.state.params), jax.tree.leaves(want.state.params), strict=True
        )
        for a, b in pairs:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert fixed._cache_size() == 1


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_update_in_any_one_leaf_freezes_the_member(bad):
    """The guard's finiteness test (train._finite) sees a single bad element in any leaf, while
    the loss itself stays finite."""
    cfg = StepConfig(SPEC, "sgd", total_steps=10)
    carry = jax.vmap(functools.partial(train.init_carry, cfg))(_stack(_hp(0.1)))
    apply = jax.vmap(functools.partial(train.apply_grads, cfg))
    loss = jnp.ones((1,), jnp.float32)
    grads = jax.tree.map(jnp.zeros_like, carry.state.params)
    leaves, tree = jax.tree.flatten(grads)
    assert train._finite(grads) and train._finite({})
    # both ways of testing (per leaf; joined, for models of many leaves) see every bad element
    many = [jnp.zeros((3,))] * (train.FINITE_PER_LEAF_MAX + 1)
    assert train._finite(many)
    for i in (0, len(many) - 1):
        assert not train._finite([*many[:i], jnp.asarray([0.0, bad, 0.0]), *many[i + 1 :]])
    for i in (0, len(leaves) // 2, len(leaves) - 1):
        poisoned = list(leaves)
        poisoned[i] = poisoned[i].reshape(-1).at[-1].set(bad).reshape(poisoned[i].shape)
        g = jax.tree.unflatten(tree, poisoned)
        assert not bool(train._finite(g))
        new, out_loss = apply(carry, loss, carry.state.norm_state, g)
        assert int(new.diverged_at[0]) == 1 and np.isnan(out_loss[0])
        jax.tree.map(np.testing.assert_array_equal, new.state.params, carry.state.params)
    healthy, out_loss = apply(carry, loss, carry.state.norm_state, grads)
    assert int(healthy.diverged_at[0]) == 0 and float(out_loss[0]) == 1.0
