"""A sweep file as an Experiment: its trials, the combinations checked, the analysis (a results
table per setting and one verdict per stated claim), the plots; `load` reads a file or resumes.

A claim is a condition in the verdict model's form (bnexp/stats.py, experiments/conditions.py),
measured seed by seed on two settings of the grid, A and B (same seeds, same data order, same
initial weights where the shapes agree), or on every value of one axis (``across``):

    final_accuracy   A - B final eval-mode accuracy (a diverged member at chance, 0.1)
    steps_to_target  log speedup steps_B / steps_A to ``target`` (censored; threshold a ratio)
    train_eval_gap   A's gap - B's gap (batch-statistics minus running-statistics accuracy)
    divergence       share of seeds in which A diverges (and B does not, when B is given)

with the claim's direction (+1: effect > threshold, -1: <, 0: |effect| < threshold), threshold,
optional negligible band and its reason, all written in the file before the run that judges it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import metrics, plots, results, stats
from bnexp.errors import UsageError
from bnexp.models import ModelSpec
from bnexp.sweep import Trial, TrialResult
from experiments import common
from experiments import conditions as cond
from experiments.base import Analysis, Experiment, Table, input_dim
from experiments.sweepfile import (
    FILE_NAME,
    Setting,
    Spec,
    SweepConfig,
    base_config,
    fmt,
    norm_options,
    read,
)

LABEL = {
    "final_accuracy": "final accuracy, {a} - {b}",
    "steps_to_target": "speedup to {t:.0%}, {a} over {b}",
    "train_eval_gap": "train/eval gap, {a} - {b}",
    "divergence": "share of seeds where {a} diverges",
}


# ---- claims: which settings, which condition --------------------------------------------------


def _matches(s: Setting, sel: dict[str, Any]) -> bool:
    point = dict(s.point)
    for k, want in sel.items():
        have = s.arm if k == "arm" else point[k]
        want = tuple(want) if isinstance(want, list) else want
        if isinstance(have, float) and isinstance(want, int) and not isinstance(want, bool):
            want = float(want)
        if have != want:
            return False
    return True


def select(spec: Spec, claim: dict, sel: dict[str, Any], where: tuple) -> list[tuple]:
    """[(value of the across axis or None, the one setting sel picks)]; an error when sel
    picks no setting or several (it must name the arm and a value of every other axis)."""
    settings = spec.settings(SweepConfig())
    across = claim.get("across")
    if across in sel:
        raise spec.error(
            (*where, across), f"is the claim's across axis: leave it out of {where[-1]}"
        )
    values = [None]
    if across is not None:
        values = list(dict.fromkeys(dict(s.point)[across] for s in settings))
    out = []
    for v in values:
        hits = [s for s in settings if _matches(s, sel if v is None else {**sel, across: v})]
        if len(hits) != 1:
            tags = ", ".join(s.tag for s in hits[:4])
            raise spec.error(
                where,
                f"selects {len(hits)} settings{' (' + tags + ', ...)' if hits else ''}; name the "
                "arm and a value of every axis with more than one value",
            )
        out.append((v, hits[0]))
    return out


def pairs(spec: Spec, i: int) -> list[tuple[Any, Setting, Setting | None]]:
    """(across value, A, B) for every condition of claim i (B None: divergence of A alone)."""
    c, where = spec.claims[i], ("claims", i)
    flat = _flat_selector
    a = select(spec, c, flat(c["a"]), (*where, "a"))
    b = select(spec, c, flat(c["b"]), (*where, "b")) if "b" in c else [(v, None) for v, _ in a]
    out = [(v, sa, sb) for (v, sa), (_, sb) in zip(a, b, strict=True)]
    if any(sb is not None and sa.tag == sb.tag for _, sa, sb in out):
        raise spec.error((*where, "b"), "selects the same setting as a: nothing to compare")
    return out


def _flat_selector(sel: dict[str, Any]) -> dict[str, Any]:
    out = dict(sel)
    opts = out.pop("norm_options", None)
    if isinstance(opts, dict):
        out.update({f"norm_options.{k}": v for k, v in opts.items()})
    return out


def condition(c: dict, name: str, a: Sequence[TrialResult], b: Sequence[TrialResult] | None):
    """The stats.Condition of one claim on the results of settings A and B."""
    th, d, reason = c["threshold"], c.get("direction", 1), c["reason"]
    neg = tuple(c["negligible"]) if c.get("negligible") else None
    metric = c["metric"]
    if metric == "final_accuracy":
        return cond.accuracy_difference(name, a, b, th, reason=reason, direction=d, negligible=neg)
    if metric == "train_eval_gap":
        gaps = [(common.train_eval_gap(x), common.train_eval_gap(y)) for x, y in cond.paired(a, b)]
        vals = [None if x is None or y is None else x - y for x, y in gaps]
        return cond.values_condition(
            name, vals, th, reason=reason, unit=cond.ACC, direction=d, negligible=neg
        )
    if metric == "steps_to_target":
        band = None if d == 0 else neg or (1 / 1.1, 1.1)
        return cond.speedup(
            name, b, a, c["target"], ratio=th, reason=reason, direction=d, negligible=band
        )
    if b is None:
        k, n = sum(r.diverged_at is not None for r in a), len(a)
    else:
        both = cond.paired(a, b)
        k = sum(x.diverged_at is not None and y.diverged_at is None for x, y in both)
        n = len(both)
    iv = stats.proportion_interval(k, n)
    return stats.Condition.from_interval(
        name, iv, th, direction=d, negligible=neg, reason=reason, unit="proportion"
    )


def verdicts(spec: Spec, by_tag: dict[str, list[TrialResult]]) -> list[stats.Verdict]:
    """One Verdict per stated claim (one condition per value of its across axis)."""
    out = []
    for i, c in enumerate(spec.claims):
        conds, evidence = [], []
        for v, sa, sb in pairs(spec, i):
            name = LABEL[c["metric"]].format(a=sa.tag, b=sb.tag if sb else "", t=c.get("target", 0))
            name += f" and {sb.tag} does not" if sb and c["metric"] == "divergence" else ""
            name += "" if v is None else f" [{c['across']}={fmt(v)}]"
            conds.append(condition(c, name, by_tag[sa.tag], by_tag[sb.tag] if sb else None))
            n = len(by_tag[sa.tag])
            evidence.append(f"A = {sa.tag}" + (f", B = {sb.tag}" if sb else "") + f" ({n} seeds)")
        out.append(stats.Verdict(c["name"], tuple(conds), "; ".join(evidence)))
    return out


# ---- the experiment ----------------------------------------------------------------------------


def trial(s: Setting, seed: int) -> Trial:
    """One trial of a setting, field for field as base.mlp / base.make_trial build it."""
    v = s.values
    model = ModelSpec(
        kind="mlp",
        widths=(input_dim(v["dataset"]), *v["hidden"], 10),
        activation=v["activation"],
        norm=v["norm"],
        norm_options=norm_options(v),
        placement=v["placement"],
        init=v["init"],
        init_std=v["init_std"],
    )
    keys = ("dataset", "batch_size", "steps", "eval_every", "eval_per_decade", "optimizer", "lr")
    return Trial(
        model=model,
        **{k: v[k] for k in (*keys, "momentum", "init_scale")},
        seed=seed,
        data_seed=v["data_seed"] + seed,
        tag=s.tag,
        data_options=(("n_train", v["train_size"]),) if v["train_size"] else (),
    )


def trials(spec: Spec, cfg: SweepConfig) -> list[Trial]:
    return [trial(s, seed) for s in spec.settings(cfg) for seed in range(cfg.seeds)]


def buildable(spec: Spec, cfg: SweepConfig) -> None:
    """Every setting is a model the engine can build and train: the norm takes its options at
    every width, the batch fits the training set (one line naming the setting, exit 2)."""
    from bnexp import data, norms

    for s in spec.settings(cfg):
        v = s.values
        try:
            t = trial(s, 0)
            norm = norms.get(v["norm"], **dict(norm_options(v)))
            for w in v["hidden"]:
                norm.init(w)
            opts = dict(t.data_options)
            n = len(data.load(t.dataset, **opts).y_train)
        except (ValueError, TypeError) as e:
            keys = ("norm_options", "norm", "hidden", "dataset", "train_size")
            keys = tuple(k for k in spec.axis_paths if k.startswith("norm_options.")) + keys
            raise spec.error(
                spec.where(s.arm, keys), f"setting {s.tag!r} cannot be built: {e}"
            ) from None
        if v["batch_size"] > n:
            raise spec.error(
                spec.where(s.arm, ("batch_size", "train_size", "dataset")),
                f"setting {s.tag!r}: batch_size {v['batch_size']} > {n} training examples",
            )


def analyze(spec: Spec, cfg: SweepConfig, rs: list[TrialResult]) -> Analysis:
    by_tag = common.arms(rs)
    rows = []
    for s in spec.settings(cfg):
        got = by_tag[s.tag]
        row: dict[str, Any] = {"setting": s.tag, "arm": s.arm, **_short(s.point)}
        row["final accuracy"] = metrics.summarize_final_accuracy(got).to_dict()
        for t in cfg.targets:
            row[f"steps to {t:.0%}"] = common.steps_dict(common.arm_steps(got, t))
        gaps = [common.train_eval_gap(r) for r in got if r.diverged_at is None]
        row["train/eval gap (acc)"] = metrics.summarize(gaps).to_dict()
        rows.append(row)
    axes = list(_short(spec.settings(cfg)[0].point)) if rows else []
    cols = ["setting", *axes, "final accuracy", *(f"steps to {t:.0%}" for t in cfg.targets)]
    table = Table(f"{spec.name}: results by setting", [*cols, "train/eval gap (acc)"], rows)
    return Analysis([table], verdicts(spec, by_tag) if spec.claims else None)


def _short(point: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """Axis values by the last part of their key (momentum for norm_options.momentum), lists
    as text (hidden 100-100)."""
    short = [k.rsplit(".", 1)[-1] for k, _ in point]
    return {
        (s if short.count(s) == 1 else k): fmt(v) if isinstance(v, tuple) else v
        for s, (k, v) in zip(short, point, strict=True)
    }


def plot(spec: Spec, cfg: SweepConfig, rs: list[TrialResult], analysis: Analysis, out: Path):
    """Learning curves, one figure per evaluation schedule (settings of equal steps together)."""
    by_steps: dict[tuple, dict[str, np.ndarray]] = {}
    for tag, got in common.arms(rs).items():
        key = tuple(int(x) for x in got[0].history["step"])
        by_steps.setdefault(key, {})[tag] = np.stack(
            [np.asarray(r.history["test_acc"], float) for r in got]
        )
    paths = []
    for i, (steps, curves) in enumerate(by_steps.items()):
        name = "learning_curves.png" if len(by_steps) == 1 else f"learning_curves_{i + 1}.png"
        paths.append(
            plots.learning_curves(steps, curves, out / name, title=f"{spec.name}: test accuracy")
        )
    return paths


def experiment(spec: Spec) -> Experiment:
    claim = spec.description or "; ".join(c["name"] for c in spec.claims) or "no claim stated"
    return Experiment(
        name=spec.name,
        claim=claim,
        source=f"sweep file {spec.path}",
        config_type=SweepConfig,
        presets={"sweep": SweepConfig()},
        trials=lambda cfg: trials(spec, cfg),
        analyze=lambda cfg, rs: analyze(spec, cfg, rs),
        plot=lambda cfg, rs, analysis, out: plot(spec, cfg, rs, analysis, out),
        validate=lambda cfg: buildable(spec, cfg),
        shows="per setting: final accuracy, steps to each target, train/eval gap; a verdict per claim",
        files=lambda cfg: {FILE_NAME: spec.text},
    )


def load(
    file: Path | None, *, resume: Path | None, seeds: int | None, steps: int | None
) -> tuple[Experiment, SweepConfig]:
    """The experiment and config of a sweep file, or of the run directory `resume` continues
    (from its copied file and saved config; a copy edited since the run began is refused)."""
    if resume is None:
        if file is None:
            raise UsageError("give a sweep file (bnexp sweep FILE.toml) or --resume RUN_DIR")
        spec = read(file)
        sha = hashlib.sha256(spec.text.encode()).hexdigest()
        return experiment(spec), base_config(spec, seeds=seeds, steps=steps, sha=sha)
    if file is not None or seeds is not None or steps is not None:
        raise UsageError(
            "--resume continues a sweep from its own copy: give no FILE, --seeds, --steps"
        )
    copy = Path(resume) / FILE_NAME
    if not copy.is_file():
        raise UsageError(f"--resume {resume}: not a sweep run directory (no {FILE_NAME})")
    spec = read(copy)
    cfg = results.dataclass_from_dict(SweepConfig, results.load_run(resume).config)
    if cfg.source_sha256 != hashlib.sha256(spec.text.encode()).hexdigest():
        raise UsageError(f"{copy} was edited after the run began; restore it or start a new sweep")
    return experiment(spec), cfg
