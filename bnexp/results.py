"""Run directories: every number a run computes is written to disk, atomically, as soon as it exists.

Layout of one run (``<out>/<YYYYmmdd>-<HHMMSS>-<experiment>-<config hash>``, a "-2" suffix when that
name is taken)::

    config.json        the resolved experiment config, exactly as given to new_run_dir
    environment.json   bnexp/jax/jaxlib/optax/numpy/python versions, platform, devices,
                       git commit (+ dirty flag) of the bnexp source if it is a checkout, command line
    status.json        {"status": running|interrupted|complete|failed, "experiment", "preset",
                        "config_hash", "created", "updated", "pid", "host", ...}
    trials/<id>.npz    one trial's history arrays (np.savez, no pickle); ndarray values of
                       TrialResult.extra are stored here too, as "extra.<key>"
    trials/<id>.json   the trial record: trial config, seed, tag, diverged_at, final_test_accuracy,
                       seconds, extra. Written after the .npz, so its presence marks the trial done.
    summary.json       {"rows", "verdict", "timing", ...}: the analysis, once it has run

<id> = trial_id(trial), a hash of the full trial config (tag included), so --resume can tell which
trials are already done. Every file is written to a temporary file in the same directory and
moved into place with os.replace: a reader sees the old file or the new one, never half of one.
JSON is strict (NaN and infinities become null; the .npz keeps them).

Over 300 lines: creating, updating, reading back and locking a run directory share the
layout above; listing runs (bnexp.runs) and the JSON/.npz I/O (bnexp.serialize) are apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bnexp.errors import RuntimeFailure

# JSON, .npz and trials as JSON live in bnexp.serialize (re-exported: results.to_jsonable, ...).
from bnexp.serialize import (  # noqa: F401
    CHANGED_MEANING,
    TRIAL_ID_SCHEMA,
    _deep_tuple,
    _field_default,
    canonical_json,
    config_hash,
    dataclass_from_dict,
    dataclass_to_dict,
    non_default_dict,
    read_json,
    read_npz,
    to_jsonable,
    trial_from_dict,
    trial_id,
    trial_to_dict,
    write_json_atomic,
    write_npz_atomic,
)

STATUSES = ("running", "interrupted", "complete", "failed")
_NAME_RE = re.compile(r"^(\d{8})-(\d{6})-(.+)-([0-9a-f]{8})(?:-\d+)?$")
_EXTRA_PREFIX = "extra."


# ---- creating and updating a run -------------------------------------------------------------


def _now() -> datetime:
    return datetime.now().astimezone()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def capture_environment(argv: list[str] | None = None, devices: bool = True) -> dict[str, Any]:
    """Versions, platform, JAX devices, git commit of the bnexp source and the command line."""
    import bnexp

    env: dict[str, Any] = {
        "bnexp": bnexp.__version__,
        **{name: _version(name) for name in ("jax", "jaxlib", "optax", "numpy")},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "command": shlex.join(sys.argv if argv is None else argv),
    }
    if devices:
        try:
            import jax  # lazy: the first call initialises the backend

            env["backend"] = jax.default_backend()
            env["devices"] = str(jax.devices())
        except Exception as e:  # noqa: BLE001 - a missing backend is recorded, not fatal
            env["devices"] = f"unavailable: {e}"
    src = Path(bnexp.__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], src)
    env["git_commit"] = commit
    if commit is not None:
        env["git_dirty"] = bool(_git(["status", "--porcelain", "--untracked-files=no"], src))
    return env


def new_run_dir(
    out: Path,
    experiment: str,
    config: Any,
    *,
    preset: str | None = None,
    argv: list[str] | None = None,
    now: datetime | None = None,
    environment: Mapping[str, Any] | None = None,
) -> Path:
    """Create ``out/<YYYYmmdd>-<HHMMSS>-<experiment>-<hash>`` with config, environment and status.

    config: a mapping or dataclass (the resolved experiment config). preset defaults to
    config["preset"] when present. environment defaults to capture_environment(argv).
    """
    now = now or _now()
    cfg = to_jsonable(config)
    if preset is None and isinstance(cfg, Mapping):
        preset = cfg.get("preset")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment) or "run"
    chash = config_hash(cfg)
    base = f"{now:%Y%m%d-%H%M%S}-{safe}-{chash}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        run_dir = out / (base if i == 1 else f"{base}-{i}")
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free run directory name for {base} in {out}")
    status = {
        "experiment": experiment,
        "preset": preset,
        "config_hash": chash,
        "created": now.isoformat(timespec="seconds"),
        "trial_id_schema": TRIAL_ID_SCHEMA,
    }
    try:  # all three files or no directory: an interrupt or a full disk leaves no half-made run
        write_json_atomic(run_dir / "config.json", cfg)
        env = capture_environment(argv) if environment is None else dict(environment)
        write_json_atomic(run_dir / "environment.json", env)
        set_status(run_dir, "running", **status)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def set_status(run_dir: Path, status: str, **fields: Any) -> dict[str, Any]:
    """Update status.json (keeping its other fields); records pid/host so a dead run is seen."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    path = Path(run_dir) / "status.json"
    try:
        info = read_json(path)
        info = info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        info = {}
    info.update(fields)
    info.update(status=status, updated=_now().isoformat(timespec="seconds"))
    if status == "running":
        info.update(pid=os.getpid(), host=socket.gethostname())
    write_json_atomic(path, info)
    return info


