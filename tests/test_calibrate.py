"""Member-block calibration (issue 22): candidates, the pick, the per-machine cache (fake timers,
no timing asserted), the switch, and that the numbers of a sweep do not depend on the block size
the calibration picks."""

from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest
from _child import python_code

from bnexp import calibrate, engine, train
from bnexp.models import ModelSpec
from bnexp.sweep import Trial, run_sweep

DATA = (("n_train", 256), ("n_test", 64), ("dim", 16), ("seed", 0))
SPEC = ModelSpec(widths=(16, 16, 10), norm="batch")
HP = {"lr": 0.1, "momentum": 0.0, "init_scale": 1.0, "seed": 0, "norm_call": {}}


def test_candidates_span_the_cache_model_and_stop_at_the_members():
    assert calibrate.candidates(4, 32) == [2, 4, 8, 16]
    assert calibrate.candidates(4, 10) == [2, 4, 8, 10]  # 10: one block of all
    assert calibrate.candidates(1, 3) == [1, 2, 3]
    assert calibrate.candidates(0, 5) == [1, 2, 4]


def test_pick_counts_padding_and_prefers_larger_blocks_on_ties():
    # 30 members: blocks of 4 train 32 (cost x 32/30), blocks of 5 train 30
    assert calibrate.pick({4: 1.0, 5: 1.05}, 30) == 5
    assert calibrate.pick({4: 1.0, 5: 1.1}, 30) == 4
    assert calibrate.pick({2: 1.0, 4: 1.0}, 8) == 4


def test_calibration_measures_once_per_machine_and_shape(tmp_path):
    path = tmp_path / "calibration.json"
    timed: list[int] = []
    fake = {2: 3e-6, 4: 2e-6, 8: 2.5e-6, 16: 4e-6, 10: 9e-6}

    def measure(mb: int) -> float:
        timed.append(mb)
        return fake[mb]

    got = calibrate.calibrated("cpu A", "shape", [2, 4, 8, 16], 32, measure, path)
    assert got == (4, {mb: fake[mb] for mb in (2, 4, 8, 16)}, 4)
    assert timed == [2, 4, 8, 16]
    again = calibrate.calibrated("cpu A", "shape", [2, 4, 8, 16], 32, measure, path)
    assert again == (4, got[1], 0) and timed == [2, 4, 8, 16]  # from the cache
    # a group of 10 per device: only the new candidate (one block of 10) is timed
    ten = calibrate.calibrated("cpu A", "shape", [2, 4, 8, 10], 10, measure, path)
    assert timed[4:] == [10] and ten[0] == 4  # 4 pads 10 to 12: 2 * 12/10 = 2.4 < 3 (blocks of 2)
    # another machine calibrates again
    calibrate.calibrated("cpu B", "shape", [2, 4], 4, measure, path)
    assert timed[5:] == [2, 4]
    doc = json.loads(path.read_text())
    assert set(doc) == {"cpu A", "cpu B"}
    assert doc["cpu A"]["shape"]["seconds"] == {str(k): fake[k] for k in (2, 4, 8, 16, 10)}


