"""The reproduction report: one Markdown file and one self-contained HTML page from run directories.

The report is a pure function of the run files (config.json, status.json, environment.json,
summary.json, plots/*.png) and of the registry text each `Entry` carries (claim, source, the
paper's number, the re-run command): the same runs give a byte-identical report. Nothing here reads
the clock, the network or the environment.

report.html is one file: CSS inline, plots embedded as PNG data URIs, no script, no external URL,
and well-formed XML (every tag closed, so a strict parser reads it). A narrow screen shows the
claims table as one card per claim; print gives one experiment per page.

Over 300 lines: report.md and report.html render the same entries with shared cell, claim
and tally helpers; splitting the Markdown renderer from the HTML one (with those helpers in
a third module) is the next step, not done yet.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnexp import results
from bnexp.atomic import write_text_atomic
from bnexp.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

_CSS_CLASS = {REPRODUCED: "ok", NOT_REPRODUCED: "bad", INCONCLUSIVE: "unsure"}
CLAIM_COLUMNS = (
    "experiment",
    "claim",
    "source",
    "paper",
    "bnexp measured",
    "verdict",
    "preset",
    "seeds",
    "wall time",
)
DEFAULT_TITLE = "Which Batch Normalization claims hold?"


@dataclass(frozen=True)
class Entry:
    """One experiment of the report: its run directory and what the registry says about it."""

    run_dir: Path
    name: str
    claim: str = ""
    source: str = ""
    paper: str = ""  # the paper's own number(s); "" when none exists
    command: str = ""  # the exact command that re-runs it
    identity: bool = False  # an identity check of the implementation, not an empirical claim


@dataclass(frozen=True)
class RunView:
    """Everything the report shows about one run, read from its files."""

    entry: Entry
    path: str  # the run directory relative to the report's directory (posix)
    config: dict[str, Any]
    status: dict[str, Any]
    environment: dict[str, Any]
    summary: dict[str, Any] | None
    plots: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG bytes)

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        v = (self.summary or {}).get("verdict")
        if isinstance(v, Mapping):
            return [dict(v)]
        if isinstance(v, list):
            return [dict(x) for x in v if isinstance(x, Mapping)]
        return []

    @property
    def outcome(self) -> str:
        """reproduced / not reproduced / inconclusive, or "no result (<status>)"."""
        reps = [v.get("reproduced") for v in self.verdicts]
        if not reps:
            return f"no result ({self.status.get('status', 'unknown')})"
        if all(r is True for r in reps):
            return REPRODUCED
        if any(r is False for r in reps):
            return NOT_REPRODUCED
        return INCONCLUSIVE

    @property
    def claim(self) -> str:
        claims = [str(v["claim"]) for v in self.verdicts if v.get("claim")]
        return "; ".join(claims) if claims else self.entry.claim

    @property
    def measured(self) -> str:
        ev = [str(v["evidence"]) for v in self.verdicts if v.get("evidence")]
        if ev:
            return "; ".join(ev)
        if self.status.get("error"):
            return f"run {self.status.get('status', 'failed')}: {self.status['error']}"
        return f"no summary yet (status {self.status.get('status', 'unknown')})"

    @property
    def wall_time(self) -> float | None:
        t = (self.summary or {}).get("timing", {}).get("wall_time_seconds")
        return float(t) if isinstance(t, int | float) else None

    @property
    def anchor(self) -> str:
        return "exp-" + re.sub(r"[^A-Za-z0-9_-]+", "-", self.entry.name)


@dataclass(frozen=True)
class Plot:
    """A figure the report itself draws: its file name next to the report and its PNG bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Forests:
    """The report's forest plots: all claims (``overall``) and one per section (None: none)."""

    overall: Plot | None = None
    sections: tuple[Plot | None, ...] = ()

    def section(self, i: int) -> Plot | None:
        return self.sections[i] if i < len(self.sections) else None


FOREST_FILE = "forest.png"
RUN_FOREST = "verdict.png"  # the runner's own forest plot of a run, shown as the section's


# ---- reading ---------------------------------------------------------------------------------


