"""The schema of a sweep file, checked key by key before anything trains (one line, exit 2).

Types and ranges of every setting, known keys (a difflib suggestion for a misspelt one), arms,
axes (non-empty lists; zip groups of equal length; a key on one axis only and not also in an
arm; no repeated point, which would give two identical trials) and the claims' fields. Which
combinations the engine can build (a norm's options for each width, batch sizes against the
training set) is checked with the config in hand: `buildable`.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

from experiments.sweepfile import (
    BASE_ONLY,
    CHOICES,
    KINDS,
    POSITIVE,
    TOP_KEYS,
    Spec,
    file_error,
    unknown,
)

METRICS = ("final_accuracy", "steps_to_target", "train_eval_gap", "divergence")
CLAIM_KEYS = ("name", "metric", "a", "b", "direction", "threshold", "target", "negligible")
CLAIM_KEYS += ("reason", "across")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _choice(key: str, v: str) -> tuple[str, ...] | None:
    if key in CHOICES:
        return CHOICES[key]
    if key == "norm":
        from bnexp import norms

        return tuple(norms.names())
    if key == "dataset":
        from bnexp import data

        return tuple(data.DATASETS)
    return None


def value(err: Any, where: tuple, key: str, v: Any) -> Any:
    """The value of setting `key` checked and normalized (floats as float, lists as tuples)."""
    kind = KINDS.get(key) or BASE_ONLY.get(key)
    if kind is None and key.startswith("norm_options."):
        kind = "scalar"
    if kind in ("int", "float") and not _number(v) or kind == "int" and not isinstance(v, int):
        raise err(where, f"expected {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
    if kind == "str" and not isinstance(v, str):
        raise err(where, f"expected a string, got {v!r}")
    if kind in ("ints", "floats"):
        ok = isinstance(v, list) and v and all(_number(x) for x in v)
        if not ok or kind == "ints" and not all(isinstance(x, int) and x > 0 for x in v):
            what = "positive integers" if kind == "ints" else "numbers"
            raise err(where, f"expected a non-empty list of {what}, got {v!r}")
        v = tuple(v) if kind == "ints" else tuple(float(x) for x in v)
    if kind == "table":
        if not isinstance(v, dict):
            raise err(where, f"expected a table of norm options, got {v!r}")
        v = tuple(
            sorted((k, value(err, (*where, k), f"norm_options.{k}", x)) for k, x in v.items())
        )
    if kind == "scalar" and not (_number(v) or isinstance(v, str | bool)):
        raise err(where, f"expected a number, string or boolean, got {v!r}")
    if kind == "float":
        v = float(v)
    _range(err, where, key, v)
    return v


def _range(err: Any, where: tuple, key: str, v: Any) -> None:
    choices = _choice(key, v) if isinstance(v, str) else None
    if choices is not None and v not in choices:
        close = difflib.get_close_matches(v, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise err(where, f"unknown value {v!r}{hint}; choose from {', '.join(choices)}")
    if key in POSITIVE and v <= 0 or key == "seeds" and v < 1:
        raise err(where, f"must be positive, got {v!r}")
    if key == "batch_size" and v < 2 or key == "eval_per_decade" and v < 0:
        raise err(where, f"must be {'at least 2' if key == 'batch_size' else '>= 0'}, got {v}")
    if key == "targets" and not all(0 < t <= 1 for t in v):
        raise err(where, f"targets must be accuracies in (0, 1], got {list(v)}")


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """norm_options given as a table (in an arm, an axis or a selector) -> "norm_options.K"."""
    out = {}
    for k, v in d.items():
        if k == "norm_options" and isinstance(v, dict):
            out.update({f"norm_options.{o}": x for o, x in v.items()})
        else:
            out[k] = v
    return out


def _table(err: Any, where: tuple, v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise err(where, f"expected a table ({what}), got {v!r}")
    return v


def spec(path: Path, text: str, doc: dict[str, Any], lines: dict[tuple, int]) -> Spec:
    """The Spec of a parsed file, every key checked (SweepFileError on the first problem)."""

    def err(where: tuple, message: str):
        return file_error(path, lines, where, message)

    unknown(doc, TOP_KEYS, err, ())
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise err(("name",), f"expected a name of letters, digits, '_', '.', '-', got {name!r}")
    desc = doc.get("description", "")
    if not isinstance(desc, str):
        raise err(("description",), f"expected a string, got {desc!r}")
    raw = _table(err, ("base",), doc.get("base", {}), "the base settings")
    unknown(raw, (*KINDS, *BASE_ONLY), err, ("base",))
    base = {k: value(err, ("base", k), k, v) for k, v in raw.items()}
    arms = _arms(err, doc)
    factors, paths = _axes(err, doc, arms)
    claims = doc.get("claims", [])
    if not isinstance(claims, list) or not all(isinstance(c, dict) for c in claims):
        raise err(("claims",), "expected an array of tables: [[claims]]")
    out = Spec(path, text, name, desc, base, arms, factors, claims, lines, paths)
    for i, c in enumerate(claims):
        _claim(err, ("claims", i), c, out)
    return out


def _arms(err: Any, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    raw = _table(err, ("arms",), doc.get("arms", {"base": {}}), "one table per arm")
    if not raw:
        raise err(("arms",), "no arms: give at least one [arms.NAME] table, or leave [arms] out")
    arms = {}
    for name, over in raw.items():
        if not _NAME.match(name):
            raise err(("arms", name), "an arm name is letters, digits, '_', '.', '-'")
        over = _flat(_table(err, ("arms", name), over, "the arm's settings"))
        allowed = [k for k in KINDS if k != "norm_options"]
        unknown(
            [k for k in over if not k.startswith("norm_options.")], allowed, err, ("arms", name)
        )
        arms[name] = {k: value(err, ("arms", name, *k.split(".")), k, v) for k, v in over.items()}
    return arms


def _axes(err: Any, doc: dict[str, Any], arms: dict[str, dict[str, Any]]) -> list:
    axes = _table(err, ("axes",), doc.get("axes", {}), "product and zip groups")
    unknown(axes, ("product", "zip"), err, ("axes",))
    groups: list[tuple[tuple, dict[str, Any]]] = []
    for kind, body in axes.items():
        if kind == "product":
            body = _flat(_table(err, ("axes", "product"), body, "axis = [values]"))
            groups += [(("axes", "product", *k.split(".")), {k: v}) for k, v in body.items()]
        elif not isinstance(body, list) or not all(isinstance(g, dict) for g in body):
            raise err(("axes", "zip"), "expected an array of tables: [[axes.zip]]")
        else:
            groups += [(("axes", "zip", i), _flat(g)) for i, g in enumerate(body)]
    factors, seen = [], set()
    for where, group in groups:
        factors.append(_factor(err, where, group, arms, seen))
    paths = {}
    for where, group in groups:
        for k in group:
            paths[k] = (*where, *k.split(".")) if where[1] == "zip" else where
    return factors, paths


def _factor(err: Any, where: tuple, group: dict[str, Any], arms: dict, seen: set) -> tuple:
    if not group:
        raise err(where, "an empty zip group: give it at least one axis = [values]")
    lengths = {}
    for k, vals in group.items():
        at = (*where, *k.split(".")) if where[1] == "zip" else where
        if k not in KINDS or k == "norm_options":
            if not k.startswith("norm_options."):
                unknown([k], [x for x in KINDS if x != "norm_options"], err, at[:-1])
        if not isinstance(vals, list) or not vals:
            raise err(at, f"an axis needs a non-empty list of values, got {vals!r}")
        owner = next((f"arm {a!r}" for a, over in arms.items() if k in over), None)
        if k in seen or owner:
            raise err(at, f"is also set by {owner or 'another axis'}: sweep a key on one axis only")
        seen.add(k)
        group[k] = [value(err, at, k, v) for v in vals]
        lengths[k] = len(vals)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise err((*where, next(iter(group)).split(".")[0]), f"zip axes differ in length ({sizes})")
    points = list(zip(*group.values(), strict=True))
    dup = next((p for i, p in enumerate(points) if p in points[:i]), None)
    if dup is not None:
        raise err(where if where[1] == "product" else (*where, next(iter(group))),
                  f"repeats the point {dup!r}: two identical trials")  # fmt: skip
    return tuple(group), points


def _claim(err: Any, where: tuple, c: dict[str, Any], spec: Spec) -> None:
    unknown(c, CLAIM_KEYS, err, where)
    for key in ("name", "reason"):
        if not isinstance(c.get(key), str) or not c[key].strip():
            raise err((*where, key), "every claim states a non-empty string here")
    if c.get("metric") not in METRICS:
        got = c.get("metric")
        close = difflib.get_close_matches(str(got), METRICS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise err(
            (*where, "metric"), f"unknown metric {got!r}{hint}; choose from {', '.join(METRICS)}"
        )
    if c.get("direction", 1) not in (-1, 0, 1) or isinstance(c.get("direction"), bool):
        raise err((*where, "direction"), f"expected +1, -1 or 0, got {c.get('direction')!r}")
    if not _number(c.get("threshold")):
        raise err((*where, "threshold"), f"expected a number, got {c.get('threshold')!r}")
    metric, th, d = c["metric"], c["threshold"], c.get("direction", 1)
    if metric == "steps_to_target":
        if not _number(c.get("target")) or not 0 < c["target"] <= 1:
            raise err((*where, "target"), "steps_to_target needs target = an accuracy in (0, 1]")
        if th <= 0 or d == 0 and th <= 1:
            raise err((*where, "threshold"), "a speedup ratio > 0 (> 1 for direction 0)")
    elif "target" in c:
        raise err((*where, "target"), f"only steps_to_target takes a target, not {metric}")
    if metric == "divergence" and not 0 <= th <= 1:
        raise err((*where, "threshold"), "divergence is a share of seeds: a threshold in [0, 1]")
    if d == 0 and th <= 0:
        raise err((*where, "threshold"), "an equivalence (direction 0) needs a threshold > 0")
    neg = c.get("negligible")
    if neg is not None and not (
        isinstance(neg, list) and len(neg) == 2 and all(map(_number, neg)) and neg[0] < neg[1]
    ):
        raise err((*where, "negligible"), f"expected [low, high] with low < high, got {neg!r}")
    if "across" in c and c["across"] not in spec.axis_keys:
        raise err((*where, "across"), f"not an axis; the axes are {spec.axis_keys or 'none'}")
    from experiments import sweepclaims

    for side in ("a", "b"):
        if side == "b" and "b" not in c and metric == "divergence":
            continue
        sel = _flat(_table(err, (*where, side), c.get(side), "a selector: {arm = ..., axis = ...}"))
        unknown(sel, ["arm", *spec.axis_keys], err, (*where, side))
    sweepclaims.pairs(spec, where[1])  # each side picks one setting, and not the same one
