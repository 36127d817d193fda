"""Shared pieces of every norm: the Norm record, input checks, exact moments, running averages."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bnexp.errors import NormOptionError

Array = jax.Array
Params = dict[str, Array]
State = dict[str, Array]
MODES = ("train", "eval", "batch")
AxisName = Hashable | None
AxisGroups = Sequence[Sequence[int]] | None


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


UNSET: Any = _Unset()  # "argument not given", so explicit arguments can be checked for conflicts


@dataclass(frozen=True)
class Norm:
    """A normalization layer as a pair of pure functions, optax style.

    ``options`` holds the resolved factory options (e.g. the update rate after the momentum
    convention is applied); ``call_options`` names the per-call numbers ``apply`` accepts.
    """

    name: str
    init: Callable[[int], tuple[Params, State]]
    apply: Callable[..., tuple[Array, State]]
    stochastic: bool = False
    has_state: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    call_options: tuple[str, ...] = ()


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise NormOptionError(f"mode must be one of {MODES}, got {mode!r}")


def check_input(x: Array, name: str, min_ndim: int = 2) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: input must be floating point, got {x.dtype}")
    if x.ndim < min_ndim:
        raise NormOptionError(
            f"{name}: input must have at least {min_ndim} axes (channels last: (N, C) or "
            f"(N, H, W, C)), got shape {x.shape}"
        )


def compute_dtype(x: Array) -> Any:
    """float32 for half/bfloat16/float32 inputs (statistics never in low precision)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def per_channel(v: Array, ndim: int) -> Array:
    """(C,) -> (1, ..., 1, C) so it broadcasts against a rank-`ndim` input without rank promotion."""
    return v.reshape((1,) * (ndim - 1) + v.shape[-1:])


def affine_init(num_features: int) -> Params:
    return {
        "scale": jnp.ones((num_features,), jnp.float32),
        "bias": jnp.zeros((num_features,), jnp.float32),
    }


def running_init(num_features: int) -> State:
    """mean 0, var 1: evaluating before any training step is the identity up to eps."""
    return {
        "mean": jnp.zeros((num_features,), jnp.float32),
        "var": jnp.ones((num_features,), jnp.float32),
        "count": jnp.zeros((), jnp.float32),
    }


def affine(params: Params, xhat: Array) -> Array:
    return xhat * per_channel(params["scale"], xhat.ndim) + per_channel(params["bias"], xhat.ndim)


