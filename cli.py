"""The bnexp command line (Typer). Thin: parse options, call experiments/bnexp, render.

What a command prints is drawn by bnexp.render (tables, verdicts, the reproduce summary and
JSON document); what it does beyond parsing is in experiments.commands (names, presets,
configs, output directories, reproduce, report) and experiments.runner (a run).

Errors: every error type of bnexp (bnexp.errors) carries its exit code: usage 2, runtime 1,
interrupt 130; each prints one line on stderr, no tracebacks unless --debug. main() maps by
type, never by message (Click's own usage errors by their shape: ``show`` and ``exit_code``).

Over 300 lines: every option of every command is declared here with its help text (the
command line's documentation); the bench section belongs with bnexp.bench.
"""

from __future__ import annotations

import os
import signal
import sys

_STARTING = True  # until main() runs: a signal has nothing to keep yet, so it just exits 130

# One OpenBLAS thread (before numpy or scipy load it): XLA runs its own thread pools, and a
# multithreaded OpenBLAS called from several device threads at once (LAPACK eigh in decorrelated
# BN) was seen to deadlock in blas_thread_server (whitening quick preset, 2 host devices).
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
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

import bnexp  # noqa: E402
from bnexp.errors import BnexpError, UsageError  # noqa: E402


def _no_flag_metavar() -> None:
    """Typer (>= 0.20 or so) shows a ``<bool>`` type beside every on/off flag (``--json <bool>``,
    ``--help <bool>``), as if the flag took a value. A flag takes none: show no type for it."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_bnexp", False):
        return

    def display_type_rich(self, ctx):  # noqa: ANN001
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._bnexp = True
    option.display_type_rich = display_type_rich


_no_flag_metavar()

app = typer.Typer(
    name="bnexp",
    help="Test what the Batch Normalization literature claims, on your own machine, in minutes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DEBUG = False


def fail(message: str, code: int = 1) -> None:
    """Print one clean line on stderr and exit with `code` (2 usage, 1 runtime): for errors a
    command handles itself, so the Typer app exits cleanly without main (tests invoke it so)."""
    typer.echo(f"bnexp: error: {message}", err=True)
    raise typer.Exit(code)


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
        _log_choices()


def _log_choices() -> None:
    """bnexp's layout choices (bnexp.calibrate) logged on stderr, one line each (once)."""
    import logging

    log = logging.getLogger("bnexp")
    if any(getattr(h, "_bnexp", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("bnexp: %(message)s"))
    handler._bnexp = True
    log.addHandler(handler)
    log.setLevel(logging.INFO)


# ---- section: datasets (data issue) ---------------------------------------------------------


def _dataset_or_usage_error(name: str):
    """The registry entry for `name`; an unknown name is a usage error (exit 2) with a suggestion.
    Printed here (not left to main) so the Typer app alone, as tests invoke it, exits cleanly."""
    from bnexp import data

    try:
        return data.lookup(name)
    except data.UnknownDatasetError as e:
        fail(str(e), e.exit_code)


@app.command("datasets")
def datasets_cmd() -> None:
    """List every dataset: example shape, sizes, source, and whether it is available locally."""
    from bnexp import render

    render.datasets_table()


@app.command("download")
def download_cmd(
    name: Annotated[str, typer.Argument(help="Dataset to fetch (see `bnexp datasets`).")],
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            help="Base URL (or local directory) tried before $BNEXP_MIRROR and the built-in mirrors.",
        ),
    ] = None,
) -> None:
    """Fetch one dataset into the cache; every file is verified before it is used."""
    import time

    from bnexp import data, render

    info = _dataset_or_usage_error(name)
    if info.kind == "synthetic":
        typer.echo(f"{info.name} is generated in code; nothing to download.")
        return
    start = time.perf_counter()
    bar = render.DownloadBar()
    try:
        paths = data.download(info.name, mirror=mirror, progress=bar.progress)
    except data.DatasetError as e:  # its exit code by its type (1; an unknown name 2)
        bar.stop()
        fail(str(e), e.exit_code)
    finally:
        bar.stop()
    for line in render.download_lines(info, paths, bar.tasks, time.perf_counter() - start):
        typer.echo(line)


# ---- section: run / compare / list / describe / runs / show / report (CLI issue) -----------------

