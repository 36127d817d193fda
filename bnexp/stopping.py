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

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

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


SIGINT_IGNORED_NOTE = (
    "note: SIGINT is ignored in this process (started as a background job?), so Ctrl-C will not "
    "stop it; SIGTERM (kill {pid}) interrupts it and keeps every finished group"
)

_SIGINT_NOTED = False


@contextlib.contextmanager
def during_run() -> Iterator[None]:
    """SIGTERM interrupts a run like Ctrl-C does (exit 130, the run directory kept, resumable),
    at the next checkpoint (``check``: a signal never lands inside a write or a callback).

    A process that inherited SIGINT as ignored (a background job of a non-interactive shell, or
    nohup) keeps ignoring it, as POSIX asks of such a job: bnexp says so once on stderr and names
    SIGTERM as the way to stop it. A signal that came before (the command line's own handler is
    the same one) stays pending, so the first checkpoint acts on it; so does one that comes
    after the run's last checkpoint (the next experiment of a reproduce, or the command line's
    exit with 130, acts on it)."""
    global _SIGINT_NOTED
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and not _SIGINT_NOTED:
        print(SIGINT_IGNORED_NOTE.format(pid=os.getpid()), file=sys.stderr, flush=True)
        _SIGINT_NOTED = True  # once per process (reproduce runs several experiments)
    try:
        old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        install()
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except BaseException:
        clear()  # acted on: the interrupt (or an error) ends this run
        raise
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
