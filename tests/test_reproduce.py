"""`bnexp reproduce` and `bnexp report` end to end, through the real command line, on smoke runs.

One module-scoped reproduce of three fast experiments feeds most tests; the report is checked
against the runs' own JSON files, then rendered by a real browser (headless Chromium) when one is
installed (.ci/run installs it; elsewhere that test is skipped and says why).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from _child import cli

from bnexp import htmlreport, results
from experiments import REGISTRY, reproduce
from experiments.base import apply_overrides, config_dict

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["compare", "lr-sweep", "init-sensitivity"]  # the fastest smoke runs, registry order
LABEL = {True: "reproduced", False: "not reproduced", None: "inconclusive"}


def bnexp(*args: str, data_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_COLOR="1", BNEXP_DATA_DIR=str(data_dir))
    return subprocess.run(
        cli(*args),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """(out, JSON document, data dir) of one smoke reproduce of NAMES."""
    base = tmp_path_factory.mktemp("reproduce")
    out, data_dir = base / "out", base / "data"
    p = bnexp(
        "reproduce",
        "--preset",
        "smoke",
        "--only",
        ",".join(NAMES),
        "--out",
        str(out),
        "--json",
        data_dir=data_dir,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return out, json.loads(p.stdout), data_dir  # the whole stdout is one JSON document


def summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def report_images(report_dir: Path, run_dirs) -> list[bytes]:
    """The PNGs report.html embeds, in page order: forest.png of every condition (when any run's
    verdict has conditions), then per run its own forest-<experiment>.png and its plots (its
    verdict.png, the same forest plot, is not shown twice)."""
    report_dir = Path(report_dir)
    images = (
        [(report_dir / "forest.png").read_bytes()] if (report_dir / "forest.png").is_file() else []
    )
    for d in map(Path, run_dirs):
        name = re.sub(r"[^A-Za-z0-9_-]+", "-", summary(d)["experiment"])  # as the anchor
        forest = report_dir / f"forest-{name}.png"
        own = forest.is_file()
        if own:
            images.append(forest.read_bytes())
        images += [
            (d / "plots" / p).read_bytes()
            for p in summary(d)["plots"]
            if not (own and p == htmlreport.RUN_FOREST)
        ]
    return images


def test_json_document_names_every_run_and_verdict(repro):
    out, doc, _ = repro
    order = [n for n in REGISTRY if n in NAMES]
    assert [e["name"] for e in doc["experiments"]] == order
    assert all(e["action"] == "ran" and e["error"] is None for e in doc["experiments"])
    assert doc["run_dirs"] == [e["run_dir"] for e in doc["experiments"]]
    for e in doc["experiments"]:
        run = Path(e["run_dir"])
        assert run.parent == out
        assert json.loads((run / "status.json").read_text())["status"] == "complete"
        config = json.loads((run / "config.json").read_text())
        assert config == results.to_jsonable(
            config_dict(reproduce.resolve(REGISTRY[e["name"]], "smoke"))
        )
        assert doc["verdicts"][e["name"]] == summary(run)["verdict"] == e["verdict"]
        assert e["verdict"]["reproduced"] in (True, False, None)
    assert doc["reports"] == {"md": str(out / "report.md"), "html": str(out / "report.html")}
    index = json.loads((out / "reproduce.json").read_text())
    assert [x["run_dir"] for x in index["experiments"]] == [Path(d).name for d in doc["run_dirs"]]


def test_compile_seconds_per_experiment_in_the_json_and_the_index(repro):
    """Each experiment's compile seconds (runner.run's timing: lowering + compiling its
    programs) in the --json document and reproduce.json; fresh runs with an empty compilation
    cache compile something, and never for longer than they ran."""
    out, doc, _ = repro
    index = json.loads((out / "reproduce.json").read_text())["experiments"]
    for e, x in zip(doc["experiments"], index, strict=True):
        timing = summary(e["run_dir"])["timing"]
        assert e["compile_seconds"] == x["compile_seconds"] == timing["compile_seconds"]
        assert 0 < e["compile_seconds"] <= e["wall_time_seconds"] == timing["wall_time_seconds"]


def test_report_html_parses_embeds_every_plot_and_names_nothing_external(repro):
    out, doc, _ = repro
    html = (out / "report.html").read_text()
    root = ET.fromstring(html)  # strict XML parser: every tag closed, every entity valid
    assert root.findtext(".//title") == htmlreport.DEFAULT_TITLE
    expected = report_images(out, doc["run_dirs"])
    assert len(expected) >= len(NAMES)  # each of these experiments draws at least one plot
    imgs = root.findall(".//img")
    assert len(imgs) == len(expected)
    for img, data in zip(imgs, expected, strict=True):
        src = img.get("src")
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True) == data
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text, re.I)
    assert root.find(".//script") is None and root.find(".//link") is None
    for el in root.iter():
        for attr in ("href", "src"):
            assert el.get(attr) is None or el.get(attr).startswith(("#", "data:image/png"))


def test_claims_table_matches_the_runs_json(repro):
    out, doc, _ = repro
    root = ET.fromstring((out / "report.html").read_text())
    rows = root.findall(".//table[@id='claims-table']/tbody/tr")
    assert [r.get("data-experiment") for r in rows] == [e["name"] for e in doc["experiments"]]
    for row, run_dir in zip(rows, doc["run_dirs"], strict=True):
        s = summary(run_dir)
        config = json.loads((Path(run_dir) / "config.json").read_text())
        cells = {td.get("data-label"): "".join(td.itertext()) for td in row.findall("td")}
        exp = REGISTRY[row.get("data-experiment")]
        assert cells["verdict"] == row.get("data-verdict") == LABEL[s["verdict"]["reproduced"]]
        assert cells["claim"] == s["verdict"]["claim"] == exp.claim
        assert cells["bnexp measured"] == s["verdict"]["evidence"]
        assert cells["source"] == exp.source and cells["paper"] == (exp.paper or "–")
        assert cells["preset"] == "smoke" and cells["seeds"] == str(config["seeds"])
        assert cells["wall time"] == htmlreport.duration(s["timing"]["wall_time_seconds"])
        section = root.find(f".//section[@id='exp-{exp.name}']")
        tables = [t for t in section.findall(".//table") if "conditions" not in t.get("class", "")]
        assert len(tables) == len(s["tables"])
        conds = section.findall(".//table[@class='data conditions']/tbody/tr")
        assert len(conds) == len(s["verdict"]["conditions"])
        first = s["tables"][0]
        head = [th.text for th in tables[0].findall("./thead/tr/th")]
        assert head == first["columns"]
        assert len(tables[0].findall("./tbody/tr")) == len(first["rows"])
        command = "".join(section.find(".//pre/code").itertext())
        assert command == reproduce.rerun_command(exp, config)
    md = (out / "report.md").read_text()
    for e in doc["experiments"]:
        label = LABEL[e["verdict"]["reproduced"]]
        assert re.search(rf"^\| {re.escape(e['name'])} \|.*\| {label} \| smoke \|", md, re.M)


def test_rerender_gives_the_same_report(repro, tmp_path):
    out, _, data_dir = repro
    before = {n: (out / n).read_bytes() for n in ("report.html", "report.md")}
    p = bnexp("report", str(out), data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(out / "report.md"), str(out / "report.html")]
    assert {n: (out / n).read_bytes() for n in before} == before


def test_rerender_with_a_run_gone_is_one_line(repro, tmp_path):
    out, doc, data_dir = repro
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / Path(doc["run_dirs"][1]).name)
    p = bnexp("report", str(copy), data_dir=data_dir)
    assert p.returncode == 1 and "not a run directory" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_second_reproduce_reuses_every_finished_run(repro):
    out, doc, data_dir = repro
    dirs_before = sorted(p.name for p in out.iterdir() if p.is_dir())
    p = bnexp(
        "reproduce",
        "--preset",
        "smoke",
        "--only",
        ",".join(NAMES),
        "--out",
        str(out),
        "--json",
        data_dir=data_dir,
    )
    assert p.returncode == 0, p.stderr
    again = json.loads(p.stdout)
    assert [e["action"] for e in again["experiments"]] == ["reused"] * len(NAMES)
    assert again["run_dirs"] == doc["run_dirs"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == dirs_before
    assert "reusing" in p.stderr


def test_only_a_run_of_the_same_resolved_config_is_reused(repro, tmp_path):
    out, doc, _ = repro
    exp = REGISTRY["compare"]
    compare_dir = Path(doc["run_dirs"][0])
    assert reproduce.find_run(out, exp, reproduce.resolve(exp, "smoke")) == ("reuse", compare_dir)
    assert reproduce.find_run(out, exp, reproduce.resolve(exp, "smoke", seeds=2)) is None
    assert reproduce.find_run(out, exp, reproduce.resolve(exp, "quick")) is None
    other = REGISTRY["init-sensitivity"]
    assert reproduce.find_run(out, other, reproduce.resolve(other, "smoke"))[0] == "reuse"
    # an interrupted copy is resumed; a complete one (the original) still wins
    copy = tmp_path / "out"
    shutil.copytree(compare_dir, copy / compare_dir.name)
    status = json.loads((copy / compare_dir.name / "status.json").read_text())
    (copy / compare_dir.name / "status.json").write_text(
        json.dumps(dict(status, status="interrupted"))
    )
    assert reproduce.find_run(copy, exp, reproduce.resolve(exp, "smoke")) == (
        "resume",
        copy / compare_dir.name,
    )
    shutil.copytree(compare_dir, copy / (compare_dir.name + "-2"))
    assert reproduce.find_run(copy, exp, reproduce.resolve(exp, "smoke")) == (
        "reuse",
        copy / (compare_dir.name + "-2"),
    )


def test_report_for_one_run(repro, tmp_path):
    out, doc, data_dir = repro
    run = tmp_path / "run"
    shutil.copytree(doc["run_dirs"][0], run)
    p = bnexp("report", str(run), data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(run / "report.md")] and not (run / "report.html").exists()
    p = bnexp("report", str(run), "--html", data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(run / "report.md"), str(run / "report.html")]
    root = ET.fromstring((run / "report.html").read_text())
    [row] = root.findall(".//table[@id='claims-table']/tbody/tr")
    assert row.get("data-verdict") == LABEL[summary(run)["verdict"]["reproduced"]]
    assert len(root.findall(".//img")) == len(report_images(run, [run]))
    assert "compare (smoke preset)" in root.findtext(".//h1")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--only", "compar"], "did you mean 'compare'"),
        (["--only", "compare,nope-at-all"], "unknown experiment 'nope-at-all'"),
        (["--preset", "quik"], "did you mean 'quick'"),
        (["--seeds", "0"], "seeds must be positive"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    p = bnexp("reproduce", "--out", str(tmp_path / "out"), *args, data_dir=tmp_path / "data")
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not list((tmp_path / "out").glob("*/config.json"))  # nothing trained


def test_report_of_a_missing_run_is_a_usage_error(tmp_path):
    p = bnexp("report", str(tmp_path / "nothing"), "--out", str(tmp_path), data_dir=tmp_path)
    assert p.returncode == 2 and "no run" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_interrupted_reproduce_picks_up_where_it_stopped(repro, tmp_path):
    out, data_dir = tmp_path / "out", repro[2]
    finished = Path(repro[1]["run_dirs"][0])  # compare, done: reused, only lr-sweep trains
    shutil.copytree(finished, out / finished.name)
    args = ["reproduce", "--preset", "smoke", "--only", "compare,lr-sweep", "--out", str(out)]
    env = dict(os.environ, NO_COLOR="1", BNEXP_DATA_DIR=str(data_dir))
    proc = subprocess.Popen(
        cli(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list(out.glob("*-lr-sweep-*/status.json")):  # lr-sweep has begun
            break
        time.sleep(0.02)
    assert proc.poll() is None, "reproduce finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert str(out) in last and "bnexp reproduce --preset smoke --only compare,lr-sweep" in last
    assert not (out / "report.html").exists()
    [compare_dir] = out.glob("*-compare-*")
    [sweep_dir] = out.glob("*-lr-sweep-*")
    p = bnexp(*args, "--json", data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [(e["name"], e["action"]) for e in doc["experiments"]] == [
        ("compare", "reused"),
        ("lr-sweep", "resumed"),
    ]
    assert doc["run_dirs"] == [str(compare_dir), str(sweep_dir)]
    assert json.loads((sweep_dir / "status.json").read_text())["status"] == "complete"
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_rerun_command_rebuilds_the_config(name):
    exp = REGISTRY[name]
    cfg = exp.preset("smoke")
    fields = config_dict(cfg)
    changes = {"seeds": fields["seeds"] + 2, "lr": 0.125, "hidden": (32, 16)}
    cfg = apply_overrides(
        cfg, [f"{k}={htmlreport.value_text(v)}" for k, v in changes.items() if k in fields]
    )
    config = json.loads(json.dumps(results.to_jsonable(config_dict(cfg))))
    words = shlex.split(reproduce.rerun_command(exp, config))
    assert words[:5] == ["bnexp", "run", name, "--preset", "smoke"]
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert {s.split("=")[0] for s in sets} == {k for k in changes if k in fields}
    assert apply_overrides(exp.preset("smoke"), sets) == cfg
    assert (
        reproduce.rerun_command(
            exp, json.loads(json.dumps(results.to_jsonable(config_dict(exp.preset("smoke")))))
        )
        == f"bnexp run {name} --preset smoke"
    )


# ---- a real browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is absent (Debian package `chromium`; "
    ".ci/run installs it), so the real-browser test of report.html was skipped",
)
@pytest.mark.slow
def test_chromium_renders_the_report(repro, tmp_path):
    import matplotlib.image

    out, doc, _ = repro
    url = (out / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    common = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2000",
    ]
    p = subprocess.run(
        [*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    assert _png_size(shot.read_bytes()) == (1280, 2000)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape == (2000, 1280, 3)
    background = pixels[0, 0]
    inked = np.mean(np.any(np.abs(pixels - background) > 0.1, axis=-1))
    assert inked > 0.02, f"only {inked:.2%} of the page differs from the background colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, badges and plots
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f"<title>{htmlreport.DEFAULT_TITLE}</title>" in dom.stdout
    assert f"<h1>{htmlreport.DEFAULT_TITLE}</h1>" in dom.stdout
    assert dom.stdout.count("<img ") == len(report_images(out, doc["run_dirs"]))
