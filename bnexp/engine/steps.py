"""The step programs of a sweep group: functions of the member axis that bnexp.engine.cache
compiles, one of each per group (``jax.vmap`` of bnexp.train's single-member code):

    init(hp) -> carry                                  members' initial TrainState + bookkeeping
    steps(carry, hp, idx, n, data) -> (carry, losses)  the first n of L guarded train steps
    point(carry, hp, data) -> metrics                  eval, batch-stat eval, probes (last point)
    point_lite(carry, hp, data) -> metrics             eval on a test subset, probes (the others)

``steps`` is group_steps, or blocked_steps when the plan has member blocks; ``point`` and
``point_lite`` are member_point (full=True / False). What each uses (first-weight layout,
blocks, squeezed single member, unrolled loop) is the group's bnexp.engine.layout.Plan. Trace
counts (one trace per program, the compile guard test) go into the ``traces`` counter that
bnexp.engine.cache passes in (ProgramCache.traces).

Just over 300 lines: the four step programs and the helpers only they use.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from bnexp import probes, train
from bnexp.engine.layout import AXIS, ProgramConfig, group_updates_first_layer
from bnexp.train import Carry, StepConfig

Array = jax.Array
Traces = collections.Counter  # trace name -> times traced (ProgramCache.traces)
PROBE_KEY_TAG = 2  # fold_in(key(seed), 0) init, 1 training, 2 probes
EVAL_SUBSET = 2000  # test examples a point before the last evaluates (point_lite; see run_group)
EVAL_SUBSET_SEED = 20150211  # the subset is a fixed random draw (not MNIST's first, easier, images)


@functools.cache
def eval_subset(n_test: int) -> np.ndarray:
    """The sorted test rows every point but the last evaluates: EVAL_SUBSET of them drawn with a
    fixed seed (all when the test set is smaller). MNIST's test set is ordered (its first 5,000
    images are the cleaner NIST half), so its first rows would be a biased sample."""
    if n_test <= EVAL_SUBSET:
        return np.arange(n_test)
    rng = np.random.default_rng(EVAL_SUBSET_SEED)
    return np.sort(rng.permutation(n_test)[:EVAL_SUBSET])


def _first_w(params: Any) -> Array:
    return params["hidden"][0]["w"]


def _split_first_w(params: Any) -> tuple[Array, Any]:
    """(first dense weight, params without it): the group updates that leaf itself."""
    hidden = list(params["hidden"])
    first = dict(hidden[0])
    w = first.pop("w")
    hidden[0] = first
    return w, {**params, "hidden": hidden}


def _with_first_w(params: Any, w: Array) -> Any:
    hidden = list(params["hidden"])
    hidden[0] = {**hidden[0], "w": w}
    return {**params, "hidden": hidden}


def _group_step(
    cfg: StepConfig, axes: Carry, hp: dict, carry: Carry, x: Array, y: Array
) -> tuple[Carry, Array]:
    """All members' guarded SGD step with the first dense weight w (D, members, H) updated here:
    exactly train.train_step's arithmetic (optax.sgd's ``(-lr) * g``, ``p + u``, the guard)."""
    shared = None if x.ndim == 2 else 0
    loss, norm_state, grads = jax.vmap(
        functools.partial(train.step_grads, cfg),
        in_axes=(0, axes, shared, shared),
        out_axes=(0, 0, axes.state.params),
    )(hp, carry, x, y)
    w, params = _split_first_w(carry.state.params)
    g, rest_grads = _split_first_w(grads)
    lr = carry.state.opt_state.hyperparams["learning_rate"]  # (members,), what optax.sgd uses
    u = (-lr)[None, :, None] * g
    ok = jnp.all(jnp.isfinite(u), axis=(0, 2))
    # The rest of the step (optimizer, guard) runs per member on the params without w: plain
    # SGD keeps no per-parameter state, so the optimizer state does not miss the leaf.
    rest = carry._replace(state=carry.state._replace(params=params))
    rest, loss = jax.vmap(functools.partial(train.apply_grads, cfg))(
        rest, loss, norm_state, rest_grads, ok
    )
    alive = rest.diverged_at == 0  # == (healthy before) & ~bad this step
    w = jnp.where(alive[None, :, None], w + u, w)
    return rest._replace(
        state=rest.state._replace(params=_with_first_w(rest.state.params, w))
    ), loss


def _count(traces: Traces | None, name: str) -> None:
    if traces is not None:
        traces[name] += 1


def group_steps(
    cfg: ProgramConfig,
    axes: Carry,
    carry: Carry,
    hp: Any,
    idx: Array,
    n: Array,
    data: dict[str, Array],
    *,
    traces: Traces | None = None,
) -> tuple[Carry, Array]:
    """All members: the first n of T guarded train steps (train.train_chunk: a lax.fori_loop of
    traced trip count n over the vmapped train step, or in unrolled mode T masked steps).
    idx: (T, B) shared rows, or (members, T, B) own rows, padded to the program's fixed T;
    returns (carry, losses (members, T)), losses NaN once diverged and beyond n. Models take
    models.dense_wgrad's weight-gradient rule, and with group_updates_first_layer the first
    dense weight is updated by the group (see FIRST_DENSE_W). The scan is outside the vmap so
    the carry keeps its stored layout ``axes`` inside the loop (a vmapped scan moves every
    member axis to the front). A single member (the plan's ``squeezed``) trains without a
    member axis (_one_member_steps)."""
    step_cfg = dataclasses.replace(cfg.step, wgrad_rule=True)
    members = jax.tree.leaves(hp)[0].shape[0]
    if members == 1:
        return _one_member_steps(cfg, step_cfg, axes, carry, hp, idx, n, data, traces)
    if group_updates_first_layer(cfg):
        step = functools.partial(_group_step, step_cfg, axes)
    else:
        shared = None if cfg.shared_batch else 0
        step = jax.vmap(
            functools.partial(train.train_step, step_cfg), in_axes=(0, 0, shared, shared)
        )

    def counted(c: Carry, x: Array, y: Array) -> tuple[Carry, Array]:
        _count(traces, "train_step")
        return step(hp, c, x, y)

    xs = idx if cfg.shared_batch else jnp.swapaxes(idx, 0, 1)  # (T, ...) either way
    carry, losses = train.train_chunk(
        step_cfg,
        hp,
        carry,
        xs,
        data["x_train"],
        data["y_train"],
        unroll=True if cfg.unrolled else 1,
        step=counted,
        n=n,
        loss_shape=(members,),
    )
    return carry, losses.T


def _one_member_steps(
    cfg: ProgramConfig,
    step_cfg: StepConfig,
    axes: Carry,
    carry: Carry,
    hp: Any,
    idx: Array,
    n: Array,
    data: dict[str, Array],
    traces: Traces | None,
) -> tuple[Carry, Array]:
    """group_steps for one member (a one-trial run, or blocks of one member), without a member
    axis: on XLA CPU a vmapped CNN step of one member ran ~20% slower than the same step
    unvmapped. The carry is squeezed out of its stored layout and put back afterwards."""
    one = jax.tree.map(lambda a, ax: jnp.squeeze(a, ax), carry, axes)
    hp1 = jax.tree.map(lambda a: a[0], hp)

    def step(c: Carry, x: Array, y: Array) -> tuple[Carry, Array]:
        _count(traces, "train_step")
        return train.train_step(step_cfg, hp1, c, x, y)

    one, losses = train.train_chunk(
        step_cfg,
        hp1,
        one,
        idx if cfg.shared_batch else idx[0],
        data["x_train"],
        data["y_train"],
        unroll=True if cfg.unrolled else 1,
        step=step,
        n=n,
    )
    return jax.tree.map(jnp.expand_dims, one, axes), losses[None]


def _split_blocks(tree: Any, tree_axes: Any, mb: int) -> Any:
    """Member axis a of every leaf: (.., m, ..) -> (m // mb, .., mb, ..), blocks in front."""

    def one(x: Array, a: int) -> Array:
        shape = x.shape[:a] + (x.shape[a] // mb, mb) + x.shape[a + 1 :]
        return jnp.moveaxis(x.reshape(shape), a, 0)

    return jax.tree.map(one, tree, tree_axes)


def _join_blocks(tree: Any, tree_axes: Any) -> Any:
    """The inverse of _split_blocks."""

    def one(x: Array, a: int) -> Array:
        x = jnp.moveaxis(x, 0, a)
        return x.reshape(x.shape[:a] + (-1,) + x.shape[a + 2 :])

    return jax.tree.map(one, tree, tree_axes)


def blocked_steps(
    cfg: ProgramConfig,
    axes: Carry,
    mesh: Mesh,
    carry: Carry,
    hp: Any,
    idx: Array,
    n: Array,
    data: dict[str, Array],
    *,
    traces: Traces | None = None,
) -> tuple[Carry, Array]:
    """group_steps in blocks of cfg.member_block members on each device, one block after the
    other (each block runs the whole chunk before the next starts), so a block's weights and
    gradients stay in the cache for the chunk. Each device sees only its own members
    (``jax.shard_map``); a lax.scan over its blocks calls group_steps on (mb, ...) slices."""
    mb = cfg.member_block
    idx_spec = PartitionSpec() if cfg.shared_batch else PartitionSpec(AXIS)

    def local(carry: Carry, hp: Any, idx: Array, n: Array, data: dict) -> tuple[Carry, Array]:
        hp_axes = jax.tree.map(lambda _: 0, hp)
        own = None if cfg.shared_batch else _split_blocks(idx, 0, mb)
        xs = (_split_blocks(carry, axes, mb), _split_blocks(hp, hp_axes, mb), own)

        def block(_: None, x: tuple) -> tuple[None, tuple[Carry, Array]]:
            c, h, i = x
            i = idx if i is None else i
            return None, group_steps(cfg, axes, c, h, i, n, data, traces=traces)

        _, (carry, losses) = jax.lax.scan(block, None, xs)
        return _join_blocks(carry, axes), _join_blocks(losses, 0)

    specs = jax.tree.map(lambda a: PartitionSpec(*[None] * a, AXIS), axes)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(specs, PartitionSpec(AXIS), idx_spec, PartitionSpec(), PartitionSpec()),
        out_specs=(specs, PartitionSpec(AXIS)),
        check_vma=False,
    )(carry, hp, idx, n, data)


def member_point(
    cfg: ProgramConfig,
    carry: Carry,
    hp: Any,
    data: dict[str, Array],
    full: bool = True,
    *,
    traces: Traces | None = None,
    part: str = "all",
) -> dict[str, Array]:
    """One member's metrics at an evaluation point (NaN once diverged) and diverged_at.
    full=False (every point but the last, see run_group): eval mode on the fixed eval_subset of
    the test set only and no batch-statistics accuracy (the key is absent); probes run either way.
    A model without norm layers has the same accuracy in both modes: measured once.
    part: "all"; "eval" (everything but the probes) or "probes" (the probes only, NaN once
    diverged), the two halves of a point whose probes run in a program of their own."""
    spec, st = cfg.step.spec, carry.state
    call = train.norm_call_at(cfg.step, hp, st.step)
    x_test, y_test = data["x_test"], data["y_test"]
    if not full:
        rows = eval_subset(int(x_test.shape[0]))
        if rows.size < x_test.shape[0]:
            x_test, y_test = x_test[rows], y_test[rows]
    dead = carry.diverged_at > 0
    if part == "probes":
        _count(traces, "eval_probes")
        out = _probe_metrics(cfg, carry, hp, data, call, (x_test, y_test))
        return {k: jnp.where(dead, jnp.nan, v) for k, v in out.items()}
    _count(traces, "eval_point" if full else "eval_point_lite")
    kw = {"norm_call": call, "unrolled": cfg.unrolled}
    acc, loss = train.evaluate(st.params, st.norm_state, x_test, y_test, spec, mode="eval", **kw)
    metrics = {"test_acc": acc, "test_loss": loss}
    if full and spec.norm == "none" and spec.dense_norm in (None, "none"):
        metrics["test_acc_batch"] = acc
    elif full:
        metrics["test_acc_batch"], _ = train.evaluate(
            st.params,
            st.norm_state,
            x_test,
            y_test,
            spec,
            mode="batch",
            batch_size=cfg.batch_size,
            **kw,
        )
    if cfg.probes and part == "all":
        metrics.update(_probe_metrics(cfg, carry, hp, data, call, (x_test, y_test)))
    metrics = {k: jnp.where(dead, jnp.nan, v) for k, v in metrics.items()}
    metrics["diverged_at"] = carry.diverged_at
    return metrics


def _probe_metrics(
    cfg: ProgramConfig,
    carry: Carry,
    hp: Any,
    data: dict[str, Array],
    call: dict[str, Array],
    test: tuple[Array, Array],
) -> dict[str, Array]:
    """The group's probes on the probe batch, with the probe hp (the member's numbers, this
    step, its norm options, a probe key from fold_in(key(seed), PROBE_KEY_TAG), the batch
    size, the point's test rows for probes of inference) and a loss_fn defaulting to that key and those options."""
    spec, st = cfg.step.spec, carry.state
    hp = train.as_hp(hp)
    root = jax.random.key(hp.seed)
    probe_key = jax.random.fold_in(jax.random.fold_in(root, PROBE_KEY_TAG), st.step)
    probe_hp = train.ProbeHP(*hp._replace(norm_call=call), st.step, probe_key, cfg.batch_size, test)

    def loss_fn(params, norm_state, x, y, *, mode="train", key=None, norm_call=None):
        return train.loss_fn(
            params,
            norm_state,
            x,
            y,
            spec,
            mode=mode,
            key=probe_key if key is None else key,
            norm_call=call if norm_call is None else norm_call,
        )

    batch = (data["x_probe"], data["y_probe"])
    return probes.run(cfg.probes, spec, st.params, st.norm_state, batch, probe_hp, loss_fn)
