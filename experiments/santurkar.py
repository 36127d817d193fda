"""Shared set-up of the Santurkar et al. 2018 experiments (noisy-bn, ics, landscape,
scale-invariance): the model choice, the probe batch, the paper preset, history arrays.

Santurkar, Tsipras, Ilyas & Madry trained VGG on CIFAR-10 with SGD, lr 0.1, batch 128, 15k steps.
The quick presets use the Ioffe & Szegedy MLP on the shipped MNIST instead (CPU minutes); the
paper presets use a small VGG-style CNN that fits a single GPU or a patient CPU: three blocks of
conv3x3 (32, 64, 128 channels) -> norm -> ReLU -> maxpool 2x2, a 256-unit dense layer (also
normalized) and the output layer, He init, on CIFAR-10 (`bnexp download cifar10` first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bnexp import data
from bnexp.models import ModelSpec
from bnexp.sweep import Trial, TrialResult
from experiments.base import Config, ConfigError, make_trial, mlp

MODELS = ("mlp", "cnn")


@dataclass(frozen=True)
class SanturkarConfig(Config):
    model: str = "mlp"  # "mlp": the paper's MLP (hidden widths) | "cnn": conv blocks + hidden dense
    channels: tuple[int, ...] = (32, 64, 128)  # cnn only: channels of the conv blocks
    probe_batch: int = 0  # examples in the fixed probe batch; 0 = batch_size (a training batch)


# The paper's optimization setting (Santurkar et al. Sec. 2 / App. A) with our CNN.
PAPER_CNN: dict[str, Any] = dict(
    dataset="cifar10",
    model="cnn",
    channels=(32, 64, 128),
    hidden=(256,),
    activation="relu",
    init="he",
    optimizer="sgd",
    lr=0.1,
    batch_size=128,
    steps=15_000,
    seeds=5,
)


def model_spec(
    cfg: SanturkarConfig, norm: str, norm_options: tuple[tuple[str, Any], ...] = ()
) -> ModelSpec:
    """The config's MLP or CNN with the given norm (BN before each nonlinearity, bias dropped)."""
    if cfg.model == "mlp":
        return mlp(cfg, norm, norm_options=norm_options)
    ds = data.load(cfg.dataset, layout="nhwc")
    return ModelSpec(
        kind="cnn",
        channels=cfg.channels,
        dense=cfg.hidden,
        input_shape=tuple(ds.input_shape),
        num_classes=ds.num_classes,
        activation=cfg.activation,
        norm=norm,
        norm_options=norm_options,
        init=cfg.init,
        init_std=cfg.init_std,
    )


def probe_batch_size(cfg: SanturkarConfig) -> int:
    return cfg.probe_batch or cfg.batch_size


def trial(
    cfg: SanturkarConfig,
    norm: str,
    *,
    tag: str,
    seed: int,
    probes: tuple[str, ...],
    norm_options: tuple[tuple[str, Any], ...] = (),
    **overrides: Any,
) -> Trial:
    return make_trial(
        cfg,
        model_spec(cfg, norm, norm_options),
        seed=seed,
        tag=tag,
        probes=probes,
        probe_batch_size=probe_batch_size(cfg),
        **overrides,
    )


def validate(cfg: SanturkarConfig) -> None:
    if cfg.model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {cfg.model!r}")
    if cfg.model == "cnn" and (not cfg.channels or any(c <= 0 for c in cfg.channels)):
        raise ConfigError(f"channels must be positive, got {cfg.channels}")
    if cfg.probe_batch < 0 or probe_batch_size(cfg) < 2:
        raise ConfigError(f"probe_batch must be 0 (= batch_size) or >= 2, got {cfg.probe_batch}")


def history(rs: list[TrialResult], key: str) -> np.ndarray:
    """(S, E, ...) float array of one history key over the seeds of an arm."""
    return np.stack([np.asarray(r.history[key], np.float64) for r in rs])


def steps(rs: list[TrialResult]) -> np.ndarray:
    return np.asarray(rs[0].history["step"])


def num(x: float | None, fmt: str = ".3g") -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, fmt)
