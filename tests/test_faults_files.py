"""The fault matrix, items 3-6: damaged run files, a full or read-only disk, two runs in one
second, and resuming a run saved by older code. Through the command line's own entry point
(cli.main) in-process, so each case costs no new process and no JAX start-up.

One real lr-sweep smoke run is made once (module fixture) and copied for every case; the judged
part of its summary (verdict and tables) is what every resume must give back.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

from bnexp import atomic, results
from experiments import REGISTRY, runner

RUN = ["run", "lr-sweep"]
TOTAL_TRIALS = 6


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete lr-sweep smoke run (no plots) and the JSON of its verdict and tables."""
    exp = REGISTRY["lr-sweep"]
    out = tmp_path_factory.mktemp("finished")
    o = runner.run(exp, exp.preset("smoke"), out=out, make_plots=False)
    judged = {
        "verdict": o.analysis.verdict.to_json(),
        "tables": [t.to_json() for t in o.analysis.tables],
    }
    return o.run_dir, json.loads(json.dumps(results.to_jsonable(judged)))


@pytest.fixture
def bnexp(monkeypatch, capsys):
    """Run `bnexp ARGS` through cli.main in this process: (exit code, stdout, stderr)."""
    import cli

    def call(*args: str) -> tuple[int, str, str]:
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        monkeypatch.setattr(sys, "argv", ["bnexp", *args])
        try:
            with pytest.raises(SystemExit) as e:
                cli.main()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        out, err = capsys.readouterr()
        return e.value.code, out, err

    return call


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run_dir.name
    shutil.copytree(run_dir, dst)
    return dst


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _judged(stdout: str) -> dict:
    doc = json.loads(stdout)
    return {"verdict": doc["verdict"], "tables": doc["tables"]}


def _temp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob(".*") if p.name != ".lock"]


def _records(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "trials").glob("*.json"))


def _edit_json(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


# ---- 3: a missing or garbled config.json ------------------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_damaged_config_is_named_by_resume_show_and_report(finished, tmp_path, bnexp, damage):
    run_dir = _copy(finished[0], tmp_path)
    cfg = run_dir / "config.json"
    cfg.unlink() if damage == "missing" else cfg.write_text('{"preset": "smo')
    for args in (
        [*RUN, "--resume", str(run_dir)],
        ["show", str(run_dir)],
        ["report", str(run_dir)],
    ):
        code, _, err = bnexp(*args)
        line = _one_line(err)
        assert code == 1, (args, err)
        assert str(cfg) in line and ("missing" if damage == "missing" else "damaged") in line
        assert "bnexp run lr-sweep" in line  # the fix
    assert len(_records(run_dir)) == TOTAL_TRIALS  # nothing was touched


def test_damaged_summary_is_named_by_show(finished, tmp_path, bnexp):
    run_dir = _copy(finished[0], tmp_path)
    (run_dir / "summary.json").write_text('{"rows": [')
    code, _, err = bnexp("show", str(run_dir))
    line = _one_line(err)
    assert code == 1 and "summary.json is damaged" in line and f"--resume {run_dir}" in line
    code, out, err = bnexp(*RUN, "--resume", str(run_dir), "--json", "--no-plots")
    assert code == 0, err
    assert _judged(out) == finished[1] and json.loads(out)["trials_run_now"] == 0


# ---- 4: two new runs into one --out in the same second ----------------------------------------


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5).astimezone()
    made: list[Path] = []
    go = threading.Barrier(8)

    def make() -> None:
        go.wait()
        made.append(
            results.new_run_dir(tmp_path, "lr-sweep", {"preset": "smoke"}, now=now, environment={})
        )

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 8 and len(set(made)) == 8
    for p in made:  # each one whole: its own config and status
        assert json.loads((p / "status.json").read_text())["status"] == "running"
        assert json.loads((p / "config.json").read_text()) == {"preset": "smoke"}


