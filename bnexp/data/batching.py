"""Which training examples each step sees: deterministic per data seed, computed on the host once.

The engine keeps the whole dataset on the device and gathers `x[idx]` inside its compiled loop;
this module only produces the index arrays. Epoch e of data seed s is the permutation drawn by
`np.random.default_rng([s, e])`, cut into `num_train // batch_size` batches (the last partial
batch is dropped). So a step's batch depends only on (s, step): trials that share a data seed see
the same batches in the same order, and a run resumed at any step sees what it would have seen.
"""

from __future__ import annotations

import numpy as np


def epoch_permutation(data_seed: int, epoch: int, num_train: int) -> np.ndarray:
    """The order of the training examples in epoch `epoch` for `data_seed` (int64, (num_train,))."""
    if data_seed < 0 or epoch < 0:
        raise ValueError(f"data_seed and epoch must be >= 0, got {data_seed}, {epoch}")
    return np.random.default_rng([data_seed, epoch]).permutation(num_train)


def batch_indices(
    data_seed: int, start_step: int, num_steps: int, num_train: int, batch_size: int
) -> np.ndarray:
    """Indices of the examples of steps [start_step, start_step + num_steps): int32 (num_steps, batch_size).

    Each needed epoch's permutation is computed once and sliced, so 50,000 steps of 60 from 60,000
    examples take a few hundred milliseconds. Splitting a range into consecutive calls gives the
    same rows as one call.
    """
    if batch_size < 1 or num_train < batch_size:
        raise ValueError(f"need 1 <= batch_size <= num_train, got {batch_size} and {num_train}")
    if start_step < 0 or num_steps < 0:
        raise ValueError(f"start_step and num_steps must be >= 0, got {start_step}, {num_steps}")
    steps_per_epoch = num_train // batch_size
    if num_steps == 0:
        return np.empty((0, batch_size), dtype=np.int32)
    stop = start_step + num_steps
    blocks = []
    for epoch in range(start_step // steps_per_epoch, (stop - 1) // steps_per_epoch + 1):
        first = epoch * steps_per_epoch
        perm = epoch_permutation(data_seed, epoch, num_train)
        batches = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        blocks.append(
            batches[max(start_step, first) - first : min(stop, first + steps_per_epoch) - first]
        )
    return np.concatenate(blocks).astype(np.int32)
