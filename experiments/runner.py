"""Run a named experiment end to end: validate, train (resuming what is saved), analyze, save.

Nothing computed is lost: every group's results are written as soon as the group finishes, Ctrl-C
and SIGTERM mark the run "interrupted" and keep what is saved, and `resume` trains only the trials
that have no saved result, then produces the same summary as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnexp import compat, data, distributed, metrics, plots, results, stats, stopping
from bnexp.atomic import write_text_atomic
from bnexp.errors import Interrupted, WriteFailed
from bnexp.sweep import ProgressEvent, Trial, TrialResult, run_sweep
from experiments.base import Analysis, Config, ConfigError, Experiment, check_common, config_dict


class RunInterrupted(Interrupted):
    """Raised (from KeyboardInterrupt or SIGTERM) after the run directory was marked."""

    def __init__(self, run_dir: Path, done: int, total: int):
        super().__init__(
            f"interrupted; {done}/{total} trials saved in {run_dir} "
            f"(finish with --resume {run_dir})"
        )
        self.run_dir = run_dir


@dataclass
class Outcome:
    experiment: Experiment
    config: Config
    run_dir: Path | None  # None on a distributed job's processes other than 0
    trials: list[Trial]
    results: list[TrialResult]
    analysis: Analysis | None  # None likewise
    timing: dict[str, float]


def targets(cfg: Config) -> tuple[float, ...]:
    """The accuracy targets an experiment reports steps-to-target for."""
    return cfg.accuracy_targets()


def prepare(exp: Experiment, cfg: Config) -> list[Trial]:
    """Check the config and the dataset, then expand the grid (raises ConfigError or
    data.DatasetError with one clear line)."""
    check_common(cfg)  # cheap checks first: no dataset load for an obviously bad option
    ds = data.load(cfg.dataset)  # missing dataset offline -> DatasetError before any training
    check_common(cfg, num_train=int(ds.x_train.shape[0]))
    if exp.validate is not None:
        exp.validate(cfg)
    return exp.trials(cfg)


def load_config(exp: Experiment, run_dir: Path) -> Config:
    compat.check_run_dir(run_dir)  # a missing or garbled config.json: one line naming it
    run = results.load_run(run_dir)
    if run.experiment != exp.name:
        raise ConfigError(f"{run_dir} is a run of {run.experiment!r}, not {exp.name!r}")
    try:
        return results.dataclass_from_dict(exp.config_type, run.config)
    except (TypeError, ValueError) as e:  # a field removed or renamed since the run was made
        raise compat.IncompatibleRun(
            f"{run_dir}/config.json no longer fits this bnexp ({e}); start a new run"
        ) from None


def _raise_if_stopped() -> None:
    stopping.check()


def setup_process(dist: distributed.Settings | None = None) -> None:
    """The process-wide settings a run needs, before JAX starts its backends: one host device
    per core (sweep.configure_host_devices), joining a distributed job when asked (dist, see
    bnexp.distributed) and JAX's on-disk compilation cache. Idempotent; once JAX has started, the
    device count it has stays."""
    import os

    from bnexp import sweep

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see cli.py: before scipy loads LAPACK
    host_devices = sweep.configure_host_devices()
    if dist is not None:
        distributed.initialize(dist, host_devices)
    sweep.enable_compilation_cache()


def run(
    exp: Experiment,
    cfg: Config,
    *,
    out: Path,
    resume: Path | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    make_plots: bool = True,
    argv: Sequence[str] | None = None,
    on_plan: Callable[[int, Any], None] | None = None,
) -> Outcome:
    """Train every trial of `exp` at `cfg` (or finish `resume`), analyze, write the summary.
    on_plan(group, plan): each sweep group's engine.Plan before it compiles (``--verbose``).

    In a distributed job (bnexp.distributed) every process calls this with the same arguments:
    process 0 alone owns the run directory (creates or resumes it, saves, analyses, plots); the
    others train their shards of every group and return an Outcome without a run directory."""
    t0 = time.perf_counter()
    owned: dict[str, Path] = {}

    def on_lost(message: str) -> None:  # a peer died: keep what is saved, resumable
        if "run_dir" in owned:
            results.set_status(owned["run_dir"], "interrupted", error=message)

    # SIGTERM is an interrupt from here on: before the run directory exists it leaves nothing
    # behind (new_run_dir removes a half-made one), after it the directory is marked interrupted
    with stopping.during_run():
        setup_process()  # starts JAX: a signal meanwhile waits for the check below
        _raise_if_stopped()
        with distributed.watchdog(on_lost):
            main = distributed.is_main()
            if resume is not None:  # process 0 reads the run's config; the others receive it
                mine = load_config(exp, resume) if main else None
                doc = distributed.broadcast("config", None if mine is None else config_dict(mine))
                cfg = (
                    mine if mine is not None else results.dataclass_from_dict(exp.config_type, doc)
                )
            trials = prepare(exp, cfg)
            _agree(exp, cfg, trials)
            _raise_if_stopped()
            if not main:  # a distributed job's other process: train its shards, keep nothing
                return _run_locked(exp, cfg, None, trials, t0, progress, make_plots, on_plan)
            lock = contextlib.ExitStack()  # one process at a time trains into a run directory
            run_dir = Path(resume) if resume is not None else None
            try:
                if run_dir is not None:
                    lock.enter_context(results.run_lock(run_dir))
                    compat.remove_temp_files(run_dir)  # what a killed (SIGKILL) writer left
                else:
                    run_dir = _new_run_dir(exp, cfg, out, argv)
                    lock.enter_context(results.run_lock(run_dir))
                owned["run_dir"] = run_dir
                with lock:
                    return _run_locked(exp, cfg, run_dir, trials, t0, progress, make_plots, on_plan)
            except OSError as e:  # ENOSPC, EROFS, ...: one line; saved files are whole (atomic)
                if e.errno not in _WRITE_ERRNOS:
                    raise
                raise WriteFailed(e, run_dir) from None


def _new_run_dir(exp: Experiment, cfg: Config, out: Path, argv: Sequence[str] | None) -> Path:
    """A new run directory, with the experiment's own files (a sweep's copied TOML) in it."""
    run_dir = results.new_run_dir(
        out,
        exp.name,
        config_dict(cfg),
        preset=cfg.preset,
        argv=list(argv) if argv is not None else None,
    )
    for name, text in (exp.files(cfg) if exp.files is not None else {}).items():
        write_text_atomic(run_dir / name, text)
    return run_dir


def _agree(exp: Experiment, cfg: Config, trials: Sequence[Trial]) -> None:
    """In a distributed job: the same code, config, trials and data on every process (one line
    on every process otherwise), before any training."""
    if not distributed.active():
        return
    ds = data.load(cfg.dataset)
    arrays = {
        "x_train": ds.x_train,
        "y_train": ds.y_train,
        "x_test": ds.x_test,
        "y_test": ds.y_test,
    }
    distributed.agree(
        exp.name,
        {
            "code": distributed.code_fingerprint(),
            "config": distributed.fingerprint(config_dict(cfg)),
            "trials": distributed.fingerprint([results.trial_id(t) for t in trials]),
            "data": distributed.data_fingerprint(arrays),
        },
    )


_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG}


def _saved_results(run_dir: Path, trials: list[Trial]) -> dict[str, TrialResult]:
    """The trials of `trials` already saved in run_dir (a damaged one is not: it trains again)."""
    run = results.load_run(run_dir)
    compat.check_resumable(run, trials)  # saved by older code: resumed only if it means the same
    got = run.results_for(trials)
    return {results.trial_id(t): r for t, r in zip(trials, got, strict=True) if r is not None}


def _run_locked(
    exp: Experiment,
    cfg: Config,
    run_dir: Path | None,
    trials: list[Trial],
    t0: float,
    progress: Callable[[ProgressEvent], None] | None,
    make_plots: bool,
    on_plan: Callable[[int, Any], None] | None = None,
) -> Outcome:
    """The body of run() once the run directory is created (or resumed) and locked (run_dir None:
    a distributed job's process other than 0, which trains and keeps nothing)."""
    saved: dict[str, TrialResult] = {}
    todo = list(trials)
    timing = {"compile_seconds": 0.0, "compile_work_seconds": 0.0, "eval_seconds": 0.0}

    def on_group_done(group: list[TrialResult]) -> None:
        if run_dir is not None:  # saved first: an interrupt keeps a finished group
            results.save_group(run_dir, group)
        for r in group:
            saved[results.trial_id(r.trial)] = r
        _raise_if_stopped()
        for key in ("compile_seconds", "compile_work_seconds"):  # waited, compile threads'
            timing[key] += max((r.extra.get(key, 0.0) for r in group), default=0.0)
        timing["eval_seconds"] += max(  # in evaluation programs (engine.GroupRun)
            (r.extra.get("eval_seconds", 0.0) for r in group), default=0.0
        )

    def report(event: ProgressEvent) -> None:
        if event.phase != "done":  # "done" comes just before the group is saved: save it first
            _raise_if_stopped()
        if progress is not None:
            progress(event)

    if run_dir is None:  # process I > 0: process 0's saved trials are done; train the rest
        done = set(distributed.broadcast("saved", None))
        todo = [t for t in trials if results.trial_id(t) not in done]
        if todo:
            run_sweep(todo, progress=report, on_group_done=on_group_done, on_plan=on_plan)
        return Outcome(exp, cfg, None, trials, [], None, {"trials_run_now": len(todo)})
    try:
        with results.tracking_status(run_dir):
            results.set_status(run_dir, "running")
            saved.update(_saved_results(run_dir, trials))
            distributed.broadcast("saved", sorted(saved))  # the others train the same todo
            _raise_if_stopped()
            todo = [t for t in trials if results.trial_id(t) not in saved]
            if todo:
                run_sweep(todo, progress=report, on_group_done=on_group_done, on_plan=on_plan)
            ordered = [saved[results.trial_id(t)] for t in trials]
            _raise_if_stopped()
            timing.update(trials_run_now=len(todo), trials_resumed=len(trials) - len(todo))
            analysis = _analyze(exp, cfg, run_dir, ordered, t0, timing, make_plots)
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir, len(saved), len(trials)) from None
    return Outcome(exp, cfg, run_dir, trials, ordered, analysis, timing)


