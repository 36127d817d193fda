"""bnexp bench: FLOP counts by hand, ratios and targets from made-up timings, and one smoke run of
`bnexp bench --quick --no-torch --json` through the real CLI (schema and positive finite figures
only: timings are never asserted in tests; the benchmark itself is the performance evidence)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnexp import bench
from bnexp.models import ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def test_paper_mlp_step_is_35_8_mflop():
    macs = 784 * 100 + 100 * 100 + 100 * 100 + 100 * 10
    assert bench.forward_flops(bench.MLP, 60) == 2 * 60 * macs
    assert bench.step_flops(bench.MLP, 60) == 3 * 2 * 60 * macs
    assert round(bench.step_flops(bench.MLP, 60) / 1e6, 1) == 35.8


def test_cnn_flops_count_convs_at_their_resolution():
    spec = ModelSpec(kind="cnn", channels=(32, 64), dense=(128,), activation="relu")
    convs = 28 * 28 * 9 * 1 * 32 + 14 * 14 * 9 * 32 * 64
    dense = 7 * 7 * 64 * 128 + 128 * 10
    assert bench.forward_flops(spec, 64) == 2 * 64 * (convs + dense)
    assert bench.CNN.channels == (16, 32) and bench.CNN.dense == (64,)
    assert bench.CNN.input_shape == (28, 28, 1) and bench.CNN.activation == "relu"


def _case(
    name: str, seconds: list[float], steps: int = 100, flops: float = 1e9, members: int = 1
) -> bench.Case:
    c = bench.Case(name, name, lambda: None, lambda: None, steps, flops, members)
    c.times, c.compile_s = list(seconds), 1.0
    return c


def test_summary_ratios_targets_and_pytorch_reference():
    cases = [
        _case("matmul_1dev", [0.02, 0.01], flops=1e9),  # best call: 100 GFLOP/s
        _case("mlp_bn", [0.1, 0.12, 0.1]),  # 1000 steps/s (median)
        _case("mlp_plain", [0.09, 0.09, 0.08]),
        _case(
            f"sweep_{max(bench.QUICK.sweep_members)}",
            [1.0, 1.0, 1.2],
            steps=6400,
            flops=6400 * 35.8e6,
            members=64,
        ),
        _case("cnn", [1.0, 1.0, 1.0], steps=20),
        _case("torch_mlp_bn", [0.5, 0.5, 0.5]),  # 200 steps/s with 2 threads
        _case("torch_mlp_bn_1t", [0.25, 0.25, 0.25]),  # 400 with 1: the reference
        _case("torch_cnn", [1.0, 1.0, 1.0], steps=10),
    ]
    fig = bench.summarize(cases, bench.QUICK)
    assert fig["matmul"]["peak_gflops"] == pytest.approx(100.0)
    r = fig["ratios"]
    assert r["bn_overhead"] == pytest.approx(100 / 0.09 / 1000)
    assert r["sweep_vs_torch"] == pytest.approx(6400 / 400)
    assert r["sweep_fraction_of_peak"] == pytest.approx(6400 * 35.8e6 / 1e11)
    assert r["cnn_vs_torch"] == pytest.approx(2.0)
    assert r["torch_bn_overhead"] is None  # no PyTorch plain-MLP case measured
    assert fig["torch_reference"]["torch_mlp_bn"] == "torch_mlp_bn_1t"
    assert fig["targets"]["sweep_vs_torch"] == {
        "target": ">= 6",
        "value": r["sweep_vs_torch"],
        "met": True,
    }
    assert fig["targets"]["bn_overhead"]["met"] is True
    assert fig["targets"]["cnn_vs_torch"]["met"] is True
    mlp = fig["cases"]["mlp_bn"]
    assert (mlp["steps_per_s_min"], mlp["steps_per_s"], mlp["steps_per_s_max"]) == pytest.approx(
        (100 / 0.12, 1000, 1000)
    )


def _positive_finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_cli_quick_no_torch_json():
    env = dict(os.environ, NO_COLOR="1")
    p = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "bench", "--quick", "--no-torch", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,  # with the peers and the scaling children; minutes on an idle machine
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    fig = json.loads(p.stdout)  # the whole stdout is one JSON document
    assert "bench:" in p.stderr  # progress goes to stderr
    assert set(fig) >= {
        "machine",
        "config",
        "matmul",
        "flops_per_step",
        "sweep_case",
        "cases",
        "ratios",
        "targets",
        "torch_reference",
    }
    assert fig["machine"]["devices"] >= 1 and fig["machine"]["jax"]
    assert _positive_finite(fig["matmul"]["peak_gflops"])
    members = fig["config"]["sweep_members"]
    want = {"mlp_bn", "mlp_plain", "cnn", f"jax_vmap_{max(members)}"}
    assert set(fig["cases"]) == want | {f"sweep_{m}" for m in members}  # --no-torch: no PyTorch
    for name, c in fig["cases"].items():
        for key in (
            "steps_per_s",
            "steps_per_s_min",
            "steps_per_s_max",
            "gflops",
            "fraction_of_peak",
            "seconds_per_call",
        ):
            assert _positive_finite(c[key]), (name, key, c[key])
        assert c["steps_per_s_min"] <= c["steps_per_s"] <= c["steps_per_s_max"]
        assert c["compile_s"] >= 0 and c["reps"] == fig["config"]["reps"]
    assert fig["cases"][fig["sweep_case"]]["members"] == max(members)
    r = fig["ratios"]
    for key in ("bn_overhead", "sweep_fraction_of_peak", "mlp_fraction_of_peak", "sweep_vs_single"):
        assert _positive_finite(r[key]), key
    assert _positive_finite(r["sweep_vs_jax_vmap"])
    for key in (
        "sweep_vs_torch",
        "cnn_vs_torch",
        "mlp_vs_torch",
        "torch_bn_overhead",
        "sweep_vs_torch_ensemble",
    ):
        assert r[key] is None, key
    cfg = fig["config"]
    got = {(row["devices"], row["members"]) for row in fig["scaling"]}
    assert got == {(d, m) for d in cfg["scaling_devices"] for m in cfg["scaling_members"]}
    for row in fig["scaling"]:
        assert _positive_finite(row["model_steps_per_s"]) and _positive_finite(
            row["eval_s_per_point"]
        )
        assert row["devices_used"] == min(row["devices"], row["members"]) and row["points"] == 3
    assert fig["targets"]["sweep_vs_torch"]["met"] is None
    assert fig["targets"]["bn_overhead"]["met"] in (True, False)


@pytest.mark.skipif(bench.torch_version() is not None, reason="PyTorch is importable here")
def test_torch_flag_without_pytorch_is_a_usage_error():
    p = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "bench", "--torch", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "PyTorch is not importable" in p.stderr


def test_peers_run_and_take_their_place_beside_the_sweep():
    """The peers (bnexp.bench_peers) compile, train a tiny ensemble, and their ratios sit beside
    sweep_vs_torch in the summary (no timing asserted: made-up times for the other cases)."""
    from bnexp import bench_peers

    cases = [bench_peers.jax_vmap_case(2, 2)]
    if bench.torch_version() is not None:
        cases += bench_peers.torch_ensemble_cases(2, 2, 2)
    for c in cases:
        assert c.setup() is None or c.setup() >= 0  # compiles (JAX) and warms up
        c.call()
        c.times = [0.5]
    jax_case = cases[0]
    assert (jax_case.name, jax_case.members, jax_case.model_steps) == ("jax_vmap_2", 2, 4)
    assert jax_case.flops == 4 * bench.step_flops(bench.MLP, 60)
    config = bench.BenchConfig(sweep_members=(2,))
    others = [
        _case("matmul_1dev", [0.01]),
        _case("mlp_bn", [0.1]),
        _case("mlp_plain", [0.1]),
        _case("sweep_2", [0.25], steps=4, members=2),
        _case("cnn", [1.0]),
    ]
    fig = bench.summarize(others + cases, config)
    r = fig["ratios"]
    assert r["sweep_vs_jax_vmap"] == pytest.approx(2.0)  # 16 vs 8 model-steps/s
    if bench.torch_version() is None:
        assert r["sweep_vs_torch_ensemble"] is None
    else:
        assert {"torch_ensemble_2", "torch_ensemble_2_1t"} <= set(fig["cases"])
        assert r["sweep_vs_torch_ensemble"] == pytest.approx(2.0)
        assert fig["torch_reference"]["torch_ensemble_2"] in (
            "torch_ensemble_2",
            "torch_ensemble_2_1t",
        )
    json.dumps(fig, allow_nan=False)


def test_scaling_children_report_each_device_count():
    from bnexp import bench_scaling

    rows = bench_scaling.scaling(members=(1, 2), devices=(1, 2), steps=2, reps=1)
    assert [(r["devices"], r["members"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in rows:
        assert "error" not in r, r
        assert _positive_finite(r["model_steps_per_s"]) and _positive_finite(r["eval_s_per_point"])
        assert r["devices_used"] == min(r["devices"], r["members"]) and r["points"] == 3
        assert r["compile_s"] >= 0