def prepare_mask(mask: Array | None, x: Array) -> Array | None:
    """Validity mask of shape x.shape[:-1] or a prefix such as (N,) -> bool, shape (..., 1)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    lead = x.shape[:-1]
    if mask.ndim > len(lead) or mask.shape != lead[: mask.ndim]:
        raise NormOptionError(f"mask shape {mask.shape} must be a prefix of x.shape[:-1] = {lead}")
    mask = mask.astype(bool).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.broadcast_to(mask, lead + (1,))


class Moments(NamedTuple):
    """Statistics over the reduced axes (kept as size-1 dims): mean = shift + delta.

    The mean is kept in two parts because in float32 shift + delta rounds to the input's ulp
    (1e-3 at an offset of 1e4): centering as (x - shift) - delta is exact to float32 relative
    precision of the *deviations* instead."""

    shift: Array  # a constant close to the mean (no gradient)
    delta: Array  # mean - shift, small
    var: Array  # biased variance (1/n)
    count: Array  # n, elements per channel (scalar without a mask)

    @property
    def mean(self) -> Array:
        return self.shift + self.delta

    def center(self, xf: Array) -> Array:
        return (xf - self.shift) - self.delta


def moments(
    xf: Array,
    axes: tuple[int, ...],
    mask: Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisGroups = None,
) -> Moments:
    """Mean, biased variance and element count over `axes`, exact across a named axis.

    Corrected two-pass algorithm (Chan, Golub & LeVeque 1983): a first pass gives a shift c (the
    mean up to rounding); the second sums d = x - c and d^2, so
        mean = c + S1/n,    var = (S2 - S1^2/n) / n,
    with S1 ~ rounding error. Never E[x^2] - E[x]^2. With `axis_name`, the sums and counts
    (not per-device means) are psum'd, so the result equals the statistics of the concatenated
    batch whatever each device's count; `mask` marks valid elements (padding is excluded).
    The shift is a constant of the formulas, so it carries no gradient.
    """

    def total(v):
        if axis_name is None:
            return v
        return jax.lax.psum(v, axis_name, axis_index_groups=axis_index_groups)

    if mask is None:  # a trace-time constant
        n = jnp.asarray(static_count(xf, axes, None, axis_name, axis_index_groups), xf.dtype)
        valid = xf
    else:
        n = total(jnp.sum(mask, axes, dtype=xf.dtype, keepdims=True))
        valid = jnp.where(mask, xf, 0)
    shift = jax.lax.stop_gradient(total(jnp.sum(valid, axes, keepdims=True)) / n)
    d = xf - shift if mask is None else jnp.where(mask, xf - shift, 0)
    s1, s2 = total((jnp.sum(d, axes, keepdims=True), jnp.sum(d * d, axes, keepdims=True)))
    var = jnp.maximum((s2 - s1 * s1 / n) / n, 0)
    return Moments(shift, s1 / n, var, n)


def static_count(
    x: Array,
    axes: tuple[int, ...],
    mask: Array | None,
    axis_name: AxisName,
    axis_index_groups: AxisGroups,
) -> int | None:
    """Elements per channel when known at trace time (no mask), else None."""
    if mask is not None:
        return None
    n = math.prod(x.shape[a] for a in axes)
    if axis_name is not None:
        n *= len(axis_index_groups[0]) if axis_index_groups else jax.lax.axis_size(axis_name)
    return n


def check_train_count(n: int | None, name: str) -> None:
    if n is not None and n < 2:
        raise NormOptionError(
            f"{name}: a training batch needs more than one value per channel to estimate a "
            f"variance (got {n}); use a larger batch or mode='eval'"
        )


def resolve_rate(
    momentum: Any, convention: str | None, decay: float | None
) -> tuple[float | None, str]:
    """One update rule, three spellings. Returns (rate, convention used).

    rate is the weight of the new batch statistic, PyTorch's ``momentum``:
        running <- (1 - rate) * running + rate * batch_stat,
    or None for PyTorch's cumulative average (rate = 1 / number of updates so far).
    - convention="torch" (default): momentum=0.1 is the rate; momentum=None: cumulative average.
    - convention="flax": momentum=0.99 is the decay (Flax/Keras/Equinox), rate = 1 - momentum.
    - decay=0.9: explicit, convention-free; cannot be combined with momentum= or convention=.
    """
    if decay is not None:
        if momentum is not UNSET:
            raise NormOptionError("pass either momentum= or decay=, not both")
        if convention is not None:
            raise NormOptionError("decay= is convention-free; do not combine it with convention=")
        if not 0.0 <= decay <= 1.0:
            raise NormOptionError(f"decay must be in [0, 1], got {decay}")
        return 1.0 - decay, "decay"
    conv = "torch" if convention is None else convention
    if conv == "torch":
        m = 0.1 if momentum is UNSET else momentum
        if m is None:
            return None, conv
    elif conv == "flax":
        m = 0.99 if momentum is UNSET else momentum
        if m is None:
            raise NormOptionError(
                "the flax convention has no cumulative average; use "
                "convention='torch', momentum=None"
            )
    else:
        raise NormOptionError(f"convention must be 'torch' or 'flax', got {convention!r}")
    if not 0.0 <= m <= 1.0:
        raise NormOptionError(f"momentum must be in [0, 1] (or None), got {m}")
    return (m if conv == "torch" else 1.0 - m), conv


def resolve_running_var(running_var: str | None, conv: str) -> str:
    if running_var is None:  # a preset brings its framework's choice; the paper's otherwise
        return "biased" if conv == "flax" else "unbiased"
    if running_var not in ("biased", "unbiased"):
        raise NormOptionError(f"running_var must be 'biased' or 'unbiased', got {running_var!r}")
    return running_var


def update_running(state: State, mean: Array, var: Array, rate: float | None) -> State:
    """One running-average step with (C,) batch statistics; no gradient flows into the state."""
    mean, var = jax.lax.stop_gradient((mean, var))
    count = state["count"] + 1.0
    w = 1.0 / count if rate is None else rate
    return {
        **state,
        "mean": ((1.0 - w) * state["mean"] + w * mean).astype(jnp.float32),
        "var": ((1.0 - w) * state["var"] + w * var).astype(jnp.float32),
        "count": count.astype(jnp.float32),
    }


def momentum_options(rate: float | None, conv: str, running_var: str, eps: float) -> dict:
    if eps < 0:
        raise NormOptionError(f"eps must be >= 0, got {eps}")
    return {"rate": rate, "convention": conv, "running_var": running_var, "eps": eps}


def batch_normalize(
    xf: Array, params: Params, axes: tuple[int, ...], eps: float
) -> tuple[Array, Moments]:
    """scale * (x - mean) / sqrt(var + eps) + bias over ``axes``, and the moments, with BN's
    closed-form gradient instead of the derivative of each step of ``moments``. Per channel,
    with x^ = (x - mean) / sqrt(var + eps), g the cotangent of the output and n the count:
        dL/dbias = sum g,   dL/dscale = sum g x^,
        dL/dx = scale (g - dL/dbias / n - x^ dL/dscale / n) / sqrt(var + eps),
    so the two sums over the batch serve the parameters' gradients and the input's (XLA does
    not see that sum(scale g) is scale sum(g): autodiff through ``moments`` and ``affine``
    reduced over the batch seven times a layer, this five). Cotangents of the returned mean
    (its delta: g_mean / n) and variance (2 g_var (x - mean) / n) are added when those are
    differentiated (never in training: the running statistics are outside the gradient).
    Values equal ``affine(params, moments(...).center(x) * rsqrt(var + eps))``. No mask, no
    named axis (``moments`` handles those). Forward-mode differentiation (jvp) is not defined
    for it, as for models.dense_wgrad."""
    y, delta, var, count, shift = _batch_normalize(xf, params["scale"], params["bias"], axes, eps)
    return y, Moments(shift, delta, var, count)


def _normalized(xf: Array, scale: Array, bias: Array, axes: tuple[int, ...], eps: float) -> tuple:
    st = moments(xf, axes)
    inv = jax.lax.rsqrt(st.var + eps)
    xhat = st.center(xf) * inv
    y = affine({"scale": scale, "bias": bias}, xhat)
    return (y, st.delta, st.var, st.count, st.shift), (xhat, inv, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_normalize(
    xf: Array, scale: Array, bias: Array, axes: tuple[int, ...], eps: float
) -> tuple:
    return _normalized(xf, scale, bias, axes, eps)[0]


def _batch_normalize_fwd(xf: Any, scale: Any, bias: Any, axes: tuple[int, ...], eps: float):
    return _normalized(xf.value, scale.value, bias.value, axes, eps)


def _batch_normalize_bwd(axes: tuple[int, ...], eps: float, res: tuple, g: tuple) -> tuple:
    from jax.custom_derivatives import SymbolicZero

    xhat, inv, scale = res
    gy, gdelta, gvar = g[:3]
    n = math.prod(xhat.shape[a] for a in axes)
    if isinstance(gy, SymbolicZero):
        dx, dscale, dbias = jnp.zeros_like(xhat), jnp.zeros_like(scale), jnp.zeros_like(scale)
    else:
        dbias = jnp.sum(gy, axes, keepdims=True)
        dscale = jnp.sum(gy * xhat, axes, keepdims=True)
        dx = (gy - dbias / n - xhat * (dscale / n)) * (per_channel(scale, xhat.ndim) * inv)
        dbias, dscale = dbias.reshape(scale.shape), dscale.reshape(scale.shape)
    if not isinstance(gdelta, SymbolicZero):
        dx = dx + gdelta / n
    if not isinstance(gvar, SymbolicZero):
        dx = dx + gvar * (2.0 / n) * xhat / inv
    return dx, dscale, dbias


_batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd, symbolic_zeros=True)
