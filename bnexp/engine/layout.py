"""A sweep group's device layout, decided once per group: the layout plan (``Plan``).

Which measured tricks a group's programs use is decided here, in one place, and nowhere else
(bnexp.engine.steps and bnexp.engine.cache read the decisions; run_group makes the plan):

* Unrolled steps (layout_for). Measured on XLA CPU (paper-size CNN conv16-conv32-dense64, batch
  64, one member), a ``lax.conv`` inside a while loop ran 6.5x slower than unrolled (7.8 vs 50
  model-steps/s; 8 vmapped members 2.2 vs 12.0), and partial unrolling (unroll=4) did not help:
  only a program with no loop did. bnexp's CNNs therefore use im2col convolutions on CPU
  (models._conv3x3), which run at full speed in a rolled scan (62 model-steps/s; 8 members 45)
  and compile 5x faster than unrolled code. For lax.conv on CPU (ModelSpec(conv_impl="xla")) the
  engine switches to "unrolled" mode: one block size of min(CNN_MAX_BLOCK, longest chunk) steps
  scanned with ``unroll=True`` (no loop in the program), the host looping over a chunk's blocks;
  in a chunk's last block the steps past its end are computed and masked out (carry kept, loss
  NaN), so still one program. The evaluation then avoids lax.map as well.
* Devices. The member axis is sharded over a 1-D ``Mesh(devices, ("members",))``; the datasets
  and (when every member shares one data seed) the batch indices are replicated, so a shared
  batch enters each device's first layer as one (B, D) x (D, members*width) matrix product.
  Members run in pieces of at most max_members, each padded to a multiple of the device count.
* First-weight layout. Models train with ``models.dense_wgrad``'s weight-gradient rule (``x^T
  g`` in the weight's own layout; JAX's rule computes ``g^T x`` and transposes it), with the
  first dense weight of a shared-batch SGD group stored and updated as one (D, members, H) array
  (FIRST_DENSE_W, group_updates_first_layer).
* XLA options. On CPU dense models compile with DENSE_CPU_OPTIONS: XLA CPU's dots take
  row-major operands only, so every other layout costs a full copy of the weights per step.
* Member blocks. On CPU each device trains its members in blocks sized to the cache
  (member_block; bnexp.engine.steps.blocked_steps: a lax.scan over the device's blocks inside
  jax.shard_map).
* Squeezed single member. A single member (one-trial runs, blocks of one) trains without a
  member axis (bnexp.engine.steps.group_steps).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bnexp import models, train
from bnexp.models import ModelSpec
from bnexp.train import StepConfig

AXIS = "members"
CNN_MAX_BLOCK = 8  # steps per unrolled CNN block: more adds compile time, not speed


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
    one = train.HP(lr=0.0, momentum=0.0, init_scale=1.0, seed=0, norm_call={})
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


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    return Mesh(np.asarray(list(devices or jax.devices())), (AXIS,))


def pieces(n: int, max_members: int, n_devices: int) -> tuple[int, int]:
    """(number of pieces, padded members per piece): equal pieces of at most max_members (rounded
    up to a multiple of the device count) so every piece runs the same compiled program."""
    k = math.ceil(n / max_members)
    size = math.ceil(n / k)
    return k, math.ceil(size / n_devices) * n_devices


@dataclass(frozen=True)
class Plan:
    """How one group's members are laid out on the devices, decided once per group (plan_group)
    before anything compiles; ``line()`` is what ``bnexp run --verbose`` prints per group."""

    members: int  # the group's real members
    pieces: int  # pieces run one after the other (each at most max_members)
    padded_members: int  # members per piece, padding included (whole devices and blocks)
    devices: int  # devices the members are sharded over
    members_per_block: int  # members per block on a device (0: one block, no blocked_steps)
    blocks: int  # blocks per device, one after the other
    squeezed: bool  # the steps program trains one member without a member axis
    first_weight: str  # "(D, members, H)" (updated by the group) | "per member" | "-"
    unrolled: bool  # loop-free blocks of block_steps steps (else one rolled loop per chunk)
    block_steps: int
    xla_options: tuple[tuple[str, str], ...]  # the steps program's XLA options
    note: str = ""  # why the layout departs from the default, if it does

    def line(self) -> str:
        """One line: members and pieces | devices and blocks | squeezed | first-weight layout |
        steps | XLA options."""
        per_device = self.padded_members // self.devices
        if self.members_per_block:
            blocks = f"{self.blocks} blocks of {self.members_per_block}"
        else:
            blocks = "one block"
        steps = f"unrolled, {self.block_steps} per call" if self.unrolled else "rolled loop"
        xla = ", ".join(f"{k}={v}" for k, v in self.xla_options) or "defaults"
        note = f" | {self.note}" if self.note else ""
        return (
            f"members {self.members} in {self.pieces} piece(s) of {self.padded_members} | "
            f"devices {self.devices} ({per_device} each, {blocks}) | "
            f"squeezed {'yes' if self.squeezed else 'no'} | first weight {self.first_weight} | "
            f"steps {steps} | XLA {xla}{note}"
        )


def pool_kernel_norms(spec: ModelSpec) -> list[str]:
    """The model's norms whose CPU kernels share the devices' thread pool (norms.CPU_POOL_KERNELS)."""
    from bnexp import norms

    return sorted({spec.norm_name(True), spec.norm_name(False)} & norms.CPU_POOL_KERNELS)


def _pool_kernel_mesh(spec: ModelSpec, mesh: Mesh, platform: str, dist: bool) -> tuple[Mesh, str]:
    """One CPU device for a model with a norm in norms.CPU_POOL_KERNELS (and the plan's note why);
    in a distributed job, where every process's devices must stay, a usage error instead."""
    pool = pool_kernel_norms(spec) if platform == "cpu" else []
    if not pool or mesh.devices.size == 1:
        return mesh, ""
    if dist:
        from bnexp.errors import UsageError

        raise UsageError(
            f"norm {pool[0]!r} cannot train on several CPU devices per process (its LAPACK "
            "kernel can deadlock XLA's thread pool): set BNEXP_HOST_DEVICES=1"
        )
    note = f"one device: {pool[0]} norm's LAPACK kernel shares the CPU thread pool"
    return make_mesh(list(mesh.devices.flat)[:1]), note


def plan_group(
    cfg: ProgramConfig,
    n_members: int,
    mesh: Mesh,
    *,
    max_members: int = 64,
    members_per_block: int | None = None,
    member_hp: Any = None,
    data: dict | None = None,
    measure: Callable[[int], float] | None = None,
) -> tuple[Plan, Mesh, ProgramConfig]:
    """The group's Plan, its mesh (the first n_members devices when there are fewer members
    than devices: padding would only compete with them for the same cores) and its
    ProgramConfig with member_block set. members_per_block: None for the choice measured on
    this machine (bnexp.calibrate, timing member_hp's program on data; the cache-size model
    member_block where it is off or without them), 0 for no blocks; each device's members are
    padded to whole blocks; ``measure`` replaces the calibration's timing
    (calibrate.choose_member_block). A distributed job keeps every process's devices (a process with
    none in a program could not take part in gathering its results)."""
    from bnexp import distributed

    if n_members < mesh.devices.size and not distributed.active():
        mesh = make_mesh(list(mesh.devices.flat)[:n_members])
    platform = mesh.devices.flat[0].platform
    mesh, note = _pool_kernel_mesh(cfg.step.spec, mesh, platform, distributed.active())
    devices = int(mesh.devices.size)
    n_pieces, size = pieces(n_members, max_members, devices)
    local = size // devices
    if members_per_block is None:
        cores = max(1, (os.cpu_count() or 1) // devices)
        if member_hp is not None and data is not None:
            from bnexp import calibrate  # measured on this machine (issue 22); imports engine

            members_per_block = calibrate.choose_member_block(
                cfg, local, mesh, member_hp, data, cores, measure, cfg.step.total_steps
            )
        else:
            members_per_block = member_block(cfg, local, platform, cores)
    mb = members_per_block if 0 < members_per_block < local else 0
    if mb:  # whole blocks on every device: pad (as for devices) where needed
        size = -(-local // mb) * mb * devices
    cfg = dataclasses.replace(cfg, member_block=mb)
    spec = cfg.step.spec
    if group_updates_first_layer(cfg):
        first = "(D, members, H)"
    else:
        first = "-" if spec.kind == "cnn" or spec.num_hidden == 0 else "per member"
    plan = Plan(
        members=n_members,
        pieces=n_pieces,
        padded_members=size,
        devices=devices,
        members_per_block=mb,
        blocks=size // devices // mb if mb else 1,
        squeezed=(mb or size) == 1,
        first_weight=first,
        unrolled=cfg.unrolled,
        block_steps=cfg.block_steps,
        xla_options=tuple(sorted(compiler_options(spec, platform).items())),
        note=note,
    )
    return plan, mesh, cfg
