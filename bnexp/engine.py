"""The compiled program of one sweep group, its device layout, and the chunk loop that drives it.

One group = trials that differ only in numbers. Its program is two jitted functions of the member
axis (``jax.vmap`` of bnexp.train's single-member code):

    init(hp) -> carry                                     members' initial TrainState + bookkeeping
    advance(carry, hp, idx, data) -> (carry, metrics)     chunk_steps train steps in a lax.scan,
                                                          then eval and probes at the new point

The member axis is sharded over a 1-D ``Mesh(devices, ("members",))``; the datasets and (when every
member shares one data seed) the batch indices are replicated, so a shared batch enters each
device's first layer as one (B, D) x (D, members*width) matrix product. Compiled programs are kept
per (config, member count, devices, data shapes), so a second sweep of the same group shape in the
same process compiles nothing; ``sweep.enable_compilation_cache`` adds JAX's on-disk cache.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnexp import probes, train
from bnexp.train import TRACE_COUNTS, Carry, StepConfig

Array = jax.Array
AXIS = "members"
PROBE_KEY_TAG = 2  # fold_in(key(seed), 0) init, 1 training, 2 probes
HISTORY_KEYS = ("train_loss", "test_acc", "test_loss", "test_acc_batch")


@dataclass(frozen=True)
class ProgramConfig:
    """Everything static about a group's program (hashable: the compile-cache key)."""

    step: StepConfig
    batch_size: int
    chunk_steps: int
    probes: tuple[str, ...] = ()
    shared_batch: bool = True
    unroll: int = 1


def default_unroll(kind: str, chunk_steps: int) -> int:
    """Scan unroll factor. Convolutions in a rolled lax.scan run ~10x slower on XLA CPU (PERF.md),
    so CNN chunks are unrolled (at most 10 steps per copy: compile time grows with unrolling);
    dense models gain nothing measurable from unrolling and keep compile times short."""
    return min(chunk_steps, 10) if kind == "cnn" else 1


def member_advance(cfg: ProgramConfig, carry: Carry, hp: dict, idx: Array,
                   data: dict[str, Array]) -> tuple[Carry, dict[str, Array]]:
    """One member: chunk_steps guarded train steps, then the evaluation point's metrics."""
    TRACE_COUNTS["advance"] += 1
    spec = cfg.step.spec
    carry, losses = train.train_chunk(cfg.step, hp, carry, idx, data["x_train"], data["y_train"],
                                      unroll=cfg.unroll)
    st = carry.state
    call = train.norm_call_at(cfg.step, hp, st.step)
    acc, loss = train.evaluate(st.params, st.norm_state, data["x_test"], data["y_test"], spec,
                               mode="eval", norm_call=call)
    acc_b, _ = train.evaluate(st.params, st.norm_state, data["x_test"], data["y_test"], spec,
                              mode="batch", batch_size=cfg.batch_size, norm_call=call)
    metrics = {"train_loss": losses.mean(), "test_acc": acc, "test_loss": loss,
               "test_acc_batch": acc_b}
    if cfg.probes:
        root = jax.random.key(hp["seed"])
        probe_key = jax.random.fold_in(jax.random.fold_in(root, PROBE_KEY_TAG), st.step)
        probe_hp = {**hp, "step": st.step, "norm_call": call, "key": probe_key}

        def loss_fn(params, norm_state, x, y, *, mode="train", key=None, norm_call=None):
            return train.loss_fn(params, norm_state, x, y, spec, mode=mode,
                                 key=probe_key if key is None else key,
                                 norm_call=call if norm_call is None else norm_call)

        metrics.update(probes.run(cfg.probes, spec, st.params, st.norm_state,
                                  (data["x_probe"], data["y_probe"]), probe_hp, loss_fn))
    dead = carry.diverged_at > 0
    metrics = {k: jnp.where(dead, jnp.nan, v) for k, v in metrics.items()}
    metrics["diverged_at"] = carry.diverged_at
    return carry, metrics


class Program(NamedTuple):
    init: Callable
    advance: Callable
    compile_seconds: float


_PROGRAMS: dict[tuple, Program] = {}


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    return Mesh(np.asarray(list(devices or jax.devices())), (AXIS,))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _program_key(cfg: ProgramConfig, mesh: Mesh, args: tuple) -> tuple:
    shapes = jax.tree.map(lambda a: (a.shape, str(a.dtype)), args)
    return cfg, tuple(d.id for d in mesh.devices.flat), jax.tree.structure(args), \
        tuple(jax.tree.leaves(shapes))


def get_program(cfg: ProgramConfig, mesh: Mesh, hp: dict, idx: Array,
                data: dict) -> tuple[Program, bool]:
    """The group's compiled (init, advance), built once per shape and device set; the flag says
    whether it was compiled by this call."""
    key = _program_key(cfg, mesh, (hp, idx, data))
    if key in _PROGRAMS:
        return _PROGRAMS[key], False
    member, repl = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())
    t0 = time.perf_counter()
    init = jax.jit(jax.vmap(functools.partial(train.init_carry, cfg.step)),
                   in_shardings=(member,), out_shardings=member).lower(_abstract(hp))
    carry = init.out_info
    init = init.compile()
    carry = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=member), carry)
    vmapped = jax.vmap(functools.partial(member_advance, cfg),
                       in_axes=(0, 0, None if cfg.shared_batch else 0, None))
    idx_sharding = repl if cfg.shared_batch else member
    advance = jax.jit(vmapped, in_shardings=(member, member, idx_sharding, repl),
                      out_shardings=(member, member), donate_argnums=(0,))
    advance = advance.lower(carry, _abstract(hp), _abstract(idx), _abstract(data)).compile()
    program = Program(init, advance, time.perf_counter() - t0)
    _PROGRAMS[key] = program
    return program, True


