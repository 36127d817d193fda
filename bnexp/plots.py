"""Matplotlib figures (PNG, Agg, no pyplot state) for the experiments.

Every function takes plain NumPy data, labels and an output path, writes one PNG and returns its
path. Series are given per arm as a mapping ``{arm: array}`` where the array is ``(N,)`` (one
member) or ``(members, N)`` (seeds, or the points of a step-size grid): the line is the mean over
the finite members and the shaded band their min..max. NaN (a diverged member after divergence)
is skipped, never drawn as zero. Accuracies and errors are fractions, shown as percentages. An
arm keeps its colour across the panels of a figure. matplotlib is imported lazily so that
importing bnexp stays fast.

Over 300 lines: every figure shares the palette, band and axis helpers at the top; the
forest plot (ForestRow .. _forest_tick) is the piece that could stand alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import verdicts as V
from bnexp.atomic import write_atomic
from bnexp.metrics import band

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _color_map(*series: Mapping[str, Any]) -> dict[str, str]:
    """One colour per arm name, in first-seen order, shared by every panel of a figure."""
    names = list(dict.fromkeys(name for m in series for name in m))
    return {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(names)}


def _figure(ncols: int = 1, width: float = 7.0, height: float = 4.5, sharey: bool = False):
    from matplotlib.figure import Figure  # lazy, and no pyplot: safe in threads and headless

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Any, path: Path) -> Path:
    # atomically, like every bnexp file: an interrupt mid-plot leaves the old PNG or none
    return write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"))


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(xmax=1.0))


def _pct(t: float) -> str:
    return f"{t:.0%}" if round(100 * t, 6).is_integer() else f"{t:.1%}"


def _members(y: Any, n: int, name: str) -> np.ndarray:
    a = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if a.ndim != 2 or a.shape[1] != n:
        raise ValueError(f"{name}: expected shape ({n},) or (members, {n}), got {np.shape(y)}")
    return a


def _line_band(
    ax: Any, x: np.ndarray, y: Any, label: str, color: str, marker: str | None = None
) -> tuple[np.ndarray, bool]:
    """Mean line and min..max band of one arm: (mean, NaN where no member is finite; banded?)."""
    mean, lo, hi, count = band(_members(y, len(x), label))
    ax.plot(x, mean, color=color, label=label, marker=marker, lw=1.8, ms=5)
    banded = bool(np.max(count, initial=0) > 1)
    if banded:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    return mean, banded


def _legend(ax: Any, **kw: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", title_fontsize="small", framealpha=0.9, **kw)


def _finish(ax: Any, title: str | None, xlabel: str, ylabel: str) -> None:
    if title:
        ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, which="major")


def _band_title(banded: bool) -> str | None:
    return "mean over seeds, band min–max" if banded else None


def _mark_missing(
    ax: Any, x: np.ndarray, mean: np.ndarray, color: str, y: float | None, marker: str, label: str
) -> None:
    """Markers where an arm has no finite value: at data y, or on the bottom edge when y is None."""
    miss = ~np.isfinite(mean)
    if not miss.any():
        return
    if y is None:  # x in data units, y in axes fraction: the bottom edge, whatever the scale
        ax.scatter(x[miss], np.full(miss.sum(), 0.02), transform=ax.get_xaxis_transform(),
                   marker=marker, s=60, color=color, label=label, clip_on=False, zorder=3)  # fmt: skip
    else:
        ax.scatter(x[miss], np.full(miss.sum(), y), marker=marker, s=60, facecolors="none",
                   edgecolors=color, label=label, zorder=3)  # fmt: skip


# ---- the figures -----------------------------------------------------------------------------


def learning_curves(
    steps: Sequence[int] | np.ndarray,
    curves: Mapping[str, Any],
    path: Path,
    *,
    title: str = "Test accuracy during training",
    ylabel: str = "test accuracy (eval mode)",
    targets: Sequence[float] = (),
) -> Path:
    """Ioffe & Szegedy Fig. 1a: accuracy vs steps per arm, mean over seeds and min..max band."""
    x = np.asarray(steps, dtype=np.float64)
    fig, (ax,) = _figure()
    colors = _color_map(curves)
    banded = [_line_band(ax, x, y, arm, colors[arm])[1] for arm, y in curves.items()]
    for t in targets:  # labelled at the left edge, where accuracy curves are still low
        ax.axhline(t, color="0.4", ls=":", lw=1)
        ax.annotate(f"target {_pct(t)}", (0.01, t), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize="x-small", color="0.3")  # fmt: skip
    _percent_axis(ax.yaxis)
    _finish(ax, title, "training step", ylabel)
    _legend(ax, loc="lower right", title=_band_title(any(banded)))
    return _save(fig, path)


def train_test_curves(
    steps: Sequence[int] | np.ndarray,
    train: Mapping[str, Any],
    test: Mapping[str, Any],
    path: Path,
    *,
    title: str = "Train and test loss",
    ylabel: str = "cross-entropy loss (eval mode)",
) -> Path:
    """Train (solid) and test (dashed) curves per arm in the arm's colour, mean over seeds and
    min..max band, log y axis (losses near 0 and their gap both visible): an overfitting arm's
    dashed line rises away from its solid one."""
    x = np.asarray(steps, dtype=np.float64)
    fig, (ax,) = _figure()
    colors = _color_map(train, test)
    banded = [_line_band(ax, x, y, f"{arm} train", colors[arm])[1] for arm, y in train.items()]
    for arm, y in test.items():
        banded.append(_line_band(ax, x, y, f"{arm} test", colors[arm])[1])
        ax.get_lines()[-1].set_linestyle("--")
    ax.set_yscale("log")
    _finish(ax, title, "training step", ylabel)
    _legend(ax, loc="lower left", ncols=2, title=_band_title(any(banded)))
    return _save(fig, path)


def percentile_bands(
    steps: Sequence[int] | np.ndarray,
    percentiles: Mapping[str, Any],
    path: Path,
    *,
    title: str = "Sigmoid input distribution over training (15th, 50th, 85th percentiles)",
    ylabel: str = "sigmoid input",
) -> Path:
    """Ioffe & Szegedy Fig. 1b,c: one panel per arm, 15/50/85th percentiles over steps.

    Each value is (E, 3) or (seeds, E, 3) (averaged over the finite seeds). Panels share the y
    axis so that drift is comparable across arms.
    """
    x = np.asarray(steps, dtype=np.float64)
    arms = list(percentiles)
    colors = _color_map(percentiles)
    fig, axes = _figure(len(arms), width=4.2 * len(arms) + 0.6, height=4.0, sharey=True)
    for i, (ax, arm) in enumerate(zip(axes, arms, strict=True)):
        p = np.asarray(percentiles[arm], dtype=np.float64)
        if p.ndim == 3:
            p = np.stack([band(p[..., k])[0] for k in range(3)], axis=-1)
        if p.shape != (len(x), 3):
            raise ValueError(f"{arm}: expected ({len(x)}, 3) percentiles, got {p.shape}")
        c = colors[arm]
        ax.fill_between(x, p[:, 0], p[:, 2], color=c, alpha=0.2, lw=0)
        ax.plot(x, p[:, 2], color=c, lw=1, ls=":", label="85th")
        ax.plot(x, p[:, 1], color=c, lw=2, label="50th")
        ax.plot(x, p[:, 0], color=c, lw=1, ls="--", label="15th")
        _finish(ax, arm, "training step", ylabel if i == 0 else "")
        if i == 0:
            _legend(ax, loc="best", title="percentile")
    fig.suptitle(title)
    return _save(fig, path)


def lr_sweep(
    lrs: Sequence[float] | np.ndarray,
    steps_to_target: Mapping[str, Any],
    final_accuracy: Mapping[str, Any],
    path: Path,
    *,
    target: float | None = None,
    total_steps: int | None = None,
    title: str = "Learning-rate sweep",
) -> Path:
    """Steps-to-target and final accuracy vs learning rate (log x), one line per arm.

    NaN steps (target never reached) are drawn as open triangles at total_steps (when given);
    NaN final accuracy (every seed diverged) as crosses on the bottom edge.
    """
    x = np.asarray(lrs, dtype=np.float64)
    fig, (ax_s, ax_a) = _figure(2, width=11.0, height=4.5)
    colors = _color_map(steps_to_target, final_accuracy)
    if total_steps is not None:
        ax_s.axhline(total_steps, color="0.4", ls=":", lw=1, label=f"budget ({total_steps} steps)")
    banded = False
    for arm, y in steps_to_target.items():
        mean, b = _line_band(ax_s, x, y, arm, colors[arm], marker="o")
        banded |= b
        if total_steps is not None:
            _mark_missing(ax_s, x, mean, colors[arm], total_steps, "^", f"{arm}: not reached")
    for arm, y in final_accuracy.items():
        mean, b = _line_band(ax_a, x, y, arm, colors[arm], marker="o")
        banded |= b
        _mark_missing(ax_a, x, mean, colors[arm], None, "x", f"{arm}: diverged")
    tgt = " target" if target is None else f" {_pct(target)}"
    _finish(ax_s, f"Steps to{tgt} accuracy", "learning rate", "steps (fewer is faster)")
    _finish(ax_a, "Final test accuracy", "learning rate", "final test accuracy (eval mode)")
    _percent_axis(ax_a.yaxis)
    for ax in (ax_s, ax_a):
        ax.set_xscale("log")
        _legend(ax, loc="best", title=_band_title(banded))
    fig.suptitle(title)
    return _save(fig, path)


def accuracy_vs_init_scale(
    scales: Sequence[float] | np.ndarray,
    accuracy: Mapping[str, Any],
    path: Path,
    *,
    title: str = "Final accuracy vs initial weight scale",
    xlabel: str = "init scale (multiplier of the initial weights)",
    ylabel: str = "final test accuracy (eval mode)",
) -> Path:
    """Final accuracy vs init scale (log x) per arm; crosses on the bottom edge where diverged."""
    x = np.asarray(scales, dtype=np.float64)
    fig, (ax,) = _figure()
    colors = _color_map(accuracy)
    banded = False
    for arm, y in accuracy.items():
        mean, b = _line_band(ax, x, y, arm, colors[arm], marker="o")
        banded |= b
        _mark_missing(ax, x, mean, colors[arm], None, "x", f"{arm}: diverged")
    ax.set_xscale("log")
    _percent_axis(ax.yaxis)
    _finish(ax, title, xlabel, ylabel)
    _legend(ax, loc="best", title=_band_title(banded))
    return _save(fig, path)


def error_vs_batch_size(
    batch_sizes: Sequence[int] | np.ndarray,
    error: Mapping[str, Any],
    path: Path,
    *,
    title: str = "Test error vs batch size",
    ylabel: str = "test error (eval mode)",
) -> Path:
    """Wu & He Fig. 1 style: error per norm vs batch size, log2 x with large batches left."""
    x = np.asarray(batch_sizes, dtype=np.float64)
    fig, (ax,) = _figure()
    colors = _color_map(error)
    banded = False
    for norm, y in error.items():
        mean, b = _line_band(ax, x, y, norm, colors[norm], marker="o")
        banded |= b
        _mark_missing(ax, x, mean, colors[norm], None, "x", f"{norm}: diverged")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{b:g}" for b in x])
    ax.minorticks_off()
    ax.set_xlim(x.max() * 1.25, x.min() / 1.25)  # decreasing to the right, as in the paper
    _percent_axis(ax.yaxis)
    _finish(ax, title, "batch size (examples per batch, log2 scale)", ylabel)
    _legend(ax, loc="best", title=_band_title(banded))
    return _save(fig, path)


def panels_vs(
    x: Sequence[float] | np.ndarray,
    panels: Mapping[str, Mapping[str, Any]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    log_x: bool = False,
    log_y: bool = False,
    percent: bool = False,
    reference: float | None = None,
) -> Path:
    """One panel per setting ({panel: {arm: (seeds, N) or (N,)}}), a line per arm over x with its
        min..max band over the seeds; arms keep their colours across panels; crosses on the bottom
        edge where an arm has no finite value. A log y axis shows only positive values; ``reference``
    draws a dotted horizontal line (e.g. a ratio of 1)."""
    xs = np.asarray(x, dtype=np.float64)
    colors = _color_map(*panels.values())
    fig, axes = _figure(len(panels), width=4.6 * len(panels) + 0.8, height=4.2, sharey=True)
    for i, (ax, (name, arms)) in enumerate(zip(axes, panels.items(), strict=True)):
        banded = False
        if reference is not None:
            ax.axhline(reference, color="0.4", ls=":", lw=1)
        for arm, y in arms.items():
            y = np.asarray(y, dtype=np.float64)
            if log_y:
                y = np.where(y > 0, y, np.nan)
            mean, b = _line_band(ax, xs, y, arm, colors[arm], marker="o")
            banded |= b
            _mark_missing(ax, xs, mean, colors[arm], None, "x", f"{arm}: no value")
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        if percent:
            _percent_axis(ax.yaxis)
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        _finish(ax, name, xlabel, ylabel if i == 0 else "")
        _legend(ax, loc="best", title=_band_title(banded))
    fig.suptitle(title)
    return _save(fig, path)


def versus_depth(
    depths: Sequence[int] | np.ndarray,
    panels: Mapping[str, Mapping[str, Any]],
    path: Path,
    *,
    ylabel: str,
    title: str,
    log_y: bool = False,
    percent: bool = False,
    reference: float | None = None,
) -> Path:
    """A measure vs network depth (hidden layers), one panel per setting, a line per arm."""
    return panels_vs(depths, panels, path, xlabel="depth (hidden layers)", ylabel=ylabel,
                     title=title, log_y=log_y, percent=percent, reference=reference)  # fmt: skip


def bands_over_steps(
    steps: Sequence[int] | np.ndarray,
    series: Mapping[str, Any],
    path: Path,
    *,
    title: str,
    ylabel: str,
    logy: bool = False,
    show_mean: bool = True,
) -> Path:
    """Santurkar et al. Fig. 3/4 style: a shaded min..max band per arm over steps.

    series[arm] is (members, E): seeds, or the points of a step-size grid at each step.
    """
    return bands_over_steps_panels(
        steps, {"": series}, path, title=title, ylabel=ylabel, logy=logy, show_mean=show_mean
    )


def bands_over_steps_panels(
    steps: Sequence[int] | np.ndarray,
    panels: Mapping[str, Mapping[str, Any]],
    path: Path,
    *,
    title: str,
    ylabel: str,
    logy: bool = False,
    show_mean: bool = True,
) -> Path:
    """bands_over_steps with one panel per key of `panels` (e.g. one per layer), shared y."""
    x = np.asarray(steps, dtype=np.float64)
    names = list(panels)
    width = 7.0 if len(names) == 1 else 4.2 * len(names) + 0.6
    fig, axes = _figure(len(names), width=width, height=4.5, sharey=True)
    colors = _color_map(*panels.values())
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        for arm, y in panels[name].items():
            mean, lo, hi, _ = band(_members(y, len(x), arm))
            ax.fill_between(x, lo, hi, color=colors[arm], alpha=0.3, lw=0, label=arm)
            if show_mean:
                ax.plot(x, mean, color=colors[arm], lw=1.5)
        if logy:
            ax.set_yscale("log")
        _finish(ax, name or None, "training step", ylabel if i == 0 else "")
        if i == 0:
            _legend(ax, loc="best", title="band min–max" + (", line mean" if show_mean else ""))
    if names == [""]:
        axes[0].set_title(title)
    else:
        fig.suptitle(title)
    return _save(fig, path)


# ---- the verdict forest plot ------------------------------------------------------------------

# Okabe-Ito colours (safe for the common colour-vision deficiencies), each with its own marker
# so that the outcome reads without colour too.
OUTCOME_COLORS = {"reproduced": "#009E73", "not reproduced": "#D55E00", "inconclusive": "#E69F00"}
OUTCOME_MARKERS = {"reproduced": "o", "not reproduced": "X", "inconclusive": "D"}
_UNKNOWN_COLOR = "#7f7f7f"


@dataclass(frozen=True)
class ForestRow:
    """One drawn row of the forest plot: a condition of a claim, in the values it is drawn at.

    ``effect``, ``low``, ``high``, ``threshold`` and ``negligible`` are in the unit shown (ratios
    for log rows, percentage points for accuracies: see bnexp.verdicts); ``low``/``high`` are
    -inf/+inf for an unbounded end (drawn as an arrow to the edge) and both None for no interval
    (the point only). ``span`` is the half-width of the row's x range around the threshold (a
    factor for log rows: the range is threshold / span .. threshold * span).
    """

    group: int  # which claim: 0, 1, ... over the claims with conditions, in order
    label: str  # the group's label (experiment name)
    claim: str
    name: str
    outcome: str
    color: str
    marker: str
    effect: float | None
    low: float | None
    high: float | None
    threshold: float
    negligible: tuple[float, float] | None
    direction: int
    log: bool
    span: float
    unit: str  # the suffix values are shown with: "x", " pts", " <unit>" or ""
    text: str  # the numbers as words, printed right of the row


def forest_rows(groups: Sequence[tuple[str, Any]]) -> list[ForestRow]:
    """The rows forest() draws, in order: every condition of every claim of every group.

    ``groups`` is a sequence of (label, verdict) where verdict is a verdict dict (``summary.json``
    / ``Verdict.to_json()``), a list of them, or a stats.Verdict; claims without conditions (old
    runs) give no row.
    """
    rows: list[ForestRow] = []
    g = 0
    for label, verdict in groups:
        for v in V.verdict_list(verdict):
            d = V.as_dict(v)
            if not d["conditions"]:
                continue
            for c in d["conditions"]:
                rows.append(_forest_row(g, str(label), d["claim"], c))
            g += 1
    return rows


def _forest_row(group: int, label: str, claim: str, c: dict[str, Any]) -> ForestRow:
    outcome = V.outcome_of(c.get("outcome")) or str(c.get("outcome"))
    t_raw = V._num(c.get("threshold"))
    t_raw = 0.0 if t_raw is None else t_raw
    e_raw = V._num(c.get("effect"))
    lo_raw, hi_raw = V.ends(c)
    neg = c.get("negligible")
    neg_raw = None
    if isinstance(neg, list | tuple) and len(neg) == 2 and None not in neg:
        neg_raw = (float(neg[0]), float(neg[1]))
    log = bool(c.get("log"))

    def show(x: float | None) -> float | None:  # unbounded stays -inf/+inf, also for ratios
        return None if x is None else x if math.isinf(x) else V.display(c, x)

    if e_raw is not None and not math.isfinite(e_raw):
        e_raw = None

    # the half-range around the threshold, in the space the axis is linear in (log space for
    # ratios), covering every finite value drawn, with a margin
    if log:
        gaps = [abs(x - t_raw) for x in (e_raw, lo_raw, hi_raw, *(neg_raw or ())) if x is not None]
    else:
        t = V.display(c, t_raw)
        vals = [show(x) for x in (e_raw, lo_raw, hi_raw, *(neg_raw or ()))]
        gaps = [abs(x - t) for x in vals if x is not None]
    gaps = [x for x in gaps if math.isfinite(x) and x > 0]
    if log:
        half = 1.15 * max(gaps) if gaps else math.log(2.0)
        span = math.exp(min(half, 50.0))
    else:
        default = 0.5 * abs(V.display(c, t_raw)) or 1.0
        span = 1.15 * max(gaps) if gaps else default
    effect = V.effect_text(c) if e_raw is not None else "no estimate"
    ci = V.interval_text(c)
    parts = [f"{effect} {ci}" if ci != "–" else f"{effect} (no interval)"]
    parts.append(f"claim {V.threshold_text(c)}")
    n = c.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n:
        parts.append(f"n={n}")
    text = ", ".join(parts)
    settle = V.settle_text(c)
    if settle.startswith("~"):
        text += f"; {settle.split(' would')[0]} to settle"
    return ForestRow(
        group=group,
        label=label,
        claim=claim,
        name=str(c.get("name", "")),
        outcome=outcome,
        color=OUTCOME_COLORS.get(outcome, _UNKNOWN_COLOR),
        marker=OUTCOME_MARKERS.get(outcome, "s"),
        effect=show(e_raw),
        low=show(lo_raw),
        high=show(hi_raw),
        threshold=V.display(c, t_raw),
        negligible=None if neg_raw is None else (show(neg_raw[0]), show(neg_raw[1])),
        direction=-1 if c.get("direction") == -1 else 1,
        log=log,
        span=span,
        unit=V.suffix(c),
        text=text,
    )


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def forest(
    groups: Sequence[tuple[str, Any]],
    path: Path,
    *,
    title: str = "Every condition of every claim: effect and 95% interval vs the threshold",
) -> Path | None:
    """A forest plot of verdict conditions; one PNG. None (nothing written) when there is no row.

    Each condition of each claim (see forest_rows) is one row: its effect a marker, its 95%
    interval a horizontal bar (an arrow to the edge for an unbounded end, the marker alone with no
    interval, "no estimate" when neither exists), its negligible band shaded grey, coloured and
    shaped by its outcome. Rows are grouped by claim under a header naming the group (the
    experiment) and its claim, with a rule between groups.

    Conditions have different units, so every row is its own small axis with its own ticks, and
    each axis is centred on that row's threshold: the thresholds line up on one vertical line down
    the figure. Each row's axis is oriented so that the claimed side is on the right (an axis
    whose claim is "effect < threshold" runs right to left; its ticks say so), hence for every row
    a bar wholly right of the line is reproduced and wholly left of it is not. The range of a row
    is symmetric about its threshold and just covers what it draws; log-ratio rows use a log axis
    labelled as ratios ("1.5x"), accuracy rows percentage points. The numbers are written out to
    the right of each row, in the row's unit.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = forest_rows(groups)
    if not rows:
        return None
    n_groups = len({r.group for r in rows})
    title_h, legend_h, head_h, row_h, bottom_h = 0.5, 0.45, 0.34, 0.62, 0.2
    width = 12.0
    height = title_h + legend_h + n_groups * head_h + len(rows) * row_h + bottom_h
    fig = Figure(figsize=(width, height))
    left_in, plot_in = 2.9, 4.4  # condition names | the rows | the numbers in words
    fig.text(0.5, 1 - 0.3 / height, title, ha="center", va="center", fontsize="large")

    handles = [
        Line2D([], [], color=OUTCOME_COLORS[k], marker=OUTCOME_MARKERS[k], lw=2, ms=7, label=k)
        for k in V.OUTCOMES
    ]
    handles += [
        Line2D([], [], color="0.15", lw=1.2, label="threshold (claimed side to the right)"),
        Patch(facecolor="0.6", alpha=0.3, label="negligible band"),
    ]
    fig.legend(handles=handles, loc="center", ncols=len(handles), fontsize="small",
               frameon=False, bbox_to_anchor=(0.5, 1 - (title_h + legend_h / 2) / height))  # fmt: skip

    y = height - title_h - legend_h  # inches from the bottom, moving down
    last_group = None
    for r in rows:
        if r.group != last_group:
            if last_group is not None:  # the rule between groups
                fig.add_artist(Line2D([0.01, 0.99], [y / height] * 2, color="0.55", lw=0.8))
            y -= head_h
            head = f"{r.label}: {_short(r.claim, 110)}" if r.claim else r.label
            fig.text(0.01, (y + 0.1) / height, head, ha="left", va="bottom",
                     fontsize="medium", weight="bold")  # fmt: skip
            last_group = r.group
        y -= row_h
        ax = fig.add_axes((left_in / width, (y + 0.3) / height, plot_in / width, 0.26 / height))
        _forest_draw_row(ax, r)
        ax.text(-0.02, 0.5, _short(r.name, 44), transform=ax.transAxes, ha="right",
                va="center", fontsize="small")  # fmt: skip
        ax.text(1.02, 0.5, _short(r.text, 70), transform=ax.transAxes, ha="left",
                va="center", fontsize="x-small", color="0.15")  # fmt: skip
    return _save(fig, path)


