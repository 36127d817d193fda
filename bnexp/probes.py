"""Probes: extra measurements taken at every evaluation point, inside the compiled program.

REGISTRY INTERFACE. ``PROBES[name]`` is a factory; ``PROBES[name](**options)`` (``get``) is a
function called once per member (inside ``jax.vmap``, inside ``jit``) at each evaluation point:

    probe(spec, params, norm_state, batch, hp, loss_fn) -> dict[str, Array]

    spec       ModelSpec (static)
    params     the member's current parameters; norm_state its current running statistics
    batch      (x, y): a fixed probe batch from the training set (same examples at every point,
               for every member; Trial.probe_batch_size of them)
    hp         the member's numbers (a bnexp.train.ProbeHP, read by name: hp["lr"]): "lr",
               "momentum", "init_scale", "seed", "step" (updates done),
               "norm_call" (this step's per-call norm options, renorm schedule included),
               "key" (a PRNG key for the probe, distinct from every training key),
               "batch_size" (the trial's training batch size, a static int) and "test"
               ((x, y): the test rows the point evaluates, engine.eval_subset before the last
               point and the whole test set at it, for probes of inference)
    loss_fn    loss_fn(params, norm_state, x, y, *, mode="train", key=None, norm_call=None)
               -> (mean cross-entropy, (new_norm_state, logits)); differentiable in params;
               key defaults to hp["key"] and norm_call to hp["norm_call"]

It returns fixed-shape arrays; each output key becomes a history key with a leading axis of
evaluation points (keys must be unique across the probes of a trial). Probes must not print or
change the training state; they see the model after the point's training steps.

Built in: "train_eval_gap" (accuracy on the probe batch in train mode, in batches of the
trial's batch size, and in eval mode; the train/eval gap of SCIENCE.md measured on training
data), "percentiles" (Ioffe & Szegedy 2015, Fig. 1b,c) and "preact_stats", both of the input of
one nonlinearity (``PERCENTILE_UNIT`` of hidden layer ``PERCENTILE_LAYER``: unit 0 of the last hidden
layer) over the probe batch in eval mode (running statistics); "unit_percentiles", the same
percentiles of every unit of that layer, (units, 3) per point (a drift measured on one unit of one
seed is one sample; unit 0 is a different unit in every seed); plus "_train" variants in train mode
(batch statistics and, for noisy BN, the noise; the running statistics are not updated).
"weight_norms" is the Frobenius norm ||W_l||_F of every hidden layer's weight (conv blocks first),
shape (num_hidden,): under BN the init scale a multiplies it and the effective step on the
normalized weights is lr / ||W||^2 (Ioffe & Szegedy Sec. 3.3). "saturation" is, per hidden layer,
the fraction of the layer's units over the probe batch (eval mode) whose nonlinearity has
derivative g'(z) < ``SATURATION_SLOPE`` (for the sigmoid, s(1 - s) = 1 / (4 cosh^2(z / 2)) < 0.01,
i.e. |z| > 2 arccosh(5) = 4.585): units that pass almost no gradient back.
"train_sample_eval" (eval-mode loss and accuracy on the probe batch) and "bn_var_ratio" (the
dropout/BN variance shift of Li et al. 2019) are in bnexp.regularization_probes. "grad_norms" is
||dL/dW_l||_F of every weight layer (conv blocks, hidden layers, output layer, in forward order),
shape (num_hidden + 1,): the gradient of the mean cross-entropy on the probe batch in train mode
(batch statistics of the whole probe batch), as the first SGD step would see it at step 0 (Yang
et al. 2019 measure gradient explosion at initialization this way, per layer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bnexp import inference_probes, models, regularization_probes, santurkar_probes
from bnexp.models import ModelSpec

Array = jax.Array
ProbeFn = Callable[[ModelSpec, Any, Any, tuple[Array, Array], Mapping[str, Any], Callable], dict]
PERCENTILE_LAYER = -1  # index into the hidden layers: -1 = last hidden layer
PERCENTILE_UNIT = 0  # unit (channel for conv layers) whose input is measured
PERCENTILE_QS = (15.0, 50.0, 85.0)
SATURATION_SLOPE = 0.01  # a unit is saturated where g'(z) < this (sigmoid: |z| > 4.585)


def layer_preacts(
    spec: ModelSpec,
    params: Any,
    norm_state: Any,
    x: Array,
    hp: Mapping[str, Any],
    *,
    layer: int = PERCENTILE_LAYER,
    mode: str = "eval",
) -> Array:
    """Inputs of the nonlinearities of one hidden layer, (N, units) or (N*H*W, channels)."""
    key = hp["key"] if mode == "train" else None
    _, _, aux = models.apply(
        params, norm_state, x, spec, mode=mode, key=key, norm_call=hp["norm_call"], capture=True
    )
    z = aux["preacts"][layer]
    return z.reshape(-1, z.shape[-1])


def unit_preacts(
    spec: ModelSpec,
    params: Any,
    norm_state: Any,
    x: Array,
    hp: Mapping[str, Any],
    *,
    layer: int = PERCENTILE_LAYER,
    unit: int = PERCENTILE_UNIT,
    mode: str = "eval",
) -> Array:
    """Inputs of the nonlinearity of one unit over the batch, flattened: (N,) or (N*H*W,)."""
    return layer_preacts(spec, params, norm_state, x, hp, layer=layer, mode=mode)[:, unit]


def percentiles_probe(
    *,
    layer: int = PERCENTILE_LAYER,
    unit: int = PERCENTILE_UNIT,
    qs: tuple[float, ...] = PERCENTILE_QS,
    mode: str = "eval",
    name: str = "percentiles",
) -> ProbeFn:
    """{name: (len(qs),)} percentiles of one unit's pre-activation over the probe batch."""

    def probe(spec, params, norm_state, batch, hp, loss_fn):
        z = unit_preacts(spec, params, norm_state, batch[0], hp, layer=layer, unit=unit, mode=mode)
        return {name: jnp.percentile(z, jnp.asarray(qs, jnp.float32))}

    return probe