def pieces(n: int, max_members: int, n_devices: int) -> tuple[int, int]:
    """(number of pieces, padded members per piece): equal pieces of at most max_members (rounded
    up to a multiple of the device count) so every piece runs the same compiled program."""
    k = math.ceil(n / max_members)
    size = math.ceil(n / k)
    return k, math.ceil(size / n_devices) * n_devices


def chunk_lengths(steps: int, eval_every: int) -> list[int]:
    """Steps between evaluation points: eval_every, ..., and a shorter last chunk if needed."""
    lengths = [eval_every] * (steps // eval_every)
    return lengths + ([steps % eval_every] if steps % eval_every else [])


@dataclass
class GroupRun:
    """What run_group returns: per-member histories (index = member) and the group's timings."""

    histories: list[dict[str, np.ndarray]]
    diverged_at: list[int]
    compile_seconds: float
    seconds: float
    padded_members: int
    pieces: int


def _stack_members(hps: list[dict]) -> dict:
    """Member dicts -> one dict of (M,) arrays: floats as float32, ints (seeds) as int32."""
    def stack(*v: Any) -> np.ndarray:
        return np.asarray(v, np.int32 if isinstance(v[0], (int, np.integer)) else np.float32)

    return jax.tree.map(stack, *hps)


def run_group(cfg: ProgramConfig, hps: list[dict], data_seeds: list[int], data: dict[str, Any],
              batch_indices: Callable[[int, int, int], np.ndarray], *, steps: int,
              eval_every: int, mesh: Mesh, max_members: int = 64,
              report: Callable[[int, int, str], None] | None = None) -> GroupRun:
    """Train all members of one group; report(step_done, total, phase) around each chunk.

    hps[i] is member i's numbers ({"lr", "momentum", "init_scale", "seed", "norm_call": {...}});
    batch_indices(data_seed, start_step, num_steps) -> (num_steps, batch) int32 rows. Members run
    in pieces of at most max_members (each padded to a multiple of the device count by repeating
    its last member); progress counts steps over all pieces (total = steps x pieces).
    """
    t_start = time.perf_counter()
    n_pieces, size = pieces(len(hps), max_members, mesh.devices.size)
    per_piece = math.ceil(len(hps) / n_pieces)
    member, repl = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())
    data = jax.device_put(data, repl)
    lengths = chunk_lengths(steps, eval_every)
    ends = np.cumsum(lengths).astype(np.int64)
    histories: list[dict[str, np.ndarray]] = []
    diverged: list[int] = []
    compile_seconds = 0.0
    for p in range(n_pieces):
        real = list(range(p * per_piece, min(len(hps), (p + 1) * per_piece)))
        ids = real + [real[-1]] * (size - len(real))  # padding: a real member again, dropped
        hp = jax.device_put(_stack_members([hps[i] for i in ids]), member)
        seeds = [data_seeds[i] for i in ids]

        def indices(start: int, length: int, seeds: list[int] = seeds) -> Array:
            rows = {s: batch_indices(s, start, length) for s in sorted(set(seeds))}
            if cfg.shared_batch:
                return jax.device_put(rows[seeds[0]], repl)
            return jax.device_put(np.stack([rows[s] for s in seeds]), member)

        points: list[dict[str, np.ndarray]] = []
        carry, start = None, 0
        idx = indices(0, lengths[0])
        for j, length in enumerate(lengths):
            args = (hp, idx, data)
            c = dataclasses.replace(cfg, chunk_steps=length)
            if report is not None and _program_key(c, mesh, args) not in _PROGRAMS:
                report(p * steps + start, steps * n_pieces, "compiling")
            prog, fresh = get_program(c, mesh, *args)
            compile_seconds += prog.compile_seconds if fresh else 0.0
            carry = prog.init(hp) if carry is None else carry
            carry, metrics = prog.advance(carry, hp, idx, data)
            start += length
            if j + 1 < len(lengths):  # host work for the next chunk overlaps the device's
                idx = indices(start, lengths[j + 1])
            points.append(jax.tree.map(np.asarray, metrics))
            if report is not None:
                report(p * steps + start, steps * n_pieces, "training")
        stacked = {k: np.stack([pt[k] for pt in points], axis=1) for k in points[0]}
        for m in range(len(real)):
            h = {"step": ends}
            h.update({k: v[m] for k, v in stacked.items() if k != "diverged_at"})
            histories.append(h)
            diverged.append(int(stacked["diverged_at"][m, -1]))
    return GroupRun(histories, diverged, compile_seconds, time.perf_counter() - t_start, size,
                    n_pieces)