@contextlib.contextmanager
def tracking_status(run_dir: Path) -> Iterator[Path]:
    """ "complete" on normal exit, "interrupted" on Ctrl-C, "failed" (with the error) otherwise."""
    try:
        yield Path(run_dir)
    except KeyboardInterrupt:
        set_status(run_dir, "interrupted")
        raise
    except BaseException as e:
        with contextlib.suppress(OSError):  # a full or read-only disk may refuse this too
            set_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
        raise
    set_status(run_dir, "complete")


def save_trial(run_dir: Path, result: Any) -> str:
    """Write one TrialResult (history .npz, then record .json); returns its trial_id."""
    tid = trial_id(result.trial)
    tdir = Path(run_dir) / "trials"
    extra = dict(result.extra or {})
    extra_arrays = {k: v for k, v in extra.items() if isinstance(v, np.ndarray)}
    arrays = {k: np.asarray(v) for k, v in result.history.items()}
    arrays.update({_EXTRA_PREFIX + k: v for k, v in extra_arrays.items()})
    write_npz_atomic(tdir / f"{tid}.npz", arrays)
    record = {
        "trial_id": tid,
        "tag": result.trial.tag,
        "seed": result.trial.seed,
        "diverged_at": result.diverged_at,
        "final_test_accuracy": result.final_test_accuracy,
        "seconds": result.seconds,
        "history_keys": sorted(result.history),
        "extra": {k: v for k, v in extra.items() if k not in extra_arrays},
        "extra_arrays": sorted(extra_arrays),
        "trial": trial_to_dict(result.trial),
        "trial_id_schema": TRIAL_ID_SCHEMA,
        "saved": _now().isoformat(timespec="seconds"),
    }
    write_json_atomic(tdir / f"{tid}.json", record)
    return tid


def save_group(run_dir: Path, results: Iterable[Any]) -> list[str]:
    """on_group_done callback body: save every TrialResult of a finished group."""
    return [save_trial(run_dir, r) for r in results]


def write_summary(
    run_dir: Path, rows: Any, verdict: Any, timing: Mapping[str, Any] | None = None, **extra: Any
) -> Path:
    """summary.json: table rows, verdict(s), timing and anything else the analysis produced."""
    data = {"rows": rows, "verdict": verdict, "timing": dict(timing or {}), **extra}
    return write_json_atomic(Path(run_dir) / "summary.json", data)


# ---- reading runs back -----------------------------------------------------------------------


@dataclass
class TrialRecord:
    """One saved trial. trial is the rebuilt sweep.Trial (None if this bnexp cannot rebuild it)."""

    trial_id: str
    trial: Any
    trial_dict: dict[str, Any]
    tag: str
    seed: int | None
    diverged_at: int | None
    final_test_accuracy: float | None
    seconds: float
    extra: dict[str, Any]
    history: dict[str, np.ndarray]
    legacy: tuple[str, ...] = ()  # CHANGED_MEANING fields its stored config lacks

    def to_result(self) -> Any:
        """The sweep.TrialResult this record was saved from."""
        from bnexp.sweep import TrialResult

        if self.trial is None:
            raise ValueError(f"trial {self.trial_id} could not be rebuilt from its config")
        return TrialResult(
            self.trial,
            self.history,
            self.diverged_at,
            self.final_test_accuracy,
            self.seconds,
            dict(self.extra),
        )


