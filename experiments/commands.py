"""The command line's logic that is neither parsing nor rendering (cli.py calls these): look up
an experiment or a preset by name, resolve a config from a preset and the options given, check
an output directory. Bad input raises bnexp.errors.UsageError (exit 2), an unwritable
directory RuntimeFailure (exit 1)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnexp.errors import RuntimeFailure, UsageError


def experiment(name: str) -> Any:
    """The registered experiment ``name``; an unknown name is a usage error with a suggestion."""
    from experiments import REGISTRY

    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown experiment {name!r}{hint}; see `bnexp list`")
    return REGISTRY[name]


def check_preset(preset: str) -> None:
    """An unknown preset name is a usage error with a suggestion."""
    from experiments.base import PRESETS

    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown preset {preset!r}{hint}; choose from {', '.join(PRESETS)}")


def resolve_config(
    exp: Any, preset: str, seeds: Any, dataset: Any, steps: Any, sets: Sequence[str], **fields: Any
) -> Any:
    """The preset, then the typed options (None: not given), then the --set strings."""
    from experiments.base import apply_overrides
    from experiments.runner import replace

    cfg = exp.preset(preset)
    given = {"seeds": seeds, "dataset": dataset, "steps": steps, **fields}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    return apply_overrides(cfg, list(sets))


def check_out(out: Path) -> None:
    """``out`` exists (created if needed) and is writable, else a RuntimeFailure."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".bnexp-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RuntimeFailure(
            f"output directory {out} is not writable ({e.strerror or e})"
        ) from None


def reproduce(
    preset: str,
    only: Sequence[str] | None,
    seeds: int | None,
    out: Path | None,
    *,
    keep_going: bool,
    argv: Sequence[str],
    main: bool = True,
    verbose: bool = False,
) -> tuple[Any, Path, dict[str, Any], str]:
    """``bnexp reproduce`` up to its output: (the reproduce.Reproduction, the output directory,
    each experiment's verdict, the command that continues it). Progress goes to stderr; Ctrl-C
    is an Interrupted (exit 130) naming that command. In a distributed job (main False: not
    process 0) the output directory is process 0's and progress shows only with verbose."""
    import contextlib

    from bnexp import report
    from bnexp.errors import Interrupted
    from experiments import reproduce as rp

    check_preset(preset)
    exps = rp.select(only)  # an unknown name: a ConfigError (a usage error)
    out = out if out is not None else Path("runs") / f"reproduce-{preset}"
    if main:
        check_out(out)
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
                keep_going=keep_going,
                argv=argv,
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped; finished experiments are kept in {out}; to continue, run "
            f"the same command again: {again}"
        ) from None
    return rep, out, rp.verdicts(rep), again


def raise_if_failed(rep: Any, again: str) -> None:
    """A reproduce with failed experiments ends as a RuntimeFailure (exit 1) naming them."""
    if rep.failed:
        what = "; ".join(f"{i.experiment.name}: {i.error}" for i in rep.failed)
        raise RuntimeFailure(
            f"{len(rep.failed)} experiment(s) failed ({what}); the report shows "
            f"them; fix and run the same command again: {again}"
        )


def run_dir(ref: Path, out: Path) -> Path:
    """A run directory given as a path or as its name under ``out`` (a usage error if none)."""
    from bnexp import runs

    try:
        return runs.resolve_run(out, str(ref))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None


def finished_run(path: Path) -> Any:
    """The results.Run at ``path``; one without a summary yet is a RuntimeFailure that says how
    to finish it."""
    from bnexp import results

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
    return run


def write_report(ref: Path, out: Path, html_file: bool) -> dict[str, Path]:
    """``bnexp report``: re-render a reproduce directory's whole report, or write report.md
    (and report.html) for one run; the paths written."""
    from bnexp import htmlreport, results
    from experiments import reproduce as rp

    if (ref / rp.INDEX).is_file():  # a reproduce directory: re-render its whole report
        try:
            return rp.rerender(ref)
        except (OSError, ValueError) as e:
            raise RuntimeFailure(f"cannot re-render {ref}: {e}") from None
    path = run_dir(ref, out)
    entry = rp.run_entry(path)
    preset = results.load_run(path).preset or "?"
    title = f"bnexp report: {entry.name} ({preset} preset)"
    return htmlreport.write([entry], path, html_file=html_file, title=title)
