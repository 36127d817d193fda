"""The host loop of one sweep group (run_group): evaluation points, pieces, chunks.

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
step 0 and the linear grid included, runs ``point_lite`` (unless there are fewer than
LITE_MIN_POINTS of them: then every point is full and no point_lite is compiled): eval mode on a fixed random
EVAL_SUBSET (2,000) of the test set (``eval_subset``: a seeded draw, since MNIST's test set is
ordered and its first 5,000 images are the cleaner NIST half). test_acc/test_loss there are
estimates from that subset (standard error ~0.7 points at 90% accuracy; both arms of a pair see
the same images) and test_acc_batch is NaN. A model without norm layers gets test_acc_batch from
its one eval pass (both modes are the same network). Probes run at every point (their analyses
read series; they need no test set). Measured share of the run (compile excluded) spent in the
point programs on the 2-core dev machine (2 host devices, full MNIST, MLP 784-100-100-100-10,
batch 60), before the schedule -> step 0 + the schedule with the grid on the whole test set ->
this: compare quick (3000 steps, eval_every 100, 2 groups of 5 seeds; 30 -> 55 -> 55 points)
50% -> 53% -> 19% (group time 13.4 s); lr-sweep quick (2000 steps, 2 groups of 35 members;
20 -> 44 -> 44 points) 47% -> 50% -> 17%. A lite point costs ~1/9 of a full one (compare:
15 vs 131 ms; lr-sweep: 0.22 vs 1.7 s).

Compiling: build (bnexp.engine.cache) returns programs that compile on threads while this loop
goes on; the loop waits for each at its first use (init, then steps, then the step-0 point), so
the programs of a piece compile side by side and the last point's compiles while the piece
trains. GroupRun.compile_seconds is the loop's wait; compile_work_seconds the threads' time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnexp import distributed
from bnexp.engine.cache import PROGRAMS, Programs, build, ready, speculative
from bnexp.engine.layout import AXIS, Plan, ProgramConfig, plan_group
from bnexp.train import Carry

# A group with fewer points than this before the last evaluates them all with ``point`` (no
# point_lite program): point_lite compiles in about the time point does (0.4-2.8 s a group on
# the 2-core Xeon, bnexp run depth --preset quick, whose groups evaluate at step 0 and the end
# only), while one more full point costs one batch-statistics pass over the test set more.
LITE_MIN_POINTS = 2


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
    compile_seconds: float  # the host loop's wait for programs still compiling
    seconds: float
    eval_seconds: float  # wall time in the point programs (each timed to its results)
    padded_members: int
    pieces: int
    devices: int  # the devices the members were sharded over
    member_block: int  # members per block on a device (0: none; see blocked_steps)

    plan: Plan | None = None  # the layout the group ran with (plan_group)
    compile_work_seconds: float = 0.0  # the compile threads' time on the group's programs


def _stack_members(hps: list[Any]) -> Any:
    """Member numbers -> one tree of (M,) arrays: floats as float32, ints (seeds) as int32."""

    def stack(*v: Any) -> np.ndarray:
        return np.asarray(v, np.int32 if isinstance(v[0], (int, np.integer)) else np.float32)

    return jax.tree.map(stack, *hps)


@dataclass
class _Host:
    """What the host loop of one group needs to train a piece: its config, mesh, data, the
    schedule, and the running sums of compile and evaluation time."""

    cfg: ProgramConfig
    mesh: Mesh
    data: dict[str, Any]
    batch_indices: Callable[[int, int, int], np.ndarray]
    schedule: np.ndarray
    size: int  # members per piece (padding included)
    report: Callable[[int, int, str], None] | None
    total: int  # steps over all pieces (progress)
    on_started: Callable[[], None] | None = None  # once, when the first steps are dispatched
    compile_first: bool = False  # every program compiled before the piece trains
    compile_seconds: float = 0.0
    compile_work_seconds: float = 0.0
    eval_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.member = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.repl = NamedSharding(self.mesh, PartitionSpec())
        self.lengths = np.diff(self.schedule).astype(int).tolist()
        self.full = self.schedule == self.schedule[-1]  # the whole test set: the last point only
        if len(self.schedule) - 1 < LITE_MIN_POINTS:  # too few points to pay for point_lite
            self.full[:] = True
        self.longest = self.cfg.block_steps if self.cfg.unrolled else max(self.lengths)

    def idx_shape(self, b: int) -> tuple[int, ...]:
        bs = self.cfg.batch_size
        return (b, bs) if self.cfg.shared_batch else (self.size, b, bs)

    def programs(self, p: int, hp: Any) -> Programs:
        steps = int(self.schedule[-1])

        reported = []

        def compiling() -> None:
            if self.report is not None and not reported:
                reported.append(True)
                self.report(p * steps, self.total, "compiling")

        lite = not bool(self.full.all())
        progs = build(
            self.cfg, self.mesh, hp, self.data, self.longest, self.idx_shape, compiling, lite=lite
        )
        if any(not d.done() for d in progs.compiled):  # a prefetch's, still compiling
            compiling()
        return progs

    def chunk_inputs(self, seeds: list[int], start: int, length: int) -> list[tuple]:
        """(idx, n on the device, n) per call of the steps program for the chunk of ``length``
        steps from ``start``: rows padded with row 0 to the program's length."""
        rows = {s: self.batch_indices(s, start, length) for s in sorted(set(seeds))}
        calls = []
        for b0 in range(0, length, self.longest):
            n = min(self.longest, length - b0)

            def one(r: np.ndarray, b0: int = b0, n: int = n) -> np.ndarray:
                out = np.zeros((self.longest, self.cfg.batch_size), np.int32)
                out[:n] = r[b0 : b0 + n]
                return out

            if self.cfg.shared_batch:
                idx = jax.device_put(one(rows[seeds[0]]), self.repl)
            else:
                idx = jax.device_put(np.stack([one(rows[s]) for s in seeds]), self.member)
            calls.append((idx, jax.device_put(np.int32(n), self.repl), n))
        return calls

    def evaluate(self, progs: Programs, carry: Carry, hp: Any, full: bool) -> dict:
        program = ready(progs.point if full else progs.point_lite)  # a compile wait is not eval
        t0 = time.perf_counter()
        out = program(carry, hp, self.data)
        out = distributed.to_host(out)  # a distributed job's shards gathered from every process
        self.eval_seconds += time.perf_counter() - t0
        return out

    def piece(self, p: int, hps: list[Any], seeds: list[int]) -> list[dict]:
        """Train piece p (its members' numbers ``hps`` and data seeds, padding included): the
        metrics at every evaluation point, train_loss included. The programs compile on the
        pool (bnexp.engine.cache) while this loop goes on; its waits for them are the piece's
        compile_seconds."""
        waited = PROGRAMS.wait_seconds
        try:
            return self._piece(p, hps, seeds)
        finally:
            self.compile_seconds += PROGRAMS.wait_seconds - waited

    def _piece(self, p: int, hps: list[Any], seeds: list[int]) -> list[dict]:
        hp = jax.device_put(_stack_members(hps), self.member)
        progs = self.programs(p, hp)
        if self.compile_first:  # no compile shares the machine with the piece's training
            for prog in (progs.init, progs.steps, progs.point, progs.point_lite):
                ready(prog)
        carry = progs.init(hp)
        points = [self.evaluate(progs, carry, hp, bool(self.full[0]))]  # the initial model
        start, lengths = 0, self.lengths
        upcoming = self.chunk_inputs(seeds, 0, lengths[0])
        for j, length in enumerate(lengths):
            losses = []
            for idx, n_dev, n in upcoming:
                carry, loss = progs.steps(carry, hp, idx, n_dev, self.data)
                losses.append((loss, n))
            if self.on_started is not None:  # the device trains: the host may prepare more
                started, self.on_started = self.on_started, None
                started()
            start += length
            if j + 1 < len(lengths):  # host work for the next chunk overlaps the device's
                upcoming = self.chunk_inputs(seeds, start, lengths[j + 1])
            jax.block_until_ready(carry)  # so that eval_seconds times the evaluation alone
            metrics = self.evaluate(progs, carry, hp, bool(self.full[j + 1]))
            chunk = np.concatenate([distributed.to_host(v)[:, :n] for v, n in losses], 1)
            if j == 0:  # step 0's train_loss: the first batch's loss at the initial weights
                points[0]["train_loss"] = chunk[:, 0]
            metrics["train_loss"] = chunk.mean(1)
            points.append(metrics)
            if self.report is not None:
                self.report(p * int(self.schedule[-1]) + start, self.total, "training")
        self.compile_work_seconds += progs.work_seconds()
        return points


