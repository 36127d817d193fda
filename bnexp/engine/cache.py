"""The compiled programs of a sweep group and the cache that keeps them.

build compiles (or fetches) a group's four programs (bnexp.engine.steps) for one piece's
shapes; ProgramCache keeps them per (config, member count, devices, data shapes), bounded LRU,
so a second sweep of the same group shape in the same process compiles nothing
(``sweep.enable_compilation_cache`` adds JAX's on-disk cache). The cache also counts traces
(``traces``: one per program a trace makes; the compile guard test reads it).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnexp import probes, train
from bnexp.engine.layout import (
    AXIS,
    ProgramConfig,
    compiler_options,
    group_updates_first_layer,
    member_axes,
)
from bnexp.engine.steps import blocked_steps, group_steps, member_point


class ProgramCache:
    """Compiled programs of this process, by (name, static config, devices, argument shapes),
    least recently used first out beyond ``capacity`` entries (a long-lived process sweeping
    many shapes does not keep every executable it ever compiled). ``traces`` counts how often
    each step function was traced for the programs compiled through this cache ("train_step",
    "eval_point", "eval_point_lite")."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.traces: collections.Counter[str] = collections.Counter()

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

    def program(
        self,
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
        """A compiled program from this cache, or compiled now (calling ``before`` first) with
        XLA ``options`` (dropped if this XLA does not know them): (program, compile seconds
        spent by this call)."""
        shapes = tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(args))
        key = (name, cfg, tuple(d.id for d in mesh.devices.flat), jax.tree.structure(args), shapes)
        cached = self.get(key)
        if cached is not None:
            return cached, 0.0
        if before is not None:
            before()
        t0 = time.perf_counter()
        lowered = jax.jit(
            fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate
        ).lower(*args)
        compiled = compile_with(lowered, options)
        self.put(key, compiled)
        return compiled, time.perf_counter() - t0


PROGRAMS = ProgramCache()


def compile_with(lowered: Any, options: dict[str, Any] | None) -> Any:
    """``lowered.compile()`` with XLA ``options``, or with XLA's defaults when this XLA does not
    know them (they are experimental CPU flags)."""
    try:
        return lowered.compile(compiler_options=options or None)
    except Exception as e:  # noqa: BLE001 - XLA reports unknown options as a generic error
        if not options or "option" not in str(e):
            raise
        return lowered.compile()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


@dataclass
class Programs:
    init: Any
    steps: Any  # steps(carry, hp, idx (padded to `length`), n, data) -> (carry, losses)
    point: Any  # every metric on the whole test set (the last point)
    point_lite: Any  # member_point(full=False): every point but the last
    length: int  # the steps program's fixed chunk length (idx padded to it)
    compile_seconds: float


def build(
    cfg: ProgramConfig,
    mesh: Mesh,
    hp: Any,
    data: dict,
    length: int,
    idx_shape: Callable[[int], tuple[int, ...]],
    on_compile: Callable[[], None] | None = None,
    lite: bool = True,
    cache: ProgramCache | None = None,
) -> Programs:
    """Compile (or fetch from ``cache``, default PROGRAMS) init, ONE steps program for chunks
    of up to ``length`` steps (idx of idx_shape(length), the steps to run a traced argument),
    point and point_lite for this piece's shapes (point_lite None unless ``lite``);
    on_compile() is called once before the first compilation that is needed, if any. A repeat
    of the same shapes is a dictionary lookup (no tracing: eval_shape costs ~60 ms a call)."""
    cache = PROGRAMS if cache is None else cache
    shapes = tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves((hp, data)))
    devices = tuple(d.id for d in mesh.devices.flat)
    structure = jax.tree.structure((hp, data))
    memo = ("build", cfg, devices, structure, shapes, (length, idx_shape(length)), lite)
    cached = cache.get(memo)
    if cached is not None:
        return dataclasses.replace(cached, compile_seconds=0.0)
    called = []

    def before() -> None:
        if on_compile is not None and not called:
            called.append(True)
            on_compile()

    progs = _compile(cache, cfg, mesh, hp, data, length, idx_shape(length), before, lite)
    return cache.put(memo, progs)


