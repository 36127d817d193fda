"""`bnexp export`: one tidy table of run directories (a row per trial and evaluation point) that
reads back to the runs' own numbers, for a named experiment's run and a sweep's together."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _child import ROOT, child_env, cli

from bnexp import export, results

SWEEP = """
[base]
dataset = "synthetic"
steps = 20
eval_every = 10
eval_per_decade = 0
seeds = 2
norm = "batch"
norm_options = { momentum = 0.2 }
"""


def bnexp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli(*args), capture_output=True, text=True, env=child_env(), timeout=900, cwd=ROOT
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """A named experiment's smoke run and a small sweep's run."""
    tmp = tmp_path_factory.mktemp("export")
    out = str(tmp / "runs")
    p = bnexp("run", "compare", "--preset", "smoke", "--out", out, "--json", "--no-plots")
    assert p.returncode == 0, p.stderr[-3000:]
    named = Path(json.loads(p.stdout)["run_dir"])
    (tmp / "s.toml").write_text(SWEEP)
    p = bnexp("sweep", str(tmp / "s.toml"), "--out", out, "--json", "--no-plots")
    assert p.returncode == 0, p.stderr[-3000:]
    return [named, Path(json.loads(p.stdout)["run_dir"])]


def _float(cell: str) -> float:
    return math.nan if cell == "" else float(cell)


def test_csv_reads_back_to_every_saved_number(two_runs, tmp_path):
    target = tmp_path / "all.csv"
    p = bnexp("export", *map(str, two_runs), "--out", str(target))
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(target.open()))
    seen = 0
    for run_dir in two_runs:
        run = results.load_run(run_dir)
        for rec in run.trials:
            mine = [r for r in rows if r["run"] == run_dir.name and r["trial_id"] == rec.trial_id]
            steps = rec.history["step"]
            assert [int(r["step"]) for r in mine] == [int(s) for s in steps]
            assert [int(r["eval_index"]) for r in mine] == list(range(len(steps)))
            for key in ("test_acc", "test_loss", "train_loss", "test_acc_batch"):
                got = np.array([_float(r[key]) for r in mine], np.float64)
                want = rec.history[key].astype(np.float64)
                np.testing.assert_array_equal(got, want)  # exact: floats written as repr
            for r in mine:  # every config field as a column
                assert r["tag"] == rec.tag and int(r["seed"]) == rec.seed
                assert float(r["lr"]) == rec.trial_dict["lr"]
                assert r["model.norm"] == rec.trial_dict["model"]["norm"]
                assert json.loads(r["model.widths"]) == rec.trial_dict["model"]["widths"]
                assert r["experiment"] == run.experiment
                fin = rec.final_test_accuracy
                assert (
                    (r["final_test_accuracy"] == "")
                    if fin is None
                    else float(r["final_test_accuracy"]) == fin
                )
            seen += len(mine)
    assert seen == len(rows) > 0
    sweep_rows = [r for r in rows if r["run"] == two_runs[1].name]
    assert {r["model.norm_options"] for r in sweep_rows} == {'[["momentum", 0.2]]'}
    assert len(sweep_rows) == 2 * 3  # 2 seeds x (step 0, 10, 20)


def test_jsonl_to_stdout_matches_the_csv_table(two_runs):
    p = bnexp("export", str(two_runs[0]), "--format", "jsonl")
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    columns, rows = export.table([two_runs[0]])
    assert len(lines) == len(rows) and list(lines[0]) == columns
    for got, want in zip(lines, rows, strict=True):
        for k in columns:
            w = want.get(k)
            assert got[k] == w or (w is None and got[k] is None), k
    buf = io.StringIO()
    export.write([two_runs[0]], "csv", None, stdout=buf)
    assert len(buf.getvalue().splitlines()) == len(rows) + 1


def test_bad_requests_are_one_line(two_runs, tmp_path):
    p = bnexp("export", str(two_runs[0]), "--format", "xml")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "csv, jsonl, parquet" in p.stderr
    p = bnexp("export", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    p = bnexp("export", str(two_runs[0]), "--format", "parquet")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--out FILE" in p.stderr


def test_parquet_without_pyarrow_is_one_line(two_runs, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "pyarrow" else real(n, *a)
    )
    with pytest.raises(export.ExportError, match=r"needs pyarrow.*bnexp\[parquet\]"):
        export.write([two_runs[0]], "parquet", tmp_path / "x.pq", stdout=io.StringIO())
    assert not (tmp_path / "x.pq").exists()


def test_parquet_reads_back_to_the_same_table(two_runs, tmp_path):
    """pyarrow is a test dependency, so this path runs in CI: every column and value of the
    parquet file equals export.table's (NaN histories as nulls)."""
    pq = pytest.importorskip("pyarrow.parquet")
    target = tmp_path / "x.pq"
    p = bnexp("export", *map(str, two_runs), "--format", "parquet", "--out", str(target))
    assert p.returncode == 0, p.stderr
    columns, rows = export.table(two_runs)
    got = pq.read_table(target).to_pylist()
    assert len(got) == len(rows) > 0 and list(got[0]) == columns
    for g, w in zip(got, rows, strict=True):
        for k in columns:
            want = w.get(k)
            if isinstance(want, float) and math.isnan(want):
                want = None
            assert g[k] == want, (k, g[k], want)
