"""The engine's layout plan (engine.plan_group): decided once per group, what the programs use,
reported through run_sweep(on_plan=...) and `bnexp run/compare --verbose`."""

from __future__ import annotations

import json
import subprocess

import jax
from _child import ROOT, child_env, cli, python_code

from bnexp import engine, train
from bnexp.models import ModelSpec
from bnexp.sweep import Trial, run_sweep

PAPER = engine.ProgramConfig(train.StepConfig(ModelSpec(), "sgd"), 60)
MOMENTUM = engine.ProgramConfig(train.StepConfig(ModelSpec(), "momentum"), 60)
CNN = engine.ProgramConfig(
    train.StepConfig(ModelSpec(kind="cnn", channels=(16, 32), dense=(64,))), 64
)


def _one_device():
    return engine.make_mesh(jax.devices()[:1])


def test_blocks_pad_each_device_to_whole_blocks_and_the_group_updates_the_first_weight():
    plan, mesh, cfg = engine.plan_group(PAPER, 5, _one_device(), members_per_block=2)
    assert (plan.members, plan.pieces, plan.padded_members, plan.devices) == (5, 1, 6, 1)
    assert (plan.members_per_block, plan.blocks, plan.squeezed) == (2, 3, False)
    assert cfg.member_block == 2 and mesh.devices.size == 1
    assert plan.first_weight == "(D, members, H)" and not plan.unrolled
    want = tuple(sorted(engine.compiler_options(ModelSpec(), "cpu").items()))
    assert plan.xla_options == want and len(want) == 2


def test_one_member_is_squeezed_onto_one_device():
    plan, mesh, cfg = engine.plan_group(PAPER, 1, engine.make_mesh())
    assert (plan.devices, plan.padded_members, plan.members_per_block) == (1, 1, 0)
    assert plan.squeezed and cfg.member_block == 0 and mesh.devices.size == 1


def test_pieces_blocks_of_one_and_the_per_member_first_weight():
    plan, _, cfg = engine.plan_group(MOMENTUM, 3, _one_device(), max_members=2, members_per_block=1)
    assert (plan.pieces, plan.padded_members, plan.members_per_block, plan.blocks) == (2, 2, 1, 2)
    assert plan.squeezed and cfg.member_block == 1
    assert plan.first_weight == "per member"  # momentum: each member updates its own weight


def test_no_blocks_when_the_members_fit_and_cnn_defaults():
    plan, _, cfg = engine.plan_group(PAPER, 4, _one_device(), members_per_block=4)
    assert plan.members_per_block == 0 and plan.blocks == 1 and cfg.member_block == 0
    cnn, _, _ = engine.plan_group(CNN, 2, _one_device(), members_per_block=0)
    assert cnn.first_weight == "-" and cnn.xla_options == () and not cnn.squeezed


def test_plan_line_names_every_decision():
    plan, _, _ = engine.plan_group(PAPER, 5, _one_device(), members_per_block=2)
    line = plan.line()
    assert "\n" not in line
    for part in (
        "members 5 in 1 piece(s) of 6",
        "devices 1 (6 each, 3 blocks of 2)",
        "squeezed no",
        "first weight (D, members, H)",
        "steps rolled loop",
        "xla_disable_hlo_passes=tree_reduction_rewriter",
    ):
        assert part in line, (part, line)


def test_run_sweep_reports_each_groups_plan_before_it_runs():
    base = Trial(
        model=ModelSpec(widths=(16, 16, 10), norm="batch"),
        dataset="synthetic",
        data_options=(("n_train", 256), ("n_test", 128), ("dim", 16), ("seed", 0)),
        batch_size=16,
        steps=4,
        eval_every=4,
    )
    trials = [Trial(**{**base.__dict__, "lr": lr}) for lr in (0.1, 0.2, 0.3)]
    trials.append(Trial(**{**base.__dict__, "batch_size": 32}))  # a second group
    plans = []
    results = run_sweep(
        trials, devices=jax.devices()[:1], member_block=2, on_plan=lambda g, p: plans.append((g, p))
    )
    assert [g for g, _ in plans] == [0, 1]
    first = plans[0][1]
    assert first.members == 3 and first.members_per_block == 2 and first.padded_members == 4
    assert results[0].extra["padded_members"] == first.padded_members
    assert results[0].extra["member_block"] == first.members_per_block
    assert plans[1][1].members == 1 and plans[1][1].squeezed


def test_verbose_prints_one_plan_line_per_group_on_stderr(tmp_path):
    out = tmp_path / "runs"
    args = ["compare", "--preset", "smoke", "--steps", "4", "--no-plots", "--json", "--verbose"]
    p = subprocess.run(
        cli(*args, "--out", str(out)),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    json.loads(p.stdout)  # stdout stays one JSON document
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("plan: group ")]
    assert [ln.split(":")[1] for ln in lines] == [" group 1", " group 2"], p.stderr[-2000:]
    assert all("| first weight " in ln and "| XLA " in ln for ln in lines)


def test_norms_with_pool_kernels_train_on_one_cpu_device():
    """A decorrelated-BN group (jnp.linalg.eigh: a LAPACK kernel that splits its batch over XLA
    CPU's thread pool and waits) trains on one device: on two host devices with two cores both
    pool threads ran a program waiting in eigh and the process hung (norms.CPU_POOL_KERNELS)."""
    code = (
        "from bnexp import sweep; sweep.configure_host_devices(2)\n"
        "import jax; from bnexp import engine, train; from bnexp.models import ModelSpec\n"
        "for norm in ('decorrelated', 'batch'):\n"
        "    spec = ModelSpec(widths=(16, 16, 10), norm=norm)\n"
        "    cfg = engine.ProgramConfig(train.StepConfig(spec), 16)\n"
        "    plan, mesh, _ = engine.plan_group(cfg, 4, engine.make_mesh(), members_per_block=0)\n"
        "    print(jax.device_count(), plan.devices, mesh.devices.size, plan.line())\n"
    )
    p = python_code(code, BNEXP_HOST_DEVICES="2")
    assert p.returncode == 0, p.stderr[-3000:]
    dbn, bn = p.stdout.strip().splitlines()
    assert dbn.split()[:3] == ["2", "1", "1"] and "one device: decorrelated" in dbn, dbn
    assert bn.split()[:3] == ["2", "2", "2"] and "one device" not in bn, bn
