"""Sweeps: trials -> groups by static signature -> one compiled, vmapped program per group.

CONTRACT (callers rely on these names):

    trials = [Trial(model=ModelSpec(norm="batch"), lr=lr, seed=s) for lr in lrs for s in range(3)]
    results = run_sweep(trials, progress=cb, on_group_done=save)   # list[TrialResult], input order
    run_sweep(trials, *, progress=None, on_group_done=None, max_members=64, devices=None,
              unrolled=None, member_block=None) -> list[TrialResult]

- Static fields (model, dataset, data_options, batch_size, steps, eval_every, eval_per_decade,
  optimizer, probes, probe_batch_size, the *names* in norm_call, divergence_factor, timed) form
  the group signature (trials of different evaluation schedules never share a group): one
  compiled program per group (bnexp.engine). A group runs in pieces of at most max_members members
  (PERF.md: past ~64 members per program the working set outgrows the CPU caches), each padded to a
  multiple of the device count; all pieces share the program. On a CPU each device trains its
  members in cache-sized blocks, one block after the other (engine.blocked_steps; member_block
  overrides the engine's choice, 0 turns blocks off).
- Numeric fields lr, momentum, init_scale, seed, data_seed and the *values* of norm_call are traced
  data, vmapped over members. Members sharing data_seed see the same batches in the same order
  (data.batch_indices); when every member of a group shares one data seed the batch is passed
  once, unbatched, so the first layer is one large matrix product over all members.
- progress(event: ProgressEvent) is called with group index/count, step, total steps, and phase
  ("compiling" | "training" | "done"); step/total count steps over the group's pieces (total =
  steps x pieces). on_group_done(group_results: list[TrialResult]) is called as
  soon as a group finishes, so callers can save results before the sweep ends.
- history arrays all have length E = number of evaluation points: step 0 (the initial model,
  before any training) and engine.eval_schedule(steps, eval_every, eval_per_decade), i.e. the
  linear grid eval_every, 2*eval_every, ..., steps (the last interval shorter if eval_every does
  not divide steps) merged with ~eval_per_decade geometric points per decade (0: none). Keys:
  "step" (int64, history["step"][0] == 0), "train_loss" (mean training loss over the steps
  since the previous point; at step 0 the loss of the first training batch at the initial
  weights, NaN if step 1 already diverged), "test_acc", "test_loss" (eval mode, running stats: the whole test set at the last point,
  the fixed engine.eval_subset of it at every other point), "test_acc_batch" (batch-statistics
  mode, test set split into batches of batch_size, a partial last batch dropped; NaN if
  batch_size < 2, and NaN at every point but the last, where it is
  not measured), plus one key per requested probe output (e.g. "percentiles" with shape (E, 3);
  see bnexp.probes; measured at every point). The last point is always on the grid. Metrics are
  float32.
- A diverged member (loss non-finite or > divergence_factor x its initial loss, or a non-finite
  update) is frozen: its parameters stop changing, diverged_at is the step, and every history
  entry at an evaluation point >= diverged_at is NaN. Steps are numbered from 1; "initial loss"
  is the loss of step 1.
- TrialResult.seconds is the member's share of its group's wall time (compilation included);
  extra holds "compile_seconds" (the group's wait for its programs to compile, 0 when every
  program was already compiled in this process), "compile_work_seconds" (the compile threads'
  time on them: more than the wait when they compiled side by side or while the group trained),
  "group_seconds", "eval_seconds" (the group's wall time in its
  evaluation programs), "group", "members", "padded_members", "pieces",
  "member_block", "devices", "shared_batch", "unrolled", "block_steps".
- Devices: the member axis is sharded over ``devices`` (default jax.devices()); a group with
  fewer members than devices is sharded over that many of them. On a CPU,
  configure_host_devices() must run before JAX initializes to expose the cores as devices.

Over 300 lines: most of it is the module doc and the Trial fields, the sweep's whole input
contract; run_sweep itself is a short loop over groups (helpers below it).
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnexp.models import ModelSpec

# Default number of host (CPU) devices exposed by configure_host_devices(); None = os.cpu_count().
# Decided with scripts/bench_engine.py (since removed; `bnexp bench` supersedes it) on the 2-core dev machine (64-member lr sweep of the paper's
# MLP with BN, mnist-5k (since replaced), batch 60, eval points included, best of 6 interleaved runs; other jobs
# were loading the machine, so only ratios within a round mean much):
#   1 host device:  shared batch 1,426  own batches 1,358 model-steps/s
#   2 host devices: shared batch 1,997  own batches 1,957 model-steps/s   (1.4x)
# XLA CPU keeps about one core busy for these shapes, so one device per core wins; members are
# sharded over the devices. (Sharing the batch gains only ~3%: it saves the per-member gather, but
# XLA transposes the (members, 784, 100) first-layer weight into one (784, members*100) matrix and
# back at every step.)
DEFAULT_HOST_DEVICES: int | None = None
PROBE_SEED = 20150211  # the fixed probe batch (same examples for every trial of a dataset)


@dataclass(frozen=True)
class Trial:
    """One training run: a full configuration plus seeds."""

    model: ModelSpec = ModelSpec()
    dataset: str = "mnist"
    batch_size: int = 60
    steps: int = 1000
    eval_every: int = 100
    eval_per_decade: int = 8  # geometric evaluation points per decade besides the grid (0: none)
    optimizer: str = "sgd"  # "sgd" | "momentum" | "adam"
    lr: float = 0.5
    momentum: float = 0.9  # used by the "momentum" optimizer
    init_scale: float = 1.0
    seed: int = 0  # initialization (and dropout/noise) seed
    data_seed: int = 0  # batch order seed
    norm_call: tuple[tuple[str, float], ...] = ()  # traced per-call norm options (noise, r_max...)
    probes: tuple[str, ...] = ()
    # options per probe, like norm_options: ((probe name, ((key, value), ...)), ...)
    probe_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    divergence_factor: float = 1e3
    tag: str = ""  # free label (arm name); not part of the signature
    data_options: tuple[tuple[str, Any], ...] = ()  # static options for data.load (synthetic sizes)
    probe_batch_size: int = 1000  # examples in the fixed probe batch (capped at the train set)
    # Its group's training time is a measurement (experiments.whitening): every program of the
    # group compiles before it trains, and no other group compiles beside it (no prefetch).
    timed: bool = False


@dataclass
class TrialResult:
    trial: Trial
    history: dict[str, np.ndarray]
    diverged_at: int | None
    final_test_accuracy: float | None  # None when diverged
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgressEvent:
    group: int
    groups: int
    step: int
    total: int
    members: int
    phase: str  # "compiling" | "training" | "done"
    seconds: float = 0.0  # wall time since the group started


def grid_points(steps: np.ndarray | Sequence[int], eval_every: int) -> np.ndarray:
    """Which entries of a history's "step" array are step 0 and the linear grid (eval_every,
    2 * eval_every, ..., the last step), as opposed to the geometric points between them that
    resolve early training (the curve tables show the grid)."""
    steps = np.asarray(steps)
    return (steps % eval_every == 0) | (steps == steps.max(initial=0))


def signature(trial: Trial) -> tuple:
    """The static part of a trial: trials with equal signatures share one compiled program."""
    return (
        trial.model,
        trial.dataset,
        trial.data_options,
        trial.batch_size,
        trial.steps,
        trial.eval_every,
        trial.eval_per_decade,
        trial.optimizer,
        trial.probes,
        trial.probe_options,
        trial.probe_batch_size,
        tuple(name for name, _ in trial.norm_call),
        trial.divergence_factor,
        trial.timed,
    )


def group_trials(trials: Sequence[Trial]) -> list[list[int]]:
    """Indices of trials grouped by signature, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(trials):
        groups.setdefault(signature(t), []).append(i)
    return list(groups.values())


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - private API moved: assume not started
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def configure_host_devices(n: int | None = None) -> int:
    """Expose n CPU cores as n JAX host devices (XLA_FLAGS) so members shard over them.

    Must run before JAX initializes its backends (the CLI calls it first thing); afterwards it
    changes nothing and returns the CPU device count JAX already has. Respects the
    user: a device count already in XLA_FLAGS wins, and when n is None, BNEXP_HOST_DEVICES gives it;
    otherwise an XLA_FLAGS set by the user is left untouched. Returns the host device count in
    effect (1 when unchanged). Default: one device per core (os.cpu_count()), because XLA CPU uses
    about one core for these small shapes and members sharded over 2 devices ran 1.4x faster on
    2 cores (figures at DEFAULT_HOST_DEVICES). On GPU/TPU machines the flag only affects the
    unused host platform.
    """
    if "jax" in sys.modules and _backends_started():  # too late to change anything
        import jax

        return len(jax.devices("cpu"))
    flags = os.environ.get("XLA_FLAGS", "")
    found = re.search(r"--xla_force_host_platform_device_count=(\d+)", flags)
    if found:
        return int(found.group(1))
    if n is None:
        env = os.environ.get("BNEXP_HOST_DEVICES")
        if env:
            n = int(env)
        elif flags.strip():
            return 1
        else:
            n = DEFAULT_HOST_DEVICES or os.cpu_count() or 1
    if n < 1:
        raise ValueError(f"host device count must be >= 1, got {n}")
    if n > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n


