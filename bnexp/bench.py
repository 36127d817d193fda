"""Benchmarks: bnexp's training throughput against the machine's matmul peak, PyTorch eager, and
the ensembles a user would write instead (over 300 lines: one case per function, and the run).

    figures = run(QUICK if quick else FULL, torch=None, progress=print_to_stderr)   # a dict

Cases (every bnexp case runs bnexp's own code; nothing is hand-written for the benchmark):

- ``matmul_*``: float32 (n x n) @ (n x n) through JAX, best call. With several JAX devices
  (``sweep.configure_host_devices``) it also runs as one matmul per device at once; the machine's
  peak is the better of the two layouts.
- ``mlp_bn`` / ``mlp_plain``: the paper's MLP (784-100-100-100-10, sigmoid, BN before each
  sigmoid / no norm, softmax cross-entropy, SGD, batch 60), one model: ``bnexp.train.train_chunk``
  (the divergence-guarded step in one rolled ``lax.scan``), jitted on the default device as the
  engine compiles it (``wgrad_rule`` and ``engine.compiler_options``).
- ``mlp_*_run_sweep`` (full run only): the same models as one-trial ``run_sweep`` calls on one
  device, which is what ``bnexp run`` does with a single trial (a vmapped member axis of size 1).
- ``sweep_<M>``: an lr-sweep-shaped group of M trials (own learning rate each, one seed, so the
  batches are shared) through ``bnexp.sweep.run_sweep`` with the default device layout and
  ``eval_every = steps`` (and no geometric points) over a one-batch test set, so a call is the
  group's compiled training program plus two evaluations (step 0 and the end) costing about a
  step each. The warm-up call compiles (the engine's
  compile time is reported); timed calls reuse the compiled programs.
- ``cnn``: the engine issue's CNN (conv3x3(16)-BN-ReLU-maxpool, conv3x3(32)-BN-ReLU-maxpool,
  dense 64-BN-ReLU, 10) on 28x28x1, batch 64, one model: a one-trial ``run_sweep`` on one device,
  so the engine's own CNN layout (im2col convolutions on CPU) is what is timed.
- ``torch_*``: the same MLPs and CNN in PyTorch eager, written as a user would (``nn.Sequential``,
  ``optim.SGD``, a Python loop over steps), with PyTorch's default threads and with one thread;
  only when PyTorch is importable. Comparisons use PyTorch's faster setting.

- ``jax_vmap_<M>`` / ``torch_ensemble_<M>`` (``peers``): what a user would write instead of the
  largest sweep (bnexp.bench_peers): a plain JAX vmap of an optax step in lax.scan on one device,
  and a PyTorch stacked-weight (bmm) ensemble; ratios ``sweep_vs_jax_vmap`` and
  ``sweep_vs_torch_ensemble``.
- the scaling table (``scaling``; bnexp.bench_scaling): model-steps/s of lr sweeps of 1 to 256
  members on 1 and 2 host devices, a child process per device count, and seconds per
  evaluation point; it runs after the timed cases, not interleaved with them.

Data: random MNIST-shaped examples (bnexp's "synthetic" dataset for run_sweep), batches drawn
from 4096 of them; throughput does not depend on the values.

Timing: every case is compiled and warmed up first; then repetition r of every case runs before
repetition r + 1 of any (round-robin), so load from elsewhere on a shared machine hits all cases
alike and the ratios measured in one run stay comparable; within a repetition the cases run in a
shuffled order (seeded by r), so no case always follows the same neighbour: in a fixed order the
BN MLP, always run right after the two-device matmul, measured 1.26-1.36x slower than the plain
MLP in three full runs, against 1.08-1.19x when the two alternate on their own. A figure is the
median over the repetitions (``time.perf_counter`` around a call that blocks until its results
are ready), with the min and max.

FLOPs (``step_flops``): forward = 2 x multiply-adds of every matmul and convolution (elementwise
work such as BN, activations and the update is not counted); one training step is counted as
3 x forward (forward, plus two matmuls of the same size per layer in the backward pass). This is
the usual convention; it over-counts the first layer, whose input gradient is never computed
(for the paper MLP the executed matmul FLOPs are 2.21x forward, not 3x).
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bnexp.models import ModelSpec

MLP = ModelSpec()  # the paper's 784-100-100-100-10 sigmoid MLP with BN before each sigmoid
# The engine issue's CNN: 2 x (conv3x3-BN-ReLU-maxpool) with 16 and 32
# channels, dense 64-BN-ReLU, 10 outputs, on 28x28x1.
CNN = ModelSpec(kind="cnn", channels=(16, 32), dense=(64,), activation="relu")
MLP_BATCH, CNN_BATCH = 60, 64
DEFAULT_TORCH_THREADS: dict[str, int] = {}  # PyTorch's own default, read before we change it
N_TRAIN = 4096  # random MNIST-shaped training examples the batches are drawn from
TARGETS = {  # ratio -> bound: the speed issue's goals (issue 22; bn_overhead is a maximum)
    "sweep_vs_torch": (">=", 6.0),
    "sweep_vs_torch_ensemble": (">=", 3.0),
    "sweep_vs_jax_vmap": (">=", 1.8),
    "sweep_fraction_of_peak": (">=", 0.7),
    "bn_overhead": ("<=", 1.15),
    "cnn_vs_torch": (">=", 1.5),
}


@dataclass(frozen=True)
class BenchConfig:
    reps: int = 7  # timed repetitions of every case (after one warm-up call)
    matmul_n: int = 2048
    mlp_steps: int = 500  # steps per timed call, single models
    sweep_members: tuple[int, ...] = (16, 64)
    sweep_steps: int = 100  # steps per timed call of a sweep (x members model-steps)
    cnn_steps: int = 48  # a multiple of the engine's CNN block (8 steps)
    torch_mlp_steps: int = 200
    torch_cnn_steps: int = 10
    engine_single: bool = True  # also time the single MLPs as one-trial run_sweep calls
    peers: bool = True  # the JAX vmap and PyTorch ensemble peers of the largest sweep
    scaling_members: tuple[int, ...] = (1, 4, 16, 64, 256)  # the scaling table (bench_scaling)
    scaling_devices: tuple[int, ...] = (1, 2)  # host device counts, a child process each
    scaling_steps: int = 50
    scaling_reps: int = 3


FULL = BenchConfig()
QUICK = BenchConfig(
    reps=3,
    matmul_n=1024,
    mlp_steps=100,
    sweep_members=(8,),
    sweep_steps=20,
    cnn_steps=2,
    torch_mlp_steps=20,
    torch_cnn_steps=2,
    engine_single=False,
    scaling_members=(1, 4),
    scaling_steps=10,
    scaling_reps=1,
)


# ---- FLOP counting ---------------------------------------------------------------------------


def forward_flops(spec: ModelSpec, batch: int) -> int:
    """2 x multiply-adds of the forward matmuls and convolutions (3x3 SAME) of one batch."""
    macs = 0
    if spec.kind == "cnn":
        h, w, c = spec.input_shape
        for out in spec.channels:
            macs += h * w * 9 * c * out
            h, w, c = h // 2, w // 2, out  # maxpool 2x2
        widths = (h * w * c, *spec.dense, spec.num_classes)
    else:
        widths = spec.widths
    macs += sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    return 2 * batch * macs


def step_flops(spec: ModelSpec, batch: int) -> int:
    """FLOPs of one training step, counted as 3 x forward (see the module docstring)."""
    return 3 * forward_flops(spec, batch)


# ---- cases -----------------------------------------------------------------------------------


@dataclass
class Case:
    """A timed piece of work: ``setup()`` compiles and warms up (returns the compile seconds, or
    None when nothing is compiled); each ``call()`` does ``model_steps`` model-steps (``flops``
    floating-point operations) and blocks until done."""

    name: str
    what: str
    setup: Callable[[], float | None]
    call: Callable[[], None]
    model_steps: int
    flops: float
    members: int = 1
    times: list[float] = field(default_factory=list)
    compile_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # extra facts for the summary


def _random_data(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), np.float32), rng.integers(0, 10, n).astype(np.int32)


def _batches(steps: int, batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, N_TRAIN, (steps, batch)).astype(np.int32)


def matmul_cases(n: int) -> list[Case]:
    """One matmul on the default device, and (with several devices) one per device at once."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from bnexp import engine

    cases = []
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    cases.append(_jit_case("matmul_1dev", f"{n}^2 f32 matmul, one device", mm, (a,), 1, 2.0 * n**3))
    cases[-1].info["n"] = n
    d = jax.device_count()
    if d > 1:
        mesh = engine.make_mesh()
        ab = jax.device_put(
            jnp.broadcast_to(a, (d, n, n)), NamedSharding(mesh, PartitionSpec(engine.AXIS))
        )
        bmm = jax.jit(lambda a: jnp.einsum("bij,bjk->bik", a, a))
        cases.append(
            _jit_case(
                f"matmul_{d}dev",
                f"{n}^2 f32 matmul on each of {d} devices",
                bmm,
                (ab,),
                1,
                2.0 * d * n**3,
            )
        )
    return cases


