"""Sweep files (`bnexp sweep FILE.toml`): read, validate and expand a user's own sweep.

A sweep file states a base config, the axes to sweep (``product`` and ``zip`` groups), the arms
to compare and, optionally, claims (experiments/sweepclaims.py judges them). Everything is
checked here before any training; each problem is one line naming the file, the line and the
key (tomllib gives no line numbers, so `key_lines` finds them by scanning the text). The grid
expands, arms outermost, then the axes in file order (the first varies slowest), then seeds,
into engine Trials exactly as a named experiment builds them (base.mlp / make_trial fields), so
a file that restates a named experiment gives the same trial ids and the same numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.base import Config, ConfigError

# Setting keys: usable in [base], in an arm and (all but seeds/targets) on an axis. The value
# kinds: "int", "float", "str", "ints" (list of positive ints), "table" (norm options).
KINDS = {
    "dataset": "str",
    "steps": "int",
    "eval_every": "int",
    "eval_per_decade": "int",
    "batch_size": "int",
    "optimizer": "str",
    "lr": "float",
    "momentum": "float",
    "activation": "str",
    "hidden": "ints",
    "init": "str",
    "init_std": "float",
    "data_seed": "int",
    "norm": "str",
    "norm_options": "table",
    "init_scale": "float",
    "placement": "str",
    "train_size": "int",
}
BASE_ONLY = {"seeds": "int", "targets": "floats"}
TOP_KEYS = ("name", "description", "base", "arms", "axes", "claims")
CHOICES = {
    "optimizer": ("sgd", "momentum", "adam"),
    "activation": ("sigmoid", "tanh", "relu"),
    "init": ("gaussian", "glorot", "he"),
    "placement": ("before", "after"),
}
POSITIVE = ("steps", "eval_every", "batch_size", "lr", "init_std", "init_scale", "train_size")
FILE_NAME = "sweep.toml"  # the copy of the file inside its run directory


@dataclass(frozen=True)
class SweepConfig(Config):
    """The base config of a sweep (config.json of its run): Config's fields plus the model
    fields a sweep can set; source_sha256 ties the run to its copied file."""

    preset: str = "sweep"
    norm: str = "batch"
    norm_options: tuple[tuple[str, Any], ...] = ()
    init_scale: float = 1.0
    placement: str = "before"
    train_size: int | None = None
    targets: tuple[float, ...] = (0.5, 0.8, 0.9)
    source_sha256: str = ""

    def accuracy_targets(self) -> tuple[float, ...]:
        return tuple(self.targets)


class SweepFileError(ConfigError):
    """A problem in a sweep file: 'FILE:LINE: key K: what is wrong' (exit 2)."""


@dataclass(frozen=True)
class Setting:
    """One point of the grid for one arm: the arm, the axis values, and the full settings."""

    arm: str
    point: tuple[tuple[str, Any], ...]  # (axis key, value) in axis order
    values: dict[str, Any]
    shown: tuple[str, ...] = ()  # the axis keys its tag shows (Spec.tag_keys)

    @property
    def tag(self) -> str:
        """'arm@v1,v2': the values of the shown keys, as lr-sweep tags 'bn@0.1'."""
        vals = [fmt(v) for k, v in self.point if k in self.shown]
        return self.arm + ("@" + ",".join(vals) if vals else "")


@dataclass
class Spec:
    """A parsed, validated sweep file."""

    path: Path
    text: str
    name: str
    description: str
    base: dict[str, Any]
    arms: dict[str, dict[str, Any]]
    factors: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]  # (keys, points)
    claims: list[dict[str, Any]]
    lines: dict[tuple, int]
    axis_paths: dict[str, tuple] = dataclasses.field(default_factory=dict)  # key -> its path

    def where(self, arm: str, keys: tuple[str, ...]) -> tuple:
        """The path that sets the first of `keys` for an arm: its axis, the arm, or [base]."""
        for k in keys:
            if k in self.axis_paths:
                return self.axis_paths[k]
            if k in self.arms[arm] or k in self.arm_keys(arm):
                return ("arms", arm, *k.split("."))
            if k in self.base:
                return ("base", k)
        return ("arms", arm) if arm in self.arms and self.arms[arm] else ("base",)

    def arm_keys(self, arm: str) -> set[str]:
        """The keys an arm sets, with 'norm_options' for any 'norm_options.K'."""
        return {k.split(".")[0] for k in self.arms[arm]}

    def error(self, path: tuple, message: str) -> SweepFileError:
        return file_error(self.path, self.lines, path, message)

    @property
    def tag_keys(self) -> tuple[str, ...]:
        """The keys tags show: every product axis; of a zip group only its first key when that
        alone tells its points apart (batch_size, not the steps and lr zipped with it)."""
        out: list[str] = []
        for keys, pts in self.factors:
            first = [p[0] for p in pts]
            out += keys[:1] if len(set(map(repr, first))) == len(first) else keys
        return tuple(out)

    @property
    def axis_keys(self) -> list[str]:
        return [k for keys, _ in self.factors for k in keys]

    def settings(self, cfg: SweepConfig) -> list[Setting]:
        """Every (arm, axis point), arms outermost, the first axis varying slowest; values are
        the config's fields, then the arm's, then the point's ("norm_options.K" keys kept
        apart: see `norm_options`)."""
        base = {k: getattr(cfg, k) for k in KINDS}
        out = []
        for arm, over in self.arms.items():
            for combo in itertools.product(*(pts for _, pts in self.factors)):
                point = tuple(
                    (k, v) for (keys, _), vals in zip(self.factors, combo, strict=True)
                    for k, v in zip(keys, vals, strict=True)
                )  # fmt: skip
                values = {**base, **over, **dict(point)}
                out.append(Setting(arm, point, values, self.tag_keys))
        return out


def norm_options(values: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The norm's factory options of one setting: the config's, updated by every
    "norm_options.K" key an arm or an axis sets, sorted by name (ModelSpec.norm_options)."""
    opts = dict(values["norm_options"])
    opts.update({k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("norm_options.")})
    return tuple(sorted(opts.items()))


