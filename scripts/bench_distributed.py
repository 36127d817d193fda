"""The distributed scaling figure (BENCHMARKS.md): model-steps/s of one 64-member sweep.

    python scripts/bench_distributed.py [--steps 400] [--members 64]

runs the same sweep (the paper MLP 784-100-100-100-10 with BN, batch 60, SGD, 64 learning rates,
one shared batch order, full MNIST) as 1 process x 2 host devices, 2 processes x 1 device
(a distributed job on 127.0.0.1) and, for reference, 1 process x 1 device. Each configuration
runs the sweep twice in one process and times the second, warm run (programs compiled), less its
evaluation seconds: model-steps/s = members x steps / training seconds. On one machine the two
processes share its cores, so this is a correctness-and-overhead figure; real speedups need
more cores or hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(steps: int, members: int, devices: int, coordinator: str | None, pid: int, n: int):
    sys.path.insert(0, str(ROOT))
    from experiments import runner

    os.environ["BNEXP_HOST_DEVICES"] = str(devices)
    from bnexp import distributed

    dist = distributed.settings(coordinator, n, pid) if coordinator else None
    runner.setup_process(dist)
    import numpy as np

    from bnexp.models import ModelSpec
    from bnexp.sweep import Trial, run_sweep

    model = ModelSpec(widths=(784, 100, 100, 100, 10), activation="sigmoid", norm="batch")
    lrs = np.geomspace(0.01, 3.0, members)
    trials = [
        Trial(
            model=model, steps=steps, eval_every=steps, eval_per_decade=0, lr=float(lr), tag=f"{i}"
        )
        for i, lr in enumerate(lrs)
    ]
    run_sweep(trials)  # compile (and warm the caches)
    t0 = time.perf_counter()
    out = run_sweep(trials)
    wall = time.perf_counter() - t0
    evals = max(r.extra.get("eval_seconds", 0.0) for r in out)
    if distributed.is_main():
        print(
            json.dumps(
                {
                    "processes": distributed.process_count(),
                    "devices_per_process": devices,
                    "members": members,
                    "steps": steps,
                    "wall_seconds": wall,
                    "eval_seconds": evals,
                    "model_steps_per_second": members * steps / (wall - evals),
                    "final_acc": [r.final_test_accuracy for r in out],
                }
            ),
            flush=True,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(steps: int, members: int, processes: int, devices: int) -> dict:
    port = free_port()
    procs = []
    for pid in range(processes):
        argv = [sys.executable, __file__, "--child", "--steps", str(steps)]
        argv += ["--members", str(members), "--devices", str(devices)]
        if processes > 1:
            argv += ["--coordinator", f"127.0.0.1:{port}", "--pid", str(pid), "--n", str(processes)]
        procs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        )
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a process failed: {[p.returncode for p in procs]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--coordinator")
    ap.add_argument("--pid", type=int, default=0)
    ap.add_argument("--n", type=int, default=1)
    a = ap.parse_args()
    if a.child:
        child(a.steps, a.members, a.devices, a.coordinator, a.pid, a.n)
        return
    rows = [launch(a.steps, a.members, p, d) for p, d in ((1, 2), (2, 1), (1, 1))]
    same = rows[0]["final_acc"] == rows[1]["final_acc"]
    print(f"load average before/after: {os.getloadavg()[0]:.2f}")
    print("| processes x devices | model-steps/s | wall s (warm) | eval s |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['processes']} x {r['devices_per_process']} | {r['model_steps_per_second']:,.0f} "
            f"| {r['wall_seconds']:.2f} | {r['eval_seconds']:.2f} |"
        )
    print(f"final accuracies 1x2 == 2x1: {same}")


if __name__ == "__main__":
    main()
