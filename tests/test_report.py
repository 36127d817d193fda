"""Tables, verdict lines and progress render readable plain text."""

import io
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from bnexp import metrics as M
from bnexp import report, stats
from bnexp.results import to_jsonable
from bnexp.runs import RunInfo
from bnexp.sweep import ProgressEvent

ROWS = [
    {"arm": "bn", "final_acc": M.summarize([0.97, 0.98, 0.99]), "speedup": M.speedup(None, 400, 5000),
     "steps": 1200, "lr": 0.5},
    {"arm": "baseline", "final_acc": M.summarize([None], [1200]), "speedup": M.speedup(3400, 1000, 5000),
     "steps": None, "lr": 5.0},
    {"arm": "gn", "final_acc": M.summarize([0.9, None, 0.91], [None, 700, None]),
     "speedup": M.speedup(3400, None, 5000), "steps": 300, "lr": 1e-3},
]  # fmt: skip
COLS = ["arm", report.Column("final_acc", "final accuracy"), "speedup",
        report.Column("steps", "steps to 97%", kind="steps"), report.Column("lr", kind="lr")]  # fmt: skip


def _plain_console(width=120):
    buf = io.StringIO()
    return Console(file=buf, width=width), buf


def test_table_plain_text_contents():
    console, buf = _plain_console()
    verdict = {
        "claim": "BN reaches [97%] faster",
        "outcome": "reproduced",
        "evidence": "3.4x to 97%",
    }
    report.render_table("Compare", COLS, ROWS, console, verdict=verdict)
    out = buf.getvalue()
    assert "\x1b[" not in out  # no escape codes when not a terminal
    assert "98.00 ± 2.48%" in out  # t(2)=4.303 * 0.01 / sqrt(3) = 2.48 points
    assert ">12x" in out and "3.4x" in out and "n/a" in out
    assert "diverged @ 1200" in out
    assert "90.50% (1/3 diverged @ 700)" in out
    assert "not reached" in out and "0.001" in out
    assert "Claim: BN reaches [97%] faster  ->  REPRODUCED" in out  # brackets are not markup
    assert "evidence: 3.4x to 97%" in out
    assert "arm " in out and "|-" in out  # markdown-style rules for logs and pipes
    assert out.startswith("Compare\n")  # the title on its own line, never wrapped


def test_rows_from_summary_json_render_the_same():
    console, buf = _plain_console()
    report.render_table("Compare", COLS, to_jsonable(ROWS), console)
    out = buf.getvalue()
    assert "98.00 ± 2.48%" in out and ">12x" in out and "diverged @ 1200" in out


def test_diverged_cells_are_red_on_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=True, color_system="standard")
    report.render_table("t", ["arm", "acc"], [{"arm": "a", "acc": "diverged @ 1200"}], console)
    assert "\x1b[1;31mdiverged @ 1200" in buf.getvalue()


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (0.98765, "acc", "98.77%"),
        (0.5, "auto", "0.5"),
        (float("nan"), "float", "–"),
        (None, "auto", "–"),
        (None, "steps", "not reached"),
        (1200.0, "steps", "1200"),
        ({"diverged_at": 300}, "auto", "diverged @ 300"),
        (M.summarize([None, None], [300, 200]), "acc", "diverged @ 200 (2/2 seeds)"),
        (M.summarize([0.5, 0.7]), "acc", "60.00%"),
        (True, "auto", "yes"),
        ("text [x]", "auto", "text [x]"),
    ],
)
def test_format_cell(value, kind, text):
    assert report.format_cell(value, kind).plain == text


def test_format_cell_infers_accuracy_from_key():
    assert report.format_cell(0.9, key="test_acc").plain == "90.00%"
    with pytest.raises(ValueError):
        report.Column("x", kind="percent")


def test_verdict_from_experiment_style_object():
    class V:
        claim, reproduced, evidence = "c", False, "e"

    assert "->  NOT REPRODUCED" in report.verdict_line(V()).plain
    assert "inconclusive" in report.verdict_line({"claim": "c", "reproduced": None}).plain


def _stats_verdict():
    import math

    return stats.Verdict(
        "BN reaches 97% faster",
        (
            stats.Condition("speedup to 97%", math.log(2.0), (math.log(1.4), math.log(2.9)),
                            math.log(1.2), n=5, sd=0.2, unit="log speedup", log=True),
            stats.Condition("final accuracy difference", -0.004, (-0.011, 0.009), 0.005,
                            direction=-1, n=3, sd=0.003, unit="accuracy difference"),
            stats.Condition("speedup to 98%", None, (math.log(1.1), math.inf), math.log(1.2),
                            n=5, unit="log speedup", log=True),
            stats.Condition("gap", -0.01, (-0.02, -0.001), 0.0, direction=-1, n=4, sd=0.01,
                            unit="accuracy difference"),
        ),
        "e",
    )  # fmt: skip


def _table_lines(out):
    return {ln.split("|")[0].strip(): [c.strip() for c in ln.split("|")] for ln in
            out.splitlines() if "|" in ln}  # fmt: skip


