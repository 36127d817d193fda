"""What every named experiment is made of: a frozen config with presets, a grid, an analysis.

An experiment file defines a config dataclass (subclass of `Config`), its three presets, a
`trials(config)` function that expands the grid into engine `Trial`s, and an `analyze(config,
results)` function that turns the measured numbers into table rows and a verdict on the claim.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnexp.errors import UsageError
from bnexp.models import ModelSpec
from bnexp.stats import Verdict
from bnexp.sweep import Trial, TrialResult

PRESETS = ("smoke", "quick", "paper")


class ConfigError(UsageError, ValueError):
    """A bad option or override: reported to the user as one line (exit code 2)."""


@dataclass(frozen=True)
class Config:
    """Fields shared by every experiment. Every field can be overridden with --set key=value."""

    preset: str = "quick"
    dataset: str = "mnist"
    seeds: int = 3
    steps: int = 2000
    eval_every: int = 100
    eval_per_decade: int = 8  # geometric evaluation points per decade besides the grid (0: none)
    batch_size: int = 60
    optimizer: str = "sgd"
    lr: float = 0.5
    momentum: float = 0.9
    activation: str = "sigmoid"
    hidden: tuple[int, ...] = (100, 100, 100)
    init: str = "gaussian"
    init_std: float = 0.1
    data_seed: int = 0

    def accuracy_targets(self) -> tuple[float, ...]:
        """The test accuracies whose steps-to-target a run reports (each trial in --json)."""
        return (0.5, 0.8, 0.9)


@dataclass
class Table:
    """One table of an analysis: rows of typed values (one value per cell), shown by column."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows}


@dataclass
class Analysis:
    tables: list[Table]
    verdict: Verdict | list[Verdict] | None  # a list: one per claim (sweep files); None: no claim
    plots: list[Path] = field(default_factory=list)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r for t in self.tables for r in t.rows]


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    source: str
    config_type: type[Config]
    presets: dict[str, Config]
    trials: Callable[[Any], list[Trial]]
    analyze: Callable[[Any, list[TrialResult]], Analysis]
    plot: Callable[[Any, list[TrialResult], Analysis, Path], list[Path]] | None = None
    shows: str = ""  # what the table shows, for `bnexp describe`
    validate: Callable[[Any], None] | None = None
    # The paper's own number(s) for the claim, for the report's claims table ("" when none exists)
    paper: str = ""
    # An identity of a correct implementation (e.g. BN's scale invariance at eps = 0), not an
    # empirical claim: reports list it as a check, apart from the tally of claims (SCIENCE.md)
    identity: bool = False
    # Files written into a new run directory (name -> text), e.g. a sweep's own file
    files: Callable[[Any], dict[str, str]] | None = None

    def preset(self, name: str) -> Config:
        if name not in self.presets:
            raise ConfigError(
                f"unknown preset {name!r} for {self.name}; choose from {', '.join(self.presets)}"
            )
        return self.presets[name]


# ---- models and trials --------------------------------------------------------------------------


def input_dim(dataset: str) -> int:
    """Flat input size of a dataset (loads it: a missing dataset fails here, before training)."""
    from bnexp import data

    return int(np.prod(data.load(dataset).input_shape))


def mlp(
    cfg: Config,
    norm: str,
    *,
    activation: str | None = None,
    norm_options: tuple[tuple[str, Any], ...] = (),
    **spec: Any,
) -> ModelSpec:
    """The paper's MLP (Ioffe & Szegedy Sec. 4.1) with the config's widths, norm by name."""
    return ModelSpec(
        kind="mlp",
        widths=(input_dim(cfg.dataset), *cfg.hidden, 10),
        activation=activation or cfg.activation,
        norm=norm,
        norm_options=norm_options,
        init=cfg.init,
        init_std=cfg.init_std,
        **spec,
    )


def make_trial(cfg: Config, model: ModelSpec, *, seed: int, tag: str, **overrides: Any) -> Trial:
    """A trial from the shared config fields; every arm of one seed shares seed and data order."""
    base = dict(
        model=model,
        dataset=cfg.dataset,
        batch_size=cfg.batch_size,
        steps=cfg.steps,
        eval_every=cfg.eval_every,
        eval_per_decade=cfg.eval_per_decade,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        seed=seed,
        data_seed=cfg.data_seed + seed,
        tag=tag,
    )
    base.update(overrides)
    return Trial(**base)


