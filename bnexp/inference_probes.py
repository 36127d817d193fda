"""Probes of inference: which statistics a BN model normalizes with at test time (bnexp.probes
interface; each reads the point's test rows, hp["test"]).

"eval_mode" (the `eval-mode` experiment): test accuracy of the model as it stands when the
statistics are the wrong ones, against eval mode (running statistics), on the same test rows:

    bs_acc[k]         batch statistics (mode "batch": train-mode BN without the state update),
                      the test rows in a fixed random order (seed EVAL_ORDER_SEED) cut into
                      batches of sizes[k], a partial last batch dropped (NaN when sizes[k] > rows).
                      Batch 1 is defined: every feature of a one-example batch equals its batch
                      mean, so x_hat = 0 and BN outputs its bias: a constant network.
    bs_acc_sorted[k]  the same with the rows sorted by class (stable), the order of an
                      unshuffled class-ordered test loader: a batch holds one class.
    eval_acc_bs[k]    eval mode in those same batches of sizes[k] (the same rows as bs_acc[k]);
    eval_flip_bs[k]   the fraction of those rows whose eval-mode prediction in batches of
                      sizes[k] differs from the prediction of one pass over all rows (eval mode
                      is a per-example function: 0 up to a float32 near-tie).
    eval_acc          eval mode, all rows (= the point's test_acc);
    stale_acc         eval mode with the initial running state (mean 0, var 1) and the trained
                      weights: a training loop that dropped the norm state apply returned
                      (the functional form of "forgetting eval mode": the state never updated);
    one_batch_acc     batch statistics of all the rows as one batch.

"precise_bn" (the `precise-bn` experiment; Wu & Johnson 2021 Sec. 3): population statistics
recomputed with the current weights over the probe batch cut into ``batches`` training batches
of the trial's batch size (bnexp.norms.population.recompute_stacked), then eval mode on the test
rows:

    precise_acc (3,)  accuracy with the recomputed state, for population.RUNNING_VARS (biased
                      1/m batch variances; unbiased m/(m-1), Ioffe & Szegedy Algorithm 2; total,
                      the pooled variance of all the examples);
    ema_acc           accuracy with the EMA running state (= the point's test_acc);
    ema_mean_gap (L,) per BN layer, the mean over units of |mean_ema - mean_pop| / sd_pop;
    ema_var_gap (L,)  per BN layer, the mean over units of |log(var_ema / var_pop)|
                      (pop: the unbiased recomputation, the convention the EMA stores by default).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bnexp import models
from bnexp.norms import population

Array = jax.Array
EVAL_ORDER_SEED = 20260318  # the fixed random order of the test rows for batch-statistics batches
DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


def _batched(params, state, x, y, spec, b: int, mode: str, norm_call) -> tuple[Array, Array]:
    """(correct (nb*b,), predictions (nb*b,)) of the first nb = n // b batches of b rows, each
    batch through the model in ``mode`` on its own."""
    nb = x.shape[0] // b
    xs = x[: nb * b].reshape((nb, b) + x.shape[1:])
    ys = y[: nb * b].reshape((nb, b))

    def one(xb: Array) -> Array:
        logits, _, _ = models.apply(params, state, xb, spec, mode=mode, norm_call=norm_call)
        return jnp.argmax(logits, -1)

    pred = jax.vmap(one)(xs).reshape(-1)
    return (pred == ys.reshape(-1)).astype(jnp.float32), pred


def stale_state(norm_state: dict) -> dict:
    """The state before any training step: mean 0, var 1 (count 0) in every stateful layer."""

    def reset(s: dict) -> dict:
        if not ("mean" in s and "var" in s):
            return s
        return {
            **s,
            "mean": jnp.zeros_like(s["mean"]),
            "var": jnp.ones_like(s["var"]),
            "count": jnp.zeros_like(s["count"]),
        }

    return {g: [reset(s) for s in norm_state[g]] for g in ("conv", "hidden")}


def _predict(params, state, x, spec, mode: str, norm_call) -> Array:
    logits, _, _ = models.apply(params, state, x, spec, mode=mode, norm_call=norm_call)
    return jnp.argmax(logits, -1)


def eval_mode_probe(*, sizes: tuple[int, ...] = DEFAULT_SIZES):
    """{"bs_acc", "bs_acc_sorted", "eval_acc_bs", "eval_flip_bs": (len(sizes),), "eval_acc",
    "stale_acc", "one_batch_acc": ()} (see the module doc)."""
    if not sizes or any(int(b) < 1 for b in sizes):
        raise ValueError(f"sizes must be positive batch sizes, got {sizes}")

    def probe(spec, params, norm_state, batch, hp, loss_fn):
        x, y = hp["test"]
        n, call = x.shape[0], hp["norm_call"]
        order = np.random.default_rng(EVAL_ORDER_SEED).permutation(n)
        xr, yr = x[order], y[order]
        by_class = jnp.argsort(y, stable=True)
        xc, yc = x[by_class], y[by_class]
        ref = _predict(params, norm_state, xr, spec, "eval", call)
        nan = jnp.full((), jnp.nan, jnp.float32)
        out: dict[str, list] = {k: [] for k in ("bs_acc", "bs_acc_sorted", "eval_acc_bs")}
        out["eval_flip_bs"] = []
        for b in map(int, sizes):
            if b > n:
                for v in out.values():
                    v.append(nan)
                continue
            # both orders in one call (one program per size): the first half is the random order
            m = (n // b) * b
            both = (jnp.concatenate([xr[:m], xc[:m]]), jnp.concatenate([yr[:m], yc[:m]]))
            ok, _ = _batched(params, norm_state, *both, spec, b, "batch", call)
            out["bs_acc"].append(ok[:m].mean())
            out["bs_acc_sorted"].append(ok[m:].mean())
            ok, pred = _batched(params, norm_state, xr, yr, spec, b, "eval", call)
            out["eval_acc_bs"].append(ok.mean())
            out["eval_flip_bs"].append((pred != ref[: pred.shape[0]]).astype(jnp.float32).mean())
        res = {k: jnp.stack(v) for k, v in out.items()}
        stale = _predict(params, stale_state(norm_state), x, spec, "eval", call)
        whole = _predict(params, norm_state, x, spec, "batch", call)
        res["eval_acc"] = (ref == yr).astype(jnp.float32).mean()
        res["stale_acc"] = (stale == y).astype(jnp.float32).mean()
        res["one_batch_acc"] = (whole == y).astype(jnp.float32).mean()
        return res

    return probe


def _layer_gaps(ema: dict, pop: dict, eps: float = 1e-5) -> tuple[Array, Array]:
    """(mean gap, var gap) per stateful layer: mean over units of |mu_e - mu_p| / sd_p and of
    |log(var_e / var_p)| (eps added to both variances, as the normalization does)."""
    mean_gap, var_gap = [], []
    for g in ("conv", "hidden"):
        for e, p in zip(ema[g], pop[g], strict=True):
            if not ("mean" in e and "var" in e):
                continue
            sd = jnp.sqrt(p["var"] + eps)
            mean_gap.append(jnp.mean(jnp.abs(e["mean"] - p["mean"]) / sd))
            var_gap.append(jnp.mean(jnp.abs(jnp.log((e["var"] + eps) / (p["var"] + eps)))))
    if not mean_gap:  # no batch-statistics layer: nothing lags
        z = jnp.zeros((0,), jnp.float32)
        return z, z
    return jnp.stack(mean_gap), jnp.stack(var_gap)


def precise_bn_probe(*, batches: int = 20):
    """{"precise_acc": (3,), "ema_acc": (), "ema_mean_gap", "ema_var_gap": (layers,)} (see the
    module doc); the probe batch must hold ``batches`` x the training batch size rows."""
    if int(batches) < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")

    def probe(spec, params, norm_state, batch, hp, loss_fn):
        b, nb = int(hp["batch_size"]), int(batches)
        xp = batch[0]
        if xp.shape[0] < nb * b:
            raise ValueError(
                f"precise_bn needs a probe batch of {nb} x {b} = {nb * b} rows, got {xp.shape[0]}"
            )
        xs = xp[: nb * b].reshape((nb, b) + xp.shape[1:])
        call = hp["norm_call"]
        states = population.recompute_stacked(
            params, norm_state, spec, xs, running_vars=population.RUNNING_VARS, norm_call=call
        )
        x, y = hp["test"]

        def acc(state: Any) -> Array:
            return (_predict(params, state, x, spec, "eval", call) == y).astype(jnp.float32).mean()

        unbiased = states[population.RUNNING_VARS.index("unbiased")]
        mean_gap, var_gap = _layer_gaps(norm_state, unbiased)
        return {
            "precise_acc": jnp.stack([acc(s) for s in states]),
            "ema_acc": acc(norm_state),
            "ema_mean_gap": mean_gap,
            "ema_var_gap": var_gap,
        }

    return probe
