"""The house style is part of the test command: `ruff check` and `ruff format --check` clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _child import ROOT, child_env


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")  # the test venv's ruff (the `test` extra)
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (it is in the `test` extra)")
    return [found]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args):
    p = subprocess.run(
        [*_ruff(), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
