"""Sweeps: one compiled program per group (trace counts), determinism, per-member divergence,
shared vs own batches, probes, progress, host devices, and 4 sharded host devices = 1 device."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnexp import data, engine, models, probes, sweep, train
from bnexp.engine.layout import AXIS
from bnexp.models import ModelSpec
from bnexp.sweep import Trial, run_sweep

DATA = (("n_train", 256), ("n_test", 128), ("dim", 16), ("seed", 0))
SPEC = ModelSpec(widths=(16, 16, 10), norm="batch")
BASE = Trial(
    model=SPEC, dataset="synthetic", data_options=DATA, batch_size=16, steps=20, eval_every=10
)
LRS = (0.05, 0.2, 0.5, 1.0, 2.0, 1e7)  # the last one diverges
KEYS = {"step", "train_loss", "test_acc", "test_loss", "test_acc_batch"}
POINTS = [0, 1, 2, 3, 4, 6, 7, 10, 13, 18, 20]  # BASE's evaluation steps
GRID = np.isin(POINTS, [0, 10, 20])  # step 0 and the linear grid
LAST = np.isin(POINTS, [20])  # the full point: whole test set, batch-statistics accuracy


def _trials(lrs, **kw) -> list[Trial]:
    return [Trial(**{**BASE.__dict__, "lr": lr, **kw}) for lr in lrs]


def _same(a: sweep.TrialResult, b: sweep.TrialResult, exact: bool = True) -> None:
    assert a.history.keys() == b.history.keys() and a.diverged_at == b.diverged_at
    for k in a.history:
        if exact:
            np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
        else:
            np.testing.assert_allclose(a.history[k], b.history[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def lr_sweep():
    """6 learning rates in pieces of at most 4 members (2 pieces of 3): one program."""
    engine.PROGRAMS.clear()
    before = dict(engine.PROGRAMS.traces)
    events, done = [], []
    results = run_sweep(
        _trials(LRS), progress=events.append, on_group_done=done.append, max_members=4
    )
    names = ("train_step", "eval_point", "eval_point_lite")
    traces = {k: engine.PROGRAMS.traces[k] - before.get(k, 0) for k in names}
    return results, traces, events, done


def test_one_trace_per_group_and_no_retrace_for_new_numbers(lr_sweep):
    results, traces, _, _ = lr_sweep
    assert traces == {"train_step": 1, "eval_point": 1, "eval_point_lite": 1}
    assert [r.trial.lr for r in results] == list(LRS)  # input order
    assert results[0].extra["pieces"] == 2 and results[0].extra["padded_members"] == 3
    assert results[0].extra["compile_seconds"] > 0
    assert results[0].extra["compile_work_seconds"] > 0  # the compile threads' time
    before = dict(engine.PROGRAMS.traces)
    events = []
    again = run_sweep(
        _trials((0.3, 0.4, 0.6), seed=5, init_scale=2.0), max_members=4, progress=events.append
    )
    assert dict(engine.PROGRAMS.traces) == before  # new numbers, same shapes: nothing traced
    assert again[0].extra["compile_seconds"] == again[0].extra["compile_work_seconds"] == 0.0
    assert "compiling" not in {e.phase for e in events}
    finals = [r.final_test_accuracy for r in again]
    assert len(set(finals)) > 1 or len({float(r.history["train_loss"][-1]) for r in again}) > 1


def test_history_and_divergence_per_member(lr_sweep):
    results, _, _, _ = lr_sweep
    for r in results:
        assert set(r.history) == KEYS
        np.testing.assert_array_equal(r.history["step"], POINTS)
        np.testing.assert_array_equal(POINTS, engine.eval_schedule(20, 10, 8))
    bad = results[-1]
    assert isinstance(bad.diverged_at, int) and 1 <= bad.diverged_at <= 20
    assert bad.final_test_accuracy is None
    first_nan = np.searchsorted(bad.history["step"], bad.diverged_at)
    for k in KEYS - {"step"}:
        assert np.isnan(bad.history[k][first_nan:]).all()
    for r in results[:-1]:
        assert r.diverged_at is None and isinstance(r.final_test_accuracy, float)
        assert all(np.isfinite(r.history[k]).all() for k in KEYS - {"test_acc_batch"})
        batch = r.history["test_acc_batch"]  # measured at the last (full) point only
        assert np.isfinite(batch[LAST]).all() and np.isnan(batch[~LAST]).all()
    assert max(r.final_test_accuracy for r in results[:-1]) > 0.3  # chance: 0.1, 20 steps
    # the diverged member changed nothing for the others: same numbers without it
    alone = run_sweep(_trials(LRS[:-1]), max_members=4)
    for a, b in zip(alone, results[:-1], strict=True):
        _same(a, b, exact=False)


def test_deterministic(lr_sweep):
    results, _, _, _ = lr_sweep
    for a, b in zip(run_sweep(_trials(LRS), max_members=4), results, strict=True):
        _same(a, b)


def test_progress_and_group_callback(lr_sweep):
    results, _, events, done = lr_sweep
    assert events[0].phase == "compiling" and events[-1].phase == "done"
    steps = [e.step for e in events if e.phase == "training"]
    assert (
        steps == POINTS[1:] + [20 + s for s in POINTS[1:]]
        and events[-1].step == events[-1].total == 40
    )
    assert {(e.group, e.groups, e.members) for e in events} == {(0, 1, 6)}
    assert len(done) == 1 and [r.trial for r in done[0]] == [r.trial for r in results]


def test_own_batches_by_data_seed(lr_sweep):
    shared = lr_sweep[0][LRS.index(0.5)]
    trials = [Trial(**{**BASE.__dict__, "lr": 0.5, "data_seed": d}) for d in (0, 1, 0)]
    own = run_sweep(trials)
    assert own[0].extra["shared_batch"] is False and shared.extra["shared_batch"] is True
    _same(own[0], own[2])
    assert not np.array_equal(own[0].history["train_loss"], own[1].history["train_loss"])
    _same(own[0], shared, exact=False)  # same batches, fed per member instead of shared


def test_grouping_by_static_signature():
    trials = [
        *_trials((0.1, 0.2)),
        *_trials((0.1,), batch_size=32),
        *_trials((0.3,), seed=4),
        Trial(**{**BASE.__dict__, "norm_call": (("r_max", 2.0),)}),
    ]
    assert sweep.group_trials(trials) == [[0, 1, 3], [2], [4]]


def test_probes_and_registry():
    seen = {}

    def lr_probe(spec, params, norm_state, batch, hp, loss_fn):
        g = jax.grad(lambda p: loss_fn(p, norm_state, *batch)[0])(params)
        seen["batch"] = batch[0].shape
        return {
            "probe_lr": hp["lr"],
            "probe_step": hp["step"].astype(jnp.float32),
            "grad_norm": jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree.leaves(g))),
        }

    probes.register("test_lr", lambda: lr_probe)
    try:
        with pytest.raises(ValueError, match="already"):
            probes.register("test_lr", lambda: lr_probe)
        spec = ModelSpec(widths=(16, 16, 10), norm="noisy")
        trials = [
            Trial(
                **{
                    **BASE.__dict__,
                    "model": spec,
                    "lr": lr,
                    "probe_batch_size": 64,
                    "probes": ("percentiles", "percentiles_train", "unit_percentiles", "test_lr"),
                }
            )
            for lr in (0.1, 0.3)
        ]
        results = run_sweep(trials)
    finally:
        probes.PROBES.pop("test_lr")
    assert seen["batch"] == (64, 16)
    for r in results:
        h = r.history
        assert set(h) == KEYS | {
            "percentiles",
            "percentiles_train",
            "unit_percentiles",
            "probe_lr",
            "probe_step",
            "grad_norm",
        }
        n = len(POINTS)  # probes run at every point, the off-grid ones included
        assert h["percentiles"].shape == (n, 3) and h["probe_lr"].shape == (n,)
        assert (np.diff(h["percentiles"], axis=1) >= 0).all()
        assert h["unit_percentiles"].shape == (n, 16, 3)  # (E, units of the last hidden layer, 3)
        np.testing.assert_allclose(h["unit_percentiles"][:, 0], h["percentiles"], rtol=1e-5)
        np.testing.assert_allclose(h["probe_lr"], r.trial.lr)
        np.testing.assert_array_equal(h["probe_step"], POINTS)
        assert (h["grad_norm"] > 0).all()
        # train mode adds the noisy-BN noise; eval mode does not
        assert not np.allclose(h["percentiles_train"], h["percentiles"])
    with pytest.raises(ValueError, match="unknown probe"):
        run_sweep([Trial(**{**BASE.__dict__, "probes": ("nope",)})])


def test_columns_percentiles_matches_numpy_with_signs_ties_and_nan():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((257, 6)).astype(np.float32) * [1, 10, 1e-3, 1, 1, 1]
    z[:, 3] = np.round(z[:, 3])  # ties
    z[:, 4] = -np.abs(z[:, 4])  # all negative, -0.0 among them
    z[0, 4] = -0.0
    z[5, 5] = np.nan  # a diverged column
    out = np.asarray(jax.jit(probes.columns_percentiles)(z))
    want = np.percentile(z.astype(np.float64), [15, 50, 85], axis=0).T
    np.testing.assert_allclose(out[:5], want[:5], rtol=1e-6, atol=1e-7)
    assert np.isnan(out[5]).all()


def test_percentiles_probe_matches_numpy():
    spec = ModelSpec(widths=(16, 12, 12, 10), norm="batch", activation="tanh")
    params, state = models.init(jax.random.key(1), spec)
    x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    hp = {"norm_call": {}, "key": jax.random.key(2)}
    out = jax.jit(
        lambda p, s, x: {
            **probes.get("percentiles")(spec, p, s, (x, None), hp, None),
            **probes.get("preact_stats")(spec, p, s, (x, None), hp, None),
            **probes.get("unit_percentiles")(spec, p, s, (x, None), hp, None),
        }
    )(params, state, x)
    _, _, aux = models.apply(params, state, x, spec, mode="eval", capture=True)
    layer = np.asarray(aux["preacts"][probes.PERCENTILE_LAYER])
    assert out["unit_percentiles"].shape == (12, 3)  # every unit of the last hidden layer
    np.testing.assert_allclose(
        out["unit_percentiles"], np.percentile(layer, [15, 50, 85], axis=0).T, rtol=1e-5, atol=1e-6
    )
    z = layer[:, probes.PERCENTILE_UNIT]
    assert probes.PERCENTILE_LAYER == -1 and probes.PERCENTILE_UNIT == 0
    np.testing.assert_allclose(out["percentiles"], np.percentile(z, [15, 50, 85]), rtol=1e-5)
    np.testing.assert_allclose(
        [out["preact_mean"], out["preact_std"]], [z.mean(), z.std()], rtol=1e-4
    )


def test_cnn_renorm_sweep_runs():
    spec = ModelSpec(
        kind="cnn",
        channels=(4,),
        dense=(8,),
        input_shape=(8, 8, 1),
        activation="relu",
        norm="renorm",
        conv_impl="xla",
    )  # lax.conv: unrolled
    data = (("n_train", 128), ("n_test", 64), ("image_shape", (8, 8, 1)), ("seed", 0))
    trials = [
        Trial(
            model=spec,
            dataset="synthetic",
            data_options=data,
            batch_size=16,
            steps=2,
            eval_every=1,
            lr=lr,
        )
        for lr in (0.05, 0.1)
    ]
    results = run_sweep(trials)
    assert results[0].extra["unrolled"] and results[0].extra["block_steps"] == 1
    assert engine.layout_for(spec, [100, 100, 50], platform="cpu") == (True, 8)
    assert engine.layout_for(spec, [1, 1, 2, 3], platform="cpu") == (True, 3)
    assert engine.layout_for(spec, [100], platform="gpu") == (False, 0)
    im2col = ModelSpec(kind="cnn", conv_impl="auto")  # im2col on CPU: a rolled scan is fast
    assert engine.layout_for(im2col, [100], platform="cpu") == (False, 0)
    assert engine.layout_for(ModelSpec(), [100], unrolled=True) == (True, 8)
    for r in results:
        assert r.diverged_at is None and np.isfinite(r.history["test_loss"]).all()


def test_input_validation():
    with pytest.raises(ValueError, match="input"):
        run_sweep([Trial(**{**BASE.__dict__, "model": ModelSpec(widths=(20, 10))})])
    with pytest.raises(ValueError, match="per-call"):
        run_sweep([Trial(**{**BASE.__dict__, "norm_call": (("r_max", 2.0),)})])


def test_configure_host_devices(monkeypatch):
    jax.devices()  # JAX is up: too late to change the device count, so nothing changes
    monkeypatch.setenv("BNEXP_HOST_DEVICES", "7")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert sweep.configure_host_devices() == len(jax.devices("cpu"))
    assert "XLA_FLAGS" not in os.environ
    monkeypatch.setattr(sweep, "_backends_started", lambda: False)  # as if JAX had not started
    monkeypatch.delenv("BNEXP_HOST_DEVICES", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert sweep.configure_host_devices() == 3
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    assert sweep.configure_host_devices() == 1 and os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1"
    monkeypatch.setenv("BNEXP_HOST_DEVICES", "5")
    assert sweep.configure_host_devices() == 5
    assert os.environ["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=5")
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.delenv("BNEXP_HOST_DEVICES")
    n = sweep.DEFAULT_HOST_DEVICES or os.cpu_count()
    assert sweep.configure_host_devices() == n
    assert os.environ.get("XLA_FLAGS", "") == (
        f"--xla_force_host_platform_device_count={n}" if n > 1 else ""
    )


def test_enable_compilation_cache(tmp_path):
    old = jax.config.jax_compilation_cache_dir
    try:
        path = sweep.enable_compilation_cache()
        assert path.name == "jax-cache" and path.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(path)
        assert str(path).startswith(os.environ["BNEXP_DATA_DIR"])
    finally:
        jax.config.update("jax_compilation_cache_dir", old)


SHARDED = textwrap.dedent("""
    import json, jax
    from bnexp.models import ModelSpec
    from bnexp.sweep import Trial, run_sweep
    assert len(jax.devices()) == 4
    data = (("n_train", 256), ("n_test", 128), ("dim", 16), ("seed", 0))
    trials = [Trial(model=ModelSpec(widths=(16, 16, 10)), dataset="synthetic", data_options=data,
                    batch_size=16, steps=20, eval_every=10, lr=lr, seed=i % 2)
              for i, lr in enumerate((0.1, 0.3, 1.0, 3.0, 1e7))]
    out = {}
    for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
        rs = run_sweep(trials, devices=devices)
        out[name] = {"hist": [{k: v.tolist() for k, v in r.history.items()} for r in rs],
                     "div": [r.diverged_at for r in rs], "extra": rs[0].extra}
    print(json.dumps(out))
