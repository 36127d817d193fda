"""Per-example norms (group, layer, instance) and the identity: no batch statistics, no state."""

from __future__ import annotations

import math

import jax

from bnexp.errors import NormOptionError
from bnexp.norms._core import (
    Array,
    Norm,
    Params,
    State,
    affine,
    affine_init,
    check_input,
    check_mode,
    compute_dtype,
    moments,
)


def _grouped(name: str, groups: int | None, eps: float, min_ndim: int) -> Norm:
    """Normalize each example over its spatial axes and C / groups channels (groups=None: C)."""
    if groups is not None and groups < 1:
        raise NormOptionError(f"{name}: groups must be >= 1, got {groups}")
    if eps < 0:
        raise NormOptionError(f"eps must be >= 0, got {eps}")

    def n_groups(c: int) -> int:
        g = c if groups is None else groups
        if c % g:
            raise NormOptionError(f"{name}: groups={g} must divide the number of channels C={c}")
        return g

    def init(num_features: int) -> tuple[Params, State]:
        n_groups(num_features)
        return affine_init(num_features), {}

    def apply(
        params: Params,
        state: State,
        x: Array,
        *,
        mode: str = "train",
        key=None,
        mask: Array | None = None,
    ) -> tuple[Array, State]:
        check_mode(mode)
        check_input(x, name, min_ndim)
        c = x.shape[-1]
        g = n_groups(c)
        xg = x.astype(compute_dtype(x)).reshape(x.shape[:-1] + (g, c // g))
        axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
        if math.prod(xg.shape[a] for a in axes) < 2:
            raise NormOptionError(
                f"{name}: each group of shape {x.shape} holds a single value, so "
                f"it would normalize to zero; use more channels per group or a "
                f"spatial input (N, H, W, C)"
            )
        st = moments(xg, axes)
        xhat = (st.center(xg) * jax.lax.rsqrt(st.var + eps)).reshape(x.shape)
        return affine(params, xhat).astype(x.dtype), state

    options = {"groups": groups, "eps": eps}
    return Norm(name, init, apply, has_state=False, options=options)


def group_norm(groups: int = 32, eps: float = 1e-5) -> Norm:
    """Group normalization (Wu & He, 2018), channels last.

    For each example n and group g of C/groups consecutive channels, over the spatial axes S:
        mu = mean_{S, c in g} x,   var = mean_{S, c in g} (x - mu)^2,
        y = scale_c * (x - mu) / sqrt(var + eps) + bias_c.
    groups must divide C (error otherwise). groups=1 normalizes over (H, W, C) (layer-norm
    like); groups=C over (H, W) alone (instance norm). Independent of the batch: all modes agree,
    there is no state, and ``mask`` is accepted and ignored.
    """
    return _grouped("group", groups, eps, 2)


def layer_norm(eps: float = 1e-5) -> Norm:
    """Layer normalization (Ba, Kiros & Hinton, 2016): per example, over every non-batch axis.

        y = scale_c * (x - mean_{H,W,C} x) / sqrt(var_{H,W,C} x + eps) + bias_c
    (dense: over C). Same as group_norm(groups=1); per-channel scale and bias.
    """
    return _grouped("layer", 1, eps, 2)


def instance_norm(eps: float = 1e-5) -> Norm:
    """Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2016): per example and channel, over
    the spatial axes (H, W); input must be (N, ..., C) with spatial axes.

        y = scale_c * (x - mean_{H,W} x) / sqrt(var_{H,W} x + eps) + bias_c
    Same as group_norm(groups=C).
    """
    return _grouped("instance", None, eps, 3)


def identity() -> Norm:
    """No normalization, the baseline arm: y = x, same call shape, no parameters, no state."""

    def init(num_features: int) -> tuple[Params, State]:
        return {}, {}

    def apply(
        params: Params,
        state: State,
        x: Array,
        *,
        mode: str = "train",
        key=None,
        mask: Array | None = None,
    ) -> tuple[Array, State]:
        check_mode(mode)
        return x, state

    return Norm("none", init, apply, has_state=False)
