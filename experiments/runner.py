"""Run a named experiment end to end: validate, train (resuming what is saved), analyze, save.

Nothing computed is lost: every group's results are written as soon as the group finishes, Ctrl-C
and SIGTERM mark the run "interrupted" and keep what is saved, and `resume` trains only the trials
that have no saved result, then produces the same summary as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnexp import data, metrics, plots, results, stats
from bnexp.errors import Interrupted
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
    run_dir: Path
    trials: list[Trial]
    results: list[TrialResult]
    analysis: Analysis
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
    run = results.load_run(run_dir)
    if run.experiment != exp.name:
        raise ConfigError(f"{run_dir} is a run of {run.experiment!r}, not {exp.name!r}")
    return results.dataclass_from_dict(exp.config_type, run.config)


SIGINT_IGNORED_NOTE = (
    "note: SIGINT is ignored in this process (started as a background job?), so Ctrl-C will not "
    "stop it; SIGTERM (kill {pid}) interrupts it and keeps every finished group"
)

_SIGINT_NOTED = False
_STOP: list[int] = []  # signals received during this run (SIGTERM)


def _raise_if_stopped() -> None:
    if _STOP:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM interrupts a run like Ctrl-C does (exit 130, the run directory kept, resumable).

    A process that inherited SIGINT as ignored (a background job of a non-interactive shell, or
    nohup) keeps ignoring it, as POSIX asks of such a job: bnexp says so once on stderr and names
    SIGTERM as the way to stop it."""

    def handler(signum, frame):  # noqa: ARG001
        # The KeyboardInterrupt can be swallowed when the signal lands inside a callback that
        # Python runs and ignores errors of (a gc callback of XLA's, a __del__): the flag makes
        # the next progress report or finished group raise it again (_raise_if_stopped).
        _STOP.append(signum)
        raise KeyboardInterrupt

    global _SIGINT_NOTED
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and not _SIGINT_NOTED:
        print(SIGINT_IGNORED_NOTE.format(pid=os.getpid()), file=sys.stderr, flush=True)
        _SIGINT_NOTED = True  # once per process (reproduce runs several experiments)
    _STOP.clear()
    # SIGTERM always; SIGINT too unless it is ignored (then it stays ignored, see above)
    sigs = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        sigs.append(signal.SIGINT)
    try:
        old = {sig: signal.signal(sig, handler) for sig in sigs}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def setup_process() -> None:
    """The process-wide settings a run needs, before JAX starts its backends: one host device
    per core (sweep.configure_host_devices) and JAX's on-disk compilation cache. Idempotent; once
    JAX has started, the device count it has stays."""
    from bnexp import sweep

    sweep.configure_host_devices()
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
    on_plan(group, plan): each sweep group's engine.Plan before it compiles (``--verbose``)."""
    setup_process()
    t0 = time.perf_counter()
    if resume is not None:
        cfg = load_config(exp, resume)
    trials = prepare(exp, cfg)
    lock = contextlib.ExitStack()  # one process at a time trains into a run directory
    if resume is not None:
        run_dir = Path(resume)
        lock.enter_context(results.run_lock(run_dir))
        results.set_status(run_dir, "running")
    else:
        run_dir = results.new_run_dir(
            out,
            exp.name,
            config_dict(cfg),
            preset=cfg.preset,
            argv=list(argv) if argv is not None else None,
        )
        lock.enter_context(results.run_lock(run_dir))
    with lock:
        return _run_locked(exp, cfg, run_dir, trials, t0, progress, make_plots, on_plan)


def _run_locked(
    exp: Experiment,
    cfg: Config,
    run_dir: Path,
    trials: list[Trial],
    t0: float,
    progress: Callable[[ProgressEvent], None] | None,
    make_plots: bool,
    on_plan: Callable[[int, Any], None] | None = None,
) -> Outcome:
    """The body of run() once the run directory is created (or resumed) and locked."""
    saved = {
        tid: r
        for tid, r in (
            (results.trial_id(t), r)
            for t, r in zip(trials, results.load_run(run_dir).results_for(trials), strict=True)
        )
        if r is not None
    }
    todo = [t for t in trials if results.trial_id(t) not in saved]
    compile_s = eval_s = 0.0

    def on_group_done(group: list[TrialResult]) -> None:
        nonlocal compile_s, eval_s
        _raise_if_stopped()
        results.save_group(run_dir, group)
        for r in group:
            saved[results.trial_id(r.trial)] = r
        compile_s += max((r.extra.get("compile_seconds", 0.0) for r in group), default=0.0)
        eval_s += max((r.extra.get("eval_seconds", 0.0) for r in group), default=0.0)

    with _sigterm_as_interrupt():
        try:
            with results.tracking_status(run_dir):
                if todo:

                    def report(event: ProgressEvent) -> None:
                        _raise_if_stopped()
                        if progress is not None:
                            progress(event)

                    run_sweep(todo, progress=report, on_group_done=on_group_done, on_plan=on_plan)
                ordered = [saved[results.trial_id(t)] for t in trials]
                analysis = exp.analyze(cfg, ordered)
                train_s = time.perf_counter() - t0
                if make_plots and exp.plot is not None:
                    plot_dir = run_dir / "plots"
                    plot_dir.mkdir(exist_ok=True)
                    analysis.plots = [Path(p) for p in exp.plot(cfg, ordered, analysis, plot_dir)]
                    vd = analysis.verdict.to_json()  # and the verdict's forest plot, if any
                    if vd["conditions"]:
                        analysis.plots.append(
                            plots.forest([(exp.name, vd)], plot_dir / "verdict.png")
                        )
                timing = {
                    "wall_time_seconds": time.perf_counter() - t0,
                    "train_time_seconds": train_s,
                    "compile_seconds": compile_s,
                    "eval_seconds": eval_s,  # in evaluation programs (engine.GroupRun)
                    "trials_run_now": len(todo),
                    "trials_resumed": len(trials) - len(todo),
                }
                results.write_summary(
                    run_dir,
                    summary_rows(analysis),
                    analysis.verdict.to_json(),
                    timing,
                    experiment=exp.name,
                    preset=cfg.preset,
                    tables=[t.to_json() for t in analysis.tables],
                    plots=[p.name for p in analysis.plots],
                )
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir, len(saved), len(trials)) from None
    return Outcome(exp, cfg, run_dir, trials, ordered, analysis, timing)


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
        "verdict": o.analysis.verdict.to_json(),
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
