"""Batch-norm variants: ghost batch norm (Hoffer et al. 2017), noisy BN (Santurkar et al. 2018)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bnexp.errors import NormOptionError
from bnexp.norms._core import (
    UNSET,
    Array,
    AxisGroups,
    AxisName,
    Norm,
    Params,
    State,
    affine,
    affine_init,
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
)
from bnexp.norms.batch import batch_norm, running_var_stat


def _sequential_update(
    state: State, mean: Array, stat: Array, valid: Array, rate: float | None
) -> State:
    """L running-average steps, one per row of mean/stat (L, C), skipping rows not `valid` (L, 1).

    Closed form of the sequential rule: with v_l in {0, 1} and a_l = number of valid rows after l,
        new = (1 - rate)^V old + sum_l v_l rate (1 - rate)^a_l stat_l,     V = sum_l v_l;
    for the cumulative average (rate None), new = (count * old + sum_l v_l stat_l) / (count + V).
    """
    mean, stat = jax.lax.stop_gradient((mean, stat))
    vf = valid.astype(jnp.float32)
    mean, stat = jnp.where(valid, mean, 0.0), jnp.where(valid, stat, 0.0)
    total_valid = jnp.sum(vf)
    count = state["count"] + total_valid
    if rate is None:

        def step(old, new):
            return jnp.where(
                count > 0,
                (state["count"] * old + jnp.sum(vf * new, 0)) / jnp.maximum(count, 1.0),
                old,
            )
    else:
        after = total_valid - jnp.cumsum(vf, 0)
        w = vf * rate * jnp.power(1.0 - rate, after)

        def step(old, new):
            return jnp.power(1.0 - rate, total_valid) * old + jnp.sum(w * new, 0)

    return {
        **state,
        "mean": step(state["mean"], mean).astype(jnp.float32),
        "var": step(state["var"], stat).astype(jnp.float32),
        "count": count.astype(jnp.float32),
    }


def _gather_rows(
    rows: tuple[Array, ...], axis_name: AxisName, axis_index_groups: AxisGroups
) -> tuple[Array, ...]:
    """Concatenate each device's rows in device order, identical on every device.

    Each device writes its block into zeros at its own position and the blocks are psum'd
    (rather than all_gather'd) so the result is typed as replicated under shard_map."""
    idx = jax.lax.axis_index(axis_name)
    if axis_index_groups:
        position = np.zeros(sum(len(g) for g in axis_index_groups), np.int32)
        for group in axis_index_groups:
            position[list(group)] = np.arange(len(group))
        idx, size = jnp.asarray(position)[idx], len(axis_index_groups[0])
    else:
        size = jax.lax.axis_size(axis_name)

    def gather(v: Array) -> Array:
        block = jax.lax.dynamic_update_index_in_dim(
            jnp.zeros((size,) + v.shape, v.dtype), v, idx, 0
        )
        block = jax.lax.psum(block, axis_name, axis_index_groups=axis_index_groups)
        return block.reshape((size * v.shape[0],) + v.shape[1:])

    return tuple(gather(v) for v in rows)


def ghost_batch_norm(
    virtual_batch_size: int,
    momentum: float | None = UNSET,
    eps: float = 1e-5,
    running_var: str | None = None,
    *,
    convention: str | None = None,
    decay: float | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisGroups = None,
) -> Norm:
    """Ghost batch normalization (Hoffer, Hubara & Soudry, 2017, "Train longer, generalize better").

    The batch (N, ..., C) is split into N / virtual_batch_size consecutive virtual batches
    B_1..B_L; each is batch-normalized with its own statistics and the shared scale and bias:
        y_i = scale * (x_i - mu_{B_l}) / sqrt(var_{B_l} + eps) + bias,   i in B_l.
    Train mode updates the one set of running statistics once per virtual batch, in order (the
    paper's Algorithm 1; count grows by L per step): with momentum=0.1 and L virtual batches the
    running average moves by 1 - 0.9^L per step. Eval mode uses the running statistics; "batch"
    mode normalizes by virtual batches without updating. ``virtual_batch_size`` must divide N.
    With ``axis_name`` the virtual batches stay local (that is the point of ghost BN) but the
    running update sees every device's virtual batches, in device order, so replicated state
    stays identical; with ``mask`` a virtual batch with fewer than two valid elements per channel
    is skipped by the update. Other options as in ``batch_norm``.
    """
    if virtual_batch_size < 1:
        raise NormOptionError(f"virtual_batch_size must be >= 1, got {virtual_batch_size}")
    rate, conv = resolve_rate(momentum, convention, decay)
    rv = resolve_running_var(running_var, conv)
    options = momentum_options(rate, conv, rv, eps) | {
        "virtual_batch_size": virtual_batch_size,
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
    ) -> tuple[Array, State]:
        check_mode(mode)
        check_input(x, "ghost_batch_norm")
        xf = x.astype(compute_dtype(x))
        if mode == "eval":
            xhat = (xf - per_channel(state["mean"], x.ndim)) * jax.lax.rsqrt(
                per_channel(state["var"], x.ndim) + eps
            )
            return affine(params, xhat).astype(x.dtype), state
        n_total, v = x.shape[0], virtual_batch_size
        if n_total % v:
            raise NormOptionError(
                f"ghost_batch_norm: virtual_batch_size={v} must divide the batch size {n_total}"
            )
        shape = (n_total // v, v) + x.shape[1:]
        xg = xf.reshape(shape)
        m = prepare_mask(mask, x)
        m = None if m is None else m.reshape(shape[:-1] + (1,))
        axes = tuple(range(1, xg.ndim - 1))
        if mode == "train":
            check_train_count(static_count(xg, axes, m, None, None), "ghost_batch_norm")
        st = moments(xg, axes, m)
        y = affine(params, (st.center(xg) * jax.lax.rsqrt(st.var + eps)).reshape(x.shape))
        if mode == "batch":
            return y.astype(x.dtype), state
        c = x.shape[-1]
        stat = running_var_stat(st.var, st.count, rv).reshape(-1, c)
        valid = jnp.broadcast_to(jnp.reshape(st.count > 1, (-1, 1)), (shape[0], 1))
        rows = (st.mean.reshape(-1, c), stat, valid.astype(stat.dtype))
        if axis_name is not None:
            rows = _gather_rows(rows, axis_name, axis_index_groups)
        mean_rows, stat_rows, valid_rows = rows
        return y.astype(x.dtype), _sequential_update(
            state, mean_rows, stat_rows, valid_rows > 0, rate
        )

    return Norm("ghost", lambda c: (affine_init(c), running_init(c)), apply, options=options)


NOISE_PER = ("sample", "unit")


def noisy_batch_norm(
    momentum: float | None = UNSET,
    eps: float = 1e-5,
    running_var: str | None = None,
    *,
    convention: str | None = None,
    decay: float | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisGroups = None,
    noise_per: str = "sample",
    mu_max: float = 0.5,
    sigma_min: float = 1.0,
    sigma_max: float = 1.25,
    m_spread: float = 0.1,
    s_std: float = 0.1,
) -> Norm:
    """Batch norm followed by time-varying noise (Santurkar, Tsipras, Ilyas & Madry, 2018,
    "How does batch normalization help optimization?", Sec. 2.1).

    In train mode the batch-norm output a (after scale and bias) becomes
        a <- s * a + m,   per call (step) and layer:  mu_t ~ U(-mu_max, mu_max),
                                                     sigma_t ~ U(sigma_min, sigma_max),
                          per activation:             m ~ U(mu_t - m_spread, mu_t + m_spread),
                                                     s ~ N(sigma_t, s_std^2),
    drawn from the PRNG ``key`` passed to ``apply`` (required in train mode; give each layer
    and step its own key). ``noise_per="sample"`` (the default) draws m and s i.i.d. for every
    activation of every sample (every element of x: for conv inputs also every position), as the
    paper perturbs "each activation for each sample in the batch using i.i.d. noise";
    ``noise_per="unit"`` draws one (m, s) per unit (channel), shared by the whole batch (the
    earlier, weaker reading). With ``axis_name`` per-sample noise is drawn on each device from
    ``fold_in(key, device index)`` (i.i.d. over the global batch, not the whole batch's draw);
    mu_t, sigma_t and per-unit noise are the same on every device.

    Eval and "batch" modes are deterministic: they apply the noise's expectation,
        a <- E[s] a + E[m] = (sigma_min + sigma_max) / 2 * a,
    (E[m] = E[mu_t] = 0), as inverted dropout keeps each unit's expected train-time output: the
    layers after a noisy one were trained on inputs of mean scale E[s] (1.125 with the paper's
    constants), and a test-time net without the factor would feed them inputs 1/E[s] too small.
    The defaults are the paper's constants; each may also be passed to ``apply`` per call
    (traced, for sweeps). Running statistics are those of the clean input, as in ``batch_norm``
    (same options).
    """
    if noise_per not in NOISE_PER:
        raise NormOptionError(f"noise_per must be one of {NOISE_PER}, got {noise_per!r}")
    bn = batch_norm(
        momentum,
        eps,
        running_var,
        convention=convention,
        decay=decay,
        axis_name=axis_name,
        axis_index_groups=axis_index_groups,
    )
    defaults = {
        "mu_max": mu_max,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "m_spread": m_spread,
        "s_std": s_std,
    }

    def apply(
        params: Params,
        state: State,
        x: Array,
        *,
        mode: str = "train",
        key=None,
        mask: Array | None = None,
        **noise: Array | float,
    ) -> tuple[Array, State]:
        unknown = set(noise) - set(defaults)
        if unknown:
            raise TypeError(
                f"noisy_batch_norm: unknown call options {sorted(unknown)}; "
                f"accepted: {sorted(defaults)}"
            )
        if mode == "train" and key is None:
            raise NormOptionError(
                "noisy_batch_norm: train mode needs a PRNG key (apply(..., key=k))"
            )
        y, new_state = bn.apply(params, state, x, mode=mode, mask=mask)
        k = defaults | noise
        yf = y.astype(compute_dtype(y))
        if mode != "train":
            mean_scale = (k["sigma_min"] + k["sigma_max"]) / 2.0
            return (yf * mean_scale).astype(x.dtype), new_state
        # U(-1, 1) (open at -1) feeds everything: mu_t and sigma_t from two numbers, m from one
        # draw and s from another via the inverse normal CDF.
        lo = np.nextafter(np.float32(-1), 1)
        t = jax.random.uniform(key, (2,), minval=lo, maxval=1.0)
        mu_t = k["mu_max"] * t[0]
        sigma_t = k["sigma_min"] + (k["sigma_max"] - k["sigma_min"]) * (t[1] + 1.0) / 2.0
        if noise_per == "sample":
            nkey = jax.random.fold_in(key, 1)
            if axis_name is not None:
                nkey = jax.random.fold_in(nkey, jax.lax.axis_index(axis_name))
            shape = x.shape
        else:
            nkey, shape = jax.random.fold_in(key, 1), (x.shape[-1],)
        u = jax.random.uniform(nkey, (2, *shape), minval=lo, maxval=1.0)
        m = mu_t + k["m_spread"] * u[0]
        s = sigma_t + k["s_std"] * np.sqrt(2.0) * jax.scipy.special.erfinv(u[1])
        if noise_per == "unit":
            m, s = per_channel(m, x.ndim), per_channel(s, x.ndim)
        return (yf * s + m).astype(x.dtype), new_state

    return Norm(
        "noisy",
        bn.init,
        apply,
        stochastic=True,
        options=bn.options | defaults | {"noise_per": noise_per},
        call_options=tuple(defaults),
    )
