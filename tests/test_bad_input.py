"""The fault matrix, item 7: bad input, generated (hypothesis). Through cli.main in-process.

Properties: whatever `--set key=value` or typed option a user gives, bnexp prints one line and
never a traceback; a bad value (NaN, inf, absurd sizes, zero or negative where a count or a rate
is meant, text where a number is) exits 2 before anything trains: run_sweep is replaced by a
sentinel that records being reached, and no run directory is made.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments import REGISTRY, runner
from experiments.base import field_types

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class TrainingStarted(Exception):
    pass


@pytest.fixture
def bnexp(monkeypatch, capsys, tmp_path):
    """`bnexp ARGS` through cli.main: (exit code, stderr lines, whether training started)."""
    import cli

    started: list[int] = []

    def sentinel(todo, **kw):
        started.append(len(todo))
        raise TrainingStarted("training started")

    monkeypatch.setattr(runner, "run_sweep", sentinel)

    calls: list[int] = []

    def call(*args: str) -> tuple[int, list[str], bool, Path]:
        started.clear()
        calls.append(1)
        out = tmp_path / f"runs{len(calls)}"  # one per call: hypothesis reuses tmp_path
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        monkeypatch.setattr(sys, "argv", ["bnexp", *args, "--out", str(out)])
        try:
            with pytest.raises(SystemExit) as e:
                cli.main()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        _, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return e.value.code, [ln for ln in err.splitlines() if ln.strip()], bool(started), out

    return call


def _runs(out: Path) -> list:
    return [p for p in out.iterdir() if p.is_dir()] if out.exists() else []


NAMES = sorted(REGISTRY)
BAD_FLOATS = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e300", "-1e300", "1e39", "x", ""])
BAD_COUNTS = st.one_of(
    st.sampled_from(["0", "-1", str(10**12), str(2**31), "1.5", "1e3", "nan", "", "ten"]),
    st.integers(max_value=0).map(str),
    st.integers(min_value=2**31).map(str),
)
COUNT_KEYS = ["steps", "eval_every", "seeds", "batch_size"]
RATE_KEYS = ["lr", "init_std"]


def _one_line_usage_error(result, what) -> None:
    code, lines, started, out = result
    assert code == 2, (what, code, lines)
    assert len(lines) == 1 and lines[0].startswith("bnexp: error: "), (what, lines)
    assert not started, (what, "training started on bad input")
    assert not _runs(out), (what, "a run directory was made for bad input")


@SETTINGS
@given(name=st.sampled_from(NAMES), key=st.sampled_from(COUNT_KEYS), value=BAD_COUNTS)
def test_bad_counts_are_one_line_exit_2_before_training(bnexp, name, key, value):
    result = bnexp("run", name, "--preset", "smoke", "--set", f"{key}={value}")
    _one_line_usage_error(result, (name, key, value))


@SETTINGS
@given(
    name=st.sampled_from(NAMES),
    key=st.sampled_from(RATE_KEYS),
    value=st.one_of(BAD_FLOATS, st.floats(max_value=0).map(repr)),
)
def test_bad_rates_are_one_line_exit_2_before_training(bnexp, name, key, value):
    result = bnexp("run", name, "--preset", "smoke", "--set", f"{key}={value}")
    _one_line_usage_error(result, (name, key, value))


def _float_fields(name: str) -> list[str]:
    types_ = field_types(REGISTRY[name].config_type)
    return [k for k, t in types_.items() if t is float or t == tuple[float, ...]]


@SETTINGS
@given(data=st.data(), name=st.sampled_from(NAMES), value=BAD_FLOATS)
def test_no_float_field_takes_nan_inf_or_beyond_float32(bnexp, data, name, value):
    key = data.draw(st.sampled_from(_float_fields(name)))
    result = bnexp("run", name, "--preset", "smoke", "--set", f"{key}={value}")
    _one_line_usage_error(result, (name, key, value))


@SETTINGS
@given(
    name=st.sampled_from(NAMES),
    pair=st.one_of(
        st.text(max_size=30),
        st.tuples(st.sampled_from(["steps", "lr", "hidden", "lrs", "x", "seed s"]), st.text()).map(
            "=".join
        ),
    ),
)
def test_any_set_text_is_one_line_and_never_a_traceback(bnexp, name, pair):
    """Arbitrary text: either a usage error (one line, exit 2, nothing trained) or a valid
    override that reaches training (the sentinel: one line, exit 1)."""
    code, lines, started, out = bnexp("run", name, "--preset", "smoke", "--set", pair)
    assert len(lines) >= 1 and lines[-1].startswith("bnexp: error: "), lines
    if started:
        assert code == 1 and "training started" in lines[-1], (pair, lines)
    else:
        _one_line_usage_error((code, lines, started, out), (name, pair))


@SETTINGS
@given(
    option=st.sampled_from(["--steps", "--seeds"]),
    value=st.one_of(BAD_COUNTS, st.text(max_size=10)),
)
def test_typed_options_are_one_line(bnexp, option, value):
    try:
        ok = int(value) > 0
    except ValueError:
        ok = False
    result = bnexp("run", "lr-sweep", "--preset", "smoke", option, value)
    if ok and int(value) < 2**31 and result[2]:  # a count in range is valid input
        return
    _one_line_usage_error(result, (option, value))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "steps=1000000000000"], "32 bits"),
        (["--set", "lr=1e300"], "finite float32"),
        (["--set", "batch_size=100000"], "larger than the training set"),
        (["--set", "seeds=0"], "seeds must be positive"),
        (["--set", "seeds=-3"], "seeds must be positive"),
        (["--set", "steps=100000000", "--set", "eval_every=1"], "evaluations per trial"),
        (["--set", "momentum=1"], "momentum must be in [0, 1)"),
        (["--set", "hidden=100,0"], "hidden widths must be positive"),
        (["--set", "lrs=0.1,nan"], "finite float32"),
        (["--seeds", "5000"], "at most 1000"),
    ],
)
def test_absurd_values_are_caught_before_training(bnexp, args, needle):
    result = bnexp("run", "lr-sweep", "--preset", "smoke", *args)
    _one_line_usage_error(result, args)
    assert needle in result[1][0], result[1]


def test_a_valid_override_does_reach_training(bnexp):
    """The sentinel is reached by good input: the properties above can fail."""
    code, lines, started, out = bnexp("run", "lr-sweep", "--preset", "smoke", "--set", "lr=0.1")
    assert started and code == 1 and "training started" in lines[-1]
    assert len(_runs(out)) == 1


@SETTINGS
@given(value=st.one_of(BAD_FLOATS, st.floats(max_value=0).map(repr)))
def test_compare_lr_option_takes_no_bad_rate(bnexp, value):
    result = bnexp("compare", "--preset", "smoke", "--lr", value)
    _one_line_usage_error(result, ("compare --lr", value))