Out = Annotated[Path, typer.Option("--out", help="Directory for run directories.")]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")
]
NoPlots = Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Print each sweep group's layout plan and member-block choice (stderr); in a "
        "distributed job, progress on every process.",
    ),
]
# Joining a distributed job (bnexp.distributed): every process runs the same command.
_DIST = "Distributed (JAX multi-controller)"
Coordinator = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--coordinator", help="HOST:PORT of process 0.", rich_help_panel=_DIST),
]
NumProcesses = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--num-processes", help="Processes in the job.", rich_help_panel=_DIST),
]
ProcessId = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--process-id", help="This process's index (0: writes).", rich_help_panel=_DIST),
]
AutoDist = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Join the job JAX detects (SLURM, Open MPI, Kubernetes).",
        rich_help_panel=_DIST,
    ),
]


def _join(coordinator, num_processes, process_id, auto: bool) -> bool:
    """Join the distributed job the options or BNEXP_* variables name (before JAX starts; one
    line on stderr per process); True when this process is the one that writes and prints."""
    from bnexp import distributed
    from experiments import runner

    dist = distributed.settings(coordinator, num_processes, process_id, auto)
    runner.setup_process(dist)
    if dist is not None:
        typer.echo(f"bnexp: {distributed.describe()}", err=True)
    return distributed.is_main()


Preset = Annotated[str, typer.Option("--preset", help="smoke | quick | paper.")]
Seeds = Annotated[Optional[int], typer.Option("--seeds", help="Seeds per setting.")]  # noqa: UP045
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Dataset name (bnexp datasets).")]  # noqa: UP045
Steps = Annotated[Optional[int], typer.Option("--steps", help="Training steps per trial.")]  # noqa: UP045


def _experiment(name: str):
    from experiments import commands

    return commands.experiment(name)


def _resolve_config(exp, preset: str, seeds, dataset, steps, sets: list[str], **fields):
    from experiments import commands

    return commands.resolve_config(exp, preset, seeds, dataset, steps, sets, **fields)


def _check_out(out: Path) -> None:
    from experiments import commands

    commands.check_out(out)


def _execute(
    exp,
    cfg,
    *,
    out: Path,
    resume: Path | None,
    json_out: bool,
    no_plots: bool,
    verbose: bool = False,
    main: bool = True,
):
    from bnexp import render, report
    from experiments import runner

    if verbose:
        _log_choices()
    if resume is None and main:
        _check_out(out)
    err = report.make_console(stderr=True)
    quiet = not main and not verbose  # a distributed job's other processes: one line at the end
    shown = contextlib.nullcontext(None) if quiet else report.sweep_progress(err)
    with shown as progress:  # an interrupt: runner.RunInterrupted (exit 130)
        outcome = runner.run(
            exp,
            cfg,
            out=out,
            resume=resume,
            progress=progress,
            make_plots=not no_plots,
            argv=sys.argv,
            on_plan=render.plan_printer(err) if verbose else None,
        )
    if outcome.run_dir is None:  # not process 0: it holds the results
        typer.echo(f"bnexp: done; {outcome.timing['trials_run_now']} trials trained", err=True)
        return outcome
    if json_out:
        from bnexp.results import to_jsonable

        typer.echo(json.dumps(to_jsonable(runner.outcome_json(outcome)), allow_nan=False))
        return outcome
    render.outcome(exp, outcome)
    return outcome


