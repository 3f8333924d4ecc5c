"""SIGTERM and the first Ctrl-C ask for save-and-exit; a second Ctrl-C stops at once."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from jdiffseg.runtime import stop_signals

pytestmark = pytest.mark.usefixtures("default_sigint")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_first_signal_only_sets_the_request(signum, code):
    before = {s: signal.getsignal(s) for s in stop_signals.STOP_SIGNALS}
    with stop_signals.stop_requests() as stop:
        assert stop.signum is None and stop.exit_code == 143  # JAX's multi-host preemption
        os.kill(os.getpid(), signum)
        os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM changes nothing
        assert stop.signum == signum and stop.exit_code == code
        assert stop.name == signal.Signals(signum).name
    assert {s: signal.getsignal(s) for s in stop_signals.STOP_SIGNALS} == before


def test_second_ctrl_c_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt), stop_signals.stop_requests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("the second Ctrl-C did not interrupt")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_not_installed_off_the_main_thread_or_when_disabled():
    seen = []

    def worker() -> None:
        with stop_signals.stop_requests() as stop:
            seen.append(signal.getsignal(signal.SIGINT))
            seen.append(stop.signum)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler, None]
    with stop_signals.stop_requests(enabled=False):
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup; the fixture restores it
    with stop_signals.stop_requests() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum is None
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
