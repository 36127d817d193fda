"""The bnexp command line (Typer). Thin: parse options, call experiments/bnexp, render.

Errors: every error type of bnexp (bnexp.errors) carries its exit code: usage 2, runtime 1,
interrupt 130; each prints one line on stderr, no tracebacks unless --debug.
"""

from __future__ import annotations

import os
import signal
import sys

_STARTING = True  # until main() runs: a signal has nothing to keep yet, so it just exits 130


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
import difflib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

import bnexp  # noqa: E402
from bnexp.errors import BnexpError, Interrupted, RuntimeFailure, UsageError  # noqa: E402


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
    """Print one clean line on stderr and exit with `code` (2 usage, 1 runtime)."""
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
    if verbose:  # bnexp logs its layout choices (bnexp.calibrate); one line each on stderr
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bnexp: %(message)s"))
        log = logging.getLogger("bnexp")
        log.addHandler(handler)
        log.setLevel(logging.INFO)


# ---- section: datasets (data issue) ---------------------------------------------------------


def _dataset_or_usage_error(name: str):
    """The registry entry for `name`; an unknown name is a usage error (exit 2) with a suggestion."""
    from bnexp import data

    try:
        return data.lookup(name)
    except data.UnknownDatasetError as e:
        fail(str(e), 2)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape else "configurable"


@app.command("datasets")
def datasets_cmd() -> None:
    """List every dataset: example shape, sizes, source, and whether it is available locally."""
    from rich.console import Console
    from rich.table import Table

    from bnexp import data

    table = Table(
        title="bnexp datasets",
        caption=f"shape: one example, HxWxC; cache: {data.cache_dir()}",
    )
    for column in ("name", "shape", "classes", "train", "test", "source", "local"):
        numeric = column in ("classes", "train", "test")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column == "name")
    for info in data.DATASETS.values():
        ok, status = data.local_status(info)
        table.add_row(
            info.name,
            _shape_text(info.image_shape),
            str(info.num_classes),
            f"{info.n_train:,}" if info.n_train else "-",
            f"{info.n_test:,}" if info.n_test else "-",
            info.source,
            f"[green]{status}[/green]" if ok else f"[yellow]{status}[/yellow]",
        )
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 120))
    console.print(table)


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

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from bnexp import data

    info = _dataset_or_usage_error(name)
    if info.kind == "synthetic":
        typer.echo(f"{info.name} is generated in code; nothing to download.")
        return
    start = time.perf_counter()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    tasks: dict[str, int] = {}

    def progress(file: str, done: int, total: int | None) -> None:
        if not tasks:
            bar.start()  # lazily: files already present and verified draw nothing
        if file not in tasks:
            tasks[file] = bar.add_task(file, total=total)
        bar.update(tasks[file], completed=done, total=total)

    try:
        paths = data.download(info.name, mirror=mirror, progress=progress)
    except data.DatasetError as e:
        bar.stop()
        fail(str(e), 1)
    finally:
        bar.stop()
    seconds = time.perf_counter() - start
    for spec, path in zip(info.files, paths, strict=False):
        algo = spec.digest.partition(":")[0]
        what = "gunzipped content" if spec.digest_of == "content" else "file"
        extra = f", {len(spec.members)} archive members" if spec.members else ""
        how = "downloaded" if spec.name in tasks else "already present"
        typer.echo(f"  {path}  ({how}; {algo} of {what}{extra} verified)")
    if info.kind == "bundled":
        typer.echo("  (shipped with bnexp: verified and cached, no network used)")
    typer.echo(f"{info.name}: ready in {data.dataset_dir(info.name)} ({seconds:.1f} s)")


# ---- section: run / compare / list / describe / runs / show / report (CLI issue) -----------------

Out = Annotated[Path, typer.Option("--out", help="Directory for run directories.")]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")
]
NoPlots = Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")]
Preset = Annotated[str, typer.Option("--preset", help="smoke | quick | paper.")]
Seeds = Annotated[Optional[int], typer.Option("--seeds", help="Seeds per setting.")]  # noqa: UP045
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="Dataset name (bnexp datasets).")]  # noqa: UP045
Steps = Annotated[Optional[int], typer.Option("--steps", help="Training steps per trial.")]  # noqa: UP045

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
Verbose = Annotated[
    bool, typer.Option("--verbose", help="More detail (progress on every process).")
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


def _experiment(name: str):
    from experiments import REGISTRY

    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown experiment {name!r}{hint}; see `bnexp list`")
    return REGISTRY[name]


def _resolve_config(exp, preset: str, seeds, dataset, steps, sets: list[str], **fields):
    """The preset, then the typed options (None: not given), then the --set strings."""
    from experiments.base import apply_overrides
    from experiments.runner import replace

    cfg = exp.preset(preset)
    given = {"seeds": seeds, "dataset": dataset, "steps": steps, **fields}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    return apply_overrides(cfg, sets)


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".bnexp-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RuntimeFailure(
            f"output directory {out} is not writable ({e.strerror or e})"
        ) from None