def _jit_case(
    name: str,
    what: str,
    fn: Callable,
    args: tuple,
    model_steps: int,
    flops: float,
    members: int = 1,
    options: dict[str, Any] | None = None,
) -> Case:
    """A jitted function: compiled ahead of time in setup (timed) with XLA ``options``, then
    called on fixed args."""
    import jax

    from bnexp import engine

    compiled: list[Any] = []

    def setup() -> float:
        t = time.perf_counter()
        compiled.append(engine.compile_with(jax.jit(fn).lower(*args), options))
        seconds = time.perf_counter() - t
        call()  # warm-up
        return seconds

    def call() -> None:
        jax.block_until_ready(compiled[0](*args))

    return Case(name, what, setup, call, model_steps, flops, members)


def train_loop_case(name: str, spec: ModelSpec, batch: int, steps: int) -> Case:
    """One model, ``steps`` steps per call of bnexp.train.train_chunk (the guarded train step in
    one rolled lax.scan), jitted on the default device as bnexp.engine compiles it (dense models:
    the weight-gradient rule and the engine's XLA options); every call starts from the same
    state."""
    import jax
    import jax.numpy as jnp

    from bnexp import engine, train

    cfg = train.StepConfig(spec, "sgd", total_steps=10 * steps, wgrad_rule=True)
    x, y = (jnp.asarray(a) for a in _random_data(N_TRAIN, (spec.widths[0],)))
    idx = jnp.asarray(_batches(steps, batch))
    hp = {
        "lr": jnp.float32(0.1),
        "momentum": jnp.float32(0.9),
        "init_scale": jnp.float32(1.0),
        "seed": jnp.int32(0),
        "norm_call": {},
    }
    carry = jax.jit(functools.partial(train.init_carry, cfg))(hp)
    norm = "BN" if spec.norm != "none" else "no norm"
    return _jit_case(
        name,
        f"{spec.kind} {norm}, batch {batch}, one model, train.train_chunk",
        functools.partial(train.train_chunk, cfg),
        (hp, carry, idx, x, y),
        steps,
        steps * step_flops(spec, batch),
        options=engine.compiler_options(spec, jax.devices()[0].platform),
    )