def _analyze(
    exp: Experiment,
    cfg: Config,
    run_dir: Path,
    ordered: list[TrialResult],
    t0: float,
    timing: dict[str, float],
    make_plots: bool,
) -> Analysis:
    """Analyze the results, draw the plots and write summary.json (timing completed in place)."""
    analysis = exp.analyze(cfg, ordered)
    analysis.verdict = divergence_note(analysis.verdict, ordered)
    train_s = time.perf_counter() - t0
    if make_plots and exp.plot is not None:
        analysis.plots = _plots(exp, cfg, ordered, analysis, run_dir / "plots")
    timing.update(wall_time_seconds=time.perf_counter() - t0, train_time_seconds=train_s)
    _raise_if_stopped()  # the last checkpoint: after the summary the run is complete
    results.write_summary(
        run_dir,
        summary_rows(analysis),
        verdict_json(analysis),
        {k: timing[k] for k in _TIMING_KEYS},
        experiment=exp.name,
        preset=cfg.preset,
        tables=[t.to_json() for t in analysis.tables],
        plots=[p.name for p in analysis.plots],
    )
    return analysis


_TIMING_KEYS = (
    "wall_time_seconds",
    "train_time_seconds",
    "compile_seconds",
    "compile_work_seconds",
    "eval_seconds",
    "trials_run_now",
    "trials_resumed",
)


