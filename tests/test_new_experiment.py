"""A new experiment is one file and one registry line: nothing else in the CLI, the runner, the
reproduce report or the test suite names experiments. Shown with a throwaway experiment defined
here and put into the registry for the duration of the test."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import experiments
from experiments import common
from experiments import conditions as cond
from experiments.base import Analysis, Config, Experiment, Verdict, make_trial, mlp

DATA = "synthetic"


@dataclass(frozen=True)
class ToyConfig(Config):
    pass


def _trials(cfg: ToyConfig):
    return [
        make_trial(cfg, mlp(cfg, norm, activation="relu"), seed=s, tag=tag)
        for tag, norm in common.ARMS
        for s in range(cfg.seeds)
    ]


def _analyze(cfg: ToyConfig, results):
    arms = common.arms(results)
    c = cond.accuracy_difference(
        "final accuracy, bn - baseline", arms["bn"], arms["baseline"], 0.0, reason="a toy"
    )
    return Analysis([common.final_table(arms)], Verdict("a toy claim", (c,), "toy evidence"))


TOY = Experiment(
    name="toy-claim",
    claim="a toy claim",
    source="this test",
    config_type=ToyConfig,
    presets={
        p: ToyConfig(preset=p, dataset=DATA, seeds=3, steps=20, eval_every=10, hidden=(16,))
        for p in ("smoke", "quick", "paper")
    },
    trials=_trials,
    analyze=_analyze,
    shows="a toy table",
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(experiments.REGISTRY, TOY.name, TOY)
    return TOY


def _cli(*args: str):
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, list(args))


def test_a_registered_experiment_appears_everywhere(toy, tmp_path):
    r = _cli("list")
    assert r.exit_code == 0 and "toy-claim" in r.output and "a toy claim" in r.output
    r = _cli("describe", "toy-claim")
    assert r.exit_code == 0 and "a toy table" in r.output
    r = _cli("run", "toy-claim", "--preset", "smoke", "--out", str(tmp_path / "runs"), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{") :])
    assert doc["experiment"] == "toy-claim" and len(doc["trials"]) == 6
    assert [c["name"] for c in doc["verdict"]["conditions"]] == ["final accuracy, bn - baseline"]
    r = _cli("reproduce", "--preset", "smoke", "--only", "toy-claim", "--out", str(tmp_path / "rp"))
    assert r.exit_code == 0, r.output
    index = json.loads((tmp_path / "rp" / "reproduce.json").read_text())
    assert [e["name"] for e in index["experiments"]] == ["toy-claim"]
    assert "toy-claim" in (tmp_path / "rp" / "report.md").read_text()


def test_the_smoke_test_takes_its_list_from_the_registry():
    import test_cli

    mark = next(
        m
        for m in test_cli.test_every_experiment_smoke_through_cli.pytestmark
        if m.name == "parametrize"
    )
    assert list(mark.args[1]) == sorted(experiments.REGISTRY)