def _json(path: Path) -> Any:
    try:
        return results.read_json(path)
    except (OSError, ValueError):
        return None


def load(entry: Entry, report_dir: Path) -> RunView:
    """Read one run directory (missing or broken files become empty)."""
    d = Path(entry.run_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} is not a bnexp run directory (no config.json)")
    summary = _json(d / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    names = summary.get("plots") if summary else None
    if not isinstance(names, list):
        names = sorted(p.name for p in (d / "plots").glob("*.png"))
    plots = [
        (str(n), (d / "plots" / str(n)).read_bytes())
        for n in names
        if (d / "plots" / str(n)).is_file()
    ]
    rel = Path(os.path.relpath(d.resolve(), Path(report_dir).resolve())).as_posix()

    def as_dict(x: Any) -> dict[str, Any]:
        return x if isinstance(x, dict) else {}

    return RunView(
        entry,
        rel,
        as_dict(_json(d / "config.json")),
        as_dict(_json(d / "status.json")),
        as_dict(_json(d / "environment.json")),
        summary,
        plots,
    )


# ---- text pieces shared by both formats -------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def value_text(v: Any) -> str:
    """A config value as the --set syntax writes it (lists comma-separated)."""
    if isinstance(v, list | tuple):
        return ",".join(value_text(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return str(v)


def cell_text(value: Any, key: str) -> str:
    """A table cell as the terminal shows it (bnexp.report's formatting, without colour)."""
    from bnexp.report import format_cell  # lazy: rich is only needed for table cells

    return format_cell(value, "auto", key).plain


def claim_cells(v: RunView) -> dict[str, str]:
    return {
        "experiment": v.entry.name,
        "claim": v.claim,
        "source": v.entry.source or "–",
        "paper": v.entry.paper or "–",
        "bnexp measured": v.measured,
        "verdict": v.outcome,
        "preset": str(v.config.get("preset", v.status.get("preset", "?"))),
        "seeds": value_text(v.config.get("seeds", "?")),
        "wall time": duration(v.wall_time),
    }


def claims_of(views: Sequence[RunView]) -> list[RunView]:
    """The runs that test an empirical claim (the tally and the claims table count only these)."""
    return [v for v in views if not v.entry.identity]


def checks_of(views: Sequence[RunView]) -> list[RunView]:
    """The identity checks of a correct implementation, reported apart from the claims."""
    return [v for v in views if v.entry.identity]


def _counts(views: Sequence[RunView]) -> list[str]:
    counts = {
        k: sum(v.outcome == k for v in views) for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    }
    other = len(views) - sum(counts.values())
    return [f"{n} {k}" for k, n in counts.items()] + (
        [f"{other} without a result"] if other else []
    )


def tally(views: Sequence[RunView]) -> str:
    """'N claims tested: ...' over the claims only; identity checks are counted in a sentence of
    their own (SCIENCE.md: identities are checks, apart from the tally of empirical claims)."""
    claims, checks = claims_of(views), checks_of(views)
    text = f"{len(claims)} claim{'s' if len(claims) != 1 else ''} tested: "
    text += f"{', '.join(_counts(claims)) or 'none'}. "
    if checks:
        text += (
            f"{len(checks)} identity check{'s' if len(checks) != 1 else ''} of the "
            f"implementation, not counted among the claims: {', '.join(_counts(checks))}. "
        )
    presets = sorted({claim_cells(v)["preset"] for v in views})
    total = sum(v.wall_time or 0.0 for v in views)
    return f"{text}Preset: {', '.join(presets) or '?'}. Wall time of the runs: {duration(total)}."


CHECK_COLUMNS = ("experiment", "identity", "verdict", "bnexp measured", "preset", "wall time")


def check_cells(v: RunView) -> dict[str, str]:
    c = claim_cells(v)
    return {k: c["claim" if k == "identity" else k] for k in CHECK_COLUMNS}


def run_line(v: RunView) -> str:
    t = (v.summary or {}).get("timing", {})
    bits = [f"status {v.status.get('status', 'unknown')}"]
    if v.status.get("created"):
        bits.append(f"created {v.status['created']}")
    if t.get("wall_time_seconds") is not None:
        bits.append(f"wall time {duration(t['wall_time_seconds'])}")
    if t.get("compile_seconds") is not None:
        bits.append(f"compile {duration(t['compile_seconds'])}")
    if t.get("trials_run_now") is not None:
        n = t.get("trials_run_now", 0) + t.get("trials_resumed", 0)
        bits.append(f"{n} trials")
    return ", ".join(bits)


def environment_line(v: RunView) -> str:
    e = v.environment
    bits = [f"{k} {e[k]}" for k in ("bnexp", "jax", "python") if e.get(k)]
    if e.get("backend"):
        bits.append(f"backend {e['backend']}")
    if e.get("devices"):
        bits.append(str(e["devices"]))
    if e.get("git_commit"):
        bits.append(f"git {str(e['git_commit'])[:10]}{' (dirty)' if e.get('git_dirty') else ''}")
    return ", ".join(bits) or "–"


def _tables(v: RunView) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    for t in (v.summary or {}).get("tables") or []:
        if not isinstance(t, Mapping):
            continue
        cols = [str(c) for c in t.get("columns") or []]
        rows = [
            [cell_text(r.get(c), c) for c in cols]
            for r in t.get("rows") or []
            if isinstance(r, Mapping)
        ]
        out.append((str(t.get("title", "")), cols, rows))
    return out


CONDITION_COLUMNS = (
    "condition",
    "effect",
    "95% interval",
    "threshold",
    "outcome",
    "seeds (n)",
    "seeds to settle",
)


def condition_tables(v: RunView) -> list[tuple[str, list[list[str]]]]:
    """(claim, rows) for each verdict of the run that has conditions; cells as CONDITION_COLUMNS.

    Values in each condition's unit (bnexp.verdicts); "seeds to settle" only for an inconclusive
    condition ("~12", or "–" when it cannot be estimated).
    """
    from bnexp import verdicts as V

    out = []
    for verdict in v.verdicts:
        rows = []
        for c in V.conditions(verdict):
            n = c.get("n")
            settle = ""
            if V.outcome_of(c.get("outcome")) == V.INCONCLUSIVE:
                k = c.get("seeds_to_settle")
                settle = f"~{k}" if isinstance(k, int) and not isinstance(k, bool) else "–"
            rows.append(
                [
                    str(c.get("name", "")),
                    V.effect_text(c),
                    V.interval_text(c),
                    V.threshold_text(c),
                    V.outcome_of(c.get("outcome")) or str(c.get("outcome", "?")),
                    str(n) if isinstance(n, int) and not isinstance(n, bool) else "–",
                    settle,
                ]
            )
        if rows:
            out.append((str(verdict.get("claim", "") or ""), rows))
    return out


def _shown_plots(v: RunView, forest: Plot | None) -> list[tuple[str, bytes]]:
    """The run's plots, less its verdict.png where the section draws its own forest plot."""
    return [(n, d) for n, d in v.plots if forest is None or n != RUN_FOREST]


FOREST_NOTE = (
    "One row per condition of a claim: the marker is the measured effect, the bar its 95% "
    "interval (an arrow: unbounded on that side), the grey band the effects too small to matter. "
    "Every row has its own axis, in its own unit, centred on its threshold (the vertical line) "
    "and turned so that the claimed side is on the right: a bar wholly right of the line is "
    "reproduced, wholly left of it (or inside the grey band) not reproduced."
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
        for t_title, cols, rows in _tables(v):
            lines += [f"### {_md(t_title)}", ""] + _md_table(cols, rows)
        shown = _shown_plots(v, forest)
        if shown:
            lines += ["### Plots", ""]
            lines += [f"![{_md(Path(n).stem)}]({v.path}/plots/{n})" for n, _ in shown] + [""]
        lines += ["### Config", ""]
        lines += _md_table(["field", "value"], [[k, value_text(x)] for k, x in v.config.items()])
    return "\n".join(lines).rstrip("\n") + "\n"


# ---- HTML ------------------------------------------------------------------------------------

_CSS = """
:root { --fg: #1d2430; --muted: #5b6575; --line: #d9dee6; --bg: #ffffff; --head: #f3f5f8;
  --ok: #17643a; --ok-bg: #e3f4ea; --bad: #a32020; --bad-bg: #fbe6e6;
  --unsure: #7a5a00; --unsure-bg: #fff4d6; --none-bg: #eceff3; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { margin: 0; color: var(--fg); background: var(--bg); line-height: 1.5;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.page { max-width: 78rem; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.9rem; line-height: 1.2; margin: 0.5rem 0 0.5rem; }
h2 { font-size: 1.45rem; margin: 2.5rem 0 0.75rem; padding-top: 0.5rem;
  border-top: 2px solid var(--line); }
h3 { font-size: 1.15rem; margin: 1.75rem 0 0.5rem; }
h4 { font-size: 1rem; margin: 1.25rem 0 0.4rem; }
p.lede { font-size: 1.1rem; color: var(--muted); margin: 0 0 1rem; }
p.note, footer { color: var(--muted); font-size: 0.9rem; }
a { color: #1a4fa0; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: 0.88rem; }
pre { background: var(--head); border: 1px solid var(--line); border-radius: 6px;
  padding: 0.6rem 0.8rem; overflow-x: auto; white-space: pre-wrap; word-break: break-word; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 0.25rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.92rem; }
th, td { border-bottom: 1px solid var(--line); padding: 0.35rem 0.6rem; text-align: left;
  vertical-align: top; }
th { background: var(--head); font-weight: 600; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.data td.muted { color: var(--muted); }
table.data td.diverged { color: var(--bad); font-weight: 600; }
table.claims { width: 100%; }
table.claims td.nowrap { white-space: nowrap; }
table.claims td.wide { min-width: 16rem; }
.badge { display: inline-block; padding: 0.05rem 0.55rem; border-radius: 999px;
  font-weight: 700; font-size: 0.85rem; white-space: nowrap; border: 1px solid transparent;
  background: var(--none-bg); }
.badge.ok { color: var(--ok); background: var(--ok-bg); border-color: var(--ok); }
.badge.bad { color: var(--bad); background: var(--bad-bg); border-color: var(--bad); }
.badge.unsure { color: var(--unsure); background: var(--unsure-bg); border-color: var(--unsure); }
h2 .badge { font-size: 0.95rem; vertical-align: middle; margin-left: 0.4rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.3rem 1rem;
  margin: 0.5rem 0 1rem; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
dl.config { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr));
  gap: 0.2rem 1.5rem; margin: 0.5rem 0; font-size: 0.9rem; }
dl.config div { display: flex; justify-content: space-between; gap: 0.75rem;
  border-bottom: 1px dotted var(--line); }
dl.config dt { color: var(--muted); }
dl.config dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace;
  text-align: right; overflow-wrap: anywhere; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 30rem), 1fr));
  gap: 1rem; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 0.5rem;
  background: #fff; }
figure img { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 0.85rem; text-align: center; margin-top: 0.3rem; }
nav.toc { font-size: 0.95rem; display: flex; flex-wrap: wrap; gap: 0.3rem 0.9rem; }
nav.toc a { white-space: nowrap; }
@media (max-width: 46rem) {
  .page { padding: 1rem 0.75rem 2rem; }
  h1 { font-size: 1.5rem; }
  table.claims, table.claims tbody, table.claims tr, table.claims td { display: block; width: 100%; }
  table.claims thead { display: none; }
  table.claims tr { border: 1px solid var(--line); border-radius: 8px; margin: 0 0 0.9rem;
    padding: 0.3rem 0.6rem; }
  table.claims td { border: 0; padding: 0.2rem 0; }
  table.claims td::before { content: attr(data-label); display: block; color: var(--muted);
    font-size: 0.78rem; text-transform: uppercase; letter-spacing: 0.03em; }
  table.claims td.nowrap { white-space: normal; }
  table.claims td.wide { min-width: 0; }
  dl.facts { grid-template-columns: 1fr; }
  dl.facts dd { margin-bottom: 0.4rem; }
}
@media print {
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  body { font-size: 10pt; }
  .page { max-width: none; padding: 0; }
  nav.toc { display: none; }
  .scroll { overflow: visible; }
  pre { white-space: pre-wrap; }
  section.experiment { break-before: page; }
  h2, h3, h4 { break-after: avoid; }
  figure, tr, pre, dl.facts { break-inside: avoid; }
  .plots { grid-template-columns: 1fr 1fr; }
  a { color: inherit; text-decoration: none; }
}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _badge(outcome: str) -> str:
    cls = _CSS_CLASS.get(outcome, "none")
    return f'<span class="badge {cls}">{_e(outcome)}</span>'


_NUMERIC = re.compile(r"^[<>~+\-−]?\d")
_EMPTY = ("never", "not reached", "n/a", "-", "–")


def _data_table(title: str, cols: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = [
        f"<h4>{_e(title)}</h4>",
        '<div class="scroll"><table class="data">',
        "<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead>",
        "<tbody>",
    ]
    for r in rows:
        cells = []
        for c in r:
            cls = (
                "diverged"
                if c.startswith("diverged")
                else "num"
                if _NUMERIC.match(c)
                else "num muted"
                if c in _EMPTY
                else ""
            )
            cells.append(f'<td class="{cls}">{_e(c)}</td>' if cls else f"<td>{_e(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return out + ["</tbody></table></div>"]


def _claims_table(views: Sequence[RunView]) -> list[str]:
    out = [
        '<div class="scroll"><table class="claims" id="claims-table">',
        "<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in CLAIM_COLUMNS) + "</tr></thead>",
        "<tbody>",
    ]
    for v in views:
        cells = claim_cells(v)
        tds = []
        for k, text in cells.items():
            if k == "experiment":
                inner = f'<a href="#{v.anchor}">{_e(text)}</a>'
            elif k == "verdict":
                inner = _badge(text)
            else:
                inner = _e(text)
            cls = (
                ' class="nowrap"'
                if k in ("experiment", "preset", "seeds", "wall time")
                else ' class="wide"'
                if k == "bnexp measured"
                else ""
            )
            tds.append(f'<td data-label="{_e(k)}"{cls}>{inner}</td>')
        out.append(
            f'<tr data-experiment="{_e(v.entry.name)}" data-verdict="{_e(v.outcome)}">'
            + "".join(tds)
            + "</tr>"
        )
    return out + ["</tbody></table></div>"]


def _checks_table(views: Sequence[RunView]) -> list[str]:
    out = [
        '<div class="scroll"><table class="claims" id="checks-table">',
        "<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in CHECK_COLUMNS) + "</tr></thead>",
        "<tbody>",
    ]
    for v in views:
        tds = []
        for k, text in check_cells(v).items():
            inner = (
                f'<a href="#{v.anchor}">{_e(text)}</a>'
                if k == "experiment"
                else _badge(text)
                if k == "verdict"
                else _e(text)
            )
            tds.append(f'<td data-label="{_e(k)}">{inner}</td>')
        out.append(
            f'<tr data-experiment="{_e(v.entry.name)}" data-verdict="{_e(v.outcome)}">'
            + "".join(tds)
            + "</tr>"
        )
    return out + ["</tbody></table></div>"]


def _figure(data: bytes, alt: str, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="{uri}" alt="{_e(alt)}" />'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _conditions_html(v: RunView, forest: Plot | None) -> list[str]:
    conds = condition_tables(v)
    if not conds:
        return []
    out = ["<h3>Conditions</h3>"]
    if forest is not None:
        out.append(_figure(forest.data, f"{v.entry.name}: conditions", forest.name))
    for claim, rows in conds:
        if len(conds) > 1:
            out.append(f"<h4>{_e(claim)}</h4>")
        out += [
            '<div class="scroll"><table class="data conditions">',
            "<thead><tr>"
            + "".join(f"<th>{_e(c)}</th>" for c in CONDITION_COLUMNS)
            + "</tr></thead>",
            "<tbody>",
        ]
        for r in rows:
            cells = [f"<td>{_e(r[0])}</td>"]
            cells += [f'<td class="num">{_e(x)}</td>' for x in r[1:4]]
            cells.append(f"<td>{_badge(r[4])}</td>")
            cells += [f'<td class="num">{_e(x)}</td>' for x in r[5:]]
            out.append(f'<tr data-outcome="{_e(r[4])}">' + "".join(cells) + "</tr>")
        out.append("</tbody></table></div>")
    return out


def _section(v: RunView, forest: Plot | None = None) -> list[str]:
    out = [
        f'<section class="experiment" id="{_e(v.anchor)}">',
        f"<h2>{_e(v.entry.name)} {_badge(v.outcome)}</h2>",
        '<dl class="facts">',
    ]
    facts = [
        ("Claim", v.claim),
        ("Source", v.entry.source or "–"),
        ("Paper", v.entry.paper or "–"),
        ("Measured", v.measured),
        ("Run", None),
        ("Environment", environment_line(v)),
    ]
    for k, text in facts:
        if k == "Run":
            out.append(f"<dt>Run</dt><dd><code>{_e(v.path)}</code> ({_e(run_line(v))})</dd>")
        else:
            out.append(f"<dt>{_e(k)}</dt><dd>{_e(text)}</dd>")
    out.append("</dl>")
    if v.entry.command:
        out += ["<h3>Re-run it</h3>", f"<pre><code>{_e(v.entry.command)}</code></pre>"]
    out += _conditions_html(v, forest)
    tables = _tables(v)
    if tables:
        out.append("<h3>Results</h3>")
        for t in tables:
            out += _data_table(*t)
    shown = _shown_plots(v, forest)
    if shown:
        out += ["<h3>Plots</h3>", '<div class="plots">']
        for name, data in shown:
            out.append(_figure(data, f"{v.entry.name}: {Path(name).stem}", name))
        out.append("</div>")
    out += ["<h3>Config</h3>", '<dl class="config">']
    out += [
        f"<div><dt>{_e(k)}</dt><dd>{_e(value_text(x)).replace(',', ',<wbr />')}</dd></div>"
        for k, x in v.config.items()
    ]  # <wbr />: long lists wrap after a comma
    return out + ["</dl>", "</section>"]


def render_html(
    views: Sequence[RunView], title: str = DEFAULT_TITLE, forests: Forests | None = None
) -> str:
    """One self-contained page (well-formed XML, no script, no external URL); ``forests`` (from
    write_forests) embeds the forest plots: all claims first, then each section's own."""
    forests = forests or Forests()
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8" />',
        '<meta name="viewport" content="width=device-width, initial-scale=1" />',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        '<div class="page">',
        "<header>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="lede">{_e(tally(views))}</p>',
    ]
    if len(views) > 1:
        out.append(
            '<nav class="toc">'
            + "".join(f'<a href="#{_e(v.anchor)}">{_e(v.entry.name)}</a>' for v in views)
            + "</nav>"
        )
    out += ["</header>", "<main>"]
    if forests.overall is not None:
        out += [
            '<section id="forest">',
            "<h2>Every condition</h2>",
            _figure(forests.overall.data, "forest plot of every condition", forests.overall.name),
            f'<p class="note">{_e(FOREST_NOTE)}</p>',
            "</section>",
        ]
    out += ['<section id="claims">', "<h2>Claims</h2>"]
    out += _claims_table(claims_of(views))
    if checks_of(views):
        out += [
            "<h3>Identity checks</h3>",
            '<p class="note">Identities of a correct implementation, not empirical claims: '
            "listed apart and not counted in the tally.</p>",
        ]
        out += _checks_table(checks_of(views))
    out += [
        '<p class="note">Verdicts are computed from the measured numbers by each experiment\'s '
        "rule (<code>bnexp describe NAME</code>). The paper column quotes the source; "
        "bnexp's numbers come from the run directories below. A smoke preset proves the "
        "machinery and claims no science.</p>",
        "</section>",
    ]
    for i, v in enumerate(views):
        out += _section(v, forests.section(i))
    out += [
        "</main>",
        "<footer><p>Generated by bnexp from the run directories named above "
        "(config.json, status.json, environment.json, summary.json, plots/); rendering the "
        "same runs again gives this same page.</p></footer>",
        "</div>",
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"


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