@dataclass(frozen=True)
class _Target:
    """Where a group's programs run: its mesh, the member and replicated shardings, the stored
    member axis of every carry leaf (layout.member_axes) and the carry's shardings."""

    mesh: Mesh
    member: NamedSharding
    repl: NamedSharding
    axes: Any
    shard: Any


def _compile(
    cache: ProgramCache,
    cfg: ProgramConfig,
    mesh: Mesh,
    hp: Any,
    data: dict,
    length: int,
    idx_shape: tuple[int, ...],
    before: Callable[[], None],
    lite: bool,
) -> Programs:
    """build's compilations: init, steps, point and (if ``lite``) point_lite."""
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), hp)
    axes = member_axes(cfg, jax.eval_shape(functools.partial(train.init_carry, cfg.step), one))
    shard = jax.tree.map(lambda a: NamedSharding(mesh, PartitionSpec(*[None] * a, AXIS)), axes)
    member, repl = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())
    t = _Target(mesh, member, repl, axes, shard)
    init_fn = jax.vmap(functools.partial(train.init_carry, cfg.step), out_axes=axes)
    init_cfg = (cfg.step, group_updates_first_layer(cfg))
    init, spent = cache.program(
        "init", init_cfg, mesh, init_fn, (_abstract(hp),), (member,), shard, before=before
    )
    carry = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        jax.eval_shape(init_fn, hp),
        shard,
    )
    steps, s = _steps_program(cache, cfg, t, carry, hp, data, length, idx_shape, before)
    spent += s
    # Probes that do not read the point's test rows run in one program for both kinds of point
    # (compiled once, not inside each point program: a probe experiment's point_lite compiled
    # about as long as its point, the probes being most of both).
    shared = lite and bool(cfg.probes) and not probes.reads_test(cfg.probes)
    args = (carry, _abstract(hp), _abstract(data))
    shardings = (shard, member, repl)

    def compiled(name: str, full: bool, part: str) -> Any:
        nonlocal spent
        point_fn = jax.vmap(
            functools.partial(member_point, cfg, full=full, traces=cache.traces, part=part),
            in_axes=(axes, 0, None),
        )
        prog, s = cache.program(name, cfg, mesh, point_fn, args, shardings, member, before=before)
        spent += s
        return prog

    part = "eval" if shared else "all"
    point = compiled("point", True, part)
    point_lite = compiled("point_lite", False, part) if lite else None
    if shared:
        probe_prog = compiled("point_probes", False, "probes")
        point, point_lite = _with_probes(point, probe_prog), _with_probes(point_lite, probe_prog)
    return Programs(init, steps, point, point_lite, length, spent)


def _with_probes(point: Any, probe_prog: Any) -> Callable[..., dict]:
    """A point program and the shared probes program called as one: (carry, hp, data) ->
    every metric."""

    def call(carry: Any, hp: Any, data: dict) -> dict:
        return {**point(carry, hp, data), **probe_prog(carry, hp, data)}

    return call


def _steps_program(
    cache: ProgramCache,
    cfg: ProgramConfig,
    t: _Target,
    carry: Any,
    hp: Any,
    data: dict,
    length: int,
    idx_shape: tuple[int, ...],
    before: Callable[[], None],
) -> tuple[Any, float]:
    """The steps program (blocked_steps when the plan has member blocks, else group_steps),
    the carry donated, compiled with the model's XLA options (layout.compiler_options)."""
    fn = (
        functools.partial(blocked_steps, cfg, t.axes, t.mesh, traces=cache.traces)
        if cfg.member_block
        else functools.partial(group_steps, cfg, t.axes, traces=cache.traces)
    )
    idx_sharding = t.repl if cfg.shared_batch else t.member
    idx = jax.ShapeDtypeStruct(idx_shape, jnp.int32, sharding=idx_sharding)
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=t.repl)
    return cache.program(
        "steps",
        (cfg, length),
        t.mesh,
        fn,
        (carry, _abstract(hp), idx, n, _abstract(data)),
        (t.shard, t.member, idx_sharding, t.repl, t.repl),
        (t.shard, t.member),
        (0,),
        before,
        compiler_options(cfg.step.spec, t.mesh.devices.flat[0].platform),
    )
