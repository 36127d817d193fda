"""Sweeps: trials -> groups by static signature -> one compiled, vmapped program per group.

CONTRACT (callers rely on these names; the engine issue fills in the implementation):

    trials = [Trial(model=ModelSpec(norm="batch"), lr=lr, seed=s) for lr in lrs for s in range(3)]
    results = run_sweep(trials, progress=cb, on_group_done=save)   # list[TrialResult], input order

- Static fields (model, dataset, batch_size, steps, eval_every, optimizer, probes, the *names* in
  norm_call, divergence_factor) form the group signature: one compiled program per group.
- Numeric fields lr, momentum, init_scale, seed, data_seed and the *values* of norm_call are traced
  data, vmapped over members. Members sharing data_seed see the same batches in the same order.
- progress(event: ProgressEvent) is called with group index/count, step, total steps, and phase
  ("compiling" | "training" | "done"). on_group_done(group_results: list[TrialResult]) is called as
  soon as a group finishes, so callers can save results before the sweep ends.
- history arrays all have length E = number of evaluation points (step 0 is NOT an eval point; the
  points are eval_every, 2*eval_every, ..., steps). Keys: "step", "train_loss" (mean training loss
  over the steps since the previous point), "test_acc", "test_loss" (eval mode, running stats),
  "test_acc_batch" (batch-statistics mode, test set split into batches of batch_size), plus one key
  per requested probe output (e.g. "percentiles" with shape (E, 3)).
- A diverged member (loss non-finite or > divergence_factor x its initial loss) is frozen: its
  parameters stop changing, diverged_at is the step, and its history after that step is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnexp.models import ModelSpec


@dataclass(frozen=True)
class Trial:
    """One training run: a full configuration plus seeds."""

    model: ModelSpec = ModelSpec()
    dataset: str = "mnist-5k"
    batch_size: int = 60
    steps: int = 1000
    eval_every: int = 100
    optimizer: str = "sgd"  # "sgd" | "momentum" | "adam"
    lr: float = 0.5
    momentum: float = 0.9  # used by the "momentum" optimizer
    init_scale: float = 1.0
    seed: int = 0  # initialization (and dropout/noise) seed
    data_seed: int = 0  # batch order seed
    norm_call: tuple[tuple[str, float], ...] = ()  # traced per-call norm options (noise, r_max...)
    probes: tuple[str, ...] = ()
    divergence_factor: float = 1e3
    tag: str = ""  # free label (arm name); not part of the signature


@dataclass
class TrialResult:
    trial: Trial
    history: dict[str, np.ndarray]
    diverged_at: int | None
    final_test_accuracy: float | None  # None when diverged
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgressEvent:
    group: int
    groups: int
    step: int
    total: int
    members: int
    phase: str  # "compiling" | "training" | "done"
