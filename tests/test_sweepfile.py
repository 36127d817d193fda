"""Sweep files (`bnexp sweep`): expansion, every validation error, a claim judged from the
numbers through the real CLI, resume from the copied file, and lr-sweep restated bit for bit."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _child import ROOT, child_env, cli

import cli as cli_module
from bnexp import results
from bnexp.errors import UsageError
from experiments import sweepclaims, sweepfile

T975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student-t 0.975 quantiles (tables)

SMOKE = """
name = "smoke-claim"
[base]
dataset = "synthetic"
steps = 40
eval_every = 20
eval_per_decade = 0
seeds = 3
targets = [0.6]
[arms.baseline]
norm = "none"
[arms.bn]
norm = "batch"
[[claims]]
name = "BN ends higher than no norm"
metric = "final_accuracy"
a = { arm = "bn" }
b = { arm = "baseline" }
direction = 1
threshold = 0.0
reason = "test: Ioffe & Szegedy 2015 Fig. 1a"
"""


def bnexp(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli(*args), capture_output=True, text=True, env=child_env(), timeout=timeout, cwd=ROOT
    )


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def spec_of(tmp_path: Path, text: str):
    return sweepclaims.load(write(tmp_path, text), resume=None, seeds=None, steps=None)


# ---- expansion ---------------------------------------------------------------------------------


GRID = """
[base]
dataset = "synthetic"
seeds = 2
[arms.a]
norm = "none"
[arms.b]
norm = "batch"
[axes.product]
lr = [0.1, 1.0]
[[axes.zip]]
batch_size = [4, 64]
steps = [80, 20]
"""


def test_product_and_zip_axes_expand_to_the_expected_trials(tmp_path):
    exp, cfg = spec_of(tmp_path, GRID)
    got = [(t.tag, t.model.norm, t.lr, t.batch_size, t.steps, t.seed) for t in exp.trials(cfg)]
    want = [
        (f"{arm}@{lr:g},{bs}", norm, lr, bs, steps, seed)
        for arm, norm in (("a", "none"), ("b", "batch"))
        for lr in (0.1, 1.0)
        for bs, steps in ((4, 80), (64, 20))
        for seed in (0, 1)
    ]
    assert got == want  # 2 arms x 2 lr x 2 zipped points x 2 seeds, first axis slowest
    as_product = GRID.replace("[[axes.zip]]\n", "")
    exp, cfg = spec_of(tmp_path, as_product)
    points = {(t.lr, t.batch_size, t.steps) for t in exp.trials(cfg)}
    assert len(points) == 8  # batch_size x steps as product axes: 2 x 2 x 2
    assert (0.1, 4, 20) in points  # a combination the zip never makes


def test_a_named_experiment_restated_gives_its_trials(tmp_path):
    from experiments import REGISTRY
    from experiments.runner import prepare

    lr = REGISTRY["lr-sweep"]
    named = prepare(lr, lr.preset("smoke"))
    exp, cfg = sweepclaims.load(
        ROOT / "examples" / "lr-sweep-smoke.toml", resume=None, seeds=None, steps=None
    )
    ours = prepare(exp, cfg)
    assert [results.trial_id(t) for t in ours] == [results.trial_id(t) for t in named]
    assert ours == named


# ---- validation ----------------------------------------------------------------------------------

OK = (
    GRID
    + """
