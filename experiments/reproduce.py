"""`bnexp reproduce`: every registered claim at one preset, one after another, then one report.

For each experiment the config is resolved (preset, then --seeds). A complete run directory in
`out` whose config.json equals that config (canonical JSON) is reused as it is; an interrupted or
failed one is resumed (only its missing trials train); otherwise the experiment runs fresh. So an
interrupted reproduce, started again with the same options, picks up where it stopped. Then
report.md, report.html (bnexp.htmlreport) and reproduce.json (an index) are written into `out`.
"""

from __future__ import annotations

import contextlib
import difflib
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnexp import distributed, htmlreport, results, runs
from bnexp.errors import Interrupted
from bnexp.sweep import ProgressEvent
from experiments import REGISTRY, runner
from experiments.base import Config, ConfigError, Experiment, config_dict

INDEX = "reproduce.json"
REPORT_TITLE = htmlreport.DEFAULT_TITLE


class ReproduceInterrupted(Interrupted):
    """Ctrl-C or SIGTERM during one experiment; what finished is kept and reused next time."""

    def __init__(self, out: Path, name: str, done: int, total: int, command: str):
        super().__init__(
            f"stopped during {name}; {done}/{total} experiments finished and kept "
            f"in {out}; to continue, run the same command again: {command}"
        )
        self.out = out


@dataclass(frozen=True)
class Step:
    """One event of the overall progress: an experiment starts ("reuse" | "resume" | "run") or
    ends ("done" | "failed")."""

    index: int  # 0-based
    total: int
    name: str
    phase: str
    run_dir: Path | None = None
    outcome: str | None = None  # verdict label, when done
    seconds: float | None = None
    error: str | None = None


@dataclass
class Item:
    experiment: Experiment
    config: Config
    action: str  # "reused" | "resumed" | "ran" | "failed"
    run_dir: Path | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Reproduction:
    out: Path
    preset: str
    items: list[Item] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)
    index: Path | None = None
    wall_time_seconds: float = 0.0

    @property
    def failed(self) -> list[Item]:
        return [i for i in self.items if i.action == "failed"]


# ---- choosing and configuring ----------------------------------------------------------------


def select(only: Sequence[str] | None = None) -> list[Experiment]:
    """The experiments to run, in registry order: all of them, or those named in `only`."""
    if not only:
        return list(REGISTRY.values())
    names = [n.strip() for part in only for n in part.split(",") if n.strip()]
    for n in names:
        if n not in REGISTRY:
            close = difflib.get_close_matches(n, REGISTRY, n=1, cutoff=0.4)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown experiment {n!r} in --only{hint}; choose from {', '.join(REGISTRY)}"
            )
    if not names:
        raise ConfigError("--only names no experiment")
    return [e for e in REGISTRY.values() if e.name in names]


def resolve(exp: Experiment, preset: str, seeds: int | None = None) -> Config:
    cfg = exp.preset(preset)
    return cfg if seeds is None else runner.replace(cfg, seeds=seeds)


def rerun_command(exp: Experiment, config: Mapping[str, Any]) -> str:
    """`bnexp run NAME --preset P --set k=v ...`: the fields that differ from the preset."""
    preset = str(config.get("preset", "quick"))
    base = results.to_jsonable(config_dict(exp.presets[preset])) if preset in exp.presets else {}
    args = ["bnexp", "run", exp.name, "--preset", preset]
    for k, v in config.items():
        if k == "preset" or (k in base and results.to_jsonable(base[k]) == v):
            continue
        args += ["--set", f"{k}={htmlreport.value_text(v)}"]
    return shlex.join(args)


def reproduce_command(
    preset: str, names: Sequence[str] | None, seeds: int | None, out: Path
) -> str:
    args = ["bnexp", "reproduce", "--preset", preset]
    if names:
        args += ["--only", ",".join(names)]
    if seeds is not None:
        args += ["--seeds", str(seeds)]
    return shlex.join([*args, "--out", str(out)])


# ---- finding earlier runs --------------------------------------------------------------------


