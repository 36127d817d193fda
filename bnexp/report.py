"""Rich rendering: result tables, verdict lines, run listings and sweep progress.

The library returns data; this module (with plots.py and cli.py) is where it is drawn. Cells are
formatted by a column's kind, or by the value's type:

- accuracies (kind "acc"; also "auto" columns whose key contains "acc"): fractions shown as
  percentages with 2 decimals, "97.85%"; a metrics.Summary (or its dict) as "97.85 ± 0.12%" when it
  has a 95% interval (>= 3 seeds);
- speedups (metrics.Speedup or its dict): "3.4x", lower bounds ">12x", "n/a";
- diverged values (a Summary with no finite member, a {"diverged_at": step} dict, or a string that
  starts with "diverged") as "diverged @ 1200" in red;
- steps-to-target None as "not reached"; other None / NaN as "–".

Progress displays (stderr, plain lines without a terminal) are in bnexp.progress, re-exported
here. Over 300 lines because cell formatting, tables, verdict lines and the bench report share
the formatting helpers above them; render_bench (with bnexp.bench, owned apart) is the next
piece to move out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from bnexp import verdicts
from bnexp.metrics import Speedup, Summary
from bnexp.stats import NOT_REACHED, UNRESOLVED, CensoredSpeedup, CensoredSteps

KINDS = ("auto", "text", "acc", "speedup", "steps", "int", "float", "lr")
DIVERGED_STYLE = "bold red"
DIM = "dim"
# the headline words of a verdict line (the words runs have always printed), by outcome
HEADLINE = {
    verdicts.REPRODUCED: "REPRODUCED",
    verdicts.NOT_REPRODUCED: "NOT REPRODUCED",
    verdicts.INCONCLUSIVE: "inconclusive",
}
OUTCOME_STYLE = {
    verdicts.REPRODUCED: "bold green",
    verdicts.NOT_REPRODUCED: "bold red",
    verdicts.INCONCLUSIVE: "bold yellow",
}


# ---- consoles --------------------------------------------------------------------------------


def make_console(stderr: bool = False, width: int | None = None) -> Console:
    """A Console for stdout (tables) or stderr (progress).

    Rich already drops colour when the stream is not a terminal or NO_COLOR is set; here we also
    widen non-terminal output (80 columns would wrap tables in logs and pipes).
    """
    console = Console(stderr=stderr, width=width)
    if width is None and not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


def is_plain(console: Console) -> bool:
    """No live display: not a terminal, NO_COLOR set, or a dumb terminal."""
    return not console.is_terminal or console.is_dumb_terminal or bool(os.environ.get("NO_COLOR"))


# ---- cells -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: the row key, its header (default: the key) and how to format it."""

    key: str
    header: str | None = None
    kind: str = "auto"  # one of KINDS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column kind must be one of {KINDS}, got {self.kind!r}")


def _is_speedup(v: Any) -> bool:
    return isinstance(v, Speedup) or (isinstance(v, Mapping) and "lower_bound" in v and "text" in v)


def _is_censored_steps(v: Any) -> bool:
    return isinstance(v, Mapping) and set(v) == {"low", "high"}


def _is_censored_speedup(v: Any) -> bool:
    return isinstance(v, Mapping) and set(v) == {"status", "value", "low", "high"}


def _is_summary(v: Any) -> bool:
    return isinstance(v, Summary) or (isinstance(v, Mapping) and "n_diverged" in v and "mean" in v)


def _number(x: float, kind: str) -> str:
    if kind == "acc":
        return f"{100 * x:.2f}%"
    if kind in ("steps", "int") and float(x).is_integer():
        return str(int(x))
    if kind == "lr":
        return f"{x:g}"
    return f"{x:.4g}"


def _diverged_text(steps: Sequence[int], total: int) -> Text:
    where = f" @ {min(steps)}" if steps else ""
    of = f" ({len(steps) or total}/{total} seeds)" if total > 1 else ""
    return Text(f"diverged{where}{of}", style=DIVERGED_STYLE)


