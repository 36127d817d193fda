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

Details beyond the contract:
- Stateless norms (group, layer, instance, none) return state {} from init and give the state
  back unchanged; identity also has params {}.
- Every apply also accepts ``mask`` (bool, shape x.shape[:-1] or a prefix such as (N,)): the
  valid elements. Batch-statistics norms (batch, renorm, ghost, noisy) leave the others out of
  their statistics; per-example norms ignore it.
- Batch-statistics norms take ``axis_name`` (and ``axis_index_groups``, pmap only) at
  construction: statistics are psum'd sums, squared deviations and counts over that named axis,
  exact for unequal per-device counts.
- norm.call_options lists the per-call numbers apply accepts ("renorm": r_max, d_max; "noisy":
  mu_max, sigma_min, sigma_max, m_spread, s_std); norm.options holds the resolved factory options.
- Statistics are computed in float32 (or the input's wider dtype) and state is float32 whatever
  the input dtype; the running-stat update carries no gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnexp.errors import NormOptionError
from bnexp.norms import population  # PreciseBN: population statistics
from bnexp.norms._core import MODES, Array, Norm, Params, State
from bnexp.norms.batch import batch_norm, batch_renorm
from bnexp.norms.decorrelated import decorrelated_batch_norm
from bnexp.norms.group import group_norm, identity, instance_norm, layer_norm
from bnexp.norms.variants import ghost_batch_norm, noisy_batch_norm

__all__ = [
    "MODES",
    "Array",
    "Norm",
    "Params",
    "State",
    "batch_norm",
    "batch_renorm",
    "decorrelated_batch_norm",
    "get",
    "ghost_batch_norm",
    "group_norm",
    "identity",
    "instance_norm",
    "layer_norm",
    "names",
    "noisy_batch_norm",
    "population",
    "CPU_POOL_KERNELS",
]

_FACTORIES: dict[str, Callable[..., Norm]] = {
    "batch": batch_norm,
    "group": group_norm,
    "layer": layer_norm,
    "instance": instance_norm,
    "renorm": batch_renorm,
    "ghost": ghost_batch_norm,
    "noisy": noisy_batch_norm,
    "decorrelated": decorrelated_batch_norm,
    "none": identity,
}


# Norms whose train step calls a LAPACK kernel (jnp.linalg.eigh) that on XLA CPU splits its batch
# of matrices over the same intra-op thread pool the devices' programs run on, and then waits for
# the pieces. With one program per host device and as many pool threads as cores, every thread can
# end up waiting and none is left to run the pieces: the process hangs, idle (seen on 2 host
# devices with 2 cores, `bnexp run whitening`, in jaxlib 0.10.2's lapack_ssyevd_ffi ->
# jax::ParallelBatchMap -> BlockingCounter::Wait on both pool threads). The engine trains their
# groups on one CPU device (bnexp.engine.layout.plan_group).
CPU_POOL_KERNELS = frozenset({"decorrelated"})


def names() -> list[str]:
    """Registry names, in a fixed order."""
    return list(_FACTORIES)


def get(name: str, **options: Any) -> Norm:
    """Build a norm by registry name (for configs and the CLI); options go to its factory."""
    if name not in _FACTORIES:
        raise NormOptionError(f"unknown norm {name!r}; choose from {', '.join(_FACTORIES)}")
    return _FACTORIES[name](**options)