""")


def _on_host_devices(script: str, devices: int, timeout: int) -> dict:
    """Run ``script`` in a fresh Python with ``devices`` JAX host devices; its last stdout line
    (JSON) parsed."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_over_four_host_devices_matches_one():
    out = _on_host_devices(SHARDED, 4, timeout=300)
    one, four = out["one"], out["four"]
    assert one["extra"]["devices"] == 1 and four["extra"]["devices"] == 4
    assert four["extra"]["padded_members"] == 8 and one["extra"]["padded_members"] == 5
    assert one["div"] == four["div"] and one["div"][-1] is not None
    for a, b in zip(one["hist"], four["hist"], strict=True):
        for k in a:
            np.testing.assert_allclose(
                np.array(a[k], float), np.array(b[k], float), rtol=1e-5, atol=1e-6, err_msg=k
            )


CNN_DATA = (("n_train", 256), ("n_test", 128), ("image_shape", (8, 8, 1)), ("seed", 0))


def _ulp_sensitivity(final_loss, lr: float) -> float:
    """Relative change of final_loss(lr) when lr moves by one float32 ulp either way."""
    lr32 = np.float32(lr)
    base = float(final_loss(lr32))
    ends = (np.nextafter(lr32, np.float32(np.inf)), np.nextafter(lr32, np.float32(-np.inf)))
    return max(abs(float(final_loss(e)) / base - 1.0) for e in ends)


