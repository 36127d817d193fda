"""bnexp.stopping: a signal is a stop request acted on at a checkpoint, never mid-call."""

import os
import signal

import pytest

from bnexp import stopping


def test_a_signal_waits_for_the_checkpoint_and_a_second_one_stops_at_once():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt), stopping.during_run():
        os.kill(os.getpid(), signal.SIGTERM)  # handled here, in the main thread
        assert stopping.pending()  # recorded, nothing raised mid-call
        stopping.check()
    assert not stopping.pending()  # acted on: cleared
    assert {s: signal.getsignal(s) for s in before} == before  # handlers given back
    with pytest.raises(KeyboardInterrupt), stopping.during_run():
        os.kill(os.getpid(), signal.SIGINT)
        assert stopping.pending()
        os.kill(os.getpid(), signal.SIGINT)  # the user insists: raised at once
        pytest.fail("a second signal did not stop at once")
    assert not stopping.pending()


def test_a_signal_after_the_last_checkpoint_stays_pending():
    try:
        with stopping.during_run():
            os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.pending()  # the caller's next checkpoint acts on it
        with pytest.raises(KeyboardInterrupt):
            stopping.check()
    finally:
        stopping.clear()
