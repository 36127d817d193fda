"""Training one member: TrainState, the divergence-guarded train step, the scan loop, evaluation.

Everything here is written for ONE member (one set of hyperparameters); bnexp.engine vmaps it over
the members of a sweep group. Swept numbers (learning rate, momentum, init scale, seed, per-call
norm options) arrive as traced data in ``hp``, an ``HP`` of scalars:

    hp = HP(lr, momentum, init_scale, seed, norm_call={name: value})

(a dict of those keys is taken too: as_hp). Probes receive a ``ProbeHP``: the member's numbers
plus this step, its norm options, a probe key and the batch size, read by name (hp["key"]).

Step numbering: step s = 1, 2, ... is the s-th parameter update; ``TrainState.step`` counts the
updates done so far, so step s runs with ``state.step == s - 1`` and per-step randomness is
``fold_in(member_key, s - 1)`` (big_vision style: split once at the top, fold in the step).

Over 300 lines: the single-member train step, its loop and evaluation are the code the
engine vmaps, kept together so the arithmetic is read in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnexp import models
from bnexp.models import ModelSpec

Array = jax.Array
OPTIMIZERS = ("sgd", "momentum", "adam")
EVAL_CHUNK = 1000  # examples evaluated together (bounds the eval working set per member)


class HP(NamedTuple):
    """One member's swept numbers (traced data; bnexp.engine stacks members into (M,) arrays)."""

    lr: Any
    momentum: Any
    init_scale: Any
    seed: Any
    norm_call: Any  # {name: value}: per-call norm options (StepConfig.norm_call_names)


def as_hp(hp: HP | Mapping[str, Any]) -> HP:
    """``hp`` as an HP (a mapping with HP's keys, as older callers and tests pass, converted)."""
    return hp if isinstance(hp, HP) else HP(*(hp[k] for k in HP._fields))


class ProbeHP(NamedTuple):
    """What a probe receives as ``hp`` (bnexp.probes): the member's numbers at this point, this
    step's norm options, a probe key and the training batch size. Read by name, ``hp["key"]``
    (as probes written for the former dict do) or ``hp.key``."""

    lr: Any
    momentum: Any
    init_scale: Any
    seed: Any
    norm_call: Any  # this step's per-call norm options (norm_call_at)
    step: Any  # int32 (), updates done so far
    key: Any  # the probe key of this member and step
    batch_size: int
    test: Any = None  # (x, y): the test rows this point evaluates (eval_subset, or all at the last)

    def __getitem__(self, key: Any) -> Any:
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)


class TrainState(NamedTuple):
    params: Any
    norm_state: Any
    opt_state: Any
    step: Array  # int32 (), updates done so far
    key: Array  # the member's training key (fold_in(key, step) per step)


class Carry(NamedTuple):
    """Per-member loop state: the TrainState plus the divergence bookkeeping."""

    state: TrainState
    init_loss: Array  # float32 (), loss of step 1 (the reference for divergence_factor)
    diverged_at: Array  # int32 (), 0 while healthy, else the step whose loss was bad


@dataclass(frozen=True)
class StepConfig:
    """Static settings of a train step (part of a sweep group's signature)."""

    spec: ModelSpec
    optimizer: str = "sgd"
    total_steps: int = 1000  # for schedules scaled to the run length (batch renorm)
    divergence_factor: float = 1e3
    norm_call_names: tuple[str, ...] = ()  # names of traced per-call norm options in hp
    wgrad_rule: bool = False  # matrix products through models.dense_wgrad (set by bnexp.engine)


def make_optimizer(
    name: str, lr: Array | float = 0.0, momentum: Array | float = 0.0
) -> optax.GradientTransformation:
    """sgd | momentum (heavy ball, optax.sgd with momentum) | adam, through
    ``optax.inject_hyperparams`` so lr and momentum live in the optimizer state as traced data."""
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
    if name == "momentum":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum)
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def renorm_schedule(
    step: Array | int,
    total_steps: int,
    *,
    reference_steps: int = 100_000,
    r_max: float = 3.0,
    d_max: float = 5.0,
) -> tuple[Array, Array]:
    """Batch renorm bounds (Ioffe 2017, Sec. 5.1) for the step about to run, scaled to the run.

    Ioffe: plain BN (r_max=1, d_max=0) for 5k steps, then linear ramps reaching r_max=3 at 40k and
    d_max=5 at 25k. We map his steps to fractions of a ``reference_steps`` run (default 100k: the
    ramps finish by 40% of training and the relaxed bounds hold for the rest), times total_steps.
    """
    frac = jnp.asarray(step, jnp.float32) / float(total_steps)
    warm, r_end, d_end = 5_000 / reference_steps, 40_000 / reference_steps, 25_000 / reference_steps
    r_t = jnp.clip((frac - warm) / (r_end - warm), 0.0, 1.0)
    d_t = jnp.clip((frac - warm) / (d_end - warm), 0.0, 1.0)
    return 1.0 + (r_max - 1.0) * r_t, d_max * d_t


