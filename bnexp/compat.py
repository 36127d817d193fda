"""Can a saved run be resumed? Its files (a missing or garbled config.json, the temporary files
a killed writer left) and the code that made it (a change since).

Resuming across a code change: does a saved run still mean what this bnexp would compute?
A run is resumed when every trial it saved is one this code's grid still makes (same config,
read with today's defaults for fields added since: bnexp.results.TRIAL_ID_SCHEMA), and refused
with one line saying why otherwise: its trial ids come from a newer schema, a saved trial has a
field this code does not know (removed or renamed), or a saved trial differs from the grid's
(a default or the grid changed). Training the missing trials into such a run would mix two
experiments in one summary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnexp import results
from bnexp.errors import RuntimeFailure, UsageError


class DamagedRun(RuntimeFailure):
    """A run directory whose config.json (or summary.json) is missing or unreadable."""


def check_run_dir(run_dir: Path) -> None:
    """Raise DamagedRun naming the file when run_dir looks like a run (a status.json, trials) but
    its config.json is missing or not valid JSON: nothing can resume or re-analyse it then, and a
    plain "not a run directory" would hide what happened. A directory that is no run at all is
    left to the caller (FileNotFoundError from load_run)."""
    run_dir = Path(run_dir)
    cfg = run_dir / "config.json"
    looks_like_run = any((run_dir / n).exists() for n in ("status.json", "trials"))
    experiment = results._name_parts(run_dir.name)[1] or "NAME"
    redo = f"start the experiment again with `bnexp run {experiment}` (saved trials are kept)"
    if not cfg.exists():
        if looks_like_run:
            raise DamagedRun(f"{cfg} is missing, so this run cannot be resumed or shown; {redo}")
        return
    try:
        if not isinstance(results.read_json(cfg), dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise DamagedRun(
            f"{cfg} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}), so this run "
            f"cannot be resumed or shown; {redo}"
        ) from None


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed writer left (``.<name>.*.tmp``, see bnexp.atomic):
    never a saved file, only bytes that were not yet moved into place. Call it holding run_lock
    (no other writer then). Returns what was removed."""
    run_dir = Path(run_dir)
    gone = []
    for d in (run_dir, run_dir / "trials", run_dir / "plots"):
        for p in d.glob(".*.tmp") if d.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                gone.append(p)
    return gone


class IncompatibleRun(UsageError):
    """A saved run whose trials no longer mean what this code computes (exit 2)."""


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out or {prefix: d}


def _difference(saved: dict[str, Any], made: dict[str, Any]) -> str:
    a, b = _flat(saved), _flat(made)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    k = keys[0] if keys else "?"
    return f"{k.rstrip('.')} was {a.get(k)!r}, this bnexp makes {b.get(k)!r}"


def check_resumable(run: results.Run, trials: Sequence[Any]) -> None:
    """Raise IncompatibleRun (one line) unless every saved trial of `run` is one of `trials`."""
    schema = run.status_info.get("trial_id_schema", 1)
    redo = "start a new run (bnexp run NAME) or resume it with the bnexp that made it"
    if isinstance(schema, int) and schema > results.TRIAL_ID_SCHEMA:
        raise IncompatibleRun(
            f"{run.path} was made by a newer bnexp (trial id schema {schema}, this one knows "
            f"up to {results.TRIAL_ID_SCHEMA}); {redo}"
        )
    wanted = {results.trial_id(t): t for t in trials}
    for rec in run.trials:
        if rec.trial is None:
            try:
                results.trial_from_dict(rec.trial_dict)
            except Exception as e:  # noqa: BLE001 - the reason is the message
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
            else:
                why = "it cannot be rebuilt"
            raise IncompatibleRun(
                f"{run.path}: saved trial {rec.trial_id} ({rec.tag}) no longer means the same "
                f"({why}); {redo}"
            )
        if rec.legacy:
            why = "; ".join(results.CHANGED_MEANING[k] for k in rec.legacy)
            raise IncompatibleRun(
                f"{run.path}: saved trial {rec.trial_id} ({rec.tag}) does not mean the same "
                f"({why}); {redo}"
            )
        if results.trial_id(rec.trial) in wanted:
            continue
        same = [t for t in trials if t.tag == rec.tag and t.seed == rec.seed] or list(trials)
        diff = _difference(
            results.trial_to_dict(rec.trial), results.trial_to_dict(same[0]) if same else {}
        )
        raise IncompatibleRun(
            f"{run.path}: saved trial {rec.trial_id} ({rec.tag}, seed {rec.seed}) is not one "
            f"this bnexp's grid makes ({diff}); {redo}"
        )
