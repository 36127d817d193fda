"""Named experiments: one file each, registered in one explicit dict (a duplicate is an error)."""

from __future__ import annotations

from experiments import (
    activations,
    batch_size,
    compare,
    depth,
    distributions,
    eval_mode,
    ghost_bn,
    ics,
    init_sensitivity,
    landscape,
    lr_sweep,
    noisy_bn,
    placement,
    precise_bn,
    regularization,
    scale_invariance,
    whitening,
)
from experiments.base import Experiment

_ALL = [
    compare.EXPERIMENT,
    lr_sweep.EXPERIMENT,
    init_sensitivity.EXPERIMENT,
    batch_size.EXPERIMENT,
    activations.EXPERIMENT,
    distributions.EXPERIMENT,
    noisy_bn.EXPERIMENT,
    ics.EXPERIMENT,
    landscape.EXPERIMENT,
    scale_invariance.EXPERIMENT,
    depth.EXPERIMENT,
    placement.EXPERIMENT,
    regularization.EXPERIMENT,
    ghost_bn.EXPERIMENT,
    whitening.EXPERIMENT,
    eval_mode.EXPERIMENT,
    precise_bn.EXPERIMENT,
]


def _registry(experiments: list[Experiment]) -> dict[str, Experiment]:
    out: dict[str, Experiment] = {}
    for e in experiments:
        if e.name in out:
            raise RuntimeError(f"duplicate experiment name {e.name!r}")
        out[e.name] = e
    return out


REGISTRY: dict[str, Experiment] = _registry(_ALL)
