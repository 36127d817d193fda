"""Probes of overfitting and of the dropout/BN disharmony (the `regularization` experiment).

Both follow the bnexp.probes interface and are registered there; both read the model in eval
mode (running statistics, dropout off) on the trial's fixed probe batch, a seeded sample of
``Trial.probe_batch_size`` training images (bnexp.sweep: the same rows at every evaluation point,
for every member; the whole training set when it is no larger):

``train_sample_eval``  {"train_sample_loss", "train_sample_acc"}: mean cross-entropy and accuracy
    on the probe batch, computed as the engine computes "test_loss" / "test_acc" on the test set
    (eval mode, the same loss). Their difference from the test metrics is the train-test gap of an
    overfitting model (Ioffe & Szegedy 2015 Sec. 4.2.1; seed 000's train-val loss gap).
``bn_var_ratio``  {"bn_var_ratio": (num_hidden,)}: per hidden layer l, the mean over units k of
    Var_probe(u_k) / running_var_k, where u is layer l's norm input in eval mode over the probe
    batch (variance 1/N, the batch's own mean) and running_var the norm's running variance (an
    average of the training batches' variances, each taken with dropout on). Li, Chen, Hu & Yang
    2019 ("Understanding the disharmony between dropout and batch normalization by variance
    shift"): dropout before a BN layer scales kept units by 1/(1-p) in training, which inflates
    the variance BN sees there; at test time dropout is off, the variance is smaller, and the
    running variance no longer matches it: the ratio (their Var_test / Var_train) is < 1.
    Without dropout the ratio stays near 1 (up to the running average's lag behind
    the weights). A layer without a running variance (no norm, or a norm without running
    statistics) gives NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from bnexp import models
from bnexp.models import ModelSpec

Array = jax.Array


def train_sample_eval_probe(
    spec: ModelSpec, params: Any, norm_state: Any, batch: tuple, hp: Mapping, loss_fn: Any
) -> dict[str, Array]:
    """{"train_sample_loss", "train_sample_acc"}: eval-mode loss and accuracy on the probe batch."""
    x, y = batch
    loss, (_, logits) = loss_fn(params, norm_state, x, y, mode="eval")
    acc = (jnp.argmax(logits, -1) == y).astype(jnp.float32).mean()
    return {"train_sample_loss": loss.astype(jnp.float32), "train_sample_acc": acc}


def variance_ratio(u: Array, running_var: Array) -> Array:
    """Mean over units of Var(u[:, k]) / running_var[k], u (N, units) (or (..., channels)),
    the variance with 1/N about the sample's own mean."""
    uf = u.reshape(-1, u.shape[-1]).astype(jnp.float32)
    return jnp.mean(jnp.var(uf, axis=0) / running_var.astype(jnp.float32))


def bn_var_ratio_probe(
    spec: ModelSpec, params: Any, norm_state: Any, batch: tuple, hp: Mapping, loss_fn: Any
) -> dict[str, Array]:
    """{"bn_var_ratio": (num_hidden,)}: per hidden layer (conv blocks first), the eval-mode
    variance of the norm input over the probe batch over the running variance, mean over units."""
    _, _, aux = models.apply(
        params, norm_state, batch[0], spec, mode="eval", norm_call=hp["norm_call"], capture=True
    )
    states = [*norm_state["conv"], *norm_state["hidden"]]
    out = []
    for u, s in zip(aux["norm_inputs"], states, strict=True):
        if isinstance(s, Mapping) and "var" in s:
            out.append(variance_ratio(u, s["var"]))
        else:
            out.append(jnp.full((), jnp.nan, jnp.float32))
    return {"bn_var_ratio": jnp.stack(out)}