def norm_call_at(cfg: StepConfig, hp: HP | Mapping[str, Any], step: Array) -> dict[str, Array]:
    """Per-call norm options for this step: the trial's traced values, plus the renorm schedule
    for r_max/d_max when the norm is "renorm" and the trial does not fix them."""
    norm_call = as_hp(hp).norm_call
    call = {name: norm_call[name] for name in cfg.norm_call_names}
    if cfg.spec.norm == "renorm":
        r, d = renorm_schedule(step, cfg.total_steps)
        call.setdefault("r_max", r)
        call.setdefault("d_max", d)
    return call


def loss_fn(
    params: Any,
    norm_state: Any,
    x: Array,
    y: Array,
    spec: ModelSpec,
    *,
    mode: str = "train",
    key: Array | None = None,
    norm_call: Mapping[str, Any] | None = None,
    dense: Any = None,
) -> tuple[Array, tuple[Any, Array]]:
    """Mean per-example loss (spec.loss: softmax cross-entropy on int labels, or the squared error
    ||out - y||^2 on float targets); returns (loss, (new_norm_state, logits)) for value_and_grad."""
    logits, new_state, _ = models.apply(
        params, norm_state, x, spec, mode=mode, key=key, norm_call=norm_call, dense=dense
    )
    return per_example_loss(logits, y, spec).mean(), (new_state, logits)


def per_example_loss(out: Array, y: Array, spec: ModelSpec) -> Array:
    """(N,) losses: cross-entropy of logits vs int labels, or ||out - y||^2 (spec.loss "mse";
    Santurkar et al.'s deep linear network: ||W_L ... W_1 x - A x||^2, summed over outputs)."""
    if spec.loss == "mse":
        return jnp.square(out - y).sum(-1)
    return optax.softmax_cross_entropy_with_integer_labels(out, y)


def init_carry(cfg: StepConfig, hp: HP | Mapping[str, Any]) -> Carry:
    """A fresh member: params from fold_in(key(seed), 0), training key fold_in(key(seed), 1)."""
    hp = as_hp(hp)
    root = jax.random.key(hp.seed)
    params, norm_state = models.init(jax.random.fold_in(root, 0), cfg.spec, hp.init_scale)
    opt = make_optimizer(cfg.optimizer, hp.lr, hp.momentum)
    state = TrainState(
        params, norm_state, opt.init(params), jnp.zeros((), jnp.int32), jax.random.fold_in(root, 1)
    )
    return Carry(state, jnp.full((), jnp.nan, jnp.float32), jnp.zeros((), jnp.int32))


# Leaves up to which the guard tests each leaf on its own (below). XLA CPU compiles each per-leaf
# test as a kernel of its own, and keeps the update apart from it: a 40-layer BN MLP's steps
# program (122 leaves) took 10.5 s to compile that way and 4.0 s with ONE test over the leaves
# joined end to end (bnexp run depth --preset quick, the 40-layer BN group, 2-core Xeon). But
# the join is a copy of the whole update each step: on the paper MLP (10 leaves) it cost 4-8% of
# the sweep's steps/s (5 members at batch 2 and 35 at batch 60; its compile gain was 0.25 s).
# So models with few leaves test per leaf, deep ones (more than ~10 layers) join.
FINITE_PER_LEAF_MAX = 32


def _finite(tree: Any) -> Array:
    """True when every element of every leaf is finite (see FINITE_PER_LEAF_MAX for how)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.bool_(True)
    if len(leaves) <= FINITE_PER_LEAF_MAX:
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves]))
    return jnp.all(jnp.isfinite(jnp.concatenate([jnp.ravel(v) for v in leaves])))


def step_grads(
    cfg: StepConfig, hp: HP | Mapping[str, Any], carry: Carry, x: Array, y: Array
) -> tuple[Array, Any, Any]:
    """The first half of a train step: (loss, new norm state, gradients) at the carry's params."""
    state = carry.state
    key = jax.random.fold_in(state.key, state.step)
    call = norm_call_at(cfg, hp, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (norm_state, _)), grads = grad_fn(
        state.params,
        state.norm_state,
        x,
        y,
        cfg.spec,
        mode="train",
        key=key,
        norm_call=call,
        dense=models.dense_wgrad if cfg.wgrad_rule else None,
    )
    return loss, norm_state, grads