def enable_compilation_cache(path: Path | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in data.cache_dir()/"jax-cache" (or path), so
    a repeated run loads its programs instead of compiling them. Not done on import."""
    import jax

    from bnexp import data

    path = Path(path) if path is not None else data.cache_dir() / "jax-cache"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _member_numbers(t: Trial) -> Any:
    """A trial's swept numbers as the engine takes them (bnexp.train.HP)."""
    from bnexp import train

    return train.HP(
        lr=float(t.lr),
        momentum=float(t.momentum),
        init_scale=float(t.init_scale),
        seed=int(t.seed),
        norm_call={k: float(v) for k, v in t.norm_call},
    )


def _check(t: Trial, ds: Any) -> None:
    from bnexp import models, probes

    if t.steps < 1 or t.eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1 (got {t.steps}, {t.eval_every})")
    if t.eval_per_decade < 0:
        raise ValueError(f"eval_per_decade must be >= 0 (got {t.eval_per_decade})")
    spec = t.model
    want = spec.input_shape if spec.kind == "cnn" else (spec.widths[0],)
    have = tuple(ds.input_shape) if spec.kind == "cnn" else (math.prod(ds.input_shape),)
    if tuple(want) != have:
        raise ValueError(
            f"model input {tuple(want)} does not match dataset {t.dataset!r} "
            f"input {tuple(ds.input_shape)}"
        )
    if spec.output_dim != ds.num_classes:
        raise ValueError(
            f"model has {spec.output_dim} outputs, dataset {t.dataset!r} has "
            f"{ds.num_classes} classes"
        )
    if t.batch_size > len(ds.y_train):
        raise ValueError(
            f"batch_size {t.batch_size} exceeds the {len(ds.y_train)} training examples"
        )
    allowed = getattr(models.norm_of(spec, True), "call_options", ())
    bad = [k for k, _ in t.norm_call if k not in allowed]
    if bad:
        raise ValueError(
            f"norm {spec.norm!r} takes no per-call option(s) {bad}; it takes {allowed}"
        )
    probes.check(t.probes, t.probe_options)


def run_sweep(
    trials: Sequence[Trial],
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    on_group_done: Callable[[list[TrialResult]], None] | None = None,
    max_members: int = 64,
    devices: Sequence[Any] | None = None,
    unrolled: bool | None = None,
    member_block: int | None = None,
    on_plan: Callable[[int, Any], None] | None = None,
) -> list[TrialResult]:
    """Run every trial; one compiled program per group of equal signatures (see module doc).

    unrolled: run steps in short loop-free blocks instead of one rolled scan per chunk (None:
    engine.layout_for decides; only lax.conv CNNs on CPU are unrolled). member_block: members
    per block on each device (None: calibrated on this machine, bnexp.calibrate, or
    engine.member_block's cache-size model with BNEXP_CALIBRATE=0; 0: no blocks).
    on_plan(group, plan): each group's engine.Plan, decided before it compiles. Prints nothing.
    """
    from bnexp import engine

    trials = list(trials)
    if max_members < 1:
        raise ValueError(f"max_members must be >= 1, got {max_members}")
    if member_block is not None and member_block < 0:
        raise ValueError(f"member_block must be >= 0, got {member_block}")
    mesh = engine.make_mesh(devices)
    datasets = _Datasets(mesh)
    results: list[TrialResult | None] = [None] * len(trials)
    groups = group_trials(trials)

    def prefetch(gi: int) -> None:
        """Group gi's programs to the compile threads while the group before it trains (not in
        a distributed job: its processes compile what they run, in the same order)."""
        from bnexp import distributed

        if gi >= len(groups) or distributed.active() or trials[groups[gi - 1][0]].timed:
            return
        group = [trials[i] for i in groups[gi]]
        arrays, _ = datasets.arrays(group)
        engine.prefetch_group(
            _program_config(group, unrolled, mesh.devices.flat[0].platform),
            [_member_numbers(t) for t in group],
            arrays,
            steps=group[0].steps,
            eval_every=group[0].eval_every,
            per_decade=group[0].eval_per_decade,
            mesh=mesh,
            max_members=max_members,
            members_per_block=member_block,
        )

    for gi, ids in enumerate(groups):
        group = [trials[i] for i in ids]
        arrays, n_train = datasets.arrays(group)
        cfg = _program_config(group, unrolled, mesh.devices.flat[0].platform)
        started = time.perf_counter()

        def report(
            step: int, total: int, phase: str, gi: int = gi, n: int = len(ids), t0: float = started
        ) -> None:
            if progress is not None:
                elapsed = time.perf_counter() - t0
                progress(ProgressEvent(gi, len(groups), step, total, n, phase, elapsed))

        t0 = group[0]

        def batches(seed: int, start: int, num: int, n: int = n_train, t0: Trial = t0) -> Any:
            from bnexp import data

            return data.batch_indices(seed, start, num, n, t0.batch_size)

        run = engine.run_group(
            cfg,
            [_member_numbers(t) for t in group],
            [t.data_seed for t in group],
            arrays,
            batches,
            steps=t0.steps,
            eval_every=t0.eval_every,
            per_decade=t0.eval_per_decade,
            mesh=mesh,
            max_members=max_members,
            report=report,
            members_per_block=member_block,
            on_plan=None if on_plan is None else functools.partial(on_plan, gi),
            on_started=functools.partial(prefetch, gi + 1),
            compile_first=t0.timed,
        )
        group_results = _group_results(group, run, cfg, gi)
        for i, r in zip(ids, group_results, strict=True):
            results[i] = r
        report(run.pieces * t0.steps, run.pieces * t0.steps, "done")
        if on_group_done is not None:
            on_group_done(group_results)
    return [r for r in results if r is not None]


class _Datasets:
    """The datasets of one run_sweep, loaded once each and put onto the devices once per run,
    not per group: each group replicates its dataset over its mesh (all devices, or the first
    len(group) for a small group), and engine.run_group's device_put of an array already so
    placed moves nothing."""

    def __init__(self, mesh: Any) -> None:
        self.mesh = mesh
        self.loaded: dict[tuple, Any] = {}
        self.placed: dict[tuple, dict[str, Any]] = {}  # (dataset key, devices) -> replicated

    def arrays(self, group: list[Trial]) -> tuple[dict[str, Any], int]:
        """(the group's device arrays, probe batch included; its number of training examples),
        every trial checked against the dataset first."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        from bnexp import data, distributed, engine

        t0 = group[0]
        layout = "nhwc" if t0.model.kind == "cnn" else "flat"
        dkey = (t0.dataset, layout, t0.data_options)
        if dkey not in self.loaded:
            self.loaded[dkey] = data.load(t0.dataset, layout=layout, **dict(t0.data_options))
        ds = self.loaded[dkey]
        for t in group:
            _check(t, ds)
        # (A distributed job keeps every process's devices: a process with none in a program
        # could not take part in gathering its results.)
        n_dev = max(1, min(len(group), self.mesh.devices.size))
        devs = tuple(self.mesh.devices.flat)[
            : self.mesh.devices.size if distributed.active() else n_dev
        ]
        pkey = (dkey, devs)
        if pkey not in self.placed:
            repl = NamedSharding(engine.make_mesh(list(devs)), PartitionSpec())
            arrays = {"x_train": ds.x_train, "y_train": ds.y_train}
            arrays |= {"x_test": ds.x_test, "y_test": ds.y_test}
            self.placed[pkey] = jax.device_put(arrays, repl)
        arrays = dict(self.placed[pkey])
        n = len(ds.y_train)
        if t0.probes:
            rng = np.random.default_rng(PROBE_SEED)
            rows = np.sort(rng.choice(n, min(n, t0.probe_batch_size), replace=False))
            arrays |= {"x_probe": ds.x_train[rows], "y_probe": ds.y_train[rows]}
        return arrays, n


def _program_config(group: list[Trial], unrolled: bool | None, platform: str) -> Any:
    """The group's engine.ProgramConfig (its static settings, shared or own batches, and
    engine.layout_for's unrolled decision)."""
    from bnexp import engine, probes, train

    t0 = group[0]
    step_cfg = train.StepConfig(
        t0.model,
        t0.optimizer,
        t0.steps,
        t0.divergence_factor,
        tuple(k for k, _ in t0.norm_call),
    )
    lengths = engine.chunk_lengths(t0.steps, t0.eval_every, t0.eval_per_decade)
    unroll, block = engine.layout_for(t0.model, lengths, unrolled, platform)
    return engine.ProgramConfig(
        step_cfg,
        t0.batch_size,
        probes.specs(t0.probes, t0.probe_options),
        shared_batch=len({t.data_seed for t in group}) == 1,
        unrolled=unroll,
        block_steps=block,
    )


def _group_results(group: list[Trial], run: Any, cfg: Any, gi: int) -> list[TrialResult]:
    """One TrialResult per member of a finished engine.GroupRun, its timings in ``extra``."""
    extra = {
        "compile_seconds": run.compile_seconds,
        "compile_work_seconds": run.compile_work_seconds,
        "group_seconds": run.seconds,
        "eval_seconds": run.eval_seconds,
        "group": gi,
        "members": len(group),
        "padded_members": run.padded_members,
        "pieces": run.pieces,
        "member_block": run.member_block,
        "devices": run.devices,
        "shared_batch": cfg.shared_batch,
        "unrolled": cfg.unrolled,
        "block_steps": cfg.block_steps,
    }
    out = []
    for m, t in enumerate(group):
        div = run.diverged_at[m] or None
        hist = run.histories[m]
        final = None if div is not None else float(hist["test_acc"][-1])
        out.append(TrialResult(t, hist, div, final, run.seconds / len(group), dict(extra)))
    return out


__all__ = [
    "ModelSpec",
    "ProgressEvent",
    "Trial",
    "TrialResult",
    "configure_host_devices",
    "enable_compilation_cache",
    "grid_points",
    "group_trials",
    "run_sweep",
    "signature",
]