def _execute(
    exp,
    cfg,
    *,
    out: Path,
    resume: Optional[Path],  # noqa: UP045
    json_out: bool,
    no_plots: bool,
    main: bool = True,
    verbose: bool = False,
):
    from bnexp import report
    from experiments import runner

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
        )
    if outcome.run_dir is None:  # not process 0: it holds the results
        typer.echo(f"bnexp: done; {outcome.timing['trials_run_now']} trials trained", err=True)
        return outcome
    if json_out:
        from bnexp.results import to_jsonable

        typer.echo(json.dumps(to_jsonable(runner.outcome_json(outcome)), allow_nan=False))
        return outcome
    _render(
        outcome.analysis.tables,
        runner.verdict_json(outcome.analysis),
        header=f"{exp.name} ({outcome.config.preset} preset)",
    )
    con = report.make_console()
    t = outcome.timing
    con.print(
        f"run directory: {outcome.run_dir}  (wall time {t['wall_time_seconds']:.1f} s, "
        f"compile {t['compile_seconds']:.1f} s)"
    )
    for p in outcome.analysis.plots:
        con.print(f"plot: {p}")
    return outcome


def _render(tables, verdict, *, header: str) -> None:
    from bnexp import report

    con = report.make_console()
    con.rule(header)
    tables = [
        t if isinstance(t, dict) else {"title": t.title, "columns": t.columns, "rows": t.rows}
        for t in tables
    ]
    for i, t in enumerate(tables):
        report.render_table(
            t["title"],
            t["columns"],
            t["rows"],
            con,
            verdict=verdict if i == len(tables) - 1 else None,
        )


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
        main=main,
        verbose=verbose,
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
        main=main,
        verbose=verbose,
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
) -> None:
    """Run your own sweep from a file: tables, plots, a run directory, a verdict per claim."""
    from experiments import sweepclaims

    if resume is not None and not (resume / "config.json").is_file():
        raise UsageError(f"--resume {resume}: not a bnexp run directory (no config.json)")
    exp, cfg = sweepclaims.load(file, resume=resume, seeds=seeds, steps=steps)
    _execute(exp, cfg, out=out, resume=resume, json_out=json_out, no_plots=no_plots)


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
    from bnexp import report
    from experiments import REGISTRY

    rows = [{"name": e.name, "claim": e.claim, "source": e.source} for e in REGISTRY.values()]
    report.render_table("Experiments", ["name", "claim", "source"], rows, report.make_console())


@app.command("describe")
def describe_cmd(name: Annotated[str, typer.Argument(help="Experiment name.")]) -> None:
    """An experiment's config fields with defaults per preset, and what its table shows."""
    from bnexp import report
    from experiments.base import config_dict, field_types

    exp = _experiment(name)
    con = report.make_console()
    con.print(f"[bold]{exp.name}[/bold]: {exp.claim}\nsource: {exp.source}\nshows: {exp.shows}")
    types_ = field_types(exp.config_type)
    presets = {p: config_dict(c) for p, c in exp.presets.items()}
    rows = [
        {
            "field": k,
            "type": getattr(t, "__name__", str(t)).replace("typing.", ""),
            **{p: str(presets[p][k]) for p in presets},
        }
        for k, t in types_.items()
    ]
    report.render_table(
        "Config fields (override with --set key=value)", ["field", "type", *presets], rows, con
    )


@app.command("runs")
def runs_cmd(out: Out = Path("runs")) -> None:
    """Earlier runs: name, experiment, preset, date, status, verdict."""
    from bnexp import report, runs

    report.render_runs(runs.list_runs(out), report.make_console())


def _run_dir(ref: Path, out: Path) -> Path:
    from bnexp import runs

    try:
        return runs.resolve_run(out, str(ref))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None