def sweep_case(
    name: str, spec: ModelSpec, batch: int, members: int, steps: int, *, one_device: bool = False
) -> Case:
    """``members`` trials of spec (learning rates 0.01 to 1, one seed: shared batches) through
    bnexp.sweep.run_sweep, ``steps`` steps each with evaluation points at step 0 and the end
    only (on a test set of one batch, so each costs about one step); one_device: a mesh of the first device
    only, else the engine's default device layout."""
    import jax

    from bnexp.sweep import Trial, run_sweep

    if spec.kind == "cnn":
        data = (("n_train", N_TRAIN), ("n_test", batch), ("image_shape", spec.input_shape))
    else:
        data = (("n_train", N_TRAIN), ("n_test", batch), ("dim", spec.widths[0]))
    lrs = np.geomspace(0.01, 1.0, members) if members > 1 else [0.1]
    trials = [
        Trial(
            model=spec,
            dataset="synthetic",
            data_options=data,
            batch_size=batch,
            steps=steps,
            eval_every=steps,
            eval_per_decade=0,  # step 0 and the end only: a call is one steps call
            lr=float(lr),
        )
        for lr in lrs
    ]
    devices = jax.devices()[:1] if one_device else None

    def setup() -> float:
        extra = run_sweep(trials, devices=devices)[0].extra  # compiles and warms up
        keep = ("devices", "shared_batch", "padded_members", "unroll", "unrolled", "block_steps")
        case.info.update({k: extra[k] for k in keep if k in extra})
        return float(extra["compile_seconds"])

    def call() -> None:
        run_sweep(trials, devices=devices)

    norm = "BN" if spec.norm != "none" else "no norm"
    what = (
        f"{spec.kind} {norm}, batch {batch}, "
        + (f"lr sweep of {members} members" if members > 1 else "one model")
        + f", run_sweep on {'1 device' if one_device else 'all devices'}"
    )
    case = Case(
        name, what, setup, call, members * steps, members * steps * step_flops(spec, batch), members
    )
    return case