def fmt(v: Any) -> str:
    """A value as it appears in a tag: numbers with :g (as named experiments tag lr), lists
    joined with '-'."""
    if isinstance(v, bool | str):
        return str(v)
    if isinstance(v, int | float):
        return f"{v:g}"
    if isinstance(v, tuple | list):
        return "-".join(fmt(x) for x in v)
    return str(v)


# ---- where a key is ---------------------------------------------------------------------------

_BARE = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_KEY = re.compile(rf"^({_BARE}(?:\s*\.\s*{_BARE})*)\s*=(.*)$")


def _parts(key: str) -> tuple[str, ...]:
    return tuple(p.strip().strip("\"'") for p in re.findall(rf"{_BARE}", key))


def _uncomment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i]
    return line


def key_lines(text: str) -> dict[tuple, int]:
    """The line of every key path (table headers, keys, dotted keys, inline-table keys), as
    tomllib would nest them; arrays of tables get their index ("claims", 0, "name")."""
    lines: dict[tuple, int] = {}
    current: tuple = ()
    counts: dict[tuple, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        s = _uncomment(raw).strip()
        if m := re.match(r"^\[\[(.+)\]\]$", s):
            p = _parts(m[1])
            counts[p] = counts.get(p, -1) + 1
            current = (*p, counts[p])
            lines.setdefault(p, n)
            lines.setdefault(current, n)
        elif m := re.match(r"^\[(.+)\]$", s):
            current = _parts(m[1])
            lines.setdefault(current, n)
        elif m := _KEY.match(s):
            p = (*current, *_parts(m[1]))
            lines.setdefault(p, n)
            for inner in re.finditer(rf"({_BARE}(?:\s*\.\s*{_BARE})*)\s*=", m[2]):
                lines.setdefault((*p, *_parts(inner[1])), n)
    return lines


def file_error(path: Path, lines: dict[tuple, int], key: tuple, message: str) -> SweepFileError:
    probe = tuple(key)
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe, 1)
    shown = ".".join(str(p) for p in key if not isinstance(p, int)) or "(file)"
    return SweepFileError(f"{path}:{line}: key {shown!r}: {message}")


def unknown(keys: Any, allowed: Any, err: Any, where: tuple) -> None:
    """Every key of `keys` must be in `allowed` (a suggestion from difflib when close)."""
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise err((*where, k), f"unknown key{hint}; expected one of {', '.join(allowed)}")


# ---- reading ----------------------------------------------------------------------------------


def read(path: Path) -> Spec:
    """Parse and validate a sweep file (SweepFileError on the first problem)."""
    from experiments import sweepcheck

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SweepFileError(f"{path}: cannot read the sweep file ({e.strerror or e})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise SweepFileError(
            f"{path}:{m[1] if m else 1}: invalid TOML: {str(e).split(' (at')[0]}"
        ) from None
    return sweepcheck.spec(path, text, doc, key_lines(text))


def base_config(spec: Spec, *, seeds: int | None, steps: int | None, sha: str) -> SweepConfig:
    """The run's config: SweepConfig defaults, the file's [base], then --seeds / --steps."""
    b = dict(spec.base)
    if seeds is not None:
        b["seeds"] = seeds
    if steps is not None:
        if "steps" in spec.axis_keys or any("steps" in a for a in spec.arms.values()):
            raise ConfigError(f"--steps: {spec.path} sets steps on an axis or an arm")
        b["steps"] = steps
    b = {k: tuple(v) if isinstance(v, list) else v for k, v in b.items()}
    return dataclasses.replace(SweepConfig(), **b, source_sha256=sha)
