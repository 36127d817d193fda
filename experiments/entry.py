"""What the command line does around each command (cli.py calls these): join a distributed job,
run an experiment with its progress and render the outcome, and the last line of defence that
turns every outcome into one exit code and at most one line on stderr.

Exit codes come from error types (bnexp.errors: usage 2, runtime 1, interrupt 130), never from
message text; Click's own usage errors are matched by their shape (``format_message`` and
``exit_code``), since Typer vendors Click in recent versions.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from bnexp.errors import BnexpError, UsageError


def log_choices() -> None:
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


def join(coordinator: Any, num_processes: Any, process_id: Any, auto: bool) -> bool:
    """Join the distributed job the options or BNEXP_* variables name (before JAX starts; one
    line on stderr per process); True when this process is the one that writes and prints."""
    from bnexp import distributed
    from experiments import runner

    dist = distributed.settings(coordinator, num_processes, process_id, auto)
    runner.setup_process(dist)
    if dist is not None:
        typer.echo(f"bnexp: {distributed.describe()}", err=True)
    return distributed.is_main()


def check_resume(resume: Path) -> None:
    """A --resume directory that is damaged (one line naming the file, exit 1) or is not a run
    directory at all (exit 2)."""
    from bnexp.compat import check_run_dir

    check_run_dir(resume)
    if not (resume / "config.json").is_file():
        raise UsageError(f"--resume {resume}: not a bnexp run directory (no config.json)")


def compare_arms(bn: bool, baseline: bool, extra: list[str]) -> tuple[str, ...]:
    """``bnexp compare``'s arms: BN and the baseline as asked, then each --norm once."""
    from bnexp import norms

    arms = (["batch"] if bn else []) + (["none"] if baseline else [])
    for n in extra:
        if n not in norms.names():
            raise UsageError(f"unknown norm {n!r}; choose from {', '.join(norms.names())}")
        if n not in arms:
            arms.append(n)
    if not arms:
        raise UsageError("no arms left: use --bn, --baseline or --norm NAME")
    return tuple(arms)


def execute(
    exp: Any,
    cfg: Any,
    *,
    out: Path,
    resume: Path | None,
    json_out: bool,
    no_plots: bool,
    verbose: bool = False,
    main: bool = True,
) -> Any:
    """Run ``exp`` with ``cfg`` (experiments.runner), progress on stderr, then print its tables
    and verdict (or one JSON document). In a distributed job only process 0 (main) prints."""
    from bnexp import render, report
    from experiments import commands, runner

    if verbose:
        log_choices()
    if resume is None and main:
        commands.check_out(out)
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
    elif json_out:
        from bnexp.results import to_jsonable

        typer.echo(json.dumps(to_jsonable(runner.outcome_json(outcome)), allow_nan=False))
    else:
        render.outcome(exp, outcome)
    return outcome


def download(name: str, mirror: str | None) -> None:
    """``bnexp download``: fetch one dataset with a progress bar, then say what was written. A
    dataset error is printed here with its exit code (1; an unknown name 2), so that the Typer
    app alone, as tests invoke it, exits cleanly too."""
    import time

    from bnexp import data, render

    start = time.perf_counter()
    bar = render.DownloadBar()
    try:
        info = data.lookup(name)
        if info.kind == "synthetic":
            typer.echo(f"{info.name} is generated in code; nothing to download.")
            return
        paths = data.download(info.name, mirror=mirror, progress=bar.progress)
    except data.DatasetError as e:
        bar.stop()
        typer.echo(f"bnexp: error: {one_line(e)}", err=True)
        raise typer.Exit(e.exit_code) from None
    finally:
        bar.stop()
    for line in render.download_lines(info, paths, bar.tasks, time.perf_counter() - start):
        typer.echo(line)


def bench(json_out: bool, quick: bool, torch: bool | None) -> None:
    """``bnexp bench``: the figures of bnexp.bench, as a table or one JSON document."""
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


def reproduce(
    preset: str,
    only: list[str] | None,
    seeds: int | None,
    out: Path | None,
    json_out: bool,
    verbose: bool,
    main: bool,
    *,
    keep_going: bool,
) -> None:
    """``bnexp reproduce``: every experiment, its summary table (or one JSON document), and a
    RuntimeFailure (exit 1) naming the experiments that failed."""
    from bnexp import render, results
    from experiments import commands

    if verbose:
        log_choices()
    rep, out, verdicts, again = commands.reproduce(
        preset, only, seeds, out, keep_going=keep_going, argv=sys.argv, main=main, verbose=verbose
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


def show(ref: Path, out: Path, json_out: bool) -> None:
    """``bnexp show``: a finished run's tables and verdict from its files (or its JSON)."""
    from bnexp import render, results
    from experiments import commands

    path = commands.run_dir(ref, out)
    run = commands.finished_run(path)  # a damaged summary.json: one line naming it (exit 1)
    if json_out:
        typer.echo(json.dumps(results.to_jsonable({"run_dir": str(path), **run.summary})))
        return
    header = f"{run.experiment} ({run.preset} preset) - {path.name}"
    render.run_tables(run.summary.get("tables", []), run.summary.get("verdict"), header=header)


def export(refs: list[Path], fmt: str, out: Path | None, runs_root: Path) -> None:
    """``bnexp export``: one tidy table of the runs, to ``out`` or stdout."""
    from bnexp import export as ex
    from experiments import commands

    paths = [commands.run_dir(r, runs_root) for r in refs]
    try:
        n = ex.write(paths, fmt, out, stdout=sys.stdout)
    except ex.ExportError as e:
        raise UsageError(str(e)) from None
    if out is not None:
        typer.echo(f"{n} rows -> {out}", err=True)


def one_line(e: BaseException | str) -> str:
    text = str(e).strip().strip("'\"")
    return " ".join(text.split())


def run_app(app: Callable[..., Any], debug: Callable[[], bool]) -> None:
    """Run the Typer ``app``; every outcome is a sys.exit with its code (debug(): re-raise
    unexpected errors with their traceback, as --debug asks)."""
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
        if debug():
            raise
        typer.echo(f"bnexp: {e.label}: {one_line(e)}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if debug():
            raise
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # Click: one line, no usage
            ctx = getattr(e, "ctx", None)
            see = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"bnexp: error: {one_line(e.format_message())}{see}", err=True)
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            typer.echo("bnexp: aborted", err=True)
            sys.exit(130)
        typer.echo(
            f"bnexp: error: {type(e).__name__}: {one_line(e)} (rerun with --debug for "
            "the traceback)",
            err=True,
        )
        sys.exit(1)
