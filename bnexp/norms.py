"""Functional normalization layers with explicit running state.

CONTRACT (every norm, every caller relies on this; do not change the call shape):

    norm = norms.get("batch", momentum=0.1)          # or norms.batch_norm(momentum=0.1)
    params, state = norm.init(num_features)          # params: {"scale", "bias"} float32 (C,)
                                                     # state: {"mean", "var", "count"} float32 (C,), ()
    y, new_state = norm.apply(params, state, x, mode="train", key=None, **call_options)

- x is channels-last: (N, C) dense or (N, H, W, C) conv. y has x's dtype and shape.
- mode: "train" (batch statistics, update state), "eval" (running statistics, state unchanged),
  "batch" (batch statistics, state unchanged).
- key: a PRNG key, used only by stochastic norms (noisy); others ignore it.
- call_options: per-call traced numbers (e.g. r_max/d_max for batch renorm, noise constants);
  unknown names are an error.
- norm.name: registry name; norm.stochastic: bool (needs key in train mode);
  norm.has_state: bool.
- Every norm is usable under jit, grad, vmap, scan and eval_shape.

This file is a first working core (batch norm + identity); the full set of norms and their proofs
land with the foundation issue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Array]
State = dict[str, Array]
MODES = ("train", "eval", "batch")


@dataclass(frozen=True)
class Norm:
    """A normalization layer as a pair of pure functions, optax style."""

    name: str
    init: Callable[[int], tuple[Params, State]]
    apply: Callable[..., tuple[Array, State]]
    stochastic: bool = False
    has_state: bool = True
    options: dict[str, Any] = field(default_factory=dict)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _default_init(num_features: int) -> tuple[Params, State]:
    params = {
        "scale": jnp.ones((num_features,), jnp.float32),
        "bias": jnp.zeros((num_features,), jnp.float32),
    }
    state = {
        "mean": jnp.zeros((num_features,), jnp.float32),
        "var": jnp.ones((num_features,), jnp.float32),
        "count": jnp.zeros((), jnp.float32),
    }
    return params, state


def batch_norm(momentum: float | None = 0.1, eps: float = 1e-5,
               running_var: str = "unbiased") -> Norm:
    """Batch normalization (Ioffe & Szegedy 2015), PyTorch momentum convention (minimal core)."""

    def apply(params, state, x, *, mode="train", key=None):
        _check_mode(mode)
        axes = tuple(range(x.ndim - 1))
        xf = x.astype(jnp.float32)
        if mode == "eval":
            mean, var = state["mean"], state["var"]
            new_state = state
        else:
            m = 1
            for a in axes:
                m *= x.shape[a]
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)  # two-pass, biased
            new_state = state
            if mode == "train":
                sm = jax.lax.stop_gradient(mean)
                sv = jax.lax.stop_gradient(var * (m / (m - 1)) if running_var == "unbiased" else var)
                mom = momentum if momentum is not None else 1.0 / (state["count"] + 1.0)
                new_state = {
                    "mean": (1 - mom) * state["mean"] + mom * sm,
                    "var": (1 - mom) * state["var"] + mom * sv,
                    "count": state["count"] + 1.0,
                }
        y = (xf - mean) * jax.lax.rsqrt(var + eps) * params["scale"] + params["bias"]
        return y.astype(x.dtype), new_state

    return Norm("batch", _default_init, apply,
                options=dict(momentum=momentum, eps=eps, running_var=running_var))


def identity() -> Norm:
    """No normalization: the baseline arm, same call shape (scale/bias unused)."""

    def init(num_features: int):
        return {}, {}

    def apply(params, state, x, *, mode="train", key=None):
        _check_mode(mode)
        return x, state

    return Norm("none", init, apply, has_state=False)


_FACTORIES: dict[str, Callable[..., Norm]] = {
    "batch": batch_norm,
    "none": identity,
}


def names() -> list[str]:
    return list(_FACTORIES)


def get(name: str, **options: Any) -> Norm:
    """Build a norm by registry name (for configs and the CLI)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown norm {name!r}; choose from {', '.join(_FACTORIES)}")
    return _FACTORIES[name](**options)