def columns_percentiles(z: Array, qs: tuple[float, ...] = PERCENTILE_QS) -> Array:
    """(units, len(qs)) percentiles of each column of z (N, units), as np.percentile's default
    ("linear": pos = (N - 1) q / 100 between the order statistics floor(pos), floor(pos) + 1).

    XLA's CPU float sort (a total-order comparator) is ~4x slower than its int32 sort, so the
    values are sorted as order-preserving int32 keys (the sign-magnitude bits with the magnitude
    flipped for negatives: exact, a bijection) and mapped back. A column with a non-finite value
    (a diverged member) gives NaN."""
    zf = z.astype(jnp.float32).T  # (units, N): sort along the minor axis
    bits = jax.lax.bitcast_convert_type(zf, jnp.int32)
    flip = jnp.int32(0x7FFFFFFF)
    keys = jnp.sort(jnp.where(bits < 0, bits ^ flip, bits), axis=-1)
    srt = jax.lax.bitcast_convert_type(jnp.where(keys < 0, keys ^ flip, keys), jnp.float32)
    n = zf.shape[-1]
    pos = (n - 1) * np.asarray(qs, np.float64) / 100.0
    lo = np.floor(pos).astype(np.int32)
    hi = np.minimum(lo + 1, n - 1)
    w = jnp.asarray(pos - lo, jnp.float32)[None, :]
    out = srt[:, lo] + w * (srt[:, hi] - srt[:, lo])
    return jnp.where(jnp.isfinite(zf).all(axis=-1, keepdims=True), out, jnp.nan)


def unit_percentiles_probe(
    *,
    layer: int = PERCENTILE_LAYER,
    qs: tuple[float, ...] = PERCENTILE_QS,
    mode: str = "eval",
    name: str = "unit_percentiles",
) -> ProbeFn:
    """{name: (units, len(qs))} percentiles of every unit's pre-activation over the probe batch
    (one sort of the (N, units) block; the history holds E x units x 3 numbers)."""

    def probe(spec, params, norm_state, batch, hp, loss_fn):
        z = layer_preacts(spec, params, norm_state, batch[0], hp, layer=layer, mode=mode)
        return {name: columns_percentiles(z, qs)}

    return probe


def preact_stats_probe(
    *,
    layer: int = PERCENTILE_LAYER,
    unit: int = PERCENTILE_UNIT,
    mode: str = "eval",
    suffix: str = "",
) -> ProbeFn:
    """{"preact_mean", "preact_std"} of the same unit's pre-activation (for drift measures)."""

    def probe(spec, params, norm_state, batch, hp, loss_fn):
        z = unit_preacts(spec, params, norm_state, batch[0], hp, layer=layer, unit=unit, mode=mode)
        return {"preact_mean" + suffix: z.mean(), "preact_std" + suffix: z.std()}

    return probe


