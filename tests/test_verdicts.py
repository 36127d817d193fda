"""bnexp.verdicts: every verdict shape read the same way, numbers in each condition's unit."""

from __future__ import annotations

import math

import pytest

from bnexp import stats
from bnexp import verdicts as V


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("REPRODUCED", "reproduced"),
        ("NOT REPRODUCED", "not reproduced"),
        ("not_reproduced", "not reproduced"),
        ("inconclusive", "inconclusive"),
        (True, "reproduced"),
        (False, "not reproduced"),
        (None, "inconclusive"),
        ("odd", None),
        (3, None),
    ],
)
def test_outcome_of(value, canonical):
    assert V.outcome_of(value) == canonical


def test_every_verdict_shape_as_a_dict():
    cond = stats.Condition("x", 0.5, (0.1, 0.9), 0.0, n=3)
    new = stats.Verdict("c", (cond,), "e")
    for v in (new, new.to_json()):
        d = V.as_dict(v)
        assert d["outcome"] == "reproduced" and d["conditions"] == [cond.to_json()]
    old = V.as_dict({"claim": "c", "reproduced": False, "outcome": "NOT REPRODUCED"})
    assert old["outcome"] == "not reproduced" and old["conditions"] == []
    assert V.verdict_outcome({"claim": "c"}) is None
    assert V.conditions({"conditions": "oops"}) == []


def _c(**kw):
    return {"threshold": 0.0, "direction": 1, "ci95": [None, None], "effect": None, **kw}


@pytest.mark.parametrize(
    ("cond", "effect", "interval", "threshold"),
    [
        (_c(log=True, effect=math.log(1.8), ci95=[math.log(1.25), math.log(3)],
            threshold=math.log(1.2)), "1.8x", "[1.25x, 3x]", "> 1.2x"),
        (_c(log=True, effect=math.log(1.8), ci95=[None, math.log(3)], threshold=math.log(1.2)),
         "1.8x", "(0x, 3x]", "> 1.2x"),
        (_c(unit="accuracy difference", effect=0.0123, ci95=[-0.001, 0.02], threshold=0.005,
            direction=-1), "1.23 pts", "[-0.1, 2] pts", "< 0.5 pts"),
        (_c(unit="accuracy difference", effect=0.01, ci95=[0.001, None]), "1 pts", "[0.1, ∞) pts",
         "> 0 pts"),
        (_c(unit="loss", effect=0.12345, ci95=[-math.inf, 0.2], threshold=0.3), "0.123 loss",
         "(-∞, 0.2] loss", "> 0.3 loss"),
        (_c(effect=2.0), "2", "–", "> 0"),
        # an accuracy level is a percentage; a relative error is not an accuracy
        (_c(unit="accuracy", effect=0.9262, ci95=[0.915, 0.9373], threshold=0.9), "92.62%",
         "[91.5, 93.73]%", "> 90%"),
        (_c(unit="relative error", effect=2e-7, ci95=[2e-7, 2e-7], threshold=1e-4, direction=-1),
         "2e-07 relative error", "[2e-07, 2e-07] relative error", "< 0.0001 relative error"),
        (_c(unit="accuracy difference", effect=0.002, ci95=[-0.004, 0.008], threshold=0.01,
            direction=0), "0.2 pts", "[-0.4, 0.8] pts", "|x| < 1 pts"),
    ],
)  # fmt: skip
def test_numbers_in_the_condition_unit(cond, effect, interval, threshold):
    assert V.effect_text(cond) == effect
    assert V.interval_text(cond) == interval
    assert V.threshold_text(cond) == threshold


def test_settle_text():
    assert V.settle_text({"outcome": "inconclusive", "seeds_to_settle": 12}) == (
        "~12 seeds would likely settle it"
    )
    assert V.settle_text({"outcome": "inconclusive", "seeds_to_settle": None}).startswith("no")
    assert V.settle_text({"outcome": "reproduced", "seeds_to_settle": 3}) == ""