def divergence_note(verdict: Any, ordered: Sequence[TrialResult]) -> Any:
    """A divergence storm (every trial diverged) said in the evidence: no setting trained, so the
    conditions had nothing to compare; the outcome stays what the conditions give. (A sweep's
    verdict is a list, one per claim, or None.)"""
    if verdict is None:
        return None
    if isinstance(verdict, list | tuple):
        return [divergence_note(v, ordered) for v in verdict]
    steps = sorted({r.diverged_at for r in ordered if r.diverged_at is not None})
    if not ordered or len(steps) == 0 or any(r.diverged_at is None for r in ordered):
        return verdict
    at = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
    note = (
        f"every trial diverged ({len(ordered)} of {len(ordered)}, at {at}): no setting trained, "
        "so there is nothing to compare (lower the learning rate)"
    )
    evidence = f"{note}; {verdict.evidence}" if verdict.evidence else note
    return dataclasses.replace(verdict, evidence=evidence)


def _plots(
    exp: Experiment, cfg: Config, ordered: list[TrialResult], analysis: Analysis, plot_dir: Path
) -> list[Path]:
    """The experiment's plots and the verdict's forest plot (if it has conditions)."""
    assert exp.plot is not None
    plot_dir.mkdir(exist_ok=True)
    made = [Path(p) for p in exp.plot(cfg, ordered, analysis, plot_dir)]
    vd = verdict_json(analysis)
    if any(v["conditions"] for v in _as_list(vd)):
        made.append(plots.forest([(exp.name, vd)], plot_dir / "verdict.png"))
    return made


