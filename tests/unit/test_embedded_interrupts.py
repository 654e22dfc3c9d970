"""`haihe up` handles Ctrl-C from its first moment: during start-up it unwinds (and stops what started), after
it only asks the wait loop to stop; a Ctrl-C between the two is not lost, even with SIGINT ignored by the shell."""

from __future__ import annotations

import os
import signal

import pytest

from haihe.embedded import Interrupts


def test_a_signal_during_start_up_unwinds_and_one_after_only_asks_to_stop() -> None:
    before = signal.getsignal(signal.SIGINT)
    with Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)  # let the handler run here
        assert interrupts.stop.is_set() and not interrupts.starting
        interrupts.stop.clear()
        os.kill(os.getpid(), signal.SIGTERM)  # up and running: no exception, the wait loop sees stop
        signal.sigtimedwait([], 0)
        assert interrupts.stop.is_set()
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_signal_in_the_window_after_start_up_is_not_lost_even_when_sigint_was_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a non-interactive shell
    try:
        with Interrupts() as interrupts:
            interrupts.starting = False  # start-up done, the wait loop not yet entered
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
            assert interrupts.stop.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)
