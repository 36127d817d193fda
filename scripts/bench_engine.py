"""Engine throughput in model-steps/s (members x steps / second, compilation excluded, evaluation
points included), best of --repeats runs of the same compiled program.

MLP (default): a 64-member lr sweep of the paper's MLP (784-100-100-100-10, sigmoid, BN) on
mnist-5k, batch 60: shared batch vs own batches (one data seed per member, interleaved in one
process), on 1 host device vs 2 (a subprocess each, alternating for --rounds rounds: XLA_FLAGS
must be set before JAX starts).
CNN (--kind cnn): conv16-conv32-dense64, batch 64, 1 and 8 members: lax.conv in a rolled
lax.scan, lax.conv in loop-free unrolled blocks, im2col in a rolled scan (the CPU default).

    .venv/bin/python scripts/bench_engine.py [--kind mlp|cnn] [--steps 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def child(a: argparse.Namespace) -> None:
    from bnexp.models import ModelSpec
    from bnexp.sweep import Trial, run_sweep

    if a.kind == "cnn":
        spec = ModelSpec(
            kind="cnn", channels=(16, 32), dense=(64,), activation="relu", conv_impl=a.conv
        )
        batch = 64
    else:
        spec, batch = ModelSpec(), 60
    variants = {"shared": [True, False]} if a.kind == "mlp" else {"shared": [True]}
    best: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    for r in range(a.repeats + 1):  # variants interleaved: load from other processes hits all
        for shared in variants["shared"]:
            trials = [
                Trial(
                    model=spec,
                    lr=0.01 * 1.1**i,
                    batch_size=batch,
                    steps=a.steps,
                    eval_every=a.steps // 2,
                    data_seed=0 if shared else i,
                )
                for i in range(a.members)
            ]
            extra = run_sweep(trials, unrolled=a.unrolled)[0].extra
            name = "shared" if shared else "own"
            if r == 0:
                compile_s[name] = extra["compile_seconds"]
                continue  # the first run pays for compilation
            best[name] = max(best.get(name, 0.0), a.members * a.steps / extra["group_seconds"])
    print(json.dumps({"steps_per_s": best, "compile_s": compile_s}))


def run_case(a: argparse.Namespace, devices: int, **case: object) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    args = [
        sys.executable,
        __file__,
        "--child",
        "--kind",
        a.kind,
        "--steps",
        str(a.steps),
        "--repeats",
        str(a.repeats),
        "--members",
        str(case["members"]),
    ]
    args += ["--unrolled", str(case["unrolled"])] if "unrolled" in case else []
    args += ["--conv", str(case["conv"])] if "conv" in case else []
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="mlp", choices=["mlp", "cnn"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conv", default="auto", choices=["auto", "xla", "im2col"])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--unrolled", type=lambda s: {"True": True, "False": False}.get(s))
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    if a.kind == "mlp":  # device counts alternate over rounds; best round reported
        cases = [dict(devices=d, members=a.members) for _ in range(a.rounds) for d in a.devices]
    else:
        cases = [
            dict(devices=1, members=m, conv=c, unrolled=u)
            for m in (1, 8)
            for c, u in (("xla", False), ("xla", True), ("im2col", False))
        ]
    for case in cases:
        res = run_case(a, **case)
        for name, v in res["steps_per_s"].items():
            print(
                f"{a.kind} {case} {name}: {v:7.0f} model-steps/s "
                f"(compile {res['compile_s'][name]:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