def verdict_json(analysis: Analysis) -> dict[str, Any] | list[dict[str, Any]] | None:
    """The analysis' verdict as JSON: a dict, a list of them (one per claim) or None."""
    v = analysis.verdict
    if v is None:
        return None
    return [x.to_json() for x in v] if isinstance(v, list | tuple) else v.to_json()


def _as_list(vd: Any) -> list[dict[str, Any]]:
    return [] if vd is None else list(vd) if isinstance(vd, list) else [vd]


def summary_rows(analysis: Analysis) -> list[dict[str, Any]]:
    return [dict(r, table=t.title) for t in analysis.tables for r in t.rows]


def trial_json(t: Trial, r: TrialResult, tgts: Sequence[float]) -> dict[str, Any]:
    """One trial in the `--json` document (keys fixed by the CLI issue)."""
    steps = {
        f"{x:g}": metrics.steps_to_target(r.history["step"], r.history["test_acc"], x) for x in tgts
    }
    return {
        "config": results.trial_to_dict(t),
        "tag": t.tag,
        "seed": t.seed,
        "final_test_accuracy": r.final_test_accuracy,
        "steps_to_target": steps,
        "steps_to_target_interval": {
            f"{x:g}": stats.censored_steps(r.history["step"], r.history["test_acc"], x).to_dict()
            for x in tgts
        },
        "eval_steps": [int(s) for s in r.history["step"]],
        "diverged_at": r.diverged_at,
        "seconds": r.seconds,
    }


def outcome_json(o: Outcome) -> dict[str, Any]:
    tgts = targets(o.config)
    return {
        "experiment": o.experiment.name,
        "preset": o.config.preset,
        "run_dir": str(o.run_dir),
        "config": config_dict(o.config),
        "rows": summary_rows(o.analysis),
        "tables": [t.to_json() for t in o.analysis.tables],
        "verdict": verdict_json(o.analysis),
        "trials": [trial_json(t, r, tgts) for t, r in zip(o.trials, o.results, strict=True)],
        "plots": [str(p) for p in o.analysis.plots],
        **o.timing,
    }


def replace(cfg: Config, **changes: Any) -> Config:
    """dataclasses.replace, with unknown fields reported as a ConfigError."""
    names = {f.name for f in dataclasses.fields(cfg)}
    bad = [k for k in changes if k not in names]
    if bad:
        raise ConfigError(f"{type(cfg).__name__} has no field {bad[0]!r}")
    return dataclasses.replace(cfg, **changes)
