"""The compiled program of one sweep group, its device layout, and the loop that drives it.

One group = trials that differ only in numbers. Its program is four jitted functions of the
member axis (``jax.vmap`` of bnexp.train's single-member code), each compiled once per group:

    init(hp) -> carry                                  members' initial TrainState + bookkeeping
    steps(carry, hp, idx, n, data) -> (carry, losses)  the first n of L guarded train steps
    point(carry, hp, data) -> metrics                  eval, batch-stat eval, probes (last point)
    point_lite(carry, hp, data) -> metrics             eval on a test subset, probes (the others)

Evaluation points (run_group): step 0 (the initial model, before any update) and
``eval_schedule(steps, eval_every, per_decade)``: the linear grid eval_every, 2 * eval_every, ...,
steps merged with ~per_decade geometric points per decade (1, 2, 3, 4, 6, 7, 10, 13, 18, 24, ...),
which resolve early training. The chunks between points thus have many lengths, and one program
serves them all: idx is padded to the longest chunk L and n (a traced int32) says how many steps
to run, a ``lax.fori_loop`` of traced trip count (no iteration past n) that writes each step's
loss into a NaN-filled (L,) buffer the host slices (train.train_chunk). On the 2-core dev machine
the rolled path ran at the speed of the former one-program-per-length ``lax.scan`` (best of 3,
interleaved, model-steps/s, old -> new: one paper MLP with BN 2,060 -> 2,075; 8 members 4,940 ->
5,100; 16 members without norm 6,843 -> 7,133; 8 members on own batches 4,206 -> 4,193).

What the extra points cost, and what was traded: a point that evaluates the whole test set twice
(eval mode and batch-statistics mode) is, at quick scale, as much work as the 100 training steps
between grid points. So only the last point is full (``point``: the whole test set in both modes;
final accuracy, the main paired effect, and the train/eval gap read it); every earlier point,
step 0 and the linear grid included, runs ``point_lite``: eval mode on a fixed random
EVAL_SUBSET (2,000) of the test set (``eval_subset``: a seeded draw, since MNIST's test set is
ordered and its first 5,000 images are the cleaner NIST half). test_acc/test_loss there are
estimates from that subset (standard error ~0.7 points at 90% accuracy; both arms of a pair see
the same images) and test_acc_batch is NaN. A model without norm layers gets test_acc_batch from
its one eval pass (both modes are the same network). Probes run at every point (their analyses
read series; a probe of inference reads the point's test rows, hp["test"]). Measured share of the run (compile excluded) spent in the
point programs on the 2-core dev machine (2 host devices, full MNIST, MLP 784-100-100-100-10,
batch 60), before the schedule -> step 0 + the schedule with the grid on the whole test set ->
this: compare quick (3000 steps, eval_every 100, 2 groups of 5 seeds; 30 -> 55 -> 55 points)
50% -> 53% -> 19% (group time 13.4 s); lr-sweep quick (2000 steps, 2 groups of 35 members;
20 -> 44 -> 44 points) 47% -> 50% -> 17%. A lite point costs ~1/9 of a full one (compare:
15 vs 131 ms; lr-sweep: 0.22 vs 1.7 s).

Between evaluation points the host calls ``steps`` once per chunk: one rolled loop. Measured on
XLA CPU (paper-size CNN conv16-conv32-dense64, batch 64, one member), a
``lax.conv`` inside a while loop ran 6.5x slower than unrolled (7.8 vs 50 model-steps/s; 8
vmapped members 2.2 vs 12.0), and partial unrolling (unroll=4) did not help: only a program with
no loop did. bnexp's CNNs therefore use im2col convolutions on CPU (models._conv3x3), which run at
full speed in a rolled scan (62 model-steps/s; 8 members 45) and compile 5x faster than unrolled
code. For lax.conv on CPU (ModelSpec(conv_impl="xla")) the engine switches to "unrolled" mode:
one block size of min(CNN_MAX_BLOCK, longest chunk) steps scanned with ``unroll=True`` (no loop
in the program), the host looping over a chunk's blocks; in a chunk's last block the steps past
its end are computed and masked out (carry kept, loss NaN), so still one program. The evaluation
then avoids lax.map as well.

The member axis is sharded over a 1-D ``Mesh(devices, ("members",))``; the datasets and (when every
member shares one data seed) the batch indices are replicated, so a shared batch enters each
device's first layer as one (B, D) x (D, members*width) matrix product. Models train with
``models.dense_wgrad``'s weight-gradient rule (``x^T g`` in the weight's own layout; JAX's rule
computes ``g^T x`` and transposes it), with the first dense weight of a shared-batch SGD group
stored and updated as one (D, members, H) array (FIRST_DENSE_W), and on CPU with
DENSE_CPU_OPTIONS: XLA CPU's dots take row-major operands only, so every other layout costs a
full copy of the weights per step. On CPU each device trains its members in blocks sized to the
cache (member_block, blocked_steps: a lax.scan over the device's blocks inside jax.shard_map),
and a single member (one-trial runs, blocks of one) trains without a member axis. Compiled
programs are kept per (config, member count, devices, data shapes) in PROGRAMS (a bounded LRU
ProgramCache), so a second sweep of the
same group shape in the same process compiles nothing; ``sweep.enable_compilation_cache`` adds
JAX's on-disk cache.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnexp import distributed, models, probes, train
from bnexp.models import ModelSpec
from bnexp.train import TRACE_COUNTS, Carry, StepConfig

Array = jax.Array
AXIS = "members"
PROBE_KEY_TAG = 2  # fold_in(key(seed), 0) init, 1 training, 2 probes
CNN_MAX_BLOCK = 8  # steps per unrolled CNN block: more adds compile time, not speed
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


# XLA CPU options for the train-step programs of dense models (measured with `bnexp bench`, see
# BENCHMARKS.md): XLA's tree-reduction rewrite splits every batch reduction (BN statistics, the
# loss mean, the divergence guard's all-finite checks) into reduce-window + reduce; without it a
# 64-member lr sweep of the paper MLP ran ~15% faster. YNNPACK keeps the dots (its default also
# takes reductions): the small (60 x 100) BN reductions of a dense model ran slower as YNNPACK
# calls than as XLA's own loops (one paper MLP with BN 1,435 vs 1,202 steps/s, without norm 1,599
# vs 1,504, interleaved). CNNs keep the defaults: their large reductions (max-pool gradients,
# conv BN statistics) ran faster in YNNPACK (54 vs 41 steps/s). (Turning YNNPACK off altogether,
# "xla_cpu_experimental_ynn_fusion_type": "", so that the dots ran on Eigen, was faster still but
# miscompiled: with 32 paper-MLP members on a device, members 0 and 1 of every device left the
# single-model loop by 0.05 in loss from step 33 on; tests/test_sweep.py checks it.)
DENSE_CPU_OPTIONS = {
    "xla_disable_hlo_passes": "tree_reduction_rewriter",
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}
# Members per block on a CPU device (blocked_steps): as many as fit this estimated working set
# (weights, optimizer state, gradients, activations; member_bytes). Measured on a 2-core Zen 3
# (1 MiB L2 per core, 32 MiB L3), 64-member paper-MLP sweep on 2 devices: blocks of 4 members
# ~3,250 model-steps/s, 2 ~3,100, 8 ~2,950, no blocks (32) ~2,700; 8-member CNN sweep (16-32
# channels, batch 64): blocks of 1 member 88, 2 75, none 62.
BLOCK_BYTES = 5 << 20


def compiler_options(spec: ModelSpec, platform: str) -> dict[str, Any]:
    """XLA options for a model's train-step programs on ``platform`` (empty: XLA's defaults)."""
    return dict(DENSE_CPU_OPTIONS) if platform == "cpu" and spec.kind != "cnn" else {}


@dataclass(frozen=True)
class ProgramConfig:
    """Everything static about a group's programs (hashable: part of the compile-cache key)."""

    step: StepConfig
    batch_size: int
    probes: tuple[tuple[str, tuple], ...] = ()  # probes.specs: (name, options) per probe
    shared_batch: bool = True
    unrolled: bool = False  # True: loop-free blocks of block_steps steps; else a rolled scan
    block_steps: int = 0  # unrolled mode: steps per call (0: the chunk length)
    member_block: int = 0  # members per block on each device (0: one block; see blocked_steps)


