"""The compiled programs of a sweep group and the cache that keeps them.

build compiles (or fetches) a group's four programs (bnexp.engine.steps) for one piece's
shapes; ProgramCache keeps them per (config, member count, devices, data shapes), bounded LRU,
so a second sweep of the same group shape in the same process compiles nothing
(``sweep.enable_compilation_cache`` adds JAX's on-disk cache). The cache also counts traces
(``traces``: one per program a trace makes; the compile guard test reads it).

Compiling beside the host loop: a program is traced, lowered and compiled on a pool of
COMPILE_THREADS threads (XLA's CPU compiler runs one program on about one core), and build
returns at once with ``Deferred`` programs, submitted in the order the host loop needs them
(init, steps, point_lite, the shared probes program, point). The first use of a program waits
for it; that wait is what a group's compile_seconds counts (``ProgramCache.wait_seconds``),
while ``work_seconds`` sums the compile threads' own time. So the programs of a group compile
side by side, and its last-point program compiles while the group trains. A compile that fails
raises at the program's first use and leaves the cache without it (the next build tries again).
``background(False)`` compiles in the caller's thread (what a timing that must not share the
machine with a compile needs).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
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
        self.lock = threading.RLock()  # the items, the counters (compile threads write them)
        self.wait_seconds = 0.0  # callers' time waiting for programs still compiling
        self.work_seconds = 0.0  # the compile threads' time (tracing, lowering, compiling)

    def get(self, key: tuple) -> Any | None:
        with self.lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: tuple, value: Any) -> Any:
        with self.lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return value

    def discard(self, program: Any) -> None:
        """Forget ``program`` (a failed compile) and every build holding it: the next build
        compiles it again."""
        with self.lock:
            for key, value in list(self._items.items()):
                if value is program or (isinstance(value, Programs) and program in value.compiled):
                    del self._items[key]

    def clear(self) -> None:
        with self.lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[tuple]:
        with self.lock:
            return list(self._items)

    def add_time(self, wait: float = 0.0, work: float = 0.0) -> None:
        with self.lock:
            self.wait_seconds += wait
            self.work_seconds += work

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
    ) -> Any:
        """A program from this cache, or submitted to the compile pool now (calling ``before``
        first) with XLA ``options`` (dropped if this XLA does not know them): a Deferred, or
        the compiled program itself when compiles run in the caller's thread."""
        shapes = tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(args))
        key = (name, cfg, tuple(d.id for d in mesh.devices.flat), jax.tree.structure(args), shapes)
        cached = self.get(key)
        if cached is not None:
            return cached
        if before is not None:
            before()

        deferred = Deferred(self, key, name)

        def work() -> Any:
            t0 = time.perf_counter()
            try:
                lowered = jax.jit(
                    fn,
                    in_shardings=in_shardings,
                    out_shardings=out_shardings,
                    donate_argnums=donate,
                ).lower(*args)
                return compile_with(lowered, options)
            finally:
                deferred.seconds = time.perf_counter() - t0
                self.add_time(work=deferred.seconds)

        if not _BACKGROUND[0]:
            t0 = time.perf_counter()
            try:
                return self.put(key, work())
            finally:
                self.add_time(wait=time.perf_counter() - t0)
        deferred.work, deferred.again = work, _SPECULATIVE[0]  # a prefetch's: again on failure
        deferred.future = _submit(work)
        return self.put(key, deferred)


PROGRAMS = ProgramCache()

# Compile threads: XLA's CPU compiler keeps about one core busy per program, so as many as
# there are cores (8 at most: a group has at most five programs, and a second group's compiles
# are never wanted beside the first's).
COMPILE_THREADS = max(1, min(8, os.cpu_count() or 1))
_POOL: list[concurrent.futures.ThreadPoolExecutor] = []
_BACKGROUND = [True]
_SPECULATIVE = [False]


def _submit(work: Callable[[], Any]) -> concurrent.futures.Future:
    """``work`` queued on the compile pool (made on first use; again after cancel_compiles,
    which holds the same lock, so a submission never meets a pool being shut down)."""
    with PROGRAMS.lock:
        if not _POOL:
            _POOL.append(concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS, "bnexp-compile"))
        return _POOL[0].submit(work)


def cancel_compiles() -> None:
    """Drop the compiles not yet started (an interrupted run: the process then exits after the
    running ones, at most a program's compile time, instead of after every queued one)."""
    with PROGRAMS.lock:  # (shutdown without waiting: the running compiles finish on their own)
        if _POOL:
            _POOL.pop().shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def background(on: bool) -> Iterator[None]:
    """Compile on the pool (True, the default) or in the caller's thread (False) inside."""
    old, _BACKGROUND[0] = _BACKGROUND[0], on
    try:
        yield
    finally:
        _BACKGROUND[0] = old


@contextlib.contextmanager
def speculative() -> Iterator[None]:
    """Programs submitted inside are a prefetch's (engine.prefetch_group): one whose compile
    fails (it competed with a training group for memory, say) is compiled again in the
    thread that first uses it, and raises only if that fails too."""
    old, _SPECULATIVE[0] = _SPECULATIVE[0], True
    try:
        yield
    finally:
        _SPECULATIVE[0] = old


