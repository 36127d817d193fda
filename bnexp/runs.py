"""Listing run directories: `bnexp runs`, `bnexp show latest`, reproduce's reuse of finished runs.

Reads what bnexp.results writes (names, status.json, summary.json) and tolerates partial and
broken directories: a run that cannot be read is listed as "unknown", never an error. A "running"
status whose process is gone (same host, dead pid) is reported as "interrupted" (and shown as
"stale (process gone)": killed before it could mark itself; `--resume` continues it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bnexp.compat import check_run_dir
from bnexp.results import _effective_status, _name_parts, process_gone, read_json


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    experiment: str | None
    preset: str | None
    date: datetime | None
    status: str  # one of STATUSES, or "unknown" when status.json is missing/unreadable
    verdict: str | None  # e.g. "REPRODUCED" or "2 REPRODUCED, 1 inconclusive"
    trials: int
    stale: bool = False  # status.json says running, but its process is gone (killed)

    @property
    def shown_status(self) -> str:
        """The status as `bnexp runs` shows it: a killed run is "stale (process gone)"."""
        return "stale (process gone)" if self.stale else self.status


def verdict_text(verdict: Any) -> str | None:
    """One short string for a stored verdict (a dict, a list of dicts, or a string)."""
    if verdict is None:
        return None
    if isinstance(verdict, str):
        return verdict
    if isinstance(verdict, Mapping):
        if verdict.get("outcome") is not None:
            return str(verdict["outcome"])
        if "reproduced" in verdict:  # experiments.base.Verdict: reproduced True/False/None
            labels = {True: "REPRODUCED", False: "NOT REPRODUCED", None: "inconclusive"}
            return labels.get(verdict["reproduced"])
        return None
    outcomes = [o for o in (verdict_text(v) for v in verdict) if o]
    if not outcomes:
        return None
    counts = {o: outcomes.count(o) for o in outcomes}
    return outcomes[0] if len(counts) == 1 else ", ".join(f"{n} {o}" for o, n in counts.items())


def _run_info(path: Path) -> RunInfo | None:
    date, experiment = _name_parts(path.name)
    files = [path / n for n in ("config.json", "status.json", "environment.json")]
    if date is None and not any(f.exists() for f in files):
        return None  # not a run directory
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = read_json(path / "status.json")
        info = loaded if isinstance(loaded, dict) else {}
    with contextlib.suppress(TypeError, ValueError):
        date = datetime.fromisoformat(info["created"]) if "created" in info else date
    preset = info.get("preset")
    if preset is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            preset = read_json(path / "config.json").get("preset")
    verdict = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        verdict = verdict_text(read_json(path / "summary.json").get("verdict"))
    trials = len(list((path / "trials").glob("*.json")))
    return RunInfo(
        path.name,
        path,
        info.get("experiment") or experiment,
        preset,
        date,
        _effective_status(info),
        verdict,
        trials,
        process_gone(info),
    )


def list_runs(out: Path) -> list[RunInfo]:
    """Runs under `out`, newest first; broken or partial directories are listed, not fatal."""
    out = Path(out)
    if not out.is_dir():
        return []
    infos = [i for p in out.iterdir() if p.is_dir() and (i := _run_info(p)) is not None]

    def key(i: RunInfo) -> tuple[float, str]:
        return (i.date.timestamp() if i.date else float("-inf"), i.name)

    return sorted(infos, key=key, reverse=True)


def resolve_run(out: Path, ref: str) -> Path:
    """A run directory from a path, "latest", an exact name, or a unique name prefix/substring."""
    p = Path(ref)
    if p.is_dir():
        check_run_dir(p)  # a damaged run is named as such, not "no run"
        if (p / "config.json").exists():
            return p
    runs = list_runs(out)
    if ref == "latest":
        if not runs:
            raise FileNotFoundError(f"no runs in {out}")
        return runs[0].path
    for match in (lambda n: n == ref, lambda n: n.startswith(ref), lambda n: ref in n):
        hits = [r.path for r in runs if match(r.name)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = ", ".join(h.name for h in hits[:5])
            raise ValueError(f"{ref!r} matches {len(hits)} runs: {names}")
    raise FileNotFoundError(f"no run {ref!r} in {out}")
