"""How the tests start a child process: never inherited from how pytest itself was started.

A process started in the background by a non-interactive shell inherits SIGINT as *ignored*, and
a child inherits that again; an interrupt test would then see its run finish with exit 0. Every
child the tests start gets the default SIGINT/SIGTERM dispositions, the repository as its working
directory and an environment the test states (``child_env``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_signals() -> None:
    """preexec_fn: default dispositions for the signals the tests send."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def ignore_sigint() -> None:
    """preexec_fn: a child started as a shell's background job would be (SIGINT ignored)."""
    default_signals()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def child_env(**extra: str) -> dict[str, str]:
    """The test process's environment, no colour, plus `extra`."""
    return dict(os.environ, NO_COLOR="1", **extra)