def apply_grads(
    cfg: StepConfig,
    carry: Carry,
    loss: Array,
    norm_state: Any,
    grads: Any,
    extra_ok: Array | bool = True,
) -> tuple[Carry, Array]:
    """The second half: the optimizer update, guarded. ``extra_ok`` False marks the step bad
    (bnexp.engine updates one leaf itself and passes its finiteness here)."""
    state = carry.state
    updates, opt_state = make_optimizer(cfg.optimizer).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    init_loss = jnp.where(state.step == 0, loss, carry.init_loss)
    bad = (~jnp.isfinite(loss)) | (loss > cfg.divergence_factor * init_loss) | ~_finite(updates)
    bad = bad | ~jnp.asarray(extra_ok)
    alive = (carry.diverged_at == 0) & ~bad
    step = state.step + 1

    def keep(n: Any, o: Any) -> Any:
        return jax.tree.map(lambda a, b: jnp.where(alive, a, b), n, o)

    kept = TrainState(
        keep(params, state.params),
        keep(norm_state, state.norm_state),
        keep(opt_state, state.opt_state),
        step,
        state.key,
    )
    diverged_at = jnp.where((carry.diverged_at == 0) & bad, step, carry.diverged_at)
    return Carry(kept, init_loss, diverged_at), jnp.where(alive, loss, jnp.nan)


def train_step(
    cfg: StepConfig, hp: HP | Mapping[str, Any], carry: Carry, x: Array, y: Array
) -> tuple[Carry, Array]:
    """One divergence-guarded SGD step; returns (carry, loss) with loss NaN once diverged.

    A member whose loss is non-finite, exceeds divergence_factor x its step-1 loss, or whose update
    is non-finite is frozen from that step on: params, norm state and optimizer state stop changing
    (no NaN reaches them) and diverged_at records the step.
    """
    loss, norm_state, grads = step_grads(cfg, hp, carry, x, y)
    return apply_grads(cfg, carry, loss, norm_state, grads)


def train_chunk(
    cfg: StepConfig,
    hp: HP | Mapping[str, Any],
    carry: Carry,
    idx: Array,
    x_train: Array,
    y_train: Array,
    *,
    unroll: int | bool = 1,
    step: Callable[[Any, Array, Array], tuple[Any, Array]] | None = None,
    n: Array | None = None,
    loss_shape: tuple[int, ...] = (),
) -> tuple[Carry, Array]:
    """Run len(idx) steps in one lax.scan; idx: (T, B) int32 rows of the training set.
    Returns (carry, losses (T,)). ``unroll=True`` leaves no loop in the program (XLA CPU runs
    convolutions inside any while loop several times slower); the body is traced once either way.
    ``step(carry, x, y) -> (carry, loss)`` replaces ``train_step(cfg, hp, ...)`` (bnexp.engine
    passes its members' vmapped step; idx rows then index every member's batch at once).

    ``n`` (a traced int32 scalar, 0 <= n <= T) runs only the first n steps: idx is padded to a
    fixed T, so one compiled program serves chunks of every length <= T (bnexp.engine). Rolled,
    that is a ``lax.fori_loop`` with a traced trip count (no iteration past n) writing each
    step's loss into a (T, *loss_shape) buffer, NaN beyond n; unrolled, every one of the T steps
    is computed and steps k >= n are masked out (carry kept, loss NaN), still with no loop.
    """

    def body(c: Carry, i: Array) -> tuple[Carry, Array]:
        if step is not None:
            return step(c, x_train[i], y_train[i])
        return train_step(cfg, hp, c, x_train[i], y_train[i])

    if n is not None and unroll is True:  # loop-free, the tail masked: one program for all n

        def masked(c: Carry, ki: tuple[Array, Array]) -> tuple[Carry, Array]:
            k, i = ki
            new, loss = body(c, i)
            active = k < n
            kept = jax.tree.map(lambda a, b: jax.lax.select(active, a, b), new, c)
            return kept, jnp.where(active, loss, jnp.nan)

        ks = jnp.arange(idx.shape[0], dtype=jnp.int32)
        if idx.shape[0] == 1:  # a length-1 scan still lowers to a while loop
            carry, loss = masked(carry, (ks[0], idx[0]))
            return carry, loss[None]
        return jax.lax.scan(masked, carry, (ks, idx), unroll=True)
    if n is not None:
        buf = jnp.full((idx.shape[0], *loss_shape), jnp.nan, jnp.float32)

        def loop(k: Array, cl: tuple[Carry, Array]) -> tuple[Carry, Array]:
            c, losses = cl
            c, loss = body(c, jax.lax.dynamic_index_in_dim(idx, k, keepdims=False))
            return c, jax.lax.dynamic_update_index_in_dim(losses, loss, k, 0)

        return jax.lax.fori_loop(0, n, loop, (carry, buf))
    if unroll is True and idx.shape[0] == 1:  # a length-1 scan still lowers to a while loop
        carry, loss = body(carry, idx[0])
        return carry, loss[None]
    return jax.lax.scan(body, carry, idx, unroll=unroll)


