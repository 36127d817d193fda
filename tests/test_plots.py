"""Every figure writes a valid, non-trivial PNG, handles NaN (diverged) data without warnings."""

import struct

import numpy as np
import pytest

from bnexp import plots

STEPS = np.arange(100, 2001, 100)
RNG = np.random.default_rng(0)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert len(data) > 10_000  # axes, text and lines, not an empty canvas
    return struct.unpack(">II", data[16:24])


def _curves(final, rate, seeds=3):
    return np.stack([final * (1 - np.exp(-STEPS / rate)) + 0.01 * RNG.standard_normal(len(STEPS))
                     for _ in range(seeds)])  # fmt: skip


def test_learning_curves_with_diverged_seed(tmp_path):
    base = _curves(0.95, 800)
    base[2, 5:] = np.nan  # one seed diverged at step 600
    p = plots.learning_curves(STEPS, {"bn": _curves(0.98, 200), "baseline": base},
                              tmp_path / "sub" / "lc.png", targets=(0.9, 0.95))  # fmt: skip
    w, h = _png_size(p)
    assert w > 600 and h > 400


def test_percentile_bands(tmp_path):
    med = np.sin(STEPS / 500)
    base = np.stack([med - 1, med, med + 1], axis=1)  # (E, 3)
    bn = np.stack([np.tile([-1.0, 0.0, 1.0], (len(STEPS), 1))] * 2)  # (S, E, 3)
    bn[1, -3:] = np.nan
    p = plots.percentile_bands(STEPS, {"baseline": base, "bn": bn}, tmp_path / "pb.png")
    w, h = _png_size(p)
    assert w > h  # two panels side by side
    with pytest.raises(ValueError):
        plots.percentile_bands(STEPS, {"x": base[:, :2]}, tmp_path / "bad.png")


def test_lr_sweep_marks_missing(tmp_path):
    lrs = np.array([0.01, 0.1, 1.0, 10.0])
    steps = {
        "baseline": np.array([np.nan, 1500, 900, np.nan]),
        "bn": np.array([1800, 600, 200, 300]),
    }
    final = {"baseline": np.array([0.9, 0.95, 0.96, np.nan]),
             "bn": np.stack([np.array([0.91, 0.97, 0.98, 0.97])] * 3)}  # fmt: skip
    p = plots.lr_sweep(lrs, steps, final, tmp_path / "lr.png", target=0.95, total_steps=2000)
    _png_size(p)


def test_init_scale_and_batch_size(tmp_path):
    scales = np.array([0.01, 0.1, 1.0, 10.0])
    acc = {"bn": np.array([0.97, 0.97, 0.97, 0.96]), "baseline": np.array([0.1, 0.8, 0.96, np.nan])}
    _png_size(plots.accuracy_vs_init_scale(scales, acc, tmp_path / "init.png"))
    bs = np.array([2, 4, 8, 16, 32])
    err = {"BN": np.array([0.35, 0.27, 0.25, 0.24, 0.24]), "GN": np.full(5, 0.241)}
    _png_size(plots.error_vs_batch_size(bs, err, tmp_path / "bs.png"))
    with pytest.raises(ValueError, match="expected shape"):
        plots.error_vs_batch_size(bs, {"BN": np.ones(4)}, tmp_path / "bad.png")


def test_bands_over_steps(tmp_path):
    series = {
        "baseline": RNG.random((8, len(STEPS))) * 100 + 1,
        "bn": RNG.random((8, len(STEPS))) + 1,
    }
    p = plots.bands_over_steps(STEPS, series, tmp_path / "b.png", title="Loss landscape",
                               ylabel="loss", logy=True)  # fmt: skip
    _png_size(p)
    panels = {f"layer {i}": series for i in (1, 2, 3)}
    w, _ = _png_size(plots.bands_over_steps_panels(STEPS, panels, tmp_path / "p.png",
                                                   title="ICS", ylabel="||G - G'||"))  # fmt: skip
    assert w > 1200
