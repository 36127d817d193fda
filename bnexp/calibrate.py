"""Members per block, measured on the machine at hand instead of assumed (issue 22).

    mb, why = choose_member_block(cfg, local_members, mesh, member_hp, data)

engine.blocked_steps trains each CPU device's members in blocks, so that a block's weights and
gradients stay in the cache for a whole chunk. The best block size depends on the caches: on the
2-core Zen 3 where ``engine.BLOCK_BYTES`` (5 MiB of estimated working set) was tuned, 4
paper-MLP members per block ran best; a 2-core Xeon with another cache hierarchy need not agree.
So before a group's programs are built, a short calibration times a few candidate block sizes on
the group's real shapes (its model, optimizer, batch size, shared or own batches, its data
arrays) and keeps the fastest:

- candidates (``candidates``): the cache-size model's choice ``fit`` (``engine.member_bytes``
  against BLOCK_BYTES), half, twice and four times it, each capped at the device's member count
  (a cap equal to it is one block of them all: no blocks).
- each candidate's program is ``engine.group_steps`` on ``mb`` members per device over the
  group's own mesh (all its devices at once, so members on neighbouring devices compete for the
  shared cache as they will in the run): exactly one block of the blocked program. It is compiled
  (not counted in its score), warmed up, and timed over REPS calls of STEPS steps (the best
  call); the score is seconds per real member-step, padding included (a device's members are
  padded to whole blocks, so 31 members in blocks of 4 train 32).
- the seconds are kept in ``data.cache_dir()/calibration.json`` under the machine (CPU model,
  core count, device count and kind, jax and jaxlib versions), the shape (model, optimizer,
  batch size, shared or own batches) and the block size, so a machine times a block size of a
  shape once, whatever the group's size; a new jax or another CPU calibrates again. What it
  costs is mostly the candidates' compiles: 7-9 s each for the paper MLP on a 2-core machine
  under a load average of 7 (64 members: 38 s for four block sizes; 103 s at a load of 20),
  less when idle. Timings taken on a loaded machine are noisy (the two runs above picked
  blocks of 2 and of 8): each entry records the load average it was measured at, and deleting
  the file makes the next run calibrate again.

``BNEXP_CALIBRATE=0`` turns the measurement off (deterministic tests, reproducible layouts): the
cache-size model's choice is used as before. Results do not depend on the block size (the blocks
compute the same numbers: tests/test_calibrate.py checks it), only the speed does. The choice
and its reason are logged on the ``bnexp.calibrate`` logger (``bnexp --verbose`` prints it, one
line per group).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger("bnexp.calibrate")
ENV = "BNEXP_CALIBRATE"  # "0": no measurement, the cache-size model decides
CACHE_FILE = "calibration.json"
STEPS = 8  # steps per timed call
REPS = 3  # timed calls per candidate (after one warm-up call); the best one counts
# A group trains for at least this many steps before calibrating pays: the calibration compiles
# every candidate (seconds each, minutes for deep models) to save a share of the training time,
# so a short group (depth's 100 steps) takes the cache-size model's block instead. A ratio of
# work, not a measured speed of any CPU.
MIN_STEPS = 100 * STEPS * REPS


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(devices: Sequence[Any]) -> str:
    """What a calibration holds for: CPU model, cores, device count and kind, jax/jaxlib."""
    import jax
    import jaxlib

    kind = f"{devices[0].platform}:{devices[0].device_kind}"
    return (
        f"{cpu_name()} | {os.cpu_count()} cpus | {len(devices)} x {kind} | "
        f"jax {jax.__version__} jaxlib {jaxlib.__version__}"
    )


def shape_key(cfg: Any) -> str:
    """The group's shape as the steps program sees it (its probes and evaluation do not enter;
    neither does the member count: a block's time per member-step does not depend on it)."""
    text = repr((cfg.step, cfg.batch_size, cfg.shared_batch))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def candidates(fit: int, local_members: int) -> list[int]:
    """Block sizes to time: half, once, twice and four times the cache model's ``fit``, each
    capped at ``local_members`` (one block of them all, no blocks); sorted, unique."""
    fit = max(1, fit)
    return sorted({min(local_members, c) for c in (max(1, fit // 2), fit, 2 * fit, 4 * fit)})


def padded(mb: int, local_members: int) -> int:
    return -(-local_members // mb) * mb


def real_cost(mb: int, seconds: float, local_members: int) -> float:
    """Seconds per real member-step of blocks of ``mb`` timed at ``seconds`` per member-step: the
    padded slots of the last block are paid for too."""
    return seconds * padded(mb, local_members) / local_members


def pick(seconds: dict[int, float], local_members: int) -> int:
    """The block size with the least time per real member-step (padding counted); ties go to the
    larger block (fewer blocks)."""
    cost = {mb: real_cost(mb, s, local_members) for mb, s in seconds.items()}
    return min(cost, key=lambda mb: (cost[mb], -mb))


def _cache_path() -> Path:
    from bnexp import data

    return data.cache_dir() / CACHE_FILE


def load_cache(path: Path | None = None) -> dict[str, Any]:
    path = path or _cache_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: calibrate again (and rewrite it)
    return doc if isinstance(doc, dict) else {}


def save_cache(doc: dict[str, Any], path: Path | None = None) -> None:
    from bnexp.atomic import write_atomic

    blob = json.dumps(doc, indent=1, sort_keys=True).encode()
    try:
        write_atomic(path or _cache_path(), lambda f: f.write(blob))
    except OSError as e:  # a read-only cache directory costs a calibration per process, no more
        LOG.info("calibration not cached (%s)", e)


def calibrated(
    machine: str,
    shape: str,
    cands: Sequence[int],
    local_members: int,
    measure: Callable[[int], float],
    path: Path | None = None,
) -> tuple[int, dict[int, float], int]:
    """(chosen block size, seconds per member-step by candidate, how many were measured now):
    measure(mb) for each candidate not yet in the cache for (machine, shape), cache them, and
    pick among ``cands``. Groups of other sizes but the same shape reuse the measurements."""
    entry = load_cache(path).get(machine, {}).get(shape, {})
    known = {int(k): float(v) for k, v in entry.get("seconds", {}).items()}
    new = {mb: float(measure(mb)) for mb in cands if mb not in known}
    if new:
        doc = load_cache(path)  # another process may have written meanwhile: keep its entries
        entry = doc.setdefault(machine, {}).setdefault(shape, {})
        entry.setdefault("seconds", {}).update({str(k): v for k, v in new.items()})
        entry["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry["load_average"] = os.getloadavg()[0]  # a loaded machine times noisily: delete to redo
        save_cache(doc, path)
    seconds = {mb: new.get(mb, known.get(mb)) for mb in cands}
    return pick(seconds, local_members), seconds, len(new)


def time_block(
    cfg: Any,
    mb: int,
    mesh: Any,
    member_hp: dict,
    data: dict,
    *,
    steps: int = STEPS,
    reps: int = REPS,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds per member-step of ``engine.group_steps`` with ``mb`` members on each device of
    ``mesh`` (one block of the blocked program), best of ``reps`` calls of ``steps`` steps."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from bnexp import engine, train
    from bnexp.engine.loop import _stack_members

    cfg = dataclasses.replace(cfg, member_block=0)
    size = mb * mesh.devices.size
    member = NamedSharding(mesh, PartitionSpec(engine.AXIS))
    repl = NamedSharding(mesh, PartitionSpec())
    hp = jax.device_put(_stack_members([member_hp] * size), member)
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), hp)
    axes = engine.member_axes(
        cfg, jax.eval_shape(functools.partial(train.init_carry, cfg.step), one)
    )
    shard = jax.tree.map(
        lambda a: NamedSharding(mesh, PartitionSpec(*[None] * a, engine.AXIS)), axes
    )
    init = jax.jit(
        jax.vmap(functools.partial(train.init_carry, cfg.step), out_axes=axes), out_shardings=shard
    )
    # on this mesh: the group's data may live on more devices than the group's own mesh (a norm
    # kept to one CPU device, engine.layout.plan_group), and jit refuses mixed device sets
    arrays = {k: jax.device_put(data[k], repl) for k in ("x_train", "y_train")}
    n_train = int(arrays["y_train"].shape[0])
    rows = np.random.default_rng(0).integers(0, n_train, (size, steps, cfg.batch_size))
    idx = rows[0] if cfg.shared_batch else rows
    idx = jax.device_put(idx.astype(np.int32), repl if cfg.shared_batch else member)
    n = jax.device_put(np.int32(steps), repl)
    fn = jax.jit(functools.partial(engine.group_steps, cfg, axes), donate_argnums=(0,))
    carry = init(hp)
    options = engine.compiler_options(cfg.step.spec, mesh.devices.flat[0].platform)
    prog = engine.compile_with(fn.lower(carry, hp, idx, n, arrays), options)
    carry, _ = jax.block_until_ready(prog(carry, hp, idx, n, arrays))  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = timer()
        carry, _ = jax.block_until_ready(prog(carry, hp, idx, n, arrays))
        best = min(best, timer() - t)
    return best / (steps * mb)


def choose_member_block(
    cfg: Any,
    local_members: int,
    mesh: Any,
    member_hp: dict,
    data: dict,
    cores: int = 1,
    measure: Callable[[int], float] | None = None,
    total_steps: int | None = None,
) -> int:
    """Members per block on each device of ``mesh`` for a group of ``local_members`` per device
    (engine.run_group's members_per_block; 0: one block): the calibrated choice (module doc), or
    engine.member_block's cache-size model where calibration is off (BNEXP_CALIBRATE=0), off
    CPU, in unrolled mode, or with one member per device. measure(mb) -> seconds per member-step
    replaces the timing (tests). Logs the choice and why on ``bnexp.calibrate``."""
    from bnexp import engine

    plat = mesh.devices.flat[0].platform
    model = engine.member_block(cfg, local_members, plat, cores)
    short = total_steps is not None and total_steps < MIN_STEPS
    if not enabled() or plat != "cpu" or cfg.unrolled or local_members < 2 or short:
        why = "calibration off" if not enabled() else "nothing to calibrate"
        if enabled() and short and plat == "cpu" and not cfg.unrolled and local_members >= 2:
            why = f"{total_steps} steps: too short to pay for timing candidates"
        LOG.info(
            "member blocks: %s (cache-size model, %s)", _blocks_text(model, local_members), why
        )
        return model
    fit = max(1, engine.BLOCK_BYTES // engine.member_bytes(cfg))
    cands = candidates(fit, local_members)
    if len(cands) == 1:  # the members fit the cache model's block at once: nothing to compare
        LOG.info(
            "member blocks: %s (all fit the cache-size model's block)",
            _blocks_text(0, local_members),
        )
        return 0
    if measure is None:
        measure = functools.partial(time_block, cfg, mesh=mesh, member_hp=member_hp, data=data)
    devices = list(mesh.devices.flat)
    t0 = time.perf_counter()
    choice, seconds, measured = calibrated(
        machine_key(devices), shape_key(cfg), cands, local_members, measure
    )
    timings = ", ".join(_timing_text(mb, s, local_members) for mb, s in sorted(seconds.items()))
    LOG.info(
        "member blocks: %s on each of %d device(s) (%s; us per member-step by block size, "
        "per real member-step in brackets where blocks pad the members: %s)",
        _blocks_text(0 if choice >= local_members else choice, local_members),
        len(devices),
        "from the cached calibration"
        if not measured
        else f"{measured} of {len(cands)} block sizes timed now in "
        f"{time.perf_counter() - t0:.1f} s, compiles included; {len(cands) - measured} cached",
        timings,
    )
    return 0 if choice >= local_members else choice


def _timing_text(mb: int, seconds: float, local_members: int) -> str:
    """``mb``'s time per member-step, and where its blocks pad the members, the time per real
    member-step that ``pick`` compares."""
    text = f"{mb} {1e6 * seconds:.1f}"
    slots = padded(mb, local_members)
    if slots != local_members:
        text += f" [{1e6 * real_cost(mb, seconds, local_members):.1f} for {slots} slots]"
    return text


def _blocks_text(mb: int, local_members: int) -> str:
    return f"one block of {local_members}" if mb == 0 else f"blocks of {mb} of {local_members}"


__all__ = [
    "CACHE_FILE",
    "ENV",
    "calibrated",
    "candidates",
    "choose_member_block",
    "enabled",
    "machine_key",
    "pick",
    "real_cost",
    "shape_key",
    "time_block",
]
