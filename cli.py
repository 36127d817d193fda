"""The bnexp command line (Typer). Thin: parse options, call experiments/bnexp, render.

What a command prints is drawn by bnexp.render (tables, verdicts, the reproduce summary and
JSON document); what it does beyond parsing is in experiments.commands (names, presets,
configs, output directories, reproduce, report) and experiments.runner (a run).

The shared option types (with their help text) are in experiments.options; joining a
distributed job, running an experiment with its progress, and the exit codes in
experiments.entry. Errors: every error type of bnexp (bnexp.errors) carries its exit code: usage
2, runtime 1, interrupt 130; each prints one line on stderr, no tracebacks unless --debug
(entry.run_app maps by type, never by message).
"""

from __future__ import annotations

import os
import signal
import sys

_STARTING = True  # until main() runs: a signal has nothing to keep yet, so it just exits 130

# One OpenBLAS thread (before numpy or scipy load it): XLA runs its own thread pools, and jaxlib's
# batched LAPACK kernels (eigh in decorrelated BN) call it from several pool threads at once; a
# multithreaded OpenBLAS then oversubscribes the cores (jax-ml/jax#39292: heap corruption on many
# cores). The hang seen on 2 host devices was XLA's pool itself (norms.CPU_POOL_KERNELS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _stop_while_starting(signum, frame):  # noqa: ARG001
    """SIGTERM/SIGINT while the modules still load (no run directory exists yet): exit 130 with
    one line, not a traceback from inside an import; main() hands over to bnexp.stopping."""
    if _STARTING:
        os.write(2, b"bnexp: interrupted\n")
        os._exit(130)
    raise KeyboardInterrupt


if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "bnexp":  # the command, not an import
    signal.signal(signal.SIGTERM, _stop_while_starting)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop_while_starting)

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

import bnexp  # noqa: E402
from experiments import entry  # noqa: E402
from experiments.options import (  # noqa: E402
    Activation,
    AutoDist,
    Baseline,
    BenchQuick,
    Bn,
    Coordinator,
    Dataset,
    ExportFormat,
    ExportOut,
    ExportRuns,
    Html,
    Json,
    Lr,
    Mirror,
    NoPlots,
    Norms,
    NumProcesses,
    Only,
    Out,
    Preset,
    ProcessId,
    ReportRef,
    ReproduceOut,
    ReproducePreset,
    Resume,
    RunRef,
    RunsRoot,
    Seeds,
    Sets,
    Steps,
    SweepFile,
    SweepResume,
    Torch,
    Verbose,
    no_flag_metavar,
)

no_flag_metavar()

app = typer.Typer(
    name="bnexp",
    help="Test what the Batch Normalization literature claims, on your own machine, in minutes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DEBUG = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bnexp {bnexp.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help="Say on stderr what the engine chose and why (member blocks)."
        ),
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug
    if verbose:
        entry.log_choices()


@app.command("datasets")
def datasets_cmd() -> None:
    """List every dataset: example shape, sizes, source, and whether it is available locally."""
    from bnexp import render

    render.datasets_table()


@app.command("download")
def download_cmd(
    name: Annotated[str, typer.Argument(help="Dataset to fetch (see `bnexp datasets`).")],
    mirror: Mirror = None,
) -> None:
    """Fetch one dataset into the cache; every file is verified before it is used."""
    entry.download(name, mirror)


@app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Experiment name (see `bnexp list`).")],
    preset: Preset = "quick",
    seeds: Seeds = None,
    dataset: Dataset = None,
    steps: Steps = None,
    set_: Sets = None,
    out: Out = Path("runs"),
    json_out: Json = False,
    no_plots: NoPlots = False,
    resume: Resume = None,
    verbose: Verbose = False,
    coordinator: Coordinator = None,
    num_processes: NumProcesses = None,
    process_id: ProcessId = None,
    distributed: AutoDist = False,
) -> None:
    """Run a named experiment, print its tables and verdict, write a run directory."""
    from experiments import commands

    exp = commands.experiment(name)
    cfg = commands.resolve_config(exp, preset, seeds, dataset, steps, set_ or [])
    main = entry.join(coordinator, num_processes, process_id, distributed)
    if main and resume is not None:
        entry.check_resume(resume)
    entry.execute(
        exp,
        cfg,
        out=out,
        resume=resume,
        json_out=json_out,
        no_plots=no_plots,
        verbose=verbose,
        main=main,
    )


@app.command("compare")
def compare_cmd(
    bn: Bn = True,
    baseline: Baseline = True,
    norm: Norms = None,
    activation: Activation = None,
    lr: Lr = None,
    steps: Steps = None,
    preset: Preset = "quick",
    seeds: Seeds = None,
    dataset: Dataset = None,
    out: Out = Path("runs"),
    json_out: Json = False,
    no_plots: NoPlots = False,
    verbose: Verbose = False,
    coordinator: Coordinator = None,
    num_processes: NumProcesses = None,
    process_id: ProcessId = None,
    distributed: AutoDist = False,
) -> None:
    """Paired arms (same seeds, data order and initial weights): BN vs the unnormalized baseline."""
    from experiments import commands

    exp = commands.experiment("compare")
    fields = {"arms": entry.compare_arms(bn, baseline, norm or []), "activation": activation}
    cfg = commands.resolve_config(exp, preset, seeds, dataset, steps, [], lr=lr, **fields)
    main = entry.join(coordinator, num_processes, process_id, distributed)
    entry.execute(
        exp,
        cfg,
        out=out,
        resume=None,
        json_out=json_out,
        no_plots=no_plots,
        verbose=verbose,
        main=main,
    )