def _forest_draw_row(ax: Any, r: ForestRow) -> None:
    t, s = r.threshold, r.span
    if r.log:
        ax.set_xscale("log")
        lims = (t / s, t * s)
        ticks = [t / s, t / math.sqrt(s), t, t * math.sqrt(s), t * s]
    else:
        lims = (t - s, t + s)
        ticks = [t - s, t - s / 2, t, t + s / 2, t + s]
    if r.direction < 0:
        lims = lims[::-1]  # the claimed side (below the threshold) on the right
    ax.set_xlim(*lims)
    ax.set_ylim(-1, 1)
    ax.set_xticks(ticks, [_forest_tick(r, x, centre=i == 2) for i, x in enumerate(ticks)])
    ax.minorticks_off()
    ax.tick_params(axis="x", labelsize=6.5, length=2, pad=1)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color("0.6")
    if r.negligible is not None:
        ax.axvspan(*r.negligible, color="0.6", alpha=0.3, lw=0)
    ax.axvline(t, color="0.15", lw=1.2, zorder=2)
    lo_edge, hi_edge = min(lims), max(lims)
    if r.low is not None and r.high is not None:
        a = r.low if math.isfinite(r.low) else None
        b = r.high if math.isfinite(r.high) else None
        if a is not None and b is not None:
            ax.plot([a, b], [0, 0], color=r.color, lw=2.5, solid_capstyle="butt", zorder=3)
        for end, other, edge in ((a, b, lo_edge), (b, a, hi_edge)):
            if end is None:  # unbounded: an arrow from the other end (or the effect) to the edge
                start = other if other is not None else r.effect if r.effect is not None else t
                ax.annotate("", xy=(edge, 0), xytext=(start, 0), zorder=3,
                            arrowprops={"arrowstyle": "-|>", "color": r.color, "lw": 2.5,
                                        "shrinkA": 0, "shrinkB": 0})  # fmt: skip
    if r.effect is not None:
        ax.plot([r.effect], [0], marker=r.marker, color=r.color, ms=7, zorder=4,
                markerfacecolor="white" if r.outcome == "inconclusive" else r.color,
                markeredgewidth=1.6)  # fmt: skip
    elif r.low is None:
        ax.text(0.5, 0.5, "no estimate", transform=ax.transAxes, ha="center", va="center",
                fontsize="x-small", color="0.4", zorder=5,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # fmt: skip


def _forest_tick(r: ForestRow, x: float, centre: bool = False) -> str:
    """A tick label in the row's unit: ratios "1.5x", points "1.25 pts", others the unit once."""
    if r.log:
        return f"{x:.3g}x"
    text = f"{round(x, 2) + 0.0:g}" if abs(x) >= 0.01 or x == 0 else f"{x:.2g}"
    if r.unit == " pts" or (centre and r.unit):
        text += r.unit
    return text


def accuracy_by_size(
    sizes: Sequence[int] | np.ndarray,
    curves: Mapping[str, Any],
    path: Path,
    *,
    title: str = "Test accuracy by test batch size",
    xlabel: str = "test batch size (log2 scale)",
    ylabel: str = "test accuracy",
) -> Path:
    """Accuracy per curve vs a batch size (log2 x, increasing to the right): mean line and
    min..max band over seeds; each value is (sizes,) or (seeds, sizes), NaN where unmeasured."""
    x = np.asarray(sizes, dtype=np.float64)
    fig, (ax,) = _figure()
    colors = _color_map(curves)
    banded = [_line_band(ax, x, y, name, colors[name], marker="o")[1] for name, y in curves.items()]
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{b:g}" for b in x])
    ax.minorticks_off()
    _percent_axis(ax.yaxis)
    _finish(ax, title, xlabel, ylabel)
    _legend(ax, loc="best", title=_band_title(any(banded)))
    return _save(fig, path)