def find_run(out: Path, exp: Experiment, cfg: Config) -> tuple[str, Path] | None:
    """("reuse", dir) for a complete run of exactly this config, ("resume", dir) for an
    interrupted or failed one (newest first), else None. A run still going (its process alive)
    is neither."""
    want = results.canonical_json(config_dict(cfg))
    resumable = None
    for info in runs.list_runs(out):  # newest first
        if info.experiment != exp.name:
            continue
        try:
            same = results.canonical_json(results.read_json(info.path / "config.json")) == want
        except (OSError, ValueError, TypeError):
            continue
        if not same:
            continue
        if info.status == "complete" and (info.path / "summary.json").is_file():
            return "reuse", info.path
        # "unknown": stopped while its directory was being created (no status.json yet)
        if info.status in ("interrupted", "failed", "unknown") and resumable is None:
            resumable = info.path
    return ("resume", resumable) if resumable is not None else None


# ---- the report ------------------------------------------------------------------------------


def entry(exp: Experiment | None, run_dir: Path, name: str | None = None) -> htmlreport.Entry:
    """The report entry of one run directory (registry text + the re-run command)."""
    run_dir = Path(run_dir)
    if exp is None:
        return htmlreport.Entry(run_dir, name or run_dir.name)
    config = results.read_json(run_dir / "config.json")
    return htmlreport.Entry(
        run_dir,
        exp.name,
        exp.claim,
        exp.source,
        exp.paper,
        rerun_command(exp, config),
        identity=exp.identity,
    )


def run_entry(run_dir: Path) -> htmlreport.Entry:
    """The entry for a single run directory (`bnexp report RUN_DIR`)."""
    run = results.load_run(run_dir)
    return entry(REGISTRY.get(run.experiment or ""), run_dir, run.experiment)


def write_report(out: Path, items: Sequence[Item]) -> dict[str, Path]:
    entries = [entry(i.experiment, i.run_dir) for i in items if i.run_dir is not None]
    return htmlreport.write(entries, out, title=REPORT_TITLE)


def rerender(out: Path) -> dict[str, Path]:
    """Write the report of an earlier reproduce again, from its reproduce.json and run files."""
    out = Path(out)
    index = results.read_json(out / INDEX)
    entries = []
    for x in index.get("experiments", []):
        if x.get("run_dir") is None:
            continue
        run_dir = out / x["run_dir"]
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{INDEX} names {run_dir}, which is not a run directory")
        entries.append(entry(REGISTRY.get(x.get("name", "")), run_dir, x.get("name")))
    return htmlreport.write(entries, out, title=REPORT_TITLE)


def write_index(rep: Reproduction) -> Path:
    def rel(p: Path | None) -> str | None:
        return None if p is None else Path(p).resolve().relative_to(rep.out.resolve()).as_posix()

    experiments = []
    for i in rep.items:
        summary = {}
        if i.run_dir is not None and (i.run_dir / "summary.json").is_file():
            summary = results.read_json(i.run_dir / "summary.json")
        experiments.append(
            {
                "name": i.experiment.name,
                "identity": i.experiment.identity,  # an identity check, not a claim
                "run_dir": rel(i.run_dir),
                "action": i.action,
                "error": i.error,
                "verdict": summary.get("verdict"),
                "wall_time_seconds": summary.get("timing", {}).get("wall_time_seconds"),
                "compile_seconds": summary.get("timing", {}).get("compile_seconds"),
                "compile_work_seconds": summary.get("timing", {}).get("compile_work_seconds"),
            }
        )
    doc = {
        "preset": rep.preset,
        "experiments": experiments,
        "reports": {k: rel(p) for k, p in rep.reports.items()},
    }
    return results.write_json_atomic(rep.out / INDEX, doc)


# ---- running ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_progress() -> Iterator[None]:
    yield None


