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
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import json
import math
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

from bnexp.atomic import write_atomic, write_text_atomic
from bnexp.errors import RuntimeFailure

STATUSES = ("running", "interrupted", "complete", "failed")
_NAME_RE = re.compile(r"^(\d{8})-(\d{6})-(.+)-([0-9a-f]{8})(?:-\d+)?$")
_EXTRA_PREFIX = "extra."


# ---- JSON and atomic writes ------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data from dataclasses, numpy/JAX arrays and scalars, tuples, Paths, enums.

    Non-finite floats become None (strict JSON); anything else unknown raises TypeError rather
    than being silently stringified.
    """
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray) or (hasattr(obj, "__array__") and hasattr(obj, "dtype")):
        return to_jsonable(np.asarray(obj).tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    raise TypeError(f"cannot store {type(obj).__name__} as JSON: {obj!r:.80}")


def canonical_json(obj: Any) -> str:
    """Deterministic compact JSON (sorted keys): the input of every hash here."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(obj: Any, length: int = 8) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write obj (through to_jsonable) as indented strict JSON, atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def write_npz_atomic(path: Path, arrays: Mapping[str, Any]) -> Path:
    """np.savez of numeric arrays, atomically; object arrays are refused (they would need pickle)."""
    arrs = {str(k): np.asarray(v) for k, v in arrays.items()}
    for k, a in arrs.items():
        if a.dtype.hasobject:
            raise TypeError(f"array {k!r} has dtype object; only numeric arrays are stored")
    return write_atomic(path, lambda f: np.savez(f, **arrs))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---- trials as JSON --------------------------------------------------------------------------


def _deep_tuple(v: Any) -> Any:
    return tuple(_deep_tuple(x) for x in v) if isinstance(v, list | tuple) else v


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """A frozen config dataclass (Trial, ModelSpec, ...) as JSON data, nested ones included.

    An int given to a float field becomes a float, so lr=1 and lr=1.0 hash alike.
    """
    out = {}
    for f in dataclasses.fields(obj):
        v, default = getattr(obj, f.name), _field_default(f)
        if (
            isinstance(default, float)
            and isinstance(v, int | np.integer)
            and not isinstance(v, bool)
        ):
            v = float(v)
        out[f.name] = to_jsonable(v)
    return out


def dataclass_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """Inverse of dataclass_to_dict: nested dataclasses rebuilt, lists back to tuples.

    Field kinds come from the defaults (ModelSpec() default -> nested ModelSpec, tuple default ->
    tuples). Unknown keys raise ValueError; missing keys take the defaults.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {}
    for name, v in d.items():
        default = _field_default(names[name])
        if dataclasses.is_dataclass(default) and isinstance(v, Mapping):
            v = dataclass_from_dict(type(default), v)
        elif isinstance(default, tuple) or isinstance(v, list):
            v = _deep_tuple(v)
        elif isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        kwargs[name] = v
    return cls(**kwargs)


def trial_to_dict(trial: Any) -> dict[str, Any]:
    """A sweep.Trial (with its ModelSpec) as JSON data."""
    return dataclass_to_dict(trial)


def trial_from_dict(d: Mapping[str, Any]) -> Any:
    """Rebuild the sweep.Trial that trial_to_dict produced (equal, hence same trial_id)."""
    from bnexp.sweep import Trial  # lazy: listing runs must not import the engine

    return dataclass_from_dict(Trial, d)


# How trial ids are computed, stored in every run's status.json and trial records.
#   1: a hash of every field of the Trial (and its ModelSpec): adding a field changed every id.
#   2: a hash of the fields whose value is not their default (nested ModelSpec alike): adding a
#      field with a default keeps every id, and a field that is removed or given a new default
#      shows up as a saved trial this code no longer makes (runner refuses to resume it).
# Saved trials are matched by the id of their stored config read back with today's defaults
# (Run.by_id), not by file name, so runs of either schema resume.
TRIAL_ID_SCHEMA = 2

# Trial fields added after runs were saved whose default does NOT compute what a trial saved
# without them computed (a migration note each): such a saved trial is never matched to a
# current one, and resume refuses its run with this reason. A field whose default keeps the old
# behaviour needs no entry: a saved trial without it reads back at the default, same id.
CHANGED_MEANING = {
    "eval_per_decade": "saved before Trial.eval_per_decade existed, its history has no step-0 "
    "and no geometric evaluations",
}


def non_default_dict(obj: Any) -> dict[str, Any]:
    """dataclass_to_dict without the fields at their default (nested dataclasses alike)."""
    out = {}
    full = dataclass_to_dict(obj)
    for f in dataclasses.fields(obj):
        v, default = getattr(obj, f.name), _field_default(f)
        if dataclasses.is_dataclass(default) and dataclasses.is_dataclass(v):
            sub = non_default_dict(v)
            if sub or type(v) is not type(default):
                out[f.name] = sub
        elif default is dataclasses.MISSING or full[f.name] != to_jsonable(default):
            out[f.name] = full[f.name]
    return out


def trial_id(trial: Any) -> str:
    """Stable 12-hex-digit id of a trial's config (tag included), schema TRIAL_ID_SCHEMA."""
    return config_hash(non_default_dict(trial), length=12)


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
