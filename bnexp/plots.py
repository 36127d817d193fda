"""Matplotlib figures (PNG, Agg, no pyplot state) for the experiments.

Every function takes plain NumPy data, labels and an output path, writes one PNG and returns its
path. Series are given per arm as a mapping ``{arm: array}`` where the array is ``(N,)`` (one
member) or ``(members, N)`` (seeds, or the points of a step-size grid): the line is the mean over
the finite members and the shaded band their min..max. NaN (a diverged member after divergence)
is skipped, never drawn as zero. Accuracies and errors are fractions, shown as percentages. An
arm keeps its colour across the panels of a figure. matplotlib is imported lazily so that
importing bnexp stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


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
