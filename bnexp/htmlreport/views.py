"""The report's model and the text both formats share: what each run directory says (``load``:
a ``RunView``), cells, claim and tally lines, condition tables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnexp import results
from bnexp.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

CSS_CLASS = {REPRODUCED: "ok", NOT_REPRODUCED: "bad", INCONCLUSIVE: "unsure"}
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


def run_tables(v: RunView) -> list[tuple[str, list[str], list[list[str]]]]:
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


def shown_plots(v: RunView, forest: Plot | None) -> list[tuple[str, bytes]]:
    """The run's plots, less its verdict.png where the section draws its own forest plot."""
    return [(n, d) for n, d in v.plots if forest is None or n != RUN_FOREST]


FOREST_NOTE = (
    "One row per condition of a claim: the marker is the measured effect, the bar its 95% "
    "interval (an arrow: unbounded on that side), the grey band the effects too small to matter. "
    "Every row has its own axis, in its own unit, centred on its threshold (the vertical line) "
    "and turned so that the claimed side is on the right: a bar wholly right of the line is "
    "reproduced, wholly left of it (or inside the grey band) not reproduced."
)
