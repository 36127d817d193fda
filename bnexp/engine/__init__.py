"""The compiled programs of one sweep group, their device layout, and the loop that drives them.

One group = trials that differ only in numbers. Reading order:

* bnexp.engine.layout: the layout plan (``Plan``, decided once per group by ``plan_group``:
  pieces, devices, member blocks, squeezed single member, first-weight layout, unrolled steps,
  XLA options) and the measurements behind each decision.
* bnexp.engine.steps: the step programs (init, steps, point, point_lite), functions of the
  member axis (``jax.vmap`` of bnexp.train's single-member code).
* bnexp.engine.cache: compiling them (``build``) into the explicit program cache
  (``ProgramCache``; the process-wide one is ``PROGRAMS``, which also counts traces), on
  compile threads beside the host loop (``Deferred`` programs).
* bnexp.engine.loop: the host loop (``run_group``): evaluation points, pieces, chunks; and
  ``prefetch_group``, the next group's programs compiling while one trains.

Every name other code used from the former single module is importable from here
(``from bnexp import engine; engine.run_group(...)``).
"""

from bnexp.engine.cache import PROGRAMS, ProgramCache, Programs, build, compile_with
from bnexp.engine.layout import (
    AXIS,
    BLOCK_BYTES,
    CNN_MAX_BLOCK,
    DENSE_CPU_OPTIONS,
    FIRST_DENSE_W,
    Plan,
    ProgramConfig,
    compiler_options,
    group_updates_first_layer,
    layout_for,
    make_mesh,
    member_axes,
    member_block,
    member_bytes,
    pieces,
    plan_group,
)
from bnexp.engine.loop import GroupRun, chunk_lengths, eval_schedule, prefetch_group, run_group
from bnexp.engine.steps import (
    EVAL_SUBSET,
    EVAL_SUBSET_SEED,
    PROBE_KEY_TAG,
    _group_step,
    blocked_steps,
    eval_subset,
    group_steps,
    member_point,
)

__all__ = [
    "AXIS",
    "BLOCK_BYTES",
    "CNN_MAX_BLOCK",
    "DENSE_CPU_OPTIONS",
    "EVAL_SUBSET",
    "EVAL_SUBSET_SEED",
    "FIRST_DENSE_W",
    "PROBE_KEY_TAG",
    "PROGRAMS",
    "GroupRun",
    "Plan",
    "ProgramCache",
    "ProgramConfig",
    "Programs",
    "_group_step",
    "blocked_steps",
    "build",
    "chunk_lengths",
    "compile_with",
    "compiler_options",
    "eval_schedule",
    "eval_subset",
    "group_steps",
    "group_updates_first_layer",
    "layout_for",
    "make_mesh",
    "member_axes",
    "member_block",
    "member_bytes",
    "member_point",
    "pieces",
    "plan_group",
    "prefetch_group",
    "run_group",
]