@dataclass
class Run:
    path: Path
    config: Any
    environment: dict[str, Any] | None
    status_info: dict[str, Any]
    trials: list[TrialRecord]
    summary: dict[str, Any] | None
    broken: list[str] = field(default_factory=list)  # files that could not be read

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return _effective_status(self.status_info)

    @property
    def experiment(self) -> str | None:
        return self.status_info.get("experiment") or _name_parts(self.path.name)[1]

    @property
    def preset(self) -> str | None:
        preset = self.status_info.get("preset")
        if preset is None and isinstance(self.config, dict):
            preset = self.config.get("preset")
        return preset

    def by_id(self) -> dict[str, TrialRecord]:
        """Saved trials by the id their stored config has today (its missing fields at today's
        defaults), whatever schema named their files; one that cannot be rebuilt keeps its own."""
        return {
            trial_id(t.trial) if t.trial is not None and not t.legacy else t.trial_id: t
            for t in self.trials
        }

    def results_for(self, trials: Iterable[Any]) -> list[Any]:
        """TrialResults in the order of `trials` (None where a trial has not been saved)."""
        ids = self.by_id()
        return [r.to_result() if (r := ids.get(trial_id(x))) else None for x in trials]


def _load_record(json_path: Path) -> TrialRecord:
    rec = read_json(json_path)
    arrays = read_npz(json_path.with_suffix(".npz"))
    history = {k: v for k, v in arrays.items() if not k.startswith(_EXTRA_PREFIX)}
    extra = dict(rec.get("extra") or {})
    extra.update(
        {k[len(_EXTRA_PREFIX) :]: v for k, v in arrays.items() if k.startswith(_EXTRA_PREFIX)}
    )
    try:
        trial = trial_from_dict(rec["trial"])
    except Exception:  # noqa: BLE001 - an old/foreign config is still loadable as data
        trial = None
    return TrialRecord(
        rec.get("trial_id", json_path.stem),
        trial,
        rec["trial"],
        rec.get("tag", ""),
        rec.get("seed"),
        rec.get("diverged_at"),
        rec.get("final_test_accuracy"),
        float(rec.get("seconds") or 0.0),
        extra,
        history,
        tuple(k for k in CHANGED_MEANING if k not in rec["trial"]),
    )


def load_run(run_dir: Path) -> Run:
    """Everything in a run directory; unreadable trial files are listed in Run.broken."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a bnexp run directory (no config.json)")
    broken: list[str] = []

    def opt_json(name: str) -> Any:
        p = run_dir / name
        if not p.exists():
            return None
        try:
            return read_json(p)
        except (OSError, ValueError):
            broken.append(name)
            return None

    config = opt_json("config.json")
    environment, status_info, summary = (
        opt_json(n) for n in ("environment.json", "status.json", "summary.json")
    )
    trials = []
    for p in sorted((run_dir / "trials").glob("*.json")):
        try:
            trials.append(_load_record(p))
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            broken.append(f"trials/{p.name}")  # a damaged trial: trained again on resume
    return Run(
        run_dir,
        config,
        environment,
        status_info if isinstance(status_info, dict) else {},
        trials,
        summary if isinstance(summary, dict) else None,
        broken,
    )


class RunLocked(RuntimeFailure):
    """Another process is training into this run directory."""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold an exclusive lock on run_dir/.lock (flock) while a process trains into it: a second
    `--resume` of a run that is still running fails at once with RunLocked (one line, exit 1)
    instead of two processes writing the same trials. The kernel drops the lock when the holder
    exits, however it exits (SIGKILL included), so a stale .lock file never blocks anyone."""
    path = Path(run_dir) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunLocked(
            f"run directory {run_dir} is in use by another bnexp process (pid {holder}); "
            "wait for it to finish or stop it first"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield Path(run_dir)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---- status of a run directory -----------------------------------------------------------------


def _name_parts(name: str) -> tuple[datetime | None, str | None]:
    m = _NAME_RE.match(name)
    if not m:
        return None, None
    try:
        return datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S"), m[3]
    except ValueError:
        return None, m[3]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def process_gone(info: Mapping[str, Any]) -> bool:
    """A "running" status whose process is gone (same host, dead pid): killed (SIGKILL, a crash,
    a power cut) before it could mark the run; `--resume` continues it."""
    pid = info.get("pid")
    return (
        info.get("status") == "running"
        and isinstance(pid, int)
        and info.get("host") == socket.gethostname()
        and not _pid_alive(pid)
    )


def _effective_status(info: Mapping[str, Any]) -> str:
    """The stored status, except that a "running" run whose process is gone is "interrupted"."""
    status = info.get("status")
    if status not in STATUSES:
        return "unknown"
    return "interrupted" if process_gone(info) else status
