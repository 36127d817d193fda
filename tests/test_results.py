"""Run directories: atomic writes, round-trips, resume bookkeeping, tolerant listing."""

import json
import os
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest

from bnexp import results as R
from bnexp import runs as L
from bnexp.atomic import write_atomic
from bnexp.metrics import Summary
from bnexp.models import ModelSpec
from bnexp.stats import Verdict
from bnexp.sweep import Trial, TrialResult

NOW = datetime(2025, 3, 4, 5, 6, 7).astimezone()


def _trial(**kw):
    spec = ModelSpec(norm="group", norm_options=(("groups", 8),), widths=(784, 50, 10))
    base = dict(model=spec, lr=0.1, seed=1, norm_call=(("noise", 0.25),), probes=("percentiles",))
    return Trial(**{**base, **kw})


def _result(trial, diverged_at=None):
    e = 3
    hist = {
        "step": np.array([100, 200, 300]),
        "train_loss": np.array([2.0, 1.0, 0.5], np.float32),
        "test_acc": np.array([0.5, 0.8, 0.9], np.float32),
        "test_loss": np.array([1.5, 0.9, 0.4], np.float32),
        "test_acc_batch": np.array([0.55, 0.8, 0.91], np.float32),
        "percentiles": np.arange(e * 3, dtype=np.float32).reshape(e, 3),
    }
    acc = 0.9
    if diverged_at is not None:
        for k in hist:
            if k != "step":
                hist[k][1:] = np.nan
        acc = None
    extra = {"note": "x", "grads": np.ones((2, 2), np.float32)}
    return TrialResult(trial, hist, diverged_at, acc, seconds=1.5, extra=extra)


def _run(tmp_path, experiment="compare", config=None, **kw):
    config = config or {"preset": "smoke", "lrs": (0.1, 0.5), "target": 0.9}
    return R.new_run_dir(tmp_path, experiment, config, now=NOW, environment={}, **kw)