def test_a_damaged_cache_is_measured_again(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    got = calibrate.calibrated("m", "s", [1, 2], 2, {1: 2.0, 2: 1.0}.__getitem__, path)
    assert got[0] == 2 and json.loads(path.read_text())["m"]["s"]["seconds"] == {"1": 2.0, "2": 1.0}


def test_machine_key_names_cpu_devices_and_jax():
    key = calibrate.machine_key(jax.devices()[:1])
    assert calibrate.cpu_name() in key and f"jax {jax.__version__}" in key and "1 x cpu" in key


@pytest.mark.parametrize("shared", [True, False])
def test_time_block_times_the_real_program_with_a_fake_timer(shared):
    """time_block compiles and runs group_steps on mb members; with a fake clock its figure is
    the best call over steps x members (a real run of the program, no real timing asserted)."""
    cfg = engine.ProgramConfig(train.StepConfig(SPEC, "sgd", 100), 8, shared_batch=shared)
    mesh = engine.make_mesh(jax.devices()[:1])
    rng = np.random.default_rng(0)
    data = {"x_train": rng.random((64, 16), np.float32), "y_train": rng.integers(0, 10, 64)}
    data["y_train"] = data["y_train"].astype(np.int32)
    ticks = iter([0.0, 0.9, 5.0, 5.3, 9.0, 9.6])  # calls of 0.9, 0.3, 0.6 s
    s = calibrate.time_block(cfg, 3, mesh, HP, data, steps=4, reps=3, timer=lambda: next(ticks))
    assert s == pytest.approx(0.3 / (4 * 3))


def test_choose_member_block_uses_the_model_when_off_and_logs(monkeypatch, caplog, tmp_path):
    cfg = engine.ProgramConfig(train.StepConfig(ModelSpec(), "sgd", 100), 60)
    mesh = engine.make_mesh(jax.devices()[:1])
    monkeypatch.setattr(calibrate, "_cache_path", lambda: tmp_path / "calibration.json")
    caplog.set_level(logging.INFO, logger="bnexp.calibrate")
    monkeypatch.setenv(calibrate.ENV, "0")
    boom = lambda mb: pytest.fail("measured with calibration off")  # noqa: E731
    got = calibrate.choose_member_block(cfg, 32, mesh, HP, {}, measure=boom)
    assert got == engine.member_block(cfg, 32, "cpu") == 4  # the paper MLP's model: 4
    assert "cache-size model, calibration off" in caplog.text
    monkeypatch.setenv(calibrate.ENV, "1")
    fake = {2: 1.0, 4: 2.0, 8: 3.0, 16: 4.0}
    assert calibrate.choose_member_block(cfg, 32, mesh, HP, {}, measure=fake.__getitem__) == 2
    assert "blocks of 2 of 32 on each of 1 device(s)" in caplog.records[-1].getMessage()
    # 12 members per device: candidates 2, 4, 8 (cached above) and one block of 12, fastest
    got = calibrate.choose_member_block(cfg, 12, mesh, HP, {}, measure={12: 0.5}.__getitem__)
    assert got == 0 and "one block of 12" in caplog.records[-1].getMessage()
    # 3 members: blocks of 2 are faster per member-step (1.0 vs 1.2 us) but pad 3 members to 4
    # slots (1.33 us per real member-step), so one block of 3 wins; the line shows both figures
    monkeypatch.setattr(calibrate, "_cache_path", lambda: tmp_path / "fresh.json")
    got = calibrate.choose_member_block(cfg, 3, mesh, HP, {}, measure={2: 1e-6, 3: 1.2e-6}.get)
    assert got == 0
    line = caplog.records[-1].getMessage()
    assert "one block of 3" in line and "2 1.0 [1.3 for 4 slots], 3 1.2)" in line
    assert calibrate.choose_member_block(cfg, 1, mesh, HP, {}, measure=boom) == 0  # nothing to do


@pytest.mark.parametrize("own", [False, True])
def test_results_do_not_depend_on_the_calibrated_block_size(monkeypatch, tmp_path, own):
    """The same 6-member sweep with the calibration forced to pick blocks of 1, 2 or 4 (padded)
    or one block: every history equal to float32 rounding, a diverging member included."""
    monkeypatch.setenv(calibrate.ENV, "1")
    monkeypatch.setattr(calibrate, "MIN_STEPS", 1)  # a 12-step sweep calibrates all the same
    lrs = (0.05, 0.2, 0.5, 1.0, 2.0, 1e7)
    trials = [
        Trial(
            model=SPEC,
            dataset="synthetic",
            data_options=DATA,
            batch_size=16,
            steps=12,
            eval_every=6,
            lr=lr,
            data_seed=i if own else 0,
        )
        for i, lr in enumerate(lrs)
    ]
    monkeypatch.setattr(calibrate, "candidates", lambda fit, local: [1, 2, 4, 6])
    runs = {}
    for best in (1, 2, 4, 6):
        monkeypatch.setattr(
            calibrate, "time_block", lambda cfg, mb, best=best, **_: 1.0 if mb == best else 2.0
        )
        monkeypatch.setattr(calibrate, "_cache_path", lambda best=best: tmp_path / f"{best}.json")
        runs[best] = run_sweep(trials, devices=jax.devices()[:1])
        assert runs[best][0].extra["member_block"] == (0 if best == 6 else best)
    assert runs[6][5].diverged_at is not None
    for best in (1, 2, 4):
        for a, b in zip(runs[best], runs[6], strict=True):
            assert a.history.keys() == b.history.keys() and a.diverged_at == b.diverged_at
            for k in a.history:
                np.testing.assert_allclose(
                    a.history[k], b.history[k], rtol=1e-5, atol=1e-6, err_msg=f"{best} {k}"
                )


def test_verbose_says_what_the_engine_chose_one_line_per_group(tmp_path):
    import os
    import subprocess

    from _child import cli

    env = dict(os.environ, NO_COLOR="1", BNEXP_DATA_DIR=str(tmp_path / "data"))
    env[calibrate.ENV] = "0"
    args = ("--verbose", "run", "lr-sweep", "--preset", "smoke", "--out", str(tmp_path / "runs"))
    p = subprocess.run(
        cli(*args, "--no-plots"), capture_output=True, text=True, env=env, timeout=900
    )
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [x for x in p.stderr.splitlines() if x.startswith("bnexp: member blocks:")]
    assert len(lines) == 2, p.stderr[-2000:]  # lr-sweep's smoke preset: two groups
    assert all("cache-size model, calibration off" in x for x in lines)


def test_time_block_on_a_smaller_mesh_than_the_data():
    """A decorrelated-BN group trains on one of two CPU devices (engine.plan_group) while the
    run's data are replicated over both: calibration must time it on its own mesh (this raised
    "incompatible devices" in the whitening paper preset, the first group long enough to
    calibrate)."""
    code = (
        "from bnexp import sweep; sweep.configure_host_devices(2)\n"
        "import jax, numpy as np; from jax.sharding import NamedSharding, PartitionSpec\n"
        "from bnexp import calibrate, engine, train; from bnexp.models import ModelSpec\n"
        "spec = ModelSpec(widths=(16, 16, 10), norm='decorrelated')\n"
        "cfg = engine.ProgramConfig(train.StepConfig(spec, 'sgd', 100), 8)\n"
        "both = NamedSharding(engine.make_mesh(), PartitionSpec())\n"
        "rng = np.random.default_rng(0)\n"
        "data = {'x_train': jax.device_put(rng.random((64, 16), np.float32), both),\n"
        "        'y_train': jax.device_put(rng.integers(0, 10, 64).astype(np.int32), both)}\n"
        "hp = {'lr': 0.1, 'momentum': 0.0, 'init_scale': 1.0, 'seed': 0, 'norm_call': {}}\n"
        "one = engine.make_mesh(jax.devices()[:1])\n"
        "print(calibrate.time_block(cfg, 2, one, hp, data, steps=2, reps=1) > 0)\n"
    )
    p = python_code(code, BNEXP_HOST_DEVICES="2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "True"


def test_a_calibration_is_never_timed_beside_another_group(monkeypatch, tmp_path, caplog):
    """run_sweep compiles the next group while one trains (engine.prefetch_group), but a plan
    that needs a calibration not yet cached stops that prefetch: the timing runs in the
    group's own run, after the group before it is done, and is logged once per group."""
    monkeypatch.setenv(calibrate.ENV, "1")
    monkeypatch.setattr(calibrate, "MIN_STEPS", 1)
    monkeypatch.setattr(calibrate, "candidates", lambda fit, local: [2, 6])
    monkeypatch.setattr(calibrate, "_cache_path", lambda: tmp_path / "calibration.json")
    caplog.set_level(logging.INFO, logger="bnexp.calibrate")
    training, timed = [], []

    def time_block(cfg, mb, **_):
        timed.append((cfg.batch_size, mb, list(training)))
        return 1.0 if mb == 2 else 2.0

    monkeypatch.setattr(calibrate, "time_block", time_block)

    def progress(e):
        if e.phase == "training" and e.group not in training:
            training.append(e.group)
        elif e.phase == "done":
            training.remove(e.group)

    trials = [
        Trial(
            model=SPEC,
            dataset="synthetic",
            data_options=DATA,
            batch_size=b,
            steps=12,
            eval_every=6,
            lr=lr,
        )
        for b in (16, 8)
        for lr in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    ]
    got = run_sweep(trials, devices=jax.devices()[:1], progress=progress)
    assert timed == [(16, 2, []), (16, 6, []), (8, 2, []), (8, 6, [])]
    assert [r.extra["member_block"] for r in got] == [2] * 12
    lines = [r.getMessage() for r in caplog.records if "member blocks" in r.getMessage()]
    assert len(lines) == 2 and all("timed now" in x for x in lines), lines
