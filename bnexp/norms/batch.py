"""Batch normalization (Ioffe & Szegedy 2015) and batch renormalization (Ioffe 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bnexp.errors import NormOptionError
from bnexp.norms._core import (
    UNSET,
    Array,
    AxisGroups,
    AxisName,
    Moments,
    Norm,
    Params,
    State,
    affine,
    affine_init,
    batch_normalize,
    check_input,
    check_mode,
    check_train_count,
    compute_dtype,
    moments,
    momentum_options,
    per_channel,
    prepare_mask,
    resolve_rate,
    resolve_running_var,
    running_init,
    static_count,
    update_running,
)

RENORM_RATE = 0.01  # Ioffe 2017: running mean and std updated with rate alpha = 0.01


def batch_stats(
    name: str,
    x: Array,
    mask: Array | None,
    mode: str,
    axis_name: AxisName,
    axis_index_groups: AxisGroups,
) -> tuple[Array, Moments]:
    """float32 input and its moments over every axis but the last."""
    axes = tuple(range(x.ndim - 1))
    m = prepare_mask(mask, x)
    if mode == "train":
        check_train_count(static_count(x, axes, m, axis_name, axis_index_groups), name)
    xf = x.astype(compute_dtype(x))
    return xf, moments(xf, axes, m, axis_name, axis_index_groups)


def running_var_stat(var: Array, n: Array, running_var: str) -> Array:
    """Variance to store: biased (1/m) or unbiased (1/(m-1), Algorithm 2 of Ioffe & Szegedy)."""
    return var * (n / (n - 1.0)) if running_var == "unbiased" else var


def batch_norm(
    momentum: float | None = UNSET,
    eps: float = 1e-5,
    running_var: str | None = None,
    *,
    convention: str | None = None,
    decay: float | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisGroups = None,
) -> Norm:
    """Batch normalization (Ioffe & Szegedy, 2015, Algorithms 1 and 2), channels last.

    Train/batch modes, per channel c, over all m elements of every axis but the last:
        mu_B = (1/m) sum x,   var_B = (1/m) sum (x - mu_B)^2          (biased, two-pass)
        y = scale * (x - mu_B) / sqrt(var_B + eps) + bias
    Train mode also updates the running statistics (PyTorch's rule, no gradient):
        mean <- (1 - rate) mean + rate mu_B,   var <- (1 - rate) var + rate v,
        v = var_B * m/(m-1) ("unbiased": Algorithm 2, PyTorch) or var_B ("biased": Flax/Keras).
    Eval mode: y = scale * (x - mean) / sqrt(var + eps) + bias; the state is returned unchanged.
    Before any training step mean = 0, var = 1.

    Gradient (train/batch modes, no mask, no named axis): the closed form of Ioffe & Szegedy
    Sec. 3 (``_core.batch_normalize``: two sums a channel shared by dx, dscale and dbias);
    with a mask or a named axis, autodiff through the moments.

    Momentum (see ``resolve_rate``): ``momentum=0.1`` is PyTorch's rate (default); ``None`` is
    PyTorch's cumulative average; ``convention="flax"`` reads ``momentum`` as the decay (default
    0.99) and stores the biased variance unless ``running_var`` says otherwise; ``decay=`` is the
    explicit form. Conflicting combinations raise.

    ``axis_name`` (with optional ``axis_index_groups``, pmap only): synchronized BN over a named
    axis (shard_map, pmap, vmap); sums, squared deviations and counts are psum'd, so the result is
    the statistics of the concatenated batch even with unequal per-device counts. ``apply`` takes
    ``mask`` (bool, shape x.shape[:-1] or a prefix such as (N,)) marking the valid elements;
    masked elements do not enter the statistics (their outputs are still computed). With a mask,
    a step with a single valid element makes the unbiased running variance NaN (no trace-time
    check is possible).
    """
    rate, conv = resolve_rate(momentum, convention, decay)
    rv = resolve_running_var(running_var, conv)
    options = momentum_options(rate, conv, rv, eps) | {"axis_name": axis_name}

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
        check_input(x, "batch_norm")
        if mode == "eval":
            xf = x.astype(compute_dtype(x))
            var = per_channel(state["var"], x.ndim)
            y = affine(params, (xf - per_channel(state["mean"], x.ndim)) * jax.lax.rsqrt(var + eps))
            return y.astype(x.dtype), state
        if mask is None and axis_name is None:  # BN's closed-form gradient (batch_normalize)
            axes = tuple(range(x.ndim - 1))
            if mode == "train":
                check_train_count(static_count(x, axes, None, None, None), "batch_norm")
            y, st = batch_normalize(x.astype(compute_dtype(x)), params, axes, eps)
        else:
            xf, st = batch_stats("batch_norm", x, mask, mode, axis_name, axis_index_groups)
            y = affine(params, st.center(xf) * jax.lax.rsqrt(st.var + eps))
        new_state = state
        if mode == "train":
            new_state = update_running(
                state, st.mean.reshape(-1), running_var_stat(st.var, st.count, rv).reshape(-1), rate
            )
        return y.astype(x.dtype), new_state

    return Norm("batch", lambda c: (affine_init(c), running_init(c)), apply, options=options)


def batch_renorm(
    r_max: float = 3.0,
    d_max: float = 5.0,
    momentum: float | None = UNSET,
    eps: float = 1e-5,
    *,
    convention: str | None = None,
    decay: float | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisGroups = None,
) -> Norm:
    """Batch renormalization (Ioffe, 2017, Algorithm 1), channels last.

    Train mode, with running mean mu and running std sigma:
        sigma_B = sqrt(var_B + eps)
        r = stop_gradient(clip(sigma_B / sigma, 1/r_max, r_max))
        d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
        y = scale * ((x - mu_B) / sigma_B * r + d) + bias
        mu <- mu + rate (mu_B - mu),   sigma <- sigma + rate (sigma_B - sigma)
    The running *std* is averaged, as in the paper. It is stored as state["var"] = sigma^2 - eps,
    so eval mode is the same formula as batch norm: y = scale * (x - mu) / sqrt(var + eps) + bias
    (= scale * (x - mu) / sigma + bias). r_max = 1, d_max = 0 is batch norm in the forward pass.
    ``r_max``/``d_max`` may be passed to ``apply`` per call (traced), so a schedule (the paper
    relaxes r_max 1 -> 3 and d_max 0 -> 5) drives them without recompiling. "batch" mode is
    plain batch-statistics normalization (r = 1, d = 0), no update. Momentum conventions, axis
    and mask arguments as in ``batch_norm``; the default rate is RENORM_RATE = 0.01, the rate
    alpha of the moving averages in Ioffe 2017's experiments, not batch norm's 0.1 (the flax
    convention's default decay 0.99 is the same rate).
    """
    if r_max < 1.0 or d_max < 0.0:
        raise NormOptionError(f"need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
    if momentum is UNSET and convention is None and decay is None:
        momentum = RENORM_RATE
    rate, conv = resolve_rate(momentum, convention, decay)
    options = momentum_options(rate, conv, "std", eps) | {
        "r_max": r_max,
        "d_max": d_max,
        "axis_name": axis_name,
    }

    def apply(
        params: Params,
        state: State,
        x: Array,
        *,
        mode: str = "train",
        key=None,
        mask: Array | None = None,
        r_max: Array | float | None = None,
        d_max: Array | float | None = None,
    ) -> tuple[Array, State]:
        check_mode(mode)
        check_input(x, "batch_renorm")
        nd = x.ndim
        mu = per_channel(state["mean"], nd)
        sigma = jnp.sqrt(per_channel(state["var"], nd) + eps)
        if mode == "eval":
            xf = x.astype(compute_dtype(x))
            return affine(params, (xf - mu) / sigma).astype(x.dtype), state
        xf, st = batch_stats("batch_renorm", x, mask, mode, axis_name, axis_index_groups)
        mean = st.mean
        sigma_b = jnp.sqrt(st.var + eps)
        xhat = st.center(xf) / sigma_b
        if mode == "batch":
            return affine(params, xhat).astype(x.dtype), state
        rm = options["r_max"] if r_max is None else r_max
        dm = options["d_max"] if d_max is None else d_max
        r = jax.lax.stop_gradient(jnp.clip(sigma_b / sigma, 1.0 / rm, rm))
        d = jax.lax.stop_gradient(jnp.clip((mean - mu) / sigma, -dm, dm))
        y = affine(params, xhat * r + d)
        # update_running averages its "var" argument linearly: feed it sigma_B and square after.
        stepped = update_running(
            {**state, "var": sigma.reshape(-1)}, mean.reshape(-1), sigma_b.reshape(-1), rate
        )
        new_var = jnp.maximum(jnp.square(stepped["var"]) - eps, 0.0)
        return y.astype(x.dtype), {**stepped, "var": new_var.astype(jnp.float32)}

    return Norm(
        "renorm",
        lambda c: (affine_init(c), running_init(c)),
        apply,
        options=options,
        call_options=("r_max", "d_max"),
    )