# ---- PyTorch (optional; imported lazily, never a dependency) ----------------------------------


def torch_version() -> str | None:
    """PyTorch's version when it is importable, else None."""
    try:
        import torch
    except Exception:  # noqa: BLE001 - absent or broken: the comparison is skipped
        return None
    return str(torch.__version__)


def _torch_model(spec: ModelSpec) -> Any:
    """spec as a user would write it in PyTorch: nn.Sequential, BN before each activation."""
    from torch import nn

    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[spec.activation]
    bn = spec.norm != "none"
    layers: list[Any] = []
    if spec.kind == "cnn":
        c, (h, w) = spec.input_shape[-1], spec.input_shape[:2]
        for out in spec.channels:
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=not bn)]
            layers += [nn.BatchNorm2d(out)] if bn else []
            layers += [act(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        layers.append(nn.Flatten())
        widths = (c * h * w, *spec.dense, spec.num_classes)
    else:
        widths = spec.widths
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(a, b, bias=not bn)] + ([nn.BatchNorm1d(b)] if bn else []) + [act()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def torch_case(
    name: str, spec: ModelSpec, batch: int, steps: int, threads: int | None = None
) -> Case:
    """PyTorch eager training of spec, one model, ``steps`` SGD steps per call, with ``threads``
    intra-op threads (None: PyTorch's default, one per core)."""
    import torch
    import torch.nn.functional as F

    threads = threads or DEFAULT_TORCH_THREADS.setdefault("n", torch.get_num_threads())
    dev = torch.device("cuda" if _platform() == "gpu" and torch.cuda.is_available() else "cpu")

    torch.manual_seed(0)
    model = _torch_model(spec).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    shape = (
        (spec.input_shape[-1], *spec.input_shape[:2]) if spec.kind == "cnn" else (spec.widths[0],)
    )
    xs, ys = _random_data(N_TRAIN, shape)
    x, y = torch.from_numpy(xs).to(dev), torch.from_numpy(ys).long().to(dev)
    idx = torch.from_numpy(_batches(steps, batch)).long().to(dev)

    def call() -> None:
        torch.set_num_threads(threads)
        for i in range(steps):
            xb, yb = x[idx[i]], y[idx[i]]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def setup() -> None:
        call()  # warm-up (allocator, kernels); nothing is compiled
        return None

    what = (
        f"PyTorch eager {spec.kind} {'BN' if spec.norm != 'none' else 'no norm'}, batch "
        f"{batch}, "
        + (f"{threads} thread{'s' if threads > 1 else ''}" if dev.type == "cpu" else str(dev))
    )
    return Case(
        name, what, setup, call, steps, steps * step_flops(spec, batch), info={"threads": threads}
    )


def torch_cases(config: BenchConfig) -> list[Case]:
    """The PyTorch cases with its default thread count and, where that is more than one, with
    one thread too: on a loaded machine OpenMP barriers across busy cores can make the default
    several times slower, and the comparison takes PyTorch's better figure."""
    import torch

    default = DEFAULT_TORCH_THREADS.setdefault("n", torch.get_num_threads())
    cases = []
    for suffix, threads in [("", default)] + ([("_1t", 1)] if default > 1 else []):
        cases += [
            torch_case("torch_mlp_bn" + suffix, MLP, MLP_BATCH, config.torch_mlp_steps, threads),
            torch_case(
                "torch_mlp_plain" + suffix,
                ModelSpec(norm="none"),
                MLP_BATCH,
                config.torch_mlp_steps,
                threads,
            ),
            torch_case("torch_cnn" + suffix, CNN, CNN_BATCH, config.torch_cnn_steps, threads),
        ]
    return cases


# ---- the run ---------------------------------------------------------------------------------


def _summary(case: Case, peak_flops: float | None) -> dict[str, Any]:
    rates = [case.model_steps / t for t in case.times]
    med = statistics.median(rates)
    flops = statistics.median([case.flops / t for t in case.times])
    out = {
        "what": case.what,
        "members": case.members,
        "model_steps_per_call": case.model_steps,
        "steps_per_s": med,
        "steps_per_s_min": min(rates),
        "steps_per_s_max": max(rates),
        "spread": (max(rates) - min(rates)) / med,
        "seconds_per_call": statistics.median(case.times),
        "gflops": flops / 1e9,
        "compile_s": case.compile_s,
        "reps": len(case.times),
    }
    if peak_flops:
        out["fraction_of_peak"] = flops / peak_flops
    return out | case.info


def machine_info() -> dict[str, Any]:
    import jax
    import jaxlib

    dev = jax.devices()
    return {
        "platform": dev[0].platform,
        "device_kind": dev[0].device_kind,
        "devices": len(dev),
        "cpu_count": os.cpu_count(),
        "processor": _cpu_name(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "torch": torch_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _platform() -> str:
    import jax

    return jax.devices()[0].platform


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run(
    config: BenchConfig = FULL,
    *,
    torch: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every case (module docstring) and return the figures as one JSON-ready dict.

    torch: include the PyTorch cases (None: when PyTorch is importable; True when it is not
    raises RuntimeError). progress(message) is called before each phase. Prints nothing.
    """
    say = progress or (lambda _m: None)
    have_torch = torch_version() is not None
    if torch and not have_torch:
        raise RuntimeError(
            "PyTorch is not importable (pip install torch==2.13.0 for the "
            "comparison, or pass --no-torch)"
        )
    use_torch = have_torch if torch is None else torch
    load_before = os.getloadavg()
    # 2048^2 saturates a CPU; an accelerator needs a larger matmul to reach its peak
    cases = matmul_cases(config.matmul_n if _platform() == "cpu" else max(config.matmul_n, 8192))
    plain = ModelSpec(norm="none")
    single = functools.partial(sweep_case, members=1, one_device=True)
    cases += [
        train_loop_case("mlp_bn", MLP, MLP_BATCH, config.mlp_steps),
        train_loop_case("mlp_plain", plain, MLP_BATCH, config.mlp_steps),
    ]
    if config.engine_single:  # the same models as one-trial sweeps (what `bnexp run` does)
        cases += [
            single("mlp_bn_run_sweep", MLP, MLP_BATCH, steps=config.mlp_steps),
            single("mlp_plain_run_sweep", plain, MLP_BATCH, steps=config.mlp_steps),
        ]
    cases += [
        sweep_case(f"sweep_{m}", MLP, MLP_BATCH, m, config.sweep_steps)
        for m in config.sweep_members
    ]
    cases.append(single("cnn", CNN, CNN_BATCH, steps=config.cnn_steps))
    cases += peer_cases(config, use_torch)
    if use_torch:
        cases += torch_cases(config)
    for c in cases:
        say(f"compiling and warming up {c.name} ({c.what})")
        c.compile_s = c.setup()
    for r in range(config.reps):
        say(f"repetition {r + 1}/{config.reps}")
        for c in np.random.default_rng(r).permutation(np.array(cases, dtype=object)):
            t = time.perf_counter()
            c.call()
            c.times.append(time.perf_counter() - t)
    scaling = None
    if config.scaling_members and config.scaling_devices:
        from bnexp import bench_scaling

        say(
            f"scaling table: {', '.join(map(str, config.scaling_members))} members on "
            f"{' and '.join(map(str, config.scaling_devices))} host device(s), a child process each"
        )
        scaling = bench_scaling.scaling(
            config.scaling_members,
            config.scaling_devices,
            config.scaling_steps,
            config.scaling_reps,
        )
    return summarize(cases, config, load_before, scaling)


def peer_cases(config: BenchConfig, use_torch: bool) -> list[Case]:
    """What a user would write instead of the largest sweep (bnexp.bench_peers): the plain JAX
    vmap + scan + optax loop, and the PyTorch stacked-weight ensemble where PyTorch is used."""
    if not config.peers:
        return []
    from bnexp import bench_peers

    m = max(config.sweep_members)
    cases = [bench_peers.jax_vmap_case(m, config.sweep_steps)]
    if use_torch:
        import torch

        default = DEFAULT_TORCH_THREADS.setdefault("n", torch.get_num_threads())
        cases += bench_peers.torch_ensemble_cases(m, config.sweep_steps, default)
    return cases


def summarize(
    cases: Sequence[Case],
    config: BenchConfig,
    load_before: tuple[float, ...] = (),
    scaling: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The figures of measured cases: per-case summaries, the peak, ratios and targets (and the
    scaling table's rows, as bench_scaling.scaling returns them)."""
    by = {c.name: c for c in cases}
    peaks = {
        name: max(c.flops / t for t in c.times)
        for name, c in by.items()
        if name.startswith("matmul")
    }
    peak = max(peaks.values())
    summaries = {c.name: _summary(c, peak) for c in cases if not c.name.startswith("matmul")}
    rate = {name: s["steps_per_s"] for name, s in summaries.items()}
    reference = {}  # PyTorch's better thread setting per model: the figure we compare against
    sweep = f"sweep_{max(config.sweep_members)}"
    ensemble = f"torch_ensemble_{max(config.sweep_members)}"
    for base in ("torch_mlp_bn", "torch_mlp_plain", "torch_cnn", ensemble):
        found = [n for n in (base, base + "_1t") if n in rate]
        reference[base] = max(found, key=rate.__getitem__) if found else None
        rate[base] = rate[reference[base]] if found else None
    ratios = {
        "bn_overhead": _ratio(rate["mlp_plain"], rate["mlp_bn"]),
        "sweep_fraction_of_peak": summaries[sweep]["fraction_of_peak"],
        "mlp_fraction_of_peak": summaries["mlp_bn"]["fraction_of_peak"],
        "sweep_vs_single": _ratio(rate[sweep], rate["mlp_bn"]),
        "bn_overhead_run_sweep": _ratio(
            rate.get("mlp_plain_run_sweep"), rate.get("mlp_bn_run_sweep")
        ),
        "sweep_vs_torch": _ratio(rate[sweep], rate.get("torch_mlp_bn")),
        "sweep_vs_jax_vmap": _ratio(rate[sweep], rate.get(f"jax_vmap_{max(config.sweep_members)}")),
        "sweep_vs_torch_ensemble": _ratio(rate[sweep], rate.get(ensemble)),
        "mlp_vs_torch": _ratio(rate["mlp_bn"], rate.get("torch_mlp_bn")),
        "cnn_vs_torch": _ratio(rate["cnn"], rate.get("torch_cnn")),
        "torch_bn_overhead": _ratio(rate.get("torch_mlp_plain"), rate.get("torch_mlp_bn")),
    }
    targets = {}
    for name, (op, bound) in TARGETS.items():
        v = ratios[name]
        met = None if v is None else (v >= bound if op == ">=" else v <= bound)
        targets[name] = {"target": f"{op} {bound:g}", "value": v, "met": met}
    return {
        "machine": machine_info()
        | {"load_average_before": list(load_before), "load_average_after": list(os.getloadavg())},
        "config": asdict(config),
        "matmul": {
            "n": by[next(iter(peaks))].info.get("n", config.matmul_n),
            "peak_gflops": peak / 1e9,
            "layouts_gflops": {k: v / 1e9 for k, v in peaks.items()},
            "compile_s": max(by[k].compile_s or 0.0 for k in peaks),
        },
        "flops_per_step": {
            "mlp": step_flops(MLP, MLP_BATCH),
            "cnn": step_flops(CNN, CNN_BATCH),
            "counting": "3 x forward matmul/conv FLOPs (2 per multiply-add)",
        },
        "sweep_case": sweep,
        "torch_reference": reference,
        "cases": summaries,
        "ratios": ratios,
        "targets": targets,
        "scaling": scaling,
    }


__all__ = [
    "CNN",
    "FULL",
    "MLP",
    "QUICK",
    "TARGETS",
    "BenchConfig",
    "Case",
    "forward_flops",
    "machine_info",
    "run",
    "step_flops",
    "summarize",
    "torch_version",
]
