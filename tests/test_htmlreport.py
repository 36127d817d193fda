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
    verdict: dict | None = None,
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
    verdict = verdict or {
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


# ---- conditions: the forest plots and the conditions tables ---------------------------------


def _new_verdict(claim: str, *conditions) -> dict:
    from bnexp import stats

    return stats.Verdict(claim, tuple(conditions), "measured").to_json()


@pytest.fixture
def condition_runs(tmp_path):
    import math

    from bnexp import stats

    out = tmp_path / "out"
    speed = _new_verdict(
        "BN reaches 97% faster",
        stats.Condition("speedup to 97%", math.log(2.0), (math.log(1.4), math.log(2.9)),
                        math.log(1.2), n=5, sd=0.2, unit="log speedup", log=True),
        stats.Condition("speedup to 98%", None, (math.log(1.1), math.inf), math.log(1.2), n=5,
                        unit="log speedup", log=True),
    )  # fmt: skip
    acc = _new_verdict(
        "BN keeps accuracy",
        stats.Condition("accuracy difference", -0.004, (-0.011, 0.009), 0.005, direction=-1,
                        n=3, sd=0.003, unit="accuracy difference"),
    )  # fmt: skip
    a = make_run(out, "alpha", reproduced=None, verdict=speed, plots=("curves.png", "verdict.png"))
    b = make_run(out, "beta", reproduced=True)  # an old run: no conditions
    c = make_run(out, "gamma", reproduced=None, verdict=acc, plots=())
    return out, [entry(a, "alpha"), entry(b, "beta"), entry(c, "gamma")], (speed, acc)


ALPHA_ROWS = [
    ["speedup to 97%", "2x", "[1.4x, 2.9x]", "> 1.2x", "reproduced", "5", ""],
    ["speedup to 98%", "–", "[1.1x, ∞)", "> 1.2x", "inconclusive", "5", "–"],
]


def test_html_opens_with_the_forest_plot_and_sections_have_conditions(condition_runs):
    out, entries, (speed, acc) = condition_runs
    html = htmlreport.write(entries, out)["html"].read_text()
    root = parse(html)
    main = root.find(".//main")
    first = main.find("section")
    assert first.get("id") == "forest"  # before the claims table
    img = first.find(".//img")
    raw = base64.b64decode(img.get("src").split(",", 1)[1])
    assert raw.startswith(PNG_SIGNATURE) and raw == (out / "forest.png").read_bytes()
    assert len(main.findall(".//table[@id='claims-table']/tbody/tr")) == 3  # kept

    def section(name):
        return root.find(f".//section[@id='exp-{name}']")

    def cond_rows(sec):
        return [
            ["".join(td.itertext()) for td in tr.findall("td")]
            for tr in sec.findall(".//table[@class='data conditions']/tbody/tr")
        ]

    alpha = section("alpha")
    assert cond_rows(alpha) == ALPHA_ROWS
    heads = [
        "".join(th.itertext()) for th in alpha.findall(".//table[@class='data conditions']//th")
    ]
    assert heads == list(htmlreport.CONDITION_COLUMNS)
    captions = [f.findtext("figcaption") for f in alpha.findall(".//figure")]
    # its own forest plot first; the run's verdict.png is not shown twice
    assert captions == ["forest-alpha.png", "curves.png"]
    own = base64.b64decode(alpha.find(".//figure/img").get("src").split(",", 1)[1])
    assert own == (out / "forest-alpha.png").read_bytes()
    assert cond_rows(section("gamma")) == [
        ["accuracy difference", "-0.4 pts", "[-1.1, 0.9] pts", "< 0.5 pts", "inconclusive", "3",
         f"~{acc['conditions'][0]['seeds_to_settle']}"],
    ]  # fmt: skip
    beta = section("beta")  # the old run renders as before: no conditions, no forest plot
    assert cond_rows(beta) == [] and "Conditions" not in "".join(beta.itertext())
    assert [f.findtext("figcaption") for f in beta.findall(".//figure")] == ["curves.png"]
    assert not (out / "forest-beta.png").exists()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text, re.I)