def _trajectory_rtol(sensitivity: float) -> float:
    """Float32 precision of a 20-step trajectory's final test loss: 1e-5, unless the trajectory
    amplifies rounding. One float32 rounding of one scalar (the learning rate, by one ulp)
    changes the final loss by `sensitivity`; the engine and the plain loop differ in the
    rounding of every reduction of every step (another summation order), so they can agree no
    better than a few tens of such perturbations. Measured on an Intel Xeon: the CNN at lr 2.0
    (its stability edge) has sensitivity 3-6e-6 and the 3-member program's member differs from
    the plain loop by 4.4e-5, while at lr 0.1 and 0.5 the sensitivity is <= 1.2e-7 and the
    bound stays 1e-5."""
    return max(1e-5, 32.0 * sensitivity)


@pytest.mark.parametrize(
    "kind,lrs",
    [("mlp", (0.1, 0.5, 2.0)), ("cnn", (0.1, 0.5, 2.0)), ("mlp", (0.5,)), ("cnn", (0.5,))],
)
def test_engine_members_match_single_model_training(kind, lrs):
    """Every member of an lr sweep (shared batches, the engine's weight-gradient rule, stored
    layouts and XLA options), and a one-trial run (no member axis), follows the plain
    single-model loop (train.train_chunk, autodiff's rule, XLA's defaults) on the same batches to
    float32 precision, at every evaluation point of the schedule (chunks of 1, 1, 1, 1, 2, ...
    steps through the one steps program); step 0 is the initial model and the first batch's
    loss."""
    if kind == "mlp":
        spec, options = ModelSpec(widths=(16, 24, 24, 10), norm="batch"), DATA
    else:  # conv 1 -> 16 channels: im2col through the rule; 16 -> 8: autodiff's
        spec = ModelSpec(
            kind="cnn", channels=(16, 8), dense=(12,), input_shape=(8, 8, 1), activation="relu"
        )
        options = CNN_DATA
    trials = [
        Trial(
            **{**BASE.__dict__, "model": spec, "data_options": options, "lr": lr, "eval_every": 20}
        )
        for lr in lrs
    ]
    results = run_sweep(trials, devices=jax.devices()[:1])
    ds = data.load("synthetic", layout="nhwc" if kind == "cnn" else "flat", **dict(options))
    cfg = train.StepConfig(spec, "sgd", total_steps=20)
    idx = data.batch_indices(0, 0, 20, 256, 16)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    for lr, r in zip(lrs, results, strict=True):
        hp = {
            "lr": np.float32(lr),
            "momentum": np.float32(0.0),
            "init_scale": np.float32(1.0),
            "seed": np.int32(0),
            "norm_call": {},
        }
        carry = jax.jit(lambda h: train.init_carry(cfg, h))(hp)
        score = jax.jit(
            lambda s: train.evaluate(s.params, s.norm_state, ds.x_test, ds.y_test, spec)
        )
        acc0, loss0 = score(carry.state)
        acc0_b, _ = jax.jit(
            lambda s: train.evaluate(
                s.params, s.norm_state, ds.x_test, ds.y_test, spec, mode="batch", batch_size=16
            )
        )(carry.state)
        carry, losses = jax.jit(lambda c, h: train.train_chunk(cfg, h, c, idx, x, y))(carry, hp)
        acc, loss = score(carry.state)
        h = r.history
        np.testing.assert_array_equal(h["step"], engine.eval_schedule(20, 20, 8))
        np.testing.assert_allclose(h["test_loss"][0], loss0, rtol=1e-5)
        np.testing.assert_allclose(h["test_acc"][0], acc0, atol=1e-6)
        assert np.isnan(h["test_acc_batch"][0])  # measured at the last point only
        np.testing.assert_allclose(h["train_loss"][0], losses[0], rtol=1e-5)
        losses = np.asarray(losses)
        means = [losses[a:b].mean() for a, b in zip(h["step"][:-1], h["step"][1:], strict=True)]

        def final_loss(lr32, hp=hp):
            h = {**hp, "lr": lr32}
            c = jax.jit(lambda h: train.init_carry(cfg, h))(h)
            c, _ = jax.jit(lambda c, h: train.train_chunk(cfg, h, c, idx, x, y))(c, h)
            return jax.jit(
                lambda s: train.evaluate(s.params, s.norm_state, ds.x_test, ds.y_test, spec)
            )(c.state)[1]

        rtol = _trajectory_rtol(_ulp_sensitivity(final_loss, lr))
        np.testing.assert_allclose(h["train_loss"][1:], means, rtol=rtol)
        np.testing.assert_allclose(h["test_loss"][-1], loss, rtol=rtol)
        assert h["test_acc"][-1] == pytest.approx(float(acc), abs=1 / 128)