def _histories(points: list[dict], schedule: np.ndarray, real: int) -> tuple[list, list[int]]:
    """Per real member: its history (one array per metric over the points) and diverged_at."""
    stacked = {  # the last point is full: every key; NaN where a point did not measure it
        k: np.stack([pt[k] if k in pt else np.full_like(like, np.nan) for pt in points], axis=1)
        for k, like in points[-1].items()
    }
    histories, diverged = [], []
    for m in range(real):
        h = {"step": schedule}
        h.update({k: v[m] for k, v in stacked.items() if k != "diverged_at"})
        histories.append(h)
        diverged.append(int(stacked["diverged_at"][m, -1]))
    return histories, diverged


def _setup(
    cfg: ProgramConfig,
    hps: list[Any],
    data: dict[str, Any],
    batch_indices: Callable[[int, int, int], np.ndarray],
    steps: int,
    eval_every: int,
    mesh: Mesh,
    per_decade: int,
    max_members: int,
    report: Callable[[int, int, str], None] | None,
    members_per_block: int | None,
    measure: Callable[[int], float] | None = None,
) -> tuple[Plan, _Host]:
    """A group's plan (layout.plan_group) and its host loop, the data on the group's mesh."""
    plan, mesh, cfg = plan_group(
        cfg,
        len(hps),
        mesh,
        max_members=max_members,
        members_per_block=members_per_block,
        member_hp=hps[0],
        data=data,
        measure=measure,
    )
    data = jax.device_put(data, NamedSharding(mesh, PartitionSpec()))
    schedule = eval_schedule(steps, eval_every, per_decade)
    host = _Host(
        cfg, mesh, data, batch_indices, schedule, plan.padded_members, report, steps * plan.pieces
    )
    return plan, host