@app.command("sweep")
def sweep_cmd(
    file: SweepFile = None,
    out: Out = Path("runs"),
    json_out: Json = False,
    no_plots: NoPlots = False,
    resume: SweepResume = None,
    seeds: Seeds = None,
    steps: Steps = None,
    verbose: Verbose = False,
) -> None:
    """Run your own sweep from a file: tables, plots, a run directory, a verdict per claim."""
    from experiments import sweepclaims

    if resume is not None and not (resume / "config.json").is_file():
        from bnexp.errors import UsageError

        raise UsageError(f"--resume {resume}: not a bnexp run directory (no config.json)")
    exp, cfg = sweepclaims.load(file, resume=resume, seeds=seeds, steps=steps)
    entry.execute(
        exp, cfg, out=out, resume=resume, json_out=json_out, no_plots=no_plots, verbose=verbose
    )


@app.command("export")
def export_cmd(
    run_dirs: ExportRuns,
    format_: ExportFormat = "csv",
    out: ExportOut = None,
    runs_root: RunsRoot = Path("runs"),
) -> None:
    """One tidy table of runs: a row per (trial, evaluation point), every config field and metric."""
    entry.export(run_dirs, format_, out, runs_root)


@app.command("list")
def list_cmd() -> None:
    """Every experiment, the claim it tests and its source."""
    from bnexp import render
    from experiments import REGISTRY

    render.experiments_table(REGISTRY)


@app.command("describe")
def describe_cmd(name: Annotated[str, typer.Argument(help="Experiment name.")]) -> None:
    """An experiment's config fields with defaults per preset, and what its table shows."""
    from bnexp import render
    from experiments import commands

    render.describe(commands.experiment(name))


@app.command("runs")
def runs_cmd(out: Out = Path("runs")) -> None:
    """Earlier runs: name, experiment, preset, date, status, verdict."""
    from bnexp import report, runs

    report.render_runs(runs.list_runs(out), report.make_console())


@app.command("show")
def show_cmd(
    run_dir: RunRef,
    out: Out = Path("runs"),
    json_out: Json = False,
) -> None:
    """Re-render a run's tables and verdict from its files, without training."""
    entry.show(run_dir, out, json_out)


@app.command("bench")
def bench_cmd(json_out: Json = False, quick: BenchQuick = False, torch: Torch = None) -> None:
    """Measure training throughput on this machine: the matmul peak, one model, lr sweeps, a CNN,
    and PyTorch eager doing the same (see BENCHMARKS.md)."""
    entry.bench(json_out, quick, torch)


@app.command("reproduce")
def reproduce_cmd(
    preset: ReproducePreset = "quick",
    only: Only = None,
    seeds: Seeds = None,
    out: ReproduceOut = None,
    json_out: Json = False,
    verbose: Verbose = False,
    coordinator: Coordinator = None,
    num_processes: NumProcesses = None,
    process_id: ProcessId = None,
    distributed: AutoDist = False,
) -> None:
    """Every claim in one command: run each experiment (reusing finished runs), write one report."""
    main = entry.join(coordinator, num_processes, process_id, distributed)
    entry.reproduce(preset, only, seeds, out, json_out, verbose, main, keep_going=not _DEBUG)


@app.command("report")
def report_cmd(
    run_dir: ReportRef,
    html_: Html = False,
    out: Out = Path("runs"),
) -> None:
    """Write report.md (and report.html) for one run, from its files; prints the paths."""
    from experiments import commands

    for p in commands.write_report(run_dir, out, html_).values():
        typer.echo(str(p))


def main() -> None:
    """Console-script entry point: run the app, turning unexpected errors into one line."""
    global _STARTING
    from bnexp import stopping

    _STARTING = False
    stopping.install()  # from here a signal stops at the next checkpoint (bnexp.stopping)
    try:
        entry.run_app(app, lambda: _DEBUG)
    finally:
        # The exit code is decided: a signal during the interpreter's shutdown (which resets
        # Python's handlers to SIG_DFL and can take seconds tearing down XLA) would end the
        # process as killed by SIGINT (-2) instead. Nothing is left to stop: ignore it.
        with contextlib.suppress(ValueError):  # (not the main thread: an embedding caller)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Compiles still queued (an interrupted group's, bnexp.engine.cache) are dropped: the
        # interpreter's exit then waits only for the ones running, not for every queued one.
        cache = sys.modules.get("bnexp.engine.cache")
        if cache is not None:
            cache.cancel_compiles()


if __name__ == "__main__":
    main()