def _summary_cell(s: Summary, kind: str) -> Text:
    if s.mean is None:
        return _diverged_text(s.diverged_at, s.total)
    if s.half_width is not None:
        if kind == "acc":
            text = Text(f"{100 * s.mean:.2f} ± {100 * s.half_width:.2f}%")
        else:
            text = Text(f"{_number(s.mean, 'float')} ± {_number(s.half_width, 'float')}")
    else:
        text = Text(_number(s.mean, kind))
    if s.n_diverged:
        where = f" @ {min(s.diverged_at)}" if s.diverged_at else ""
        text.append(f" ({s.n_diverged}/{s.total} diverged{where})", style=DIVERGED_STYLE)
    return text


def format_cell(value: Any, kind: str = "auto", key: str = "") -> Text:
    """One table cell as styled Text (plain text when the console has no colour)."""
    if kind == "auto" and "acc" in key.lower():
        kind = "acc"
    if kind == "text":
        return Text("" if value is None else str(value))
    if _is_censored_steps(value):
        s = CensoredSteps(float(value["low"]), value["high"])
        if not s.reached:
            return Text("never", style=DIM)
        return Text(f"{s.high:g}" if s.low == s.high else f"({s.low:g}, {s.high:g}]")
    if _is_censored_speedup(value):
        sp = CensoredSpeedup(value["status"], value["value"], value["low"], value["high"])
        return Text(sp.text, style=DIM if sp.status in (NOT_REACHED, UNRESOLVED) else "")
    if _is_speedup(value):
        sp = value if isinstance(value, Speedup) else Speedup.from_dict(value)
        return Text(sp.text, style=DIM if sp.value is None else "bold" if sp.lower_bound else "")
    if _is_summary(value):
        return _summary_cell(
            value if isinstance(value, Summary) else Summary.from_dict(value), kind
        )
    if isinstance(value, Mapping) and isinstance(value.get("diverged_at"), int):
        return _diverged_text([value["diverged_at"]], 1)
    if value is None:
        return Text("not reached" if kind == "steps" else "–", style=DIM)
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, int) and kind in ("auto", "int", "steps"):
        return Text(str(value))  # a count or a step: exact, never 1.999e+04
    if isinstance(value, int | float) or hasattr(value, "dtype"):
        x = float(value)
        if not math.isfinite(x):
            return Text("–", style=DIM)
        return Text(_number(x, kind))
    text = str(value)
    if text.startswith("diverged"):
        return Text(text, style=DIVERGED_STYLE)
    if text in ("n/a", "never", "-", "–", "not reached"):
        return Text(text, style=DIM)
    return Text(text)


# ---- tables and verdicts ---------------------------------------------------------------------


def _columns(columns: Iterable[Column | str]) -> list[Column]:
    return [c if isinstance(c, Column) else Column(str(c)) for c in columns]


def build_table(
    title: str | None,
    columns: Iterable[Column | str],
    rows: Iterable[Mapping[str, Any]],
    *,
    plain: bool = False,
    caption: str | None = None,
) -> Table:
    """A rich Table of rows (dicts); keys not named by a column are not shown."""
    cols = _columns(columns)
    table = Table(
        title=Text(title, style="bold") if title else None,
        caption=Text(caption) if caption else None,
        box=box.MARKDOWN if plain else box.SIMPLE_HEAVY,
        show_edge=not plain,
        title_justify="left",
        header_style="bold",
    )
    rows = list(rows)
    for c in cols:
        numeric = c.kind in ("acc", "speedup", "steps", "int", "float", "lr") or any(
            isinstance(r.get(c.key), int | float | Summary | Speedup) for r in rows
        )
        table.add_column(Text(c.header or c.key), justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*(format_cell(r.get(c.key), c.kind, c.key) for c in cols))
    return table


def _outcome(v: Any) -> tuple[str, str, str]:
    """(claim, outcome, evidence) of a stats.Verdict or any verdict dict (old runs' upper-case outcomes and the new lower-case ones).

    The outcome is the headline word: "REPRODUCED", "NOT REPRODUCED" or "inconclusive" whichever
    spelling the verdict uses; an unknown word is shown as given, a missing one as "?".
    """
    get = v.get if isinstance(v, Mapping) else lambda k, d=None: getattr(v, k, d)
    canonical = verdicts.verdict_outcome(v)
    if canonical is not None:
        outcome = HEADLINE[canonical]
    else:
        raw = get("outcome")
        outcome = "?" if raw is None else str(raw)
    return str(get("claim", "") or ""), outcome, str(get("evidence", "") or "")