class Deferred:
    """A program compiling on the pool. Calling it, ``ready()`` or reading an attribute of the
    compiled program waits for the compile (the wait added to the cache's wait_seconds) and
    raises its error if it failed (the cache then forgets it). One dropped from the queue
    (cancel_compiles) compiles in the thread that needs it."""

    def __init__(self, cache: ProgramCache, key: tuple, name: str) -> None:
        self._cache, self.key, self.name = cache, key, name
        self.future: concurrent.futures.Future | None = None
        self.seconds = 0.0  # the compile thread's time on it, once done
        self.counted, self.counting = False, threading.Lock()  # in a group's work seconds
        self.work: Callable[[], Any] | None = None  # the compile (run here if it was dropped)
        self.again = False  # speculative(): compiled again here should it fail on the pool

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def ready(self) -> Any:
        assert self.future is not None
        if not self.future.done():
            t0 = time.perf_counter()
            # Future.exception() waits on the future's own condition, which cancel() notifies.
            # (Not concurrent.futures.wait: its waiter is told of a cancel only by a worker that
            # dequeues the item, and shutdown(cancel_futures=True) empties the queue first, so a
            # wait begun before cancel_compiles never woke: the hang of the dropped-compiles test.)
            try:
                with contextlib.suppress(concurrent.futures.CancelledError):
                    self.future.exception()
            finally:
                self._cache.add_time(wait=time.perf_counter() - t0)
        try:
            return self.future.result()
        except concurrent.futures.CancelledError:  # dropped by cancel_compiles: compile here
            pass
        except Exception:
            if not self.again:
                self._cache.discard(self)
                raise
            self.again = False
        t0 = time.perf_counter()
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            assert self.work is not None
            future.set_result(self.work())
        except Exception as e:
            future.set_exception(e)
        finally:
            self._cache.add_time(wait=time.perf_counter() - t0)
        self.future = future
        return self.ready()

    def ready_seconds(self) -> float:
        """The compile thread's seconds on this program, once it is compiled (waits)."""
        with contextlib.suppress(Exception):
            self.ready()
        return self.seconds

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ready()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.ready(), name)


def ready(program: Any) -> Any:
    """``program`` compiled: a Deferred waited for, anything else as it is."""
    return program.ready() if hasattr(type(program), "ready") else program


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
    compiled: tuple = ()  # the Deferreds this build submitted (none when all were cached)

    def work_seconds(self) -> float:
        """The compile threads' seconds on this build's programs not yet counted (waits for
        them): a group prefetched by another (engine.prefetch_group) counts them, once."""
        total = 0.0
        for d in self.compiled:
            seconds = d.ready_seconds()
            with d.counting:
                total += 0.0 if d.counted else seconds
                d.counted = True
        return total


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
    if cached is not None:  # (its compiles may still run: a prefetch's, engine.prefetch_group)
        return cached
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
    new: list[Deferred] = []

    def submitted(prog: Any) -> Any:
        if isinstance(prog, Deferred) and prog not in new and not prog.done():
            new.append(prog)
        return prog

    init = submitted(
        cache.program(
            "init", init_cfg, mesh, init_fn, (_abstract(hp),), (member,), shard, before=before
        )
    )
    carry = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        jax.eval_shape(init_fn, hp),
        shard,
    )
    steps = submitted(_steps_program(cache, cfg, t, carry, hp, data, length, idx_shape, before))
    # Probes that do not read the point's test rows run in one program for both kinds of point
    # (compiled once, not inside each point program: a probe experiment's point_lite compiled
    # about as long as its point, the probes being most of both).
    shared = lite and bool(cfg.probes) and not probes.reads_test(cfg.probes)
    args = (carry, _abstract(hp), _abstract(data))
    shardings = (shard, member, repl)

    def compiled(name: str, full: bool, part: str) -> Any:
        point_fn = jax.vmap(
            functools.partial(member_point, cfg, full=full, traces=cache.traces, part=part),
            in_axes=(axes, 0, None),
        )
        return submitted(
            cache.program(name, cfg, mesh, point_fn, args, shardings, member, before=before)
        )

    # In the order the host loop needs them: every point but the last is lite.
    part = "eval" if shared else "all"
    point_lite = compiled("point_lite", False, part) if lite else None
    probe_prog = compiled("point_probes", False, "probes") if shared else None
    point = compiled("point", True, part)
    if probe_prog is not None:
        point, point_lite = _WithProbes(point, probe_prog), _WithProbes(point_lite, probe_prog)
    return Programs(init, steps, point, point_lite, length, tuple(new))


class _WithProbes:
    """A point program and the shared probes program called as one: (carry, hp, data) ->
    every metric."""

    def __init__(self, point: Any, probes_prog: Any) -> None:
        self.point, self.probes = point, probes_prog

    def ready(self) -> _WithProbes:
        ready(self.point), ready(self.probes)
        return self

    def __call__(self, carry: Any, hp: Any, data: dict) -> dict:
        return {**self.point(carry, hp, data), **self.probes(carry, hp, data)}


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
) -> Any:
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
