"""report.md: the Markdown renderer (the same entries, cells and tally as the HTML page)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnexp.htmlreport.views import (
    CHECK_COLUMNS,
    CLAIM_COLUMNS,
    CONDITION_COLUMNS,
    DEFAULT_TITLE,
    FOREST_NOTE,
    Forests,
    RunView,
    check_cells,
    checks_of,
    claim_cells,
    claims_of,
    condition_tables,
    environment_line,
    run_line,
    run_tables,
    shown_plots,
    tally,
    value_text,
)

# ---- Markdown --------------------------------------------------------------------------------


def _md(text: Any) -> str:
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(_md(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return lines + [""]


def render_markdown(
    views: Sequence[RunView], title: str = DEFAULT_TITLE, forests: Forests | None = None
) -> str:
    """The Markdown report; ``forests`` (from write_forests) adds the forest plots' links."""
    forests = forests or Forests()
    lines = [f"# {_md(title)}", "", tally(views), ""]
    if forests.overall is not None:
        lines += [f"![forest plot of every condition]({forests.overall.name})", ""]
        lines += [FOREST_NOTE, ""]
    lines += _md_table(CLAIM_COLUMNS, [list(claim_cells(v).values()) for v in claims_of(views)])
    if checks_of(views):
        lines += [
            "Identity checks (of a correct implementation, not empirical claims; not in the "
            "tally):",
            "",
        ]
        lines += _md_table(CHECK_COLUMNS, [list(check_cells(v).values()) for v in checks_of(views)])
    lines += [
        "Verdicts are computed from the measured numbers by each experiment's rule "
        "(`bnexp describe NAME`); a smoke preset proves the machinery and claims no science.",
        "",
    ]
    for i, v in enumerate(views):
        forest = forests.section(i)
        lines += [
            f"## {_md(v.entry.name)}: {v.outcome}",
            "",
            f"- **Claim:** {_md(v.claim)}",
            f"- **Source:** {_md(v.entry.source or '–')}",
            f"- **Paper:** {_md(v.entry.paper or '–')}",
            f"- **Measured:** {_md(v.measured)}",
            f"- **Run:** `{v.path}` ({_md(run_line(v))})",
            f"- **Environment:** {_md(environment_line(v))}",
            "",
        ]
        if v.entry.command:
            lines += ["Re-run it:", "", "```bash", v.entry.command, "```", ""]
        conds = condition_tables(v)
        if conds:
            lines += ["### Conditions", ""]
            if forest is not None:
                lines += [f"![conditions of {_md(v.entry.name)}]({forest.name})", ""]
            for claim, rows in conds:
                if len(conds) > 1:
                    lines += [f"**{_md(claim)}**", ""]
                lines += _md_table(CONDITION_COLUMNS, rows)
        for t_title, cols, rows in run_tables(v):
            lines += [f"### {_md(t_title)}", ""] + _md_table(cols, rows)
        shown = shown_plots(v, forest)
        if shown:
            lines += ["### Plots", ""]
            lines += [f"![{_md(Path(n).stem)}]({v.path}/plots/{n})" for n, _ in shown] + [""]
        lines += ["### Config", ""]
        lines += _md_table(["field", "value"], [[k, value_text(x)] for k, x in v.config.items()])
    return "\n".join(lines).rstrip("\n") + "\n"
