"""The reproduction report: one Markdown file and one self-contained HTML page from run directories.

The report is a pure function of the run files (config.json, status.json, environment.json,
summary.json, plots/*.png) and of the registry text each `Entry` carries (claim, source, the
paper's number, the re-run command): the same runs give a byte-identical report. Nothing here reads
the clock, the network or the environment.

report.html is one file: CSS inline, plots embedded as PNG data URIs, no script, no external URL,
and well-formed XML (every tag closed, so a strict parser reads it). A narrow screen shows the
claims table as one card per claim; print gives one experiment per page.


The package: ``views`` (reading the run files into RunViews, and the cells, claim and tally text
both formats share), ``markdown`` (report.md), ``page`` (report.html); writing both, with the
forest plots, is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnexp.atomic import write_text_atomic
from bnexp.htmlreport.markdown import render_markdown
from bnexp.htmlreport.page import render_html
from bnexp.htmlreport.views import (
    CONDITION_COLUMNS,
    DEFAULT_TITLE,
    FOREST_FILE,
    RUN_FOREST,
    Entry,
    Forests,
    Plot,
    RunView,
    checks_of,
    claims_of,
    duration,
    load,
    value_text,
)

__all__ = [
    "CONDITION_COLUMNS",
    "DEFAULT_TITLE",
    "FOREST_FILE",
    "RUN_FOREST",
    "Entry",
    "Forests",
    "Plot",
    "RunView",
    "duration",
    "load",
    "render_html",
    "render_markdown",
    "value_text",
    "write",
    "write_forests",
]

# ---- writing ---------------------------------------------------------------------------------


def write(
    entries: Sequence[Entry],
    out_dir: Path,
    *,
    title: str = DEFAULT_TITLE,
    html_file: bool = True,
    markdown: bool = True,
) -> dict[str, Path]:
    """Write report.md and/or report.html into out_dir (atomically); returns {"md"|"html": path}.

    Where any run's verdict has conditions, the forest plots are written next to them first
    (write_forests) and linked from the Markdown, embedded in the HTML.
    """
    out_dir = Path(out_dir)
    views = [load(e, out_dir) for e in entries]
    forests = write_forests(views, out_dir) if markdown or html_file else Forests()
    paths: dict[str, Path] = {}
    if markdown:
        text = render_markdown(views, title, forests)
        paths["md"] = write_text_atomic(out_dir / "report.md", text)
    if html_file:
        page = render_html(views, title, forests)
        paths["html"] = write_text_atomic(out_dir / "report.html", page)
    return paths


def write_forests(views: Sequence[RunView], out_dir: Path) -> Forests:
    """Draw forest.png (every condition of every claim; identity checks left out) and
    forest-<experiment>.png (one per run with conditions) into out_dir. Runs without conditions (old verdicts) draw nothing; when no
    run has any, no file is written and the report shows no forest plot."""
    from bnexp import plots

    out_dir = Path(out_dir)

    def draw(groups: list[tuple[str, Any]], name: str, title: str) -> Plot | None:
        p = plots.forest(groups, out_dir / name, title=title)
        return None if p is None else Plot(name, Path(p).read_bytes())

    overall = draw(  # the claims only: identity checks have their own sections' plots
        [(v.entry.name, v.verdicts) for v in claims_of(views)],
        FOREST_FILE,
        "Every condition of every claim: effect and 95% interval vs the threshold",
    )
    if overall is None and not any(v.verdicts for v in checks_of(views)):
        return Forests()
    sections: list[Plot | None] = []
    used: set[str] = {FOREST_FILE}
    for v in views:
        stem = "forest-" + v.anchor.removeprefix("exp-")
        name, k = f"{stem}.png", 2
        while name in used:
            name, k = f"{stem}-{k}.png", k + 1
        used.add(name)
        sections.append(draw([(v.entry.name, v.verdicts)], name, f"{v.entry.name}: conditions"))
    return Forests(overall, tuple(sections))
