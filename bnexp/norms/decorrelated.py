"""Decorrelated batch normalization (Huang, Yang, Lang & Deng, CVPR 2018), ZCA in groups."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnexp.norms._core import (
    UNSET,
    Array,
    Norm,
    Params,
    State,
    affine,
    affine_init,
    check_input,
    check_mode,
    check_train_count,
    compute_dtype,
    resolve_rate,
)


def decorrelated_batch_norm(
    group_size: int = 16,
    momentum: float | None = UNSET,
    eps: float = 1e-5,
    *,
    convention: str | None = None,
    decay: float | None = None,
) -> Norm:
    """Decorrelated BN: ZCA whitening of each group of ``group_size`` consecutive channels.

    Train/batch modes, per group g of k channels, over the m elements of every axis but the last:
        mu = (1/m) sum x,   Sigma = (1/m) sum (x - mu)(x - mu)^T           (k x k, biased)
        Sigma = V diag(lam) V^T (jnp.linalg.eigh),  W = V diag((lam + eps)^-1/2) V^T
        y = scale * W (x - mu) + bias
    The gradient flows through eigh (the paper's backward pass). Caveat: eigh's derivative has
    1/(lam_i - lam_j) terms, so it is ill-conditioned when two eigenvalues nearly coincide (e.g.
    duplicated or exactly symmetric features); W itself is still well defined, and eps bounds the
    small-eigenvalue end only. Train mode also updates the running mean and running whitening
    matrix with the momentum rule of ``batch_norm`` (no gradient); eval uses them. Before any step
    mean = 0, W = I. When C is not a multiple of ``group_size`` the groups are the largest divisor of C not above
    it (C = 100, group_size 16: groups of 10).
    State: {"mean": (C,), "whiten": (G, k, k), "count": ()}, float32.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rate, conv = resolve_rate(momentum, convention, decay)
    options = {"group_size": group_size, "rate": rate, "convention": conv, "eps": eps}

    def groups(c: int) -> tuple[int, int]:
        k = max(d for d in range(1, min(group_size, c) + 1) if c % d == 0)
        return c // k, k

    def init(c: int) -> tuple[Params, State]:
        g, k = groups(c)
        eye = jnp.broadcast_to(jnp.eye(k, dtype=jnp.float32), (g, k, k))
        return affine_init(c), {
            "mean": jnp.zeros((c,), jnp.float32),
            "whiten": eye,
            "count": jnp.zeros((), jnp.float32),
        }

    def apply(
        params: Params, state: State, x: Array, *, mode: str = "train", key=None, mask=None
    ) -> tuple[Array, State]:
        check_mode(mode)
        check_input(x, "decorrelated")
        if mask is not None:
            raise ValueError("decorrelated: mask is not supported")
        c = x.shape[-1]
        g, k = groups(c)
        xf = x.astype(compute_dtype(x)).reshape((-1, g, k))
        if mode == "eval":
            d = xf - state["mean"].reshape((1, g, k))
            w = state["whiten"]
        else:
            if mode == "train":
                check_train_count(xf.shape[0], "decorrelated")
            m = xf.shape[0]
            shift = jax.lax.stop_gradient(jnp.mean(xf, 0, keepdims=True))
            d0 = xf - shift
            mu = shift + jnp.mean(d0, 0, keepdims=True)
            d = xf - mu
            cov = jnp.einsum("mgi,mgj->gij", d, d) / m
            lam, v = jnp.linalg.eigh(cov)
            w = jnp.einsum("gik,gk,gjk->gij", v, jax.lax.rsqrt(lam + eps), v)
        y = jnp.einsum("gij,mgj->mgi", w, d).reshape(x.shape)
        y = affine(params, y).astype(x.dtype)
        if mode != "train":
            return y, state
        mu_s, w_s = jax.lax.stop_gradient((mu.reshape(-1), w))
        count = state["count"] + 1.0
        r = 1.0 / count if rate is None else rate
        return y, {
            "mean": ((1 - r) * state["mean"] + r * mu_s).astype(jnp.float32),
            "whiten": ((1 - r) * state["whiten"] + r * w_s).astype(jnp.float32),
            "count": count.astype(jnp.float32),
        }

    return Norm("decorrelated", init, apply, options=options)