def test_atomic_json_leaves_no_temp_files(tmp_path):
    p = R.write_json_atomic(tmp_path / "a.json", {"x": float("nan"), "y": np.float32(2.5)})
    assert json.loads(p.read_text()) == {"x": None, "y": 2.5}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = R.write_json_atomic(tmp_path / "a.json", {"v": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(p, boom)
    assert json.loads(p.read_text()) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]
    with pytest.raises(TypeError):
        R.write_json_atomic(tmp_path / "b.json", {"f": object()})
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_npz_atomic_roundtrip_and_no_pickle(tmp_path):
    arrs = {"a": np.array([1.0, np.nan], np.float32), "b": np.arange(6).reshape(2, 3)}
    p = R.write_npz_atomic(tmp_path / "h.npz", arrs)
    back = R.read_npz(p)
    np.testing.assert_array_equal(back["a"], arrs["a"])
    assert back["a"].dtype == np.float32 and back["b"].shape == (2, 3)
    with pytest.raises(TypeError):
        R.write_npz_atomic(tmp_path / "o.npz", {"o": np.array([{}, None], dtype=object)})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["h.npz"]


def test_trial_dict_roundtrip_through_json():
    t = _trial()
    d = json.loads(json.dumps(R.trial_to_dict(t)))
    assert d["model"]["norm_options"] == [["groups", 8]]
    back = R.trial_from_dict(d)
    assert back == t and isinstance(back.model, ModelSpec)
    assert back.norm_call == (("noise", 0.25),) and back.model.widths == (784, 50, 10)
    assert hash(back) == hash(t)  # hashable again: tuples, not lists
    assert R.trial_id(back) == R.trial_id(t)
    assert R.trial_from_dict(R.trial_to_dict(Trial())) == Trial()


def test_trial_id_stable_and_distinguishing():
    assert R.trial_id(_trial(lr=1)) == R.trial_id(_trial(lr=1.0))  # int vs float alike
    assert R.trial_id(_trial(lr=np.float64(0.1))) == R.trial_id(_trial(lr=0.1))
    ids = {R.trial_id(_trial(seed=s)) for s in range(5)} | {R.trial_id(_trial(tag="bn"))}
    assert len(ids) == 6
    assert len(R.trial_id(Trial())) == 12
    with pytest.raises(ValueError, match="no field"):
        R.trial_from_dict({"lr": 0.1, "bogus": 1})


def test_new_run_dir_layout(tmp_path):
    run = _run(tmp_path)
    assert run.name.startswith("20250304-050607-compare-") and len(run.name.split("-")[-1]) == 8
    assert json.loads((run / "config.json").read_text())["lrs"] == [0.1, 0.5]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "running" and status["preset"] == "smoke"
    assert status["experiment"] == "compare"
    again = _run(tmp_path)  # same second, same config: a suffix, never an overwrite
    assert again.name == run.name + "-2"
    other = _run(tmp_path, config={"preset": "quick"})
    assert other.name.split("-")[-1] != run.name.split("-")[-1]


def test_capture_environment():
    env = R.capture_environment(argv=["bnexp", "run", "compare", "--preset", "smoke"])
    assert env["command"] == "bnexp run compare --preset smoke"
    assert env["numpy"] == np.__version__ and env["python"].count(".") == 2
    for key in ("bnexp", "jax", "jaxlib", "optax", "platform", "devices", "git_commit"):
        assert key in env
    json.dumps(env)


def test_save_load_resume(tmp_path):
    run = _run(tmp_path)
    trials = [_trial(seed=s, tag="bn") for s in range(3)]
    ids = R.save_group(run, [_result(trials[0]), _result(trials[2], diverged_at=200)])
    assert [R.trial_id(t) for t in trials] == [ids[0], R.trial_id(trials[1]), ids[1]]
    assert [r is None for r in R.load_run(run).results_for(trials)] == [False, True, False]

    loaded = R.load_run(run)
    assert loaded.status == "running" and loaded.preset == "smoke" and loaded.broken == []
    assert loaded.experiment == "compare" and loaded.summary is None
    res = loaded.results_for(trials)
    assert res[1] is None
    assert res[0].trial == trials[0] and res[0].final_test_accuracy == pytest.approx(0.9)
    assert res[2].diverged_at == 200 and res[2].final_test_accuracy is None
    assert np.isnan(res[2].history["test_acc"][1:]).all()  # NaN survives in the npz
    assert res[0].history["percentiles"].shape == (3, 3)
    assert res[0].history["train_loss"].dtype == np.float32
    assert res[0].extra["note"] == "x" and res[0].extra["grads"].shape == (2, 2)
    assert "extra.grads" not in res[0].history
    rec = json.loads((run / "trials" / f"{ids[0]}.json").read_text())
    assert rec["seed"] == 0 and rec["tag"] == "bn" and rec["trial"]["model"]["norm"] == "group"

    (run / "trials" / f"{ids[1]}.npz").unlink()  # a half-written trial is not "done"
    assert [r is None for r in R.load_run(run).results_for(trials)] == [False, True, True]


def test_summary_and_status(tmp_path):
    run = _run(tmp_path)
    rows = [{"arm": "bn", "acc": Summary(0.98, 0.01, 3, 0, 0.95, 1.0)}]
    verdict = Verdict("BN is faster", (), "3.4x").to_json()
    with R.tracking_status(run):
        R.write_summary(run, rows, [verdict], timing={"seconds": 1.0})
    loaded = R.load_run(run)
    assert loaded.status == "complete"
    assert loaded.summary["rows"][0]["acc"]["mean"] == 0.98
    assert loaded.summary["verdict"][0]["outcome"] == "inconclusive"
    with pytest.raises(KeyboardInterrupt), R.tracking_status(run):
        raise KeyboardInterrupt
    assert R.load_run(run).status == "interrupted"
    with pytest.raises(ValueError):
        R.set_status(run, "weird")


def test_dead_running_run_reads_interrupted(tmp_path):
    run = _run(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    info = json.loads((run / "status.json").read_text())
    info["pid"] = int(proc.stdout)
    R.write_json_atomic(run / "status.json", info)
    assert L.list_runs(tmp_path)[0].status == "interrupted"


def test_list_runs_tolerates_partial_and_broken(tmp_path):
    good = _run(tmp_path, config={"preset": "quick"})
    R.write_summary(good, [], [{"claim": "a", "outcome": "REPRODUCED"},
                               {"claim": "b", "outcome": "inconclusive"}])  # fmt: skip
    R.set_status(good, "complete")
    older = R.new_run_dir(tmp_path, "lr-sweep", {}, now=datetime(2024, 1, 1).astimezone(),
                          environment={})  # fmt: skip
    (older / "status.json").write_text("{not json")  # broken status
    (tmp_path / "20230101-000000-distributions-0123abcd").mkdir()  # name only, empty
    (tmp_path / "notes").mkdir()  # not a run
    (tmp_path / "stray.txt").write_text("x")

    runs = L.list_runs(tmp_path)
    assert [r.experiment for r in runs] == ["compare", "lr-sweep", "distributions"]
    assert runs[0].status == "complete" and runs[0].preset == "quick"
    assert runs[0].verdict == "1 REPRODUCED, 1 inconclusive"
    assert runs[1].status == "unknown" and runs[1].verdict is None
    assert runs[2].date == datetime(2023, 1, 1) and runs[2].trials == 0
    assert L.list_runs(tmp_path / "missing") == []

    assert L.resolve_run(tmp_path, "latest") == good
    assert L.resolve_run(tmp_path, good.name[:20]) == good
    assert L.resolve_run(tmp_path, "lr-sweep") == older
    assert L.resolve_run(tmp_path, str(good)) == good
    with pytest.raises(FileNotFoundError):
        L.resolve_run(tmp_path, "nope")
    with pytest.raises(ValueError, match="matches"):
        L.resolve_run(tmp_path, "0")


def test_load_run_reports_broken_trial(tmp_path):
    run = _run(tmp_path)
    R.save_trial(run, _result(_trial()))
    (run / "trials" / "deadbeef0000.json").write_text("{")
    loaded = R.load_run(run)
    assert len(loaded.trials) == 1 and loaded.broken == ["trials/deadbeef0000.json"]
    with pytest.raises(FileNotFoundError):
        R.load_run(tmp_path / "notes-that-do-not-exist")


def test_verdict_text():
    assert L.verdict_text(None) is None
    assert L.verdict_text({"outcome": "NOT REPRODUCED"}) == "NOT REPRODUCED"
    assert L.verdict_text([{"outcome": "REPRODUCED"}] * 2) == "REPRODUCED"


def test_record_saved_before_eval_per_decade_loads_with_the_default(tmp_path):
    """A trial saved by a bnexp without Trial.eval_per_decade (histories without step 0) loads,
    the field at its default; its stored trial_id is kept, and a current trial (whose id covers
    the schedule) is never matched to it on resume."""
    run = _run(tmp_path)
    t = _trial()
    R.save_trial(run, _result(t))
    (path,) = (run / "trials").glob("*.json")
    rec = json.loads(path.read_text())
    del rec["trial"]["eval_per_decade"]
    rec["trial_id"] = "0123456789ab"
    path.write_text(json.dumps(rec))
    loaded = R.load_run(run)
    assert not loaded.broken and loaded.trials[0].trial.eval_per_decade == 8
    assert loaded.trials[0].trial_id == "0123456789ab"
    assert loaded.results_for([t]) == [None]


def test_damaged_trial_files_are_listed_and_trained_again_on_resume(tmp_path):
    """A truncated .npz (a disk that filled up, a copy cut short) or a garbled .json of one trial
    is listed in Run.broken, and that trial counts as not saved: resume trains it again instead
    of failing on the whole run."""
    run = _run(tmp_path)
    trials = [_trial(seed=s) for s in range(3)]
    for t in trials:
        R.save_trial(run, _result(t))
    ids = [R.trial_id(t) for t in trials]
    npz = run / "trials" / f"{ids[0]}.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    (run / "trials" / f"{ids[1]}.json").write_text("{bad")
    loaded = R.load_run(run)
    assert sorted(loaded.broken) == sorted([f"trials/{ids[0]}.json", f"trials/{ids[1]}.json"])
    assert [r is None for r in loaded.results_for(trials)] == [True, True, False]


def test_run_lock_lets_one_process_train_into_a_run_directory(tmp_path):
    run = _run(tmp_path)
    with R.run_lock(run):
        assert (run / ".lock").read_text() == str(os.getpid())
        with pytest.raises(
            R.RunLocked, match=f"in use by another bnexp process \\(pid {os.getpid()}\\)"
        ):
            with R.run_lock(run):
                pass
    with R.run_lock(run):  # released on exit; the .lock file left behind blocks no one
        pass
    assert R.RunLocked.exit_code == 1


def test_resume_of_a_locked_run_is_one_line_and_exit_1(tmp_path):
    from _child import child_env, cli

    from experiments import REGISTRY
    from experiments.base import config_dict

    cfg = REGISTRY["compare"].presets["smoke"]
    run = R.new_run_dir(tmp_path, "compare", config_dict(cfg), preset="smoke", environment={})
    with R.run_lock(run):
        p = subprocess.run(
            cli("run", "compare", "--resume", str(run)),
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=tmp_path,
            timeout=300,
        )
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("bnexp: ") and "in use by another bnexp process" in lines[-1]
    assert "Traceback" not in p.stderr
