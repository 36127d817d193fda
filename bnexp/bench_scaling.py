"""The bench's scaling table (issue 22): model-steps/s of an lr sweep by member count and host
device count, and seconds per evaluation point.

    rows = scaling(members=(1, 4, 16, 64, 256), devices=(1, 2), steps=50, reps=3)

The host device count is fixed when JAX starts (``--xla_force_host_platform_device_count`` in
XLA_FLAGS), so each device count runs in a child process of its own (``python -m
bnexp.bench_scaling``, this module), which prints its rows as one JSON line. In a child, each
member count is one lr-sweep-shaped group of the paper MLP with BN (learning rates 0.01 to 1, one
seed, so the batches are shared; batch 60) through ``bnexp.sweep.run_sweep`` with the engine's
default layout (its member blocks calibrated as in any run), ``steps`` steps and evaluation points
at 0, steps/2 and steps on a test set of 2,000 random examples (so a point evaluates what a
point before the last does on MNIST: engine.EVAL_SUBSET). Each is compiled and warmed up by one
call, then timed over ``reps`` calls (median). ``model_steps_per_s`` counts training alone:
members x steps over the call's wall time less the time its evaluation points took;
``eval_s_per_point`` is that evaluation time over the number of points (the last point, which
also evaluates in batch-statistics mode, included). The children run one after the other, after
the bench's own cases, not interleaved with them.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

N_TEST = 2000


def child_rows(members: Sequence[int], steps: int, reps: int) -> list[dict[str, Any]]:
    """This process's rows (its device count is whatever JAX has)."""
    import jax

    from bnexp.bench import MLP, MLP_BATCH, N_TRAIN
    from bnexp.sweep import Trial, run_sweep

    data = (("n_train", N_TRAIN), ("n_test", N_TEST), ("dim", MLP.widths[0]))
    rows = []
    for m in members:
        lrs = np.geomspace(0.01, 1.0, m) if m > 1 else [0.1]
        trials = [
            Trial(
                model=MLP,
                dataset="synthetic",
                data_options=data,
                batch_size=MLP_BATCH,
                steps=steps,
                eval_every=max(1, steps // 2),
                eval_per_decade=0,
                lr=float(lr),
            )
            for lr in lrs
        ]
        first = run_sweep(trials)[0]  # compiles and warms up
        walls, evals = [], []
        for _ in range(reps):
            t = time.perf_counter()
            extra = run_sweep(trials)[0].extra
            walls.append(time.perf_counter() - t)
            evals.append(float(extra["eval_seconds"]))
        points = len(first.history["step"])
        train_s = statistics.median(w - e for w, e in zip(walls, evals, strict=True))
        rows.append(
            {
                "devices": jax.device_count(),
                "members": m,
                "model_steps_per_s": m * steps / train_s if train_s > 0 else None,
                "eval_s_per_point": statistics.median(evals) / points,
                "seconds_per_call": statistics.median(walls),
                "compile_s": float(first.extra["compile_seconds"]),
                "member_block": first.extra["member_block"],
                "devices_used": first.extra["devices"],
                "points": points,
            }
        )
    return rows


def _child_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env.pop("BNEXP_HOST_DEVICES", None)
    root = str(Path(__file__).resolve().parents[1])  # this bnexp, not another one installed
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def scaling(
    members: Sequence[int], devices: Sequence[int], steps: int, reps: int, timeout: float = 3600
) -> list[dict[str, Any]]:
    """Rows for every (device count, member count), a child process per device count; a child
    that fails gives one row with its error instead."""
    rows: list[dict[str, Any]] = []
    for d in devices:
        args = json.dumps({"members": list(members), "steps": steps, "reps": reps})
        try:
            p = subprocess.run(
                [sys.executable, "-m", "bnexp.bench_scaling", args],
                capture_output=True,
                text=True,
                env=_child_env(d),
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            rows.append({"devices": d, "error": f"timed out after {timeout:.0f} s"})
            continue
        lines = p.stdout.strip().splitlines()
        if p.returncode != 0 or not lines:
            tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"devices": d, "error": f"child exited {p.returncode}: {tail}"})
            continue
        rows += json.loads(lines[-1])
    return rows


def main(argv: Sequence[str]) -> None:
    opts = json.loads(argv[0])
    rows = child_rows(opts["members"], opts["steps"], opts["reps"])
    sys.stdout.write(json.dumps(rows) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])


__all__ = ["N_TEST", "child_rows", "scaling"]
