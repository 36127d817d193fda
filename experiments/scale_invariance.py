"""`scale-invariance`: a BN layer's output does not depend on the scale of its weights, and the
gradient w.r.t. a*W is (1/a) times the gradient w.r.t. W (Ioffe & Szegedy 2015, Sec. 3.3; used
by Santurkar et al. 2018, Sec. 3).

The engine's "scale_invariance" probe (bnexp.santurkar_probes) scales the weight of one hidden layer at a
time by each a in `scales` and measures, in train mode on a fixed probe batch, that layer's norm
output change ||out(aW) - out(W)|| / ||out(W)||, the gradient ratio ||grad(aW)|| / ||grad(W)|| of
the training loss (1/a when invariant) and ||a grad(aW) - grad(W)|| / ||grad(W)||, at every
evaluation point of a short training run (so the measurement is of a trained network, not only
of the initialization).

The identity BN(aWu) = BN(Wu) holds exactly for eps = 0 only: with eps it reads
BN_eps(aWu) = BN_{eps/a^2}(Wu), a relative change of about eps/(2 var) |1 - 1/a^2|. The arms are
therefore: "bn" (BN with eps = 0: the identity the paper states), "bn-eps" (BN with the library's
eps = `bn_eps`, to show the size of that effect) and "baseline" (no norm: the measurement must see
the change there, or it proves nothing).

Reproduced when, for "bn" at every scale, layer, point and seed, the output change is at most
`out_tol` (float32 noise: about 100 ulp) and |a * ratio - 1| at most `grad_tol`, while the
baseline's output change exceeds `out_tol` (otherwise: inconclusive).

This is an identity of a correct BN, not an empirical claim of the literature: the registry marks
it `identity=True`, and `bnexp reproduce`'s report lists it among the identity checks, apart from
the tally of claims (SCIENCE.md, "Verdicts").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import plots, stats
from bnexp.sweep import TrialResult
from experiments import common, santurkar
from experiments import conditions as cond
from experiments.base import Analysis, ConfigError, Experiment, Table, Verdict

CLAIM = "BN output is invariant to the weight scale and its gradient scales as 1/a"
FLOOR = 1e-9  # plotted instead of an exact 0 on the log axis


@dataclass(frozen=True)
class ScaleInvarianceConfig(santurkar.SanturkarConfig):
    scales: tuple[float, ...] = (0.1, 0.5, 2.0, 10.0)
    out_tol: float = 1e-5  # relative output change that counts as float32 noise
    grad_tol: float = 1e-4  # |a * grad ratio - 1| that counts as "1/a"
    bn_eps: float | None = 1e-5  # eps of the "bn-eps" arm (the norms' default); none: no such arm


PRESETS = {
    "smoke": ScaleInvarianceConfig(
        preset="smoke",
        dataset="synthetic",
        seeds=1,
        steps=40,
        eval_every=20,
        hidden=(32, 32),
        bn_eps=None,
    ),
    "quick": ScaleInvarianceConfig(preset="quick", steps=300, eval_every=100, seeds=5),
    "paper": ScaleInvarianceConfig(preset="paper", eval_every=500, **santurkar.PAPER_CNN),
}


def arms(cfg: ScaleInvarianceConfig) -> tuple[tuple[str, str, tuple], ...]:
    """(tag, norm, norm options) of each arm."""
    out = (("baseline", "none", ()), ("bn", "batch", (("eps", 0.0),)))
    if cfg.bn_eps is not None:
        out += (("bn-eps", "batch", (("eps", float(cfg.bn_eps)),)),)
    return out


def label(cfg: ScaleInvarianceConfig, tag: str) -> str:
    if tag == "bn-eps" and cfg.bn_eps is not None:
        return f"bn, eps={cfg.bn_eps:g}"
    return "bn, eps=0" if tag == "bn" else tag


def trials(cfg: ScaleInvarianceConfig):
    scales = (("scale_invariance", (("scales", tuple(float(a) for a in cfg.scales)),)),)
    return [
        santurkar.trial(
            cfg,
            norm,
            tag=tag,
            seed=s,
            probes=("scale_invariance",),
            probe_options=scales,
            norm_options=opts,
        )
        for tag, norm, opts in arms(cfg)
        for s in range(cfg.seeds)
    ]


def validate(cfg: ScaleInvarianceConfig) -> None:
    santurkar.validate(cfg)
    if not cfg.scales or any(a <= 0 for a in cfg.scales):
        raise ConfigError(f"scales must be positive, got {cfg.scales}")
    if cfg.bn_eps is not None and cfg.bn_eps < 0:
        raise ConfigError(f"bn_eps must be >= 0, got {cfg.bn_eps}")


def _measures(rs: list[TrialResult], scales: tuple[float, ...]) -> dict[str, np.ndarray]:
    """(S, E, H, K) arrays: output change, gradient ratio, |a ratio - 1|, gradient error."""
    a = np.asarray(scales, np.float64)
    out = {k: santurkar.history(rs, f"si_{k}") for k in ("out_diff", "grad_ratio", "grad_err")}
    out["ratio_dev"] = np.abs(a * out["grad_ratio"] - 1.0)
    return out


def _max(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else None


def analyze(cfg: ScaleInvarianceConfig, results: list[TrialResult]) -> Analysis:
    by = common.arms(results)
    rows, worst = [], {}
    for tag, _, _ in arms(cfg):
        m = _measures(by[tag], cfg.scales)
        for k, a in enumerate(cfg.scales):
            ratio = m["grad_ratio"][..., k]
            ratio = ratio[np.isfinite(ratio)]
            # one typed float per cell (issue 13); the renderers format each (.4g: 1.2e-07)
            row: dict[str, Any] = {
                "arm": tag,
                "a": a,
                "max output change": _max(m["out_diff"][..., k]),
                "grad ratio": float(ratio.mean()) if ratio.size else None,
                "1/a": 1 / a,
                "max |a·ratio - 1|": _max(m["ratio_dev"][..., k]),
                "max grad error": _max(m["grad_err"][..., k]),
            }
            rows.append(row)
        worst[tag] = (_max(m["out_diff"]), _max(m["ratio_dev"]))
    table = Table(
        "Scaling one hidden layer's weights by a (worst case over layers, evaluation "
        "points and seeds; ratio: mean)",
        [
            "arm",
            "a",
            "max output change",
            "grad ratio",
            "1/a",
            "max |a·ratio - 1|",
            "max grad error",
        ],
        rows,
    )
    (bn_out, bn_dev), (base_out, _) = worst["bn"], worst["baseline"]
    ev = (
        f"BN (eps=0): max output change {santurkar.num(bn_out, '.2e')} (<= {cfg.out_tol:g}?), "
        f"max |a·ratio - 1| {santurkar.num(bn_dev, '.2e')} (<= {cfg.grad_tol:g}?); baseline: max "
        f"output change {santurkar.num(base_out, '.2e')}"
    )
    if "bn-eps" in worst:
        eps_out, eps_dev = worst["bn-eps"]
        ev += (
            f"; BN with eps={cfg.bn_eps:g} (not judged): max output change "
            f"{santurkar.num(eps_out, '.2e')}, max |a·ratio - 1| {santurkar.num(eps_dev, '.2e')}"
        )
    return Analysis([table], Verdict(CLAIM, conditions(cfg, worst), ev))


# An identity check, not an empirical claim (SCIENCE.md: reported apart from the tally): the worst
# case over every scale, layer, evaluation point and seed must sit at float32 noise.
OUT_REASON = (
    "Sec. 3.3: BN(aWu) = BN(Wu) exactly for eps = 0; in float32 the output change must stay at "
    "rounding noise (out_tol, about 100 ulp)"
)
GRAD_REASON = "Sec. 3.3: dBN/d(aW) = (1/a) dBN/dW, so |a * ratio - 1| must stay below grad_tol"
SEES_REASON = (
    "without BN scaling the weights changes the output: the measurement must see that, or it "
    "proves nothing"
)


def conditions(cfg: ScaleInvarianceConfig, worst: dict) -> tuple:
    (bn_out, bn_dev), (base_out, _) = worst["bn"], worst["baseline"]
    sees = cond.worst_case(
        "max output change, baseline",
        base_out,
        cfg.out_tol,
        direction=1,
        reason=SEES_REASON,
        unit="relative change",
    )
    if sees.outcome == stats.NOT_REPRODUCED:  # the measurement cannot tell: no finding either way
        sees = dataclasses.replace(sees, ci95=(None, None), reason=SEES_REASON + " (it did not)")
    return (
        cond.worst_case(
            "max output change, BN (eps=0)",
            bn_out,
            cfg.out_tol,
            reason=OUT_REASON,
            unit="relative change",
        ),
        cond.worst_case(
            "max |a * grad ratio - 1|, BN (eps=0)",
            bn_dev,
            cfg.grad_tol,
            reason=GRAD_REASON,
            unit="relative error",
        ),
        sees,
    )


def plot(cfg: ScaleInvarianceConfig, results: list[TrialResult], analysis: Analysis, out: Path):
    by = common.arms(results)
    x = santurkar.steps(by["bn"])

    def members(tag: str, key: str) -> np.ndarray:  # (S*H*K, E), floored for the log axis
        v = _measures(by[tag], cfg.scales)[key]
        v = np.moveaxis(v, 1, -1).reshape(-1, v.shape[1])
        return np.where(np.isfinite(v), np.maximum(v, FLOOR), np.nan)

    tags = [t for t, _, _ in arms(cfg)]
    panels = {
        "relative output change": {label(cfg, t): members(t, "out_diff") for t in tags},
        "|a · grad ratio - 1|": {label(cfg, t): members(t, "ratio_dev") for t in tags},
    }
    grid = ", ".join(f"{a:g}" for a in cfg.scales)
    return [
        plots.bands_over_steps_panels(
            x,
            panels,
            out / "scale_invariance.png",
            logy=True,
            ylabel=f"relative deviation (floor {FLOOR:g})",
            title=f"W -> aW, a in {{{grid}}}: band over seeds, layers and a",
        )
    ]


EXPERIMENT = Experiment(
    name="scale-invariance",
    claim=CLAIM,
    source="Ioffe & Szegedy 2015, Sec. 3.3; Santurkar et al. 2018, Sec. 3",
    config_type=ScaleInvarianceConfig,
    presets=PRESETS,
    trials=trials,
    analyze=analyze,
    plot=plot,
    validate=validate,
    paper="no number: an identity, BN(aWu) = BN(Wu) and dBN/d(aW) = (1/a) dBN/dW (ignoring eps)",
    identity=True,
    shows="per arm and scale a: worst relative output change, gradient ratio vs 1/a, and the "
    "gradient error",
)
