"""What the command line prints (cli.py calls these; bnexp.report has the table and cell
formatting they use): a run's tables and verdict, the datasets table, a download's file lines,
and the reproduce command's summary tables and JSON document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bnexp import report


def run_tables(tables: Sequence[Any], verdict: Any, *, header: str) -> None:
    """A run's tables under a rule with ``header``, its verdict under the last table."""
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


def outcome(exp: Any, outcome: Any) -> None:
    """A finished run (experiments.runner.Outcome): tables, verdict, run directory, plots."""
    from experiments import runner

    run_tables(
        outcome.analysis.tables,
        runner.verdict_json(outcome.analysis),
        header=f"{exp.name} ({outcome.config.preset} preset)",
    )
    con = report.make_console()
    t = outcome.timing
    con.print(
        f"run directory: {outcome.run_dir}  (wall time {t['wall_time_seconds']:.1f} s, "
        f"compile {t['compile_seconds']:.1f} s waited, "
        f"{t.get('compile_work_seconds', 0.0):.1f} s on the compile threads)"
    )
    for p in outcome.analysis.plots:
        con.print(f"plot: {p}")


def plan_printer(console: Any) -> Any:
    """on_plan(group, plan) for ``--verbose``: one line per sweep group on ``console``."""

    def on_plan(group: int, plan: Any) -> None:
        line = f"plan: group {group + 1}: {plan.line()}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    return on_plan


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape else "configurable"


def datasets_table() -> None:
    """Every dataset: example shape, sizes, source, and whether it is available locally."""
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


class DownloadBar:
    """The download progress bars on stderr, one per file, started lazily (files already present
    and verified draw nothing); ``progress`` is data.download's callback, ``tasks`` the files
    that were downloaded."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.tasks: dict[str, int] = {}

    def progress(self, file: str, done: int, total: int | None) -> None:
        if not self.tasks:
            self.bar.start()
        if file not in self.tasks:
            self.tasks[file] = self.bar.add_task(file, total=total)
        self.bar.update(self.tasks[file], completed=done, total=total)

    def stop(self) -> None:
        self.bar.stop()


def download_lines(info: Any, paths: Sequence[Any], downloaded: Any, seconds: float) -> list[str]:
    """The lines printed after a download: each file, how it was verified, the dataset dir."""
    from bnexp import data

    lines = []
    for spec, path in zip(info.files, paths, strict=False):
        algo = spec.digest.partition(":")[0]
        what = "gunzipped content" if spec.digest_of == "content" else "file"
        extra = f", {len(spec.members)} archive members" if spec.members else ""
        how = "downloaded" if spec.name in downloaded else "already present"
        lines.append(f"  {path}  ({how}; {algo} of {what}{extra} verified)")
    if info.kind == "bundled":
        lines.append("  (shipped with bnexp: verified and cached, no network used)")
    lines.append(f"{info.name}: ready in {data.dataset_dir(info.name)} ({seconds:.1f} s)")
    return lines


def reproduce_doc(rep: Any, out: Any, preset: str, verdicts: dict) -> dict[str, Any]:
    """``bnexp reproduce --json``'s document for a finished reproduce.Report."""
    from experiments import reproduce as rp

    return {
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
                "compile_work_seconds": rp.timing(i.run_dir).get("compile_work_seconds"),
            }
            for i in rep.items
        ],
        "run_dirs": [str(i.run_dir) for i in rep.items if i.run_dir],
        "verdicts": verdicts,
        "reports": {k: str(p) for k, p in rep.reports.items()},
        "index": str(rep.index),
    }


def reproduce_tables(rep: Any, out: Any, preset: str, verdicts: dict) -> None:
    """``bnexp reproduce``'s summary: the claims, the identity checks, the reports, wall time."""
    from bnexp import runs
    from experiments import reproduce as rp

    def row(i: Any) -> dict[str, str]:
        v = verdicts[i.experiment.name]
        compile_s = rp.timing(i.run_dir).get("compile_seconds")
        return {
            "experiment": i.experiment.name,
            "verdict": runs.verdict_text(v) or f"no result ({i.action})",
            "measured": (v or {}).get("evidence") or i.error or "",
            "run": i.action,
            "compile s": "" if compile_s is None else f"{compile_s:.1f}",
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


def experiments_table(registry: Any) -> None:
    """``bnexp list``: every experiment, the claim it tests and its source."""
    rows = [{"name": e.name, "claim": e.claim, "source": e.source} for e in registry.values()]
    report.render_table("Experiments", ["name", "claim", "source"], rows, report.make_console())


def describe(exp: Any) -> None:
    """``bnexp describe``: an experiment's config fields with their defaults per preset."""
    from experiments.base import config_dict, field_types

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