def test_markdown_links_the_forest_plots_and_has_the_conditions_tables(condition_runs):
    out, entries, (speed, acc) = condition_runs
    md = htmlreport.write(entries, out, html_file=False)["md"].read_text()
    lines = md.splitlines()
    forest = lines.index("![forest plot of every condition](forest.png)")
    claims = next(i for i, ln in enumerate(lines) if ln.startswith("| experiment |"))
    assert forest < claims  # the report opens with it
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "forest.png" in links and "forest-alpha.png" in links and "forest-gamma.png" in links
    assert all((out / link).is_file() for link in links)
    assert not any(link.endswith("verdict.png") for link in links)
    for row in ALPHA_ROWS:
        assert "| " + " | ".join(row) + " |" in md
    assert (
        "| accuracy difference | -0.4 pts | [-1.1, 0.9] pts | < 0.5 pts | inconclusive | 3 |" in md
    )
    beta = md.split("## beta")[1].split("## gamma")[0]
    assert "### Conditions" not in beta


def test_forest_plots_are_deterministic(condition_runs):
    out, entries, _ = condition_runs
    first = {k: p.read_bytes() for k, p in htmlreport.write(entries, out).items()}
    png = (out / "forest.png").read_bytes()
    second = {k: p.read_bytes() for k, p in htmlreport.write(entries, out).items()}
    assert first == second and (out / "forest.png").read_bytes() == png


def test_identity_checks_are_listed_apart_from_the_tally_of_claims(tmp_path):
    out = tmp_path / "out"
    a = make_run(out, "alpha", reproduced=True)
    b = make_run(out, "beta", reproduced=False)
    s = make_run(out, "scale", reproduced=True, evidence="max output change 3e-07")
    check = htmlreport.Entry(s, "scale", "an identity", "Sec. 3.3", "", "cmd", identity=True)
    paths = htmlreport.write([entry(a, "alpha"), entry(b, "beta"), check], out)
    root = parse(paths["html"].read_text())
    claims = root.findall(".//table[@id='claims-table']/tbody/tr")
    assert [r.get("data-experiment") for r in claims] == ["alpha", "beta"]
    [row] = root.findall(".//table[@id='checks-table']/tbody/tr")
    cells = {td.get("data-label"): "".join(td.itertext()) for td in row.findall("td")}
    assert cells["experiment"] == "scale" and cells["verdict"] == "reproduced"
    assert cells["bnexp measured"] == "max output change 3e-07"
    lede = root.find(".//p[@class='lede']").text
    assert lede.startswith("2 claims tested: 1 reproduced, 1 not reproduced, 0 inconclusive. ")
    assert "1 identity check of the implementation, not counted among the claims: 1 reproduced" in (
        lede
    )
    md = paths["md"].read_text()
    assert md.splitlines()[2] == lede
    assert "| scale | claim of scale | reproduced | max output change 3e-07 |" in md
    assert f"#{root.find('.//h2').text}" if False else True
    assert len(root.findall(".//section//h2")) >= 4  # every run keeps its own section


def test_the_overall_forest_plot_leaves_identity_checks_out(condition_runs, monkeypatch):
    from bnexp import plots

    out, entries, _ = condition_runs
    drawn = {}

    def fake_forest(groups, path, title=""):
        drawn[Path(path).name] = [name for name, _ in groups]
        return None

    monkeypatch.setattr(plots, "forest", fake_forest)
    gamma = entries[2]
    check = htmlreport.Entry(gamma.run_dir, "gamma", gamma.claim, identity=True)
    views = [htmlreport.load(e, out) for e in [entries[0], entries[1], check]]
    htmlreport.write_forests(views, out)
    assert drawn["forest.png"] == ["alpha", "beta"]  # the claims; gamma is an identity check
    assert drawn["forest-gamma.png"] == ["gamma"]  # which keeps its own section's plot
