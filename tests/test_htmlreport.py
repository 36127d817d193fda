"""The report renderer on hand-made run directories: escaping, embedding, determinism, odd runs.

No training here: the run files are written with bnexp.results exactly as a run writes them, so
every expectation below is known in advance. test_reproduce.py renders real smoke runs.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from bnexp import htmlreport, results  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = '<script>alert("x")</script> & | pipes'


def _png(path: Path, colour: str) -> bytes:
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=40)
    ax.plot([0, 1, 2], [0, 1, 0], color=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path.read_bytes()


def make_run(
    out: Path,
    name: str,
    *,
    reproduced,
    evidence: str = "BN 97.0% vs 95.0%",
    status: str = "complete",
    plots: tuple[str, ...] = ("curves.png",),
    config: dict | None = None,
) -> Path:
    cfg = config or {
        "preset": "smoke",
        "seeds": 2,
        "lr": 0.5,
        "hidden": [100, 100],
        "targets": [0.5, 0.7],
        "norm": None,
        "flag": True,
    }
    run = results.new_run_dir(out, name, cfg, environment={"bnexp": "0.1.0", "jax": "0.0"})
    results.set_status(run, status)
    if status != "complete":
        return run
    for i, p in enumerate(plots):
        _png(run / "plots" / p, f"C{i}")
    verdict = {
        "claim": f"claim of {name}",
        "reproduced": reproduced,
        "evidence": evidence,
        "outcome": {True: "REPRODUCED", False: "NOT REPRODUCED", None: "inconclusive"}[reproduced],
    }
    table = {
        "title": "Final accuracy",
        "columns": ["arm", "final accuracy", "diverged at"],
        "rows": [
            {"arm": "bn", "final accuracy": "97.00%", "diverged at": "-"},
            {"arm": "baseline", "final accuracy": "diverged @ 40", "diverged at": 40},
        ],
    }
    results.write_summary(
        run,
        table["rows"],
        verdict,
        {"wall_time_seconds": 75.0, "compile_seconds": 3.0},
        tables=[table],
        plots=list(plots),
    )
    return run


def entry(run: Path, name: str, **kw) -> htmlreport.Entry:
    return htmlreport.Entry(
        run,
        name,
        kw.get("claim", f"claim of {name}"),
        "Paper 2015, Fig. 1",
        kw.get("paper", "0.98 vs 0.97"),
        f"bnexp run {name} --preset smoke",
    )


@pytest.fixture
def runs(tmp_path):
    out = tmp_path / "out"
    a = make_run(out, "alpha", reproduced=True, plots=("curves.png", "bands.png"))
    b = make_run(out, "beta", reproduced=False, evidence=HOSTILE)
    c = make_run(out, "gamma", reproduced=None, plots=())
    d = make_run(out, "delta", reproduced=None, status="interrupted")
    return out, [entry(a, "alpha"), entry(b, "beta"), entry(c, "gamma"), entry(d, "delta")]


def parse(html: str) -> ET.Element:
    return ET.fromstring(html)  # well-formed XML: a strict parser, not a forgiving one


def test_claims_table_rows_and_verdicts(runs):
    out, entries = runs
    paths = htmlreport.write(entries, out)
    root = parse(paths["html"].read_text())
    rows = root.findall(".//table[@id='claims-table']/tbody/tr")
    assert [r.get("data-experiment") for r in rows] == ["alpha", "beta", "gamma", "delta"]
    assert [r.get("data-verdict") for r in rows] == [
        "reproduced",
        "not reproduced",
        "inconclusive",
        "no result (interrupted)",
    ]
    first = {td.get("data-label"): "".join(td.itertext()) for td in rows[0].findall("td")}
    assert first == {
        "experiment": "alpha",
        "claim": "claim of alpha",
        "source": "Paper 2015, Fig. 1",
        "paper": "0.98 vs 0.97",
        "bnexp measured": "BN 97.0% vs 95.0%",
        "verdict": "reproduced",
        "preset": "smoke",
        "seeds": "2",
        "wall time": "1 min 15 s",
    }
    last = {td.get("data-label"): "".join(td.itertext()) for td in rows[3].findall("td")}
    assert last["bnexp measured"] == "no summary yet (status interrupted)"
    assert last["wall time"] == "–"


def test_every_plot_embedded_and_nothing_external(runs):
    out, entries = runs
    html = htmlreport.write(entries, out)["html"].read_text()
    root = parse(html)
    imgs = root.findall(".//img")
    expected = [
        (out / e.run_dir.name / "plots" / p).read_bytes()
        for e, ps in zip(
            entries, [("curves.png", "bands.png"), ("curves.png",), (), ()], strict=True
        )
        for p in ps
    ]
    assert len(imgs) == len(expected) == 3
    for img, data in zip(imgs, expected, strict=True):
        src = img.get("src")
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw.startswith(PNG_SIGNATURE) and raw == data
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # base64 may hold "//"
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text, re.I)
    assert root.find(".//script") is None and root.find(".//link") is None
    for el in root.iter():
        for attr in ("href", "src", "action", "srcset"):
            v = el.get(attr)
            assert v is None or v.startswith(("#", "data:image/png;base64,")), (el.tag, v)


def test_text_is_escaped(runs):
    out, entries = runs
    html = htmlreport.write(entries, out)["html"].read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    beta = parse(html).find(".//tr[@data-experiment='beta']")
    cell = [td for td in beta.findall("td") if td.get("data-label") == "bnexp measured"][0]
    assert "".join(cell.itertext()) == HOSTILE  # escaped in the file, intact on the page


def test_markdown_report(runs):
    out, entries = runs
    md = htmlreport.write(entries, out, html_file=False)["md"].read_text()
    assert not (out / "report.html").exists()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln.count(" | ") >= 8]
    assert len(rows) == 1 + len(entries)  # header + one row per experiment
    assert "| alpha |" in rows[1] and "| reproduced |" in rows[1]
    assert "\\| pipes" in md  # a | in a cell does not split it
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 3 and all((out / link).is_file() for link in links)
    assert "```bash\nbnexp run alpha --preset smoke\n```" in md
    assert "| hidden | 100,100 |" in md and "| norm | none |" in md and "| flag | true |" in md


def test_same_runs_give_the_same_bytes(runs, tmp_path):
    out, entries = runs
    first = {k: p.read_bytes() for k, p in htmlreport.write(entries, out).items()}
    second = {k: p.read_bytes() for k, p in htmlreport.write(entries, out).items()}
    assert first == second
    # the report names runs relative to itself: moving the whole directory changes nothing
    moved = tmp_path / "moved"
    out.rename(moved)
    entries = [
        htmlreport.Entry(
            moved / e.run_dir.name,
            *[getattr(e, f) for f in ("name", "claim", "source", "paper", "command")],
        )
        for e in entries
    ]
    third = {k: p.read_bytes() for k, p in htmlreport.write(entries, moved).items()}
    assert third == first


def test_responsive_and_printable(runs):
    out, entries = runs
    html = htmlreport.write(entries, out)["html"].read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1" />' in html
    assert "@media (max-width:" in html and "@media print" in html
    assert "break-before: page" in html


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bnexp run directory"):
        htmlreport.write([htmlreport.Entry(tmp_path, "x")], tmp_path)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "–"),
        (0.04, "0.0 s"),
        (59.94, "59.9 s"),
        (61, "1 min 01 s"),
        (3599, "59 min 59 s"),
        (7322, "2 h 02 min"),
    ],
)
def test_duration(seconds, text):
    assert htmlreport.duration(seconds) == text
