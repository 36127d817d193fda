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


# ---- the verdict forest plot ------------------------------------------------------------------

L = np.log


def _cond(name, effect, ci, threshold, **kw):
    from bnexp import stats

    return stats.Condition(name, effect, ci, threshold, **kw)


def _verdicts():
    """Two claims as summary.json holds them (stats.Verdict.to_json), and an old-style verdict."""
    from bnexp import stats

    speed = stats.Verdict(
        "BN reaches 97% faster",
        (
            _cond("speedup to 97%", L(2.0), (L(1.4), L(2.9)), L(1.2), n=5, sd=0.2,
                  unit="log speedup", log=True),
            _cond("speedup to 98% (censored)", None, (L(1.1), np.inf), L(1.2), n=5,
                  unit="log speedup", log=True),
        ),
    ).to_json()  # fmt: skip
    acc = stats.Verdict(
        "BN does not hurt final accuracy",
        (
            _cond("final accuracy difference", -0.012, (-0.02, -0.006), -0.005,
                  negligible=(-0.002, 0.002), n=5, unit="accuracy difference"),
            _cond("train/eval gap", 0.001, (None, None), 0.005, direction=-1, n=1,
                  unit="accuracy difference"),
            _cond("gap, unbounded below", 0.001, (-np.inf, 0.007), 0.005, direction=-1, n=3,
                  unit="accuracy difference"),
            _cond("nothing measured", None, (None, None), 0.3, n=0, unit="loss"),
        ),
    ).to_json()  # fmt: skip
    old = {"claim": "old claim", "reproduced": True, "evidence": "x", "outcome": "REPRODUCED"}
    return speed, acc, old


def test_forest_rows_layout():
    speed, acc, old = _verdicts()
    rows = plots.forest_rows([("compare", speed), ("old-run", old), ("init", acc)])
    assert [r.name for r in rows] == [
        "speedup to 97%", "speedup to 98% (censored)", "final accuracy difference",
        "train/eval gap", "gap, unbounded below", "nothing measured"]  # fmt: skip
    assert [r.group for r in rows] == [0, 0, 1, 1, 1, 1]  # the old verdict has no row
    assert [r.label for r in rows] == ["compare"] * 2 + ["init"] * 4
    assert rows[0].claim == "BN reaches 97% faster"
    assert [r.outcome for r in rows] == ["reproduced", "inconclusive", "not reproduced",
                                         "inconclusive", "inconclusive", "inconclusive"]  # fmt: skip
    assert [r.color for r in rows] == [plots.OUTCOME_COLORS[r.outcome] for r in rows]
    assert len(set(plots.OUTCOME_COLORS.values())) == 3
    assert len(set(plots.OUTCOME_MARKERS.values())) == 3


def test_forest_rows_values_units_and_ends():
    speed, acc, _ = _verdicts()
    r = plots.forest_rows([("compare", speed), ("init", acc)])
    # log rows are drawn as ratios
    assert r[0].log and r[0].unit == "x"
    assert (r[0].effect, r[0].low, r[0].high, r[0].threshold) == pytest.approx((2.0, 1.4, 2.9, 1.2))
    assert "2x [1.4x, 2.9x]" in r[0].text and "claim > 1.2x" in r[0].text
    # +inf written as null by to_json is read back as unbounded (an arrow), effect None
    assert r[1].effect is None and r[1].low == pytest.approx(1.1) and r[1].high == np.inf
    assert "[1.1x, ∞)" in r[1].text
    # accuracy differences in points; negligible band too
    assert not r[2].log and r[2].unit == " pts"
    assert (r[2].effect, r[2].low, r[2].high, r[2].threshold) == pytest.approx(
        (-1.2, -2, -0.6, -0.5)
    )
    assert r[2].negligible == pytest.approx((-0.2, 0.2))
    # no interval: the point only; unbounded below; nothing at all
    assert r[3].low is None and r[3].high is None and r[3].effect == pytest.approx(0.1)
    assert r[3].direction == -1 and "claim < 0.5 pts" in r[3].text
    assert r[4].low == -np.inf and r[4].high == pytest.approx(0.7)
    assert r[5].effect is None and r[5].low is None and "no estimate" in r[5].text
    # every row's range is centred on its threshold and covers every finite value it draws
    for row in r:
        vals = [v for v in (row.effect, row.low, row.high, *(row.negligible or ()))
                if v is not None and np.isfinite(v)]  # fmt: skip
        for v in vals:
            if row.log:
                assert row.threshold / row.span < v < row.threshold * row.span
            else:
                assert abs(v - row.threshold) < row.span


def test_forest_writes_one_taller_png_per_more_rows(tmp_path):
    speed, acc, old = _verdicts()
    p = plots.forest([("compare", speed), ("old", old), ("init", acc)], tmp_path / "f" / "all.png")
    w_all, h_all = _png_size(p)
    one = plots.forest([("compare", speed)], tmp_path / "one.png", title="compare")
    w_one, h_one = _png_size(one)
    assert w_all == w_one and h_all > h_one  # same width, one band of height per row
    # a stats.Verdict object and a list of verdicts are accepted too
    from bnexp import stats

    obj = stats.Verdict("c", (_cond("x", 0.5, (0.1, 0.9), 0.0, n=3),))
    assert len(plots.forest_rows([("a", obj), ("b", [speed, acc])])) == 1 + 2 + 4
    _png_size(plots.forest([("a", obj)], tmp_path / "obj.png"))


def test_forest_without_conditions_writes_nothing(tmp_path):
    _, _, old = _verdicts()
    assert plots.forest([("old", old)], tmp_path / "none.png") is None
    assert plots.forest([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
