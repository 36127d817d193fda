"""Ctrl-C and SIGTERM as a request to stop at the next safe point, never in the middle of a call.

A KeyboardInterrupt raised straight from a signal handler lands wherever Python happens to be:
inside XLA's garbage-collection callback it is swallowed ("Exception ignored in ..."), so the
signal is lost and the run finishes as if nothing happened; inside a callback from C++ it can
abort the process (exit -6). So the handler only records the signal, and bnexp raises
KeyboardInterrupt itself at checkpoints (``check``): between imports and setup, after each
progress report, after each saved group, before the analysis and before the summary is
written. A second signal while one is pending stops at once (the user insists).

The exit code stays 130 and the run directory is marked interrupted (experiments.runner).
"""

from __future__ import annotations

import signal

_PENDING: list[int] = []  # signals received and not yet acted on


def handler(signum: int, frame: object) -> None:  # noqa: ARG001
    """Record the signal; a second one raises KeyboardInterrupt at once."""
    _PENDING.append(signum)
    if len(_PENDING) > 1:
        raise KeyboardInterrupt


def install() -> None:
    """SIGTERM, and SIGINT unless it is ignored (a background job keeps ignoring it), go to
    ``handler``. Only from the main thread (signal.signal raises elsewhere)."""
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)


def pending() -> bool:
    return bool(_PENDING)


def check() -> None:
    """The checkpoint: raise KeyboardInterrupt if a stop was asked for."""
    if _PENDING:
        raise KeyboardInterrupt


def clear() -> None:
    _PENDING.clear()
