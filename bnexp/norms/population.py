"""Population statistics recomputed with fixed weights (PreciseBN; Ioffe & Szegedy Algorithm 2).

The running averages a BN layer keeps during training lag the weights (Wu & Johnson 2021,
"Rethinking Batch in BatchNorm", Sec. 3): they mix statistics of many past weight settings. With
the final weights fixed, PreciseBN (fvcore's ``update_bn_stats``) forwards N training batches with
batch statistics and replaces the running state by their exact averages:

    mean = sum_b n_b mu_b / sum_b n_b                  (count-weighted mean of batch means)
    var  = sum_b n_b v_b  / sum_b n_b                  (count-weighted mean of batch variances)

with n_b the elements per channel of batch b (an unequal last batch gets its own weight), mu_b and
v_b its biased (1/n_b) moments (two-pass, as in the norms). ``running_var="unbiased"`` uses
v_b = n_b/(n_b - 1) var_b, Ioffe & Szegedy's Algorithm 2 (Var[x] = m/(m-1) E_B[var_B]) and
PyTorch's stored variance; ``running_var="total"`` is the variance of all the examples pooled
(mean of batch variances plus the variance of the batch means), for comparison.

Only layers whose state holds "mean" and "var" (batch, renorm, ghost, noisy) are recomputed;
stateless norms keep their (empty) state. Ghost BN's population statistics are taken over each
whole batch passed in, not per ghost batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from bnexp.norms._core import Array, State, moments

RUNNING_VARS = ("biased", "unbiased", "total")


def batch_moments(x: Array) -> tuple[Array, Array, Array]:
    """(count, mean (C,), biased var (C,)) over every axis but the last, float32, two-pass."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    m = moments(xf, tuple(range(x.ndim - 1)))
    return m.count.reshape(()), m.mean.reshape(-1), m.var.reshape(-1)


def combine(
    counts: Sequence[Any],
    means: Sequence[Array],
    variances: Sequence[Array],
    running_var: str = "biased",
) -> State:
    """Population state {"mean", "var", "count"} from per-batch counts and biased moments.

    count is the number of batches (the state's "updates so far")."""
    if running_var not in RUNNING_VARS:
        raise ValueError(f"running_var must be one of {RUNNING_VARS}, got {running_var!r}")
    if not counts or not len(counts) == len(means) == len(variances):
        raise ValueError("need at least one batch and as many counts as means and variances")
    n = jnp.stack([jnp.asarray(c, jnp.float32) for c in counts])
    mu = jnp.stack([jnp.asarray(m, jnp.float32) for m in means])
    var = jnp.stack([jnp.asarray(v, jnp.float32) for v in variances])
    if running_var == "unbiased" and bool(jnp.any(n < 2)):
        raise ValueError("running_var='unbiased' needs at least two values per channel a batch")
    return pool(n, mu, var, running_var)


def pool(n: Array, mu: Array, var: Array, running_var: str = "biased") -> State:
    """``combine``'s arithmetic on stacked per-batch counts n (N,), means and biased variances
    (N, C), without its checks: traceable (jit, vmap), for probes."""
    if running_var == "unbiased":
        var = var * (n / (n - 1.0))[:, None]
    w = (n / jnp.sum(n))[:, None]
    mean = jnp.sum(w * mu, 0)
    pop_var = jnp.sum(w * var, 0)
    if running_var == "total":
        pop_var = pop_var + jnp.sum(w * jnp.square(mu - mean[None, :]), 0)
    return {
        "mean": mean.astype(jnp.float32),
        "var": pop_var.astype(jnp.float32),
        "count": jnp.asarray(n.shape[0], jnp.float32),
    }


def recompute(
    params: dict,
    norm_state: dict,
    spec: Any,
    batches: Iterable[Array],
    *,
    running_var: str = "biased",
    norm_call: dict | None = None,
) -> dict:
    """A model's norm state with population statistics over ``batches`` (params fixed).

    Each batch goes through ``bnexp.models.apply(..., mode="batch", capture=True)`` (batch
    statistics, as in training, no state update); each layer's per-batch moments of its norm
    input (``aux["norm_inputs"]``) are combined by ``combine``. Returns a new norm state of the
    same layout; ``norm_state`` is not modified. Batches may differ in size (the last one)."""
    from bnexp import models  # models imports bnexp.norms

    @jax.jit
    def layer_moments(x):
        _, _, aux = models.apply(
            params, norm_state, x, spec, mode="batch", capture=True, norm_call=norm_call
        )
        return [batch_moments(u) for u in aux["norm_inputs"]]

    per_batch = [layer_moments(jnp.asarray(x)) for x in batches]
    if not per_batch:
        raise ValueError("recompute needs at least one batch")
    layout = [(g, i) for g in ("conv", "hidden") for i in range(len(norm_state[g]))]
    new_state: dict[str, list] = {
        "conv": list(norm_state["conv"]),
        "hidden": list(norm_state["hidden"]),
    }
    for layer, (group, i) in enumerate(layout):
        old = norm_state[group][i]
        if not ("mean" in old and "var" in old):
            continue
        stats = [b[layer] for b in per_batch]
        pop = combine(
            [s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats], running_var
        )
        new_state[group][i] = {**old, **pop}
    return new_state


def recompute_stacked(
    params: dict,
    norm_state: dict,
    spec: Any,
    xs: Array,
    *,
    running_vars: Sequence[str] = ("biased",),
    norm_call: dict | None = None,
) -> list[dict]:
    """``recompute`` for N equal batches stacked as xs (N, B, ...), traceable (inside jit and
    vmap: the engine's probes), one new norm state per entry of ``running_vars`` (the batches'
    moments are computed once). Equal batches weigh equally; a layer's count per batch is its
    elements per channel (B, or B*H*W for a conv layer)."""
    from bnexp import models

    bad = [rv for rv in running_vars if rv not in RUNNING_VARS]
    if bad:
        raise ValueError(f"running_var must be one of {RUNNING_VARS}, got {bad[0]!r}")

    def layer_moments(x: Array) -> list[tuple[Array, Array, Array]]:
        _, _, aux = models.apply(
            params, norm_state, x, spec, mode="batch", capture=True, norm_call=norm_call
        )
        return [batch_moments(u) for u in aux["norm_inputs"]]

    per_batch = jax.vmap(layer_moments)(xs)  # per layer: counts (N,), means, vars (N, C)
    layout = [(g, i) for g in ("conv", "hidden") for i in range(len(norm_state[g]))]
    out = []
    for rv in running_vars:
        new_state: dict[str, list] = {
            "conv": list(norm_state["conv"]),
            "hidden": list(norm_state["hidden"]),
        }
        for (group, i), (n, mu, var) in zip(layout, per_batch, strict=True):
            old = norm_state[group][i]
            if "mean" in old and "var" in old:
                new_state[group][i] = {**old, **pool(n, mu, var, rv)}
        out.append(new_state)
    return out