def _piece_members(p: int, n: int, plan: Plan) -> tuple[list[int], list[int]]:
    """Piece p's real members (indices into the group) and its members with padding."""
    per_piece = math.ceil(n / plan.pieces)
    real = list(range(p * per_piece, min(n, (p + 1) * per_piece)))
    return real, real + [real[-1]] * (plan.padded_members - len(real))  # padding: dropped after


class NotTimedYet(Exception):
    """A prefetch's plan would time a calibration (bnexp.calibrate): never beside a training
    group, so the group's own run_group does it, and the prefetch stops."""


def _refuse_to_time(members_per_block: int) -> float:
    raise NotTimedYet(members_per_block)


def prefetch_group(
    cfg: ProgramConfig,
    hps: list[Any],
    data: dict[str, Any],
    *,
    steps: int,
    eval_every: int,
    mesh: Mesh,
    per_decade: int = 8,
    max_members: int = 64,
    members_per_block: int | None = None,
) -> bool:
    """Submit a group's programs to the compile threads (bnexp.engine.cache) while another group
    trains, so that its run_group (same arguments) finds them compiling or compiled: True if
    submitted. Nothing is timed (a calibration not yet cached stops it: NotTimedYet), nothing
    is printed or reported, and a failure is left to the group's own run (a failed compile is
    tried again there: cache.speculative)."""
    import logging

    log = logging.getLogger("bnexp.calibrate")
    quiet, log.disabled = log.disabled, True  # the group's own plan says what it chose
    try:
        plan, host = _setup(
            cfg,
            hps,
            data,
            lambda s, t, n: np.zeros((n, cfg.batch_size), np.int32),
            steps,
            eval_every,
            mesh,
            per_decade,
            max_members,
            None,
            members_per_block,
            measure=_refuse_to_time,
        )
        _, ids = _piece_members(0, len(hps), plan)
        with speculative():  # a compile that fails is tried again by the group's own run
            host.programs(0, jax.device_put(_stack_members([hps[i] for i in ids]), host.member))
        return True
    except Exception:  # noqa: BLE001 - a prefetch only saves time; the group's run raises
        return False
    finally:
        log.disabled = quiet


def run_group(
    cfg: ProgramConfig,
    hps: list[Any],
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
    on_plan: Callable[[Plan], None] | None = None,
    on_started: Callable[[], None] | None = None,
    compile_first: bool = False,
) -> GroupRun:
    """Train all members of one group; report(step_done, total, phase) as it goes.

    hps[i] is member i's numbers (train.HP: lr, momentum, init_scale, seed, norm_call; a dict
    of those keys also works); batch_indices(data_seed, start_step, num_steps) -> (num_steps,
    batch) int32 rows. Evaluation points: step 0 (the initial model) and eval_schedule(steps,
    eval_every, per_decade); the last takes ``point``, the others ``point_lite`` (see the module
    doc). The layout is the group's Plan (layout.plan_group: pieces of at most max_members,
    devices, member blocks), passed to on_plan(plan) before anything compiles; progress counts
    steps over all pieces (total = steps x pieces). members_per_block: members per block on a
    device (None: member_block's choice; 0: no blocks). on_started() is called once, when the
    first steps have been dispatched to the devices (run_sweep prefetches the next group then).
    compile_first: every program of a piece compiled before it trains (a group whose training
    time is measured: sweep.Trial.timed).
    """
    t_start = time.perf_counter()
    plan, host = _setup(
        cfg,
        hps,
        data,
        batch_indices,
        steps,
        eval_every,
        mesh,
        per_decade,
        max_members,
        report,
        members_per_block,
    )
    if on_plan is not None:
        on_plan(plan)
    host.on_started, host.compile_first = on_started, compile_first
    histories: list[dict[str, np.ndarray]] = []
    diverged: list[int] = []
    for p in range(plan.pieces):
        real, ids = _piece_members(p, len(hps), plan)
        points = host.piece(p, [hps[i] for i in ids], [data_seeds[i] for i in ids])
        h, d = _histories(points, host.schedule, len(real))
        histories += h
        diverged += d
    return GroupRun(
        histories,
        diverged,
        host.compile_seconds,
        time.perf_counter() - t_start,
        host.eval_seconds,
        plan.padded_members,
        plan.pieces,
        plan.devices,
        host.cfg.member_block,
        plan,
        host.compile_work_seconds,
    )