def reproduce(
    out: Path,
    *,
    preset: str = "quick",
    only: Sequence[str] | None = None,
    seeds: int | None = None,
    on_step: Callable[[Step], None] | None = None,
    sweep_progress: Callable[[], AbstractContextManager[Callable[[ProgressEvent], None] | None]]
    | None = None,
    keep_going: bool = True,
    argv: Sequence[str] | None = None,
) -> Reproduction:
    """Run (or reuse, or resume) every selected experiment, then write the report into `out`.

    Every config is resolved and checked before anything trains, so a bad option or a missing
    dataset stops the whole command at once (ConfigError / DatasetError). A failure inside one
    experiment is recorded and the others still run when keep_going (the report shows it).
    """
    t0 = time.perf_counter()
    out = Path(out)
    exps = select(only)
    configs = [resolve(e, preset, seeds) for e in exps]
    for e, c in zip(exps, configs, strict=True):
        runner.prepare(e, c)
    out.mkdir(parents=True, exist_ok=True)
    rep = Reproduction(out, preset)
    emit = on_step or (lambda s: None)
    progress = sweep_progress or _no_progress
    names = [e.name for e in exps] if only else None
    keep_going = keep_going and not distributed.active()  # a failure on one process: stop all
    for k, (exp, cfg) in enumerate(zip(exps, configs, strict=True)):
        found = _found_everywhere(out, exp, cfg)
        if found is not None and found[0] == "reuse":
            rep.items.append(Item(exp, cfg, "reused", found[1]))
            emit(
                Step(k, len(exps), exp.name, "reuse", found[1], _outcome(found[1]), _wall(found[1]))
            )
            continue
        resume = found[1] if found is not None else None
        emit(Step(k, len(exps), exp.name, "resume" if resume else "run", resume))
        t1 = time.perf_counter()
        try:
            with progress() as callback:
                outcome = runner.run(exp, cfg, out=out, resume=resume, progress=callback, argv=argv)
        except runner.RunInterrupted as e:
            raise ReproduceInterrupted(
                out, exp.name, k, len(exps), reproduce_command(preset, names, seeds, out)
            ) from e
        except Exception as e:  # noqa: BLE001 - one broken experiment must not hide the others
            if not keep_going:
                raise
            run_dir = resume or _newest(out, exp, cfg)
            item = Item(
                exp, cfg, "failed", run_dir, time.perf_counter() - t1, f"{type(e).__name__}: {e}"
            )
            rep.items.append(item)
            emit(
                Step(
                    k,
                    len(exps),
                    exp.name,
                    "failed",
                    run_dir,
                    seconds=item.seconds,
                    error=item.error,
                )
            )
            continue
        item = Item(
            exp, cfg, "resumed" if resume else "ran", outcome.run_dir, time.perf_counter() - t1
        )
        rep.items.append(item)
        emit(
            Step(
                k,
                len(exps),
                exp.name,
                "done",
                outcome.run_dir,
                _outcome(outcome.run_dir),
                item.seconds,
            )
        )
    rep.wall_time_seconds = time.perf_counter() - t0
    if not distributed.is_main():  # the run directories, report and index are process 0's
        return rep
    rep.reports = write_report(out, rep.items)
    rep.wall_time_seconds = time.perf_counter() - t0
    rep.index = write_index(rep)
    return rep


def _found_everywhere(out: Path, exp: Experiment, cfg: Config) -> tuple[str, Path] | None:
    """find_run on process 0, the same answer on every process of a distributed job (the
    others may not see process 0's disk)."""
    found = find_run(out, exp, cfg) if distributed.is_main() else None
    shared = distributed.broadcast("find_run", None if found is None else [found[0], str(found[1])])
    return None if shared is None else (shared[0], Path(shared[1]))


def _newest(out: Path, exp: Experiment, cfg: Config) -> Path | None:
    """The run directory a failed fresh run left behind (if it got that far)."""
    found = find_run(out, exp, cfg)
    return found[1] if found is not None else None


def _outcome(run_dir: Path) -> str | None:
    try:
        return runs.verdict_text(results.read_json(run_dir / "summary.json").get("verdict"))
    except (OSError, ValueError, AttributeError):
        return None


def _wall(run_dir: Path) -> float | None:
    return timing(run_dir).get("wall_time_seconds")


def timing(run_dir: Path | None) -> dict[str, Any]:
    """A run's summary timing (wall, train, compile and evaluation seconds; runner.run), as it
    was when the run finished (a reused run keeps its figures); {} when there is none."""
    if run_dir is None:
        return {}
    try:
        found = results.read_json(Path(run_dir) / "summary.json").get("timing")
    except (OSError, ValueError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def verdicts(rep: Reproduction) -> dict[str, dict | None]:
    """Each experiment's verdict, read from its run directory's summary.json (None: none)."""
    return {
        i.experiment.name: (
            results.read_json(i.run_dir / "summary.json")["verdict"]
            if i.run_dir and (i.run_dir / "summary.json").is_file()
            else None
        )
        for i in rep.items
    }
