"""Run directories as one tidy table (`bnexp export`): one row per (trial, evaluation point).

Columns: ``run`` (the directory's name), ``experiment``, ``preset``, ``trial_id``, every field of
the trial's config (the model's as ``model.<field>``; tuples as JSON text, e.g. ``[784, 100,
10]``), ``diverged_at``, ``final_test_accuracy``, ``eval_index`` and every history array at that
point (``step``, ``train_loss``, ``test_acc``, ``test_loss``, ``test_acc_batch``, probes; a probe
with several values per point as ``name[0]``, ``name[1]``, ...). Rows of several runs share one
header (the union of their columns, empty where a run has no such column), ordered by run, then
tag, seed and trial id, then evaluation point. Non-finite numbers (a diverged member's history)
are empty cells in CSV, null in JSON lines and parquet. Parquet needs pyarrow (the optional
extra ``parquet``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from bnexp import results

FORMATS = ("csv", "jsonl", "parquet")


class ExportError(ValueError):
    """A bad export request (format, output) or a run that cannot be read: one line."""


def _cell(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list | tuple):
        return json.dumps(results.to_jsonable(v))
    return v


def _config_columns(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_config_columns(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = _cell(v)
    return out


def _trial_rows(run: results.Run, rec: results.TrialRecord) -> Iterable[dict[str, Any]]:
    head = {
        "run": run.name,
        "experiment": run.experiment,
        "preset": run.preset,
        "trial_id": rec.trial_id,
        **_config_columns(rec.trial_dict),
        "diverged_at": rec.diverged_at,
        "final_test_accuracy": _cell(rec.final_test_accuracy),
    }
    hist = {k: np.asarray(v) for k, v in rec.history.items()}
    n = len(hist["step"])
    for i in range(n):
        row = dict(head, eval_index=i)
        for k, a in hist.items():
            if a.ndim == 0 or a.shape[0] != n:
                continue  # not a per-point series
            if a.ndim == 1:
                row[k] = _cell(a[i])
            else:
                row.update({f"{k}[{j}]": _cell(x) for j, x in enumerate(a[i].ravel())})
        yield row


def table(run_dirs: Iterable[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of every saved trial of every run, in the order the module doc gives."""
    rows: list[dict[str, Any]] = []
    for path in run_dirs:
        try:
            run = results.load_run(Path(path))
        except (FileNotFoundError, OSError, ValueError) as e:
            raise ExportError(str(e)) from None
        for rec in sorted(run.trials, key=lambda r: (r.tag, r.seed or 0, r.trial_id)):
            rows.extend(_trial_rows(run, rec))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return columns, rows


def write(run_dirs: Iterable[Path], fmt: str, out: Path | None, *, stdout: IO[str]) -> int:
    """Write the table as fmt to out (stdout when None; not for parquet); returns the rows."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise ExportError(
                "--format parquet needs pyarrow, which is not importable here "
                "(pip install 'bnexp[parquet]'); --format csv or jsonl need nothing"
            )
        if out is None:
            raise ExportError("--format parquet writes a binary file: give --out FILE")
    columns, rows = table(run_dirs)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]), out)
        return len(rows)
    f = stdout if out is None else open(out, "w", newline="")  # noqa: SIM115
    try:
        if fmt == "csv":
            w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            w.writeheader()
            w.writerows({k: _csv(v) for k, v in r.items()} for r in rows)
        else:
            for r in rows:
                f.write(json.dumps({c: r.get(c) for c in columns}, allow_nan=False) + "\n")
    finally:
        if out is not None:
            f.close()
    return len(rows)


def _csv(v: Any) -> Any:
    """repr of a float (round-trips exactly), empty for None."""
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else v