def layout_for(
    spec: ModelSpec,
    lengths: Sequence[int],
    unrolled: bool | None = None,
    platform: str | None = None,
) -> tuple[bool, int]:
    """(unrolled, block_steps) for a model and its chunk lengths. By default (unrolled=None) only
    lax.conv CNNs on CPU are unrolled, in blocks of min(CNN_MAX_BLOCK, longest chunk) steps (a
    chunk's last block masks the steps past its end: train.train_chunk with n); everything else
    runs each chunk in one rolled loop."""
    if unrolled is None:
        platform = platform or jax.default_backend()
        unrolled = (
            spec.kind == "cnn" and models.conv_impl(spec, platform) == "xla" and platform == "cpu"
        )
    if not unrolled:
        return False, 0
    return True, min(CNN_MAX_BLOCK, max(lengths))


# The first dense layer's weight of a sweep whose members share the batch (and train with plain
# SGD) is stored (D, members, H), member axis in the middle, and updated by the group, not the
# member. The members' forward products are then one GEMM x (B, D) @ w (D, members * H) on the
# stored weight, and the weight gradient (models.dense_wgrad: x^T g) comes out in that layout too.
# Stored (members, D, H), XLA CPU (whose dots take row-major operands only) copied the whole
# weight into (D, members * H) every step (10 MB per device for 32 paper-MLP members). The update
# is the group's because inside a vmap any per-member scalar (the learning rate, the divergence
# guard) meeting a leaf whose member axis is not in front moves that axis to the front.
FIRST_DENSE_W = (
    jax.tree_util.DictKey("hidden"),
    jax.tree_util.SequenceKey(0),
    jax.tree_util.DictKey("w"),
)