def outcome_style(outcome: Any) -> str:
    """The style of an outcome word in any spelling (bold green / red / yellow)."""
    return OUTCOME_STYLE.get(verdicts.outcome_of(outcome), "bold")


def verdict_line(verdict: Any) -> Text:
    """'Claim: <claim>  ->  REPRODUCED' then '  evidence: ...' (outcome coloured)."""
    claim, outcome, evidence = _outcome(verdict)
    line = Text.assemble(("Claim: ", "bold"), claim, "  ->  ", (outcome, outcome_style(outcome)))
    if evidence:
        line.append("\n  evidence: ", style=DIM)
        line.append(evidence)
    return line


CONDITION_COLUMNS = ("condition", "effect", "95% interval", "threshold", "outcome", "to settle")


def conditions_table(verdict: Any, *, plain: bool = False) -> Table | None:
    """The verdict's conditions as a table (None when it has none, e.g. an old run's verdict).

    Columns: condition, effect, 95% interval, the claimed side of the threshold ("> 1.2x"),
    outcome (coloured like the verdict line) and, for an inconclusive one, how many seeds would
    likely settle it. Values are in each condition's unit (bnexp.verdicts).
    """
    conds = verdicts.conditions(verdict)
    if not conds:
        return None
    table = Table(
        box=box.MARKDOWN if plain else box.SIMPLE_HEAVY,
        show_edge=not plain,
        header_style="bold",
        pad_edge=False,
    )
    for i, h in enumerate(CONDITION_COLUMNS):
        table.add_column(Text(h), justify="right" if 1 <= i <= 3 else "left")
    for c in conds:
        outcome = str(c.get("outcome", "?"))
        table.add_row(
            Text(str(c.get("name", ""))),
            Text(verdicts.effect_text(c)),
            Text(verdicts.interval_text(c)),
            Text(verdicts.threshold_text(c)),
            Text(outcome, style=outcome_style(outcome)),
            Text(verdicts.settle_text(c), style=DIM),
        )
    return table


def render_verdict(verdict: Any, console: Console) -> None:
    """Each verdict's line, then (for one with conditions) its table of conditions."""
    for v in verdict if isinstance(verdict, list | tuple) else [verdict]:
        console.print(verdict_line(v), soft_wrap=not console.is_terminal)
        table = conditions_table(v, plain=is_plain(console))
        if table is not None:  # indented under its verdict line
            console.print(Padding(table, (0, 0, 0, 2), expand=False))


def render_table(
    title: str,
    columns: Iterable[Column | str],
    rows: Iterable[Mapping[str, Any]],
    console: Console | None = None,
    *,
    verdict: Any = None,
    caption: str | None = None,
) -> Table:
    """Print the title, the table and, if given, the verdict line(s) under it; returns the Table.

    The title is its own line (not the table's title) so a narrow table never wraps it.
    """
    console = console or make_console()
    table = build_table(None, columns, rows, plain=is_plain(console), caption=caption)
    console.print(Text(title, style="bold"), soft_wrap=True)
    console.print(table)
    if verdict is not None:
        render_verdict(verdict, console)
    console.print()
    return table


def render_runs(runs: Iterable[Any], console: Console | None = None) -> Table:
    """The `bnexp runs` listing from bnexp.runs.list_runs()."""
    rows = [
        {
            "name": r.name,
            "experiment": r.experiment or "?",
            "preset": r.preset or "?",
            "date": r.date.strftime("%Y-%m-%d %H:%M") if r.date else "?",
            "status": getattr(r, "shown_status", r.status),
            "verdict": r.verdict or "–",
            "trials": r.trials,
        }
        for r in runs
    ]
    cols = [
        "name",
        "experiment",
        "preset",
        "date",
        "status",
        "verdict",
        Column("trials", kind="int"),
    ]
    return render_table("Runs", cols, rows, console)


# ---- bench and reproduce ----------------------------------------------------------------------