def weight_norms_probe(spec, params, norm_state, batch, hp, loss_fn) -> dict[str, Array]:
    """{"weight_norms": (num_hidden,)} ||W_l||_F of each hidden layer (conv blocks first)."""
    ws = [p["w"] for p in (*params["conv"], *params["hidden"])]
    return {"weight_norms": jnp.stack([jnp.sqrt(jnp.sum(jnp.square(w))) for w in ws])}


def saturation_probe(*, slope: float = SATURATION_SLOPE, mode: str = "eval") -> ProbeFn:
    """{"saturation": (num_hidden,)} per hidden layer, the fraction of its pre-activations over the
    probe batch where the nonlinearity's derivative is below ``slope`` (a linear net: none)."""

    def probe(spec, params, norm_state, batch, hp, loss_fn):
        key = hp["key"] if mode == "train" else None
        _, _, aux = models.apply(
            params,
            norm_state,
            batch[0],
            spec,
            mode=mode,
            key=key,
            norm_call=hp["norm_call"],
            capture=True,
        )
        act = models.ACTIVATIONS["identity" if spec.kind == "linear" else spec.activation]
        fracs = []
        for z in aux["preacts"]:
            _, dz = jax.jvp(act, (z,), (jnp.ones_like(z),))  # g'(z) elementwise
            fracs.append(jnp.mean((dz < slope).astype(jnp.float32)))
        return {"saturation": jnp.stack(fracs)}

    return probe


def grad_norms_probe(spec, params, norm_state, batch, hp, loss_fn) -> dict[str, Array]:
    """{"grad_norms": (L,)} ||dL/dW_l||_F of every weight layer in forward order (conv, hidden,
    output), L the mean loss on the probe batch in train mode; the running statistics the loss
    returns are dropped, so the state is untouched."""
    x, y = batch
    g = jax.grad(lambda p: loss_fn(p, norm_state, x, y, mode="train")[0])(params)
    ws = [layer["w"] for layer in (*g["conv"], *g["hidden"], g["out"])]
    return {"grad_norms": jnp.stack([jnp.sqrt(jnp.sum(jnp.square(w))) for w in ws])}


