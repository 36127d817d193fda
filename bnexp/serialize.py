"""Strict JSON and .npz I/O, atomically written, and configs/trials as JSON data (their hashes
are run-directory names and trial ids). bnexp.results re-exports every name here."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bnexp.atomic import write_atomic, write_text_atomic

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
