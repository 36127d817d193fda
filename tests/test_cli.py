"""The real command line, end to end: every experiment's smoke preset, bad input, interrupt/resume.

Runs `python -m cli` / the `bnexp` entry point in subprocesses, as a user would, and asserts on the
numbers in the JSON document rather than only the exit code.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _child import ROOT, cli

from experiments import REGISTRY


def bnexp(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    e = dict(os.environ, NO_COLOR="1", **(env or {}))
    return subprocess.run(
        cli(*args),
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        cwd=ROOT,
    )


def run_json(tmp_path: Path, *args: str) -> dict:
    p = bnexp(*args, "--preset", "smoke", "--out", str(tmp_path / "runs"), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)  # the whole stdout is exactly one JSON document


def check_document(doc: dict, name: str) -> None:
    for key in ("experiment", "preset", "run_dir", "rows", "verdict", "trials"):
        assert key in doc, key
    assert doc["experiment"] == name and doc["preset"] == "smoke"
    assert set(doc["verdict"]) >= {"claim", "reproduced", "evidence"}
    assert doc["verdict"]["reproduced"] in (True, False, None)
    assert doc["verdict"]["claim"] == REGISTRY[name].claim
    v = doc["verdict"]
    assert v["outcome"] in ("reproduced", "not reproduced", "inconclusive")
    assert v["reproduced"] == {"reproduced": True, "not reproduced": False}.get(v["outcome"])
    for c in v["conditions"]:  # the README's verdict schema
        assert set(c) >= {"name", "effect", "ci95", "threshold", "outcome"}, c
        assert c["outcome"] in ("reproduced", "not reproduced", "inconclusive")
        lo, hi = c["ci95"]
        assert lo is None or hi is None or lo <= hi
    outs = [c["outcome"] for c in v["conditions"]]
    if outs and all(o == "reproduced" for o in outs):
        assert v["outcome"] == "reproduced"
    if "not reproduced" in outs:
        assert v["outcome"] == "not reproduced"
    assert doc["rows"], "an analysis without rows"
    assert doc["trials"]
    for t in doc["trials"]:
        assert set(t) >= {"config", "seed", "final_test_accuracy", "steps_to_target", "diverged_at"}
        acc = t["final_test_accuracy"]
        if t["diverged_at"] is None:
            assert acc is not None and 0.0 <= acc <= 1.0 and math.isfinite(acc)
        else:
            assert acc is None and t["diverged_at"] > 0
        total = t["config"]["steps"]
        for target, step in t["steps_to_target"].items():
            assert 0 < float(target) <= 1
            assert step is None or 0 <= step <= total
    run_dir = Path(doc["run_dir"])
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.json").is_file()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    assert len(list((run_dir / "trials").glob("*.npz"))) == len(doc["trials"])


# experiments whose tables hold one typed value per cell (report.format_cell renders it)
ONE_VALUE_PER_CELL = {"distributions", "noisy-bn", "ics", "landscape"}
NUMBER_TEXT = re.compile(r"^[+-]?\d[\d.,]*(e[+-]?\d+)?\s*(%|x|pts)?(\s*±.*)?$")


def check_one_value_per_cell(doc: dict) -> None:
    """No cell is the text of a number (the number itself is the cell, formatted by the
    renderers), and no hidden key repeats a displayed one as `<col>_mean` / `<col>_value`."""
    for r in doc["rows"]:
        for k, v in r.items():
            assert not (isinstance(v, str) and NUMBER_TEXT.match(v.strip())), (k, v)
            assert not k.endswith(("_mean", "_value", "_norm", "_cos")), k


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))  # every registered experiment
def test_every_experiment_smoke_through_cli(tmp_path, name):
    doc = run_json(tmp_path, "run", name)
    check_document(doc, name)
    if name in ONE_VALUE_PER_CELL:
        check_one_value_per_cell(doc)
    plots = list((Path(doc["run_dir"]) / "plots").glob("*.png"))
    assert plots and all(p.stat().st_size > 5000 for p in plots)


def test_help_shows_no_value_for_flags():
    for args in (["--help"], ["run", "--help"], ["compare", "--help"], ["reproduce", "--help"]):
        p = bnexp(*args, env={"COLUMNS": "120"})
        assert p.returncode == 0, p.stderr
        assert "--json" in p.stdout or "--debug" in p.stdout
        assert "<bool>" not in p.stdout, p.stdout


def test_registry_covers_every_experiment_with_presets():
    for name, exp in REGISTRY.items():
        assert set(exp.presets) == {"smoke", "quick", "paper"}, name
        # batch-size trains for a number of epochs, depth evaluates 20 deep programs and
        # regularization overfits a 1,000-image training subset: their quick presets use the
        # mnist-10k subset
        want = "mnist-10k" if name in ("batch-size", "depth", "regularization") else "mnist"
        assert exp.presets["quick"].dataset == want, name


def test_compare_speedups_match_steps_to_target(tmp_path):
    doc = run_json(tmp_path, "compare", "--seeds", "1", "--steps", "120")
    check_document(doc, "compare")
    rows = [r for r in doc["rows"] if "target acc" in r]
    assert rows
    for r in rows:
        base, bn = r["baseline steps"], r["bn steps"]  # the median seed's (low, high] interval
        sp = r["bn speedup"]  # one typed value per cell: no text copy of the same number
        assert set(r) == {"target acc", "baseline steps", "bn steps", "bn speedup", "table"}
        if bn["high"] is None:
            assert sp["status"] == "n/a" and sp["value"] is None
        elif base["high"] is None:  # a lower bound, never infinity
            assert sp["status"] == "lower bound" and sp["value"] is None
            assert sp["low"] == pytest.approx(base["low"] / bn["high"]) and sp["high"] is None
        elif (base["low"], base["high"]) == (bn["low"], bn["high"]):  # never 1.0x
            assert sp["status"] == "unresolved" and sp["value"] is None
        else:
            assert sp["status"] == "resolved"
            assert sp["value"] == pytest.approx(base["high"] / bn["high"])
            assert sp["low"] <= sp["value"] and (sp["high"] is None or sp["value"] <= sp["high"])
    assert {c["name"] for c in doc["verdict"]["conditions"]} >= {"speedup to 50%"}
    for t in doc["trials"]:  # every evaluation step, from 0
        assert t["eval_steps"][-1] == 120 and t["eval_steps"] == sorted(set(t["eval_steps"]))
    # paired arms: same seeds and data order for both arms
    seeds = {(t["tag"], t["seed"], t["config"]["data_seed"]) for t in doc["trials"]}
    assert {(s, d) for _, s, d in seeds if _ == "bn"} == {
        (s, d) for _, s, d in seeds if _ == "baseline"
    }


def test_set_eval_per_decade_zero_evaluates_step_0_and_the_linear_grid(tmp_path):
    import numpy as np

    doc = run_json(tmp_path, "run", "compare", "--set", "eval_per_decade=0")
    check_document(doc, "compare")
    assert {t["config"]["eval_per_decade"] for t in doc["trials"]} == {0}
    for npz in (Path(doc["run_dir"]) / "trials").glob("*.npz"):
        with np.load(npz) as h:
            assert h["step"].tolist() == [0, 20, 40, 60]  # smoke: 60 steps, eval_every 20
            assert np.isfinite(h["test_acc_batch"][-1])  # the last point is the full one
    timing = json.loads((Path(doc["run_dir"]) / "summary.json").read_text())["timing"]
    assert 0 < timing["eval_seconds"] < timing["train_time_seconds"]


def test_compare_no_bn_and_extra_norm(tmp_path):
    doc = run_json(tmp_path, "compare", "--no-bn", "--norm", "layer", "--steps", "40")
    assert {t["tag"] for t in doc["trials"]} == {"baseline", "layer"}


def test_show_rerenders_saved_run(tmp_path):
    doc = run_json(tmp_path, "run", "init-sensitivity")
    p = bnexp("show", doc["run_dir"], "--json")
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert shown["verdict"]["evidence"] == doc["verdict"]["evidence"]
    p = bnexp("show", doc["run_dir"])
    assert p.returncode == 0 and "init scale" in p.stdout
    p = bnexp("runs", "--out", str(tmp_path / "runs"))
    assert p.returncode == 0 and "init-sensitivity" in p.stdout


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["run", "lr-swep"], 2, "did you mean 'lr-sweep'"),
        (["run", "lr-sweep", "--preset", "huge"], 2, "unknown preset"),
        (["run", "lr-sweep", "--set", "lrr=1"], 2, "valid keys"),
        (["run", "lr-sweep", "--set", "steps=abc"], 2, "expected an integer"),
        (["run", "lr-sweep", "--set", "lrs=0,-1"], 2, "positive"),
        (["run", "lr-sweep", "--set", "eval_per_decade=-1"], 2, "eval_per_decade must be >= 0"),
        (["run", "lr-sweep", "--steps", "0"], 2, "steps must be positive"),
        (["run", "compare", "--set", "batch_size=100000"], 2, "larger than the training set"),
        (["run", "compare", "--set", "arms=group,none", "--set", "norm_groups=7"], 2, "divide"),
        (["run", "lr-sweep", "--dataset", "fashion-mnist"], 1, "bnexp download fashion-mnist"),
        (["run", "lr-sweep", "--dataset", "imagenet"], 2, "unknown dataset"),
        (["run", "batch-size", "--set", "batch_sizes=8,4"], 2, "increasing order"),
        (["compare", "--no-bn", "--no-baseline"], 2, "no arms"),
        (["show", "/nonexistent/run"], 2, "run"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, code, needle):
    # "--dataset fashion-mnist" must find no download: give that case an empty data directory
    env = {"BNEXP_DATA_DIR": str(tmp_path / "d")} if "fashion-mnist" in args else None
    p = (
        bnexp(*args, "--out", str(tmp_path / "r"), env=env)
        if args[0] in ("run", "compare")
        else bnexp(*args)
    )
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr and needle in lines[0], lines[0]


def test_unwritable_output_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # running as root: permissions do not bind
        target = Path("/proc/bnexp-cannot-write-here")
    else:
        target = locked / "runs"
    p = bnexp("run", "lr-sweep", "--preset", "smoke", "--out", str(target))
    assert p.returncode == 1, p.stderr
    assert "not writable" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_interrupt_then_resume_gives_the_same_summary(tmp_path):
    out = tmp_path / "runs"
    e = dict(os.environ, NO_COLOR="1")
    args = [
        "run",
        "batch-size",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--json",
        "--no-plots",
    ]
    proc = subprocess.Popen(
        cli(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=e,
        cwd=ROOT,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        saved = list(out.glob("*/trials/*.json"))
        if saved or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    run_dir = next(out.iterdir())
    assert "--resume" in err and str(run_dir) in err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted"
    n_saved = len(list((run_dir / "trials").glob("*.json")))
    assert 0 < n_saved < 10  # 5 norms x 2 batch sizes x 1 seed
    p = bnexp("run", "batch-size", "--resume", str(run_dir), "--json", "--no-plots")
    assert p.returncode == 0, p.stderr
    resumed = json.loads(p.stdout)
    full = run_json(tmp_path, "run", "batch-size", "--no-plots")
    assert resumed["run_dir"] == str(run_dir)
    assert resumed["rows"] == full["rows"]
    assert resumed["verdict"] == full["verdict"]
    assert [t["final_test_accuracy"] for t in resumed["trials"]] == [
        t["final_test_accuracy"] for t in full["trials"]
    ]


def test_ignored_sigint_is_said_and_sigterm_still_interrupts(tmp_path):
    """A run that inherited SIGINT as ignored (a background job) keeps ignoring it, says so once,
    and stops on SIGTERM with exit 130, the run directory marked interrupted and resumable."""
    out = tmp_path / "runs"
    args = ["run", "batch-size", "--preset", "smoke"]
    args += ["--steps", "3000", "--out", str(out), "--json", "--no-plots"]
    proc = subprocess.Popen(
        cli(*args, sigint="ignore"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, NO_COLOR="1"),
        cwd=ROOT,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(out.glob("*/status.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "SIGINT stopped a process that ignores it"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.count("SIGINT is ignored in this process") == 1 and f"kill {proc.pid}" in err
    run_dir = next(out.iterdir())
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert "--resume" in err and str(run_dir) in err