def test_group_step_equals_vmapped_train_step_and_guards_the_first_layer():
    """engine._group_step (first dense weight stored (D, members, H), updated by the group) gives
    train.train_step's numbers bit for bit, including a member whose first-layer update alone
    is non-finite (learning rate inf, finite loss): it is frozen at step 1, nothing else is."""
    spec = ModelSpec(widths=(16, 24, 24, 10), norm="batch")
    step_cfg = train.StepConfig(spec, "sgd", total_steps=10, wgrad_rule=True)
    cfg = engine.ProgramConfig(step_cfg, 16)
    assert engine.group_updates_first_layer(cfg)
    hp = {
        "lr": np.asarray([0.1, np.inf, 0.5], np.float32),
        "momentum": np.zeros(3, np.float32),
        "init_scale": np.ones(3, np.float32),
        "seed": np.arange(3, dtype=np.int32),
        "norm_call": {},
    }
    ds = data.load("synthetic", **dict(DATA))
    x, y = jnp.asarray(ds.x_train[:16]), jnp.asarray(ds.y_train[:16])
    carry = jax.jit(jax.vmap(functools.partial(train.init_carry, step_cfg)))(hp)
    want, want_loss = jax.jit(
        jax.vmap(functools.partial(train.train_step, step_cfg), in_axes=(0, 0, None, None))
    )(hp, carry, x, y)
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), hp)
    axes = engine.member_axes(
        cfg, jax.eval_shape(functools.partial(train.init_carry, step_cfg), one)
    )
    stored = jax.tree.map(lambda a, ax: jnp.moveaxis(a, 0, ax), carry, axes)
    got, got_loss = jax.jit(functools.partial(engine._group_step, step_cfg, axes))(hp, stored, x, y)
    got = jax.tree.map(lambda a, ax: jnp.moveaxis(a, ax, 0), got, axes)

    def arrays(c):
        return [
            jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a
            for a in jax.tree.leaves(c)
        ]

    for a, b in zip(arrays(want), arrays(got), strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    np.testing.assert_array_equal(np.asarray(got_loss), np.asarray(want_loss))
    np.testing.assert_array_equal(np.asarray(got.diverged_at), [0, 1, 0])
    assert np.isnan(got_loss[1]) and np.isfinite(np.asarray(got_loss)[[0, 2]]).all()
    w1 = lambda c: np.asarray(c.state.params["hidden"][0]["w"])  # noqa: E731
    np.testing.assert_array_equal(w1(got)[1], w1(carry)[1])  # frozen, finite
    assert not np.array_equal(w1(got)[0], w1(carry)[0])


def test_softmax_regression_sweep_has_no_first_hidden_layer_to_store():
    spec = ModelSpec(widths=(16, 10), norm="none")  # no hidden layer: nothing stored aside
    cfg = engine.ProgramConfig(train.StepConfig(spec), 16)
    assert not engine.group_updates_first_layer(cfg)
    results = run_sweep(_trials((0.1, 0.5), model=spec, steps=4, eval_every=4))
    assert all(np.isfinite(r.history["train_loss"]).all() for r in results)
    assert results[0].history["train_loss"][-1] != results[1].history["train_loss"][-1]


@pytest.mark.parametrize(
    "optimizer,own,block", [("sgd", False, 2), ("momentum", True, 2), ("sgd", True, 1)]
)
def test_member_blocks_give_the_numbers_of_one_block(optimizer, own, block):
    """Members trained in blocks (engine.blocked_steps; 5 members, blocks of 2 with one padded, or
    of 1 without a member axis) follow the same numbers as all members in one block, with shared
    or own batches, a diverging member included."""
    lrs = (0.05, 0.5, 2.0, 1e7, 0.2)
    trials = [
        Trial(
            **{
                **BASE.__dict__,
                "lr": lr,
                "optimizer": optimizer,
                "momentum": 0.5,
                "data_seed": i if own else 0,
            }
        )
        for i, lr in enumerate(lrs)
    ]
    blocked = run_sweep(trials, devices=jax.devices()[:1], member_block=block)
    whole = run_sweep(trials, devices=jax.devices()[:1], member_block=0)
    assert blocked[0].extra["member_block"] == block
    assert blocked[0].extra["padded_members"] == -(-5 // block) * block
    assert whole[0].extra["member_block"] == 0 and whole[0].extra["padded_members"] == 5
    assert blocked[3].diverged_at is not None
    for a, b in zip(blocked, whole, strict=True):
        _same(a, b, exact=False)


def test_member_block_choice():
    """Blocks hold as many members as fit engine.BLOCK_BYTES (or down to half as many where that
    pads fewer); no blocks off CPU, in unrolled mode, on a device with several cores, or when a
    device's members fit at once."""
    paper = engine.ProgramConfig(train.StepConfig(ModelSpec(), "sgd"), 60)
    one = engine.member_bytes(paper)
    params = 784 * 100 + 2 * 100 * 100 + 100 * 10 + 10 + 3 * 2 * 100  # w, out bias, BN g/b
    assert 2 * 4 * params < one < 2 * 4 * params + 4 * 4 * 60 * 300 + 4096  # + activations
    momentum = engine.ProgramConfig(train.StepConfig(ModelSpec(), "momentum"), 60)
    assert engine.member_bytes(momentum) == pytest.approx(one + 4 * params, abs=64)
    fit = engine.BLOCK_BYTES // one
    assert fit == 4  # the measured best block for this model (see engine.BLOCK_BYTES)
    assert [engine.member_block(paper, n, "cpu") for n in (1, 4, 5, 9, 31, 32)] == [
        0,
        0,
        3,
        3,
        4,
        4,
    ]
    assert engine.member_block(paper, 32, "gpu") == 0
    assert engine.member_block(paper, 32, "cpu", cores=2) == 0
    cnn = engine.ProgramConfig(
        train.StepConfig(ModelSpec(kind="cnn", channels=(16, 32), dense=(64,))), 64
    )
    assert engine.member_bytes(cnn) > engine.BLOCK_BYTES
    assert engine.member_block(cnn, 4, "cpu") == 1
    assert engine.member_block(dataclasses.replace(cnn, unrolled=True), 4, "cpu") == 0


PAPER_SCALE = textwrap.dedent("""
    import dataclasses, json, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from bnexp import engine, train
    from bnexp.models import ModelSpec
    assert len(jax.devices()) == 2
    M, T = 64, 40
    cfg = train.StepConfig(ModelSpec(), "sgd", total_steps=1000)
    mesh = engine.make_mesh()
    member = NamedSharding(mesh, PartitionSpec("members"))
    repl = NamedSharding(mesh, PartitionSpec())
    rng = np.random.default_rng(0)
    x = rng.random((4096, 784), np.float32)
    y = rng.integers(0, 10, 4096).astype(np.int32)
    data = jax.device_put({"x_train": x, "y_train": y, "x_test": x[:60], "y_test": y[:60]}, repl)
    idx = rng.integers(0, 4096, (T, 60)).astype(np.int32)
    hp = {"lr": np.geomspace(0.01, 0.3, M).astype(np.float32), "momentum": np.zeros(M, np.float32),
          "init_scale": np.ones(M, np.float32), "seed": np.zeros(M, np.int32), "norm_call": {}}
    out = {}
    for block in (4, 0):
        pcfg = engine.ProgramConfig(cfg, 60, member_block=block)
        h = jax.device_put(hp, member)
        progs = engine.build(pcfg, mesh, h, data, T, lambda b: (b, 60), lite=False)
        n = jax.device_put(np.int32(T), repl)
        _, losses = progs.steps(progs.init(h), h, jax.device_put(idx, repl), n, data)
        out[str(block)] = np.asarray(losses).tolist()
    d0 = jax.devices()[0]
    xs, ys = jax.device_put(x, d0), jax.device_put(y, d0)
    ref = jax.jit(jax.vmap(lambda h: train.train_chunk(cfg, h, train.init_carry(cfg, h),
                                                       jnp.asarray(idx), xs, ys)[1]))
    out["ref"] = np.asarray(ref(jax.device_put(hp, d0))).tolist()
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_paper_scale_sweep_on_two_devices_matches_single_model_loop():
    """64 paper-MLP members on 2 host devices (the engine's steps program in blocks of 4, and in
    one block of 32) follow the plain single-model loop (autodiff's rule, XLA's defaults) to
    float32 precision at every step. Guards the engine's XLA options: with YNNPACK fusion turned
    off as well, members 0 and 1 of each device left the loop by up to 0.03 in loss from step 33
    on (an XLA CPU miscompile; measured with exactly these data and learning rates)."""
    out = _on_host_devices(PAPER_SCALE, 2, timeout=600)
    ref = np.array(out["ref"])
    assert ref.shape == (64, 40) and np.isfinite(ref).all()
    for name in ("4", "0"):
        np.testing.assert_allclose(np.array(out[name]), ref, rtol=2e-6, err_msg=name)


def test_eval_schedule_is_geometric_early_and_linear_later():
    got = engine.eval_schedule(2000, 100, 8)
    assert got[0] == 0 and got[-1] == 2000 and (np.diff(got) > 0).all()
    assert got.tolist()[:16] == [0, 1, 2, 3, 4, 6, 7, 10, 13, 18, 24, 32, 42, 56, 75, 100]
    assert set(range(100, 2001, 100)) <= set(got.tolist())
    assert {133, 178, 237, 316, 422, 562, 750, 1000, 1334, 1778} <= set(got.tolist())
    np.testing.assert_array_equal(engine.eval_schedule(20, 10, 0), [0, 10, 20])
    np.testing.assert_array_equal(engine.eval_schedule(25, 10, 0), [0, 10, 20, 25])
    with pytest.raises(ValueError):
        engine.eval_schedule(20, 10, -1)


def test_dataset_goes_onto_the_devices_once_per_run(monkeypatch):
    """Groups of one dataset get the same replicated device arrays (placed once per run and
    mesh), not a fresh host-to-device copy each."""
    seen = []
    original = engine.run_group

    def spy(cfg, hps, data_seeds, data, *args, **kwargs):
        seen.append((len(hps), data["x_train"], data["x_test"]))
        return original(cfg, hps, data_seeds, data, *args, **kwargs)

    monkeypatch.setattr(engine, "run_group", spy)
    trials = [*_trials((0.1, 0.2)), *_trials((0.1, 0.3), batch_size=32)]  # two groups
    results = run_sweep(trials, devices=jax.devices()[:1])
    assert len(seen) == 2 and all(r.final_test_accuracy is not None for r in results)
    assert all(isinstance(x, jax.Array) for _, x, _ in seen)
    assert seen[0][1] is seen[1][1] and seen[0][2] is seen[1][2]


def test_one_steps_program_for_a_schedule_of_many_chunk_lengths():
    """A group whose evaluation schedule has many distinct chunk lengths (300 steps, eval_every
    100, 8 points a decade: chunks of 1, 2, 3, ... 100 steps) traces its train step once and
    compiles a fixed set of programs: init, ONE steps program (chunks padded to the longest, the
    steps to run a traced argument), point and point_lite."""
    lengths = engine.chunk_lengths(300, 100, 8)
    assert len(set(lengths)) >= 10
    engine.PROGRAMS.clear()
    before = dict(engine.PROGRAMS.traces)
    results = run_sweep(_trials((0.1, 0.5), steps=300, eval_every=100))
    names = ("train_step", "eval_point", "eval_point_lite")
    assert {k: engine.PROGRAMS.traces[k] - before.get(k, 0) for k in names} == dict.fromkeys(
        names, 1
    )
    compiled = sorted(k[0] for k in engine.PROGRAMS.keys() if k[0] != "build")
    assert compiled == ["init", "point", "point_lite", "steps"]
    np.testing.assert_array_equal(results[0].history["step"], engine.eval_schedule(300, 100))
    assert results[0].extra["eval_seconds"] > 0


def test_a_group_evaluated_at_step_0_and_the_end_only_compiles_no_lite_point():
    """Fewer than LITE_MIN_POINTS points before the last: every point is full (the whole test
    set in both modes; step 0 then has a batch-statistics accuracy too) and no point_lite is
    compiled; with more points the earlier ones are lite again (test_acc_batch NaN there)."""
    assert engine.loop.LITE_MIN_POINTS == 2
    engine.PROGRAMS.clear()
    two = run_sweep(_trials((0.1, 0.5), steps=20, eval_every=20, eval_per_decade=0))
    compiled = sorted(k[0] for k in engine.PROGRAMS.keys() if k[0] != "build")
    assert compiled == ["init", "point", "steps"]
    h = two[0].history
    np.testing.assert_array_equal(h["step"], [0, 20])
    assert np.isfinite(h["test_acc_batch"]).all()
    engine.PROGRAMS.clear()
    three = run_sweep(_trials((0.1, 0.5), steps=20, eval_every=10, eval_per_decade=0))
    compiled = sorted(k[0] for k in engine.PROGRAMS.keys() if k[0] != "build")
    assert compiled == ["init", "point", "point_lite", "steps"]
    h3 = three[0].history
    np.testing.assert_array_equal(h3["step"], [0, 10, 20])
    assert np.isnan(h3["test_acc_batch"][:2]).all() and np.isfinite(h3["test_acc_batch"][2])
    # the same training either way: the final point agrees exactly
    for k in ("test_acc", "test_loss", "test_acc_batch"):
        np.testing.assert_array_equal(h[k][-1], h3[k][-1], err_msg=k)


def test_probes_that_do_not_read_the_test_rows_compile_once_for_both_kinds_of_point():
    """A group whose probes do not read hp["test"] computes them in one program shared by its
    full and lite points (point_probes); a probe that may read them (here the same probe
    registered again, undeclared) stays inside each point program. Same numbers either way,
    a diverged member's probes NaN in both."""
    from bnexp import probes

    probes.register("ics_undeclared", probes.PROBES["ics"])
    try:
        assert probes.reads_test((("ics_undeclared", ()),)) and not probes.reads_test(
            (("ics", ()),)
        )
        runs, names = {}, {}
        for name in ("ics", "ics_undeclared"):
            engine.PROGRAMS.clear()
            before = dict(engine.PROGRAMS.traces)
            runs[name] = run_sweep(_trials((0.2, 1e7), probes=(name,)))
            names[name] = sorted(k[0] for k in engine.PROGRAMS.keys() if k[0] != "build")
            traced = {k: engine.PROGRAMS.traces[k] - before.get(k, 0) for k in ("eval_probes",)}
            assert traced == {"eval_probes": 1 if name == "ics" else 0}
    finally:
        probes.PROBES.pop("ics_undeclared")
        probes.READS_TEST.discard("ics_undeclared")
    assert names["ics"] == ["init", "point", "point_lite", "point_probes", "steps"]
    assert names["ics_undeclared"] == ["init", "point", "point_lite", "steps"]
    for a, b in zip(runs["ics"], runs["ics_undeclared"], strict=True):
        assert a.history.keys() == b.history.keys() and a.diverged_at == b.diverged_at
        for k in a.history:
            np.testing.assert_allclose(a.history[k], b.history[k], rtol=1e-6, err_msg=k)
    h = runs["ics"][1].history  # lr 1e7 diverges: its probes are NaN from then on
    assert runs["ics"][1].diverged_at is not None and np.isnan(h["ics_norm"][-1]).all()
    assert np.isfinite(runs["ics"][0].history["ics_norm"]).all()


def test_per_decade_0_is_step_0_and_the_linear_grid_and_groups_apart():
    trials = [*_trials((0.1,), eval_per_decade=0), *_trials((0.1,)), *_trials((0.2,), steps=25)]
    assert sweep.group_trials(trials) == [[0], [1], [2]]
    zero, eight, ragged = run_sweep(
        [trials[0], trials[1], Trial(**{**trials[2].__dict__, "eval_per_decade": 0})]
    )
    np.testing.assert_array_equal(zero.history["step"], [0, 10, 20])
    np.testing.assert_array_equal(ragged.history["step"], [0, 10, 20, 25])
    assert np.isfinite(zero.history["test_acc_batch"][-1])
    for k in KEYS - {"step"}:  # the same training: equal at the shared points
        np.testing.assert_allclose(
            zero.history[k][1:] if k != "train_loss" else zero.history[k][:1],
            eight.history[k][GRID][1:] if k != "train_loss" else eight.history[k][:1],
            rtol=1e-5,
            err_msg=k,
        )
    with pytest.raises(ValueError, match="eval_per_decade"):
        run_sweep(_trials((0.1,), eval_per_decade=-1))


def test_unrolled_blocks_mask_the_tail_of_a_short_chunk():
    """Unrolled mode runs one block size (min(CNN_MAX_BLOCK, longest chunk)) for every chunk,
    the steps past a chunk's end masked out: the numbers of the rolled loop."""
    trials = _trials((0.1, 0.5, 1e7), steps=60, eval_every=30)  # chunks 1, 1, 1, 1, 2, ..., 14
    rolled = run_sweep(trials, unrolled=False)
    unrolled = run_sweep(trials, unrolled=True)
    assert unrolled[0].extra["unrolled"] and unrolled[0].extra["block_steps"] == 8
    assert unrolled[2].diverged_at is not None
    for a, b in zip(rolled, unrolled, strict=True):
        _same(a, b, exact=False)


def test_curve_table_rows_are_grid_points():
    """The curve table subsamples step 0 and the linear grid (whole test set), never the
    off-grid points (a test subset), however dense the schedule is early on."""
    from experiments import common

    steps = engine.eval_schedule(3000, 100, 8)
    trial = Trial(steps=3000, eval_every=100)
    hist = {"step": steps, "test_acc": np.linspace(0.1, 0.9, len(steps), dtype=np.float32)}
    table = common.curve_table(
        {"bn": [sweep.TrialResult(trial, hist, None, 0.9)]}, title="t", max_rows=12
    )
    got = [row["step"] for row in table.rows]
    assert got[0] == 0 and got[-1] == 3000 and len(got) == 12
    assert all(s % 100 == 0 for s in got)
    np.testing.assert_array_equal(
        sweep.grid_points([0, 1, 2, 100, 133, 200, 250], 100),
        [True, False, False, True, False, True, True],
    )


def test_points_before_the_last_evaluate_a_fixed_random_test_subset():
    """Every point but the last evaluates engine.eval_subset of the test set (a fixed random
    draw, not MNIST's first and cleaner rows); the last evaluates the whole test set."""
    rows = engine.eval_subset(10_000)
    assert rows.size == engine.EVAL_SUBSET and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, engine.eval_subset(10_000))  # the same every call
    assert 0.4 < (rows < 5000).mean() < 0.6  # both halves of MNIST's test set, not the first
    np.testing.assert_array_equal(engine.eval_subset(100), np.arange(100))
    data_opts = (("n_train", 256), ("n_test", 3000), ("dim", 16), ("seed", 0))
    (r,) = run_sweep([Trial(**{**BASE.__dict__, "data_options": data_opts, "lr": 0.2})])
    ds = data.load("synthetic", **dict(data_opts))
    sub = engine.eval_subset(3000)
    hp = {
        "lr": np.float32(0.2),
        "momentum": np.float32(0.0),
        "init_scale": np.float32(1.0),
        "seed": np.int32(0),
        "norm_call": {},
    }
    cfg = train.StepConfig(SPEC, "sgd", total_steps=20)
    carry = jax.jit(lambda h: train.init_carry(cfg, h))(hp)  # the initial model, scored by hand
    st = carry.state
    acc_sub, _ = train.evaluate(st.params, st.norm_state, ds.x_test[sub], ds.y_test[sub], SPEC)
    acc_all, _ = train.evaluate(st.params, st.norm_state, ds.x_test, ds.y_test, SPEC)
    assert float(acc_sub) != float(acc_all)  # the two differ, so the check below means something
    np.testing.assert_allclose(r.history["test_acc"][0], acc_sub, atol=1e-6)
    assert np.isfinite(r.history["test_acc_batch"][-1]) and r.final_test_accuracy is not None


def test_program_cache_is_bounded_least_recently_used_first():
    cache = engine.ProgramCache(capacity=2)
    cache.put(("a",), 1)
    cache.put(("b",), 2)
    assert cache.get(("a",)) == 1  # a is now the most recently used
    cache.put(("c",), 3)
    assert cache.get(("b",)) is None and cache.get(("a",)) == 1 and cache.get(("c",)) == 3
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.get(("a",)) is None


def _watch_programs(monkeypatch, wrap):
    """engine.PROGRAMS.program with each program's function replaced by wrap(name, fn)."""
    original = engine.PROGRAMS.program

    def program(name, cfg, mesh, fn, *args, **kwargs):
        return original(name, cfg, mesh, wrap(name, fn), *args, **kwargs)

    monkeypatch.setattr(engine.PROGRAMS, "program", program)


def test_build_returns_at_once_and_compiles_in_the_order_programs_are_needed(monkeypatch):
    """build hands back Deferred programs without waiting; one compile thread takes them in the
    host loop's order (init, steps, point_lite, the shared probes program, point)."""
    from bnexp.engine import cache as cache_mod

    engine.PROGRAMS.clear()
    order, hold = [], __import__("threading").Event()

    def wrap(name, fn):
        def traced(*a):
            order.append(name)  # tracing runs on the compile thread
            return fn(*a)

        return traced

    _watch_programs(monkeypatch, wrap)
    pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(1)
    monkeypatch.setattr(cache_mod, "_POOL", [pool])
    pool.submit(hold.wait, 120)  # the one thread is busy: nothing of build's can start
    trial = dataclasses.replace(BASE, probes=("percentiles",))
    cfg = sweep._program_config([trial], None, "cpu")
    mesh = engine.make_mesh(jax.devices()[:1])
    d = data.load("synthetic", layout="flat", **dict(DATA))
    arrays = jax.device_put({k: getattr(d, k) for k in ("x_train", "y_train", "x_test", "y_test")})
    hp = {
        "lr": np.float32([0.1]),
        "momentum": np.float32([0.0]),
        "init_scale": np.float32([1.0]),
        "seed": np.int32([0]),
        "norm_call": {},
    }
    progs = engine.build(cfg, mesh, jax.device_put(hp), arrays, 10, lambda b: (b, 16))
    assert order == [] and not any(d.done() for d in progs.compiled)
    assert [d.name for d in progs.compiled] == [
        "init",
        "steps",
        "point_lite",
        "point_probes",
        "point",
    ]
    hold.set()
    assert progs.work_seconds() > 0
    assert order == ["init", "steps", "point_lite", "point_probes", "point"]
    assert all(d.done() for d in progs.compiled)
    pool.shutdown()


def test_the_last_point_compiles_while_the_group_trains(monkeypatch):
    """The whole-test-set point is needed only at the last evaluation: its compile waits here
    until the group has trained a chunk, which it could not if the loop waited for it first."""
    import threading

    engine.PROGRAMS.clear()
    trained, seen = threading.Event(), []

    def wrap(name, fn):
        if name != "point":
            return fn

        def traced(*a):
            seen.append(trained.wait(120))  # on the compile thread
            return fn(*a)

        return traced

    _watch_programs(monkeypatch, wrap)

    def progress(e):
        if e.phase == "training":
            trained.set()

    r = run_sweep(_trials((0.1,)), progress=progress)[0]
    assert seen == [True]  # released by training, not by the timeout
    assert r.history["test_acc"].shape == (len(POINTS),)
    assert r.extra["compile_work_seconds"] > 0


def test_a_failed_compile_raises_at_use_and_is_compiled_again_next_time(monkeypatch):
    engine.PROGRAMS.clear()
    fail = [True]

    def wrap(name, fn):
        if name != "point_lite":
            return fn

        def traced(*a):
            if fail[0]:
                fail[0] = False
                raise RuntimeError("compile failed")
            return fn(*a)

        return traced

    _watch_programs(monkeypatch, wrap)
    with pytest.raises(RuntimeError, match="compile failed"):
        run_sweep(_trials((0.1,)))
    assert not any(k[0] in ("point_lite", "build") for k in engine.PROGRAMS.keys())  # forgotten
    assert any(k[0] == "steps" for k in engine.PROGRAMS.keys())  # what compiled is kept
    r = run_sweep(_trials((0.1,)))[0]
    assert np.isfinite(r.history["test_acc"]).all()


def test_the_next_group_compiles_while_this_one_trains(monkeypatch):
    """run_sweep submits group 2's programs once group 1's first steps are dispatched
    (engine.prefetch_group): group 2's steps program is traced before group 1 is done, its
    compile threads' time is counted in group 2 (not group 1), and the numbers are those of a
    run without the prefetch."""
    engine.PROGRAMS.clear()
    done, traced = [], []

    def wrap(name, fn):
        if name != "steps":
            return fn

        def steps(*a):
            traced.append(len(done))  # groups done when this steps program was traced
            return fn(*a)

        return steps

    trials = _trials((0.1, 0.2)) + _trials((0.1, 0.2), batch_size=8)
    _watch_programs(monkeypatch, wrap)
    got = run_sweep(trials, on_group_done=done.append)
    assert traced == [0, 0]
    assert [r.extra["group"] for r in got] == [0, 0, 1, 1]
    assert all(r.extra["compile_work_seconds"] > 0 for r in got)
    monkeypatch.undo()
    engine.PROGRAMS.clear()
    monkeypatch.setattr(engine, "prefetch_group", lambda *a, **k: False)
    alone = run_sweep(trials)
    for a, b in zip(got, alone, strict=True):
        _same(a, b, exact=True)


def test_a_prefetch_that_fails_leaves_the_group_to_itself(monkeypatch):
    """A prefetch only saves time: its error is dropped, and the group's own run raises it."""
    engine.PROGRAMS.clear()
    calls = []

    def wrap(name, fn):
        if name != "steps":
            return fn

        def steps(*a):
            calls.append(name)
            if len(calls) == 2:  # group 2's steps, traced by the prefetch only
                raise RuntimeError("no memory for this compile")
            return fn(*a)

        return steps

    trials = _trials((0.1,)) + _trials((0.1,), batch_size=8)
    _watch_programs(monkeypatch, wrap)
    got = run_sweep(trials)
    assert len(calls) == 3  # group 1, group 2's failed prefetch, group 2 again in its own run
    assert all(np.isfinite(r.history["test_acc"]).all() for r in got)


def test_programs_dropped_from_the_queue_compile_where_they_are_needed(monkeypatch):
    """cli.main drops queued compiles at exit (engine.cache.cancel_compiles); a process that
    runs on (an embedding caller) compiles a dropped program when it first needs it."""
    import concurrent.futures
    import threading

    from bnexp.engine import cache as cache_mod

    engine.PROGRAMS.clear()
    hold = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    monkeypatch.setattr(cache_mod, "_POOL", [pool])
    pool.submit(hold.wait, 120)
    out = []

    def run() -> None:
        try:
            out.append(run_sweep(_trials((0.1,)))[0])
        except Exception as e:  # noqa: BLE001 - shown by the assert below
            out.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    while not engine.PROGRAMS.keys():  # the group has submitted its programs
        runner.join(0.01)
    cache_mod.cancel_compiles()
    hold.set()
    runner.join(300)
    assert out and not isinstance(out[0], Exception), out
    assert np.isfinite(out[0].history["test_acc"]).all()
    alone = run_sweep(_trials((0.1,)))[0]  # the same programs, from the cache
    _same(out[0], alone, exact=True)


def _blocked_in_wait(thread, function: str) -> bool:
    """Whether ``thread`` is blocked in a wait (threading's Condition.wait) called from
    ``function``."""
    frame, names = sys._current_frames().get(thread.ident), []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return bool(names) and names[0] == "wait" and function in names


def test_a_wait_begun_before_the_queue_is_dropped_wakes_and_compiles_here(monkeypatch):
    """A thread already waiting for a queued program when cancel_compiles drops the queue
    compiles it itself (concurrent.futures.wait is never woken by shutdown(cancel_futures=True):
    a runner waiting for its init program hung in a CI run of the test above)."""
    import concurrent.futures
    import threading

    from bnexp.engine import cache as cache_mod

    hold = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    monkeypatch.setattr(cache_mod, "_POOL", [pool])
    pool.submit(hold.wait, 120)
    cache = cache_mod.ProgramCache()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (AXIS,))
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    x = jax.ShapeDtypeStruct((3,), np.float32, sharding=repl)
    prog = cache.program("double", "cfg", mesh, lambda a: 2 * a, (x,), (repl,), repl)
    assert isinstance(prog, cache_mod.Deferred) and not prog.done()
    out = []
    waiting = threading.Thread(target=lambda: out.append(prog.ready()), daemon=True)
    waiting.start()
    while not _blocked_in_wait(waiting, "ready"):  # the thread waits inside ready()
        waiting.join(0.01)
    cache_mod.cancel_compiles()
    hold.set()
    waiting.join(60)
    assert not waiting.is_alive() and len(out) == 1
    assert prog.future.result() is out[0]  # compiled in the waiting thread
    np.testing.assert_array_equal(np.asarray(prog(jnp.arange(3.0))), [0.0, 2.0, 4.0])


def test_a_timed_group_compiles_everything_first_and_nothing_beside_it(monkeypatch):
    """Trial.timed (experiments.whitening's step timing): the last point's program is compiled
    before the group trains, and the next group is not prefetched while it trains."""
    engine.PROGRAMS.clear()
    events, traced = [], []

    def wrap(name, fn):
        def traced_fn(*a):
            traced.append((name, [e.phase for e in events].count("training")))
            return fn(*a)

        return traced_fn

    _watch_programs(monkeypatch, wrap)
    trials = _trials((0.1,), timed=True) + _trials((0.1,), batch_size=8)
    got = run_sweep(trials, progress=events.append)
    assert [r.extra["group"] for r in got] == [0, 1]
    first = [n for n, trained in traced if trained == 0]
    assert first.count("point") == 1 and first.count("steps") == 1  # group 0's, before it trained
    group1 = [e for e in events if e.group == 1]
    assert [n for n, _ in traced].count("steps") == 2
    assert [t for n, t in traced if n == "steps"][1] >= 1  # group 1's, after group 0 trained
    assert group1[0].phase == "compiling"  # not prefetched: it compiles when its turn comes


def test_compiles_in_the_callers_thread_give_the_same_numbers():
    """engine.cache.background(False) (for a caller whose JAX config contexts are thread-local)
    compiles in the calling thread: plain programs in the cache, the same numbers."""
    from bnexp.engine import cache as cache_mod

    engine.PROGRAMS.clear()
    with cache_mod.background(False):
        here = run_sweep(_trials((0.1,)))[0]
    assert not any(
        isinstance(engine.PROGRAMS.get(k), cache_mod.Deferred) for k in engine.PROGRAMS.keys()
    )
    assert here.extra["compile_seconds"] > 0
    engine.PROGRAMS.clear()
    _same(here, run_sweep(_trials((0.1,)))[0], exact=True)