# ---- 5: a full disk and a read-only file system -----------------------------------------------


def _failing_fsync(monkeypatch, code: int, when=lambda name: True) -> list[str]:
    """Make bnexp.atomic's fsync fail with `code` for temp files whose name `when` accepts."""
    failed: list[str] = []
    real = atomic._fsync

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if when(Path(name).name):
            failed.append(name)
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(atomic, "_fsync", fsync)
    return failed


def test_full_disk_at_the_summary_fails_the_run_and_keeps_every_trial(
    finished, tmp_path, bnexp, monkeypatch
):
    run_dir = _copy(finished[0], tmp_path)
    (run_dir / "summary.json").unlink()
    failed = _failing_fsync(monkeypatch, errno.ENOSPC, lambda n: n.startswith(".summary.json."))
    code, _, err = bnexp(*RUN, "--resume", str(run_dir), "--json", "--no-plots")
    line = _one_line(err)
    assert code == 1 and failed
    assert "cannot write" in line and "summary.json" in line and "No space left" in line
    assert f"--resume {run_dir}" in line
    run = results.load_run(run_dir)
    assert run.status == "failed" and "No space left" in run.status_info["error"]
    assert not (run_dir / "summary.json").exists() and not _temp_files(run_dir)
    assert len(run.trials) == TOTAL_TRIALS and not run.broken
    monkeypatch.undo()  # space again: resume finishes it, nothing trained again
    code, out, err = bnexp(*RUN, "--resume", str(run_dir), "--json", "--no-plots")
    assert code == 0, err
    assert _judged(out) == finished[1] and json.loads(out)["trials_run_now"] == 0


def test_read_only_disk_is_one_line_and_changes_nothing(finished, tmp_path, bnexp, monkeypatch):
    run_dir = _copy(finished[0], tmp_path)
    results.set_status(run_dir, "interrupted")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    _failing_fsync(monkeypatch, errno.EROFS)
    code, _, err = bnexp(*RUN, "--resume", str(run_dir), "--no-plots")
    line = _one_line(err)
    assert code == 1 and "Read-only file system" in line and "cannot write" in line
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # the status could not be written either: every file as it was


def test_full_disk_while_saving_a_group_keeps_the_groups_saved_before(
    finished, tmp_path, bnexp, monkeypatch
):
    run_dir = _copy(finished[0], tmp_path)
    (run_dir / "summary.json").unlink()
    for p in _records(run_dir):  # the bn group was never saved: resume trains it
        if json.loads(p.read_text())["tag"].startswith("bn@"):
            p.unlink()
            p.with_suffix(".npz").unlink()
    failed = _failing_fsync(monkeypatch, errno.ENOSPC, lambda n: ".npz." in n)
    code, _, err = bnexp(*RUN, "--resume", str(run_dir), "--no-plots")
    line = _last(err)
    assert code == 1 and failed and "No space left" in line and f"--resume {run_dir}" in line
    run = results.load_run(run_dir)
    assert run.status == "failed" and not _temp_files(run_dir) and not run.broken
    assert len(run.trials) == 3 and {t.tag.split("@")[0] for t in run.trials} == {"baseline"}
    monkeypatch.undo()
    code, out, err = bnexp(*RUN, "--resume", str(run_dir), "--json", "--no-plots")
    assert code == 0, err
    assert _judged(out) == finished[1] and json.loads(out)["trials_run_now"] == 3