@app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Experiment name (see `bnexp list`).")],
    preset: Preset = "quick",
    seeds: Seeds = None,
    dataset: Dataset = None,
    steps: Steps = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config field: key=value (repeatable)."),
    ] = None,  # noqa: UP045
    out: Out = Path("runs"),
    json_out: Json = False,
    no_plots: NoPlots = False,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Finish an interrupted run directory.")
    ] = None,  # noqa: UP045
    verbose: Verbose = False,
    coordinator: Coordinator = None,
    num_processes: NumProcesses = None,
    process_id: ProcessId = None,
    distributed: AutoDist = False,
) -> None:
    """Run a named experiment, print its tables and verdict, write a run directory."""
    exp = _experiment(name)
    cfg = _resolve_config(exp, preset, seeds, dataset, steps, set_ or [])
    main = _join(coordinator, num_processes, process_id, distributed)
    if main and resume is not None:
        from bnexp.compat import check_run_dir

        check_run_dir(resume)  # a damaged run directory: one line naming the file (exit 1)
        if not (resume / "config.json").is_file():
            raise UsageError(f"--resume {resume}: not a bnexp run directory (no config.json)")
    _execute(
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
    bn: Annotated[bool, typer.Option("--bn/--no-bn", help="Include the BN arm.")] = True,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Include the unnormalized arm.")
    ] = True,
    norm: Annotated[
        list[str] | None, typer.Option("--norm", help="Add an arm with this norm (repeatable).")
    ] = None,  # noqa: UP045
    activation: Annotated[
        str | None, typer.Option("--activation", help="sigmoid | tanh | relu.")
    ] = None,  # noqa: UP045
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate.")] = None,  # noqa: UP045
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
    from bnexp import norms as norms_mod

    exp = _experiment("compare")
    arms = (["batch"] if bn else []) + (["none"] if baseline else [])
    for n in norm or []:
        if n not in norms_mod.names():
            raise UsageError(f"unknown norm {n!r}; choose from {', '.join(norms_mod.names())}")
        if n not in arms:
            arms.append(n)
    if not arms:
        raise UsageError("no arms left: use --bn, --baseline or --norm NAME")
    fields = {"arms": tuple(arms), "activation": activation, "lr": lr}
    cfg = _resolve_config(exp, preset, seeds, dataset, steps, [], **fields)
    main = _join(coordinator, num_processes, process_id, distributed)
    _execute(
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
    file: Annotated[
        Path | None, typer.Argument(help="A sweep file (TOML: base, axes, arms, claims).")
    ] = None,  # noqa: UP045
    out: Out = Path("runs"),
    json_out: Json = False,
    no_plots: NoPlots = False,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Finish a sweep's run directory (its copy).")
    ] = None,  # noqa: UP045
    seeds: Seeds = None,
    steps: Steps = None,
    verbose: Verbose = False,
) -> None:
    """Run your own sweep from a file: tables, plots, a run directory, a verdict per claim."""
    from experiments import sweepclaims

    if resume is not None and not (resume / "config.json").is_file():
        raise UsageError(f"--resume {resume}: not a bnexp run directory (no config.json)")
    exp, cfg = sweepclaims.load(file, resume=resume, seeds=seeds, steps=steps)
    _execute(
        exp, cfg, out=out, resume=resume, json_out=json_out, no_plots=no_plots, verbose=verbose
    )


@app.command("export")
def export_cmd(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories (or names under --runs).")
    ],
    format_: Annotated[str, typer.Option("--format", help="csv | jsonl | parquet.")] = "csv",
    out: Annotated[
        Path | None, typer.Option("--out", help="Output file (default: stdout; parquet needs it).")
    ] = None,  # noqa: UP045
    runs_root: Annotated[
        Path, typer.Option("--runs", help="Where run names are looked up.")
    ] = Path("runs"),
) -> None:
    """One tidy table of runs: a row per (trial, evaluation point), every config field and metric."""
    from bnexp import export

    paths = [_run_dir(r, runs_root) for r in run_dirs]
    try:
        n = export.write(paths, format_, out, stdout=sys.stdout)
    except export.ExportError as e:
        raise UsageError(str(e)) from None
    if out is not None:
        typer.echo(f"{n} rows -> {out}", err=True)


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

    render.describe(_experiment(name))


@app.command("runs")
def runs_cmd(out: Out = Path("runs")) -> None:
    """Earlier runs: name, experiment, preset, date, status, verdict."""
    from bnexp import report, runs

    report.render_runs(runs.list_runs(out), report.make_console())


def _run_dir(ref: Path, out: Path) -> Path:
    from experiments import commands

    return commands.run_dir(ref, out)


@app.command("show")
def show_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its name under --out).")],
    out: Out = Path("runs"),
    json_out: Json = False,
) -> None:
    """Re-render a run's tables and verdict from its files, without training."""
    from bnexp import render, results
    from experiments import commands

    path = _run_dir(run_dir, out)
    run = commands.finished_run(path)  # a damaged summary.json: one line naming it (exit 1)
    if json_out:
        typer.echo(json.dumps(results.to_jsonable({"run_dir": str(path), **run.summary})))
        return
    render.run_tables(
        run.summary.get("tables", []),
        run.summary.get("verdict"),
        header=f"{run.experiment} ({run.preset} preset) - {path.name}",
    )


# ---- section: bench (benchmark issue) -----------------------------------------------------------