@functools.cache
def member_bytes(cfg: ProgramConfig) -> int:
    """Estimated bytes one member touches in a train step: its carry (weights, norm and optimizer
    state), its gradients, and four float32 copies of every hidden layer's output over the batch
    (pre-activation, normalized, activation, their gradient); im2col patches counted for CNNs."""
    spec = cfg.step.spec
    one = {"lr": 0.0, "momentum": 0.0, "init_scale": 1.0, "seed": 0, "norm_call": {}}
    carry = jax.eval_shape(functools.partial(train.init_carry, cfg.step), one)
    grad_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(carry.state.params))
    carry_bytes = sum(
        a.size * a.dtype.itemsize
        for a in jax.tree.leaves(carry)
        if not jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
    )
    x = jax.ShapeDtypeStruct(
        (cfg.batch_size, *(spec.input_shape if spec.kind == "cnn" else spec.widths[:1])),
        jnp.float32,
    )
    _, _, aux = jax.eval_shape(
        lambda p, s, x: models.apply(p, s, x, spec, capture=True, key=jax.random.key(0)),
        carry.state.params,
        carry.state.norm_state,
        x,
    )
    floats = 4 * sum(a.size for a in aux["preacts"])
    if spec.kind == "cnn":  # im2col patches: 9 x the input of every conv, at its resolution
        h, w, c = spec.input_shape
        for out in spec.channels:
            floats += cfg.batch_size * h * w * 9 * c
            h, w, c = h // 2, w // 2, out
    return carry_bytes + grad_bytes + 4 * floats