@app.command("show")
def show_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or its name under --out).")],
    out: Out = Path("runs"),
    json_out: Json = False,
) -> None:
    """Re-render a run's tables and verdict from its files, without training."""
    from bnexp import results

    path = _run_dir(run_dir, out)
    run = results.load_run(path)
    if "summary.json" in run.broken:
        from bnexp.compat import DamagedRun

        raise DamagedRun(
            f"{path / 'summary.json'} is damaged; write it again with "
            f"bnexp run {run.experiment} --resume {path} (nothing is trained again)"
        )
    if run.summary is None:
        raise RuntimeFailure(
            f"{path} has no summary yet (status {run.status}); finish it with "
            f"bnexp run {run.experiment} --resume {path}"
        )
    if json_out:
        typer.echo(json.dumps(results.to_jsonable({"run_dir": str(path), **run.summary})))
        return
    _render(
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


def _seconds(s: float | None) -> str:
    return "" if s is None else f"{s:.1f}"


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
    from bnexp import report, results, runs
    from experiments import reproduce as rp
    from experiments.base import PRESETS

    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown preset {preset!r}{hint}; choose from {', '.join(PRESETS)}")
    try:
        exps = rp.select(only)
    except rp.ConfigError as e:
        raise UsageError(str(e)) from None
    out = out if out is not None else Path("runs") / f"reproduce-{preset}"
    main = _join(coordinator, num_processes, process_id, distributed)
    if main:
        _check_out(out)
    names = [e.name for e in exps] if only else None
    again = rp.reproduce_command(preset, names, seeds, out)
    err = report.make_console(stderr=True)
    quiet = not main and not verbose
    try:
        shown = contextlib.nullcontext(None) if quiet else report.OverallProgress(err, len(exps))
        with shown as overall:
            rep = rp.reproduce(
                out,
                preset=preset,
                only=names,
                seeds=seeds,
                on_step=overall,
                sweep_progress=None if quiet else (lambda: report.sweep_progress(err)),
                keep_going=not _DEBUG,
                argv=sys.argv,
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped; finished experiments are kept in {out}; to continue, run "
            f"the same command again: {again}"
        ) from None
    if not main:  # a distributed job's other process: process 0 writes and prints
        typer.echo(f"bnexp: done; {len(rep.items)} experiments", err=True)
        return
    verdicts = {
        i.experiment.name: (
            results.read_json(i.run_dir / "summary.json")["verdict"]
            if i.run_dir and (i.run_dir / "summary.json").is_file()
            else None
        )
        for i in rep.items
    }
    if json_out:
        doc = {
            "out": str(out),
            "preset": preset,
            "wall_time_seconds": rep.wall_time_seconds,
            "experiments": [
                {
                    "name": i.experiment.name,
                    "identity": i.experiment.identity,
                    "action": i.action,
                    "run_dir": str(i.run_dir) if i.run_dir else None,
                    "verdict": verdicts[i.experiment.name],
                    "error": i.error,
                    "wall_time_seconds": rp.timing(i.run_dir).get("wall_time_seconds"),
                    "compile_seconds": rp.timing(i.run_dir).get("compile_seconds"),
                }
                for i in rep.items
            ],
            "run_dirs": [str(i.run_dir) for i in rep.items if i.run_dir],
            "verdicts": verdicts,
            "reports": {k: str(p) for k, p in rep.reports.items()},
            "index": str(rep.index),
        }
        typer.echo(json.dumps(results.to_jsonable(doc), allow_nan=False))
    else:

        def row(i: rp.Item) -> dict[str, str]:
            return {
                "experiment": i.experiment.name,
                "verdict": runs.verdict_text(verdicts[i.experiment.name])
                or f"no result ({i.action})",
                "measured": (verdicts[i.experiment.name] or {}).get("evidence") or i.error or "",
                "run": i.action,
                "compile s": _seconds(rp.timing(i.run_dir).get("compile_seconds")),
            }

        con = report.make_console()
        cols = ["experiment", "verdict", "measured", "run", "compile s"]
        claims = [row(i) for i in rep.items if not i.experiment.identity]
        checks = [row(i) for i in rep.items if i.experiment.identity]
        report.render_table(f"Claims ({preset} preset)", cols, claims, con)
        if checks:  # identities of a correct implementation, apart from the claims
            report.render_table(f"Identity checks ({preset} preset)", cols, checks, con)
        for kind, p in rep.reports.items():
            con.print(f"report ({kind}): {p}", markup=False, highlight=False)
        con.print(
            f"wall time {rep.wall_time_seconds:.1f} s; runs and reproduce.json in {out}",
            markup=False,
            highlight=False,
        )
    if rep.failed:
        what = "; ".join(f"{i.experiment.name}: {i.error}" for i in rep.failed)
        raise RuntimeFailure(
            f"{len(rep.failed)} experiment(s) failed ({what}); the report shows "
            f"them; fix and run the same command again: {again}"
        )


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
    from bnexp import htmlreport, results
    from experiments import reproduce as rp

    if (run_dir / rp.INDEX).is_file():  # a reproduce directory: re-render its whole report
        try:
            paths = rp.rerender(run_dir)
        except (OSError, ValueError) as e:
            raise RuntimeFailure(f"cannot re-render {run_dir}: {e}") from None
    else:
        path = _run_dir(run_dir, out)
        entry = rp.run_entry(path)
        preset = results.load_run(path).preset or "?"
        paths = htmlreport.write(
            [entry], path, html_file=html_, title=f"bnexp report: {entry.name} ({preset} preset)"
        )
    for p in paths.values():
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