def _last(err: str) -> str:
    """The last stderr line (the progress lines of a training come before it)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    return lines[-1]


def test_full_disk_before_the_run_directory_leaves_none(tmp_path, bnexp, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    _failing_fsync(monkeypatch, errno.ENOSPC, lambda n: n.startswith(".config.json."))
    code, _, err = bnexp(*RUN, "--preset", "smoke", "--out", str(out))
    line = _one_line(err)
    assert code == 1 and "No space left" in line and "no run directory was left" in line
    assert list(out.iterdir()) == []


# ---- 6: resuming a run saved by older code ---------------------------------------------------


def test_run_saved_before_a_field_with_a_default_existed_resumes(finished, tmp_path, bnexp):
    """Trial ids of schema 1 hashed every field, so adding one orphaned every saved trial.
    A run saved by such code (schema 1 in its status, files named by the old full hash, trial
    configs without a field that now has its default) resumes with nothing trained again."""
    run_dir = _copy(finished[0], tmp_path)
    (run_dir / "summary.json").unlink()
    _edit_json(run_dir / "status.json", lambda d: d.pop("trial_id_schema"))
    for p in _records(run_dir):
        rec = json.loads(p.read_text())
        assert rec["trial"]["probe_batch_size"] == 1000  # at its default: as if added since
        del rec["trial"]["probe_batch_size"]
        old_id = results.config_hash(rec["trial"], length=12)  # schema 1: the full dict
        rec["trial_id"] = old_id
        rec.pop("trial_id_schema")
        (p.parent / f"{old_id}.json").write_text(json.dumps(rec))
        p.with_suffix(".npz").rename(p.parent / f"{old_id}.npz")
        p.unlink()
    code, out, err = bnexp(*RUN, "--resume", str(run_dir), "--json", "--no-plots")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["trials_run_now"] == 0 and doc["trials_resumed"] == TOTAL_TRIALS
    assert _judged(out) == finished[1]


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("unknown field", "old_knob"),
        ("changed value", "lr was 0.2"),
        ("changed meaning", "eval_per_decade"),
        ("newer schema", "newer bnexp"),
        ("config field removed", "no longer fits"),
    ],
)
def test_run_whose_trials_no_longer_mean_the_same_is_refused(
    finished, tmp_path, bnexp, damage, needle
):
    run_dir = _copy(finished[0], tmp_path)
    (run_dir / "summary.json").unlink()
    first = _records(run_dir)[0]
    edits = {
        "unknown field": (first, lambda d: d["trial"].update(old_knob=3)),
        "changed value": (first, lambda d: d["trial"].update(lr=0.2)),
        "changed meaning": (first, lambda d: d["trial"].pop("eval_per_decade")),
        "newer schema": (run_dir / "status.json", lambda d: d.update(trial_id_schema=99)),
        "config field removed": (run_dir / "config.json", lambda d: d.update(old_knob=1)),
    }
    path, edit = edits[damage]
    _edit_json(path, edit)
    before = sorted(p.name for p in (run_dir / "trials").iterdir())
    code, _, err = bnexp(*RUN, "--resume", str(run_dir))
    line = _one_line(err)
    assert code == 2 and needle in line, line
    assert sorted(p.name for p in (run_dir / "trials").iterdir()) == before  # nothing trained


# ---- 9: a divergence storm ------------------------------------------------------------------


def test_a_sweep_where_every_trial_diverges_finishes_and_says_why(tmp_path, bnexp):
    args = ["--preset", "smoke", "--set", "lrs=1e6,1e7", "--set", "seeds=2"]
    code, out, err = bnexp(*RUN, *args, "--out", str(tmp_path), "--json", "--no-plots")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["trials"]) == 8  # 2 arms x 2 lrs x 2 seeds
    for t in doc["trials"]:  # every divergence step recorded, no accuracy made up
        assert isinstance(t["diverged_at"], int) and 0 < t["diverged_at"] <= 60, t
        assert t["final_test_accuracy"] is None
    saved = results.load_run(Path(doc["run_dir"]))
    assert sorted(r.diverged_at for r in saved.trials) == sorted(
        t["diverged_at"] for t in doc["trials"]
    )
    v = doc["verdict"]
    assert v["outcome"] == "inconclusive" and v["reproduced"] is None
    assert v["evidence"].startswith("every trial diverged (8 of 8, at step"), v["evidence"]
    assert "nothing to compare" in v["evidence"]
    assert saved.status == "complete"
