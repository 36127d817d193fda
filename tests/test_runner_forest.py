"""The runner draws plots/verdict.png, the forest plot of the run's verdict, when it has conditions.

No training: the experiment has no trials, its analysis and plots are stubs, its verdict a
stats.Verdict with or without conditions.
"""

from __future__ import annotations

import math

import pytest

from bnexp import results, stats
from experiments import runner
from experiments.base import Analysis, Config, Experiment


def _experiment(verdict: stats.Verdict) -> Experiment:
    return Experiment(
        name="stub",
        claim="c",
        source="s",
        config_type=Config,
        presets={"smoke": Config(preset="smoke")},
        trials=lambda cfg: [],
        analyze=lambda cfg, rs: Analysis([], verdict),
        plot=lambda cfg, rs, analysis, d: [],
    )


@pytest.mark.parametrize("with_conditions", [True, False])
def test_runner_writes_verdict_png(tmp_path, monkeypatch, with_conditions):
    cond = stats.Condition("speedup", math.log(2), (math.log(1.5), math.log(2.5)), math.log(1.2),
                           n=3, unit="log speedup", log=True)  # fmt: skip
    verdict = stats.Verdict("c", (cond,) if with_conditions else (), "e")
    monkeypatch.setattr(runner, "prepare", lambda exp, cfg: [])
    o = runner.run(_experiment(verdict), Config(preset="smoke"), out=tmp_path)
    png = o.run_dir / "plots" / "verdict.png"
    summary = results.read_json(o.run_dir / "summary.json")
    if with_conditions:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert summary["plots"] == ["verdict.png"]
        assert summary["verdict"]["conditions"][0]["name"] == "speedup"
    else:
        assert not png.exists() and summary["plots"] == []