[[claims]]
name = "c"
metric = "final_accuracy"
a = { arm = "b", lr = 0.1, batch_size = 4 }
b = { arm = "a", lr = 0.1, batch_size = 4 }
threshold = 0.0
reason = "r"
"""
)

# (edit: old -> new text of OK, the key the message names, a phrase of the message); the line
# the message must name is the one holding "#<" in the edited text.
BAD = [
    ("[base]", "[bsae]  #<", "bsae", "did you mean 'base'"),
    ('dataset = "synthetic"', 'dataset = "synthetic"\nlrr = 0.1  #<', "base.lrr", "'lr'"),
    ("seeds = 2", 'seeds = "2"  #<', "base.seeds", "expected an integer"),
    ("seeds = 2", "seeds = 2\nlr = true  #<", "base.lr", "expected a number"),
    ('norm = "none"', 'norm = "btach"  #<', "arms.a.norm", "did you mean 'batch'"),
    ("seeds = 2", "seeds = 2\nbatch_size = 1  #<", "base.batch_size", "at least 2"),
    ("lr = [0.1, 1.0]", "lr = []  #<", "axes.product.lr", "non-empty list"),
    ("lr = [0.1, 1.0]", "lr = [0.1, 0.1]  #<", "axes.product.lr", "repeats the point"),
    ("steps = [80, 20]", "steps = [80]", "axes.zip.batch_size", "differ in length"),
    ("[[axes.zip]]", "[[axes.zip]]  #<\n[[axes.zip]]", "axes.zip", "empty zip group"),
    ("steps = [80, 20]", "steps = [80, 20]\nlr = [1.0, 2.0]  #<", "axes.zip.lr", "one axis only"),
    ('norm = "none"', 'norm = "none"\nlr = 0.3', "axes.product.lr", "also set by arm 'a'"),
    (
        "lr = [0.1, 1.0]",
        "lr = [0.1, 1.0]\nbatchsize = [1]  #<",
        "axes.product.batchsize",
        "'batch_size'",
    ),
    ("[axes.product]", "[axes.prod]  #<", "axes.prod", "did you mean 'product'"),
    ('metric = "final_accuracy"', 'metric = "final_acc"  #<', "claims.metric", "final_accuracy"),
    ('reason = "r"', "", "claims.reason", "non-empty string"),
    ("threshold = 0.0", "threshold = 0.0\ndirection = 2  #<", "claims.direction", "+1, -1 or 0"),
    ("threshold = 0.0", 'threshold = "0"  #<', "claims.threshold", "expected a number"),
    ("threshold = 0.0", "threshold = 0.0  #<\ndirection = 0", "claims.threshold", "> 0"),
    (
        'metric = "final_accuracy"',
        'metric = "steps_to_target"',
        "claims.target",
        "needs target",
    ),
    (
        'a = { arm = "b", lr = 0.1, batch_size = 4 }',
        'a = { arm = "b", lr = 0.1 }  #<',
        "claims.a",
        "selects 2 settings",
    ),  # fmt: skip
    (
        'a = { arm = "b", lr = 0.1, batch_size = 4 }',
        'a = { arm = "b", lr = 0.3, batch_size = 4 }  #<',
        "claims.a",
        "selects 0 settings",
    ),  # fmt: skip
    (
        'b = { arm = "a", lr = 0.1, batch_size = 4 }',
        'b = { arm = "b", lr = 0.1, batch_size = 4 }  #<',
        "claims.b",
        "same setting",
    ),  # fmt: skip
    (
        'b = { arm = "a", lr = 0.1, batch_size = 4 }',
        'b = { arm = "a", lr = 0.1, bs = 4 }  #<',
        "claims.b.bs",
        "unknown key",
    ),  # fmt: skip
    ("threshold = 0.0", 'threshold = 0.0\nacross = "momentum"  #<', "claims.across", "not an axis"),
    ("[base]", "[base  #<", None, "invalid TOML"),
    ("[base]", 'name = "my sweep!"  #<\n[base]', "name", "expected a name"),
    ("[arms.a]", '[arms."a b"]  #<', "arms.a b", "an arm name is"),
    (
        "threshold = 0.0",
        "threshold = 0.0\nnegligible = [0.1]  #<",
        "claims.negligible",
        "[low, high]",
    ),
    (
        "threshold = 0.0",
        "threshold = 0.0\ntarget = 0.9  #<",
        "claims.target",
        "only steps_to_target",
    ),
    (
        'metric = "final_accuracy"\na = { arm = "b", lr = 0.1, batch_size = 4 }\n'
        'b = { arm = "a", lr = 0.1, batch_size = 4 }\nthreshold = 0.0',
        'metric = "divergence"\na = { arm = "b", lr = 0.1, batch_size = 4 }\nthreshold = 1.5  #<',
        "claims.threshold",
        "share of seeds",
    ),
    ('a = { arm = "b", lr = 0.1, batch_size = 4 }', "a = 3  #<", "claims.a", "expected a table"),
]


def _expected(text: str) -> tuple[str, int]:
    lines = text.splitlines()
    marked = [i for i, ln in enumerate(lines, 1) if "#<" in ln]
    text = text.replace("  #<", "")
    return text, marked[0] if marked else 0


@pytest.mark.parametrize("old,new,key,phrase", BAD, ids=[b[3][:24] for b in BAD])
def test_every_validation_error_is_one_line_with_file_line_and_key(
    tmp_path, capsys, monkeypatch, old, new, key, phrase
):
    assert old in OK
    text, line = _expected(OK.replace(old, new, 1))
    path = write(tmp_path, text)
    monkeypatch.setattr(sys, "argv", ["bnexp", "sweep", str(path), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as e:
        cli_module.main()  # the real entry point, in process: no training starts
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    if line:
        assert f"{path}:{line}: " in err, err
    assert (key is None or f"key '{key}" in err) and phrase in err, err
    assert not (tmp_path / "r").exists()  # nothing was created, let alone trained


COMBOS = [  # combinations the engine cannot build: found with the config, before training
    ('norm = "batch"', 'norm = "group"\nnorm_options = { groups = 7 }  #<', "arms.b", "divide"),
    (
        'norm = "batch"',
        'norm = "group"\nnorm_options = { momentum = 0.1 }  #<',
        "arms.b",
        "momentum",
    ),
    ("seeds = 2", "seeds = 2\ntrain_size = 30", "axes", "batch_size 64 > 30 training examples"),
]


@pytest.mark.parametrize("old,new,key,phrase", COMBOS, ids=["groups", "option", "batch"])
def test_combinations_the_engine_cannot_build_fail_before_training(tmp_path, old, new, key, phrase):
    text, _ = _expected(OK.replace(old, new, 1))
    p = bnexp("sweep", str(write(tmp_path, text)), "--out", str(tmp_path / "r"))
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and f"key '{key}" in p.stderr and phrase in p.stderr
    assert f"{tmp_path / 's.toml'}:" in p.stderr
    assert not list((tmp_path / "r").glob("*/trials/*.npz"))


def test_steps_option_on_a_swept_steps_and_resume_misuse_are_usage_errors(tmp_path):
    path = write(tmp_path, OK)
    with pytest.raises(sweepfile.ConfigError, match="sets steps on an axis"):
        sweepclaims.load(path, resume=None, seeds=None, steps=10)
    with pytest.raises(UsageError, match="not a sweep run directory"):
        sweepclaims.load(None, resume=tmp_path, seeds=None, steps=None)


# ---- through the CLI: a claim judged from the numbers; resume --------------------------------------


def _recomputed(doc: dict) -> tuple[float, float, float]:
    """The claim's paired difference bn - baseline from the trials' numbers (diverged: 0.1)."""
    acc = {}
    for t in doc["trials"]:
        v = t["final_test_accuracy"]
        acc[t["tag"], t["seed"]] = 0.1 if v is None else v
    d = np.array([acc["bn", s] - acc["baseline", s] for s in range(3)])
    half = T975[2] * d.std(ddof=1) / math.sqrt(3)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def test_smoke_sweep_verdict_follows_from_its_numbers_and_resumes(tmp_path):
    path = write(tmp_path, SMOKE)
    p = bnexp("sweep", str(path), "--out", str(tmp_path / "runs"), "--json", "--no-plots")
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    (v,) = doc["verdict"]  # one verdict per stated claim
    (c,) = v["conditions"]
    effect, lo, hi = _recomputed(doc)
    assert c["effect"] == pytest.approx(effect, rel=1e-6, abs=1e-7)
    assert c["ci95"] == pytest.approx([lo, hi], rel=1e-6, abs=1e-7)
    rule = "reproduced" if lo > 0 else "not reproduced" if hi < 0 else "inconclusive"
    assert c["outcome"] == v["outcome"] == rule
    run_dir = Path(doc["run_dir"])
    assert (run_dir / sweepfile.FILE_NAME).read_text() == SMOKE  # the file, copied
    assert [t["tag"] for t in doc["trials"]] == ["baseline"] * 3 + ["bn"] * 3
    # lose the bn arm's group (as an interrupt would), edit the original file: --resume trains
    # only that group again, from the copy
    for f in (run_dir / "trials").glob("*.json"):
        if json.loads(f.read_text())["tag"] == "bn":
            f.unlink()
            f.with_suffix(".npz").unlink()
    path.write_text(SMOKE.replace("steps = 40", "steps = 80"))
    p = bnexp("sweep", "--resume", str(run_dir), "--json", "--no-plots")
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads(p.stdout)
    assert again["trials_run_now"] == 3 and again["trials_resumed"] == 3
    assert again["verdict"] == doc["verdict"]
    assert [t["final_test_accuracy"] for t in again["trials"]] == [
        t["final_test_accuracy"] for t in doc["trials"]
    ]
    # an edited copy is refused rather than silently giving other trials
    (run_dir / sweepfile.FILE_NAME).write_text(SMOKE.replace("seeds = 3", "seeds = 4"))
    p = bnexp("sweep", "--resume", str(run_dir))
    assert p.returncode == 2 and "was edited after the run began" in p.stderr


def test_no_claim_gives_a_plain_results_table(tmp_path):
    text = SMOKE.split("[[claims]]")[0].replace("seeds = 3", "seeds = 1")
    p = bnexp("sweep", str(write(tmp_path, text)), "--out", str(tmp_path / "runs"), "--no-plots")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "results by setting" in p.stdout and "Claim:" not in p.stdout


def test_lr_sweep_restated_gives_the_same_numbers_bit_for_bit(tmp_path):
    out = str(tmp_path / "runs")
    p = bnexp("run", "lr-sweep", "--preset", "smoke", "--out", out, "--json", "--no-plots")
    assert p.returncode == 0, p.stderr[-3000:]
    named = json.loads(p.stdout)
    f = shutil.copy(ROOT / "examples" / "lr-sweep-smoke.toml", tmp_path / "lr.toml")
    p = bnexp("sweep", str(f), "--out", out, "--json", "--no-plots")
    assert p.returncode == 0, p.stderr[-3000:]
    ours = json.loads(p.stdout)
    assert [t["config"] for t in ours["trials"]] == [t["config"] for t in named["trials"]]
    a = results.load_run(Path(named["run_dir"])).by_id()
    b = results.load_run(Path(ours["run_dir"])).by_id()
    assert sorted(a) == sorted(b) and len(a) == 6  # same trial ids
    for tid, rec in a.items():
        assert rec.diverged_at == b[tid].diverged_at
        assert set(rec.history) == set(b[tid].history)
        for k, arr in rec.history.items():  # bit for bit: same bytes, NaN where NaN
            assert arr.dtype == b[tid].history[k].dtype
            assert arr.tobytes() == b[tid].history[k].tobytes(), (tid, k)
    # the restated equivalence claim is lr-sweep's own condition at its smallest lr
    close = next(c for c in named["verdict"]["conditions"] if c["name"].startswith("final acc"))
    mine = ours["verdict"][0]["conditions"][0]
    for k in ("effect", "ci95", "threshold", "direction", "outcome"):
        assert mine[k] == close[k], k