def member_block(cfg: ProgramConfig, local_members: int, platform: str, cores: int = 1) -> int:
    """Members per block for a device holding ``local_members`` and ``cores`` CPU cores of its own
    (0: one block, no blocked_steps): on CPU, with one core per device, outside unrolled mode, as
    many as fit BLOCK_BYTES (at least one), or down to half as many where that pads fewer members
    (run_group pads each device to whole blocks). A device with several cores keeps one block:
    its operations need the width to use them (64 paper-MLP members on one device of 2 cores:
    1,622 model-steps/s in one block, 1,504 in blocks of 4)."""
    if platform != "cpu" or cfg.unrolled or cores > 1:
        return 0
    fit = max(1, BLOCK_BYTES // member_bytes(cfg))
    if local_members <= fit:
        return 0
    return min(range(max(1, fit // 2), fit + 1), key=lambda mb: (-(-local_members // mb) * mb, -mb))


def group_updates_first_layer(cfg: ProgramConfig) -> bool:
    """Whether the group updates the first dense weight itself, stored (D, members, H)."""
    spec = cfg.step.spec
    return (
        cfg.shared_batch
        and spec.kind != "cnn"
        and spec.num_hidden > 0
        and cfg.step.optimizer == "sgd"
    )


def member_axes(cfg: ProgramConfig, tree: Any) -> Any:
    """The member axis of every leaf of a member's ``tree`` (a carry or params) as stored."""
    middle = group_updates_first_layer(cfg)

    def axis(path: tuple, leaf: Any) -> int:
        return 1 if middle and tuple(path[-3:]) == FIRST_DENSE_W and jnp.ndim(leaf) == 2 else 0

    return jax.tree_util.tree_map_with_path(axis, tree)


def _first_w(params: Any) -> Array:
    return params["hidden"][0]["w"]


def _with_first_w(params: Any, w: Any) -> Any:
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
    w, g = _first_w(carry.state.params), _first_w(grads)
    lr = carry.state.opt_state.hyperparams["learning_rate"]  # (members,), what optax.sgd uses
    u = (-lr)[None, :, None] * g
    ok = jnp.all(jnp.isfinite(u), axis=(0, 2))
    members = lr.shape[0]
    stub = jnp.zeros((members,), w.dtype)  # the rest of the step sees a per-member scalar
    rest = carry._replace(
        state=carry.state._replace(params=_with_first_w(carry.state.params, stub))
    )
    rest, loss = jax.vmap(functools.partial(train.apply_grads, cfg))(
        rest, loss, norm_state, _with_first_w(grads, stub), ok
    )
    alive = rest.diverged_at == 0  # == (healthy before) & ~bad this step
    w = jnp.where(alive[None, :, None], w + u, w)
    return rest._replace(
        state=rest.state._replace(params=_with_first_w(rest.state.params, w))
    ), loss


def group_steps(
    cfg: ProgramConfig,
    axes: Carry,
    carry: Carry,
    hp: dict,
    idx: Array,
    n: Array,
    data: dict[str, Array],
) -> tuple[Carry, Array]:
    """All members: the first n of T guarded train steps (train.train_chunk: a lax.fori_loop of
    traced trip count n over the vmapped train step, or in unrolled mode T masked steps).
    idx: (T, B) shared rows, or (members, T, B) own rows, padded to the program's fixed T;
    returns (carry, losses (members, T)), losses NaN once diverged and beyond n. Models take models.dense_wgrad's weight-gradient rule, and
    with group_updates_first_layer the first dense weight is updated by the group (see
    FIRST_DENSE_W). The scan is outside the vmap so the carry keeps its stored layout ``axes``
    inside the loop (a vmapped scan moves every member axis to the front). A single member (a
    one-trial run, or blocks of one member) trains without a member axis: on XLA CPU a vmapped
    CNN step of one member ran ~20% slower than the same step unvmapped."""
    step_cfg = dataclasses.replace(cfg.step, wgrad_rule=True)
    if jax.tree.leaves(hp)[0].shape[0] == 1:  # one member: no member axis (vmap costs ~20%)
        one = jax.tree.map(lambda a, ax: jnp.squeeze(a, ax), carry, axes)
        hp1 = jax.tree.map(lambda a: a[0], hp)
        one, losses = train.train_chunk(
            step_cfg,
            hp1,
            one,
            idx if cfg.shared_batch else idx[0],
            data["x_train"],
            data["y_train"],
            unroll=True if cfg.unrolled else 1,
            n=n,
        )
        return jax.tree.map(jnp.expand_dims, one, axes), losses[None]
    if group_updates_first_layer(cfg):
        step = functools.partial(_group_step, step_cfg, axes)
    else:
        shared = None if cfg.shared_batch else 0
        step = jax.vmap(
            functools.partial(train.train_step, step_cfg), in_axes=(0, 0, shared, shared)
        )
    xs = idx if cfg.shared_batch else jnp.swapaxes(idx, 0, 1)  # (T, ...) either way
    carry, losses = train.train_chunk(
        step_cfg,
        hp,
        carry,
        xs,
        data["x_train"],
        data["y_train"],
        unroll=True if cfg.unrolled else 1,
        step=lambda c, x, y: step(hp, c, x, y),
        n=n,
        loss_shape=(jax.tree.leaves(hp)[0].shape[0],),
    )
    return carry, losses.T


def blocked_steps(
    cfg: ProgramConfig,
    axes: Carry,
    mesh: Mesh,
    carry: Carry,
    hp: dict,
    idx: Array,
    n: Array,
    data: dict[str, Array],
) -> tuple[Carry, Array]:
    """group_steps in blocks of cfg.member_block members on each device, one block after the
    other (each block runs the whole chunk before the next starts), so a block's weights and
    gradients stay in the cache for the chunk. Each device sees only its own members
    (``jax.shard_map``); a lax.scan over its blocks calls group_steps on (mb, ...) slices."""
    mb = cfg.member_block
    spec_of = lambda a: PartitionSpec(*[None] * a, AXIS)  # noqa: E731
    idx_spec = PartitionSpec() if cfg.shared_batch else PartitionSpec(AXIS)

    def split(tree: Any, tree_axes: Any) -> Any:  # member axis a: (.., m, ..) -> (nb, .., mb, ..)
        def one(x: Array, a: int) -> Array:
            shape = x.shape[:a] + (x.shape[a] // mb, mb) + x.shape[a + 1 :]
            return jnp.moveaxis(x.reshape(shape), a, 0)

        return jax.tree.map(one, tree, tree_axes)

    def join(tree: Any, tree_axes: Any) -> Any:
        def one(x: Array, a: int) -> Array:
            x = jnp.moveaxis(x, 0, a)
            return x.reshape(x.shape[:a] + (-1,) + x.shape[a + 2 :])

        return jax.tree.map(one, tree, tree_axes)

    def local(
        carry: Carry, hp: dict, idx: Array, n: Array, data: dict[str, Array]
    ) -> tuple[Carry, Array]:
        hp_axes = jax.tree.map(lambda _: 0, hp)
        xs = (split(carry, axes), split(hp, hp_axes), None if cfg.shared_batch else split(idx, 0))

        def block(_: None, x: tuple) -> tuple[None, tuple[Carry, Array]]:
            c, h, i = x
            return None, group_steps(cfg, axes, c, h, idx if i is None else i, n, data)

        _, (carry, losses) = jax.lax.scan(block, None, xs)
        return join(carry, axes), join(losses, 0)

    specs = jax.tree.map(spec_of, axes)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(specs, PartitionSpec(AXIS), idx_spec, PartitionSpec(), PartitionSpec()),
        out_specs=(specs, PartitionSpec(AXIS)),
        check_vma=False,
    )(carry, hp, idx, n, data)


def member_point(
    cfg: ProgramConfig, carry: Carry, hp: dict, data: dict[str, Array], full: bool = True
) -> dict[str, Array]:
    """One member's metrics at an evaluation point (NaN once diverged) and diverged_at.
    full=False (every point but the last, see run_group): eval mode on the fixed eval_subset of
    the test set only and no batch-statistics accuracy (the key is absent); probes run either way.
    A model without norm layers has the same accuracy in both modes: measured once."""
    TRACE_COUNTS["eval_point" if full else "eval_point_lite"] += 1
    spec, st = cfg.step.spec, carry.state
    call = train.norm_call_at(cfg.step, hp, st.step)
    x_test, y_test = data["x_test"], data["y_test"]
    if not full:
        rows = eval_subset(int(x_test.shape[0]))
        if rows.size < x_test.shape[0]:
            x_test, y_test = x_test[rows], y_test[rows]
    acc, loss = train.evaluate(
        st.params,
        st.norm_state,
        x_test,
        y_test,
        spec,
        mode="eval",
        norm_call=call,
        unrolled=cfg.unrolled,
    )
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
            norm_call=call,
            unrolled=cfg.unrolled,
        )
    if cfg.probes:
        root = jax.random.key(hp["seed"])
        probe_key = jax.random.fold_in(jax.random.fold_in(root, PROBE_KEY_TAG), st.step)
        probe_hp = {
            **hp,
            "step": st.step,
            "norm_call": call,
            "key": probe_key,
            "batch_size": cfg.batch_size,
            "test": (x_test, y_test),  # the test rows this point evaluates (eval_subset or all)
        }

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

        metrics.update(
            probes.run(
                cfg.probes,
                spec,
                st.params,
                st.norm_state,
                (data["x_probe"], data["y_probe"]),
                probe_hp,
                loss_fn,
            )
        )
    dead = carry.diverged_at > 0
    metrics = {k: jnp.where(dead, jnp.nan, v) for k, v in metrics.items()}
    metrics["diverged_at"] = carry.diverged_at
    return metrics


class ProgramCache:
    """Compiled programs of this process, by (name, static config, devices, argument shapes),
    least recently used first out beyond ``capacity`` entries (a long-lived process sweeping
    many shapes does not keep every executable it ever compiled)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def get(self, key: tuple) -> Any | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: tuple, value: Any) -> Any:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[tuple]:
        return list(self._items)


PROGRAMS = ProgramCache()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    return Mesh(np.asarray(list(devices or jax.devices())), (AXIS,))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _program(
    name: str,
    cfg: Any,
    mesh: Mesh,
    fn: Callable,
    args: tuple,
    in_shardings: tuple,
    out_shardings: Any,
    donate: tuple[int, ...] = (),
    before: Callable[[], None] | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Any, float]:
    """A compiled program from the in-process cache, or compiled now (calling ``before`` first)
    with XLA ``options`` (dropped if this XLA does not know them): (program, compile seconds
    spent by this call)."""
    shapes = tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(args))
    key = (name, cfg, tuple(d.id for d in mesh.devices.flat), jax.tree.structure(args), shapes)
    cached = PROGRAMS.get(key)
    if cached is not None:
        return cached, 0.0
    if before is not None:
        before()
    t0 = time.perf_counter()
    lowered = jax.jit(
        fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate
    ).lower(*args)
    compiled = compile_with(lowered, options)
    PROGRAMS.put(key, compiled)
    return compiled, time.perf_counter() - t0


def compile_with(lowered: Any, options: dict[str, Any] | None) -> Any:
    """``lowered.compile()`` with XLA ``options``, or with XLA's defaults when this XLA does not
    know them (they are experimental CPU flags)."""
    try:
        return lowered.compile(compiler_options=options or None)
    except Exception as e:  # noqa: BLE001 - XLA reports unknown options as a generic error
        if not options or "option" not in str(e):
            raise
        return lowered.compile()


@dataclass
class Programs:
    init: Any
    steps: Any  # steps(carry, hp, idx (padded to `length`), n, data) -> (carry, losses)
    point: Any  # every metric on the whole test set (step 0 and the linear grid)
    point_lite: Any  # member_point(full=False): every point but the last
    length: int  # the steps program's fixed chunk length (idx padded to it)
    compile_seconds: float


def build(
    cfg: ProgramConfig,
    mesh: Mesh,
    hp: dict,
    data: dict,
    length: int,
    idx_shape: Callable[[int], tuple[int, ...]],
    on_compile: Callable[[], None] | None = None,
    lite: bool = True,
) -> Programs:
    """Compile (or fetch) init, ONE steps program for chunks of up to ``length`` steps (idx of
    idx_shape(length), the steps to run a traced argument), point and point_lite for this
    piece's shapes (point_lite None unless ``lite``); on_compile() is called once before the first compilation that is needed, if
    any. A repeat of the same shapes is a dictionary lookup (no tracing: eval_shape costs ~60 ms
    a call)."""
    shapes = tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves((hp, data)))
    memo = (
        "build",
        cfg,
        tuple(d.id for d in mesh.devices.flat),
        jax.tree.structure((hp, data)),
        shapes,
        (length, idx_shape(length)),
        lite,
    )
    cached = PROGRAMS.get(memo)
    if cached is not None:
        return dataclasses.replace(cached, compile_seconds=0.0)
    called = []

    def before() -> None:
        if on_compile is not None and not called:
            called.append(True)
            on_compile()

    member, repl = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), hp)
    axes = member_axes(cfg, jax.eval_shape(functools.partial(train.init_carry, cfg.step), one))
    shard = jax.tree.map(lambda a: NamedSharding(mesh, PartitionSpec(*[None] * a, AXIS)), axes)
    init_fn = jax.vmap(functools.partial(train.init_carry, cfg.step), out_axes=axes)
    init, spent = _program(
        "init",
        (cfg.step, group_updates_first_layer(cfg)),
        mesh,
        init_fn,
        (_abstract(hp),),
        (member,),
        shard,
        before=before,
    )
    carry = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        jax.eval_shape(init_fn, hp),
        shard,
    )
    idx_sharding = repl if cfg.shared_batch else member
    steps_fn = (
        functools.partial(blocked_steps, cfg, axes, mesh)
        if cfg.member_block
        else functools.partial(group_steps, cfg, axes)
    )
    idx = jax.ShapeDtypeStruct(idx_shape(length), jnp.int32, sharding=idx_sharding)
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)
    steps, s = _program(
        "steps",
        (cfg, length),
        mesh,
        steps_fn,
        (carry, _abstract(hp), idx, n, _abstract(data)),
        (shard, member, idx_sharding, repl, repl),
        (shard, member),
        (0,),
        before,
        compiler_options(cfg.step.spec, mesh.devices.flat[0].platform),
    )
    spent += s
    points = [None, None]
    for full in (True, False) if lite else (True,):
        point_fn = jax.vmap(
            functools.partial(member_point, cfg, full=full), in_axes=(axes, 0, None)
        )
        prog, s = _program(
            "point" if full else "point_lite",
            cfg,
            mesh,
            point_fn,
            (carry, _abstract(hp), _abstract(data)),
            (shard, member, repl),
            member,
            before=before,
        )
        points[0 if full else 1] = prog
        spent += s
    return PROGRAMS.put(memo, Programs(init, steps, points[0], points[1], length, spent))


def pieces(n: int, max_members: int, n_devices: int) -> tuple[int, int]:
    """(number of pieces, padded members per piece): equal pieces of at most max_members (rounded
    up to a multiple of the device count) so every piece runs the same compiled program."""
    k = math.ceil(n / max_members)
    size = math.ceil(n / k)
    return k, math.ceil(size / n_devices) * n_devices


def eval_schedule(steps: int, eval_every: int, per_decade: int = 8) -> np.ndarray:
    """Evaluation steps from 0 (before any training) to ``steps``: the linear grid eval_every,
    2 * eval_every, ... merged with about ``per_decade`` geometric points per decade
    (round(10 ** (k / per_decade)), k = 0, 1, ...; 0: the linear grid only), dense where early
    training moves fast. Sorted, unique, int64: run_group's evaluation steps."""
    if steps < 1 or eval_every < 1 or per_decade < 0:
        raise ValueError(
            f"need steps, eval_every >= 1 and per_decade >= 0, got "
            f"{steps}, {eval_every}, {per_decade}"
        )
    points = {0, steps, *range(eval_every, steps, eval_every)}
    if per_decade:
        k = np.arange(int(np.ceil(per_decade * np.log10(steps))) + 1)
        geo = np.round(10.0 ** (k / per_decade)).astype(np.int64)
        points |= {int(g) for g in geo if g < steps}
    return np.asarray(sorted(points), np.int64)


def chunk_lengths(steps: int, eval_every: int, per_decade: int = 8) -> list[int]:
    """Steps between consecutive evaluation points of eval_schedule (per_decade=0: eval_every,
    ..., and a shorter last chunk if needed)."""
    return np.diff(eval_schedule(steps, eval_every, per_decade)).astype(int).tolist()


@dataclass
class GroupRun:
    """What run_group returns: per-member histories (index = member) and the group's timings."""

    histories: list[dict[str, np.ndarray]]
    diverged_at: list[int]
    compile_seconds: float
    seconds: float
    eval_seconds: float  # wall time in the point programs (each timed to its results)
    padded_members: int
    pieces: int
    devices: int  # the devices the members were sharded over
    member_block: int  # members per block on a device (0: none; see blocked_steps)


def _stack_members(hps: list[dict]) -> dict:
    """Member dicts -> one dict of (M,) arrays: floats as float32, ints (seeds) as int32."""

    def stack(*v: Any) -> np.ndarray:
        return np.asarray(v, np.int32 if isinstance(v[0], (int, np.integer)) else np.float32)

    return jax.tree.map(stack, *hps)


def run_group(
    cfg: ProgramConfig,
    hps: list[dict],
    data_seeds: list[int],
    data: dict[str, Any],
    batch_indices: Callable[[int, int, int], np.ndarray],
    *,
    steps: int,
    eval_every: int,
    mesh: Mesh,
    per_decade: int = 8,
    max_members: int = 64,
    report: Callable[[int, int, str], None] | None = None,
    members_per_block: int | None = None,
) -> GroupRun:
    """Train all members of one group; report(step_done, total, phase) as it goes.

    hps[i] is member i's numbers ({"lr", "momentum", "init_scale", "seed", "norm_call": {...}});
    batch_indices(data_seed, start_step, num_steps) -> (num_steps, batch) int32 rows. Evaluation
    points: step 0 (the initial model) and eval_schedule(steps, eval_every, per_decade); the
    last takes ``point``, the others ``point_lite`` (see the module doc). Members run
    in pieces of at most max_members (each padded to a multiple of the device count by repeating
    its last member; a group with fewer members than devices runs on that many devices); progress
    counts steps over all pieces (total = steps x pieces). members_per_block: members per block on a device
    (None: member_block's choice; 0: no blocks; each device's members are padded to whole
    blocks).
    """
    t_start = time.perf_counter()
    if len(hps) < mesh.devices.size and not distributed.active():  # fewer members than devices:
        mesh = make_mesh(list(mesh.devices.flat)[: len(hps)])  # padding would only compete for cores
    n_pieces, size = pieces(len(hps), max_members, mesh.devices.size)
    per_piece = math.ceil(len(hps) / n_pieces)
    member, repl = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())
    data = jax.device_put(data, repl)
    local = size // mesh.devices.size
    if members_per_block is None:
        cores = max(1, (os.cpu_count() or 1) // mesh.devices.size)
        from bnexp import calibrate  # measured on this machine (issue 22); imports engine

        members_per_block = calibrate.choose_member_block(cfg, local, mesh, hps[0], data, cores)
    mb = members_per_block
    if 0 < mb < local:  # whole blocks on every device: pad (as for devices) where needed
        size = -(-local // mb) * mb * mesh.devices.size
    cfg = dataclasses.replace(cfg, member_block=mb if 0 < mb < local else 0)
    schedule = eval_schedule(steps, eval_every, per_decade)
    full = schedule == schedule[-1]  # the whole test set, both modes: the last point only
    lengths = np.diff(schedule).astype(int).tolist()
    longest = cfg.block_steps if cfg.unrolled else max(lengths)
    total = steps * n_pieces
    histories: list[dict[str, np.ndarray]] = []
    diverged: list[int] = []
    compile_seconds = eval_seconds = 0.0
    for p in range(n_pieces):
        real = list(range(p * per_piece, min(len(hps), (p + 1) * per_piece)))
        ids = real + [real[-1]] * (size - len(real))  # padding: a real member again, dropped
        hp = jax.device_put(_stack_members([hps[i] for i in ids]), member)
        seeds = [data_seeds[i] for i in ids]

        def idx_shape(b: int) -> tuple[int, ...]:
            return (b, cfg.batch_size) if cfg.shared_batch else (size, b, cfg.batch_size)

        def compiling(p: int = p) -> None:
            if report is not None:
                report(p * steps, total, "compiling")

        progs = build(cfg, mesh, hp, data, longest, idx_shape, compiling, lite=not bool(full.all()))
        compile_seconds += progs.compile_seconds
        carry = progs.init(hp)

        def chunk_inputs(start: int, length: int, seeds: list[int] = seeds) -> list[tuple]:
            """(idx, n on the device, n) per call of the steps program for the chunk of
            ``length`` steps from ``start``: rows padded with row 0 to the program's length."""
            rows = {s: batch_indices(s, start, length) for s in sorted(set(seeds))}
            calls = []
            for b0 in range(0, length, longest):
                n = min(longest, length - b0)

                def one(r: np.ndarray, b0: int = b0, n: int = n) -> np.ndarray:
                    out = np.zeros((longest, cfg.batch_size), np.int32)
                    out[:n] = r[b0 : b0 + n]
                    return out

                if cfg.shared_batch:
                    idx = jax.device_put(one(rows[seeds[0]]), repl)
                else:
                    idx = jax.device_put(np.stack([one(rows[s]) for s in seeds]), member)
                calls.append((idx, jax.device_put(np.int32(n), repl), n))
            return calls

        def evaluate(carry: Carry, on: bool, progs: Programs = progs, hp: Any = hp) -> dict:
            nonlocal eval_seconds
            t0 = time.perf_counter()
            out = (progs.point if on else progs.point_lite)(carry, hp, data)
            out = distributed.to_host(out)
            eval_seconds += time.perf_counter() - t0
            return out

        points = [evaluate(carry, len(schedule) == 1)]  # step 0: the initial model
        start = 0
        upcoming = chunk_inputs(0, lengths[0])
        for j, length in enumerate(lengths):
            losses = []
            for idx, n_dev, n in upcoming:
                carry, loss = progs.steps(carry, hp, idx, n_dev, data)
                losses.append((loss, n))
            start += length
            if j + 1 < len(lengths):  # host work for the next chunk overlaps the device's
                upcoming = chunk_inputs(start, lengths[j + 1])
            jax.block_until_ready(carry)  # so that eval_seconds times the evaluation alone
            metrics = evaluate(carry, bool(full[j + 1]))
            chunk = np.concatenate([distributed.to_host(v)[:, :n] for v, n in losses], 1)
            if j == 0:  # step 0's train_loss: the first batch's loss at the initial weights
                points[0]["train_loss"] = chunk[:, 0]
            metrics["train_loss"] = chunk.mean(1)
            points.append(metrics)
            if report is not None:
                report(p * steps + start, total, "training")
        stacked = {  # the last point is full: every key; NaN where a point did not measure it
            k: np.stack([pt[k] if k in pt else np.full_like(like, np.nan) for pt in points], axis=1)
            for k, like in points[-1].items()
        }
        for m in range(len(real)):
            h = {"step": schedule}
            h.update({k: v[m] for k, v in stacked.items() if k != "diverged_at"})
            histories.append(h)
            diverged.append(int(stacked["diverged_at"][m, -1]))
    return GroupRun(
        histories,
        diverged,
        compile_seconds,
        time.perf_counter() - t_start,
        eval_seconds,
        size,
        n_pieces,
        int(mesh.devices.size),
        cfg.member_block,
    )
