"""Models as pure functions: MLP, CNN and deep linear networks, norm chosen by name.

CONTRACT (callers rely on these names):

    spec = ModelSpec(kind="mlp", widths=(784, 100, 100, 100, 10), activation="sigmoid",
                     norm="batch", placement="before")
    params, norm_state = init(key, spec, init_scale=1.0)      # init_scale may be traced
    logits, norm_state, aux = apply(params, norm_state, x, spec, mode="train", key=None,
                                    norm_call={}, capture=False)
    # aux: dict; with capture=True it holds "preacts": list of each hidden layer's
    # pre-activation (the input of the nonlinearity), for probes, and "norm_inputs": list of
    # each hidden layer's norm input (for population statistics, bnexp.norms.population).

Layout of the pytrees (plain dicts and lists, so vmap/scan/optax see ordinary leaves):

    params     = {"conv": [{"w", ["b"], "norm"}...], "hidden": [{"w", ["b"], "norm"}...],
                  "out": {"w", "b"}}
    norm_state = {"conv": [state...], "hidden": [state...]}

Hidden layer ``l`` (conv blocks first, then dense layers; ``preacts[l]``) computes, with the
paper's placement "before" (Ioffe & Szegedy 2015, Sec. 3.2: ``z = g(BN(Wu))``, the bias dropped
because BN's shift replaces it), ``h = g(N(W u))``; with placement "after", ``h = N(g(W u + b))``.
With ``norm="none"`` the bias is kept. ``preacts[l]`` is the input of ``g``. The final layer is a
plain dense layer with bias and no norm. A CNN block is conv3x3 (SAME) -> norm -> g -> maxpool 2x2.
``kind="linear"`` is a deep linear network: every ``g`` is the identity.

Randomness: ``key`` is the per-step key (the trainer passes ``fold_in(member_key, step)``); norm
layer ``l`` receives ``fold_in(key, l)`` (only stochastic norms, e.g. "noisy", use it) and dropout
after dense layer ``l`` uses ``fold_in(key, DROPOUT_KEY_OFFSET + l)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp

from bnexp import norms

Array = jax.Array
DROPOUT_KEY_OFFSET = 10_000
ACTIVATIONS = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "identity": lambda z: z,
}
KINDS = ("mlp", "cnn", "linear")
LOSSES = ("xent", "mse")
INITS = ("gaussian", "glorot", "he")


@dataclass(frozen=True)
class ModelSpec:
    """Static description of a model (hashable: it is part of a sweep group's signature)."""

    kind: str = "mlp"  # "mlp" | "cnn" | "linear" (deep linear network, no activation)
    widths: tuple[int, ...] = (784, 100, 100, 100, 10)  # mlp/linear: input, hidden..., output
    channels: tuple[int, ...] = (32, 64)  # cnn: channels of each conv-norm-act-pool block
    dense: tuple[int, ...] = (128,)  # cnn: hidden dense widths after the conv blocks
    input_shape: tuple[int, ...] = (28, 28, 1)  # cnn: H, W, C
    num_classes: int = 10  # cnn only; mlp/linear use widths[-1]
    activation: str = "sigmoid"  # "sigmoid" | "tanh" | "relu" | "identity"
    norm: str = "batch"  # any name in bnexp.norms ("none" = identity)
    norm_options: tuple[tuple[str, Any], ...] = ()  # static factory options, e.g. (("groups", 8),)
    placement: str = "before"  # "before": g(BN(Wu)), bias dropped; "after": BN(g(Wu + b))
    dropout: float = 0.0  # rate, after each hidden dense activation, train mode only
    init: str = "gaussian"  # "gaussian" (std=init_std, the paper's) | "glorot" | "he"
    init_std: float = 0.1
    scale_output_layer: bool = True  # init_scale also multiplies the final layer's weights
    dense_norm: str | None = None  # cnn dense layers' norm; None: norm ("none" for "instance")
    conv_impl: str = "auto"  # "im2col" | "xla" (lax.conv) | "auto": im2col on CPU, else xla
    bias: bool = True  # False: no bias in any layer (Santurkar et al.'s deep linear network)
    loss: str = "xent"  # "xent": softmax cross-entropy on int labels | "mse": ||out - y||^2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.placement not in ("before", "after"):
            raise ValueError(f"placement must be 'before' or 'after', got {self.placement!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.conv_impl not in ("auto", "im2col", "xla"):
            raise ValueError(f"conv_impl must be 'auto', 'im2col' or 'xla', got {self.conv_impl!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.kind != "cnn" and len(self.widths) < 2:
            raise ValueError("widths needs at least an input and an output width")

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.kind == "cnn" else self.widths[-1]

    @property
    def num_hidden(self) -> int:
        """Number of hidden (normalized) layers = len(aux["preacts"])."""
        if self.kind == "cnn":
            return len(self.channels) + len(self.dense)
        return len(self.widths) - 2

    def norm_name(self, conv: bool = False) -> str:
        """Norm of conv layers (conv=True) or dense hidden layers. Instance norm normalizes
        spatial maps only, so a CNN's dense layers default to no norm under it."""
        if conv or self.kind != "cnn":
            return self.norm
        if self.dense_norm is not None:
            return self.dense_norm
        return "none" if self.norm == "instance" else self.norm

    def has_bias(self, conv: bool = False) -> bool:
        """Hidden layers keep a bias unless a norm directly follows the affine map (or the spec
        has no biases at all)."""
        return self.bias and (self.norm_name(conv) == "none" or self.placement == "after")


@cache
def norm_of(spec: ModelSpec, conv: bool = False) -> norms.Norm:
    """The norm layer of the spec's conv (conv=True) or dense hidden layers (built once)."""
    name = spec.norm_name(conv)
    return norms.get(name, **(dict(spec.norm_options) if name == spec.norm else {}))


def _activation(spec: ModelSpec):
    return ACTIVATIONS["identity" if spec.kind == "linear" else spec.activation]


def _std(spec: ModelSpec, fan_in: int, fan_out: int) -> float:
    if spec.init == "gaussian":
        return spec.init_std
    if spec.init == "glorot":
        return (2.0 / (fan_in + fan_out)) ** 0.5
    return (2.0 / fan_in) ** 0.5  # he


def _flat_dim(spec: ModelSpec) -> int:
    h, w, _ = spec.input_shape
    for _c in spec.channels:
        h, w = h // 2, w // 2
    return h * w * spec.channels[-1] if spec.channels else h * w * spec.input_shape[-1]


def _layer_shapes(
    spec: ModelSpec,
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], tuple[int, ...]]:
    """(conv kernel shapes HWIO, hidden dense shapes, output dense shape)."""
    if spec.kind != "cnn":
        dims = list(zip(spec.widths[:-2], spec.widths[1:-1], strict=True))
        return [], dims, (spec.widths[-2], spec.widths[-1])
    cins = (spec.input_shape[-1],) + spec.channels[:-1]
    convs = [(3, 3, ci, co) for ci, co in zip(cins, spec.channels, strict=True)]
    d = (_flat_dim(spec),) + spec.dense
    dense = list(zip(d[:-1], d[1:], strict=True))
    return convs, dense, (d[-1], spec.num_classes)


def _std_of(shape: tuple[int, ...], spec: ModelSpec) -> float:
    receptive = math.prod(shape[:-2])
    return _std(spec, receptive * shape[-2], receptive * shape[-1])


def init(key: Array, spec: ModelSpec, init_scale: Array | float = 1.0) -> tuple[dict, dict]:
    """Initial (params, norm_state). Weights (not biases, not norm parameters) are drawn from the
    spec's scheme and multiplied by ``init_scale`` (traceable, for init-sensitivity sweeps).

    All weights come from ONE standard-normal draw of ``key``, cut into layers in order (conv,
    hidden, out): XLA CPU spends ~0.5 s compiling each separate normal sampler.
    """
    convs, dense, out = _layer_shapes(spec)
    shapes = convs + dense + [out]
    sizes = [math.prod(s) for s in shapes]
    z = jax.random.normal(key, (sum(sizes),), jnp.float32)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    weights = [
        z[a : a + n].reshape(s) * _std_of(s, spec)
        for a, n, s in zip(starts, sizes, shapes, strict=True)
    ]
    params: dict[str, Any] = {"conv": [], "hidden": []}
    state: dict[str, Any] = {"conv": [], "hidden": []}
    for group, group_shapes, first in (("conv", convs, 0), ("hidden", dense, len(convs))):
        norm = norm_of(spec, group == "conv")
        for i, shape in enumerate(group_shapes):
            layer = {"w": weights[first + i] * init_scale}
            if spec.has_bias(group == "conv"):
                layer["b"] = jnp.zeros((shape[-1],), jnp.float32)
            layer["norm"], s = norm.init(shape[-1])
            params[group].append(layer)
            state[group].append(s)
    out_scale = init_scale if spec.scale_output_layer else 1.0
    params["out"] = {"w": weights[-1] * out_scale}
    if spec.bias:
        params["out"]["b"] = jnp.zeros((out[1],), jnp.float32)
    return params, state


def _channels_last(v: Array, ndim: int) -> Array:
    """Reshape a (C,) vector to broadcast against channels-last data without rank promotion."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _block(
    z: Array,
    p: dict,
    s: dict,
    spec: ModelSpec,
    layer: int,
    conv: bool,
    *,
    mode: str,
    key: Array | None,
    norm_call: Mapping[str, Any],
) -> tuple[Array, Array, Array, dict]:
    """Bias, norm and activation of one hidden layer: returns (h, preact, norm input, state)."""
    norm, g = norm_of(spec, conv), _activation(spec)
    if spec.norm_name(conv) != spec.norm:
        norm_call = {}  # the per-call options belong to the spec's main norm
    nkey = jax.random.fold_in(key, layer) if (key is not None and norm.stochastic) else None
    if "b" in p:
        z = z + _channels_last(p["b"], z.ndim)
    if spec.placement == "before":
        y, s = norm.apply(p["norm"], s, z, mode=mode, key=nkey, **norm_call)
        return g(y), y, z, s
    u = g(z)
    h, s = norm.apply(p["norm"], s, u, mode=mode, key=nkey, **norm_call)
    return h, z, u, s


def _dropout(h: Array, spec: ModelSpec, layer: int, mode: str, key: Array | None) -> Array:
    if spec.dropout == 0.0 or mode != "train":
        return h
    if key is None:
        raise ValueError("dropout in train mode needs a key")
    keep = jax.random.bernoulli(
        jax.random.fold_in(key, DROPOUT_KEY_OFFSET + layer), 1.0 - spec.dropout, h.shape
    )
    return jnp.where(keep, h / (1.0 - spec.dropout), 0.0)


def conv_impl(spec: ModelSpec, platform: str | None = None) -> str:
    """The convolution implementation in effect: "auto" is im2col on CPU, lax.conv elsewhere."""
    if spec.conv_impl != "auto":
        return spec.conv_impl
    return "im2col" if (platform or jax.default_backend()) == "cpu" else "xla"


def _conv3x3(h: Array, w: Array, impl: str, dense: Any = None) -> Array:
    """3x3 convolution, stride 1, SAME padding, NHWC x HWIO.

    "im2col" stacks the 9 shifted views and does one matrix product. On XLA CPU, in a training
    scan (conv16-conv32-dense64, batch 64), it ran 62 model-steps/s against lax.conv's 7.8 (a conv
    in a while loop is slow there; 50 unrolled) and 45 vs 2.2 for 8 vmapped members (vmap makes a
    member-batched lax.conv a grouped convolution; im2col becomes a batched matmul). ``dense``:
    the matrix product for im2col (see ``apply``).
    """
    if impl == "auto":
        impl = "im2col" if jax.default_backend() == "cpu" else "xla"
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    n, hh, ww, c = h.shape
    p = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate(
        [p[:, i : i + hh, j : j + ww, :] for i in range(3) for j in range(3)], -1
    )
    # dense (models.dense_wgrad) where its rule moves less: it transposes the patches (9c wide)
    # for the weight gradient, autodiff's rule the output gradient (as wide as the output)
    mm = dense if dense is not None and 9 * c < w.shape[-1] else jnp.matmul
    return mm(cols.reshape((n * hh * ww, 9 * c)), w.reshape((9 * c, -1))).reshape((n, hh, ww, -1))


def _maxpool2(h: Array) -> Array:
    """2x2 max pooling, stride 2 (odd edges dropped). A reshape + max rather than reduce_window:
    reduce_window's gradient (select_and_scatter) made a CNN train step 3x slower on XLA CPU."""
    n, hh, ww, c = h.shape
    h = h[:, : hh // 2 * 2, : ww // 2 * 2]
    return h.reshape((n, hh // 2, 2, ww // 2, 2, c)).max(axis=(2, 4))


@jax.custom_vjp
def dense_wgrad(h: Array, w: Array) -> Array:
    """``h @ w`` whose reverse-mode rule writes the weight gradient as ``h^T g`` in w's own
    (in, out) order; JAX's rule computes ``g^T h`` and transposes it (bnexp.engine stores the
    members' first-layer weights so that only this order avoids a full copy per step). Values are
    those of autodiff; forward-mode differentiation (jvp) is not defined for it."""
    return h @ w


def _dense_fwd(h: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    return h @ w, (h, w)


def _dense_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    h, w = res
    return g @ w.T, jax.lax.dot_general(h, g, (((0,), (0,)), ((), ())))


dense_wgrad.defvjp(_dense_fwd, _dense_bwd)


def apply(
    params: dict,
    norm_state: dict,
    x: Array,
    spec: ModelSpec,
    *,
    mode: str = "train",
    key: Array | None = None,
    norm_call: Mapping[str, Any] | None = None,
    capture: bool = False,
    dense: Any = None,
) -> tuple[Array, dict, dict]:
    """Logits (N, classes), the new norm state and aux (``{"preacts": [...], "norm_inputs":
    [...]}`` if capture; one entry per hidden layer, conv blocks first).
    dense(h, w): the dense layers' matrix product (default ``h @ w``; see ``dense_wgrad``).

    x: (N, D) for mlp/linear; (N, H, W, C) or flat (N, H*W*C) for cnn. mode: "train" | "eval" |
    "batch" (see bnexp.norms). norm_call: per-call options forwarded to every norm layer.
    """
    norm_call = dict(norm_call or {})
    dense = dense or jnp.matmul
    preacts: list[Array] = []
    norm_inputs: list[Array] = []
    new_state: dict[str, Any] = {"conv": [], "hidden": []}
    layer = 0
    h = x
    if spec.kind == "cnn":
        if h.ndim == 2:
            h = h.reshape((h.shape[0],) + tuple(spec.input_shape))
        for p, s in zip(params["conv"], norm_state["conv"], strict=True):
            z = _conv3x3(h, p["w"], spec.conv_impl, dense)
            h, pre, u, s = _block(
                z, p, s, spec, layer, True, mode=mode, key=key, norm_call=norm_call
            )
            h = _maxpool2(h)
            preacts.append(pre)
            norm_inputs.append(u)
            new_state["conv"].append(s)
            layer += 1
        h = h.reshape((h.shape[0], -1))
    for p, s in zip(params["hidden"], norm_state["hidden"], strict=True):
        h, pre, u, s = _block(
            dense(h, p["w"]), p, s, spec, layer, False, mode=mode, key=key, norm_call=norm_call
        )
        h = _dropout(h, spec, layer, mode, key)
        preacts.append(pre)
        norm_inputs.append(u)
        new_state["hidden"].append(s)
        layer += 1
    logits = dense(h, params["out"]["w"])
    if "b" in params["out"]:
        logits = logits + params["out"]["b"][None, :]
    aux = {"preacts": preacts, "norm_inputs": norm_inputs} if capture else {}
    return logits, new_state, aux