def _parse_value(key: str, raw: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        return _parse_value(key, raw, non_none[0])
    if origin is tuple:
        inner = args[0] if args else str
        parts = [p for p in raw.replace(" ", "").split(",") if p != ""]
        if not parts:
            raise ConfigError(f"--set {key}: expected a comma-separated list, got {raw!r}")
        return tuple(_parse_value(key, p, inner) for p in parts)
    if typ is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}: expected true/false, got {raw!r}")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--set {key}: expected an integer, got {raw!r}") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--set {key}: expected a number, got {raw!r}") from None
    return raw


def field_types(cfg_type: type[Config]) -> dict[str, Any]:
    hints = typing.get_type_hints(cfg_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(cfg_type)}


def apply_overrides(cfg: Config, pairs: Sequence[str]) -> Config:
    """Apply `key=value` strings, typed by the config's own annotations."""
    types_ = field_types(type(cfg))
    changes: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in types_:
            close = difflib.get_close_matches(key, types_, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(types_)}")
        changes[key] = _parse_value(key, raw.strip(), types_[key])
    return dataclasses.replace(cfg, **changes)


FLOAT32_MAX = 3.4028234663852886e38
INT32_MAX = 2**31 - 1
MAX_EVALUATIONS = 10**6  # evaluation points per trial: its history is kept in memory
MAX_SEEDS = 1000  # more seeds per setting is days of training, never a typo worth running
MAX_WIDTH = 65536  # a wider hidden layer of the MLP does not fit a member in memory


def _numbers(name: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, tuple):
        return [n for v in value for n in _numbers(name, v)]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return [(name, value)] if ok else []


def check_numbers(cfg: Config) -> None:
    """Every number of the config, the experiment's own fields included: a float finite and
    within float32 (training runs in float32: lr=1e300 would be inf there), an int within int32
    (JAX's step counters and seeds)."""
    for f in dataclasses.fields(cfg):
        for name, v in _numbers(f.name, getattr(cfg, f.name)):
            if isinstance(v, float) and not (np.isfinite(v) and abs(v) <= FLOAT32_MAX):
                raise ConfigError(f"{name} must be a finite float32 number, got {v!r}")
            if isinstance(v, int) and abs(v) > INT32_MAX:
                raise ConfigError(f"{name} must fit in 32 bits (|{name}| < 2**31), got {v}")


def check_common(cfg: Config, *, num_train: int | None = None) -> None:
    """Impossible combinations, reported before anything trains."""
    check_numbers(cfg)
    if cfg.steps <= 0:
        raise ConfigError(f"steps must be positive, got {cfg.steps}")
    if cfg.eval_every <= 0:
        raise ConfigError(f"eval_every must be positive, got {cfg.eval_every}")
    if cfg.eval_per_decade < 0:
        raise ConfigError(f"eval_per_decade must be >= 0, got {cfg.eval_per_decade}")
    if cfg.seeds <= 0:
        raise ConfigError(f"seeds must be positive, got {cfg.seeds}")
    if cfg.batch_size < 2:
        raise ConfigError(f"batch_size must be at least 2 (batch statistics), got {cfg.batch_size}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    _check_ranges(cfg)
    if cfg.optimizer not in ("sgd", "momentum", "adam"):
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, momentum or adam")
    if cfg.activation not in ("sigmoid", "tanh", "relu"):
        raise ConfigError(f"unknown activation {cfg.activation!r}; choose sigmoid, tanh or relu")
    if any(h <= 0 for h in cfg.hidden):
        raise ConfigError(f"hidden widths must be positive, got {cfg.hidden}")
    if num_train is not None and cfg.batch_size > num_train:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is larger than the training set "
            f"({num_train} examples of {cfg.dataset})"
        )


def _check_ranges(cfg: Config) -> None:
    """Absurd sizes, caught before they exhaust the memory or the week."""
    evaluations = cfg.steps // cfg.eval_every
    if evaluations > MAX_EVALUATIONS:
        raise ConfigError(
            f"steps/eval_every = {evaluations} evaluations per trial; at most {MAX_EVALUATIONS} "
            "(raise eval_every or lower steps)"
        )
    if cfg.seeds > MAX_SEEDS:
        raise ConfigError(f"seeds must be at most {MAX_SEEDS} per setting, got {cfg.seeds}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.init_std <= 0:
        raise ConfigError(f"init_std must be positive, got {cfg.init_std}")
    if cfg.data_seed < 0:
        raise ConfigError(f"data_seed must be >= 0, got {cfg.data_seed}")
    if any(h > MAX_WIDTH for h in cfg.hidden):
        raise ConfigError(f"hidden widths must be at most {MAX_WIDTH}, got {cfg.hidden}")


def config_dict(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
