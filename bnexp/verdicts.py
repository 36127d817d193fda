"""Reading and wording verdicts and their conditions, shared by the terminal, the plots and the report.

A verdict arrives in one of several shapes: a ``stats.Verdict`` (or its ``to_json()`` dict, which
``summary.json`` and ``--json`` hold), or an old run's dict (claim, reproduced, evidence, outcome in the old upper-case words
"REPRODUCED" / "NOT REPRODUCED" / "inconclusive", no conditions). Everything here accepts all of
them: ``as_dict`` gives one dict, ``conditions`` its list of condition dicts (empty for the old
shapes), ``outcome`` the canonical lower-case outcome of ``bnexp.stats``.

Numbers are shown in a condition's own unit, by one rule:

- ``log`` true: the effect, its interval and the threshold are natural logs of a ratio, shown as
  the ratio ``exp(x)`` with an "x" suffix ("1.8x");
- a unit naming an accuracy or an error ("accuracy difference", "error difference", ...): a
  fraction, shown as percentage points, ``100 x`` with " pts" ("1.25 pts");
- any other unit: the number as is (3 significant digits), the unit after it.

In the JSON an infinite interval end is written as null (``stats._json_num``), so a null end whose
other end is known is read as unbounded on that side; both ends null means no interval (fewer
than 2 seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bnexp.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

OUTCOMES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
INF = "∞"


def outcome_of(value: Any) -> str | None:
    """The canonical outcome of an outcome word (any case) or of ``reproduced`` True/False/None.

    None for anything else (an unknown word), so callers can show it as given.
    """
    if value is True:
        return REPRODUCED
    if value is False:
        return NOT_REPRODUCED
    if value is None:
        return INCONCLUSIVE
    if isinstance(value, str):
        word = " ".join(value.lower().replace("_", " ").split())
        if word in OUTCOMES:
            return word
    return None


def _get(v: Any, key: str, default: Any = None) -> Any:
    if isinstance(v, Mapping):
        return v.get(key, default)
    return getattr(v, key, default)


def conditions(v: Any) -> list[dict[str, Any]]:
    """The verdict's conditions as JSON dicts (``Condition.to_json()``); [] when it has none."""
    items = _get(v, "conditions")
    if not items or isinstance(items, str | bytes) or not isinstance(items, Sequence):
        return []
    out = []
    for c in items:
        if isinstance(c, Mapping):
            out.append(dict(c))
        elif hasattr(c, "to_json"):
            out.append(dict(c.to_json()))
    return out


def verdict_outcome(v: Any) -> str | None:
    """The canonical outcome of a verdict: its ``outcome`` word, else its ``reproduced`` flag.

    None when the word is not one of OUTCOMES, or when the verdict has neither."""
    raw = _get(v, "outcome")
    if isinstance(raw, str):  # an unknown word: None, so that it is shown as given
        return outcome_of(raw)
    rep = _get(v, "reproduced", "missing")
    return None if rep == "missing" else outcome_of(rep)


def as_dict(v: Any) -> dict[str, Any]:
    """One dict with claim, reproduced, evidence, outcome (canonical when known) and conditions."""
    if not isinstance(v, Mapping) and hasattr(v, "to_json"):
        v = v.to_json()
    outcome = verdict_outcome(v)
    raw = _get(v, "outcome")
    return {
        "claim": str(_get(v, "claim", "") or ""),
        "reproduced": _get(v, "reproduced", None),
        "evidence": str(_get(v, "evidence", "") or ""),
        "outcome": outcome if outcome is not None else ("?" if raw is None else str(raw)),
        "conditions": conditions(v),
    }


def verdict_list(v: Any) -> list[Any]:
    """A verdict or a list of verdicts (an experiment may judge several claims) as a list."""
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


# ---- numbers -------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def is_points(c: Mapping[str, Any]) -> bool:
    """A difference of fractions shown as percentage points (unit "accuracy difference", "error
    difference")."""
    unit = str(c.get("unit") or "").lower()
    return not c.get("log") and unit in ("accuracy difference", "error difference")


def is_percent(c: Mapping[str, Any]) -> bool:
    """A fraction shown as a percentage (unit "accuracy" or "error": a level, not a difference)."""
    return not c.get("log") and str(c.get("unit") or "").lower() in ("accuracy", "error")


def display(c: Mapping[str, Any], x: float) -> float:
    """A value of the condition (effect, interval end, threshold) in the unit it is shown in."""
    if c.get("log"):
        return math.exp(x) if x < 700 else math.inf
    return 100.0 * x if is_points(c) or is_percent(c) else x


def suffix(c: Mapping[str, Any]) -> str:
    if c.get("log"):
        return "x"
    if is_points(c):
        return " pts"
    if is_percent(c):
        return "%"
    unit = str(c.get("unit") or "")
    return f" {unit}" if unit else ""


def number(c: Mapping[str, Any], x: float | None, *, unit: bool = True) -> str:
    """One value in the condition's unit: "1.8x", "1.25 pts", "0.031 loss"; "–" for None."""
    if x is None:
        return "–"
    d = display(c, x)
    if math.isinf(d):
        text = INF if d > 0 else "-" + INF
    elif c.get("log"):
        text = f"{d:.3g}"
    elif is_points(c) or is_percent(c):
        text = f"{round(d, 2) + 0.0:g}"
    else:
        text = f"{d:.3g}"
    return text + (suffix(c) if unit else "")


def ends(c: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The interval ends with unbounded sides as -inf / +inf; (None, None) for no interval.

    A null end is unbounded when the other end is known (to_json writes +-inf as null).
    """
    ci = c.get("ci95") or (None, None)
    lo, hi = (_num(ci[0]), _num(ci[1])) if len(ci) == 2 else (None, None)
    if lo is None and hi is None:
        return None, None
    return (-math.inf if lo is None else lo), (math.inf if hi is None else hi)


def interval_text(c: Mapping[str, Any]) -> str:
    """ "[1.3x, 2.4x]", "[1.3x, ∞)", "(0x, 2.4x]" (a log ratio unbounded below), "[-0.1, 1.2] pts",
    or "–" when there is no interval."""
    lo, hi = ends(c)
    if lo is None or hi is None:
        return "–"
    per_end = bool(c.get("log"))  # "x" on each ratio; a unit once, after the bracket
    if math.isinf(lo):
        left = "(0x" if per_end else f"(-{INF}"
    else:
        left = "[" + number(c, lo, unit=per_end)
    right = f"{INF})" if math.isinf(hi) else number(c, hi, unit=per_end) + "]"
    return f"{left}, {right}" + ("" if per_end else suffix(c))


def threshold_text(c: Mapping[str, Any]) -> str:
    """The claimed side of the threshold: "> 1.2x", "< 0.5 pts"; an equivalence (direction 0):
    "|x| < 1 pts"."""
    t = _num(c.get("threshold"))
    if c.get("direction") == 0:
        return f"|x| < {number(c, t)}"
    sign = "<" if c.get("direction") == -1 else ">"
    return f"{sign} {number(c, t)}"


def effect_text(c: Mapping[str, Any]) -> str:
    return number(c, _num(c.get("effect")))


def settle_text(c: Mapping[str, Any]) -> str:
    """For an inconclusive condition: "~12 seeds would likely settle it" (or "" / a reason)."""
    if outcome_of(c.get("outcome")) != INCONCLUSIVE:
        return ""
    n = c.get("seeds_to_settle")
    if isinstance(n, int) and not isinstance(n, bool):
        return f"~{n} seeds would likely settle it"
    return "no estimate of the seeds needed"