@pytest.mark.parametrize("as_json", [True, False])
def test_render_verdict_prints_the_conditions_table(as_json):
    v = _stats_verdict()
    console, buf = _plain_console(160)
    report.render_verdict(v.to_json() if as_json else v, console)
    out = buf.getvalue()
    assert "\x1b[" not in out
    assert out.startswith("Claim: BN reaches 97% faster  ->  inconclusive\n  evidence: e\n")
    rows = _table_lines(out)
    assert rows["condition"][:5] == ["condition", "effect", "95% interval", "threshold", "outcome"]
    assert rows["speedup to 97%"][1:5] == ["2x", "[1.4x, 2.9x]", "> 1.2x", "reproduced"]
    fa = rows["final accuracy difference"]
    assert fa[1:5] == ["-0.4 pts", "[-1.1, 0.9] pts", "< 0.5 pts", "inconclusive"]
    n = v.conditions[1].seeds_to_settle
    assert isinstance(n, int) and fa[5] == f"~{n} seeds would likely settle it"
    sp = rows["speedup to 98%"]
    assert sp[1:5] == ["–", "[1.1x, ∞)", "> 1.2x", "inconclusive"]
    assert rows["gap"][1:6] == ["-1 pts", "[-2, -0.1] pts", "< 0 pts", "reproduced", ""]


def test_conditions_are_coloured_like_the_verdict_line():
    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=True, color_system="standard")
    report.render_verdict(_stats_verdict(), console)
    out = buf.getvalue()
    assert "\x1b[1;33minconclusive" in out  # the verdict line
    assert "\x1b[1;32mreproduced" in out and "━" in out  # a condition, rich box on a terminal


@pytest.mark.parametrize(
    ("verdict", "word"),
    [
        ({"claim": "c", "reproduced": True, "evidence": "e", "outcome": "REPRODUCED"}, "REPRODUCED"),
        ({"claim": "c", "reproduced": False, "outcome": "not reproduced", "conditions": []},
         "NOT REPRODUCED"),
        ({"claim": "c", "reproduced": None, "outcome": "inconclusive"}, "inconclusive"),
        ({"claim": "c", "outcome": "reproduced"}, "REPRODUCED"),
        ({"claim": "c", "outcome": "odd"}, "odd"),
        (stats.Verdict("c", (), "e"), "inconclusive"),
    ],
)  # fmt: skip
def test_old_and_new_verdicts_without_conditions(verdict, word):
    console, buf = _plain_console()
    report.render_verdict(verdict, console)
    out = buf.getvalue()
    assert out.splitlines()[0] == f"Claim: c  ->  {word}"
    assert "|" not in out  # no conditions table


def test_render_runs():
    console, buf = _plain_console()
    runs = [RunInfo("20250101-000000-compare-0123abcd", Path("x"), "compare", "smoke",
                    datetime(2025, 1, 1), "complete", "REPRODUCED", 6)]  # fmt: skip
    report.render_runs(runs, console)
    out = buf.getvalue()
    assert "20250101-000000-compare-0123abcd" in out and "2025-01-01 00:00" in out
    assert "REPRODUCED" in out and "complete" in out


def _feed(progress):
    for g in range(2):
        progress(ProgressEvent(g, 2, 0, 1000, 6, "compiling"))
        for s in range(100, 1001, 100):
            progress(ProgressEvent(g, 2, s, 1000, 6, "training"))
        progress(ProgressEvent(g, 2, 1000, 1000, 6, "done"))


def test_progress_plain_lines():
    console, buf = _plain_console()
    with report.sweep_progress(console) as p:
        assert p.plain
        _feed(p)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "group 1/2 (6 members): compiling"
    assert "group 1/2 (6 members): step 300/1000 (30%)" in lines
    assert any(ln.startswith("group 2/2 (6 members): done, 1000 steps in") for ln in lines)
    assert len(lines) == 10  # compiling, 3 quarter lines, done; per group
    console, buf = _plain_console()
    report.sweep_progress(console)(ProgressEvent(0, 1, 0, 10, 1, "compiling"))
    assert buf.getvalue() == "group 1/1 (1 member): compiling\n"


def test_progress_rich_bars():
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=True)
    with report.sweep_progress(console, plain=False) as p:
        p(ProgressEvent(0, 2, 0, 1000, 6, "compiling"))
        task = p._progress.tasks[0]
        assert task.fields["phase"].plain == "compiling…"
        assert not task.started  # compile time stays out of the ETA
        _feed(p)
        assert [t.completed for t in p._progress.tasks] == [1000, 1000]
    out = buf.getvalue()
    assert "group 2/2 (6 members)" in out and "1000/1000" in out and "done" in out


def test_default_progress_console_is_stderr():
    assert report.sweep_progress().console.stderr


def test_censored_steps_and_speedup_cells():
    """Typed cells of the steps-to-target tables: (low, high] intervals and censored speedups,
    'unresolved at this evaluation spacing' rather than 1.0x."""
    cell = lambda v: report.format_cell(v, "auto", "x").plain  # noqa: E731
    assert cell({"low": 150.0, "high": 200.0}) == "(150, 200]"
    assert cell({"low": 0.0, "high": 0.0}) == "0"
    assert cell({"low": 3000.0, "high": None}) == "never"
    sp = stats.censored_speedup(stats.CensoredSteps(150, 200), stats.CensoredSteps(150, 200))
    assert cell(sp.to_dict()) == "unresolved at this evaluation spacing (0.7-1.4x)"
    sp = stats.censored_speedup(stats.CensoredSteps(300, 400), stats.CensoredSteps(75, 100))
    assert cell(sp.to_dict()) == "4.0x"
    sp = stats.censored_speedup(stats.CensoredSteps(3000, None), stats.CensoredSteps(75, 100))
    assert cell(sp.to_dict()) == ">30x"


def test_integers_print_exactly():
    assert report.format_cell(19990, "auto", "steps").plain == "19990"
    assert report.format_cell(19990.0, "auto", "x").plain == "1.999e+04"  # a float keeps 4 digits
    assert report.format_cell(True, "auto", "x").plain == "yes"