def _chunks(n: int, size: int) -> tuple[int, int]:
    """(number of chunks, chunk size) covering n examples with chunks of at most `size`."""
    k = -(-n // size)
    return k, -(-n // k)


def _map(f: Any, xs: tuple[Array, Array], unrolled: bool) -> tuple[Array, Array]:
    """lax.map over the leading axis, or (unrolled) a Python loop: no while loop, for CNNs."""
    if not unrolled and xs[0].shape[0] > 1:
        return jax.lax.map(f, xs)
    outs = [f((xs[0][i], xs[1][i])) for i in range(xs[0].shape[0])]
    return jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])


def evaluate(
    params: Any,
    norm_state: Any,
    x: Array,
    y: Array,
    spec: ModelSpec,
    *,
    mode: str = "eval",
    batch_size: int | None = None,
    norm_call: Mapping[str, Any] | None = None,
    unrolled: bool = False,
) -> tuple[Array, Array]:
    """(accuracy, mean loss) on (x, y).

    mode "eval": running statistics, the whole set in chunks of EVAL_CHUNK (padding masked).
    mode "batch": batch statistics, the set split into batches of ``batch_size`` (a partial last
    batch is dropped: its statistics would differ), as a model would see test data in training;
    up to EVAL_CHUNK examples' batches are evaluated together (vmap). unrolled: loop over the
    chunks in Python instead of lax.map (no while loop in the program, for CNNs on XLA CPU).
    """

    def score(xb: Array, yb: Array) -> tuple[Array, Array]:
        logits, _, _ = models.apply(params, norm_state, xb, spec, mode=mode, norm_call=norm_call)
        losses = per_example_loss(logits, yb, spec)
        if spec.loss == "mse":  # regression: no accuracy (NaN), the loss is the measure
            return jnp.full(losses.shape, jnp.nan, jnp.float32), losses
        return (jnp.argmax(logits, -1) == yb).astype(jnp.float32), losses

    n = x.shape[0]
    if mode == "batch":
        if batch_size is None or batch_size < 2 or n < batch_size:
            return jnp.full((), jnp.nan), jnp.full((), jnp.nan)
        nb = n // batch_size
        xs = x[: nb * batch_size].reshape((nb, batch_size) + x.shape[1:])
        ys = y[: nb * batch_size].reshape((nb, batch_size) + y.shape[1:])
        k, per = _chunks(nb, max(1, EVAL_CHUNK // batch_size))  # k chunks of `per` batches
        fill = k * per - nb  # filler batches (copies of batch 0), weighted 0
        xs = jnp.concatenate([xs, jnp.broadcast_to(xs[:1], (fill,) + xs.shape[1:])])
        ys = jnp.concatenate([ys, jnp.broadcast_to(ys[:1], (fill,) + ys.shape[1:])])
        correct, losses = _map(
            lambda a: jax.vmap(score)(*a),
            (xs.reshape((k, per) + xs.shape[1:]), ys.reshape((k, per) + ys.shape[1:])),
            unrolled,
        )
        w = (jnp.arange(k * per) < nb).astype(jnp.float32).reshape((k, per, 1))
        m = nb * batch_size
        return (correct * w).sum() / m, (losses * w).sum() / m
    k, size = _chunks(n, EVAL_CHUNK)
    pad = k * size - n
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape((k, size) + x.shape[1:])
    ys = jnp.pad(y, ((0, pad),) + ((0, 0),) * (y.ndim - 1)).reshape((k, size) + y.shape[1:])
    mask = (jnp.arange(k * size) < n).reshape((k, size)).astype(jnp.float32)
    correct, losses = _map(lambda a: score(*a), (xs, ys), unrolled)
    return (correct * mask).sum() / n, (losses * mask).sum() / n
