"""report.html: one self-contained page (CSS inline, plots as PNG data URIs, no script, no
external URL, well-formed XML)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnexp.htmlreport.views import (
    CHECK_COLUMNS,
    CLAIM_COLUMNS,
    CONDITION_COLUMNS,
    CSS_CLASS,
    DEFAULT_TITLE,
    FOREST_NOTE,
    Forests,
    Plot,
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
    cls = CSS_CLASS.get(outcome, "none")
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
    tables = run_tables(v)
    if tables:
        out.append("<h3>Results</h3>")
        for t in tables:
            out += _data_table(*t)
    shown = shown_plots(v, forest)
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