@app.command("bench")
def bench_cmd(
    json_out: Json = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Few, short repetitions and small sweeps: a check that it runs (about a "
            "minute), not figures to quote.",
        ),
    ] = False,
    torch: Annotated[
        bool | None,
        typer.Option(  # noqa: UP045
            "--torch/--no-torch",
            help="Compare with PyTorch eager (default: when importable).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Measure training throughput on this machine: the matmul peak, one model, lr sweeps, a CNN,
    and PyTorch eager doing the same (see BENCHMARKS.md)."""
    from bnexp import bench, report, results, sweep

    if torch and bench.torch_version() is None:
        raise UsageError(
            "--torch: PyTorch is not importable here (pip install torch==2.13.0, or use --no-torch)"
        )
    sweep.configure_host_devices()  # before JAX starts: the engine's default device layout
    err = report.make_console(stderr=True)
    figures = bench.run(
        bench.QUICK if quick else bench.FULL,
        torch=torch,
        progress=lambda m: err.print(f"bench: {m}", markup=False, highlight=False, soft_wrap=True),
    )
    if json_out:
        typer.echo(json.dumps(results.to_jsonable(figures), allow_nan=False))
        return
    report.render_bench(figures, quick=quick)


# ---- section: reproduce (reproduce issue) -------------------------------------------------------

ReproducePreset = Annotated[
    str,
    typer.Option(
        "--preset",
        help="quick (minutes on a laptop) | paper (paper scale) | smoke (machinery check).",
    ),
]
Only = Annotated[
    list[str] | None,
    typer.Option(  # noqa: UP045
        "--only", help="Run only these experiments: NAME,NAME,... (repeatable; default: all)."
    ),
]
ReproduceOut = Annotated[
    Path | None,
    typer.Option(  # noqa: UP045
        "--out",
        help="Directory for the run directories and the report (default: runs/reproduce-PRESET).",
    ),
]


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
    from bnexp import render, results
    from experiments import commands

    if verbose:
        _log_choices()
    main = _join(coordinator, num_processes, process_id, distributed)
    rep, out, verdicts, again = commands.reproduce(
        preset, only, seeds, out, keep_going=not _DEBUG, argv=sys.argv, main=main, verbose=verbose
    )
    if not main:  # a distributed job's other process: process 0 writes and prints
        typer.echo(f"bnexp: done; {len(rep.items)} experiments", err=True)
        return
    if json_out:
        doc = render.reproduce_doc(rep, out, preset, verdicts)
        typer.echo(json.dumps(results.to_jsonable(doc), allow_nan=False))
    else:
        render.reproduce_tables(rep, out, preset, verdicts)
    commands.raise_if_failed(rep, again)


@app.command("report")
def report_cmd(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory (or its name under --out), or a `bnexp reproduce` output directory."
        ),
    ],
    html_: Annotated[
        bool,
        typer.Option(
            "--html", help="Also write report.html: one self-contained page (plots embedded)."
        ),
    ] = False,
    out: Out = Path("runs"),
) -> None:
    """Write report.md (and report.html) for one run, from its files; prints the paths."""
    from experiments import commands

    for p in commands.write_report(run_dir, out, html_).values():
        typer.echo(str(p))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().strip("'\"")
    return " ".join(text.split())


def main() -> None:
    """Console-script entry point: run the app, turning unexpected errors into one line."""
    global _STARTING
    from bnexp import stopping

    _STARTING = False
    stopping.install()  # from here a signal stops at the next checkpoint (bnexp.stopping)
    try:
        _main()
    finally:
        # The exit code is decided: a signal during the interpreter's shutdown (which resets
        # Python's handlers to SIG_DFL and can take seconds tearing down XLA) would end the
        # process as killed by SIGINT (-2) instead. Nothing is left to stop: ignore it.
        with contextlib.suppress(ValueError):  # (not the main thread: an embedding caller)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _main() -> None:
    """main() without its last step: every outcome is a sys.exit with its code."""
    from bnexp import stopping

    try:
        code = app(standalone_mode=False) or 0
        if code == 0 and stopping.pending():  # asked to stop, and nothing checked since
            code = 130
        if code == 130:  # typer turns a KeyboardInterrupt it sees into a silent 130: say it
            typer.echo("bnexp: interrupted", err=True)
        sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("bnexp: interrupted", err=True)
        sys.exit(130)
    except BnexpError as e:  # every bnexp error type carries its exit code (bnexp.errors)
        if _DEBUG:
            raise
        typer.echo(f"bnexp: {e.label}: {_one_line(e)}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if _DEBUG:
            raise
        # Click's usage errors (typer vendors click in recent versions, so match by shape).
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # one line, no usage
            ctx = getattr(e, "ctx", None)
            see = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"bnexp: error: {_one_line(e.format_message())}{see}", err=True)
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            typer.echo("bnexp: aborted", err=True)
            sys.exit(130)
        typer.echo(
            f"bnexp: error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for "
            "the traceback)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
