"""restart-check's signal handling, driven directly (no process, no signal sent)."""

from __future__ import annotations

import signal

import pytest

from echolab.restartcheck import Interrupted, Interrupts


def test_the_first_signal_raises_later_ones_are_only_recorded() -> None:
    i = Interrupts()
    with pytest.raises(Interrupted) as caught:
        i.handle(signal.SIGTERM, None)
    assert caught.value.signum == signal.SIGTERM
    i.handle(signal.SIGINT, None)  # during the clean-up: recorded, not raised
    assert i.received == [signal.SIGTERM, signal.SIGINT]


def test_a_signal_during_deferred_clean_up_is_raised_after_it() -> None:
    i = Interrupts()
    done = []
    with pytest.raises(Interrupted) as caught, i.deferred():
        i.handle(signal.SIGHUP, None)  # must not cut the clean-up short
        done.append("cleaned up")
    assert done == ["cleaned up"]
    assert caught.value.signum == signal.SIGHUP
    assert not i.armed


def test_deferred_after_an_interruption_raises_nothing_more() -> None:
    i = Interrupts()
    with pytest.raises(Interrupted):
        i.handle(signal.SIGINT, None)
    with i.deferred():
        i.handle(signal.SIGTERM, None)
    assert i.received == [signal.SIGINT, signal.SIGTERM]


def test_installed_restores_the_previous_handlers() -> None:
    before = signal.getsignal(signal.SIGHUP)
    with Interrupts().installed() as i:
        assert signal.getsignal(signal.SIGHUP) == i.handle
    assert signal.getsignal(signal.SIGHUP) == before
