"""How the tests start a child process: never inherited from how pytest itself was started.

A process started in the background by a non-interactive shell inherits SIGINT as *ignored*, and
a child inherits that again; an interrupt test would then see its run finish with exit 0. Every
child the tests start gets its SIGINT/SIGTERM dispositions set explicitly (``command``), the
repository as its working directory and an environment the test states (``child_env``).

The dispositions are set by a tiny launcher that then ``exec``s the real command (same pid), not
by ``preexec_fn``: that forces a fork of the multithreaded JAX test process, which JAX warns
about (and the suite turns warnings into errors).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_LAUNCH = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGTERM, signal.SIG_DFL); "
    "signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv[1] == 'ignore' else signal.SIG_DFL); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def command(*argv: str, sigint: str = "default") -> list[str]:
    """argv (argv[0] an executable path) run with SIGTERM default and SIGINT `sigint`:
    "default", or "ignore" (as a shell's background job would have it)."""
    if sigint not in ("default", "ignore"):
        raise ValueError(sigint)
    return [sys.executable, "-c", _LAUNCH, sigint, *argv]


def cli(*args: str, sigint: str = "default") -> list[str]:
    """`python cli.py ARGS` with explicit signal dispositions."""
    return command(sys.executable, str(ROOT / "cli.py"), *args, sigint=sigint)


def python_code(code: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` from the repository, stdout/stderr captured, with ``env`` added to the
    test's environment (e.g. BNEXP_HOST_DEVICES="2" for a child with two host devices)."""
    return subprocess.run(
        command(sys.executable, "-c", code),
        capture_output=True,
        text=True,
        env=child_env(**env),
        cwd=ROOT,
        timeout=timeout,
    )


def child_env(**extra: str) -> dict[str, str]:
    """The test process's environment, no colour, plus `extra`."""
    return dict(os.environ, NO_COLOR="1", **extra)