def train_eval_gap_probe(spec, params, norm_state, batch, hp, loss_fn):
    """{"train_acc_batch", "train_acc_eval"}: accuracy on the fixed probe batch of training images
    in train mode and in eval mode, on the same images.

    Train mode is the function training computes: the probe batch split into batches of the
    trial's batch size B (the first nb * B images, nb = N // B; a partial batch is dropped, its
    statistics would differ), each normalized with its own statistics (and, for batch renorm,
    this step's r/d correction; noise for noisy BN from the probe key); the running statistics
    are not updated. Eval mode: running statistics, image by image, on the same nb * B images.
    Their difference is the train/eval gap (Ioffe 2017 Sec. 1: at small minibatches the
    activations of training and of inference differ). On training data, so that the gap is not
    a generalization gap, and in batches drawn like training batches (the probe rows are a
    seeded random sample), so that batch statistics mean what they meant in training."""
    x, y = batch
    b = int(hp["batch_size"])
    nb = x.shape[0] // b
    if nb == 0:
        nan = jnp.full((), jnp.nan, jnp.float32)
        return {"train_acc_batch": nan, "train_acc_eval": nan}
    x, y = x[: nb * b], y[: nb * b]
    xs, ys = x.reshape((nb, b) + x.shape[1:]), y.reshape((nb, b))

    def correct(logits, labels):
        return (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean()

    def train_mode(xb, yb):
        _, (_, logits) = loss_fn(params, norm_state, xb, yb, mode="train")
        return correct(logits, yb)

    _, (_, logits) = loss_fn(params, norm_state, x, y, mode="eval")
    return {
        "train_acc_batch": jax.vmap(train_mode)(xs, ys).mean(),
        "train_acc_eval": correct(logits, y),
    }


# The registry: name -> factory(**options) -> ProbeFn, one explicit dict (as bnexp.norms keeps its
# factories). A trial names its probes (Trial.probes) and carries their options like norm_options
# (Trial.probe_options: (name, ((key, value), ...)) pairs); the factory is called with them when
# the program is traced. Nothing registers at run time.
PROBES: dict[str, Callable[..., ProbeFn]] = {
    "train_eval_gap": lambda: train_eval_gap_probe,
    "percentiles": percentiles_probe,
    "percentiles_train": functools.partial(
        percentiles_probe, mode="train", name="percentiles_train"
    ),
    "unit_percentiles": unit_percentiles_probe,
    "unit_percentiles_train": functools.partial(
        unit_percentiles_probe, mode="train", name="unit_percentiles_train"
    ),
    "preact_stats": preact_stats_probe,
    "preact_stats_train": functools.partial(preact_stats_probe, mode="train", suffix="_train"),
    "weight_norms": lambda: weight_norms_probe,
    "saturation": saturation_probe,
    "grad_norms": lambda: grad_norms_probe,
    # Santurkar et al. 2018 (bnexp.santurkar_probes)
    "ics": santurkar_probes.ics_probe,
    "landscape": santurkar_probes.landscape_probe,  # options lo, hi, num (the step-size grid)
    "scale_invariance": santurkar_probes.scale_invariance_probe,  # option scales
    # overfitting and the dropout/BN variance shift (bnexp.regularization_probes)
    "train_sample_eval": lambda: regularization_probes.train_sample_eval_probe,
    "bn_var_ratio": lambda: regularization_probes.bn_var_ratio_probe,
    # inference with the wrong statistics (bnexp.inference_probes; they read hp["test"])
    "eval_mode": inference_probes.eval_mode_probe,  # option sizes (test batch sizes)
    "precise_bn": inference_probes.precise_bn_probe,  # option batches (N training batches)
}

ProbeSpec = tuple[str, tuple[tuple[str, Any], ...]]  # (name, options): static, hashable

# Probes that read hp["test"], the point's own test rows: the engine computes them inside each
# point's program. A group whose probes are all outside this set computes them in ONE program
# shared by its full and lite points (bnexp.engine.cache), which compiles them once.
READS_TEST = {"eval_mode", "precise_bn"}


def reads_test(probe_specs: tuple[ProbeSpec, ...]) -> bool:
    """Whether any of these probes reads the point's test rows (READS_TEST)."""
    return any(name in READS_TEST for name, _ in probe_specs)


def register(
    name: str, factory: Callable[..., ProbeFn], *, reads_test: bool = True
) -> Callable[..., ProbeFn]:
    """Add a probe factory to the registry (for code outside bnexp, at import time); a duplicate
    name is an error. reads_test=False declares that the probe never reads hp["test"] (its
    outputs then do not depend on the point), so it may run in the points' shared program."""
    if name in PROBES:
        raise ValueError(f"probe {name!r} is already registered")
    PROBES[name] = factory
    if reads_test:
        READS_TEST.add(name)
    return factory


def specs(
    names: tuple[str, ...], options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
) -> tuple[ProbeSpec, ...]:
    """(name, options) for each probe of a trial; options of a probe the trial does not use, or
    given twice, are errors."""
    opts = dict(options)
    if len(opts) != len(options) or set(opts) - set(names):
        raise ValueError(f"probe_options {options} must name each probe of {names} at most once")
    return tuple((n, tuple(opts.get(n, ()))) for n in names)


def get(name: str, options: tuple[tuple[str, Any], ...] = ()) -> ProbeFn:
    """The probe function ``name`` with ``options`` (a bad option raises here, before tracing)."""
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; choose from {sorted(PROBES)}")
    try:
        return PROBES[name](**dict(options))
    except TypeError as e:
        raise ValueError(f"probe {name!r}: bad options {dict(options)} ({e})") from None


def check(names: tuple[str, ...], options: tuple = ()) -> None:
    """Every probe known and its options accepted (called before anything trains)."""
    for name, opts in specs(names, options):
        get(name, opts)


def run(
    probe_specs: tuple[ProbeSpec, ...],
    spec: ModelSpec,
    params: Any,
    norm_state: Any,
    batch: tuple[Array, Array],
    hp: Mapping[str, Any],
    loss_fn: Callable,
) -> dict[str, Array]:
    """All requested probes' outputs merged into one dict (an output key clash is an error)."""
    out: dict[str, Array] = {}
    for name, opts in probe_specs:
        result = get(name, opts)(spec, params, norm_state, batch, hp, loss_fn)
        clash = set(result) & (
            set(out)
            | {"step", "train_loss", "test_acc", "test_loss", "test_acc_batch", "diverged_at"}
        )
        if clash:
            raise ValueError(f"probe {name!r} output keys {sorted(clash)} clash with other keys")
        out.update(result)
    return out