def render_bench(fig: dict, *, quick: bool, console: Console | None = None) -> None:
    """The tables of `bnexp bench` (figures as bench.run returns them)."""
    con = console or make_console()
    m, mm = fig["machine"], fig["matmul"]
    con.rule(f"bnexp bench{' --quick' if quick else ''}")
    con.print(
        f"{m['processor']} ({m['cpu_count']} cores), {m['devices']} {m['platform']} "
        f"device(s), jax {m['jax']}, torch {m['torch'] or 'absent'}; load average "
        f"{m['load_average_before'][0]:.2f} before, {m['load_average_after'][0]:.2f} after",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    layouts = ", ".join(f"{k.split('_')[1]} {v:.0f}" for k, v in mm["layouts_gflops"].items())
    con.print(
        f"float32 matmul peak ({mm['n']}^2, best call): {mm['peak_gflops']:.1f} GFLOP/s "
        f"({layouts})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    con.print()
    rows = [
        {
            "case": name,
            "what": c["what"],
            "steps/s": c["steps_per_s"],
            "min–max": f"{c['steps_per_s_min']:.4g}–{c['steps_per_s_max']:.4g}",
            "GFLOP/s": c["gflops"],
            "of peak": f"{100 * c['fraction_of_peak']:.1f}%",
            "compile s": c["compile_s"],
        }
        for name, c in fig["cases"].items()
    ]
    cols = [
        Column("case", kind="text"),
        Column("what", kind="text"),
        Column("steps/s", kind="float"),
        Column("min–max", kind="text"),
        Column("GFLOP/s", kind="float"),
        Column("of peak", kind="text"),
        Column("compile s", kind="float"),
    ]
    render_table(
        f"Throughput (model-steps/s, median of {fig['config']['reps']}; "
        f"a step = {fig['flops_per_step']['mlp'] / 1e6:.1f} MFLOP for the MLP, "
        f"{fig['flops_per_step']['cnn'] / 1e6:.0f} for the CNN)",
        cols,
        rows,
        con,
    )
    rows = [
        {
            "ratio": k,
            "value": t["value"],
            "target": t["target"],
            "met": "n/a" if t["met"] is None else ("yes" if t["met"] else "NO"),
        }
        for k, t in fig["targets"].items()
    ]
    rows += [
        {"ratio": k, "value": v, "target": "", "met": ""}
        for k, v in fig["ratios"].items()
        if k not in fig["targets"]
    ]
    render_table(
        f"Ratios (sweep = {fig['sweep_case']}; PyTorch = its faster thread setting)",
        [
            Column("ratio", kind="text"),
            Column("value", kind="float"),
            Column("target", kind="text"),
            Column("met", kind="text"),
        ],
        rows,
        con,
    )
    if fig.get("scaling"):
        render_scaling(fig["scaling"], con)
    if quick:
        con.print(
            "--quick: short calls whose fixed costs dominate; the targets are judged on the "
            "full run (BENCHMARKS.md).",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def render_scaling(rows: list[dict], con: Console) -> None:
    """The bench's scaling table: a row per member count, model-steps/s and seconds per
    evaluation point per host device count (bnexp.bench_scaling)."""
    for r in rows:
        if "error" in r:
            con.print(f"scaling, {r['devices']} device(s): {r['error']}", markup=False)
    ok = [r for r in rows if "error" not in r]
    devices = sorted({r["devices"] for r in ok})
    if not ok:
        return
    by = {(r["members"], r["devices"]): r for r in ok}
    table = []
    for m in sorted({r["members"] for r in ok}):
        row: dict[str, Any] = {"members": m}
        for d in devices:
            r = by.get((m, d), {})
            row[f"steps/s {d} dev"] = r.get("model_steps_per_s")
            row[f"s/point {d} dev"] = r.get("eval_s_per_point")
            row[f"compile s {d} dev"] = r.get("compile_s")
        table.append(row)
    cols = [Column("members", kind="int")]
    for d in devices:
        cols += [
            Column(f"steps/s {d} dev", kind="float"),
            Column(f"s/point {d} dev", kind="float"),
            Column(f"compile s {d} dev", kind="float"),
        ]
    render_table(
        "Scaling: lr sweep of the paper MLP (model-steps/s of training; seconds per evaluation "
        "point) by members and host devices",
        cols,
        table,
        con,
    )


# Progress displays live in bnexp.progress (imported last: it uses make_console and is_plain).
from bnexp.progress import (  # noqa: E402, F401 - re-exported: report.sweep_progress(...)
    OverallProgress,
    SweepProgress,
    nested_live_ok,
    sweep_progress,
)
